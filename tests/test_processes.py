"""The process-inspection layer (no pytest in it), tested with real children.

Every child made here is reaped before its test ends: the outer session runs
the plugin and would report it otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import pytest

from helpers import (
    DEADLINE,
    Waiter,
    join_thread,
    private_pid_namespace,
    wait_for,
    wait_until_zombie,
)
from pytest_nozombies import processes

pytestmark = pytest.mark.skipif(not processes.SUPPORTED, reason="POSIX only")
linux_only = pytest.mark.skipif(not processes.USES_PROC, reason="reads /proc")

SLEEP = shutil.which("sleep") or "/bin/sleep"
SH = shutil.which("sh") or "/bin/sh"
SAY_READY_THEN_WAIT = [
    sys.executable,
    "-c",
    "import sys; print('ready', flush=True); sys.stdin.read()",
]


def ready(argv: Sequence[str | bytes]) -> subprocess.Popen[bytes]:
    """A child that has exec'd its program (its command line is final) and
    runs until its stdin is closed."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    with ready(SAY_READY_THEN_WAIT) as proc:
        yield proc
        proc.kill()


def spawn_sleeper(**kwargs: int) -> int:
    """A raw child (no Popen to keep its status): ``sleep 30``."""
    return os.posix_spawn(SLEEP, ["sleep", "30"], os.environ, **kwargs)  # type: ignore[arg-type]


def spawn_exiting(script: str) -> int:
    """A raw child running ``sh -c script``, returned once it is a zombie."""
    pid = os.posix_spawn(SH, ["sh", "-c", script], os.environ)
    wait_until_zombie(pid)
    return pid


def reap(pid: int) -> int:
    """Reap raw child ``pid``; its wait status."""
    _, status = os.waitpid(pid, 0)
    return status


# --- one process: its stat line, start time, command line -------------------


@linux_only
def test_read_stat_of_a_running_child(child: subprocess.Popen[bytes]) -> None:
    stat = processes.read_stat(child.pid)
    assert stat is not None
    assert stat.state in ("S", "R")
    assert not stat.zombie
    assert stat.name == os.path.basename(sys.executable)[:15]
    assert stat.parent == os.getpid()
    assert stat.group == os.getpgrp()
    assert stat.exit_code == 0  # a live process has no exit status yet
    assert processes.identify(child.pid) is not None


@linux_only
@pytest.mark.parametrize(
    ("script", "wait_status"),
    [("exit 7", 7 << 8), ("kill -KILL $$", signal.SIGKILL)],
)
def test_read_stat_of_a_zombie_has_its_wait_status(
    script: str, wait_status: int
) -> None:
    pid = spawn_exiting(script)
    try:
        stat = processes.read_stat(pid)
        assert stat is not None
        assert stat.state == "Z"
        assert stat.zombie
        assert stat.name == "sh"
        assert stat.parent == os.getpid()
        assert stat.exit_code == wait_status
    finally:
        assert reap(pid) == wait_status
    assert processes.read_stat(pid) is None


@linux_only
def test_a_name_with_parentheses_and_spaces_is_parsed(tmp_path: Path) -> None:
    # The name is the only field that may hold ") " and look like the fields
    # after it; it is read up to the last ")".
    program = tmp_path / "x) R 1 (y"
    shutil.copy(SLEEP, program)
    pid = os.posix_spawn(program, [str(program), "30"], os.environ)
    try:
        wait_for(lambda: processes.read_cmdline(pid) == (str(program), "30"))
        # Asleep once it has started: the state field after the odd name
        # must read as such (not as the name's own "R").
        wait_for(lambda: getattr(processes.read_stat(pid), "state", None) == "S")
        stat = processes.read_stat(pid)
        assert stat is not None
        assert stat.name == "x) R 1 (y"
        assert stat.parent == os.getpid()
        assert stat.group == os.getpgrp()
    finally:
        os.kill(pid, signal.SIGKILL)
        reap(pid)


def test_nothing_is_read_of_a_process_that_does_not_exist() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        beyond = int(f.read())  # pids are always below pid_max
    assert processes.read_stat(beyond) is None
    assert processes.identify(beyond) is None
    assert processes.read_cmdline(beyond) is None
    assert processes.child_status(beyond) == "gone"
    assert processes.exit_status(beyond) is None


