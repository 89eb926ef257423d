"""Starts a detached helper (new session) and then works for longer than its timeout;
the worker kills both when the 2 s timeout passes."""

import subprocess
import time

subprocess.Popen(["sleep", "300"], start_new_session=True)
print("working...", flush=True)
time.sleep(60)
print("never printed")
