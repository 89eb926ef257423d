"""A slow link where the kernel cannot make one: a relay that delays every byte.

``tc netem`` needs the kernel's sch_netem, which some VM kernels lack
(:func:`tests.support.netns.netem_unavailable`). :class:`DelayRelay` stands in for it
between one worker host and the broker: it listens inside the broker host (on its
address, port 6380) and relays each connection to the broker's unix socket, holding
what it reads in either direction for ``delay`` seconds before passing it on (0.1 s
each way: 200 ms more round trip, as netem's 200 ms on one side). It cannot drop
packets (TCP hides loss from a relay), so it stands in for the delay only; the loss is
made below TCP, by iptables in the worker host (:meth:`tests.support.netns.HostNetwork.lossy`).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from pathlib import Path

from tests.support.netns import socket_in

RELAY_PORT = 6380


class DelayRelay:
    """``address``:6380 in namespace ``namespace`` relayed to the unix socket ``target``."""

    def __init__(self, namespace: str, address: str, target: Path) -> None:
        self.target = str(target)
        self.delay = 0.0  # seconds each way; may be changed while it runs
        self.url = f"redis://{address}:{RELAY_PORT}/0"
        self._listener = socket_in(namespace, (address, RELAY_PORT))
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="delayrelay", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                self._pipe(src, dst)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        """Two threads: one reads ``src`` and stamps each chunk, one sends it on to
        ``dst`` once it is ``delay`` old (order kept); an end either way ends both."""
        chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def read() -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    chunks.put((time.monotonic() + self.delay, data))
            chunks.put((0.0, b""))

        def send() -> None:
            while True:
                due, data = chunks.get()
                if not data:
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    dst.sendall(data)
                except OSError:
                    break
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        for target in (read, send):
            threading.Thread(target=target, name="delayrelay-pipe", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()
