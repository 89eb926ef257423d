"""The job's root as bubblewrap builds it: only what an interpreter needs, nothing of the host."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.sandbox import bwrap

WHY = bwrap.unavailable(65534)
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no bubblewrap view here: {WHY}")

LOOK = """
import json, os, socket, sys
seen = {"root": sorted(os.listdir("/")), "cwd": os.getcwd(), "uid": os.getuid(),
        "proc": sorted(p for p in os.listdir("/proc") if p.isdigit()),
        "dev": sorted(os.listdir("/dev")), "passwd": open("/etc/passwd").read(),
        "tmp": os.listdir("/tmp")}
for path in ("/run", "/var", "/root", "/home", "/etc/shadow"):
    seen[path] = os.path.exists(path)
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)
    seen["net"] = "connected"
except OSError as exc:
    seen["net"] = exc.errno
try:
    open("/usr/sandrun-write", "w")
    seen["usr"] = "writable"
except OSError as exc:
    seen["usr"] = exc.errno
print(json.dumps(seen))
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp())
    path.chmod(0o777)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def look(workdir: Path, network: bool = False, port: int = 9) -> dict[str, object]:
    cmd = bwrap.command(bwrap.View(str(workdir), 65534, 65534, network=network),
                        ["/usr/bin/python3", "-c", LOOK, str(port)])
    try:
        run = subprocess.run(cmd.argv, pass_fds=cmd.fds, capture_output=True, user=65534,
                             group=65534, extra_groups=[], timeout=30, check=False)
    finally:
        cmd.close()
    assert run.returncode == 0, run.stderr.decode()
    seen: dict[str, object] = json.loads(run.stdout)
    return seen


def test_the_view_holds_only_system_paths_and_the_job_directory(workdir: Path) -> None:
    seen = look(workdir)
    assert set(seen["root"]) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32",  # type: ignore[arg-type]
                                 "etc", "proc", "dev", "tmp"}
    assert seen["cwd"] == str(workdir) and seen["uid"] == 65534
    assert not any(seen[p] for p in ("/run", "/var", "/root", "/home", "/etc/shadow"))
    assert seen["tmp"] in ([], [workdir.name])  # only the job's own directory's parent
    assert len(seen["proc"]) <= 3  # type: ignore[arg-type]  # bwrap's pid 1, the job
    assert "sandrun" not in str(seen["passwd"]) and str(seen["passwd"]).count("\n") == 2
    assert seen["usr"] in (13, 30)  # EACCES or EROFS: /usr is read-only
    assert set(seen["dev"]) >= {"null", "zero", "urandom", "shm"}  # type: ignore[arg-type]


def test_no_network_unless_the_view_allows_it(workdir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert look(workdir, port=port)["net"] == 111  # refused: its own, empty loopback
        assert look(workdir, network=True, port=port)["net"] == "connected"


def test_the_passwd_names_the_jobs_own_uid() -> None:
    passwd, group = bwrap.identity_files(200007, 200007)
    assert "sandrun:x:200007:200007:" in passwd and "sandrun:x:200007:" in group
    assert passwd.count("\n") == 3 and os.path.basename("/etc/passwd") == "passwd"
