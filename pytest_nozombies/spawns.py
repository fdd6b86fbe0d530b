"""Record who spawned each child, at the moment it is spawned.

A zombie's command line can no longer be read and its parent's stack is long
gone by the time anyone notices it, so both are taken when the child is
created: the Python entry points that create children are wrapped, and each
wrapper notes the new pid, its argv, the calling stack and the current owner
(the test or fixture running at the time) before handing back exactly what the
original returned. Nothing is recorded, and nothing costs anything, until a
child is spawned.

No pytest here: the owner is a plain value the caller sets.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator
from types import CodeType
from typing import Any, NamedTuple

from . import processes

try:
    import _posixsubprocess  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # Windows: nothing spawns zombies, nothing is installed
    _posixsubprocess = None  # type: ignore[assignment]

# Long-lived helpers the standard library starts on purpose; never leaks.
_STDLIB_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
_MAX_STACK = 64


class Owner(NamedTuple):
    """What was running when a child was spawned, and so answers for it."""

    nodeid: str
    phase: str
    fixture: str | None = None
    scope: str = "function"
    serial: int = 0
    allowed: bool = False

    @property
    def scope_key(self) -> Hashable:
        """Children with the same key are judged together when that scope ends."""
        if self.fixture is None or self.scope == "function":
            return self.nodeid
        return (self.fixture, self.serial)

    def describe(self) -> str:
        if self.fixture is None:
            return f"{self.nodeid} ({self.phase})"
        return (
            f"fixture {self.fixture!r} ({self.scope} scope, {self.phase} of "
            f"{self.nodeid})"
        )


class Frame(NamedTuple):
    filename: str
    lineno: int
    function: str


#: A frame as captured at spawn time: its code and its last instruction.
RawFrame = tuple[CodeType, int]


class SpawnRecord:
    """One child this process spawned and has not seen reaped.

    The child is pinned down by a pidfd (``handle``) where the platform has
    them: one system call at spawn, and from then on its status is exact even
    if its pid is reused. Elsewhere its start time tells it apart. A Popen's
    child is pinned only if it is still unreaped when asked about (``pin``).
    """

    __slots__ = (
        "_stack",
        "argv",
        "exempt",
        "handle",
        "holder",
        "holder_parks",
        "how",
        "left_running",
        "owner",
        "pid",
        "raw_stack",
        "start_time",
    )

    def __init__(
        self,
        pid: int,
        start_time: float | None,
        argv: tuple[str, ...] | None,
        how: str,
        stack: tuple[Frame, ...],
        owner: Owner | None,
        exempt: str | None = None,
        handle: int | None = None,
        raw_stack: tuple[RawFrame, ...] = (),
    ) -> None:
        self.pid = pid
        self.handle = handle
        self.start_time = start_time
        self.argv = argv
        self.how = how
        self._stack: tuple[Frame, ...] | None = stack or None
        #: The spawning stack as captured (see ``capture_stack``).
        self.raw_stack = raw_stack
        self.owner = owner
        #: Why this child is never a leak: a stdlib helper, or nozombies_ignore.
        self.exempt = exempt
        self.holder: weakref.ref[Any] | None = None
        #: The holder is a Popen with subprocess's own finalizer: dropped
        #: before it reaped its child, it parks itself in ``subprocess._active``.
        self.holder_parks = False
        #: Set once the owner's scope ended with the child still running.
        self.left_running = False

    @property
    def stack(self) -> tuple[Frame, ...]:
        """The spawning stack, innermost first, with line numbers."""
        if self._stack is None:
            self._stack = resolve_stack(self.raw_stack)
        return self._stack

    def status(self) -> processes.ChildStatus:
        """``running``, ``zombie`` or ``gone``: this child, not its pid's."""
        unpinned = self.handle is None and self.start_time is None
        if unpinned and self.holder is not None:
            holder = self.holder()
            # A Popen with a returncode has reaped its child: no system call
            # needed. A Popen that is gone has either reaped its child or been
            # parked in subprocess._active by its finalizer (the cycle
            # collector clears weak references before that finalizer runs;
            # a finalizer that failed pinned the child, see _wrap_popen_del).
            if holder is not None:
                if getattr(holder, "returncode", None) is not None:
                    return "gone"
            elif self.holder_parks and not _parked(self.pid):
                return "gone"
        if unpinned:
            self.pin()
        if self.handle is not None:
            return processes.handle_status(self.handle)
        status = processes.child_status(self.pid)
        if status != "gone":
            identity = processes.identify(self.pid)
            if identity is None or not self.matches(identity):
                return "gone"  # its pid now names a process we did not record
        return status

    def pin(self) -> None:
        """Pin down a child recorded without a pidfd or start time.

        Only a Popen's children are recorded so (see ``claim_popen``), and only
        while their Popen has not reaped them is this asked: their pid is
        still theirs, unless other code reaped them behind their Popen's back.
        """
        if self.handle is not None or self.start_time is not None:
            return
        self.handle = processes.open_handle(self.pid)
        if self.handle is None:
            identity = processes.identify(self.pid)
            self.start_time = identity.start_time if identity is not None else -1.0

    def matches(self, identity: processes.ChildIdentity) -> bool:
        """Whether ``identity`` is this child (and not a later one with its pid)."""
        if identity.pid != self.pid:
            return False
        unpinned = self.handle is None and self.start_time is None
        if unpinned and self.status() == "gone":
            return False
        if self.handle is not None:
            # The pid is ours while our child is not reaped: then it is ours.
            return processes.handle_status(self.handle) != "gone"
        if self.start_time is None:
            self.start_time = identity.start_time
        return self.start_time == identity.start_time

    def close(self) -> None:
        if self.handle is not None:
            processes.close_handle(self.handle)
            self.handle = None

    def __repr__(self) -> str:
        return f"<SpawnRecord pid={self.pid} {self.how} owner={self.owner}>"


