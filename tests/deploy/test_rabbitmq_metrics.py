"""The RabbitMQ alert rules against RabbitMQ's real Prometheus endpoint.

A ``rabbitmq-server`` node of the test's own with ``rabbitmq_prometheus`` (the plugin
deploy/rabbitmq/enabled_plugins enables) serves ``/metrics/per-object``, the path
deploy/prometheus/prometheus-rabbitmq.yml scrapes; a job queue declared as Sandrun
declares it must appear there under every metric name the alerts use.
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.rabbit import free_port, own_rabbit
from worker.broker.factory import make_app
from worker.broker.publisher import Publisher
from worker.protocol import Publication

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

pytestmark = pytest.mark.slow


def alert_metrics() -> set[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts-rabbitmq.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return {n for e in exprs for n in re.findall(r"\b(rabbitmq_[a-z_]+)\{", e)}


def listed(text: str, name: str) -> list[str]:
    """The samples of metric ``name`` for queue sandrun in an exposition text."""
    return [line for line in text.splitlines()
            if line.startswith(name + "{") and 'queue="sandrun"' in line]


def scrape_until_listed(url: str, names: set[str], timeout: float = 30) -> str:
    """The endpoint's text once every metric of ``names`` has a sample for queue sandrun
    (queue statistics are gathered every collect_statistics_interval)."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        if all(listed(text, name) for name in names) or time.monotonic() > deadline:
            return text
        time.sleep(0.25)


def test_the_alerts_read_metrics_the_per_object_endpoint_serves(tmp_path: Path) -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-rabbitmq.yml").read_text())
    [job] = [c for c in scrape["scrape_configs"] if c["job_name"] == "rabbitmq"]
    port = free_port()
    config = (f"prometheus.tcp.port = {port}\nprometheus.tcp.ip = 127.0.0.1\n"
              "collect_statistics_interval = 500\n")  # queue stats are gathered this often
    with own_rabbit(tmp_path / "rabbit", plugins=("rabbitmq_prometheus",), config=config) as node:
        app = make_app(node.url, "redis://127.0.0.1:6379/15")  # no result is read
        try:
            Publisher(app, retry_seconds=5).publish(Publication(
                task="tests.add", task_id="one", queue="sandrun", args=[1, 2]))
        finally:
            app.close()
        names = alert_metrics()
        assert names, "the alerts read no RabbitMQ metric"
        text = scrape_until_listed(f"http://127.0.0.1:{port}{job['metrics_path']}", names)
    for name in names:
        assert listed(text, name), (name, [x for x in text.splitlines() if name in x][:5])
    ready = listed(text, "rabbitmq_queue_messages_ready")
    assert ready and ready[0].rsplit(" ", 1)[1] in {"1", "1.0"}, ready
