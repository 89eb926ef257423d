"""Authentication with a real worker: every forged variant is rejected and never runs.

The side effect is a line a user task (``tests.touch``) appends to a file: a
rejected message must never write it. Sandbox jobs check the ``run_job`` path and
key rotation through the keys file the worker re-reads.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from celery.result import AsyncResult

from plugins.auth import AuthPlugin, auth_plugin
from plugins.auth.tokens import HMACProvider
from tests.conftest import RedisServer
from tests.integration.conftest import Worker, WorkerFactory, broker_url
from worker.client.client import Sandrun
from worker.protocol import Publication
from worker.stores.deadletter import DeadLetter, dead_letter_store_for

pytestmark = pytest.mark.slow

K1 = "integration-key-one-0123456789abcdef"
K2 = "integration-key-two-0123456789abcdef"


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "keys.json"
    path.write_text(json.dumps({"k1": K1, "k2": K2}))
    return path


@pytest.fixture(scope="module")
def worker(start_worker: WorkerFactory, keys_file: Path) -> Worker:
    plugins = [{"name": "auth", "config": {"keys_file": str(keys_file)}}]
    return start_worker(concurrency=2, SANDRUN_PLUGINS=json.dumps(plugins))


def producer(key_id: str = "k1", secret: str = K1, **options: object) -> AuthPlugin:
    return auth_plugin(HMACProvider(key_id, secret), auto_refresh=False, **options)  # type: ignore[arg-type]


@pytest.fixture
def make_client(broker: RedisServer, worker: Worker) -> Iterator[type[Sandrun]]:
    made: list[Sandrun] = []

    def create(*plugins: AuthPlugin) -> Sandrun:
        client = Sandrun.create(broker_url=broker_url(broker), plugins=list(plugins))
        made.append(client)
        return client

    yield create  # type: ignore[misc]
    for client in made:
        client.close()


def touch(side_effects: Path, line: str, seconds: float = 0) -> Publication:
    return Publication(task="tests.touch", task_id=str(uuid.uuid4()), queue="sandrun",
                       args=[str(side_effects), line, seconds])


def outcome(client: Sandrun, task_id: str) -> tuple[str, str]:
    handle = AsyncResult(task_id, app=client.app)
    handle.get(timeout=30, propagate=False)
    return handle.state, str(handle.result)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_signed_jobs_run_with_either_active_key(make_client: type[Sandrun]) -> None:
    for plugin in (producer("k1", K1), producer("k2", K2)):
        client = make_client(plugin)  # type: ignore[call-arg]
        result = client.job().code("print('signed')").submit().wait(timeout=30)
        assert (result.status, result.stdout) == ("completed", "signed\n")


def test_unsigned_job_is_rejected_and_dead_lettered(make_client: type[Sandrun],
                                                    worker: Worker) -> None:
    client = make_client()  # type: ignore[call-arg]
    run = client.job().code("print('never')").submit()
    result = run.wait(timeout=30)
    assert (result.status, result.stdout) == ("rejected", "")
    assert result.error is not None and "unsigned" in result.error.message
    letter = dead_letter_store_for(str(client.app.conf.result_backend)).get(run.id)
    assert letter is not None and letter.source == "auth"
    assert "job_auth_rejected" in worker.output()


def forge(variant: str, side_effects: Path, line: str) -> tuple[AuthPlugin, Publication]:
    """A producer and a message that is wrong in the way ``variant`` says."""
    if variant == "forged":
        return producer("k1", "an-attacker-guess-0123456789abcdefgh"), touch(side_effects, line)
    if variant == "unknown_key":
        return producer("k9", K1), touch(side_effects, line)
    if variant == "expired":
        return (auth_plugin(HMACProvider("k1", K1, clock=lambda: time.time() - 120),
                            clock=lambda: time.time() - 120, auto_refresh=False,
                            signature_ttl=60), touch(side_effects, line))
    return producer(), touch(side_effects, line)


@pytest.mark.parametrize("variant", ["unsigned", "forged", "tampered", "expired",
                                     "unknown_key"])
def test_forged_variants_never_run(make_client: type[Sandrun], tmp_path: Path,
                                   variant: str) -> None:
    side_effects = tmp_path / "side-effects"
    plugin, publication = forge(variant, side_effects, "forged")
    client = make_client(plugin)  # type: ignore[call-arg]
    if variant != "unsigned":
        plugin.sign(publication)
    if variant == "tampered":
        publication.args[1] = "tampered"
    client.publish(publication)
    state, error = outcome(client, publication.task_id)
    assert state == "FAILURE" and "authentication failed" in error
    expected = "bad_signature" if variant == "forged" else variant
    assert expected in error
    genuine = touch(side_effects, "genuine")
    plugin_ok = producer()
    make_client(plugin_ok).publish(  # type: ignore[call-arg]
        (plugin_ok.sign(genuine), genuine)[1])
    assert outcome(client, genuine.task_id)[0] == "SUCCESS"
    assert lines(side_effects) == ["genuine"]


def test_replays_never_run_twice(make_client: type[Sandrun], tmp_path: Path,
                                 worker: Worker) -> None:
    side_effects = tmp_path / "side-effects"
    plugin = producer()
    client = make_client(plugin)  # type: ignore[call-arg]
    running = touch(side_effects, "slow", seconds=1.5)
    plugin.sign(running)
    client.publish(running)
    client.publish(running)  # replayed while the first runs: caught by its nonce
    finished = touch(side_effects, "fast")
    plugin.sign(finished)
    client.publish(finished)
    assert outcome(client, finished.task_id)[0] == "SUCCESS"
    client.publish(finished)  # replayed after it finished: the stored result answers
    sentinels = [touch(tmp_path / "sentinels", f"s{n}") for n in range(2)]
    for sentinel in sentinels:  # published after the replay, so consumed after it
        plugin.sign(sentinel)
        client.publish(sentinel)
    for sentinel in sentinels:
        assert outcome(client, sentinel.task_id)[0] == "SUCCESS"
    deadline = time.monotonic() + 30
    while AsyncResult(running.task_id, app=client.app).state != "SUCCESS":
        assert time.monotonic() < deadline, "the genuine slow task never stored its result"
        time.sleep(0.05)
    assert sorted(lines(side_effects)) == ["fast", "slow"]
    assert "delivery_dropped" in worker.output()  # the copy stored nothing under its id


def copied_by_a_broker_writer(client: Sandrun, publication: Publication, *,
                              redelivered: bool, retries: int) -> None:
    """``publication`` sent again as anyone who can write to the broker can: its signed
    headers and body untouched, the broker's redelivered flag set (in the delivery info
    and the headers, as kombu marks a restored message) and any retry count."""
    options = publication.options()
    if redelivered:
        options["headers"]["redelivered"] = True
        options["delivery_info"] = {"redelivered": True}
    client.app.send_task(publication.task, args=publication.args, kwargs=publication.kwargs,
                         retries=retries, **options)


def replay_letter(client: Sandrun, task_id: str, side_effects: Path,
                  timeout: float = 30) -> DeadLetter | None:
    """The dead letter of a refused copy of ``task_id``; None if the copy ran instead."""
    store = dead_letter_store_for(str(client.app.conf.result_backend))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(lines(side_effects)) < 2:
        found = [x for x in store.list(1000) if x.id.startswith(f"{task_id}:replayed:")]
        if found:
            return found[0]
        time.sleep(0.05)
    return None


class Copy(NamedTuple):
    """A finished job (``task``, ending in ``state``) and how its copy is marked."""

    task: str
    state: str
    redelivered: bool
    retries: int


@pytest.mark.parametrize("copy", [
    # A failure: the worker itself stops only a copy of a stored success.
    Copy("tests.touch_then_fail", "FAILURE", redelivered=True, retries=0),
    # Not flagged, so the worker does not look for a stored result; a forged retry count.
    Copy("tests.touch", "SUCCESS", redelivered=False, retries=1),
], ids=["failed-redelivered", "completed-next-attempt"])
def test_a_finished_job_copied_as_a_redelivery_or_retry_never_runs_again(
        make_client: type[Sandrun], tmp_path: Path, worker: Worker, copy: Copy) -> None:
    """The redelivered flag and the retry count are the broker writer's word: once the
    job has a final result, its message is refused however it is marked."""
    side_effects = tmp_path / "side-effects"
    plugin = producer()
    client = make_client(plugin)  # type: ignore[call-arg]
    original = Publication(task=copy.task, task_id=str(uuid.uuid4()), queue="sandrun",
                           args=[str(side_effects), "once"])
    plugin.sign(original)
    client.publish(original)
    assert outcome(client, original.task_id)[0] == copy.state
    copied_by_a_broker_writer(client, original, redelivered=copy.redelivered,
                              retries=copy.retries)
    letter = replay_letter(client, original.task_id, side_effects)
    assert lines(side_effects) == ["once"]
    assert letter is not None and "already reached a final result" in letter.reason
    assert f"redelivered={copy.redelivered}" in worker.output()  # the flag reached it
    assert outcome(client, original.task_id)[0] == copy.state  # no STARTED written over it


def test_a_finished_job_whose_message_ignored_its_result_is_still_finished(
        make_client: type[Sandrun], tmp_path: Path, worker: Worker) -> None:
    """The worker writes the finished nonce with the stored result; a message that asks
    Celery to store no result (an unsigned option) must not leave its job unfinished,
    so that a copy of it would run again."""
    side_effects = tmp_path / "side-effects"
    plugin = producer()
    client = make_client(plugin)  # type: ignore[call-arg]
    original = touch(side_effects, "once")
    plugin.sign(original)
    client.app.send_task(original.task, args=original.args, kwargs=original.kwargs,
                         ignore_result=True, **original.options())
    deadline = time.monotonic() + 30
    while not any("job_finished" in line and original.task_id in line
                  for line in worker.output().splitlines()):  # logged once it has ended
        assert time.monotonic() < deadline, "the original never finished"
        time.sleep(0.05)
    copied_by_a_broker_writer(client, original, redelivered=False, retries=1)
    letter = replay_letter(client, original.task_id, side_effects)
    assert lines(side_effects) == ["once"]
    assert letter is not None and "already reached a final result" in letter.reason


def test_rotation_retires_a_removed_key(make_client: type[Sandrun], keys_file: Path) -> None:
    old, new = make_client(producer("k1", K1)), make_client(producer("k2", K2))  # type: ignore[call-arg]
    keys_file.write_text(json.dumps({"k2": K2}))
    try:
        assert old.job().code("print(1)").submit().wait(timeout=30).status == "rejected"
        assert new.job().code("print(2)").submit().wait(timeout=30).status == "completed"
    finally:
        keys_file.write_text(json.dumps({"k1": K1, "k2": K2}))

