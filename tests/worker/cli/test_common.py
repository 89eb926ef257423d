"""What every command shares: making a client without collecting its start-up objects."""

from __future__ import annotations

import gc

import pytest

from worker.cli.common import set_up_uncollected


def test_set_up_runs_uncollected_then_frozen_then_thawed() -> None:
    seen: list[bool] = []
    with set_up_uncollected(lambda: seen.append(gc.isenabled()) or "made") as made:
        assert made == "made" and seen == [False]
        assert gc.isenabled() and gc.get_freeze_count() > 0
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_failing_set_up_leaves_collection_as_it_was() -> None:
    def broken() -> None:
        raise RuntimeError("no broker")

    with pytest.raises(RuntimeError), set_up_uncollected(broken):
        pass
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_collection_stays_off_when_it_was_off() -> None:
    gc.disable()
    try:
        with set_up_uncollected(lambda: None):
            assert not gc.isenabled()
    finally:
        gc.enable()
    assert gc.get_freeze_count() == 0
