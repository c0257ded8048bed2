"""The gateway's stop: what no retry fixes."""

from __future__ import annotations


class GatewayStopped(Exception):
    """A condition no retry fixes (the DICOMweb key refused, receipts cannot be written, the state folder
    in use by another process): stop, commit nothing more, say why. The message carries no PHI."""