def test_identity_tells_two_children_apart() -> None:
    first = spawn_sleeper()
    try:
        identity = processes.identify(first)
        assert identity is not None
        assert processes.identify(first) == identity  # stable while it lives
        assert processes.identify(os.getpid()) != identity
        second = spawn_sleeper()
        try:
            assert processes.identify(second) not in (None, identity)
        finally:
            os.kill(second, signal.SIGKILL)
            reap(second)
    finally:
        os.kill(first, signal.SIGKILL)
        wait_until_zombie(first)
        assert processes.identify(first) == identity  # a zombie keeps it
        reap(first)
    assert processes.identify(first) is None  # reaped: nothing to identify


@pytest.mark.skipif(not processes._PIDFS, reason="the kernel has no pidfs")
def test_identity_is_the_pidfd_inode_where_pidfs_exists() -> None:
    # Unique for the whole boot, where a start time (in clock ticks) could be
    # shared by a pid reused within one tick.
    child = spawn_sleeper()
    try:
        fd = os.pidfd_open(child)
        try:
            assert processes.identify(child) == os.fstat(fd).st_ino
        finally:
            os.close(fd)
    finally:
        os.kill(child, signal.SIGKILL)
        reap(child)


@pytest.mark.skipif(not processes._PIDFS, reason="the kernel has no pidfs")
def test_pidfs_is_found_as_pid_1_of_a_pid_namespace() -> None:
    # As a container's first process (pytest run as its command) the parent
    # is outside the namespace: pidfs must be found without it.
    prefix = private_pid_namespace()
    if prefix is None:
        pytest.skip("cannot make a private pid namespace here")
    probe = "import os; from pytest_nozombies import processes as p; "
    probe += "print(os.getpid(), os.getppid(), p._PIDFS)"
    result = subprocess.run(
        [*prefix, sys.executable, "-I", "-c", probe],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    )
    assert result.stdout.split() == ["1", "0", "True"]


def test_cmdline_is_read_while_alive_only() -> None:
    argv = [*SAY_READY_THEN_WAIT, "two words", "", "x"]
    with ready(argv) as proc:
        assert processes.read_cmdline(proc.pid) == tuple(argv)
        assert proc.stdin is not None
        proc.stdin.close()
        wait_until_zombie(proc.pid)
        assert processes.read_cmdline(proc.pid) is None  # a zombie has none
    assert proc.returncode == 0


def test_cmdline_keeps_bytes_that_are_not_utf8_as_surrogates() -> None:
    raw = b"caf\xe9 \xff\xfe"
    with ready([*SAY_READY_THEN_WAIT, raw]) as proc:
        argv = processes.read_cmdline(proc.pid)
        assert argv is not None
        assert argv[-1] == "caf\udce9 \udcff\udcfe"
        assert os.fsencode(argv[-1]) == raw  # nothing lost
        proc.kill()


# --- this process's children ------------------------------------------------


def test_a_running_child_is_listed_and_not_a_zombie(
    child: subprocess.Popen[bytes],
) -> None:
    assert child.pid in processes.child_pids()
    assert processes.children_now() == "running"
    assert processes.zombie_children() == []
    assert processes.child_status(child.pid) == "running"
    assert processes.exit_status(child.pid) is None
    assert child.poll() is None


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


def test_a_zombie_is_seen_and_not_reaped() -> None:
    proc = subprocess.Popen(["sh", "-c", "exit 7"])
    wait_until_zombie(proc.pid)
    try:
        assert processes.children_now() == "exited"
        [(pid, stat)] = processes.zombie_children()
        assert pid == proc.pid
        assert stat.zombie
        assert stat.name == "sh"
        assert processes.identify(proc.pid) is not None
        # Looking twice reaped nothing: the owner still gets the real status.
        assert processes.child_status(proc.pid) == "zombie"
        assert processes.exit_status(proc.pid) == processes.ExitStatus(code=7)
        assert processes.child_status(proc.pid) == "zombie"
    finally:
        assert proc.wait() == 7
    assert processes.child_status(proc.pid) == "gone"
    assert processes.zombie_children() == []


def test_zombies_are_listed_oldest_first_and_running_children_left_out(
    child: subprocess.Popen[bytes],
) -> None:
    first = spawn_exiting("exit 1")
    second = spawn_exiting("exit 2")
    try:
        found = processes.zombie_children()
        assert [pid for pid, _ in found] == [first, second]
        assert all(stat.zombie for _, stat in found)
        assert child.pid not in [pid for pid, _ in found]
    finally:
        assert os.waitstatus_to_exitcode(reap(second)) == 2
        assert os.waitstatus_to_exitcode(reap(first)) == 1


