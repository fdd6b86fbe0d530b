"""Record each child at the moment it is spawned.

A zombie's command line can no longer be read and the code that started it
has long returned by the time anyone notices it, so both are taken when the
child is created: the Python entry points that create children are wrapped,
and each wrapper notes the new child's identity (pid and start time), its
argv, the calling stack, the object that holds it (a ``Popen`` or a
``multiprocessing.Process``) and the owner the tracker names, before handing
back exactly what the original returned.

The wrappers may run in a forked child, in a thread, or in a signal handler
that interrupted another spawn: they take no lock and hold nothing, and each
shared update is one dict or list operation, which the interpreter does
whole. ``os.kill`` and ``os.killpg`` are wrapped too: a child that was asked
to die is worth the grace period (see tracker.py).

No pytest here.

PYTEST_DONT_REWRITE
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
from collections.abc import Callable, Iterator
from types import CodeType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from . import processes

if TYPE_CHECKING:
    from .tracker import Owner

try:
    import _posixsubprocess  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # Windows: nothing spawns zombies, nothing is wrapped
    _posixsubprocess = None  # type: ignore[assignment]

#: Long-lived helpers the standard library starts on purpose; never leaks.
_STDLIB_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
_MAX_STACK = 64

#: A frame as captured at spawn time: its code and its last instruction.
RawFrame = tuple[CodeType, int]


class Frame(NamedTuple):
    filename: str
    lineno: int
    function: str


class Spawn:
    """One child this process spawned, as it was when it was spawned."""

    __slots__ = (
        "argv",
        "exec_argv",
        "exempt",
        "frames",
        "holder",
        "how",
        "judged",
        "owner",
        "pid",
        "signalled",
        "start_time",
        "thread",
        "thread_ref",
        "via",
    )

    def __init__(
        self,
        pid: int,
        start_time: float,
        argv: tuple[str, ...] | None,
        how: str,
        owner: Owner | None,
        *,
        frames: tuple[RawFrame, ...] = (),
        holder: object | None = None,
        thread: threading.Thread | None = None,
        exempt: str | None = None,
    ) -> None:
        self.pid = pid
        #: With the pid, names this very process: a later child may get the pid.
        self.start_time = start_time
        self.argv = argv
        #: What a forked child exec'd, read while it was alive.
        self.exec_argv: tuple[str, ...] | None = None
        self.how = how
        self.owner = owner
        #: The owner of a nested pytest session that spawned it (``owner`` is
        #: then the outer test that ran that session).
        self.via: Owner | None = None
        self.frames = frames
        self.holder = weakref.ref(holder) if holder is not None else None
        #: The thread that spawned it, if not the one running the tests.
        self.thread = thread.name if thread is not None else None
        self.thread_ref = weakref.ref(thread) if thread is not None else None
        #: Why it is never a leak: a standard library helper, nozombies_ignore.
        self.exempt = exempt
        #: This process sent it a signal (``os.kill``): it is expected to exit.
        self.signalled = False
        #: Set once its scope has been judged: "left running", "handed" (to a
        #: thread that waits for it or spawned it) or "reported".
        self.judged: str | None = None

    def __repr__(self) -> str:
        return f"<Spawn pid={self.pid} {self.how} owner={self.owner} {self.judged}>"

    # --- questions about the child -------------------------------------------

    def status(self) -> processes.ChildStatus:
        """``running``, ``zombie`` or ``gone``: this child, never a later
        process that got its pid."""
        holder = self.live_holder()
        if isinstance(holder, subprocess.Popen) and holder.returncode is not None:
            return "gone"  # its Popen reaped it: no system call needed
        status = processes.child_status(self.pid)
        if status != "gone" and processes.start_time(self.pid) != self.start_time:
            return "gone"  # reaped behind our back, and its pid reused since
        return status

    def spawning_thread_alive(self) -> bool:
        """Whether it was spawned by another thread that still runs."""
        thread = self.thread_ref() if self.thread_ref is not None else None
        return thread is not None and thread.is_alive()

    def live_holder(self) -> object | None:
        """The live ``Popen`` or ``multiprocessing.Process`` holding this child."""
        holder = self.holder() if self.holder is not None else None
        if holder is None:
            holder = parked_popen(self.pid)
        if holder is None or _holder_pid(holder) != self.pid:
            return None
        return holder

    def waited_for(self, targets: processes.WaitTargets) -> bool:
        """Whether another thread is collecting this child right now: its
        ``Popen`` is inside ``wait()``, or a thread is blocked in a wait
        system call that names it (or any child, or its group)."""
        holder = self.live_holder()
        lock = getattr(holder, "_waitpid_lock", None)
        if lock is not None and lock.locked():
            return True
        if not (targets.pids or targets.groups or targets.any_child):
            return False
        stat = processes.read_stat(self.pid) if targets.groups else None
        return targets.covers(self.pid, stat.group if stat else None)

    def reap_through_holder(self) -> processes.ExitStatus | None:
        """Reap a zombie through the object that holds it, so its
        ``returncode`` / ``exitcode`` stays true; never behind its back."""
        holder = self.live_holder()
        code: int | None = None
        if isinstance(holder, subprocess.Popen):
            code = holder.poll()  # gives up if another thread is in wait()
        elif holder is not None:
            code = getattr(holder, "exitcode", None)
        return processes.ExitStatus.from_returncode(code) if code is not None else None

    def note_exec(self) -> None:
        """Read what a forked child is running now, while it is alive to read."""
        if self.argv is None and self.exec_argv is None:
            argv = processes.read_cmdline(self.pid)
            if argv is not None and argv != _own_cmdline():
                self.exec_argv = argv

    # --- what the report needs -----------------------------------------------

    def command(self, name: str | None) -> str:
        """The child's command line, captured while it was alive; for a forked
        child, what it exec'd, or the name the kernel keeps (``name``)."""
        if self.argv is not None:
            return shlex.join(self.argv)
        if self.exec_argv is not None:
            return f"{shlex.join(self.exec_argv)} (forked by {self.how})"
        return f"[{name or '?'}] (forked by {self.how})"

    def stack(self) -> tuple[Frame, ...]:
        """The spawning stack, innermost first, with line numbers."""
        return tuple(
            Frame(code.co_filename, _line_of(code, lasti), code.co_name)
            for code, lasti in self.frames
        )


