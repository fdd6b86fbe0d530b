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
import itertools
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
        "identity",
        "judged",
        "order",
        "owner",
        "pid",
        "signalled",
        "thread",
        "thread_ref",
        "via",
    )

    def __init__(
        self,
        pid: int,
        identity: processes.Identity,
        argv: tuple[str, ...] | None,
        how: str,
        owner: Owner | None,
        *,
        frames: tuple[RawFrame, ...] = (),
        order: int | None = None,
    ) -> None:
        self.pid = pid
        #: Where it comes in the order children were spawned (a fork is
        #: recorded later than it is spawned: see ``_unnoted``).
        self.order = next(_spawned) if order is None else order
        #: With the pid, names this very process: a later child may get the pid.
        self.identity = identity
        self.argv = argv
        #: What a forked child exec'd, read while it was alive.
        self.exec_argv: tuple[str, ...] | None = None
        self.how = how
        self.owner = owner
        #: The owner of a nested pytest session that spawned it (``owner`` is
        #: then the outer test that ran that session).
        self.via: Owner | None = None
        self.frames = frames
        #: The Popen or multiprocessing.Process holding it, held weakly.
        self.holder: weakref.ref[Any] | None = None
        #: The thread that spawned it, if not the one running the tests.
        self.thread: str | None = None
        self.thread_ref: weakref.ref[threading.Thread] | None = None
        #: Why it is never a leak: a standard library helper, nozombies_ignore.
        self.exempt: str | None = None
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
        if status != "gone" and processes.identify(self.pid) != self.identity:
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
            self.exec_argv = exec_argv(self.pid)

    # --- what the report needs -----------------------------------------------

    def command(self, name: str | None) -> str:
        """The child's command line, captured while it was alive; for a forked
        child, what it exec'd, or the name the kernel keeps (``name``)."""
        if self.argv is not None:
            return shlex.join(self.argv)
        made = self.how if self.how == "adopted orphan" else f"forked by {self.how}"
        if self.exec_argv is not None:
            return f"{shlex.join(self.exec_argv)} ({made})"
        return f"[{name or '?'}] ({made})"

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


def exec_argv(pid: int) -> tuple[str, ...] | None:
    """What process ``pid`` runs, unless it is a fork of this process that
    never exec'd (its command line is then this process's own)."""
    argv = processes.read_cmdline(pid)
    return None if argv == _own_cmdline() else argv


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

    #: What answers for a child spawned now.
    owner: Owner | None

    def record(self, spawn: Spawn) -> None: ...

    def knows(self, pid: int, identity: processes.Identity) -> bool:
        """Whether process ``pid`` with this identity is recorded already."""

    def exemption(self, argv: tuple[str, ...] | None) -> str | None: ...

    def note_signal(self, pid: int) -> None: ...

    def internal_error(self, exc: Exception) -> None: ...


#: Numbers the spawns in the order they happen.
_spawned = itertools.count()
#: The recorders of the sessions now running, innermost last (pytester runs
#: a session inside a session).
_recorders: list[Recorder] = []
_originals: list[tuple[Any, str, Any]] = []
#: The Popen each thread is starting (in ``Popen._execute_child``), by
#: thread id: the holder of the child spawned meanwhile. A plain dict, not a
#: threading.local: reading one of those after a fork cost 15 page faults.
_popens_starting: dict[int, subprocess.Popen[Any]] = {}
#: Only subprocess's own code spawns a starting Popen's child.
_SUBPROCESS = subprocess.__file__
#: Children os.fork / os.forkpty made whose pid is not noted yet. After a
#: fork every page of this process is copy-on-write, and each page Python
#: writes before the next fork costs a page fault (refcounts make reading an
#: object a write): noting a fork at the next spawn cost 62 faults per fork
#: and wait here, noting them in batches 35. A batch is noted at every
#: check, every kill and every ``_NOTE_EVERY`` forks (``note_forks``); a
#: pid reused meanwhile by a child recorded since is left to that child, so
#: it can only be mistaken for a child spawned outside Python.
_unnoted: list[tuple[Taken | None, int, str]] = []
_NOTE_EVERY = 256


