"""The process-inspection layer, tested directly with real children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from helpers import wait_until_zombie
from pytest_nozombies import processes

pytestmark = pytest.mark.skipif(not processes.SUPPORTED, reason="POSIX only")

WAIT_FOR_STDIN = [sys.executable, "-c", "import sys; sys.stdin.read()"]
SAY_READY_THEN_WAIT = [
    sys.executable,
    "-c",
    "import sys; print('ready', flush=True); sys.stdin.read()",
]


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A child that has finished starting up and runs until stdin is closed."""
    with subprocess.Popen(
        SAY_READY_THEN_WAIT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        # Popen returns once exec has begun, but the kernel fills in the new
        # command line a little later: wait until the child runs Python code.
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        yield proc
        proc.kill()


def exited_child(code: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sh", "-c", f"exit {code}"])
    wait_until_zombie(proc.pid)
    return proc


def test_no_zombies_when_no_child_has_exited(child: subprocess.Popen[bytes]) -> None:
    assert child.pid in processes.child_pids()
    assert processes.children_now() == "running"
    assert not processes.any_child_exited()
    assert processes.zombie_children() == []
    assert processes.child_status(child.pid) == "running"


def test_a_process_without_children_is_told_apart() -> None:
    # A fresh interpreter has no children at all: waitid says ECHILD.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pytest_nozombies import processes; print(processes.children_now())",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.strip() == "none"


def test_zombie_is_seen_and_not_reaped() -> None:
    proc = exited_child(7)
    try:
        assert processes.children_now() == "exited"
        assert processes.any_child_exited()
        [zombie] = processes.zombie_children()
        assert zombie.identity.pid == proc.pid
        assert zombie.zombie
        assert zombie.name == "sh"
        # Looking did not reap: the owner still gets the real status.
        assert processes.child_status(proc.pid) == "zombie"
        assert processes.exit_status(proc.pid) == processes.ExitStatus(code=7)
        assert processes.snapshot_zombies() == {zombie.identity}
    finally:
        assert proc.wait() == 7


def test_signal_death_is_described() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    proc.kill()
    wait_until_zombie(proc.pid)
    try:
        status = processes.exit_status(proc.pid)
        assert status == processes.ExitStatus(signal=signal.SIGKILL)
        assert status is not None
        assert status.describe() == "killed by SIGKILL (9)"
    finally:
        assert proc.wait() == -signal.SIGKILL


def test_reap_collects_status_and_child_is_gone() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(5)
    wait_until_zombie(pid)
    assert processes.reap(pid) == processes.ExitStatus(code=5)
    assert processes.child_status(pid) == "gone"
    assert processes.reap(pid) is None
    assert processes.exit_status(pid) is None


def test_reap_of_running_child_does_nothing(child: subprocess.Popen[bytes]) -> None:
    assert processes.reap(child.pid) is None
    assert processes.exit_status(child.pid) is None
    assert child.poll() is None


def test_child_started_from_another_thread_is_listed() -> None:
    started: list[subprocess.Popen[bytes]] = []
    thread = threading.Thread(
        target=lambda: started.append(
            subprocess.Popen(WAIT_FOR_STDIN, stdin=subprocess.PIPE)
        )
    )
    thread.start()
    thread.join()
    [proc] = started
    with proc:
        assert proc.pid in processes.child_pids()
        proc.kill()


def test_identity_tells_two_children_apart(child: subprocess.Popen[bytes]) -> None:
    identity = processes.identify(child.pid)
    assert identity is not None
    assert identity.pid == child.pid
    assert identity == processes.identify(child.pid)  # stable while it lives
    with subprocess.Popen(WAIT_FOR_STDIN, stdin=subprocess.PIPE) as other:
        other_identity = processes.identify(other.pid)
        other.kill()
    assert other_identity is not None
    assert other_identity != identity
    assert processes.identify(other.pid) is None  # reaped: nothing to identify


def test_cmdline_is_readable_while_alive_only(child: subprocess.Popen[bytes]) -> None:
    assert processes.read_cmdline(child.pid) == tuple(SAY_READY_THEN_WAIT)
    proc = exited_child(0)
    try:
        assert processes.read_cmdline(proc.pid) is None
    finally:
        proc.wait()


def test_wait_for_exit_returns_when_children_exit() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    proc.kill()
    processes.wait_for_exit([proc.pid], timeout=30)
    try:
        assert processes.child_status(proc.pid) == "zombie"
    finally:
        proc.wait()


def test_wait_for_exit_gives_up_at_the_deadline(
    child: subprocess.Popen[bytes],
) -> None:
    processes.wait_for_exit([child.pid], timeout=0.01)
    assert processes.child_status(child.pid) == "running"


def test_wait_for_exit_ignores_children_that_are_gone() -> None:
    proc = exited_child(0)
    proc.wait()
    processes.wait_for_exit([proc.pid], timeout=30)  # returns at once


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (processes.ExitStatus(code=0), "exited with code 0"),
        (processes.ExitStatus(code=7), "exited with code 7"),
        (processes.ExitStatus(signal=15), "killed by SIGTERM (15)"),
        (
            processes.ExitStatus(signal=11, core_dumped=True),
            "killed by SIGSEGV (11), core dumped",
        ),
        (processes.ExitStatus(signal=200), "killed by signal 200 (200)"),
    ],
)
def test_exit_status_descriptions(status: processes.ExitStatus, text: str) -> None:
    assert status.describe() == text


def test_wait_status_decoding_matches_the_kernel() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.kill(os.getpid(), signal.SIGTERM)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert processes.ExitStatus.from_wait_status(status) == processes.ExitStatus(
        signal=signal.SIGTERM
    )


def test_ignored_sigchld_means_no_zombies() -> None:
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(["true"])
        # With SIGCHLD ignored the kernel reaps at once; wait() sees ECHILD.
        proc.wait()
        assert not processes.any_child_exited()
        assert processes.child_status(proc.pid) == "gone"
    finally:
        signal.signal(signal.SIGCHLD, previous)


def test_a_forked_copy_lists_its_own_children_not_its_parents(
    child: subprocess.Popen[bytes],
) -> None:
    # As in pytest-forked's copy of a session: the fork must see its children.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        grandchild = os.fork()
        if grandchild == 0:
            os._exit(0)
        os.waitid(os.P_PID, grandchild, os.WEXITED | os.WNOWAIT)
        ok = processes.child_pids() == [grandchild] and child.pid not in (
            processes.child_pids()
        )
        os.waitpid(grandchild, 0)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
