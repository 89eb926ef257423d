"""How long a delivery that found its job's lease held waits before it looks again."""

from __future__ import annotations

from worker.node.leasing import MAX_WAITS, countdown, waits
from worker.protocol import LEASE_WAITS_HEADER
from worker.stores.leases import Claim


def test_the_wait_doubles_from_a_second_up_to_a_third_of_the_lease() -> None:
    held = Claim(held_by="w@h:1", remaining=60.0)
    assert [countdown(held, n, 60) for n in range(7)] == [1, 2, 4, 8, 16, 20, 20]


def test_a_countdown_message_is_never_held_past_half_the_visibility_timeout() -> None:
    held = Claim(held_by="w@h:1", remaining=60.0)
    assert [countdown(held, n, 60, visibility=12) for n in range(5)] == [1, 2, 4, 6, 6]


def test_the_wait_never_outlasts_the_holders_lease() -> None:
    assert countdown(Claim(held_by="w@h:1", remaining=2.5), 4, 60) == 2.6
    assert countdown(Claim(held_by="w@h:1", remaining=0.0), 0, 60) == 0.5  # lapsing now


def test_a_forged_waits_header_counts_as_none() -> None:
    assert waits({LEASE_WAITS_HEADER: 3}) == 3
    for forged in (-1, MAX_WAITS + 1, "3", True, 2.0, None):
        assert waits({LEASE_WAITS_HEADER: forged}) == 0
    assert waits(None) == 0
