"""A few typical zombie leaks, and how to avoid them.

Run ``python -m pytest examples`` from the repository root with
pytest-nozombies installed: the three ``test_leak_*`` tests fail, the others
pass, and pytest exits 1.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess

import pytest

# Real code keeps its Popen objects somewhere (a fixture, a server object).
# A Popen that is simply dropped is polled by CPython as it is deleted, which
# reaps the child if it has already exited: then there is no zombie at all.
servers: list[subprocess.Popen[bytes]] = []


def test_leak_popen_killed_but_never_waited() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    servers.append(proc)
    proc.kill()  # missing: proc.wait()


def test_leak_fork_without_waitpid() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    # missing: os.waitpid(pid, 0)


def _work() -> None:
    pass


def test_leak_process_without_join() -> None:
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_work)
    proc.start()
    # missing: proc.join()


def test_clean() -> None:
    subprocess.run(["true"], check=True)
    with subprocess.Popen(["sleep", "0"]) as proc:
        pass
    assert proc.returncode == 0
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


@pytest.mark.allow_zombies(reason="shows the marker; the zombie is still reaped")
def test_allowed_leak() -> None:
    proc = subprocess.Popen(["true"])
    proc.kill()
