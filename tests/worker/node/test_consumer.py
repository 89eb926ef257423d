"""The worker's consumer applies celeryconfig's gossip and mingle switches."""

from __future__ import annotations

from typing import Any

import pytest
from celery.worker import state

from worker.broker.factory import make_app
from worker.node.consumer import SandrunConsumer


class Controller:
    """What the consumer's bootsteps read of the worker when they are created."""

    state = state
    use_eventloop = False


def enabled(conf: dict[str, Any], **flags: bool) -> dict[str, bool]:
    """Whether Gossip and Mingle would start, for these settings and command-line flags."""
    app = make_app("redis://127.0.0.1:1/0")  # never connected: steps are only created
    app.conf.update(conf)
    consumer = SandrunConsumer(lambda *_: None, app=app, hostname="w@h",
                               controller=Controller(), worker_options=flags)
    steps = {step.label: step for step in consumer.blueprint.steps.values()}
    return {label: bool(steps[label].enabled) for label in ("Gossip", "Mingle")}


def test_by_default_gossip_and_mingle_are_off_even_without_flags() -> None:
    """Redis remembers cancelled jobs (worker/stores/revoked.py): mingle is not needed."""
    import celeryconfig

    assert enabled({"sandrun_worker_gossip": celeryconfig.sandrun_worker_gossip,
                    "sandrun_worker_mingle": celeryconfig.sandrun_worker_mingle},
                   without_gossip=False, without_mingle=False) == {
        "Gossip": False, "Mingle": False}


@pytest.mark.parametrize(("conf", "flags", "expected"), [
    ({"sandrun_worker_gossip": True}, {}, {"Gossip": True, "Mingle": False}),
    ({"sandrun_worker_mingle": True}, {}, {"Gossip": False, "Mingle": True}),
    ({"sandrun_worker_mingle": False}, {}, {"Gossip": False, "Mingle": False}),
    ({"sandrun_worker_gossip": True}, {"without_gossip": True, "without_mingle": True},
     {"Gossip": False, "Mingle": False}),  # the command line still turns them off
])
def test_settings_and_flags(conf: dict[str, Any], flags: dict[str, bool],
                            expected: dict[str, bool]) -> None:
    assert enabled(conf, **flags) == expected
