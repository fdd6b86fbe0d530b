"""Spawn capture, tested directly: each wrapper records the real child."""

from __future__ import annotations

import _posixsubprocess  # type: ignore[import-not-found,unused-ignore]
import gc
import multiprocessing
import os
import pty
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from helpers import wait_until_zombie
from pytest_nozombies import processes, spawns

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")

OWNER = spawns.Owner("tests/test_x.py::test_a", "call")


@pytest.fixture
def registry() -> Iterator[spawns.SpawnRegistry]:
    originals = (os.fork, _posixsubprocess.fork_exec, _execute_child())
    registry = spawns.SpawnRegistry()
    spawns.install(registry)
    registry.test, registry.phase = OWNER.nodeid, OWNER.phase
    try:
        yield registry
    finally:
        spawns.uninstall()
    assert (os.fork, _posixsubprocess.fork_exec, _execute_child()) == originals


def _execute_child() -> object:
    return getattr(subprocess.Popen, "_execute_child")  # noqa: B009 - private


def this_file_lines(record: spawns.SpawnRecord) -> list[int]:
    return [f.lineno for f in record.stack if f.filename == __file__]


def test_popen_is_recorded_with_argv_holder_owner_and_stack(
    registry: spawns.SpawnRegistry,
) -> None:
    with subprocess.Popen(["sh", "-c", "exit 3"]) as proc:
        record = registry.by_pid(proc.pid)
        assert record is not None
        assert record.argv == ("sh", "-c", "exit 3")
        assert record.how == "subprocess.Popen"
        assert record.owner == OWNER
        assert record.holder is not None
        assert record.holder() is proc
        assert record.exempt is None
        assert this_file_lines(record)  # the spawning line is in this file
    assert proc.returncode == 3


def test_shell_popen_records_the_real_argv(registry: spawns.SpawnRegistry) -> None:
    with subprocess.Popen("exit 0", shell=True) as proc:
        record = registry.by_pid(proc.pid)
        assert record is not None
        assert record.argv == ("/bin/sh", "-c", "exit 0")


def test_bytes_and_path_arguments_are_recorded_as_text(
    registry: spawns.SpawnRegistry, tmp_path: Path
) -> None:
    script = tmp_path / "exit zero.sh"
    script.write_text("exit 0\n")
    with subprocess.Popen([b"sh", script]) as proc:
        record = registry.by_pid(proc.pid)
        assert record is not None
        assert record.argv == ("sh", str(script))
    assert proc.returncode == 0


def test_fork_is_recorded_and_returns_the_pid(registry: spawns.SpawnRegistry) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0)
    try:
        record = registry.by_pid(pid)
        assert record is not None
        assert record.how == "os.fork"
        assert record.argv is None
        assert record.pid == pid
        assert record.status() == "running" or record.status() == "zombie"
    finally:
        os.waitpid(pid, 0)


def test_forkpty_is_recorded(registry: spawns.SpawnRegistry) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0)
    try:
        record = registry.by_pid(pid)
        assert record is not None
        assert record.how == "os.forkpty"
    finally:
        os.close(fd)
        os.waitpid(pid, 0)


def test_posix_spawn_is_recorded(registry: spawns.SpawnRegistry) -> None:
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 0"], os.environ)
    try:
        record = registry.by_pid(pid)
        assert record is not None
        assert record.how == "os.posix_spawn"
        assert record.argv == ("sh", "-c", "exit 0")
    finally:
        os.waitpid(pid, 0)


def _do_nothing() -> None:
    pass


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_process_is_found_as_its_holder(
    registry: spawns.SpawnRegistry, method: str
) -> None:
    from pytest_nozombies import reaping

    context: Any = multiprocessing.get_context(method)
    process: multiprocessing.Process = context.Process(target=_do_nothing)
    process.start()
    try:
        assert process.pid is not None
        record = registry.by_pid(process.pid)
        assert record is not None
        assert reaping.find_holder(process.pid, record) is process
        assert reaping.describe_holder(process) == (
            f"multiprocessing.Process(name={process.name!r})"
        )
    finally:
        process.join()
    assert process.exitcode == 0


