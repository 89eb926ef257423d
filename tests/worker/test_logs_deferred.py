"""Deferred logging: what the CLI sets up costs no structlog import until something logs,
and then logs exactly as ``configure_logging`` would have.

Each case runs in a fresh interpreter: logging is process-wide state, and this one
imported structlog long ago.
"""

from __future__ import annotations

import logging
import subprocess
import sys

from worker import logs

REPORT = "\nprint('structlog imported:', 'structlog' in sys.modules)"


def run(code: str) -> subprocess.CompletedProcess[str]:
    script = "import logging, sys\nfrom worker import logs\n" + code + REPORT
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)


def test_nothing_logged_imports_no_structlog() -> None:
    proc = run("logs.defer_logging('warning')\n"
               "logging.getLogger('celery').info('below the level')\n"
               "logs.get_logger('sandrun.x')  # made, never used")
    assert proc.stdout.strip() == "structlog imported: False"
    assert proc.stderr == ""


def test_a_stdlib_record_configures_logging_and_is_rendered() -> None:
    proc = run("logs.defer_logging('warning')\n"
               "logging.getLogger('kombu').warning('connection lost %s', 'twice')")
    assert "structlog imported: True" in proc.stdout
    assert "connection lost twice" in proc.stderr and "warning" in proc.stderr
    assert proc.stderr.count("connection lost") == 1


def test_a_host_logger_configures_logging_first() -> None:
    proc = run("logs.defer_logging('info')\n"
               "logs.get_logger('sandrun.plugins').info('plugin_loaded', plugin='p')\n"
               "logs.get_logger('sandrun.plugins').debug('hidden')")
    assert "plugin_loaded" in proc.stderr and "plugin=p" in proc.stderr
    assert "hidden" not in proc.stderr and "plugin_loaded" not in proc.stdout


def test_configure_logging_replaces_what_was_deferred() -> None:
    proc = run("logs.defer_logging('warning')\n"
               "logs.configure_logging('error')\n"
               "logging.getLogger('x').warning('not shown')\n"
               "logs.apply_deferred_logging()\n"
               "logging.getLogger('x').warning('still not shown')")
    assert "shown" not in proc.stderr


def test_cancel_gives_back_the_handlers_when_nothing_logged() -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    logs.defer_logging("warning")
    assert root.handlers != before
    logs.cancel_deferred_logging()
    assert root.handlers == before and root.level == level
    logs.cancel_deferred_logging()  # nothing pending: a no-op
    assert root.handlers == before


def test_the_cli_still_logs_what_its_level_lets_through() -> None:
    env = {"PATH": "/usr/bin:/bin", "SANDRUN_PLUGINS": '["defaults"]'}
    quiet, verbose = (subprocess.run(
        [sys.executable, "-m", "worker.cli", *level, "plugins", "list", "--plan"],
        capture_output=True, text=True, timeout=60, check=True, env=env)
        for level in ([], ["--log-level", "debug"]))
    assert "plugin_loaded" not in quiet.stderr
    assert "plugin_loaded" in verbose.stderr and "plugin=defaults" in verbose.stderr
    assert "plugin_loaded" not in verbose.stdout
