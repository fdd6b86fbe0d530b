"""The spawn recorder (spawns.py), with a Tracker as its recorder and no
pytest session: each entry point records the real child it made.

Every child made here is reaped before its test ends: the outer session runs
the plugin too, and takes over what a test's tracker still follows.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    DEADLINE,
    ROOT,
    RunInner,
    join_thread,
    tracking,
    wait_for,
    wait_until_zombie,
)
from pytest_nozombies import processes, spawns
from pytest_nozombies.spawns import Frame, Spawn
from pytest_nozombies.tracker import Tracker

pytestmark = pytest.mark.skipif(not processes.SUPPORTED, reason="POSIX only")

SLEEP = shutil.which("sleep") or "/bin/sleep"
SH = shutil.which("sh") or "/bin/sh"
NODEID = "tests/test_x.py::test_a"


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    """A tracker whose test ``NODEID`` is in its call phase."""
    with tracking() as tracker:
        tracker.start_test(NODEID, allowed=False, test_file=__file__, test_site=None)
        tracker.enter_phase("call")
        yield tracker


def record_of(tracker: Tracker, pid: int) -> Spawn:
    spawn = tracker.records.get(pid)
    assert spawn is not None, f"no record of child {pid}"
    return spawn


def next_line() -> int:
    """The line after the caller's: where the caller spawns."""
    return sys._getframe(1).f_lineno + 1


def spawn_site(spawn: Spawn) -> Frame:
    """The first frame of the user's code on the spawning stack."""
    from helpers import not_user_code

    return next(spawns.iter_user_frames(spawn.stack(), not_user_code()))


def reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_popen_is_recorded_with_everything_the_report_needs(tracker: Tracker) -> None:
    owner = tracker.owner
    assert owner is not None
    line = next_line()
    with subprocess.Popen(
        ["sh", "-c", "read _; exit 3"], stdin=subprocess.PIPE
    ) as proc:
        spawn = record_of(tracker, proc.pid)
        assert spawn.pid == proc.pid
        # Its identity, read at spawn: the start time the kernel gives it.
        assert spawn.identity == processes.identify(proc.pid)
        assert spawn.argv == ("sh", "-c", "read _; exit 3")
        assert spawn.how == "subprocess.Popen"
        assert spawn.holder is not None
        assert spawn.holder() is proc
        assert spawn.owner is owner
        assert spawn in owner.scope.children
        assert spawn.thread is None  # spawned by the thread running the tests
        assert spawn.exempt is None
        assert not spawn.signalled
        assert spawn.judged is None
        name = "test_popen_is_recorded_with_everything_the_report_needs"
        assert spawn_site(spawn) == Frame(__file__, line, name)
        assert spawn.status() == "running"
        assert proc.stdin is not None
        proc.stdin.close()
    assert proc.returncode == 3
    assert spawn.status() == "gone"  # its Popen reaped it


@pytest.mark.skipif(
    not getattr(subprocess, "_USE_POSIX_SPAWN", False),
    reason="subprocess never uses posix_spawn here",
)
def test_a_popen_started_through_posix_spawn_is_its_childs_holder(
    tracker: Tracker,
) -> None:
    # Without close_fds and with a path, CPython starts the child with
    # os.posix_spawn, from Popen's own code.
    with subprocess.Popen([SH, "-c", "exit 0"], close_fds=False) as proc:
        spawn = record_of(tracker, proc.pid)
        assert spawn.how == "subprocess.Popen"
        assert spawn.holder is not None
        assert spawn.holder() is proc


def test_shell_popen_records_the_real_argv(tracker: Tracker) -> None:
    with subprocess.Popen("exit 0", shell=True) as proc:
        assert record_of(tracker, proc.pid).argv == ("/bin/sh", "-c", "exit 0")


def test_bytes_and_path_arguments_are_recorded_as_text(
    tracker: Tracker, tmp_path: Path
) -> None:
    script = tmp_path / "exit zero.sh"
    script.write_text("exit 0\n")
    with subprocess.Popen([b"sh", script, b"caf\xe9"]) as proc:
        assert record_of(tracker, proc.pid).argv == ("sh", str(script), "caf\udce9")
    argv: list[bytes | os.PathLike[str]] = [b"sh", script]
    pid = os.posix_spawn(SH.encode(), argv, os.environ)
    try:
        assert record_of(tracker, pid).argv == ("sh", str(script))
    finally:
        assert reap(pid) == 0


