"""The reliability tier: tests that kill, restart and attack real processes on loopback.

Every test here is marked ``slow`` (added at collection). Scenarios report their
counts through the session fixture ``scenario_report``::

    def test_something(scenario_report: ScenarioReport) -> None:
        ...
        scenario_report.record("name", submitted=100, completed=100, lost=0, duplicated=0)

and the tier prints one table at the end of the run (scenario, broker, submitted,
completed, lost, duplicated, note; ``tests.support.scenarios``, printed by
tests/conftest.py, which also gathers the rows of pytest-xdist workers).
``cluster`` gives a test its own private redis-server, worker factory, side-effect
ledger, result watcher and client (``tests.support.cluster``), all stopped when the
test ends, even on failure;
``aof_cluster`` the same with a broker that can be killed and restarted with its data.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.scenarios import REPORT_KEY, ScenarioReport

HERE = Path(__file__).resolve().parent




def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def scenario_report(pytestconfig: pytest.Config) -> ScenarioReport:
    return pytestconfig.stash.setdefault(REPORT_KEY, ScenarioReport())


@pytest.fixture(params=["redis", "rabbitmq"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A private broker with the ledger, watcher and client; workers on demand. Once on a
    private Redis (no AOF), once on a private vhost of the shared RabbitMQ with that Redis
    as result backend and store."""
    made = Cluster(tmp_path, kind=request.param)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def aof_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The same, with a redis-server that keeps an append-only file (fsync always), so
    ``aof_cluster.broker.kill()`` then ``.start()`` restarts it with its data."""
    made = Cluster(tmp_path, aof=True)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def crash_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster whose ``transport`` can be SIGKILLed and restarted with its data: a
    redis-server with an append-only file (fsync always), or a rabbitmq-server node of
    the test's own (never the shared one)."""
    made = Cluster(tmp_path, aof=True, kind=request.param, own_node=True)
    try:
        yield made
    finally:
        made.close()