def test_child_reaped_by_sigchld_ignore_is_not_recorded(
    registry: spawns.SpawnRegistry,
) -> None:
    import signal

    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
    finally:
        signal.signal(signal.SIGCHLD, previous)
    record = registry.by_pid(proc.pid)
    # Either never recorded (gone before we looked) or recorded and now seen
    # gone: nothing ever claims a process that is not there.
    assert record is None or record.status() == "gone"


def test_stdlib_helpers_have_no_owner(registry: spawns.SpawnRegistry) -> None:
    # Recognised by the module its command line runs, as multiprocessing's
    # resource tracker and forkserver are started.
    argv = [sys.executable, "-c", "import multiprocessing.resource_tracker"]
    with subprocess.Popen(argv) as proc:
        record = registry.by_pid(proc.pid)
        assert record is not None
        assert record.exempt == "standard library helper"
        assert record.owner is None
    assert proc.returncode == 0


def test_a_record_is_its_child_not_its_pid(registry: spawns.SpawnRegistry) -> None:
    proc = subprocess.Popen(["sh", "-c", "exit 0"])
    wait_until_zombie(proc.pid)
    first = registry.by_pid(proc.pid)
    assert first is not None
    identity = processes.identify(proc.pid)
    assert identity is not None
    assert first.status() == "zombie"
    assert registry.get(identity) is first
    proc.wait()
    # Reaped: whatever gets the pid next, it is not this child.
    assert first.status() == "gone"
    assert registry.get(identity) is None
    # A new spawn with a reused pid replaces the old record, and its scope.
    newer = spawns.SpawnRecord(proc.pid, None, ("newer",), "os.fork", (), OWNER)
    registry.add(newer)
    assert registry.by_pid(proc.pid) is newer
    assert registry.in_scope(OWNER.scope_key) == [newer]
    registry.discard(newer)
    assert registry.in_scope(OWNER.scope_key) == []


def test_without_pidfds_the_start_time_tells_children_apart() -> None:
    # Where pidfds do not exist (macOS), a record carries its start time.
    record = spawns.SpawnRecord(4242, 100.0, None, "os.fork", (), OWNER)
    assert record.matches(processes.ChildIdentity(4242, 100.0))
    assert not record.matches(processes.ChildIdentity(4242, 101.0))
    assert not record.matches(processes.ChildIdentity(4243, 100.0))


def test_nothing_is_recorded_without_spawns(registry: spawns.SpawnRegistry) -> None:
    before = len(registry.all_records())
    sum(range(1000))
    assert len(registry.all_records()) == before


def test_owner_descriptions() -> None:
    assert OWNER.describe() == "tests/test_x.py::test_a (call)"
    fixture = spawns.Owner("t.py::t", "setup", fixture="server", scope="module")
    assert fixture.describe() == "fixture 'server' (module scope, setup of t.py::t)"
    assert fixture.scope_key != OWNER.scope_key
    function_fixture = spawns.Owner("tests/test_x.py::test_a", "setup", fixture="f")
    assert function_fixture.scope_key == OWNER.scope_key


def test_ignored_command_lines_have_no_owner(registry: spawns.SpawnRegistry) -> None:
    registry.ignore = (re.compile(r"^sh -c 'exit 4'$"),)
    with subprocess.Popen(["sh", "-c", "exit 4"]) as ignored:
        record = registry.by_pid(ignored.pid)
        assert record is not None
        assert record.exempt == "nozombies_ignore"
        assert record.owner is None
    with subprocess.Popen(["sh", "-c", "exit 5"]) as kept:
        record = registry.by_pid(kept.pid)
        assert record is not None
        assert record.exempt is None
        assert record.owner == OWNER