@pytest.mark.parametrize("fork", [os.fork, pty.fork], ids=["os.fork", "pty.fork"])
def test_a_fork_is_recorded_and_its_pid_returned(
    tracker: Tracker, fork: Callable[[], Any]
) -> None:
    line = next_line()
    result = fork()
    pid = result[0] if isinstance(result, tuple) else result
    if pid == 0:  # pragma: no cover - child
        os._exit(4)
    try:
        spawn = record_of(tracker, pid)
        assert spawn.how == ("os.fork" if fork is os.fork else "os.forkpty")
        assert spawn.argv is None
        assert spawn.holder is None
        assert spawn.owner is tracker.owner
        assert spawn.identity == processes.identify(pid)
        assert spawn_site(spawn).lineno == line
    finally:
        assert reap(pid) == 4
        if isinstance(result, tuple):
            os.close(result[1])
    assert spawn.status() == "gone"


def test_forks_are_noted_in_batches_without_waiting_for_a_check(
    tracker: Tracker,
) -> None:
    # A test that forks in a loop and never reaches a check: what is not
    # noted yet stays bounded, and a child still running is noted meanwhile.
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - child
        os.close(write_end)
        os.read(read_end, 1)  # until the parent closes its end
        os._exit(0)
    os.close(read_end)
    try:
        for _ in range(spawns._NOTE_EVERY + 10):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                os._exit(0)
            assert reap(pid) == 0
        assert len(spawns._unnoted) < spawns._NOTE_EVERY
        noted = tracker._records.get(first)  # not .records, which notes them
        assert noted is not None
        assert noted.identity == processes.identify(first)
        # The fork that fills a batch is noted before its test reaps it.
        reaped = [s for p, s in tracker._records.items() if p != first]
        assert len(reaped) <= 1
        assert all(spawn.status() == "gone" for spawn in reaped)
    finally:
        os.close(write_end)
        assert reap(first) == 0


@pytest.mark.parametrize("name", ["posix_spawn", "posix_spawnp"])
def test_posix_spawn_is_recorded(tracker: Tracker, name: str) -> None:
    program = SH if name == "posix_spawn" else "sh"
    pid = getattr(os, name)(program, ["sh", "-c", "exit 5"], os.environ)
    try:
        spawn = record_of(tracker, pid)
        assert spawn.how == f"os.{name}"
        assert spawn.argv == ("sh", "-c", "exit 5")
        assert spawn.holder is None
    finally:
        assert reap(pid) == 5


def test_a_spawn_that_fails_records_nothing(tracker: Tracker, tmp_path: Path) -> None:
    before = dict(tracker.records)
    with pytest.raises(FileNotFoundError):
        os.posix_spawn(str(tmp_path / "missing"), ["missing"], os.environ)
    assert tracker.records == before


def _do_nothing() -> None:
    pass


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_multiprocessing_process_is_its_childs_holder(
    tracker: Tracker, method: str
) -> None:
    context: Any = multiprocessing.get_context(method)
    process: multiprocessing.Process = context.Process(
        target=_do_nothing, name="worker-7"
    )
    line = next_line()
    process.start()
    try:
        assert process.pid is not None
        spawn = record_of(tracker, process.pid)
        assert spawn.holder is not None
        assert spawn.holder() is process
        assert spawn.live_holder() is process
        assert spawn.how == "multiprocessing.Process(name='worker-7')"
        assert spawn.owner is tracker.owner
        assert spawn_site(spawn).lineno == line
        if method == "fork":
            assert spawn.argv is None
        else:
            assert spawn.argv is not None
            assert spawn.argv[0] == sys.executable
            assert any("spawn_main" in arg for arg in spawn.argv)
    finally:
        process.join(DEADLINE)
    assert process.exitcode == 0
    assert spawn.status() == "gone"


