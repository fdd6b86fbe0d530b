import os
import signal
import subprocess
import sys

import pytest

# A tiny prefork server: it forks one worker, prints the worker's pid and
# serves until its standard input is closed. Started with "reap", it reaps
# its workers when they die; with "forget", it does not.
SERVER = r"""
import os, signal, sys
if sys.argv[1] == "reap":
    signal.signal(signal.SIGCHLD, lambda *_: os.waitpid(-1, os.WNOHANG))
worker = os.fork()
if worker == 0:
    signal.pause()
    os._exit(0)
print(worker, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("mode", ["reap", "forget"])
def test_server_reaps_a_killed_worker(nozombies, mode):
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        worker = int(server.stdout.readline())
        os.kill(worker, signal.SIGKILL)
        nozombies.assert_no_zombies(server.pid, timeout=2.0)
    finally:
        server.stdin.close()
        server.wait()


def test_every_step_cleans_up(nozombies):
    subprocess.run(["true"], check=True)
    nozombies.check()  # step 1 left nothing behind
    with subprocess.Popen(["sleep", "0.1"]) as proc:
        assert [child.pid for child in nozombies.children()] == [proc.pid]
    nozombies.check()  # neither did step 2
