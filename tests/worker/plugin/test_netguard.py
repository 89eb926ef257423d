"""The ``network`` permission: a hook of a plugin without it cannot connect to an IP
address (refused before any packet leaves), the host's own connections are allowed."""

from __future__ import annotations

import asyncio
import socket
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker import Job, Plugin, PluginManager, PluginManifest, SubmissionContext, hook
from worker.collector import InMemoryMetrics
from worker.errors import PermissionRefused

METRIC = "sandrun_plugin_hook_errors_total"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP socket listening on 127.0.0.1 that nothing accepts from but the test."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        yield server


def arrived(server: socket.socket) -> bool:
    """Whether a connection reached ``server`` (the handshake is done by the kernel
    before connect() returns, so a refused one can never show up later)."""
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def caller(address: tuple[str, int], permissions: list[str], name: str = "caller",
           timeout: float | None = None, is_async: bool = False) -> Plugin:
    def connect() -> None:
        with socket.create_connection(address, timeout=5):
            pass

    if is_async:
        async def on_submit(self: Any, job: Job, context: SubmissionContext) -> None:
            await asyncio.sleep(0)
            connect()
    else:
        def on_submit(self: Any, job: Job, context: SubmissionContext) -> None:  # type: ignore[misc]
            connect()

    if timeout is not None:
        on_submit = hook(timeout=timeout)(on_submit)
    return type(name.title(), (Plugin,), {
        "name": name, "on_submit": on_submit,
        "manifest": PluginManifest(apis=["on_submit"], permissions=permissions)})()


def submit(*plugins: Plugin) -> InMemoryMetrics:
    metrics = InMemoryMetrics()
    manager = PluginManager(metrics=metrics)
    manager.load_all(list(plugins))
    manager.on_submit(Job(code="1"), SubmissionContext())
    manager.close()
    return metrics


@pytest.mark.parametrize("options", [{}, {"timeout": 5.0}, {"is_async": True}],
                         ids=["inline", "on-a-hook-thread", "async"])
def test_a_connection_without_network_is_refused_before_it_leaves(
        listener: socket.socket, options: dict[str, Any]) -> None:
    metrics = submit(caller(listener.getsockname(), [], **options))
    assert not arrived(listener)
    assert metrics.value(METRIC, plugin="caller", hook="on_submit", kind="permission") == 1
    assert metrics.value(METRIC, plugin="caller", hook="on_submit", kind="error") == 0


def test_a_connection_with_network_goes_through(listener: socket.socket) -> None:
    metrics = submit(caller(listener.getsockname(), ["network"]))
    assert arrived(listener)
    assert metrics.value(METRIC, plugin="caller", hook="on_submit", kind="permission") == 0


def test_outside_its_hooks_the_process_connects_freely(listener: socket.socket) -> None:
    submit(caller(listener.getsockname(), []))  # installs the audit hook
    with socket.create_connection(listener.getsockname(), timeout=5):
        pass
    assert arrived(listener)


def test_threads_a_plugin_starts_are_not_seen(listener: socket.socket) -> None:
    """Documented: a thread does not inherit the marker, so this is not enforced."""
    address = listener.getsockname()

    class Sly(Plugin):
        name = "sly"
        manifest = PluginManifest(apis=["on_submit"], permissions=[])

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            thread = threading.Thread(target=lambda: socket.create_connection(address).close())
            thread.start()
            thread.join()

    submit(Sly())
    assert arrived(listener)


def test_unix_sockets_and_the_hosts_own_calls_are_allowed(
        listener: socket.socket, tmp_path: Path) -> None:
    address = listener.getsockname()
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(path)
        unix.listen(1)
        # a function of a host module (as plugin storage reaching Redis would be)
        host = types.ModuleType("worker.stores.example")
        host.__dict__.update(socket=socket, address=address)
        exec("def connect():\n    socket.create_connection(address).close()\n", host.__dict__)
        host_connect = host.connect

        class Polite(Plugin):
            name = "polite"
            manifest = PluginManifest(apis=["on_submit"], permissions=[])

            def on_submit(self, job: Job, context: SubmissionContext) -> None:
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(path)
                host_connect()

        metrics = submit(Polite())
        assert metrics.value(METRIC, plugin="polite", hook="on_submit", kind="permission") == 0
        assert metrics.value(METRIC, plugin="polite", hook="on_submit", kind="error") == 0
        assert arrived(listener)


def test_the_refusal_says_what_was_tried(listener: socket.socket) -> None:
    host, port = listener.getsockname()
    seen: list[BaseException] = []

    class Catcher(Plugin):
        name = "catcher"
        manifest = PluginManifest(apis=["on_submit"], permissions=[])

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            try:
                socket.create_connection((host, port), timeout=5)
            except PermissionRefused as exc:
                seen.append(exc)

    metrics = submit(Catcher())
    assert [str(e) for e in seen] == [
        f"plugin 'catcher' tried to connect to {host}:{port}, which needs the 'network' "
        "permission it was not granted; declare it in the plugin's manifest "
        "(permissions=[...]) and, if the operator narrowed it, grant it in "
        "SANDRUN_PLUGIN_PERMISSIONS"]
    # counted where it was refused, even though the plugin swallowed it
    assert metrics.value(METRIC, plugin="catcher", hook="on_submit", kind="permission") == 1


def test_a_chain_dispatched_from_a_restricted_hook_keeps_each_plugins_own_grant(
        listener: socket.socket) -> None:
    address = listener.getsockname()
    metrics = InMemoryMetrics()
    manager = PluginManager(metrics=metrics)
    manager.declare_hooks("on_ping")

    class Asker(Plugin):
        name = "asker"
        manifest = PluginManifest(apis=["on_submit"], permissions=[])

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            manager.execute_hook("on_ping", None)

    class Pinger(Plugin):
        name = "pinger"
        manifest = PluginManifest(apis=["on_ping"], permissions=["network"])

        def on_ping(self, data: Any, context: Any) -> None:
            socket.create_connection(address, timeout=5).close()

    manager.load_all([Asker(), Pinger()])
    manager.on_submit(Job(code="1"), SubmissionContext())
    manager.close()
    assert arrived(listener)
    assert metrics.value(METRIC, plugin="asker", hook="on_submit", kind="permission") == 0
