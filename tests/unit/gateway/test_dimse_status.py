"""C-STORE statuses (PS3.4 B.2.3) and the presentation contexts the gateway proposes."""

from __future__ import annotations

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from services.gateway.dimse_store import MAX_CONTEXTS, contexts_for, status_result

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("status", [0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007, 0xBFFF])
def test_success_and_warnings_are_stored(status: int) -> None:
    assert status_result(status).ok


@pytest.mark.parametrize("status", [0xA700, 0xA701, 0xA7FF])
def test_out_of_resources_is_retryable(status: int) -> None:
    result = status_result(status)
    assert not result.ok and result.retryable and result.status_detail == f"0x{status:04X}"


@pytest.mark.parametrize("status", [0xA900, 0xC000, 0x0122, 0x0124, 0x0211, 0xFE00])
def test_other_failures_are_permanent(status: int) -> None:
    result = status_result(status)
    assert not result.ok and not result.retryable


def test_each_sop_class_gets_the_delivered_syntax_and_both_little_endian_fallbacks_in_own_contexts() -> None:
    contexts = contexts_for({CT: [JPEG2000Lossless]})
    assert [(c.abstract_syntax, c.transfer_syntax) for c in contexts] == [
        (CT, [JPEG2000Lossless]),
        (CT, [ExplicitVRLittleEndian]),
        (CT, [ImplicitVRLittleEndian]),
    ]
    assert len(contexts_for({CT: [ExplicitVRLittleEndian]})) == 2, "no context proposed twice"


def test_no_more_than_128_contexts_keeping_the_latest_sop_classes() -> None:
    needs = {f"1.2.3.{n}": [JPEG2000Lossless] for n in range(100)}
    contexts = contexts_for(needs)
    assert len(contexts) <= MAX_CONTEXTS
    assert contexts[0].abstract_syntax == "1.2.3.99"
