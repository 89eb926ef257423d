"""Deploy files checked by real validators (promtool, kubernetes-validate, the compose
spec schema) and against what the code actually exports and runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not on PATH; install Debian's 'prometheus' package "
                    "(.ci/run does this on a fresh machine)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def exported_names() -> set[str]:
    """Every metric name the metrics plugin and the host create (default prefix)."""
    source = (ROOT / "plugins" / "metrics.py").read_text()
    names = {f"sandrun_{n}" for n in re.findall(r'_name\("([a-z_]+)"\)', source)}
    return names | {"sandrun_plugin_hook_errors_total", "sandrun_dead_letter_total"}


def used_names(expr: str) -> set[str]:
    found = set(re.findall(r"\bsandrun_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in found}


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-k8s.yml"])
def test_prometheus_configs_pass_promtool(config: str) -> None:
    proc = promtool("check", "config", str(DEPLOY / "prometheus" / config))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_pass_promtool_and_use_exported_metrics() -> None:
    proc = promtool("check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {"SandrunBacklogGrowing", "SandrunFailureRatioHigh",
                           "SandrunDeadLetters", "SandrunWorkerDown"}
    for expr in alerts.values():
        assert used_names(expr) <= exported_names(), expr


def test_dashboard_queries_are_valid_promql_on_exported_metrics(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "sandrun.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "failure", "retries", "dead letters", "queue wait",
                  "in progress", "hook latency"):
        assert topic in titles
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for expr in exprs:
        assert used_names(expr) <= exported_names(), expr
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == dashboard["panels"][0]["datasource"]["uid"]


def test_kubernetes_manifests_pass_the_schema_validator() -> None:
    manifests = sorted(str(p) for p in (DEPLOY / "k8s").glob("**/*.yaml"))
    proc = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", *manifests],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for resource in ("deployment/sandrun-worker", "service/sandrun-worker-metrics",
                     "deployment/sandrun-flower", "service/sandrun-flower"):
        assert f"passed for resource {resource}" in proc.stdout


def load_all(name: str) -> list[dict[str, object]]:
    return list(yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()))


def test_worker_deployment_probes_grace_and_keda_target() -> None:
    deployment = load_all("worker.yaml")[0]
    pod = deployment["spec"]["template"]["spec"]  # type: ignore[index]
    container = pod["containers"][0]
    assert container["livenessProbe"]["exec"]["command"][:3] == ["sandrun", "probe", "live"]
    assert container["readinessProbe"]["exec"]["command"] == ["sandrun", "probe", "ready"]
    assert pod["terminationGracePeriodSeconds"] > 3600 and pod["securityContext"]["runAsNonRoot"]
    # KEDA's CRDs have no schema in the validator: check what ties them to the rest.
    scaled, auth = load_all("keda.yaml")
    assert scaled["kind"] == "ScaledObject" and auth["kind"] == "TriggerAuthentication"
    spec = scaled["spec"]  # type: ignore[index]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]  # type: ignore[index]
    lanes = ["sandrun", *(f"sandrun\x06\x16{n}" for n in range(1, 10))]  # kombu's priority lists
    assert [t["metadata"]["listName"] for t in spec["triggers"]] == lanes
    for trigger in spec["triggers"]:
        assert trigger["type"] == "redis"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]  # type: ignore[index]


def test_compose_file_passes_the_compose_spec_schema() -> None:
    proc = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                           "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "worker", "flower", "beat", "prometheus", "grafana"}
    assert services["beat"]["entrypoint"][:2] == ["sandrun", "beat"]
    assert "--appendonly" in services["redis"]["command"]
    assert "--requirepass" in services["redis"]["command"]
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) > 3600
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["dns_sd_configs"][0]["names"] == ["worker"]


def test_beat_runs_with_the_plugin_that_implements_it() -> None:
    """``sandrun beat`` refuses to start unless a loaded plugin implements on_beat."""
    [beat] = load_all("beat.yaml")
    container = beat["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["command"][:2] == ["sandrun", "beat"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "scheduling" in json.loads(env["SANDRUN_PLUGINS"])
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    plugins = json.loads(compose["services"]["beat"]["environment"]["SANDRUN_PLUGINS"])
    assert "scheduling" in plugins


def test_dockerfile_runs_the_worker_as_a_non_root_user() -> None:
    lines = [x.strip() for x in (DEPLOY / "Dockerfile").read_text().splitlines()]
    user = [x for x in lines if x.startswith("USER ")]
    assert user and user[-1] != "USER root"
    # tini as PID 1 reaps orphans (worker.sandbox.reaping); bwrap builds the jobs' views
    assert 'ENTRYPOINT ["tini", "--", "sandrun", "worker"]' in lines
    assert any("bubblewrap tini" in x for x in lines)
    assert lines[0].startswith("#") and any(x.startswith("FROM python:3.11-slim") for x in lines)


def test_procfile_commands_exist() -> None:
    entries = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines())
    assert {"worker", "flower"} <= set(entries)
    for command in entries.values():
        argv = command.split()
        assert argv[0] == "sandrun"
        proc = subprocess.run([str(BIN / "sandrun"), argv[1], "--help"], capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr


def consumer_timeout_ms(config: str) -> int:
    """RabbitMQ's consumer_timeout (ms) in a rabbitmq.conf text."""
    found = re.findall(r"^\s*consumer_timeout\s*=\s*(\d+)\s*$", config, re.MULTILINE)
    assert len(found) == 1, config
    return int(found[0])


