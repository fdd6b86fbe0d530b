"""The tracker's judging (tracker.py) with real children and no pytest
session: what each child a scope leaves becomes, and whom it is blamed on.

Where another thread of the process could still collect a zombie, the
tracker gives it the whole grace period to do so; an xdist worker has such
threads. Scenarios that need a grace period and end with a zombie therefore
run in a fresh interpreter (``run_alone``), whose only thread judges, as in
a plain pytest run. Every child made here is reaped before its test ends.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import pty
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import (
    DEADLINE,
    ROOT,
    Waiter,
    join_thread,
    spawn_untracked,
    tracking,
    wait_for,
    wait_until_zombie,
)
from pytest_nozombies import processes
from pytest_nozombies.leaks import Ended, Leak, OwnerInfo
from pytest_nozombies.tracker import Tracker

pytestmark = pytest.mark.skipif(not processes.SUPPORTED, reason="POSIX only")

SLEEP = shutil.which("sleep") or "/bin/sleep"
SH = shutil.which("sh") or "/bin/sh"
NODEID = "tests/test_x.py::test_a"
LATER = "tests/test_x.py::test_b"
HERE = os.path.relpath(__file__, ROOT)


def start(tracker: Tracker, nodeid: str = NODEID, *, allowed: bool = False) -> None:
    """The test ``nodeid`` starts and reaches its call phase."""
    tracker.start_test(nodeid, allowed=allowed, test_file=__file__, test_site=None)
    tracker.enter_phase("call")


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    with tracking() as tracker:
        start(tracker)
        yield tracker


def next_line() -> int:
    return sys._getframe(1).f_lineno + 1


def reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_alone(scenario: Callable[[], None]) -> None:
    """Run ``scenario``, a function of this module, in a fresh interpreter."""
    code = (
        # An alarm, not faulthandler's watchdog thread: no other thread.
        "import signal, sys\n"
        "def timeout(*_): raise TimeoutError('the scenario hangs')\n"
        "signal.signal(signal.SIGALRM, timeout)\n"
        f"signal.alarm({int(DEADLINE)})\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        f"from test_tracker import {scenario.__name__}\n"
        f"{scenario.__name__}()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def one_leak(leaks: list[Leak]) -> Leak:
    assert len(leaks) == 1, leaks
    return leaks[0]


# --- a zombie of the scope ------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "info"),
    [
        ("setup", OwnerInfo(NODEID, "setup", None, "function", f"{NODEID} (setup)")),
        ("call", OwnerInfo(NODEID, "call", None, "function", f"{NODEID} (call)")),
        (
            "teardown",
            OwnerInfo(NODEID, "teardown", None, "function", f"{NODEID} (teardown)"),
        ),
        (
            "fixture",
            OwnerInfo(
                NODEID,
                "setup",
                "server",
                "function",
                f"fixture 'server' (function scope, setup of {NODEID})",
            ),
        ),
    ],
)
def test_a_zombie_of_the_scope_is_a_leak_of_its_owner(
    owner: str, info: OwnerInfo
) -> None:
    with tracking() as tracker:
        tracker.start_test(NODEID, allowed=False, test_file=__file__, test_site=None)
        fixture = None
        if owner == "fixture":
            fixture = tracker.enter_fixture("server", "function", allowed=False)
        elif owner != "setup":
            tracker.enter_phase(owner)
        line = next_line()
        proc = subprocess.Popen(["sh", "-c", "exit 3"])
        if fixture is not None:
            tracker.leave_fixture(fixture)
        wait_until_zombie(proc.pid)
        verdict = tracker.end_test()
    leak = one_leak(verdict.leaks)
    assert (verdict.late, verdict.running) == ([], [])
    assert leak.kind == "zombie"
    assert leak.pid == proc.pid
    assert leak.argv == ("sh", "-c", "exit 3")
    assert leak.command == "sh -c 'exit 3'"
    assert leak.spawned_by == "subprocess.Popen"
    assert leak.owner == info
    assert leak.ended == Ended(3, None, None, False, "exited with code 3")
    assert leak.spawn_site == f"{HERE}:{line}"
    assert leak.site_note is None
    assert leak.thread is None
    assert not leak.late
    assert leak.found_during is None
    # Reaped through its Popen after the report: its returncode is true.
    assert proc.returncode == 3
    assert processes.child_status(proc.pid) == "gone"


def test_a_zombie_killed_by_a_signal_says_so(tracker: Tracker) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    proc.kill()
    wait_until_zombie(proc.pid)
    leak = one_leak(tracker.end_test().leaks)
    assert leak.ended == Ended(None, 9, "SIGKILL", False, "killed by SIGKILL (9)")
    assert proc.returncode == -signal.SIGKILL


def test_a_zombie_spawned_by_another_thread_names_it(tracker: Tracker) -> None:
    # Only library code on the thread's stack, as with trio's open_process.
    thread = threading.Thread(
        target=os.posix_spawn,
        args=(SH, ["sh", "-c", "exit 0"], os.environ),
        name="worker",
    )
    thread.start()
    join_thread(thread)
    [spawn] = [s for s in tracker.records.values() if s.thread == "worker"]
    wait_until_zombie(spawn.pid)
    try:
        leak = one_leak(tracker.end_test().leaks)
        assert leak.pid == spawn.pid
        assert leak.thread == "worker"
        assert leak.spawn_site is None
        assert leak.site_note == (
            "spawned from thread 'worker', whose stack holds none of your code"
        )
    finally:
        assert reap(spawn.pid) == 0


# --- children that are waited for -----------------------------------------------


def _exit_code(result: object) -> int:
    if isinstance(result, os.waitid_result):
        assert result.si_code == os.CLD_KILLED
        return -result.si_status
    if isinstance(result, tuple):
        return os.waitstatus_to_exitcode(result[1])
    assert isinstance(result, int)
    return result  # Popen.wait()'s returncode


#: How another thread waits for the child (a raw one, except for Popen.wait).
WAITS: list[tuple[str, Callable[[int], object]]] = [
    ("os.waitpid(pid, 0)", lambda pid: os.waitpid(pid, 0)),
    ("os.waitpid(-1, 0)", lambda pid: os.waitpid(-1, 0)),
    ("os.waitid(P_PID)", lambda pid: os.waitid(os.P_PID, pid, os.WEXITED)),
    ("Popen.wait()", lambda pid: None),
]


@pytest.mark.parametrize(
    "wait", [case[1] for case in WAITS], ids=[case[0] for case in WAITS]
)
def test_a_child_another_thread_waits_for_is_handed_and_not_reaped(
    wait: Callable[[int], object],
) -> None:
    # running_fails and a long grace: anything but "handed" would be judged
    # only after the grace, as running.
    with tracking(grace=DEADLINE, running_fails=True) as tracker:
        start(tracker)
        call: Callable[[], object]
        if wait is WAITS[-1][1]:
            proc = subprocess.Popen(["sleep", "30"])
            pid, call = proc.pid, proc.wait
        else:
            pid = os.posix_spawn(SLEEP, ["sleep", "30"], os.environ)
            call = functools.partial(wait, pid)
        waiter = Waiter(call)
        waiter.start()
        try:
            wait_for(lambda: processes.wait_targets().covers(pid, None))
            spawn = tracker.records[pid]
            assert not tracker.end_test()
            assert spawn.judged == "handed"
            assert processes.child_status(pid) == "running"
        finally:
            os.kill(pid, signal.SIGKILL)
            waiter.join(DEADLINE)
    # The waiting thread collected the child's true status itself.
    assert _exit_code(waiter.result) == -signal.SIGKILL
    assert processes.child_status(pid) == "gone"


def test_a_child_of_a_thread_that_still_runs_is_handed_to_it() -> None:
    release = threading.Event()
    started: list[subprocess.Popen[bytes]] = []

    def serve() -> None:
        started.append(subprocess.Popen(["sleep", "30"]))
        release.wait(DEADLINE)

    with tracking(grace=DEADLINE, running_fails=True) as tracker:
        start(tracker)
        thread = threading.Thread(target=serve, name="server")
        thread.start()
        try:
            wait_for(lambda: started)
            assert not tracker.end_test()
            assert tracker.records[started[0].pid].judged == "handed"
            # Still running at the end of the session: listed, as its test's.
            [running] = tracker.running_leftovers()
            assert running.kind == "running"
            assert running.pid == started[0].pid
            assert running.owner.nodeid == NODEID
            assert running.thread == "server"
        finally:
            release.set()
            join_thread(thread)
            for proc in started:
                proc.kill()
                proc.wait()


# --- what is reaped after a report, and what is left ----------------------------


def _exit_5() -> None:
    os._exit(5)


def _spawn(how: str) -> tuple[int, Any]:
    """A child that exits with code 5, and the object that holds it, if any."""
    if how == "os.fork":
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os._exit(5)
        return pid, None
    if how == "os.forkpty":
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - child
            os._exit(5)
        # Closing the terminal before the child exits would hang it up.
        wait_until_zombie(pid)
        os.close(fd)
        return pid, None
    if how == "os.posix_spawn":
        return os.posix_spawn(SH, ["sh", "-c", "exit 5"], os.environ), None
    if how == "subprocess.Popen":
        proc = subprocess.Popen(["sh", "-c", "exit 5"])
        return proc.pid, proc
    context: Any = multiprocessing.get_context("fork")
    process = context.Process(target=_exit_5, name="worker-1")
    process.start()
    return process.pid, process


@pytest.mark.parametrize(
    ("how", "spawned_by"),
    [
        ("os.fork", "os.fork"),
        ("os.forkpty", "os.forkpty"),
        ("os.posix_spawn", "os.posix_spawn"),
        ("subprocess.Popen", "subprocess.Popen"),
        ("multiprocessing", "multiprocessing.Process(name='worker-1')"),
    ],
)
def test_a_zombie_is_reaped_only_through_the_object_that_holds_it(
    tracker: Tracker, how: str, spawned_by: str
) -> None:
    pid, holder = _spawn(how)
    wait_until_zombie(pid)
    try:
        leak = one_leak(tracker.end_test().leaks)
        assert leak.pid == pid
        assert leak.spawned_by == spawned_by
        assert leak.ended is not None
        assert leak.ended.exit_code == 5
        if holder is None:
            # Whoever forked it may still wait for it: left as it was.
            assert processes.child_status(pid) == "zombie"
        else:
            # Reaped through its holder, whose returncode / exitcode is true.
            assert processes.child_status(pid) == "gone"
            if isinstance(holder, subprocess.Popen):
                assert holder.returncode == 5
            else:
                assert holder.exitcode == 5
        # Reported once: the next test is not blamed for it.
        start(tracker, LATER)
        assert not tracker.end_test()
    finally:
        if holder is None:
            assert reap(pid) == 5  # its true status, still there to take


def test_a_zombie_of_an_allowed_test_is_cleaned_up_and_not_reported() -> None:
    with tracking() as tracker:
        start(tracker, allowed=True)
        proc = subprocess.Popen(["sh", "-c", "exit 2"])
        raw = os.posix_spawn(SH, ["sh", "-c", "exit 2"], os.environ)
        wait_until_zombie(proc.pid)
        wait_until_zombie(raw)
        try:
            assert not tracker.end_test()
            assert proc.returncode == 2  # reaped through its Popen
            assert processes.child_status(raw) == "zombie"  # left as it was
            start(tracker, LATER)
            assert not tracker.end_test()  # never blamed on another test
        finally:
            assert reap(raw) == 2


# --- late zombies and unknown ones ----------------------------------------------


@pytest.mark.parametrize("dies", ["in a later test", "after the last test"])
def test_a_late_zombie_is_blamed_on_its_owner(dies: str) -> None:
    with tracking() as tracker:
        start(tracker)
        line = next_line()
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
        assert not tracker.end_test()  # asleep: left running, costs no wait
        assert cat.stdin is not None
        if dies == "in a later test":
            start(tracker, LATER)
            cat.stdin.close()
            wait_until_zombie(cat.pid)
            verdict = tracker.end_test()
            found_during = LATER
        else:
            cat.stdin.close()
            wait_until_zombie(cat.pid)
            verdict = tracker.final_sweep()
            found_during = "the end of the session"
    assert (verdict.leaks, verdict.running) == ([], [])
    leak = one_leak(verdict.late)
    assert leak.pid == cat.pid
    assert leak.command == "cat"
    assert leak.owner.nodeid == NODEID
    assert leak.owner.phase == "call"
    assert leak.late
    assert leak.found_during == found_during
    assert leak.spawn_site == f"{HERE}:{line}"
    assert cat.returncode == 0


def test_a_late_zombie_of_a_wider_fixture_waits_for_its_own_scope() -> None:
    with tracking() as tracker:
        start(tracker)
        fixture = tracker.enter_fixture(
            "_unittest_setUpClass_fixture_TestX", "class", allowed=False
        )
        assert fixture is not None
        proc = subprocess.Popen(["sh", "-c", "exit 8"])
        tracker.leave_fixture(fixture)
        wait_until_zombie(proc.pid)
        # Its scope is still open: the test is not blamed for it.
        assert not tracker.end_test()
        assert proc.returncode is None
        verdict = tracker.end_fixture(fixture)
    leak = one_leak(verdict.leaks)
    assert leak.pid == proc.pid
    assert leak.owner.text == f"TestX.setUpClass (of {NODEID})"
    assert leak.owner.fixture == "_unittest_setUpClass_fixture_TestX"
    assert leak.owner.scope == "class"
    assert proc.returncode == 8


def test_an_unknown_zombie_is_blamed_on_the_test_during_which_it_appears() -> None:
    # Not spawned through Python (a C extension's child): nothing recorded it.
    during = None
    with tracking() as tracker:
        before = spawn_untracked(["sh", "-c", "exit 1"])
        try:
            wait_until_zombie(before)  # a zombie when the test starts
            start(tracker)
            during = spawn_untracked(["sleep", "30"])
            os.kill(during, signal.SIGTERM)
            wait_until_zombie(during)
            leak = one_leak(tracker.end_test().leaks)
            assert leak.pid == during
            assert leak.spawned_by == "unknown"
            assert leak.command == (
                "[sleep] (not spawned through Python, parent pid "
                f"{os.getpid()}: command line unknown)"
            )
            assert leak.ended is not None
            assert leak.ended.signal == signal.SIGTERM
            assert leak.owner.nodeid == NODEID
            assert leak.spawn_site is None
            assert leak.site_note == "not spawned through Python"
            # Left in place (nothing holds it), and never blamed again.
            assert processes.child_status(during) == "zombie"
            start(tracker, LATER)
            assert not tracker.end_test()
        finally:
            if during is not None:
                assert reap(during) == -signal.SIGTERM
            assert reap(before) == 1


# --- the grace period -----------------------------------------------------------


def test_a_sleeping_child_costs_no_wait() -> None:
    # With an hour of grace, the check returns: only a child that was
    # signalled or is busy can exit soon, and this one is neither.
    with tracking(grace=3600) as tracker:
        start(tracker)
        line = next_line()
        proc = subprocess.Popen(["sleep", "30"])
        try:
            assert not tracker.end_test()
            assert tracker.records[proc.pid].judged == "left running"
            assert proc.poll() is None
            [running] = tracker.running_leftovers()
            assert running.kind == "running"
            assert running.pid == proc.pid
            assert running.command == "sleep 30"
            assert running.ended is None
            assert running.owner.nodeid == NODEID
            assert running.spawn_site == f"{HERE}:{line}"
        finally:
            proc.kill()
            proc.wait()


#: A child that exits with code 7 a little after SIGTERM, not at once.
SLOW_TO_DIE = [
    sys.executable,
    "-c",
    "import signal, sys, time\n"
    "def stop(*_):\n"
    "    time.sleep(0.5)\n"
    "    sys.exit(7)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n",
]


def _signalled(how: str) -> None:
    with tracking(grace=DEADLINE) as tracker:
        start(tracker)
        with subprocess.Popen(
            SLOW_TO_DIE, stdout=subprocess.PIPE, start_new_session=True
        ) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            if how == "terminate":
                proc.terminate()
            elif how == "kill":
                os.kill(proc.pid, signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGTERM)
            verdict = tracker.end_test()
            leak = one_leak(verdict.leaks)
            assert leak.pid == proc.pid, leak
            assert leak.ended is not None
            assert leak.ended.exit_code == 7, leak
            assert proc.returncode == 7


def _signalled_by_terminate() -> None:
    _signalled("terminate")


def _signalled_by_kill() -> None:
    _signalled("kill")


def _signalled_by_killpg() -> None:
    _signalled("killpg")


@pytest.mark.parametrize(
    "scenario", [_signalled_by_terminate, _signalled_by_kill, _signalled_by_killpg]
)
def test_a_signalled_child_is_waited_for_and_its_death_blamed_on_its_test(
    scenario: Callable[[], None],
) -> None:
    # p.terminate() without p.wait(): the test that did it is blamed, even
    # though its child took a while to die.
    run_alone(scenario)


RELEASED_ON_TERM = [
    sys.executable,
    "-c",
    "import signal, sys\n"
    "def stop(*_):\n"
    "    sys.stdin.read()\n"
    "    sys.exit(7)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "print('ready', flush=True)\n"
    "signal.pause()\n",
]


def test_without_a_grace_period_a_signalled_child_still_dying_is_left_running() -> None:
    # The contrast to the test above: the grace period is what catches it.
    with tracking(grace=0) as tracker:
        start(tracker)
        with subprocess.Popen(
            RELEASED_ON_TERM, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        ) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            proc.terminate()
            assert not tracker.end_test()
            assert tracker.records[proc.pid].judged == "left running"
            # Leaving the block closes its stdin: its handler then exits.
    assert proc.returncode == 7


#: Busy on a CPU for a while (no system call at all), then exits with code 4.
BUSY = ["sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; exit 4"]


def _busy_child_is_waited_for() -> None:
    with tracking(grace=DEADLINE) as tracker:
        start(tracker)
        proc = subprocess.Popen(BUSY)
        leak = one_leak(tracker.end_test().leaks)
        assert leak.pid == proc.pid, leak
        assert leak.ended is not None
        assert leak.ended.exit_code == 4, leak
        assert proc.returncode == 4


def test_a_busy_child_is_waited_for() -> None:
    run_alone(_busy_child_is_waited_for)


def _running_fails_waits_for_a_sleeping_child() -> None:
    with tracking(grace=DEADLINE, running_fails=True) as tracker:
        start(tracker)
        proc = subprocess.Popen(["sh", "-c", "sleep 0.5; exit 6"])
        leak = one_leak(tracker.end_test().leaks)
        assert leak.pid == proc.pid, leak
        assert leak.kind == "zombie"
        assert leak.ended is not None
        assert leak.ended.exit_code == 6, leak
        assert proc.returncode == 6


def test_running_fails_waits_for_every_running_child() -> None:
    # Even an asleep child may exit within the grace period; with
    # nozombies_running = fail that decides between a leak and a failure.
    run_alone(_running_fails_waits_for_a_sleeping_child)


def test_running_fails_reports_a_child_still_running_after_the_grace() -> None:
    with tracking(grace=0.2, running_fails=True) as tracker:
        start(tracker)
        proc = subprocess.Popen(["sleep", "30"])
        try:
            verdict = tracker.end_test()
            assert verdict.leaks == []
            running = one_leak(verdict.running)
            assert running.kind == "running"
            assert running.pid == proc.pid
            assert running.command == "sleep 30"
            assert running.owner.nodeid == NODEID
            assert tracker.running_leftovers() == []  # reported once
        finally:
            proc.kill()
            proc.wait()


def test_running_fails_spares_an_allowed_test() -> None:
    with tracking(grace=DEADLINE, running_fails=True) as tracker:
        start(tracker, allowed=True)
        proc = subprocess.Popen(["sleep", "30"])
        try:
            assert not tracker.end_test()  # returns at once: nothing to decide
            assert tracker.running_leftovers() == []
        finally:
            proc.kill()
            proc.wait()


# --- mid-test checks ------------------------------------------------------------


def test_check_now_finds_a_zombie_and_leaves_running_children(
    tracker: Tracker,
) -> None:
    zombie = subprocess.Popen(["sh", "-c", "exit 9"])
    running = subprocess.Popen(["sleep", "30"])
    wait_until_zombie(zombie.pid)
    try:
        leak = one_leak(tracker.check_now().leaks)
        assert leak.pid == zombie.pid
        assert leak.owner.phase == "call"
        assert zombie.returncode == 9
        assert tracker.records[running.pid].judged is None  # not judged yet
        running.kill()
        running.wait()
        assert not tracker.end_test()  # the zombie is not reported twice
    finally:
        running.kill()
        running.wait()
