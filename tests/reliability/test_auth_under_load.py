"""Forged messages mixed into a stream of genuine ones, on a busy worker.

100 genuine signed tasks and 60 forged ones (unsigned, wrong secret, tampered,
expired, unknown key, replayed while the original is queued) are published
interleaved as fast as the client can; every genuine task must run exactly
once and no forged one may run at all. The side effect is one line per run
(``tests.touch``), written by the pool process.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from plugins.auth import AuthPlugin, auth_plugin
from plugins.auth.tokens import HMACProvider
from tests.conftest import RedisServer
from tests.integration.conftest import WorkerFactory, broker, broker_url, start_worker  # noqa: F401
from tests.support.scenarios import ScenarioReport
from worker.client.client import Sandrun
from worker.protocol import Publication

pytestmark = pytest.mark.slow

KEY = "reliability-key-0123456789abcdefghij"
GENUINE = 100
VARIANTS = ("unsigned", "forged", "tampered", "expired", "unknown_key", "replayed")


def signer(key_id: str = "k1", secret: str = KEY, skew: float = 0, **options: object
           ) -> AuthPlugin:
    clock = (lambda: time.time() - skew) if skew else time.time
    return auth_plugin(HMACProvider(key_id, secret, clock=clock), clock=clock,
                       auto_refresh=False, **options)  # type: ignore[arg-type]


def message(side_effects: Path, line: str) -> Publication:
    return Publication(task="tests.touch", task_id=str(uuid.uuid4()), queue="sandrun",
                       args=[str(side_effects), line])


def forged(variant: str, side_effects: Path, n: int, signers: dict[str, AuthPlugin],
           genuine: Publication) -> Publication:
    """One forged message of ``variant`` (number ``n``)."""
    if variant == "replayed":
        return genuine  # the very same signed message, sent a second time
    publication = message(side_effects, f"{variant}-{n}")
    if variant != "unsigned":
        signers[variant].sign(publication)
    if variant == "tampered":
        publication.args[1] = f"genuine-{n}-changed"
    return publication


def test_forged_jobs_never_run_under_load(broker: RedisServer,  # noqa: F811
                                          start_worker: WorkerFactory,  # noqa: F811
                                          tmp_path: Path, scenario_report: ScenarioReport) -> None:
    plugins = [{"name": "auth", "config": {"keys": {"k1": KEY}}}]
    start_worker(concurrency=2, name="auth-load", SANDRUN_PLUGINS=json.dumps(plugins))
    side_effects = tmp_path / "side-effects"
    genuine_signer = signer()
    signers = {"forged": signer(secret="a-guessed-secret-0123456789abcdefgh"),
               "tampered": signer(), "expired": signer(skew=300, signature_ttl=60),
               "unknown_key": signer(key_id="k9")}
    clients = [Sandrun.create(broker_url=broker_url(broker), plugins=[plugin])
               for plugin in (genuine_signer, *signers.values())]
    client = clients[0]
    try:
        sent, bad = [], []
        for n in range(GENUINE):
            genuine = message(side_effects, f"genuine-{n}")
            genuine_signer.sign(genuine)
            client.publish(genuine)
            sent.append(genuine.task_id)
            if n % 10 < len(VARIANTS):
                variant = VARIANTS[n % 10]
                attack = forged(variant, side_effects, n, signers, genuine)
                client.publish(attack)
                if variant != "replayed":
                    bad.append(attack.task_id)
        states = {task_id: settled(client, task_id, "SUCCESS") for task_id in sent}
        states.update({task_id: settled(client, task_id, "FAILURE") for task_id in bad})
    finally:
        for made in clients:
            made.close()
    ran = (side_effects.read_text().splitlines() if side_effects.exists() else [])
    genuine_runs = [line for line in ran if line.startswith("genuine-")
                    and not line.endswith("-changed")]
    completed = sum(states[t] == "SUCCESS" for t in sent)
    duplicated = len(genuine_runs) - len(set(genuine_runs))
    scenario_report.record("auth: forged jobs under load", submitted=len(sent), completed=completed,
           lost=len(sent) - len(set(genuine_runs)), duplicated=duplicated)
    assert sorted(set(ran) - set(genuine_runs)) == []
    assert all(states[t] == "FAILURE" for t in bad)
    assert (completed, len(genuine_runs), duplicated) == (GENUINE, GENUINE, 0)


def settled(client: Sandrun, task_id: str, expected: str, timeout: float = 30) -> str:
    """The task's stored state once it is ``expected`` (or whatever it is at the deadline).

    A replay rejected while its original still runs stores a failure first, which
    the original's success then replaces; so wait for the state, not for "ready"."""
    deadline = time.monotonic() + timeout
    while True:
        state = str(client.app.backend.get_task_meta(task_id, cache=False)["status"])
        if state == expected or time.monotonic() > deadline:
            return state
        time.sleep(0.05)