class SpawnRegistry:
    """Every child spawned through Python, by pid, grouped by owner scope."""

    def __init__(self) -> None:
        #: The test now running, as the caller sets it around each test. Kept
        #: as plain fields: an ``Owner`` is only built when a child is spawned
        #: or a fixture set up.
        self.test: str | None = None
        #: "setup" from the test's start until its teardown begins, then
        #: "teardown": the call phase is told apart only when a child is
        #: spawned, by ``phase_now``, which saves a hook call on every test.
        self.phase = ""
        self.test_allowed = False
        #: Says which phase the test with the given node id is in ("setup",
        #: "call" or "teardown"), or None if it cannot tell.
        self.phase_now: Callable[[str], str | None] = _no_phase
        #: Owners of fixtures now setting up or tearing down, innermost last.
        self.fixture_owners: list[Owner] = []
        #: Command lines matching one of these are never leaks.
        self.ignore: tuple[re.Pattern[str], ...] = ()
        #: Folders where a spawn stack stops (the test runner's own frames).
        self.stack_stop: tuple[str, ...] = ()
        self._records: dict[int, SpawnRecord] = {}
        self._by_scope: dict[Hashable, dict[int, SpawnRecord]] = {}
        self._lock = threading.Lock()

    def current_owner(self) -> Owner | None:
        """What answers for a child spawned now."""
        if self.fixture_owners:
            return self.fixture_owners[-1]
        if self.test is None:
            return None
        return Owner(self.test, self.phase, allowed=self.test_allowed)

    def spawn_owner(self) -> Owner | None:
        """What answers for a child spawned now, its phase told exactly."""
        test = self.test
        if self.fixture_owners:
            fixture = self.fixture_owners[-1]
            if fixture.phase != "setup" or test is None:
                return fixture
            phase = self.phase_now(test) or "setup"
            return fixture if phase == "setup" else fixture._replace(phase=phase)
        if test is None:
            return None
        phase = self.phase
        if phase == "setup":
            # Without pytest's word, "call" is the better guess for the test
            # itself: in its setup phase fixtures own what is spawned.
            phase = self.phase_now(test) or "call"
        return Owner(test, phase, allowed=self.test_allowed)

    def get(self, identity: processes.ChildIdentity) -> SpawnRecord | None:
        record = self._records.get(identity.pid)
        if record is None or not record.matches(identity):
            return None
        return record

    def by_pid(self, pid: int) -> SpawnRecord | None:
        return self._records.get(pid)

    def in_scope(self, key: Hashable) -> list[SpawnRecord]:
        scope = self._by_scope.get(key)
        return list(scope.values()) if scope else []

    def all_records(self) -> list[SpawnRecord]:
        with self._lock:
            return list(self._records.values())

    def add(self, record: SpawnRecord) -> None:
        with self._lock:
            # A pid is only reused after its earlier child was reaped, so the
            # new record simply replaces the stale one.
            if record.pid in self._records:
                self._discard_locked(record.pid)
            self._records[record.pid] = record
            if record.owner is not None:
                scope = self._by_scope.setdefault(record.owner.scope_key, {})
                scope[record.pid] = record

    def discard(self, record: SpawnRecord) -> None:
        with self._lock:
            if self._records.get(record.pid) is record:
                self._discard_locked(record.pid)

    def forget_collected(self, key: Hashable) -> bool:
        """Drop scope ``key``'s records of children already reaped (by their
        spawner, as well-behaved code does); whether none is left."""
        scope = self._by_scope.get(key)
        if not scope:
            return True
        for record in list(scope.values()):
            if record.status() == "gone":
                self.discard(record)
        return key not in self._by_scope

    def leave_scope(self, key: Hashable) -> None:
        """Forget the grouping of a scope that ended; its records stay by pid."""
        if key not in self._by_scope:
            return  # the usual case, and without taking the lock
        with self._lock:
            self._by_scope.pop(key, None)

    def close(self) -> None:
        """Let go of every record (and its pidfd)."""
        with self._lock:
            for pid in list(self._records):
                self._discard_locked(pid)

    def _discard_locked(self, pid: int) -> None:
        old = self._records.pop(pid, None)
        if old is None:
            return
        if old.handle is not None:
            old.close()
        if old.owner is not None:
            key = old.owner.scope_key
            scope = self._by_scope.get(key)
            if scope is not None:
                scope.pop(pid, None)
                if not scope:
                    del self._by_scope[key]

    # --- called from the wrappers ------------------------------------------

    def note_spawn(
        self,
        pid: int,
        argv: tuple[str, ...] | None,
        how: str,
        depth: int,
        *,
        pin: bool = True,
    ) -> None:
        """Record a child just spawned; ``pin=False`` inside Popen._execute_child,
        whose wrapper pins it only if its Popen cannot follow it."""
        handle = processes.open_handle(pid) if pin else None
        start_time = None
        if pin and handle is None:
            identity = processes.identify(pid)
            if identity is None:
                return  # already reaped (SIGCHLD ignored): nothing to track
            start_time = identity.start_time
        exempt = self._exemption(argv)
        self.add(
            SpawnRecord(
                pid,
                start_time,
                argv,
                how,
                (),
                # An exempt child has no owner, so no scope ever judges it.
                None if exempt else self.spawn_owner(),
                exempt,
                handle,
                raw_stack=capture_stack(depth + 1, self.stack_stop),
            )
        )

    def _exemption(self, argv: tuple[str, ...] | None) -> str | None:
        if argv is None:
            return None
        command = "\0".join(argv)
        if any(helper in command for helper in _STDLIB_HELPERS):
            return "standard library helper"
        if self.ignore:
            command = shlex.join(argv)
            if any(pattern.search(command) for pattern in self.ignore):
                return "nozombies_ignore"
        return None

    def claim_popen(self, popen: subprocess.Popen[Any], pids: list[int]) -> None:
        """Hand the children spawned while ``popen`` started to their holder.

        They were recorded without a pidfd (two system calls, a tenth of the
        whole bookkeeping of a spawn): a Popen with subprocess's own finalizer
        either reaps its child (its ``returncode``) or, dropped unreaped, parks
        itself in ``subprocess._active`` until it does (and ``_wrap_popen_del``
        pins the child if that finalizer fails first). So the Popen's own child
        is pinned only if it is still unreaped when asked about. Anything else
        spawned meanwhile on this thread (a finalizer, a signal handler) is
        pinned now.
        """
        for pid in pids:
            record = self._records.get(pid)
            if record is None:
                continue
            if pid != popen.pid:
                record.pin()
            elif popen.returncode is not None:
                self.discard(record)  # reaped by Popen itself: exec failed
            else:
                record.how = "subprocess.Popen"
                record.holder = weakref.ref(popen)
                record.holder_parks = type(popen).__del__ is subprocess.Popen.__del__
                if not record.holder_parks:
                    record.pin()  # its own finalizer may drop it unreaped


