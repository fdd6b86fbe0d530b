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
import multiprocessing.process
import os
import re
import shlex
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import processes

try:
    import _posixsubprocess  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # Windows: nothing spawns zombies, nothing is installed
    _posixsubprocess = None  # type: ignore[assignment]

# Long-lived helpers the standard library starts on purpose; never leaks.
_STDLIB_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
_MAX_STACK = 64


@dataclass(frozen=True)
class Owner:
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
            return ("test", self.nodeid)
        return ("fixture", self.fixture, self.serial)

    def describe(self) -> str:
        if self.fixture is None:
            return f"{self.nodeid} ({self.phase})"
        return (
            f"fixture {self.fixture!r} ({self.scope} scope, {self.phase} of "
            f"{self.nodeid})"
        )


@dataclass(frozen=True)
class Frame:
    filename: str
    lineno: int
    function: str


@dataclass
class SpawnRecord:
    """One child this process spawned through Python and has not seen reaped."""

    identity: processes.ChildIdentity
    argv: tuple[str, ...] | None
    how: str
    stack: tuple[Frame, ...]
    owner: Owner | None
    holder: weakref.ref[Any] | None = None
    #: Why this child is never a leak: a stdlib helper, or nozombies_ignore.
    exempt: str | None = None
    #: Set once the owner's scope ended with the child still running.
    left_running: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.identity.pid


class SpawnRegistry:
    """Every child spawned through Python, by pid, grouped by owner scope."""

    def __init__(self) -> None:
        #: Set by the caller around each test and fixture; read at spawn time.
        self.owner: Owner | None = None
        #: Command lines matching one of these are never leaks.
        self.ignore: tuple[re.Pattern[str], ...] = ()
        self._records: dict[int, SpawnRecord] = {}
        self._by_scope: dict[Hashable, dict[int, SpawnRecord]] = {}
        self._lock = threading.Lock()

    def get(self, identity: processes.ChildIdentity) -> SpawnRecord | None:
        record = self._records.get(identity.pid)
        if record is None or record.identity != identity:
            return None
        return record

    def by_pid(self, pid: int) -> SpawnRecord | None:
        return self._records.get(pid)

    def in_scope(self, key: Hashable) -> list[SpawnRecord]:
        return list(self._by_scope.get(key, {}).values())

    def all_records(self) -> list[SpawnRecord]:
        with self._lock:
            return list(self._records.values())

    def add(self, record: SpawnRecord) -> None:
        with self._lock:
            # A pid is only reused after its earlier child was reaped, so the
            # new record simply replaces the stale one.
            self._discard_locked(record.pid)
            self._records[record.pid] = record
            if record.owner is not None:
                scope = self._by_scope.setdefault(record.owner.scope_key, {})
                scope[record.pid] = record

    def discard(self, record: SpawnRecord) -> None:
        with self._lock:
            if self._records.get(record.pid) is record:
                self._discard_locked(record.pid)

    def leave_scope(self, key: Hashable) -> None:
        """Forget the grouping of a scope that ended; its records stay by pid."""
        with self._lock:
            self._by_scope.pop(key, None)

    def _discard_locked(self, pid: int) -> None:
        old = self._records.pop(pid, None)
        if old is not None and old.owner is not None:
            scope = self._by_scope.get(old.owner.scope_key)
            if scope is not None:
                scope.pop(pid, None)
                if not scope:
                    del self._by_scope[old.owner.scope_key]

    # --- called from the wrappers ------------------------------------------

    def note_spawn(
        self, pid: int, argv: tuple[str, ...] | None, how: str, depth: int
    ) -> None:
        identity = processes.identify(pid)
        if identity is None:
            # Already reaped by someone else (SIGCHLD ignored): nothing to track.
            return
        exempt = self._exemption(argv)
        self.add(
            SpawnRecord(
                identity=identity,
                argv=argv,
                how=how,
                stack=capture_stack(depth + 1),
                # An exempt child has no owner, so no scope ever judges it.
                owner=None if exempt else self.owner,
                exempt=exempt,
            )
        )

    def _exemption(self, argv: tuple[str, ...] | None) -> str | None:
        if argv is None:
            return None
        if any(marker in arg for arg in argv for marker in _STDLIB_HELPERS):
            return "standard library helper"
        if self.ignore:
            command = shlex.join(argv)
            if any(pattern.search(command) for pattern in self.ignore):
                return "nozombies_ignore"
        return None

    def note_holder(self, pid: int, how: str, holder: object) -> None:
        record = self._records.get(pid)
        if record is not None:
            record.how = how
            record.holder = weakref.ref(holder)