def test_rabbitmq_variant_prometheus_config_and_alerts_pass_promtool() -> None:
    proc = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus-rabbitmq.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = promtool("check", "rules", str(DEPLOY / "prometheus" / "alerts-rabbitmq.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts-rabbitmq.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {"SandrunRabbitBacklog", "SandrunRabbitDeadLettersWaiting",
                           "SandrunRabbitDown"}
    # queue names as worker/broker/amqp.py declares them
    assert 'queue="sandrun.dead"' in alerts["SandrunRabbitDeadLettersWaiting"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-rabbitmq.yml").read_text())
    jobs = {c["job_name"]: c for c in scrape["scrape_configs"]}
    assert jobs["rabbitmq"]["metrics_path"] == "/metrics/per-object"
    assert set(scrape["rule_files"]) == {"alerts.yml", "alerts-rabbitmq.yml"}


def test_rabbitmq_compose_override_passes_the_schema_and_pairs_rabbitmq_with_redis() -> None:
    path = DEPLOY / "compose.rabbitmq.yaml"
    proc = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                           "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    services = yaml.safe_load(path.read_text())["services"]
    base = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert set(services) - {"rabbitmq"} <= set(base)
    for name in ("worker", "flower", "beat"):
        env = services[name]["environment"]
        assert env["SANDRUN_BROKER_URL"].startswith("amqp://")
        assert env["SANDRUN_RESULT_BACKEND"].startswith("redis://")
    mounts = services["rabbitmq"]["volumes"]
    assert "./rabbitmq/enabled_plugins:/etc/rabbitmq/enabled_plugins:ro" in mounts
    assert "rabbitmq_prometheus" in (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
    assert consumer_timeout_ms((DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()) > 3600_000


def test_rabbitmq_kubernetes_variant_scales_on_the_job_queue() -> None:
    scaled, auth = yaml.safe_load_all((DEPLOY / "k8s" / "rabbitmq" / "keda.yaml").read_text())
    [deployment] = load_all("worker.yaml")[:1]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]  # type: ignore[index]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq" and trigger["metadata"]["queueName"] == "sandrun"
    assert trigger["metadata"]["mode"] == "QueueLength"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    [cluster] = yaml.safe_load_all((DEPLOY / "k8s" / "rabbitmq" / "rabbitmq.yaml").read_text())
    assert cluster["kind"] == "RabbitmqCluster" and cluster["spec"]["replicas"] % 2 == 1
    assert consumer_timeout_ms(cluster["spec"]["rabbitmq"]["additionalConfig"]) > 3600_000
    container = deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    env = {e["name"]: e for e in container["env"]}
    assert env["SANDRUN_RESULT_BACKEND"]["valueFrom"]["secretKeyRef"]["optional"] is True
