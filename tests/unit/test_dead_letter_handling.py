from __future__ import annotations

from services.common.dead_letter_handling import DISCARDED, LETTER_MS, REPLAYED, discarded_at


def test_a_discard_applies_only_to_the_letter_it_was_made_for() -> None:
    """Offsets start from 0 again once the dead-letter topic is made again: the document of a position
    then speaks of another letter, and another letter's objects must not go for it."""
    handled = {DISCARDED: 500, LETTER_MS: 100}
    assert discarded_at(handled, 100) == 500
    assert discarded_at(handled, 101) == 0
    assert discarded_at({REPLAYED: 7}, 100) == 0
    assert discarded_at({DISCARDED: 500}, 100) == 0, "no letter named: none is discarded"