def _holder_pid(holder: object) -> int | None:
    if isinstance(holder, subprocess.Popen):
        return holder.pid
    popen = getattr(holder, "_popen", None)  # multiprocessing.Process
    return getattr(popen, "pid", None)


def _line_of(code: CodeType, lasti: int) -> int:
    # What frame.f_lineno gives, worked out only when a report needs it:
    # f_lineno scans the whole line table, which costs more than the rest of
    # a spawn's bookkeeping for subprocess's long functions.
    for start, end, line in code.co_lines():
        if start <= lasti < end:
            return line if line is not None else code.co_firstlineno
    return code.co_firstlineno


@functools.cache
def _own_cmdline() -> tuple[str, ...] | None:
    return processes.read_cmdline(os.getpid())


def parked_popen(pid: int) -> subprocess.Popen[Any] | None:
    """The dropped ``Popen`` of child ``pid`` that CPython parked in
    ``subprocess._active`` because its child still ran when it was freed."""
    for popen in list(getattr(subprocess, "_active", None) or ()):
        if isinstance(popen, subprocess.Popen) and popen.pid == pid:
            return popen
    return None


def exemption(
    argv: tuple[str, ...] | None, ignore: tuple[re.Pattern[str], ...]
) -> str | None:
    """Why a child with this command line is never a leak, if it is not."""
    if argv is None:
        return None
    joined = "\0".join(argv)
    if any(helper in joined for helper in _STDLIB_HELPERS):
        return "standard library helper"
    if ignore:
        command = shlex.join(argv)
        if any(pattern.search(command) for pattern in ignore):
            return "nozombies_ignore"
    return None


# --- where records go -------------------------------------------------------


class Recorder(Protocol):
    """What the wrappers report to: the tracker of the innermost session."""

    #: The thread that runs the tests; spawns from others are named.
    thread_id: int
    #: Folders where a spawn's stack stops (the test runner's own frames).
    stack_stop: tuple[str, ...]

    def record(self, spawn: Spawn) -> None: ...

    def current_owner(self) -> Owner | None: ...

    def exemption(self, argv: tuple[str, ...] | None) -> str | None: ...

    def note_signal(self, pid: int) -> None: ...


#: The recorders of the sessions now running, innermost last (pytester runs
#: a session inside a session).
_recorders: list[Recorder] = []
_originals: list[tuple[Any, str, Any]] = []
#: While a thread runs ``Popen._execute_child``: that Popen, the holder of
#: the child that subprocess's own code spawns meanwhile.
_popen_starting = threading.local()
_SUBPROCESS = subprocess.__file__


def install(recorder: Recorder) -> None:
    """Wrap the spawning entry points (once) and report to ``recorder``."""
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
        _patch(os, "kill", _wrap_kill)
        if hasattr(os, "killpg"):
            _patch(os, "killpg", _wrap_killpg)
    _recorders.append(recorder)


def uninstall(recorder: Recorder) -> Recorder | None:
    """Stop reporting to ``recorder``; return the recorder now reported to
    (the outer session's), and put the originals back when there is none."""
    if recorder in _recorders:
        _recorders.remove(recorder)
    if not _recorders:
        while _originals:
            owner, name, original = _originals.pop()
            setattr(owner, name, original)
        return None
    return _recorders[-1]


def _patch(owner: Any, name: str, make: Callable[[Any, str], Any]) -> None:
    original = getattr(owner, name)
    _originals.append((owner, name, original))
    setattr(owner, name, make(original, name))


