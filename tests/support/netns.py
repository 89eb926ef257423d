"""Test hosts: network namespaces joined by veth pairs, on a private subnet.

:class:`HostNetwork` builds one broker host and N worker hosts with ``ip netns``
(Debian ``iproute2``). The broker host holds a bridge with the subnet's first address
(``10.233.71.1/24``); each worker host gets one end of a veth pair (``10.233.71.1N``)
whose other end is a port of that bridge, so every worker reaches the broker only over
its own link, which a test can take down (:meth:`HostNetwork.partition`), bring back
(:meth:`HostNetwork.reconnect`) or delete (:meth:`HostNetwork.remove`). Every address
and link lives inside these namespaces: nothing is added to the machine's own network
(the links are created in their namespaces directly), and the subnet is refused if the
machine already routes it.

Processes are started in a host with :meth:`Host.command` (``ip netns exec``, which
execs, so the pid is the process's own). :func:`socket_in` makes a socket inside a
namespace from a thread that joins it (``setns``), so a server of the test process
(the ledger) can listen on the broker host's address. :meth:`HostNetwork.close` deletes
the namespaces (after SIGKILLing any process left inside), and with them every link;
it is safe to call twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

SUBNET = "10.233.71"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NetnsUnavailable(Exception):
    """This machine cannot build test hosts (not root, no ``ip``, no namespaces)."""


def ip(*args: str) -> None:
    """Run ``ip ARGS``; a failure raises with ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def unavailable() -> str | None:
    """Why test hosts cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "test hosts need root (ip netns add)"
    if shutil.which("ip") is None:
        return "test hosts need iproute2's ip (Debian: apt-get install iproute2)"
    probe = f"srprobe{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"network namespaces are not available: {exc}"
    ip("netns", "delete", probe)
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                            check=False).stdout
    if f"{SUBNET}." in routes:
        return f"{SUBNET}.0/24 is already routed on this machine; test hosts need it free"
    return None


def netem_unavailable() -> str | None:
    """Why ``tc netem`` cannot shape a test host's link here, or None when it can (the
    kernel needs sch_netem; some VM kernels are built without it)."""
    if shutil.which("tc") is None:
        return "tc netem needs iproute2's tc (Debian: apt-get install iproute2)"
    probe = f"srnetem{os.getpid()}"
    ip("netns", "add", probe)
    try:
        done = subprocess.run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev",
                               "lo", "root", "netem", "delay", "1ms"],
                              capture_output=True, text=True, timeout=30, check=False)
    finally:
        ip("netns", "delete", probe)
    if done.returncode != 0:
        return f"this kernel cannot run tc netem ({done.stderr.strip()}: no sch_netem)"
    return None


def loss_unavailable() -> str | None:
    """Why :meth:`HostNetwork.lossy` cannot drop a test host's packets here, or None."""
    if shutil.which("iptables") is None:
        return "packet loss needs iptables (Debian: apt-get install iptables)"
    probe = f"srloss{os.getpid()}"
    ip("netns", "add", probe)
    try:
        done = subprocess.run(["ip", "netns", "exec", probe, "iptables", "-w", "-A", "OUTPUT",
                               "-m", "statistic", "--mode", "random", "--probability",
                               "0.01", "-j", "DROP"],
                              capture_output=True, text=True, timeout=30, check=False)
    finally:
        ip("netns", "delete", probe)
    if done.returncode != 0:
        return f"iptables cannot drop packets at random here ({done.stderr.strip()})"
    return None


def in_namespace(name: str, make: Callable[[], T]) -> T:
    """``make()`` called in a thread that joined namespace ``name`` (a socket it creates
    stays in that namespace; the calling thread's own namespace is never changed)."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: list[T | BaseException] = []

    def run() -> None:
        try:
            with open(f"/run/netns/{name}") as fh:
                if libc.setns(fh.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {name} failed")
            box.append(make())
        except BaseException as exc:  # handed to the caller
            box.append(exc)

    thread = threading.Thread(target=run, name=f"setns-{name}")
    thread.start()
    thread.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def socket_in(name: str, address: tuple[str, int]) -> socket.socket:
    """A listening TCP socket bound to ``address`` inside namespace ``name``."""
    return in_namespace(name, lambda: socket.create_server(address, backlog=128))


@dataclass
class Host:
    """One namespace: ``name``, its ``address`` on the subnet, its link's name."""

    name: str
    address: str
    link: str = ""

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.name, *argv]