def test_the_spawning_thread_is_named(tracker: Tracker) -> None:
    started: list[subprocess.Popen[bytes]] = []
    release = threading.Event()

    def spawn_and_stay() -> None:
        started.append(subprocess.Popen(["true"]))
        release.wait(DEADLINE)

    thread = threading.Thread(target=spawn_and_stay, name="spawner")
    thread.start()
    try:
        wait_for(lambda: started)
        spawn = record_of(tracker, started[0].pid)
        assert spawn.thread == "spawner"
        assert spawn.spawning_thread_alive()
    finally:
        release.set()
        join_thread(thread)
        for proc in started:
            proc.wait()
    assert not spawn.spawning_thread_alive()


#: Run in the parent inside os.fork, before its wrapper records the child.
_after_fork_in_parent: list[Callable[[], None]] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        after_in_parent=lambda: [hook() for hook in _after_fork_in_parent]
    )


@pytest.mark.parametrize("sigchld", ["ignored", "default"])
def test_a_child_reaped_before_it_is_recorded_leaves_no_record(
    tracker: Tracker, sigchld: str
) -> None:
    # The fork returns only once its child has exited: reaped at once by the
    # kernel when SIGCHLD is ignored, a zombie otherwise.
    before = set(processes.child_pids())

    def until_the_child_has_exited() -> None:
        def exited() -> bool:
            new = set(processes.child_pids()) - before
            if sigchld == "ignored":
                return not new
            stats = [processes.read_stat(p) for p in new]
            return all(stat is not None and stat.state == "Z" for stat in stats)

        wait_for(exited)

    previous = signal.signal(
        signal.SIGCHLD, signal.SIG_IGN if sigchld == "ignored" else signal.SIG_DFL
    )
    _after_fork_in_parent.append(until_the_child_has_exited)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os._exit(0)
    finally:
        _after_fork_in_parent.clear()
        signal.signal(signal.SIGCHLD, previous)
    if sigchld == "ignored":
        assert pid not in tracker.records
        assert processes.child_status(pid) == "gone"
    else:
        assert record_of(tracker, pid).status() == "zombie"
        assert reap(pid) == 0


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-c", "import multiprocessing.resource_tracker"],
        [sys.executable, "-c", "import multiprocessing.forkserver"],
    ],
)
def test_stdlib_helpers_are_exempt(tracker: Tracker, argv: list[str]) -> None:
    # Recognised by the module their command line runs, as multiprocessing
    # starts its resource tracker and forkserver.
    with subprocess.Popen(argv) as proc:
        spawn = record_of(tracker, proc.pid)
        assert spawn.exempt == "standard library helper"
        assert tracker.owner is not None
        assert spawn not in tracker.owner.scope.children  # never judged
    assert proc.returncode == 0


def test_ignored_command_lines_are_exempt() -> None:
    with tracking(ignore=(re.compile(r"^sh -c 'exit 4'$"),)) as tracker:
        tracker.start_test(NODEID, allowed=False, test_file=None, test_site=None)
        owner = tracker.owner
        assert owner is not None
        with subprocess.Popen(["sh", "-c", "exit 4"]) as ignored:
            assert record_of(tracker, ignored.pid).exempt == "nozombies_ignore"
        with subprocess.Popen(["sh", "-c", "exit 5"]) as kept:
            assert record_of(tracker, kept.pid).exempt is None
        assert [s.pid for s in owner.scope.children] == [kept.pid]


def test_a_spawn_between_owners_of_a_nested_session_is_the_outer_owners(
    tracker: Tracker,
) -> None:
    # A session that owns nothing spawns for nobody; but this tracker stacks
    # on the outer session's (a pytester run's would too), so what is spawned
    # while it owns nothing is the outer owner's. (A top-level session's
    # nobody is tested end to end in test_running.py.)
    tracker.stop_owning()
    assert tracker.outer_owner is not None
    with subprocess.Popen(["true"]) as proc:
        spawn = record_of(tracker, proc.pid)
        assert spawn.owner is tracker.outer_owner
    tracker.start_test(NODEID, allowed=False, test_file=__file__, test_site=None)
    fixture = tracker.enter_fixture("server", "module", allowed=False)
    assert fixture is not None
    with subprocess.Popen(["true"]) as proc:
        assert record_of(tracker, proc.pid).owner is fixture
    assert fixture.scope.children == [record_of(tracker, proc.pid)]
    tracker.leave_fixture(fixture)
    assert tracker.owner is not None
    assert tracker.owner.fixture is None


# --- signals ----------------------------------------------------------------