def install(recorder: Recorder) -> Recorder | None:
    """Wrap the spawning entry points (once) and report to ``recorder``;
    return the recorder it stacks on (the outer session's), if any."""
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
    outer = _recorders[-1] if _recorders else None
    _recorders.append(recorder)
    return outer


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


class Holder(NamedTuple):
    """What a spawn on the plain path (a test's own thread, no Popen or
    Process starting) does not need. The code under test's objects are held
    weakly: a fork's child is noted later (``_unnoted``), and that must never
    keep a joined Process alive."""

    #: The Popen or multiprocessing.Process being started, and how it reads.
    holder: weakref.ref[Any] | None
    holder_how: str | None
    #: The spawning thread, if not the one running the tests.
    thread: str | None
    thread_ref: weakref.ref[threading.Thread] | None


#: What only the moment before a spawn can tell: the recorder, the owner,
#: the calling stack innermost first, the spawn's place in the order, and
#: the rest if there is any. A plain tuple: after a fork every object built
#: here costs page faults (``_unnoted``).
Taken = tuple["Recorder", "Owner | None", list[RawFrame], int, "Holder | None"]

#: ``multiprocessing.process.BaseProcess.start``'s code, once it is imported.
_mp_start: CodeType | None = None
_get_ident = threading.get_ident


def _take() -> Taken | None:
    """What only the moment before a spawn can tell; the record is made
    from it after the spawn, outside the spawning code's way. No source file
    is read: a frame is its code and its last instruction."""
    global _mp_start
    if not _recorders:
        return None
    recorder = _recorders[-1]
    try:
        if _mp_start is None and "multiprocessing.process" in sys.modules:
            process_class = sys.modules["multiprocessing.process"].BaseProcess
            _mp_start = process_class.start.__code__
        stop = recorder.stack_stop
        frames: list[RawFrame] = []
        process = None
        frame = sys._getframe(2)
        while frame is not None and len(frames) < _MAX_STACK:
            code = frame.f_code
            filename = code.co_filename
            if filename.startswith(stop):
                break  # the test runner's own frames
            if code is _mp_start:
                process = frame.f_locals.get("self")
            if filename != __file__:  # our own wrappers are noise
                frames.append((code, frame.f_lasti))
            frame = frame.f_back  # type: ignore[assignment]
        ident = _get_ident()
        popen = _popens_starting.get(ident) if _popens_starting else None
        order = next(_spawned)
        if popen is None and process is None and ident == recorder.thread_id:
            return recorder, recorder.owner, frames, order, None
        holder = _holder(recorder, popen, process, frames)
        return recorder, recorder.owner, frames, order, holder
    except RecursionError:
        return None  # the caller's stack is full (nested signal handlers): skip
    except Exception as exc:  # a bug of ours must never break the spawn
        recorder.internal_error(exc)
        return None


def _holder(
    recorder: Recorder,
    popen: subprocess.Popen[Any] | None,
    process: object | None,
    frames: list[RawFrame],
) -> Holder:
    if popen is not None and frames and frames[0][0].co_filename != _SUBPROCESS:
        popen = None  # spawned meanwhile by other code (an env mapping's)
    holder: weakref.ref[Any] | None = None
    how = None
    if popen is not None:
        holder, how = weakref.ref(popen), "subprocess.Popen"
    elif process is not None:
        name = getattr(process, "name", "?")
        holder, how = weakref.ref(process), f"multiprocessing.Process(name={name!r})"
    thread = threading.current_thread()
    if thread.ident == recorder.thread_id:
        return Holder(holder, how, None, None)
    return Holder(holder, how, thread.name, weakref.ref(thread))


def forget_forks() -> None:
    """Drop the forks not noted yet: in a forked copy of the session they are
    the original process's children, not this one's."""
    _unnoted.clear()


def note_forks() -> None:
    """Note the children os.fork / os.forkpty made since last time, in the
    order they were made."""
    if not _unnoted:
        return  # nearly every check: nothing was forked since the last one
    newest_first: list[tuple[Taken | None, int, str]] = []
    while _unnoted:
        try:
            newest_first.append(_unnoted.pop())  # one at a time, from any thread
        except IndexError:
            break
    # A pid can be reused only once its child is reaped: of two forks that
    # got the same pid, the older one's child is gone.
    latest: dict[int, tuple[Taken | None, str]] = {}
    for taken, pid, how in newest_first:
        latest.setdefault(pid, (taken, how))
    for pid, (taken, how) in reversed(latest.items()):
        _note(taken, pid, None, how, late=True)


