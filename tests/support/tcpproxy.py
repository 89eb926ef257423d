"""A TCP proxy a test can cut: the connection to Redis breaking, on one host.

:class:`CuttableProxy` listens on 127.0.0.1 (a free port) and relays every
connection to a unix socket (a private redis-server's). :meth:`CuttableProxy.cut`
closes every relayed connection, both ways, and from then on accepts new ones only
to close them at once, which is what a client sees when the path to its server
breaks (a reset or an end of stream on the next command, refused reconnects);
:meth:`CuttableProxy.mend` lets connections through again. :meth:`close` stops it.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from pathlib import Path


class CuttableProxy:
    """127.0.0.1:``port`` relayed to the unix socket ``target``, until cut or closed."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._cut = False
        self._closed = False
        self.refused = 0
        self._thread = threading.Thread(target=self._accept, name="tcpproxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """A redis-py/kombu URL through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        """Break every relayed connection and refuse new ones until :meth:`mend`."""
        with self._lock:
            self._cut = True
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _shut(sock)

    def mend(self) -> None:
        """Relay new connections again."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        _shut(self._listener)
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                cut = self._cut
            if cut:
                self.refused += 1
                _shut(client)
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                _shut(client)
                _shut(upstream)
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=_relay, args=(client, upstream), daemon=True,
                             name="tcpproxy-relay").start()


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side ends (or the proxy cuts them)."""
    sel = selectors.DefaultSelector()
    try:
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        while True:
            for key, _ in sel.select(timeout=1):
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                data = src.recv(65536)
                if not data:
                    return
                key.data.sendall(data)
    except (OSError, ValueError):
        return
    finally:
        sel.close()
        _shut(a)
        _shut(b)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