def test_kill_marks_the_child_signalled(tracker: Tracker) -> None:
    with (
        subprocess.Popen(["sleep", "30"]) as killed,
        subprocess.Popen(["sleep", "30"]) as spared,
    ):
        try:
            killed.terminate()  # os.kill underneath
            assert record_of(tracker, killed.pid).signalled
            assert not record_of(tracker, spared.pid).signalled
        finally:
            spared.kill()
    assert record_of(tracker, spared.pid).signalled
    assert tracker.signalled_groups == set()


def test_killpg_notes_the_group(tracker: Tracker) -> None:
    with subprocess.Popen(["sleep", "30"], start_new_session=True) as proc:
        os.killpg(proc.pid, signal.SIGTERM)
        assert tracker.signalled_groups == {proc.pid}
        assert not record_of(tracker, proc.pid).signalled  # the group is noted
    assert proc.returncode == -signal.SIGTERM


@pytest.mark.parametrize("fork", [os.fork, pty.fork], ids=["os.fork", "pty.fork"])
def test_a_forked_childs_command_is_read_when_it_is_signalled(
    tracker: Tracker, fork: Callable[[], Any]
) -> None:
    # As pexpect does: fork, then exec. A zombie's command line cannot be
    # read; the signal that ends it is the last moment to read it.
    result = fork()
    pid = result[0] if isinstance(result, tuple) else result
    if pid == 0:  # pragma: no cover - child
        os.execv(SLEEP, ["my sleep", "30"])
    try:
        spawn = record_of(tracker, pid)
        wait_for(lambda: processes.read_cmdline(pid) == ("my sleep", "30"))
        read_before = spawn.exec_argv
        assert read_before is None  # nothing read until it matters
        os.kill(pid, signal.SIGTERM)
        assert spawn.signalled
        assert spawn.exec_argv == ("my sleep", "30")
        wait_until_zombie(pid)
        how = "os.fork" if fork is os.fork else "os.forkpty"
        assert spawn.command("sleep") == f"'my sleep' 30 (forked by {how})"
    finally:
        os.kill(pid, signal.SIGKILL)
        reap(pid)
        if isinstance(result, tuple):
            os.close(result[1])


def test_signal_zero_probes_and_is_not_a_signal(tracker: Tracker) -> None:
    # os.kill(pid, 0) only asks whether pid exists: the child was not asked
    # to die, so the grace period must not be spent on it.
    with subprocess.Popen(["sleep", "30"]) as proc:
        try:
            os.kill(proc.pid, 0)
            assert record_of(tracker, proc.pid).signalled is False
            proc.terminate()
            assert record_of(tracker, proc.pid).signalled is True
        finally:
            proc.kill()


@pytest.mark.parametrize("kill", [os.kill, os.killpg], ids=["kill", "killpg"])
def test_a_kill_of_the_wrong_type_is_refused_by_kill_itself(
    tracker: Tracker, kill: Callable[[Any, int], None]
) -> None:
    # The code under test sees kill's own TypeError, and the plugin is not
    # thrown off by it (it would turn its checks off for the rest of the run).
    with pytest.raises(TypeError) as wrapped:
        kill("1234", signal.SIGKILL)
    original = os.kill.__wrapped__ if kill is os.kill else os.killpg.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(TypeError) as direct:
        original("1234", signal.SIGKILL)
    assert str(wrapped.value) == str(direct.value)
    assert tracker.failure is None


def test_a_fork_that_never_execs_keeps_no_command(tracker: Tracker) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        signal.pause()
        os._exit(0)
    try:
        spawn = record_of(tracker, pid)
        os.kill(pid, signal.SIGTERM)
        assert spawn.exec_argv is None  # the test process's own command line
        wait_until_zombie(pid)
        own = processes.read_stat(os.getpid())
        assert own is not None
        name = own.name  # a fork keeps its parent's name
        assert spawn.command(name) == f"[{name}] (forked by os.fork)"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # it pauses: never wait for it alive
        reap(pid)


# --- identity ---------------------------------------------------------------


