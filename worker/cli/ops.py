"""``sandrun worker|flower|probe|broker|demo``: running the fleet.

Each command imports what it uses when it runs: the probes read the settings and
a health file and import no Celery, the broker commands need redis, and
``sandrun worker`` checks the plugins before it becomes ``celery worker``.
"""

from __future__ import annotations

import os
import sys

import click

from worker.cli.common import EXIT_OK, console, fail
from worker.errors import ConfigurationError, SandrunError


def worker_argv(concurrency: int | None, queues: list[str], hostname: str | None,
                loglevel: str, pool: str | None) -> list[str]:
    """The ``celery worker`` command line a Sandrun worker runs."""
    argv = [sys.executable, "-m", "celery", "-q", "-A", "worker", "worker", "-Q",
            ",".join(queues), "-l", loglevel]
    if concurrency:
        argv += ["-c", str(concurrency)]
    if hostname:
        argv += ["-n", hostname]
    if pool:
        argv += ["-P", pool]
    return argv


@click.command("worker")
@click.option("-c", "--concurrency", type=int, default=None, help="Pool processes (default: CPUs).")
@click.option("-Q", "--queues", default=None, help="Comma-separated base queues.")
@click.option("-n", "--hostname", default=None, help="Node name, e.g. gpu1@%h.")
@click.option("-l", "--loglevel", default="info", show_default=True)
@click.option("-P", "--pool", default=None, help="Celery pool (default prefork).")
def worker_command(concurrency: int | None, queues: str | None, hostname: str | None,
                   loglevel: str, pool: str | None) -> None:
    """Start a Celery worker with the configured plugins, consuming GPU queues only
    when this host has GPUs (nvidia-smi or SANDRUN_GPUS)."""
    from worker.broker.embedded import ensure_broker_configured
    from worker.broker.urls import is_redis
    from worker.plugin.loader import parse_plugin_specs
    from worker.plugin.manager import PluginManager
    from worker.plugin.permissions import parse_plugin_permissions
    from worker.sandbox.gpu import detect_gpus, worker_queues
    from worker.settings import check_visibility_timeout, load_settings

    try:
        settings = load_settings()
        ensure_broker_configured()
        if is_redis(os.environ["SANDRUN_BROKER_URL"]):
            check_visibility_timeout(settings.visibility_timeout)
        PluginManager(permissions=parse_plugin_permissions(settings.plugin_permissions)).validate(
            parse_plugin_specs(settings.plugins))
    except SandrunError as exc:
        fail(exc)
    base = [q.strip() for q in (queues or settings.default_queue).split(",") if q.strip()]
    gpus = detect_gpus(settings.gpus)
    all_queues = worker_queues(base, gpus)
    os.environ["SANDRUN_WORKER_GPUS"] = ",".join(f"{g.index}:{g.type}" for g in gpus)
    argv = worker_argv(concurrency, all_queues, hostname, loglevel, pool)
    os.execv(argv[0], argv)


@click.command("flower")
@click.option("--port", default=5555, show_default=True)
@click.option("--address", default="0.0.0.0", show_default=True)
def flower_command(port: int, address: str) -> None:
    """Start Flower on the configured broker; refuses to start without FLOWER_BASIC_AUTH
    (``user:password``, comma-separated for several), so it is never open."""
    credentials = os.environ.get("FLOWER_BASIC_AUTH", "")
    if not credentials or any(":" not in pair for pair in credentials.split(",")):
        fail(ConfigurationError("set FLOWER_BASIC_AUTH=user:password (comma-separated for "
                                "several users); Flower can revoke jobs, so it is never "
                                "served without authentication"))
    from worker.broker.embedded import ensure_broker_configured

    try:
        ensure_broker_configured()
    except SandrunError as exc:
        fail(exc)
    argv = [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}",
            f"--address={address}"]
    os.execv(argv[0], argv)


@click.group()
def probe() -> None:
    """Health probes for orchestrators (exit 0 healthy, 1 not)."""


@probe.command("live")
@click.option("--max-age", default=30.0, show_default=True,
              help="Seconds since the last heartbeat after which the worker is dead.")
def probe_live(max_age: float) -> None:
    """Healthy while the worker's heartbeat file is fresh."""
    from worker.settings import file_age, health_file, load_settings

    try:
        seconds = file_age(health_file(load_settings(), "heartbeat"))
    except SandrunError as exc:
        fail(exc)
    if seconds is None or seconds > max_age:
        click.echo("no heartbeat" if seconds is None else f"heartbeat {seconds:.0f}s old")
        sys.exit(1)
    click.echo(f"alive (heartbeat {seconds:.1f}s ago)")


@probe.command("ready")
def probe_ready() -> None:
    """Healthy once the worker is connected and consuming."""
    from worker.settings import file_age, health_file, load_settings

    try:
        ready = file_age(health_file(load_settings(), "ready"))
    except SandrunError as exc:
        fail(exc)
    if ready is None:
        click.echo("not ready")
        sys.exit(1)
    click.echo("ready")


@click.group()
def broker() -> None:
    """Manage the embedded default broker (used when SANDRUN_BROKER_URL is unset)."""


@broker.command("stop")
def broker_stop() -> None:
    """Stop the embedded redis-server of the state directory."""
    from worker.broker.embedded import stop_redis
    from worker.settings import load_settings

    settings = load_settings()
    stopped = stop_redis(settings.state_dir)
    click.echo("stopped" if stopped else "no embedded broker was running")


@broker.command("url")
def broker_url() -> None:
    """Print the broker URL this machine's Sandrun processes use (starting the embedded one)."""
    from worker.broker.embedded import ensure_broker_configured

    try:
        ensure_broker_configured()
    except SandrunError as exc:
        fail(exc)
    click.echo(os.environ["SANDRUN_BROKER_URL"])


@click.command()
@click.option("--workers", default=2, show_default=True, help="Worker processes to start.")
def demo(workers: int) -> None:
    """Start a broker and workers, run the example jobs, show the results, shut down."""
    from worker.cli.demo import run_demo

    try:
        code = run_demo(console(), workers)
    except SandrunError as exc:
        fail(exc)
    sys.exit(code or EXIT_OK)