def capture_stack(depth: int, stop: tuple[str, ...] = ()) -> tuple[RawFrame, ...]:
    """The calling stack, innermost first, without reading any source file.

    It ends at the first frame under a ``stop`` folder (the test runner's
    machinery, the same for every test) or after ``_MAX_STACK`` frames. Each
    frame is kept as its code and last instruction: ``frame.f_lineno`` scans
    the code's whole line table, which for subprocess's long functions cost
    more than the rest of a spawn's bookkeeping, and the line is only ever
    needed if the child leaks (``resolve_stack``).
    """
    frames: list[RawFrame] = []
    frame = sys._getframe(depth + 1)
    while frame is not None and len(frames) < _MAX_STACK:
        code = frame.f_code
        if stop and code.co_filename.startswith(stop):
            break
        if code.co_filename != __file__:  # our own wrappers are noise
            frames.append((code, frame.f_lasti))
        frame = frame.f_back  # type: ignore[assignment]
    return tuple(frames)


def resolve_stack(raw: tuple[RawFrame, ...]) -> tuple[Frame, ...]:
    """Line numbers for a captured stack, as ``frame.f_lineno`` gave them."""
    return tuple(
        Frame(code.co_filename, _line_of(code, lasti), code.co_name)
        for code, lasti in raw
    )