def test_a_record_is_its_child_not_its_pid(tracker: Tracker) -> None:
    pid = os.posix_spawn(SLEEP, ["sleep", "30"], os.environ)
    try:
        spawn = record_of(tracker, pid)
        assert spawn.status() == "running"
        # A record of an earlier process that had this pid: the live process
        # started at another time, so it is not that one.
        earlier = Spawn(pid, spawn.identity - 1, ("old",), "os.fork", None)
        assert earlier.status() == "gone"
        os.kill(pid, signal.SIGKILL)
        wait_until_zombie(pid)
        assert spawn.status() == "zombie"
        assert earlier.status() == "gone"
    finally:
        reap(pid)
    assert spawn.status() == "gone"


def test_a_popen_with_a_returncode_says_its_child_was_reaped(
    tracker: Tracker,
) -> None:
    proc = subprocess.Popen(["true"])
    spawn = record_of(tracker, proc.pid)
    wait_until_zombie(proc.pid)
    assert spawn.status() == "zombie"
    assert proc.wait() == 0
    assert spawn.status() == "gone"


class _Server:
    """Holds its Popen in a reference cycle, as callbacks often do."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["sleep", "60"])
        self.on_stop = self.stop

    def stop(self) -> None:
        self.proc.kill()


def test_a_popen_freed_by_the_cycle_collector_is_still_found(
    tracker: Tracker,
) -> None:
    # The cycle collector clears weak references before Popen.__del__ parks a
    # Popen whose child still runs in subprocess._active: the parked Popen is
    # found there, and a dead reference is not taken to mean "reaped".
    server = _Server()
    pid = server.proc.pid
    spawn = record_of(tracker, pid)
    del server
    with pytest.warns(ResourceWarning):
        gc.collect()
    assert spawn.holder is not None
    assert spawn.holder() is None
    active: list[subprocess.Popen[bytes]] = subprocess._active  # type: ignore[attr-defined]
    [kept] = [p for p in active if p.pid == pid]
    try:
        assert spawn.live_holder() is kept
        assert spawn.status() == "running"
        kept.kill()
        wait_until_zombie(pid)
        assert spawn.status() == "zombie"
    finally:
        kept.kill()
        kept.wait()
    assert spawn.status() == "gone"


def test_a_popen_whose_finalizer_raises_still_has_its_child_followed(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under -W error, Popen.__del__'s ResourceWarning raises before it parks
    # the Popen in subprocess._active: nothing but the record follows the
    # child then, by its pid and start time.
    proc = subprocess.Popen(["sleep", "60"])
    pid = proc.pid
    spawn = record_of(tracker, pid)
    raised: list[type[BaseException] | None] = []
    # Keep only the type: the exception's traceback would keep the Popen alive.
    monkeypatch.setattr(
        sys, "unraisablehook", lambda args: raised.append(args.exc_type)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        del proc
    monkeypatch.undo()
    assert raised == [ResourceWarning]
    assert not [p for p in subprocess._active if p.pid == pid]  # type: ignore[attr-defined]
    try:
        assert spawn.live_holder() is None
        assert spawn.status() == "running"
        os.kill(pid, signal.SIGKILL)
        wait_until_zombie(pid)
        assert spawn.status() == "zombie"
    finally:
        os.kill(pid, signal.SIGKILL)
        reap(pid)
    assert spawn.status() == "gone"


def test_fault_injection_popen_failing_after_its_fork_still_records_the_child(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Injected fault: Popen._execute_child raising between the fork and its
    # end cannot be produced for real on demand (an interrupt, say).
    def fail(*args: Any) -> None:
        raise RuntimeError("injected after the fork")

    active: list[subprocess.Popen[bytes]] = subprocess._active  # type: ignore[attr-defined]
    before = {p.pid for p in active}
    monkeypatch.setattr(subprocess.Popen, "_close_pipe_fds", fail)
    # The failed Popen, once dropped, parks itself in subprocess._active
    # (saying so with a ResourceWarning).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(RuntimeError, match="injected"):
            subprocess.Popen(["sleep", "60"])
        gc.collect()
    monkeypatch.undo()
    assert [w.category for w in caught] == [ResourceWarning]
    [kept] = [p for p in active if p.pid not in before]
    try:
        spawn = record_of(tracker, kept.pid)
        assert spawn.how == "subprocess.Popen"
        assert spawn.live_holder() is kept
        assert spawn.status() == "running"
    finally:
        kept.kill()
        kept.wait()
    assert spawn.status() == "gone"


def test_a_popen_whose_exec_fails_leaves_nothing_to_judge(
    tracker: Tracker, tmp_path: Path
) -> None:
    program = str(tmp_path / "no-such-program")
    with pytest.raises(FileNotFoundError):
        subprocess.Popen([program])
    # Popen reaped the child that could not exec.
    [spawn] = [s for s in tracker.records.values() if s.argv == (program,)]
    assert spawn.status() == "gone"


class _SpawningEnv(dict[str, str]):
    """An environment whose reading spawns a child, inside Popen's start."""

    def __init__(self, spawned: list[int]) -> None:
        super().__init__(os.environ)
        self.spawned = spawned

    def items(self) -> Any:
        argv = ["sh", "-c", "exit 0", "inner"]
        self.spawned.append(os.posix_spawn(SH, argv, dict(os.environ)))
        return super().items()