def capture_stack(depth: int) -> tuple[Frame, ...]:
    """The calling stack, innermost first, without reading any source file."""
    frames: list[Frame] = []
    frame = sys._getframe(depth + 1)
    while frame is not None and len(frames) < _MAX_STACK:
        code = frame.f_code
        frames.append(Frame(code.co_filename, frame.f_lineno or 0, code.co_name))
        frame = frame.f_back  # type: ignore[assignment]
    return tuple(frames)


def _as_argv(args: Any) -> tuple[str, ...] | None:
    if args is None:
        return None
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    try:
        return tuple(os.fsdecode(a) for a in args)
    except TypeError:
        return (repr(args),)


# --- the wrappers ---------------------------------------------------------------

_registry: SpawnRegistry | None = None
_originals: list[tuple[Any, str, Any]] = []


def install(registry: SpawnRegistry) -> None:
    """Wrap the spawning entry points so they report to ``registry``."""
    global _registry
    if _originals:
        uninstall()
    _registry = registry
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
    _patch(multiprocessing.process.BaseProcess, "start", _wrap_process_start)
    _register_existing_children(registry)


def uninstall() -> None:
    """Put every original back, newest first."""
    global _registry
    while _originals:
        owner, name, original = _originals.pop()
        setattr(owner, name, original)
    _registry = None


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
            registry.add(
                SpawnRecord(identity, processes.read_cmdline(pid), "unknown", (), None)
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
            _registry.note_spawn(pid, _as_argv(argv), f"os.{name}", 1)
        return pid

    return posix_spawn


def _wrap_fork_exec(original: Callable[..., int], name: str) -> Callable[..., int]:
    # subprocess and multiprocessing's spawn start method both end here.
    @functools.wraps(original)
    def fork_exec(args: Any, *rest: Any, **kwargs: Any) -> int:
        pid = original(args, *rest, **kwargs)
        if _registry is not None:
            _registry.note_spawn(pid, _as_argv(args), "fork_exec", 1)
        return pid

    return fork_exec


def _wrap_execute_child(
    original: Callable[..., None], name: str
) -> Callable[..., None]:
    @functools.wraps(original)
    def _execute_child(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if _registry is None:
            return
        if _registry.by_pid(self.pid) is None:
            _registry.note_spawn(self.pid, _as_argv(self.args), "subprocess.Popen", 1)
        _registry.note_holder(self.pid, "subprocess.Popen", self)

    return _execute_child


def _wrap_process_start(
    original: Callable[[multiprocessing.process.BaseProcess], None], name: str
) -> Callable[[multiprocessing.process.BaseProcess], None]:
    @functools.wraps(original)
    def start(self: multiprocessing.process.BaseProcess) -> None:
        original(self)
        popen = getattr(self, "_popen", None)
        pid = getattr(popen, "pid", None)
        if _registry is not None and isinstance(pid, int):
            # Under forkserver the child is the forkserver's, not ours, and was
            # never recorded: note_holder then does nothing.
            _registry.note_holder(
                pid, f"multiprocessing.Process(name={self.name!r})", self
            )

    return start


def iter_user_frames(
    stack: tuple[Frame, ...], excluded: tuple[str, ...]
) -> Iterator[Frame]:
    """Frames of ``stack`` that are not under any of the ``excluded`` folders."""
    for frame in stack:
        name = frame.filename
        if name.startswith("<") or name.startswith(excluded):
            continue
        yield frame
