"""Bad input sent straight to the broker, bypassing the client: each message is
rejected with a logged reason and dead-lettered, and the worker goes on serving."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from tests.conftest import RedisServer
from tests.integration.conftest import Worker, WorkerFactory, broker_url
from worker.client.client import Sandrun
from worker.stores.deadletter import DeadLetter, RedisDeadLetterStore

pytestmark = pytest.mark.slow

EXCHANGE = Exchange("sandrun", "direct")
QUEUE = Queue("sandrun", EXCHANGE, "sandrun")


@pytest.fixture(scope="module")
def worker(start_worker: WorkerFactory) -> Worker:
    return start_worker(name="strict", concurrency=1)


@pytest.fixture
def client(broker: RedisServer, worker: Worker) -> Iterator[Sandrun]:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as made:
        yield made


def publish(broker: RedisServer, body: Any, headers: dict[str, Any],
            content_type: str = "application/json") -> None:
    with Connection(broker_url(broker)) as conn:
        conn.Producer().publish(body, exchange=EXCHANGE, routing_key="sandrun",
                                declare=[QUEUE], headers=headers, content_type=content_type,
                                content_encoding="utf-8" if "json" in content_type
                                else "binary", serializer=None)


def letter(broker: RedisServer, letter_id: str, client: Sandrun) -> DeadLetter:
    follow_up = client.job().code("print('still serving')").submit().wait(timeout=30)
    assert follow_up.stdout == "still serving\n"
    found = RedisDeadLetterStore(broker.client()).get(letter_id)
    assert found is not None, f"no dead letter {letter_id}"
    return found


def task_headers(task: str, task_id: str) -> dict[str, Any]:
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
            "parent_id": None, "group": None, "retries": 0, "eta": None, "expires": None}


def body(*args: Any) -> bytes:
    return json.dumps([list(args), {}, {"callbacks": None, "errbacks": None, "chain": None,
                                        "chord": None}]).encode()


def test_invalid_json(broker: RedisServer, client: Sandrun, worker: Worker) -> None:
    publish(broker, b"{not json", task_headers("sandrun.run_job", "bad-json"))
    found = letter(broker, "bad-json", client)
    assert found.source == "broker" and "cannot decode" in found.reason
    assert found.raw == "{not json"
    assert "message_dead_lettered" in worker.output()


def test_pickle_content_type(broker: RedisServer, client: Sandrun) -> None:
    publish(broker, pickle.dumps(([{"code": "1"}], {}, {})),
            task_headers("sandrun.run_job", "pickled"), "application/x-python-serialize")
    found = letter(broker, "pickled", client)
    assert "untrusted content of type pickle" in found.reason


def test_unknown_task_name(broker: RedisServer, client: Sandrun) -> None:
    publish(broker, body(1, 2), task_headers("no.such.task", "unknown-task"))
    assert "unknown task 'no.such.task'" in letter(broker, "unknown-task", client).reason


def test_valid_message_with_the_wrong_schema(broker: RedisServer, client: Sandrun) -> None:
    publish(broker, body({"code": "1", "timeout": -5, "colour": "red"}),
            task_headers("sandrun.run_job", "bad-schema"))
    found = letter(broker, "bad-schema", client)
    assert "timeout" in found.reason and "colour" in found.reason
    stored = client.execution("bad-schema").result()
    assert stored is not None and stored.status == "rejected"


def test_missing_fields(broker: RedisServer, client: Sandrun) -> None:
    publish(broker, body(), task_headers("sandrun.run_job", "no-job"))
    assert "missing or malformed" in letter(broker, "no-job", client).reason
    publish(broker, body(), {"id": "headless"})
    assert "name no task" in letter(broker, "headless", client).reason


def test_oversized_payload(broker: RedisServer, client: Sandrun) -> None:
    huge = "x = 1\n" * (3 * 1024 * 1024)
    publish(broker, body({"code": huge}), task_headers("sandrun.run_job", "huge"))
    assert "over the 16 MiB" in letter(broker, "huge", client).reason


def test_a_dead_letter_keeps_the_valid_part_of_the_context_headers(
        broker: RedisServer, client: Sandrun, worker: Worker) -> None:
    context = {"sandrun_correlation_id": "lost-7", "sandrun_tenant": "bad\ntenant",
               "sandrun_baggage": {"team": "ml"}}
    publish(broker, body(1, 2), {**task_headers("no.such.task", "unknown-ctx"), **context})
    buried = letter(broker, "unknown-ctx", client).context
    assert buried is not None and buried.tenant is None
    assert (buried.correlation_id, buried.baggage) == ("lost-7", {"team": "ml"})
    publish(broker, body({"code": "1", "timeout": -5}),
            {**task_headers("sandrun.run_job", "bad-schema-ctx"), **context})
    rejected = letter(broker, "bad-schema-ctx", client).context
    assert rejected is not None and rejected.correlation_id == "lost-7"
    assert "job_context_dropped" in worker.output() and "bad\ntenant" not in worker.output()