def _note_spawn(pid: int, argv: tuple[str, ...] | None, how: str) -> None:
    # Called by a wrapper, itself called by the spawning code; runs in the
    # parent only. Any error here would break the caller's spawn: the child
    # exists by now, so a failure to record it must never surface.
    if not _recorders or pid <= 0:
        return
    recorder = _recorders[-1]
    try:
        started = processes.start_time(pid)
        if started is None:
            return  # already reaped (SIGCHLD ignored, a handler): nothing to follow
        frames, process = _capture_stack(recorder.stack_stop)
        holder: object | None = getattr(_popen_starting, "popen", None)
        if holder is not None and frames and frames[0][0].co_filename != _SUBPROCESS:
            holder = None  # spawned meanwhile by other code (an env mapping's)
        if holder is not None:
            how = "subprocess.Popen"
        elif process is not None:
            holder = process
            how = f"multiprocessing.Process(name={getattr(process, 'name', '?')!r})"
        thread = None
        if threading.get_ident() != recorder.thread_id:
            thread = threading.current_thread()
        recorder.record(
            Spawn(
                pid,
                started,
                argv,
                how,
                recorder.current_owner(),
                frames=frames,
                holder=holder,
                thread=thread,
                exempt=recorder.exemption(argv),
            )
        )
    except Exception:  # pragma: no cover - a bug of ours must not break a spawn
        pass


def _capture_stack(stop: tuple[str, ...]) -> tuple[tuple[RawFrame, ...], object | None]:
    """The calling stack, innermost first, and the ``multiprocessing.Process``
    being started, if one is; no source file is read."""
    frames: list[RawFrame] = []
    process = None
    mp = sys.modules.get("multiprocessing.process")
    start_code = mp.BaseProcess.start.__code__ if mp is not None else None
    frame = sys._getframe(2)
    while frame is not None and len(frames) < _MAX_STACK:
        code = frame.f_code
        if stop and code.co_filename.startswith(stop):
            break
        if code is start_code:
            process = frame.f_locals.get("self")
        if code.co_filename != __file__:  # our own wrappers are noise
            frames.append((code, frame.f_lasti))
        frame = frame.f_back  # type: ignore[assignment]
    return tuple(frames), process


def iter_user_frames(
    stack: tuple[Frame, ...], excluded: tuple[str, ...]
) -> Iterator[Frame]:
    """Frames of ``stack`` that are not under any of the ``excluded`` folders."""
    for frame in stack:
        name = frame.filename
        if name.startswith("<doctest "):
            yield frame  # a doctest example: the user's code, with no file
        elif not name.startswith("<") and not name.startswith(excluded):
            yield frame


def _as_argv(args: Any) -> tuple[str, ...] | None:
    if args is None:
        return None
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    try:
        return tuple(a if type(a) is str else os.fsdecode(a) for a in args)
    except TypeError:
        return (repr(args),)


# --- the wrappers -----------------------------------------------------------


def _wrap_fork(original: Callable[[], int], name: str) -> Callable[[], int]:
    @functools.wraps(original)
    def fork() -> int:
        pid = original()
        if pid:
            _note_spawn(pid, None, "os.fork")
        return pid

    return fork


def _wrap_forkpty(
    original: Callable[[], tuple[int, int]], name: str
) -> Callable[[], tuple[int, int]]:
    @functools.wraps(original)
    def forkpty() -> tuple[int, int]:
        pid, fd = original()
        if pid:
            _note_spawn(pid, None, "os.forkpty")
        return pid, fd

    return forkpty


def _wrap_posix_spawn(original: Callable[..., int], name: str) -> Callable[..., int]:
    @functools.wraps(original)
    def posix_spawn(path: Any, argv: Any, *args: Any, **kwargs: Any) -> int:
        pid = original(path, argv, *args, **kwargs)
        _note_spawn(pid, _as_argv(argv), f"os.{name}")
        return pid

    return posix_spawn


def _wrap_fork_exec(original: Callable[..., int], name: str) -> Callable[..., int]:
    # subprocess and multiprocessing's spawn start method both end here.
    @functools.wraps(original)
    def fork_exec(args: Any, *rest: Any, **kwargs: Any) -> int:
        pid = original(args, *rest, **kwargs)
        _note_spawn(pid, _as_argv(args), "fork_exec")
        return pid

    return fork_exec


def _wrap_execute_child(
    original: Callable[..., None], name: str
) -> Callable[..., None]:
    @functools.wraps(original)
    def _execute_child(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        # The Popen is the holder of the child its fork_exec spawns on this
        # thread; one started meanwhile (a finalizer, a signal handler) sets
        # its own and puts this one back.
        outer = getattr(_popen_starting, "popen", None)
        _popen_starting.popen = self
        try:
            original(self, *args, **kwargs)
        finally:
            _popen_starting.popen = outer

    return _execute_child


def _wrap_kill(
    original: Callable[[int, int], None], name: str
) -> Callable[[int, int], None]:
    # Popen.send_signal/kill/terminate and multiprocessing's end here too.
    @functools.wraps(original)
    def kill(pid: int, sig: int) -> None:
        if _recorders:
            _recorders[-1].note_signal(pid)
        original(pid, sig)

    return kill


def _wrap_killpg(
    original: Callable[[int, int], None], name: str
) -> Callable[[int, int], None]:
    @functools.wraps(original)
    def killpg(pgid: int, sig: int) -> None:
        if _recorders:
            _recorders[-1].note_signal(-pgid if pgid > 0 else 0)
        original(pgid, sig)

    return killpg
