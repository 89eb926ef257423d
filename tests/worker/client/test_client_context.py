"""What the client sends of a job's context, and producer-side failures through on_error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import RedisServer
from worker import ErrorContext, Plugin, SubmissionContext
from worker.client.client import Sandrun
from worker.errors import (
    BrokerUnavailable,
    InvalidJob,
    PaymentRejected,
    QueueFull,
    SubmissionRejected,
)
from worker.models import Job
from worker.protocol import BAGGAGE_HEADER, CORRELATION_HEADER, TENANT_HEADER
from worker.settings import Settings


def make(url: str, *plugins: Plugin, **settings: Any) -> Sandrun:
    return Sandrun.create(broker_url=url, plugins=list(plugins),
                          settings=Settings(publish_retry_seconds=1.0, **settings))


def sent_headers(client: redis.Redis) -> dict[str, Any]:
    return dict(json.loads(client.lindex("sandrun", 0) or "{}")["headers"])


class Errors(Plugin):
    """Records on_error calls; vetoes with ``veto`` in on_submit; replaces with ``replace``."""

    name = "errors"

    def __init__(self, veto: Exception | None = None, replace: Exception | None = None) -> None:
        self.veto, self.replace = veto, replace
        self.seen: list[tuple[BaseException, ErrorContext]] = []

    def on_submit(self, job: Job, context: SubmissionContext) -> None:
        context.baggage["seen_by"] = "errors"
        if self.veto is not None:
            raise self.veto

    def on_error(self, error: BaseException, context: ErrorContext) -> BaseException | None:
        self.seen.append((error, context))
        return self.replace


def test_the_context_travels_in_headers(redis_server: RedisServer,
                                        redis_client: redis.Redis) -> None:
    with make(f"redis+socket://{redis_server.socket}", Errors()) as client:
        run = client.submit(Job(code="1", labels={"tenant": "acme"}), correlation_id="req-1",
                            baggage={"team": "ml"})
        headers = sent_headers(redis_client)
        assert headers[CORRELATION_HEADER] == "req-1" == run.correlation_id
        assert headers[TENANT_HEADER] == "acme"
        assert headers[BAGGAGE_HEADER] == {"team": "ml", "seen_by": "errors"}
        assert run.context is not None and run.context.tenant == "acme"
        redis_client.delete("sandrun")
        second = client.submit(Job(code="1"), tenant="beta")
        headers = sent_headers(redis_client)
        assert headers[CORRELATION_HEADER] == second.correlation_id and len(
            headers[CORRELATION_HEADER]) == 32
        assert headers[TENANT_HEADER] == "beta"
        loose = client.submit(Job(code="1", labels={"tenant": "Acme Corp"}))  # no tenant
        assert loose.context is not None and loose.context.tenant is None
        third = client.submit(Job(code="1"))
        assert third.correlation_id not in (None, second.correlation_id)
        built = client.job().code("1").submit(correlation_id="built-1", baggage={"b": "1"})
        assert built.context is not None
        assert (built.correlation_id, built.context.baggage) == (
            "built-1", {"b": "1", "seen_by": "errors"})


@pytest.mark.parametrize("bad", [{"baggage": {"k": "line\nbreak"}}, {"tenant": "two words"},
                                 {"correlation_id": "x" * 200}])
def test_an_invalid_context_fails_the_submit_through_on_error(
        redis_server: RedisServer, redis_client: redis.Redis, bad: dict[str, Any]) -> None:
    errors = Errors()
    with make(f"redis+socket://{redis_server.socket}", errors) as client, \
            pytest.raises(InvalidJob, match="context of job"):
        client.submit(Job(code="1"), **bad)
    assert redis_client.llen("sandrun") == 0
    [(error, context)] = errors.seen
    assert isinstance(error, InvalidJob) and context.operation == "submit"


@pytest.mark.parametrize("veto", [SubmissionRejected("no"), QueueFull("queue sandrun is full")])
def test_vetoes_reach_on_error_as_submit_failures(redis_server: RedisServer,
                                                  veto: Exception) -> None:
    errors = Errors(veto=veto)
    job = Job(code="1")
    with make(f"redis+socket://{redis_server.socket}", errors) as client, \
            pytest.raises(type(veto)):
        client.submit(job)
    [(error, context)] = errors.seen
    assert error is veto and (context.operation, context.job_id) == ("submit", job.id)


def test_a_refused_payment_reaches_on_error(redis_server: RedisServer) -> None:
    errors = Errors()
    pricing = {"currency": "USD", "cpu_second": "0.01"}
    with make(f"redis+socket://{redis_server.socket}", errors, pricing=pricing) as client, \
            pytest.raises(PaymentRejected):
        client.submit(Job(code="1", timeout=100, payment={"amount": "0.5", "currency": "USD"}))
    assert [(type(e), c.operation) for e, c in errors.seen] == [(PaymentRejected, "submit")]


def test_an_unreachable_broker_reaches_on_error_and_a_hook_may_replace_it(
        tmp_path: Path) -> None:
    replacement = SubmissionRejected("broker down: try the other region")
    errors = Errors(replace=replacement)
    with make(f"redis+socket://{tmp_path}/nobody.sock", errors) as client, \
            pytest.raises(SubmissionRejected, match="other region") as raised:
        client.submit(Job(code="1"))
    assert isinstance(raised.value.__cause__, BrokerUnavailable)
    [(error, context)] = errors.seen
    assert isinstance(error, BrokerUnavailable) and context.operation == "submit"
