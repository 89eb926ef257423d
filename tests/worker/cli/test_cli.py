"""The sandrun CLI: plugin introspection and the demo, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from tests.conftest import RedisServer
from worker.cli import main


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env or {})
    return result.exit_code, result.stdout, result.stderr


def test_plugins_list_shows_builtin_and_enabled_state() -> None:
    code, out, _ = run("plugins", "list", env={"SANDRUN_PLUGINS": '["defaults"]'})
    assert code == 0 and "defaults" in out and "yes" in out


def test_plugins_list_plan() -> None:
    code, out, _ = run("plugins", "list", "--plan", env={"SANDRUN_PLUGINS": json.dumps(
        [{"name": "defaults", "config": {"queue": "batch"}}])})
    assert code == 0 and "Hook plan" in out and "on_submit" in out and "batch" in out


def test_plugins_show_with_configured_config() -> None:
    code, out, _ = run("plugins", "show", "defaults", env={"SANDRUN_PLUGINS": json.dumps(
        [{"name": "defaults", "config": {"timeout": 60}}])})
    assert code == 0
    assert "1.0.0" in out and "on_build" in out and '"timeout":60.0' in out


def test_plugins_schema_is_json_schema() -> None:
    code, out, _ = run("plugins", "schema", "defaults")
    schema = json.loads(out)
    assert code == 0 and schema["additionalProperties"] is False
    assert {"labels", "queue", "timeout"} <= set(schema["properties"])


def test_unknown_plugin_is_an_error_on_stderr() -> None:
    code, out, err = run("plugins", "show", "nope")
    assert code == 1 and out == "" and "no plugin named 'nope'" in err


def test_bad_configuration_exits_2() -> None:
    code, _, err = run("plugins", "list", env={"SANDRUN_PLUGINS": "[oops"})
    assert code == 2 and "not valid JSON" in err


def test_invalid_plugin_config_is_reported() -> None:
    code, _, err = run("plugins", "show", "defaults", env={"SANDRUN_PLUGINS": json.dumps(
        [{"name": "defaults", "config": {"timeout": -1}}])})
    assert code == 1 and "timeout" in err


def test_plugins_show_prints_declared_and_granted_permissions() -> None:
    code, out, _ = run("plugins", "show", "retry", env={
        "SANDRUN_PLUGINS": '["retry"]', "SANDRUN_PLUGIN_PERMISSIONS": "retry=storage"})
    assert code == 0
    assert "declared permissions │ result:transform, secrets, storage" in out
    assert "granted permissions  │ storage" in out
    assert "on_error(priority=-1000)" in out


def test_plugins_explain_prints_the_chain_in_call_order() -> None:
    code, out, _ = run("plugins", "explain", "on_submit", env={
        "SANDRUN_PLUGINS": json.dumps(["metrics", "defaults",
                                       {"name": "logging", "permissions": []}]),
        "SANDRUN_PLUGIN_PERMISSIONS": "defaults=", "SANDRUN_HOOK_TIMEOUT": "7"})
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [row.split("│")[2].strip() for row in rows] == ["defaults", "logging", "metrics"]
    assert "100" in rows[0] and "no: job:transform" in rows[0]
    assert "-500" in rows[2] and "network" in rows[2]


def test_plugins_explain_an_unknown_hook_says_which_exist() -> None:
    code, _, err = run("plugins", "explain", "on_nope")
    assert code == 2 and "'on_nope' is not a hook" in err


def test_bad_plugin_permissions_exit_2_saying_how_to_write_them() -> None:
    code, _, err = run("plugins", "show", "retry", env={
        "SANDRUN_PLUGIN_PERMISSIONS": "retry=storage,network"})
    err = " ".join(err.split())
    assert code == 2 and "does not declare" in err and "remove network" in err


def test_an_invalid_job_option_is_named_without_pydantic_boilerplate(tmp_path: Path) -> None:
    """A bad --consensus is reported as ``field: rule`` with exit code 2, no pydantic links."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDRUN_")}
    env["SANDRUN_STATE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-m", "worker.cli", "submit", "--code", "print(1)",
                          "--consensus", "7-of-3"], capture_output=True, text=True, env=env,
                         timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert "consensus:" in run.stderr and "k must" in run.stderr
    assert "errors.pydantic.dev" not in run.stderr


def test_cancel_validates_the_id_and_says_where_the_job_was(redis_server: RedisServer,
                                                            tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDRUN_")}
    env.update({"SANDRUN_STATE_DIR": str(tmp_path),
                "SANDRUN_BROKER_URL": f"redis+socket://{redis_server.socket}"})

    def cancel(job_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker.cli", "cancel", job_id],
                              capture_output=True, text=True, env=env, timeout=60, check=False)

    refused = cancel("../sandrun:x*")
    assert refused.returncode != 0 and "is not a job id" in refused.stderr, refused.stderr
    assert not redis_server.client().keys("sandrun:revoked:*")
    done = cancel("never-started-1")  # nothing consumes it: it reads as queued
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "never-started-1: cancelled (queued)"
    assert redis_server.client().exists("sandrun:revoked:never-started-1")
    again = cancel("never-started-1")
    assert again.stdout.strip() == "never-started-1: finished already, nothing cancelled"
