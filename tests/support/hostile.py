"""Hostile job programs for the red-team suite (``tests/reliability/test_redteam.py``).

Each is Python source run as a job with ``args=[marker, *more]``: ``sys.argv[1]`` is
the suite's marker (so that the host can find any process a job leaves behind),
the rest are what the program needs. Programs report what they managed to do on
stdout, as plain lines or one JSON object; the suite judges from that, from the
result and from the host, never from how the sandbox is built.
"""

from __future__ import annotations

SYMLINK = """
import os, sys
os.symlink(sys.argv[2], sys.argv[3])
print("linked", sys.argv[3], "->", sys.argv[2])
"""

READ_FILE = """
import sys
try:
    print(open(sys.argv[2], errors="replace").read())
except OSError as exc:
    print("denied", exc.errno)
"""

LIST_ROOT = """
import json, os
seen = {}
try:
    seen["listing"] = sorted(os.listdir("/root"))
except OSError as exc:
    seen["listing_error"] = exc.errno
try:
    seen["bashrc"] = open("/root/.bashrc").read()
except OSError as exc:
    seen["bashrc_error"] = exc.errno
print(json.dumps(seen))
"""

#: Job A of "another job's files": a secret in its directory, then a wait for job B.
KEEP_SECRET = """
import os, sys, time
secret = os.urandom(16).hex()
with open("a-secret.txt", "w") as fh:
    fh.write(secret)
time.sleep(float(sys.argv[2]))
print("cwd", os.getcwd())
print("secret", secret)
"""

#: Job B: looks for A's secret file by A's path, in its neighbours and common roots.
HUNT_SECRET = """
import glob, json, os, sys
found, listed, budget = {}, [], [20000]

def read(path):
    try:
        found[path] = open(path, errors="replace").read(200)
    except OSError:
        pass

def walk(top, depth):
    if depth < 0 or budget[0] <= 0:
        return
    try:
        names = os.listdir(top)
    except OSError:
        return
    listed.append(top)
    for name in names:
        budget[0] -= 1
        path = os.path.join(top, name)
        if name == "a-secret.txt":
            read(path)
        elif not os.path.islink(path) and os.path.isdir(path):
            walk(path, depth - 1)

read(os.path.join(sys.argv[2], "a-secret.txt"))
for top in [os.path.dirname(os.getcwd()), "/tmp", "/var/tmp", "/dev/shm", "/run"]:
    walk(top, 3)
for link in glob.glob("/proc/[0-9]*/cwd") + glob.glob("/proc/[0-9]*/root/tmp"):
    walk(link, 2)
print(json.dumps({"found": found, "listed": len(listed)}))
"""

PROC_OF_WORKER = """
import json, os
seen = {"visible": [], "environ": [], "mem": []}
for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        continue
    if b"celery" not in cmdline:
        continue
    seen["visible"].append(pid)
    try:
        environ = open(f"/proc/{pid}/environ", "rb").read()
        seen["environ"].append(pid)
        print(environ.decode(errors="replace"))
    except OSError:
        pass
    try:
        start = int(open(f"/proc/{pid}/maps").readline().split("-")[0], 16)
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(start)
            mem.read(4096)
        seen["mem"].append(pid)
    except (OSError, ValueError):
        pass
print(json.dumps(seen))
"""

SLEEP_THEN_SAY = """
import sys, time
time.sleep(float(sys.argv[2]))
print("survived")
"""

#: SIGKILL to every process of the suite it can see (the pids in argv and any process
#: carrying the marker), signal 0 only to the others: this machine is shared.
KILL_EVERYONE = """
import json, os, signal, sys
marker, targets = sys.argv[1].rsplit("-", 1)[0].encode(), set(sys.argv[2:])
seen = {"killed": [], "refused": 0, "could_signal": []}
me = sys.argv[1].encode()
mine = set()  # this job's own ancestors inside its sandbox (bwrap's pid 1): not targets
pid = os.getppid()
while pid > 0:
    mine.add(str(pid))
    with open(f"/proc/{pid}/stat") as fh:
        pid = int(fh.read().rsplit(")", 1)[1].split()[1])
for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
    if pid in mine:
        continue
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        cmdline = b""
    if me in cmdline:
        continue  # this job's own sandbox (bwrap's pid 1 carries its argv): not a target
    ours = pid in targets or marker in cmdline
    try:
        os.kill(int(pid), signal.SIGKILL if ours else 0)
        seen["killed" if ours else "could_signal"].append(pid)
    except OSError:
        seen["refused"] += 1
print(json.dumps(seen))
"""