def _line_of(code: CodeType, lasti: int) -> int:
    for start, end, line in code.co_lines():
        if start <= lasti < end:
            return line if line is not None else code.co_firstlineno
    return code.co_firstlineno


def _no_phase(nodeid: str) -> str | None:
    return None


def parked_popen(pid: int) -> subprocess.Popen[Any] | None:
    """The dropped Popen of child ``pid`` that waits in ``subprocess._active``.

    CPython parks there a Popen dropped before it reaped its child, until a
    later Popen call polls it.
    """
    active = getattr(subprocess, "_active", None)
    if not active:
        return None  # nearly always: no Popen was dropped unreaped
    for popen in list(active):
        if isinstance(popen, subprocess.Popen) and popen.pid == pid:
            return popen
    return None


def _parked(pid: int) -> bool:
    return parked_popen(pid) is not None


def _as_argv(args: Any) -> tuple[str, ...] | None:
    if args is None:
        return None
    if not isinstance(args, (list, tuple)) and isinstance(
        args, (str, bytes, os.PathLike)
    ):
        args = [args]
    try:
        argv = tuple(args)
        for arg in argv:
            if type(arg) is not str:  # bytes or a path: decode them all
                return tuple(os.fsdecode(a) for a in argv)
    except TypeError:
        return (repr(args),)
    return argv


# --- the wrappers ---------------------------------------------------------------

#: ``pids``: while a thread runs Popen._execute_child, the children it spawns
#: (recorded unpinned, for the Popen wrapper to claim); else absent or None.
_in_popen = threading.local()

#: The registry the wrappers report to: the newest of ``_registries``.
_registry: SpawnRegistry | None = None
#: A session inside a session (pytester's in-process runs) stacks its own.
_registries: list[SpawnRegistry] = []
_originals: list[tuple[Any, str, Any]] = []