def test_a_child_started_by_another_thread_is_listed() -> None:
    # The kernel lists a child under the thread that created it, and under
    # another thread once that one has ended.
    started: list[int] = []
    release = threading.Event()

    def spawn_and_stay() -> None:
        started.append(spawn_sleeper())
        release.wait(DEADLINE)

    thread = threading.Thread(target=spawn_and_stay)
    thread.start()
    try:
        wait_for(lambda: started)
        [pid] = started
        assert pid in processes.child_pids()  # its thread still runs
        release.set()
        join_thread(thread)
        assert not thread.is_alive()
        assert pid in processes.child_pids()  # its thread has ended
        assert processes.child_status(pid) == "running"
    finally:
        release.set()
        join_thread(thread)
        for pid in started:
            os.kill(pid, signal.SIGKILL)
            reap(pid)


def test_a_forked_copy_lists_its_own_children_not_its_parents(
    child: subprocess.Popen[bytes],
) -> None:
    # As in pytest-forked's copy of a session: the fork sees its own children.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        grandchild = os.fork()
        if grandchild == 0:
            os._exit(0)
        os.waitid(os.P_PID, grandchild, os.WEXITED | os.WNOWAIT)
        ok = processes.child_pids() == [grandchild]
        os.waitpid(grandchild, 0)
        os._exit(0 if ok else 1)
    assert os.waitstatus_to_exitcode(reap(pid)) == 0


def test_ignored_sigchld_leaves_no_zombie() -> None:
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(["true"])
        # The kernel reaps at once; wait() sees ECHILD (and says 0).
        proc.wait()
        assert processes.child_status(proc.pid) == "gone"
        assert processes.zombie_children() == []
    finally:
        signal.signal(signal.SIGCHLD, previous)


# --- how a child ended ------------------------------------------------------

EXITS = [
    ("exit 0", processes.ExitStatus(code=0)),
    ("exit 7", processes.ExitStatus(code=7)),
    ("exit 255", processes.ExitStatus(code=255)),
    ("kill -TERM $$", processes.ExitStatus(signal=signal.SIGTERM)),
    ("kill -KILL $$", processes.ExitStatus(signal=signal.SIGKILL)),
    ("kill -USR1 $$", processes.ExitStatus(signal=signal.SIGUSR1)),
]


@pytest.mark.parametrize(("script", "expected"), EXITS)
def test_exit_status_agrees_with_waitpid_and_returncode(
    script: str, expected: processes.ExitStatus
) -> None:
    pid = spawn_exiting(script)
    try:
        assert processes.exit_status(pid) == expected  # read, not reaped
        assert processes.child_status(pid) == "zombie"
    finally:
        status = reap(pid)
    assert processes.ExitStatus.from_wait_status(status) == expected
    returncode = os.waitstatus_to_exitcode(status)  # what Popen.returncode says
    assert processes.ExitStatus.from_returncode(returncode) == expected
    assert processes.exit_status(pid) is None


def test_a_core_dump_is_told(tmp_path: Path) -> None:
    with open("/proc/sys/kernel/core_pattern") as f:
        pattern = f.read().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"cores are not written beside the process ({pattern!r})")
    # The core goes into the child's own folder: the test's tmp folder.
    script = 'cd "$1" && { ulimit -c unlimited 2>/dev/null || exit 99; }; kill -ABRT $$'
    pid = os.posix_spawn(SH, ["sh", "-c", script, "sh", str(tmp_path)], os.environ)
    wait_until_zombie(pid)
    try:
        status = processes.exit_status(pid)
    finally:
        wait_status = reap(pid)
    if os.WIFEXITED(wait_status):
        pytest.skip("the core size limit cannot be raised here")
    if not os.WCOREDUMP(wait_status):
        pytest.skip("the kernel wrote no core (a limit or a policy)")
    expected = processes.ExitStatus(signal=signal.SIGABRT, core_dumped=True)
    assert status == expected
    assert processes.ExitStatus.from_wait_status(wait_status) == expected
    assert expected.describe() == "killed by SIGABRT (6), core dumped"


@pytest.mark.parametrize(
    ("status", "text", "name"),
    [
        (processes.ExitStatus(code=0), "exited with code 0", None),
        (processes.ExitStatus(code=7), "exited with code 7", None),
        (processes.ExitStatus(signal=15), "killed by SIGTERM (15)", "SIGTERM"),
        (
            processes.ExitStatus(signal=11, core_dumped=True),
            "killed by SIGSEGV (11), core dumped",
            "SIGSEGV",
        ),
        (processes.ExitStatus(signal=200), "killed by signal 200 (200)", "signal 200"),
        (processes.ExitStatus.from_returncode(-9), "killed by SIGKILL (9)", "SIGKILL"),
        (processes.ExitStatus.from_returncode(3), "exited with code 3", None),
    ],
)
def test_exit_status_descriptions(
    status: processes.ExitStatus, text: str, name: str | None
) -> None:
    assert status.describe() == text
    assert status.signal_name == name