CONNECT_TCP = """
import json, socket, sys
seen = {}
for host, port in json.loads(sys.argv[2]):
    try:
        with socket.create_connection((host, port), 2) as conn:
            conn.settimeout(2)
            conn.sendall(b"PING\\r\\n")
            seen[f"{host}:{port}"] = "connected: " + conn.recv(200).decode(errors="replace")
    except OSError as exc:
        seen[f"{host}:{port}"] = f"errno {exc.errno}"
print(json.dumps(seen))
"""

CONNECT_UNIX = """
import glob, json, socket, sys
paths = sys.argv[2:] + glob.glob("/tmp/**/*redis*.sock", recursive=True)
paths += glob.glob("/run/**/*redis*.sock", recursive=True)
seen = {}
for path in dict.fromkeys(paths):
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(2)
            conn.connect(path)
            conn.sendall(b"PING\\r\\n")
            seen[path] = "connected: " + conn.recv(200).decode(errors="replace")
    except OSError as exc:
        seen[path] = f"errno {exc.errno}"
print(json.dumps(seen))
"""

#: Installed as ``inject/sitecustomize.py`` with ``PYTHONPATH=inject``: whatever Python
#: starts with it leaves a mark in the drop directory and says who it ran as.
SITECUSTOMIZE = """
import os, sys
drop = os.environ.get("REDTEAM_DROP", "")
try:
    open(os.path.join(drop, f"uid-{os.getuid()}-pid-{os.getpid()}"), "w").close()
except OSError:
    pass
print(f"[injected into uid {os.getuid()}]", file=sys.stderr)
"""

SHOW_ENV = """
import json, os
print(json.dumps(dict(os.environ)))
"""

LINK_HARD = """
import os, sys
for source, name in (("/etc/shadow", "h"), ("/etc/passwd", "p")):
    try:
        os.link(source, name)
        print("linked", name)
    except OSError as exc:
        print("refused", name, exc.errno)
"""

NEST_DEEP = """
import os, sys
for depth in range(int(sys.argv[2])):
    os.mkdir("d")
    os.chdir("d")
open("deep.txt", "w").write("bottom")
print("depth", depth + 1)
"""

MANY_FILES = """
import sys
for i in range(int(sys.argv[2])):
    open(f"f{i:05d}.txt", "w").write(str(i))
print("made", sys.argv[2])
"""

#: Writes ``argv[2]`` bytes in 32 MiB chunks, two per file (a per-file cap just moves
#: it to the next file), until done or refused by the file system.
FILL_DISK = """
import errno, json, os, sys
target, chunk = int(sys.argv[2]), b"\\0" * (32 << 20)
written, errors, index = 0, [], 0
while written < target and index < 256:
    path = f"fill-{index:03d}"
    index += 1
    try:
        with open(path, "wb", buffering=0) as fh:
            for _ in range(2):
                written += fh.write(chunk)
    except OSError as exc:
        errors.append(exc.errno)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            break
print(json.dumps({"written": written, "errors": sorted(set(errors))}))
"""

#: Small stacks, so that the process limit, not the address space, is what it meets first.
THREAD_BOMB = """
import os, threading, time
threading.stack_size(1 << 16)
made = 0
try:
    for _ in range(5000):
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        made += 1
    print("unlimited", made, flush=True)
except RuntimeError:
    print("refused after", made, flush=True)
os._exit(0 if made >= 5000 else 1)
"""

FORK_BOMB = """
import os
while True:
    os.fork()
"""

#: Maps and touches 64 MiB at a time up to ``argv[2]`` MiB, keeping every mapping.
TOUCH_MEMORY = """
import mmap, sys
size, got, kept = 64 << 20, 0, []
while got < int(sys.argv[2]):
    block = mmap.mmap(-1, size)
    for offset in range(0, size, 4096):
        block[offset] = 1
    kept.append(block)
    got += 64
    print("touched", got, "MiB", flush=True)
"""

#: Ignores SIGTERM, and leaves a detached grandchild that ignores it too.
IGNORE_SIGTERM = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            time.sleep(0.1)
    os._exit(0)
while True:
    time.sleep(0.1)
"""