def _note(
    taken: Taken | None,
    pid: int,
    argv: tuple[str, ...] | None,
    how: str,
    *,
    late: bool = False,
) -> None:
    """Record the child ``pid``, spawned by this process (``late``: a while
    ago, by a fork)."""
    if taken is None or pid <= 0:
        return
    recorder, owner, frames, order, extra = taken
    try:
        identity = processes.identify(pid)
        if identity is None:
            return  # already reaped (SIGCHLD ignored, a handler): nothing to follow
        if late and recorder.knows(pid, identity):
            return  # reaped, and its pid went to a child recorded since
        spawn = Spawn(
            pid, identity, argv, how, owner, frames=tuple(frames), order=order
        )
        if extra is not None:
            spawn.how = extra.holder_how or how
            spawn.holder = extra.holder
            spawn.thread = extra.thread
            spawn.thread_ref = extra.thread_ref
        spawn.exempt = recorder.exemption(argv)
        recorder.record(spawn)
    except RecursionError:
        pass  # the caller's stack is full (nested signal handlers): skip
    except Exception as exc:  # a bug of ours must never break the spawn
        recorder.internal_error(exc)


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
        taken = _take()
        pid = original()
        if taken is not None:
            # In the child too, as pid 0, never noted: freeing ``taken`` there
            # would write to every page it refers to, and each is copied.
            _unnoted.append((taken, pid, "os.fork"))
            if pid and len(_unnoted) >= _NOTE_EVERY:
                note_forks()
        return pid

    return fork


def _wrap_forkpty(
    original: Callable[[], tuple[int, int]], name: str
) -> Callable[[], tuple[int, int]]:
    @functools.wraps(original)
    def forkpty() -> tuple[int, int]:
        taken = _take()
        pid, fd = original()
        if taken is not None:
            # In the child too, as pid 0, never noted: freeing ``taken`` there
            # would write to every page it refers to, and each is copied.
            _unnoted.append((taken, pid, "os.forkpty"))
            if pid and len(_unnoted) >= _NOTE_EVERY:
                note_forks()
        return pid, fd

    return forkpty


def _wrap_posix_spawn(original: Callable[..., int], name: str) -> Callable[..., int]:
    @functools.wraps(original)
    def posix_spawn(path: Any, argv: Any, *args: Any, **kwargs: Any) -> int:
        taken = _take()
        pid = original(path, argv, *args, **kwargs)
        _note(taken, pid, _as_argv(argv), f"os.{name}")
        return pid

    return posix_spawn


def _wrap_fork_exec(original: Callable[..., int], name: str) -> Callable[..., int]:
    # subprocess and multiprocessing's spawn start method both end here.
    @functools.wraps(original)
    def fork_exec(args: Any, *rest: Any, **kwargs: Any) -> int:
        taken = _take()
        pid = original(args, *rest, **kwargs)
        _note(taken, pid, _as_argv(args), "fork_exec")
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
        ident = threading.get_ident()
        outer = _popens_starting.get(ident)
        _popens_starting[ident] = self
        try:
            original(self, *args, **kwargs)
        finally:
            if outer is None:
                _popens_starting.pop(ident, None)
            else:
                _popens_starting[ident] = outer

    return _execute_child


def _wrap_kill(
    original: Callable[[int, int], None], name: str
) -> Callable[[int, int], None]:
    # Popen.send_signal/kill/terminate and multiprocessing's end here too.
    @functools.wraps(original)
    def kill(pid: int, sig: int) -> None:
        # Signal 0 only asks whether pid exists; a pid of the wrong type is
        # the original's to refuse, with its own message.
        if _recorders and sig and type(pid) is int:
            _recorders[-1].note_signal(pid)
        original(pid, sig)

    return kill


def _wrap_killpg(
    original: Callable[[int, int], None], name: str
) -> Callable[[int, int], None]:
    @functools.wraps(original)
    def killpg(pgid: int, sig: int) -> None:
        if _recorders and sig and type(pgid) is int:
            _recorders[-1].note_signal(-pgid if pgid > 0 else 0)
        original(pgid, sig)

    return killpg
