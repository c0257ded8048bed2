"""Typed failures of ingest; every message is PHI-free (component names, limits, never values)."""

from __future__ import annotations

from services.common.messages import PhiSafeError, TransientError


class IngestUnavailable(TransientError):
    """A dependency (blob store, MongoDB, Kafka) failed: nothing was promised, the sender should retry."""


class EventRefused(IngestUnavailable):
    """The broker refused an instance's event for what it is (larger than its topic takes): the sender
    should retry once an operator lets the topic take it. Other instances are not held by it."""


class IngestPaused(IngestUnavailable):
    """An operator paused intake through the Control service."""


class InvalidDestination(PhiSafeError, ValueError):
    """The requested destination is not a well-formed partner id."""


class UnknownOrganisation(PhiSafeError, LookupError):
    """The sending organisation is not registered."""