def test_a_nested_session_stacks_its_registry_and_gives_it_back() -> None:
    # pytester's in-process runs start a session inside a session.
    outer, inner = spawns.SpawnRegistry(), spawns.SpawnRegistry()
    original_fork = os.fork
    spawns.install(outer)
    try:
        spawns.install(inner)
        with subprocess.Popen(["true"]) as first:
            pass
        assert inner.by_pid(first.pid) is not None
        assert outer.by_pid(first.pid) is None
        spawns.uninstall(inner)
        assert os.fork is not original_fork  # still wrapped for the outer one
        with subprocess.Popen(["true"]) as second:
            pass
        assert outer.by_pid(second.pid) is not None
    finally:
        spawns.uninstall(inner)  # a second call changes nothing
        spawns.uninstall(outer)
    assert os.fork is original_fork


def _frames_from(frame: FrameType | None) -> list[tuple[str, int, str]]:
    found: list[tuple[str, int, str]] = []
    while frame is not None:
        found.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    return found


def _capture_in_a_loop(flag: bool) -> tuple[tuple[spawns.RawFrame, ...], list[Any]]:
    if flag:
        for _ in range(2):
            pass
        # Both on one line, so that both see the same line of this frame.
        raw, expected = spawns.capture_stack(0), _frames_from(sys._getframe())
        return raw, expected
    raise AssertionError("not reached")


def test_lines_are_worked_out_later_exactly_as_f_lineno_gives_them() -> None:
    values = [_capture_in_a_loop(True) for _ in range(1)]
    raw, expected = values[0]
    resolved = [tuple(f) for f in spawns.resolve_stack(raw)]
    assert len(resolved) >= 3
    assert resolved == expected[: len(resolved)]


def test_a_popen_with_a_returncode_says_its_child_was_reaped(
    registry: spawns.SpawnRegistry,
) -> None:
    proc = subprocess.Popen(["true"])
    record = registry.by_pid(proc.pid)
    assert record is not None
    wait_until_zombie(proc.pid)
    assert record.status() == "zombie"
    proc.wait()
    assert record.holder is not None
    assert record.holder() is proc
    assert record.status() == "gone"


