"""Permissions on a real worker: a change or veto the operator did not grant is
discarded or ignored, logged and counted on /metrics; a plugin without ``secrets`` sees
env values redacted while the job gets them; granted changes are recorded in the
stored result."""

from __future__ import annotations

import json

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import Worker, WorkerFactory, broker_url
from tests.integration.test_metrics import free_port, sample, scrape
from tests.support.overreach import JobTagger
from worker.client.client import Sandrun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def worker(start_worker: WorkerFactory, port: int) -> Worker:
    plugins = [{"name": "metrics", "config": {"port": port, "address": "127.0.0.1"}},
               "tests.support.overreach:ResultForger", "tests.support.overreach:ResultEditor",
               {"name": "tests.support.overreach:Bouncer", "permissions": []}]
    return start_worker(SANDRUN_PLUGINS=json.dumps(plugins),
                        SANDRUN_PLUGIN_PERMISSIONS="forger=")


def test_a_refused_transform_is_discarded_and_counted_on_metrics(
        worker: Worker, broker: RedisServer, port: int) -> None:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[JobTagger()]) as client:
        runs = [client.job().code("print('real')").submit() for _ in range(3)]
        results = [run.wait(timeout=60) for run in runs]
        stored = json.loads(json.dumps(client.execution(runs[0].id).wait(timeout=5)
                                       .model_dump(mode="json")))
    assert [(r.status, r.stdout, r.stderr) for r in results] == [
        ("completed", "real\n", "edited\n")] * 3
    samples = scrape(port)
    assert sample(samples, "sandrun_plugin_hook_errors_total", plugin="forger",
                  hook="on_result", kind="permission") == 3
    assert sample(samples, "sandrun_plugin_hook_errors_total", plugin="editor",
                  hook="on_result", kind="permission") == 0
    refusals = [line for line in worker.output().splitlines()
                if "hook_permission_refused" in line]
    assert len(refusals) == 3
    assert all("plugin=forger" in line and "permission=result:transform" in line
               and "tried=change stdout" in line for line in refusals)
    # the stored result says which plugins changed the job and the result, in order
    assert stored["provenance"] == [
        {"plugin": "tagger", "hook": "on_submit", "fields": ["labels"]},
        {"plugin": "editor", "hook": "on_result", "fields": ["stderr"]}]


def test_a_refused_veto_lets_the_job_run_and_secrets_reach_only_the_job(
        worker: Worker, broker: RedisServer, port: int) -> None:
    before = sample(scrape(port), "sandrun_plugin_hook_errors_total", plugin="bouncer",
                    hook="on_execute", kind="permission")
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as client:
        result = (client.job().code("import os; print(os.environ['API_KEY'])")
                  .env({"API_KEY": "hunter2"}).labels({"bounce": "yes"}).submit()
                  .wait(timeout=60))
    assert (result.status, result.stdout) == ("completed", "hunter2\n")
    assert result.stderr == "edited\nsaw API_KEY=<redacted>\n"
    assert sample(scrape(port), "sandrun_plugin_hook_errors_total", plugin="bouncer",
                  hook="on_execute", kind="permission") == before + 1
    assert "hunter2" not in worker.output()