def test_a_child_spawned_while_a_popen_starts_keeps_its_own_record(
    tracker: Tracker,
) -> None:
    inner: list[int] = []
    with subprocess.Popen(["sh", "-c", "exit 0"], env=_SpawningEnv(inner)) as proc:
        [pid] = inner
        spawn = record_of(tracker, pid)
        assert spawn.argv == ("sh", "-c", "exit 0", "inner")
        assert spawn.how == "os.posix_spawn"
        assert spawn.holder is None  # not the Popen being started
        own = record_of(tracker, proc.pid)
        assert own.argv == ("sh", "-c", "exit 0")
        assert own.holder is not None
        assert own.holder() is proc
    assert reap(pid) == 0


# --- the stack ----------------------------------------------------------------


def _spawn_from_a_helper(lines: list[int]) -> subprocess.Popen[bytes]:
    for _ in range(2):  # a loop: the line table is not in source order
        pass
    caller = sys._getframe(1)
    lines += [next_line(), caller.f_lineno]
    return subprocess.Popen(["true"])


def test_the_stack_has_every_line_as_f_lineno_gives_it(tracker: Tracker) -> None:
    lines: list[int] = []
    for _ in range(1):
        proc = _spawn_from_a_helper(
            lines,  # a call spread over lines
        )
    proc.wait()
    stack = record_of(tracker, proc.pid).stack()
    mine = [frame for frame in stack if frame.filename == __file__]
    assert mine[:2] == [
        Frame(__file__, lines[0], "_spawn_from_a_helper"),
        Frame(__file__, lines[1], "test_the_stack_has_every_line_as_f_lineno_gives_it"),
    ]
    # Innermost first: subprocess's own frames, never the wrappers'.
    assert stack[0].filename == subprocess.__file__
    assert all(frame.filename != spawns.__file__ for frame in stack)


def test_the_stack_stops_at_the_test_runner() -> None:
    import _pytest

    runner = os.path.join(os.path.dirname(_pytest.__file__), "")

    def frames_in_runner(**options: Any) -> list[Frame]:
        with tracking(**options) as tracker, subprocess.Popen(["true"]) as proc:
            stack = record_of(tracker, proc.pid).stack()
        return [f for f in stack if f.filename.startswith(runner)]

    assert frames_in_runner(stack_stop=(runner,)) == []
    assert frames_in_runner() != []


# --- no descriptor per child --------------------------------------------------


def _open_descriptors() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not processes.USES_PROC, reason="reads /proc/self/fd")
def test_no_descriptor_is_held_per_child(tracker: Tracker) -> None:
    # Issue 13 point 3: a child is followed by pid and identity only. A fork's
    # child is noted at the plugin's next turn, here the next spawn, and one
    # reaped before that needs no record at all.
    before = _open_descriptors()
    followed = []
    for _ in range(20):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os._exit(0)
        reap(pid)
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - child
            os._exit(0)
        os.close(fd)
        reap(pid)
        pid = os.posix_spawn(SH, ["sh", "-c", "exit 0"], os.environ)
        followed.append(pid)
        reap(pid)
        with subprocess.Popen(["true"]) as proc:
            followed.append(proc.pid)
    process = multiprocessing.get_context("fork").Process(target=_do_nothing)
    process.start()
    process.join(DEADLINE)
    process.close()  # its own sentinel descriptor is multiprocessing's
    assert all(pid in tracker.records for pid in followed)  # all still followed
    assert _open_descriptors() == before