class _Server:
    """Holds its Popen in a reference cycle, as callbacks often do."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"]
        )
        self.on_stop = self.stop

    def stop(self) -> None:
        self.proc.kill()


def test_a_popen_freed_by_the_cycle_collector_still_follows_a_running_child(
    registry: spawns.SpawnRegistry,
) -> None:
    # The cycle collector clears weak references before Popen.__del__ parks a
    # Popen whose child still runs in subprocess._active: a dead reference
    # must not be taken to mean that the child was reaped.
    server = _Server()
    pid = server.proc.pid
    record = registry.by_pid(pid)
    assert record is not None
    del server
    with pytest.warns(ResourceWarning):
        gc.collect()
    assert record.holder is not None
    assert record.holder() is None
    assert record.status() == "running"
    [kept] = [p for p in subprocess._active if p.pid == pid]  # type: ignore[attr-defined]
    kept.kill()
    wait_until_zombie(pid)
    assert record.status() == "zombie"
    kept.wait()
    assert record.status() == "gone"


def pinned(record: spawns.SpawnRecord) -> bool:
    return record.handle is not None or record.start_time is not None


def test_a_popen_child_is_pinned_only_when_asked_about_unreaped(
    registry: spawns.SpawnRegistry,
) -> None:
    # No pidfd at spawn for a Popen's child: the Popen says when it is gone.
    proc = subprocess.Popen(["sh", "-c", "exit 4"])
    record = registry.by_pid(proc.pid)
    assert record is not None
    assert record.handle is None
    assert record.start_time is None
    wait_until_zombie(proc.pid)
    assert record.status() == "zombie"  # asked while unreaped: now pinned
    assert pinned(record)
    assert proc.wait() == 4  # the plugin's look reaped nothing


def test_a_child_reaped_by_its_popen_is_gone_without_any_look(
    registry: spawns.SpawnRegistry,
) -> None:
    subprocess.run(["true"], check=True)  # its Popen is freed at once
    [record] = [r for r in registry.all_records() if r.argv == ("true",)]
    assert record.holder is not None
    assert record.holder() is None
    assert record.status() == "gone"
    assert not pinned(record)


class _PopenWithOwnFinalizer(subprocess.Popen):  # type: ignore[type-arg]
    def __del__(self) -> None:  # does not park itself in subprocess._active
        pass


def test_a_popen_without_subprocess_finalizer_is_pinned_at_spawn(
    registry: spawns.SpawnRegistry,
) -> None:
    with _PopenWithOwnFinalizer(["true"]) as proc:
        record = registry.by_pid(proc.pid)
        assert record is not None
        assert not record.holder_parks
        assert pinned(record)


def test_a_popen_whose_exec_fails_leaves_no_record(
    registry: spawns.SpawnRegistry, tmp_path: Path
) -> None:
    program = str(tmp_path / "no-such-program")
    with pytest.raises(FileNotFoundError):
        subprocess.Popen([program])
    # Popen reaped the child that could not exec; nothing is left to judge.
    assert [r for r in registry.all_records() if r.argv == (program,)] == []


def _sleeper() -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_popen_whose_finalizer_raises_still_has_its_child_followed(
    registry: spawns.SpawnRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under -W error, Popen.__del__'s ResourceWarning raises before it parks
    # the Popen in subprocess._active: nothing but the record follows the
    # child then, so it must be pinned, not taken for reaped.
    proc = subprocess.Popen(_sleeper())
    pid = proc.pid
    record = registry.by_pid(pid)
    assert record is not None
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
        assert record.status() == "running"
        os.kill(pid, signal.SIGKILL)
        wait_until_zombie(pid)
        assert record.status() == "zombie"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert record.status() == "gone"


def test_fault_injected_popen_failing_after_its_fork_still_records_the_child(
    registry: spawns.SpawnRegistry, monkeypatch: pytest.MonkeyPatch
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
            subprocess.Popen(_sleeper())
        gc.collect()
    monkeypatch.undo()
    assert [w.category for w in caught] == [ResourceWarning]
    [kept] = [p for p in active if p.pid not in before]
    try:
        record = registry.by_pid(kept.pid)
        assert record is not None
        assert record.how == "subprocess.Popen"
        assert record.status() == "running"
        kept.kill()
        wait_until_zombie(kept.pid)
        assert record.status() == "zombie"
    finally:
        kept.kill()
        kept.wait()
    assert record.status() == "gone"


class _SpawningEnv(dict[str, str]):
    """An environment whose reading spawns a child, inside Popen's start."""

    def __init__(self, spawned: list[int]) -> None:
        super().__init__(os.environ)
        self.spawned = spawned

    def items(self) -> Any:
        argv = ["sh", "-c", "exit 0", "inner"]
        self.spawned.append(os.posix_spawn("/bin/sh", argv, dict(os.environ)))
        return super().items()


def test_a_child_spawned_while_a_popen_starts_keeps_its_own_record(
    registry: spawns.SpawnRegistry,
) -> None:
    inner: list[int] = []
    with subprocess.Popen(["sh", "-c", "exit 0"], env=_SpawningEnv(inner)) as proc:
        [pid] = inner
        record = registry.by_pid(pid)
        assert record is not None
        assert record.argv == ("sh", "-c", "exit 0", "inner")
        assert record.how == "os.posix_spawn"
        assert pinned(record)  # no Popen follows it
        own = registry.by_pid(proc.pid)
        assert own is not None
        assert own.argv == ("sh", "-c", "exit 0")
        assert own.holder is not None
        assert own.holder() is proc
    os.waitpid(pid, 0)