# --- another process's children ---------------------------------------------

MANAGER = r"""
import os, signal, sys, time
zombie = os.fork()
if zombie == 0:
    os._exit(3)
sleeper = os.fork()
if sleeper == 0:
    time.sleep(60)
    os._exit(0)
os.waitid(os.P_PID, zombie, os.WEXITED | os.WNOWAIT)
print(zombie, sleeper, flush=True)
sys.stdin.readline()
os.kill(sleeper, signal.SIGKILL)
os.waitpid(sleeper, 0)
os.waitpid(zombie, 0)
"""


def test_zombie_children_of_another_process() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", MANAGER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as manager:
        assert manager.stdin is not None
        assert manager.stdout is not None
        zombie, sleeper = map(int, manager.stdout.readline().split())
        try:
            [(pid, stat)] = processes.zombie_children_of(manager.pid)
            assert pid == zombie
            assert stat.zombie
            assert stat.parent == manager.pid
            running = processes.read_stat(sleeper)  # its running child: left out
            assert running is not None
            assert running.parent == manager.pid
            if processes.USES_PROC:
                assert stat.exit_code == 3 << 8
            # Its zombie is not ours, and ours are not its.
            assert processes.zombie_children() == []
            assert processes.child_status(zombie) == "gone"
        finally:
            manager.stdin.close()
        assert manager.wait() == 0
    assert processes.zombie_children_of(manager.pid) == []  # it is gone


def test_zombie_children_of_this_process_are_its_own() -> None:
    pid = spawn_exiting("exit 4")
    try:
        [(found, stat)] = processes.zombie_children_of(os.getpid())
        assert found == pid
        assert stat.parent == os.getpid()
    finally:
        reap(pid)


# --- threads that wait for children -----------------------------------------


def other_threads() -> int:
    return len(os.listdir("/proc/self/task")) - 1


def blocked(waiter: Waiter) -> bool:
    """Whether the thread sits in a system call (not running Python code)."""
    try:
        with open(f"/proc/self/task/{waiter.native_id}/syscall") as f:
            return f.read().split()[0].isdigit()
    except (OSError, IndexError):
        return False


def seen_waiting() -> processes.WaitTargets:
    """What wait_targets() says once some thread is seen in a wait call."""
    found: list[processes.WaitTargets] = []

    def some_wait() -> bool:
        targets = processes.wait_targets()
        found[:] = [targets]
        return bool(targets.pids or targets.groups or targets.any_child)

    wait_for(some_wait)
    return found[0]


def targets(
    pids: Iterable[int] = (), groups: Iterable[int] = (), any_child: bool = False
) -> processes.WaitTargets:
    """What wait_targets() must say, from this thread, with these waits."""
    return processes.WaitTargets(
        frozenset(pids), frozenset(groups), any_child, other_threads()
    )


Wait = Callable[[int], object]
Expect = Callable[[int], processes.WaitTargets]

#: How a thread waits for a raw child ``pid`` (in a process group of its own
#: when the case says so), and what wait_targets() must say about it.
RAW_WAITS: list[tuple[str, bool, Wait, Expect]] = [
    ("waitpid(pid)", False, lambda p: os.waitpid(p, 0), lambda p: targets(pids=[p])),
    (
        "waitpid(-1)",
        False,
        lambda p: os.waitpid(-1, 0),
        lambda p: targets(any_child=True),
    ),
    ("os.wait()", False, lambda p: os.wait(), lambda p: targets(any_child=True)),
    (
        "waitpid(0)",
        False,
        lambda p: os.waitpid(0, 0),
        lambda p: targets(groups=[os.getpgrp()]),
    ),
    (
        "waitpid(-pgid)",
        True,
        lambda p: os.waitpid(-p, 0),
        lambda p: targets(groups=[p]),
    ),
    (
        "waitid(P_PID)",
        False,
        lambda p: os.waitid(os.P_PID, p, os.WEXITED),
        lambda p: targets(pids=[p]),
    ),
    (
        "waitid(P_ALL)",
        False,
        lambda p: os.waitid(os.P_ALL, 0, os.WEXITED),
        lambda p: targets(any_child=True),
    ),
    (
        "waitid(P_PGID)",
        True,
        lambda p: os.waitid(os.P_PGID, p, os.WEXITED),
        lambda p: targets(groups=[p]),
    ),
]


