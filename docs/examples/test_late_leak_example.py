import os
import subprocess

children = {}


def test_starts_worker():
    # A child that runs until its stdin is closed; this test never waits for it.
    children["worker"] = subprocess.Popen(["cat"], stdin=subprocess.PIPE)


def test_stops_worker():
    worker = children["worker"]
    worker.stdin.close()  # the worker exits now, while this test runs...
    os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOWAIT)
    # ...but this test never waits for it either, and is not to blame.