INNER_NO_DESCRIPTORS = """
import multiprocessing, os, subprocess

def descriptors():
    return sorted(os.listdir("/proc/self/fd"))

def nothing():
    pass

def test_waited_children_leave_no_descriptor_open():
    before = descriptors()
    for _ in range(50):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        pid = os.posix_spawnp("true", ["true"], os.environ)
        os.waitpid(pid, 0)
        subprocess.run(["true"], check=True)
    for _ in range(5):
        process = multiprocessing.get_context("fork").Process(target=nothing)
        process.start()
        process.join()
        process.close()
    assert descriptors() == before
"""


@pytest.mark.skipif(not processes.USES_PROC, reason="reads /proc/self/fd")
def test_a_test_comparing_its_descriptors_is_undisturbed(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # Issue 13 point 3, as a user sees it: CPython's, psutil's and pytest's
    # own suites compare /proc/self/fd before and after waited children.
    pytester.makepyfile(INNER_NO_DESCRIPTORS)
    result = run_inner()
    result.assert_outcomes(passed=1)
    assert result.ret == 0


# --- sessions inside sessions -------------------------------------------------


def test_a_nested_tracker_stacks_and_hands_what_it_follows_to_the_outer_owner(
    tracker: Tracker,
) -> None:
    # Issue 13 point 7: pytester's in-process run is a session inside a
    # session; what its test left running answers to the outer test.
    outer_owner = tracker.owner
    assert outer_owner is not None
    with tracking() as inner:
        assert spawns._recorders[-1] is inner
        assert inner.outer_owner is outer_owner
        inner.start_test(
            "inner.py::test_leaves", allowed=False, test_file=None, test_site=None
        )
        inner.enter_phase("call")
        left = subprocess.Popen(["sleep", "30"])
        waited = subprocess.Popen(["true"])
        waited.wait()
        exempt = subprocess.Popen(
            [sys.executable, "-c", "import multiprocessing.resource_tracker"]
        )
        exempt.wait()
        assert left.pid in inner.records
        assert left.pid not in tracker.records
        assert not inner.end_test()  # a sleeping child: left running
        assert record_of(inner, left.pid).judged == "left running"
    assert spawns._recorders[-1] is tracker
    try:
        spawn = record_of(tracker, left.pid)
        assert spawn.owner is outer_owner
        assert spawn.via is not None
        assert spawn.via.nodeid == "inner.py::test_leaves"
        assert spawn.judged is None  # the outer scope judges it afresh
        assert spawn in outer_owner.scope.children
        assert exempt.pid not in tracker.records  # a helper, never anyone's
        # The outer tracker records what is spawned from now on.
        with subprocess.Popen(["true"]) as after:
            assert record_of(tracker, after.pid).owner is outer_owner
        # It dies during the outer test: blamed on it, named as the nested
        # session's, with its real command line.
        left.kill()
        wait_until_zombie(left.pid)
        verdict = tracker.end_test()
        [leak] = verdict.leaks
        assert leak.pid == left.pid
        assert leak.command == "sleep 30"
        assert leak.owner.nodeid == NODEID
        assert leak.owner.text == (
            f"{NODEID} (call), in a pytest session it ran: inner.py::test_leaves (call)"
        )
        assert leak.ended is not None
        assert leak.ended.signal == signal.SIGKILL
    finally:
        left.kill()
        left.wait()
    assert left.returncode == -signal.SIGKILL


UNINSTALL = """
import os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from helpers import tracking

originals = (os.fork, os.kill, os.posix_spawn, subprocess.Popen._execute_child)
with tracking() as outer:
    assert os.fork is not originals[0]
    with tracking() as inner:
        pass
    assert os.fork is not originals[0], "unwrapped while the outer one records"
assert (os.fork, os.kill, os.posix_spawn, subprocess.Popen._execute_child) == originals
print("ok")
"""


def test_the_originals_are_put_back_when_the_last_tracker_stops() -> None:
    # In a fresh interpreter: here the outer session's tracker still records.
    out = subprocess.run(
        [sys.executable, "-c", UNINSTALL, str(ROOT / "tests")],
        check=True,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    ).stdout
    assert out == "ok\n"