def install(registry: SpawnRegistry) -> None:
    """Wrap the spawning entry points so they report to ``registry``.

    A nested session (``pytester.runpytest_inprocess``) reuses the wrappers
    and stacks its registry; ``uninstall(registry)`` gives the outer session
    its own back.
    """
    global _registry
    if not _originals:
        _patch(os, "fork", _wrap_fork)
        if hasattr(os, "forkpty"):
            _patch(os, "forkpty", _wrap_forkpty)
        for name in ("posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                _patch(os, name, _wrap_posix_spawn)
        if _posixsubprocess is not None:
            _patch(_posixsubprocess, "fork_exec", _wrap_fork_exec)
        if getattr(subprocess, "_fork_exec", None) is not None:
            # Python 3.11+ binds fork_exec into subprocess at import time.
            _patch(subprocess, "_fork_exec", _wrap_fork_exec)
        _patch(subprocess.Popen, "_execute_child", _wrap_execute_child)
        _patch(subprocess.Popen, "__del__", _wrap_popen_del)
    _registries.append(registry)
    _registry = registry
    _register_existing_children(registry)


def uninstall(registry: SpawnRegistry | None = None) -> None:
    """Stop reporting to ``registry`` (the newest by default) and release its
    records; once no registry is left, put every original back."""
    global _registry
    if registry is None and _registries:
        registry = _registries[-1]
    if registry is not None and registry in _registries:
        _registries.remove(registry)
        registry.close()
    _registry = _registries[-1] if _registries else None
    if not _registries:
        while _originals:
            owner, name, original = _originals.pop()
            setattr(owner, name, original)


def _patch(owner: Any, name: str, make: Callable[[Any, str], Any]) -> None:
    original = getattr(owner, name)
    _originals.append((owner, name, original))
    setattr(owner, name, make(original, name))


def _register_existing_children(registry: SpawnRegistry) -> None:
    # Children from before the plugin started (a conftest's server, say) belong
    # to no test: record them so their death is never blamed on one.
    for pid in processes.child_pids():
        identity = processes.identify(pid)
        if identity is not None:
            argv = processes.read_cmdline(pid)
            registry.add(
                SpawnRecord(pid, identity.start_time, argv, "unknown", (), None)
            )


def _wrap_fork(original: Callable[[], int], name: str) -> Callable[[], int]:
    @functools.wraps(original)
    def fork() -> int:
        pid = original()
        if pid and _registry is not None:
            _registry.note_spawn(pid, None, "os.fork", 1)
        return pid

    return fork


def _wrap_forkpty(
    original: Callable[[], tuple[int, int]], name: str
) -> Callable[[], tuple[int, int]]:
    @functools.wraps(original)
    def forkpty() -> tuple[int, int]:
        pid, fd = original()
        if pid and _registry is not None:
            _registry.note_spawn(pid, None, "os.forkpty", 1)
        return pid, fd

    return forkpty


def _wrap_posix_spawn(original: Callable[..., int], name: str) -> Callable[..., int]:
    @functools.wraps(original)
    def posix_spawn(path: Any, argv: Any, *args: Any, **kwargs: Any) -> int:
        pid = original(path, argv, *args, **kwargs)
        if _registry is not None:
            _note_low_level_spawn(_registry, pid, _as_argv(argv), f"os.{name}")
        return pid

    return posix_spawn


def _wrap_fork_exec(original: Callable[..., int], name: str) -> Callable[..., int]:
    # subprocess and multiprocessing's spawn start method both end here.
    @functools.wraps(original)
    def fork_exec(args: Any, *rest: Any, **kwargs: Any) -> int:
        pid = original(args, *rest, **kwargs)
        if _registry is not None:
            _note_low_level_spawn(_registry, pid, _as_argv(args), "fork_exec")
        return pid

    return fork_exec


def _note_low_level_spawn(
    registry: SpawnRegistry, pid: int, argv: tuple[str, ...] | None, how: str
) -> None:
    # Called by a wrapper called by the spawning code: depth 2 is that code.
    window: list[int] | None = getattr(_in_popen, "pids", None)
    registry.note_spawn(pid, argv, how, 2, pin=window is None)
    if window is not None:
        window.append(pid)


def _wrap_execute_child(
    original: Callable[..., None], name: str
) -> Callable[..., None]:
    @functools.wraps(original)
    def _execute_child(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        # The children spawned on this thread meanwhile, for the Popen to
        # claim, also when it raises after the fork. A Popen started inside
        # this one (from a finalizer, say) keeps its own list.
        outer = getattr(_in_popen, "pids", None)
        pids: list[int] = []
        _in_popen.pids = pids
        try:
            original(self, *args, **kwargs)
        finally:
            _in_popen.pids = outer
            if _registry is not None and pids:
                _registry.claim_popen(self, pids)

    return _execute_child


def _wrap_popen_del(original: Callable[..., None], name: str) -> Callable[..., None]:
    @functools.wraps(original)
    def __del__(self: subprocess.Popen[Any]) -> None:
        try:
            original(self)
        finally:
            # Popen.__del__ parks a Popen whose child is unreaped in
            # subprocess._active, unless it raised first (its ResourceWarning
            # turned into an error): then nothing follows that child any more
            # but its record, which must pin it now.
            if (
                _registry is not None
                and getattr(self, "_child_created", False)
                and self.returncode is None
                and not _parked(self.pid)
            ):
                record = _registry.by_pid(self.pid)
                if record is not None:
                    record.pin()

    return __del__


def iter_user_frames(
    stack: tuple[Frame, ...], excluded: tuple[str, ...]
) -> Iterator[Frame]:
    """Frames of ``stack`` that are not under any of the ``excluded`` folders."""
    for frame in stack:
        name = frame.filename
        if name.startswith("<doctest "):
            yield frame  # a doctest example: the user's code, with no file
        elif name.startswith("<") or name.startswith(excluded):
            continue
        else:
            yield frame
