"""Faulty plugins on real workers: every job still completes, every fault is counted.

One ``celery worker`` (prefork, 2 processes) per fault, each with the metrics
plugin serving ``/metrics`` on a free port, loaded after the faulty plugin so
its own hooks run later in the same chains:

* a plugin that raises in every hook (also loaded in the producer client);
* a plugin whose ``on_execute`` sleeps far past ``SANDRUN_HOOK_TIMEOUT=0.5``;
* a plugin whose async hooks fail.

Jobs go through the real client; the counts of
``sandrun_plugin_hook_errors_total{plugin,hook,kind}`` are scraped over HTTP and
must be exact: one per job per faulty hook (``on_worker_start`` once per worker).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import (  # noqa: F401 (fixtures)
    Worker,
    WorkerFactory,
    broker,
    broker_url,
    start_worker,
)
from tests.integration.test_metrics import free_port, sample, scrape
from tests.support.faulty import RaisingPlugin
from worker.client.client import Sandrun
from worker.models import JobResult
from worker.plugin.spec import Plugin

pytestmark = pytest.mark.slow

JOBS = 6
HOOK_ERRORS = "sandrun_plugin_hook_errors_total"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def run_jobs(server: RedisServer, plugins: Sequence[Plugin] = ()
             ) -> tuple[list[JobResult], dict[tuple[str, str], int]]:
    """Submit JOBS jobs through the client; their results and the client's hook faults."""
    with Sandrun.create(broker_url=broker_url(server), plugins=list(plugins)) as client:
        runs = [client.job().code("print(6 * 7)").submit() for _ in range(JOBS)]
        results = [run.wait(timeout=60) for run in runs]
        return results, dict(client.manager.hook_errors)


def start(factory: WorkerFactory, fault: str, **env: str) -> tuple[Worker, int]:
    """A worker with the faulty plugin, then the metrics plugin on a free port."""
    port = free_port()
    plugins = [f"tests.support.faulty:{fault}",
               {"name": "metrics", "config": {"port": port, "address": "127.0.0.1"}}]
    worker = factory(name=fault.lower(), concurrency=2,
                          SANDRUN_PLUGINS=json.dumps(plugins), **env)
    return worker, port


def assert_all_completed(results: list[JobResult], samples: Samples) -> None:
    assert [(r.status, r.stdout) for r in results] == [("completed", "42\n")] * JOBS
    # the metrics plugin's on_execute and on_result ran after the faulty hooks
    assert sample(samples, "sandrun_job_queue_wait_seconds_count") == JOBS
    assert sample(samples, "sandrun_jobs_completed_total", status="completed",
                  gpu_type="none") == JOBS
    assert sample(samples, "sandrun_jobs_in_progress") == 0


def faults(samples: Samples, plugin: str) -> dict[tuple[str, str], float]:
    """The non-zero fault counts of ``plugin``, by (hook, kind)."""
    return {(dict(labels)["hook"], dict(labels)["kind"]): value
            for (name, labels), value in samples.items()
            if name == HOOK_ERRORS and dict(labels).get("plugin") == plugin and value}


def test_plugin_raising_in_every_hook(start_worker: WorkerFactory,  # noqa: F811
                                      broker: RedisServer) -> None:  # noqa: F811
    worker, port = start(start_worker, "RaisingPlugin")
    results, producer = run_jobs(broker, [RaisingPlugin()])
    samples = scrape(port)
    worker.stop()
    assert_all_completed(results, samples)
    assert producer == {("faulty-raise", "on_build"): JOBS, ("faulty-raise", "on_submit"): JOBS}
    assert faults(samples, "faulty-raise") == {
        ("on_worker_start", "error"): 1, ("on_execute", "error"): JOBS,
        ("on_result", "error"): JOBS}


def test_plugin_whose_hook_hangs(start_worker: WorkerFactory,  # noqa: F811
                                 broker: RedisServer) -> None:  # noqa: F811
    worker, port = start(start_worker, "HangingPlugin", SANDRUN_HOOK_TIMEOUT="0.5")
    started = time.monotonic()
    results, _ = run_jobs(broker)
    elapsed = time.monotonic() - started
    samples = scrape(port)
    worker.stop()
    assert_all_completed(results, samples)
    assert elapsed < 20  # each hung call costs at most its 0.5 s timeout
    assert faults(samples, "faulty-hang") == {("on_execute", "timeout"): JOBS}
    logged = [line for line in worker.output().splitlines() if "hook_timed_out" in line]
    for result in results:  # one event per job, naming plugin, hook, job and timeout
        assert [line for line in logged if f"job_id={result.id}" in line
                and "plugin=faulty-hang" in line and "hook=on_execute" in line
                and "timeout=0.5" in line], result.id


def test_plugin_whose_async_hooks_fail(start_worker: WorkerFactory,  # noqa: F811
                                       broker: RedisServer) -> None:  # noqa: F811
    worker, port = start(start_worker, "FailingAsyncPlugin")
    results, _ = run_jobs(broker)
    samples = scrape(port)
    worker.stop()
    assert_all_completed(results, samples)
    assert faults(samples, "faulty-async") == {("on_execute", "error"): JOBS,
                                                ("on_result", "error"): JOBS}