class HostNetwork:
    """A broker host and ``workers`` worker hosts (see the module docstring)."""

    def __init__(self, workers: int, tag: str | None = None) -> None:
        tag = tag or f"{os.getpid() % 100000}"
        self.broker = Host(f"sr{tag}b", f"{SUBNET}.1")
        self.workers = [Host(f"sr{tag}w{i}", f"{SUBNET}.{11 + i}", link=f"w{i}")
                        for i in range(workers)]
        self._made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        b = self.broker.name
        self._add(b)
        # a fixed address: a bridge otherwise takes its lowest port's, and removing that
        # host would change the broker host's MAC under the others' ARP caches
        ip("-n", b, "link", "add", "br0", "address", "02:00:0a:e9:47:01", "type", "bridge")
        ip("-n", b, "addr", "add", f"{self.broker.address}/24", "dev", "br0")
        ip("-n", b, "link", "set", "br0", "up")
        for host in self.workers:
            self._add(host.name)
            # both ends made in their namespaces: nothing appears in the machine's own
            ip("link", "add", "eth0", "netns", host.name, "type", "veth", "peer", "name",
               host.link, "netns", b)
            ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
            ip("-n", host.name, "link", "set", "eth0", "up")
            ip("-n", b, "link", "set", host.link, "master", "br0")
            ip("-n", b, "link", "set", host.link, "up")

    def _add(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def partition(self, host: Host) -> None:
        """Cut ``host`` off: its link is down on both ends (nothing reaches either side)."""
        ip("-n", self.broker.name, "link", "set", host.link, "down")
        ip("-n", host.name, "link", "set", "eth0", "down")

    def reconnect(self, host: Host) -> None:
        """Bring a partitioned ``host``'s link back up."""
        ip("-n", host.name, "link", "set", "eth0", "up")
        ip("-n", self.broker.name, "link", "set", host.link, "up")

    def slow(self, host: Host, *netem: str) -> None:
        """Give ``host``'s own end of its link a ``tc netem`` discipline (``netem`` its
        arguments, e.g. ``"delay", "200ms", "loss", "1%"``): what it sends is delayed
        and dropped; :meth:`close` takes it away with the namespace."""
        done = subprocess.run(host.command(["tc", "qdisc", "add", "dev", "eth0", "root",
                                            "netem", *netem]),
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"tc netem {' '.join(netem)} on {host.name}: "
                               f"{done.stderr.strip()} (Debian: apt-get install iproute2; "
                               "the kernel needs sch_netem)")

    def lossy(self, host: Host, percent: float, port: int) -> None:
        """Drop ``percent`` of the TCP packets ``host`` sends to or receives from
        ``port`` of the broker host, at random (iptables' ``statistic`` match, in the
        host's own namespace): where the kernel has no sch_netem, the loss half of
        ``netem loss``. TCP retransmits what is dropped, as it would on a lossy link;
        :meth:`close` takes the rules away with the namespace."""
        chance = f"{percent / 100:.4f}"
        for chain, side in (("OUTPUT", "--dport"), ("INPUT", "--sport")):
            rule = [chain, "-p", "tcp", "-s" if chain == "INPUT" else "-d",
                    self.broker.address, side, str(port),
                    "-m", "statistic", "--mode", "random", "--probability", chance,
                    "-j", "DROP"]
            done = subprocess.run(host.command(["iptables", "-w", "-A", *rule]),
                                  capture_output=True, text=True, timeout=30, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"iptables -A {' '.join(rule)} on {host.name}: "
                                   f"{done.stderr.strip()} (Debian: apt-get install "
                                   "iptables; the kernel needs xt_statistic)")

    def dropped(self, host: Host) -> int:
        """How many packets the :meth:`lossy` rules of ``host`` have dropped so far."""
        done = subprocess.run(host.command(["iptables", "-w", "-L", "-v", "-n", "-x"]),
                              capture_output=True, text=True, timeout=30, check=True)
        return sum(int(line.split()[0]) for line in done.stdout.splitlines()
                   if "statistic mode random" in line)

    def flap(self, down: bool) -> None:
        """Take the broker host's own link (its bridge, which every worker host's link
        joins) down, or bring it back up: the broker is unreachable from every host."""
        ip("-n", self.broker.name, "link", "set", "br0", "down" if down else "up")

    def remove(self, host: Host) -> None:
        """Delete ``host``'s link (both ends go; the namespace stays until close)."""
        ip("-n", self.broker.name, "link", "delete", host.link)

    def close(self) -> None:
        """SIGKILL whatever still runs inside the namespaces made (only this test's
        processes can be there: a job its killed worker left behind), then delete them
        (their links go with them); errors are ignored so that one failure does not
        leave the others behind."""
        while self._made:
            name = self._made.pop()
            for pid in pids_in(name):
                if pid != os.getpid():
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def pids_in(name: str) -> list[int]:
    """Every process in namespace ``name`` (``ip netns pids``)."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                         check=False).stdout
    return [int(pid) for pid in out.split()]