@linux_only
@pytest.mark.parametrize(
    ("own_group", "wait", "expected"),
    [case[1:] for case in RAW_WAITS],
    ids=[case[0] for case in RAW_WAITS],
)
def test_a_thread_blocked_in_a_wait_is_seen_exactly(
    own_group: bool, wait: Wait, expected: Expect
) -> None:
    assert processes.wait_targets() == targets()  # nobody waits yet
    pid = spawn_sleeper(setpgroup=0) if own_group else spawn_sleeper()
    waiter = Waiter(lambda: wait(pid))
    waiter.start()
    try:
        assert seen_waiting() == expected(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
        waiter.join(DEADLINE)
    assert not waiter.is_alive()
    # The thread collected the child itself: looking took nothing from it.
    result = waiter.result
    if isinstance(result, os.waitid_result):
        assert (result.si_pid, result.si_code) == (pid, os.CLD_KILLED)
    else:
        assert isinstance(result, tuple)
        assert result[0] == pid
        assert os.waitstatus_to_exitcode(result[1]) == -signal.SIGKILL
    assert processes.child_status(pid) == "gone"
    assert processes.wait_targets() == targets()


@linux_only
@pytest.mark.skipif(
    not hasattr(os, "pidfd_open") or not hasattr(os, "P_PIDFD"),
    reason="no pidfds",
)
def test_a_thread_blocked_in_a_pidfd_wait_is_seen_with_its_pid() -> None:
    pid = spawn_sleeper()
    fd = os.pidfd_open(pid)
    waiter = Waiter(lambda: os.waitid(os.P_PIDFD, fd, os.WEXITED))
    waiter.start()
    try:
        assert seen_waiting() == targets(pids={pid})
    finally:
        os.kill(pid, signal.SIGKILL)
        waiter.join(DEADLINE)
        os.close(fd)
    assert isinstance(waiter.result, os.waitid_result)
    assert waiter.result.si_pid == pid
    assert processes.child_status(pid) == "gone"


@linux_only
def test_a_thread_in_popen_wait_is_seen_and_holds_the_wait_lock() -> None:
    with subprocess.Popen(["sleep", "30"]) as proc:
        waiter = Waiter(proc.wait)
        waiter.start()
        try:
            assert seen_waiting() == targets(pids={proc.pid})
            assert proc._waitpid_lock.locked()  # type: ignore[attr-defined]
        finally:
            proc.kill()
            waiter.join(DEADLINE)
    assert waiter.result == -signal.SIGKILL  # its returncode stayed true


class _Release(threading.Event):
    """An event that also releases a thread blocked reading a pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.read_fd, self._write_fd = os.pipe()

    def release(self) -> None:
        self.set()
        os.write(self._write_fd, b"x")
        os.close(self._write_fd)

    def __del__(self) -> None:
        os.close(self.read_fd)


@linux_only
@pytest.mark.parametrize(
    "block",
    [
        pytest.param(lambda release: release.wait(DEADLINE), id="Event.wait"),
        pytest.param(lambda release: os.read(release.read_fd, 1), id="os.read"),
    ],
)
def test_a_thread_blocked_in_anything_else_is_not_waiting(
    block: Callable[[_Release], object],
) -> None:
    pid = spawn_sleeper()
    release = _Release()
    waiter = Waiter(lambda: block(release))
    waiter.start()
    try:
        wait_for(lambda: blocked(waiter))
        assert processes.wait_targets() == targets()
        assert processes.wait_targets().threads >= 1
        assert not processes.wait_targets().covers(pid, os.getpgrp())
    finally:
        release.release()
        waiter.join(DEADLINE)
        os.kill(pid, signal.SIGKILL)
        reap(pid)


def test_wait_targets_cover_pids_groups_and_any_child() -> None:
    some = processes.WaitTargets(frozenset({10}), frozenset({20}), False, 1)
    assert some.covers(10, None)
    assert some.covers(11, 20)
    assert not some.covers(11, 21)
    assert not some.covers(11, None)
    assert processes.WaitTargets(frozenset(), frozenset(), True, 1).covers(5, None)
    assert not processes.WaitTargets(frozenset(), frozenset(), False, 0).covers(10, 20)


@linux_only
def test_every_child_is_listed_however_many_there_are() -> None:
    # /proc/self/task/TID/children grows with the children (about six bytes
    # each): 800 of them fill more than one 4 KiB read.
    pids: list[int] = []
    try:
        for _ in range(800):
            pids.append(spawn_sleeper())
        assert set(pids) <= set(processes.child_pids())
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            reap(pid)
