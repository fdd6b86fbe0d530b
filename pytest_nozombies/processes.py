"""What the operating system says about this process's children.

This layer imports nothing from pytest: it answers questions about real
processes (which children exist, which are zombies, how one ended) and can be
tested and reused on its own.

Every question is answered without reaping: ``os.waitid(..., WNOWAIT)`` reads a
zombie's exit status and leaves it in place, so code under test that still
intends to wait for its child gets the status it expects.

Linux reads ``/proc/self/task/*/children``, which lists only our own children,
so its cost does not depend on how many processes the machine runs. Other
POSIX systems fall back to psutil, which scans every process.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Iterable
from typing import Literal, NamedTuple

#: Platforms where a child can become a zombie at all.
SUPPORTED = os.name == "posix"

_HAS_WAITID = hasattr(os, "waitid")
_HAS_PIDFD = hasattr(os, "pidfd_open") and hasattr(select, "poll")
# "self", not the pid at import: a forked copy (pytest-forked) lists its own.
_PROC_TASKS = "/proc/self/task"


def _proc_children_available() -> bool:
    # CONFIG_PROC_CHILDREN is off on some kernels; then only psutil can tell.
    try:
        return os.path.exists(f"/proc/self/task/{os.getpid()}/children")
    except OSError:  # pragma: no cover - /proc unreadable
        return False


USES_PROC = sys.platform.startswith("linux") and _proc_children_available()

ChildStatus = Literal["running", "zombie", "gone"]


# NamedTuples rather than dataclasses: the plugin is imported by every pytest
# run, and a dataclass costs several times more to define.


class ChildIdentity(NamedTuple):
    """A child as the kernel knows it: a pid is only unique with its start time."""

    pid: int
    start_time: float


class ChildState(NamedTuple):
    """One reading of a child: who it is, whether it has exited, its name."""

    identity: ChildIdentity
    zombie: bool
    name: str
    parent: int


class ExitStatus(NamedTuple):
    """How a child ended: an exit code, or the signal that killed it."""

    code: int | None = None
    signal: int | None = None
    core_dumped: bool = False

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            dumped = ", core dumped" if self.core_dumped else ""
            return f"killed by {name} ({self.signal}){dumped}"
        return f"exited with code {self.code}"

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        """Decode a status word from ``os.waitpid``."""
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status), core_dumped=os.WCOREDUMP(status))
        return cls(code=os.WEXITSTATUS(status))


# --- Linux /proc readers -----------------------------------------------------


def _read_stat(pid: int) -> tuple[str, str, int, float] | None:
    """Return ``(state, name, parent pid, start_time)`` from ``/proc/PID/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The name sits in parentheses and may itself contain ") ", so split on the
    # last one.
    head, _, tail = raw.rpartition(b")")
    name = head.partition(b"(")[2].decode(errors="replace")
    fields = tail.split()
    if len(fields) < 20:  # pragma: no cover - truncated read
        return None
    return fields[0].decode(), name, int(fields[1]), float(fields[19])


def _linux_child_pids() -> list[int]:
    pids: list[int] = []
    # A child is listed under the thread that created it, so read every
    # thread's file, not only the main thread's. An unreadable task list is
    # an error for the caller to report, never an empty answer.
    for tid in os.listdir(_PROC_TASKS):
        try:
            with open(f"{_PROC_TASKS}/{tid}/children", "rb") as f:
                pids.extend(int(p) for p in f.read().split())
        except OSError:  # the thread ended while we were listing
            continue
    return pids


# --- psutil fallback ------------------------------------------------------------


def _psutil_child_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=False)]


def _psutil_state(pid: int) -> ChildState | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return ChildState(
                ChildIdentity(pid, proc.create_time()),
                proc.status() == psutil.STATUS_ZOMBIE,
                proc.name(),
                proc.ppid(),
            )
    except (psutil.Error, OSError):
        return None


# --- public API -----------------------------------------------------------------


def child_pids() -> list[int]:
    """Pids of this process's direct children, alive or zombie."""
    if USES_PROC:
        return _linux_child_pids()
    return _psutil_child_pids()


def read_child(pid: int) -> ChildState | None:
    """Read one child's identity and state; ``None`` if it no longer exists."""
    if USES_PROC:
        stat = _read_stat(pid)
        if stat is None:
            return None
        state, name, parent, start = stat
        return ChildState(ChildIdentity(pid, start), state in ("Z", "X"), name, parent)
    return _psutil_state(pid)


def identify(pid: int) -> ChildIdentity | None:
    """Identity (pid and start time) of a live or zombie process."""
    state = read_child(pid)
    return None if state is None else state.identity


def read_cmdline(pid: int) -> tuple[str, ...] | None:
    """Command line of a live process; a zombie's is empty, so ``None``."""
    if USES_PROC:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        parts = raw.split(b"\0")
        if parts and parts[-1] == b"":
            parts.pop()
        return tuple(p.decode(errors="replace") for p in parts) or None
    import psutil

    try:
        return tuple(psutil.Process(pid).cmdline()) or None
    except (psutil.Error, OSError):
        return None


def children_now() -> Literal["none", "running", "exited"]:
    """One non-reaping ``waitid``, whatever the load: does this process have no
    children at all, only running ones, or at least one that has exited?

    Where ``os.waitid`` is missing (macOS before Python 3.13) this cannot be
    known cheaply, so it answers ``exited`` and the caller scans.
    """
    if not _HAS_WAITID:
        return "exited"
    try:
        found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # no children at all, or SIGCHLD ignored
        return "none"
    return "running" if found is None else "exited"


def any_child_exited() -> bool:
    """Whether some child is a zombie: one system call (see ``children_now``)."""
    return children_now() == "exited"


def zombie_children() -> list[ChildState]:
    """Every child that has exited and not been reaped, oldest pid first."""
    if not any_child_exited():
        return []
    states = (read_child(pid) for pid in child_pids())
    return sorted(
        (s for s in states if s is not None and s.zombie),
        key=lambda s: s.identity,
    )


def snapshot_zombies() -> frozenset[ChildIdentity]:
    """Identities of the current zombie children (usually none, for one call)."""
    return frozenset(s.identity for s in zombie_children())


def child_status(pid: int) -> ChildStatus:
    """``running``, ``zombie`` or ``gone`` (reaped, or never ours), non-reaping."""
    if _HAS_WAITID:
        try:
            result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return "gone"
        return "running" if result is None else "zombie"
    state = _psutil_state(pid)  # pragma: no cover - macOS before 3.13
    if state is None:  # pragma: no cover
        return "gone"
    return "zombie" if state.zombie else "running"  # pragma: no cover


# --- handles: a child pinned down exactly, whatever becomes of its pid --------


_HAS_PIDFD_WAIT = _HAS_PIDFD and hasattr(os, "P_PIDFD") and _HAS_WAITID


def open_handle(pid: int) -> int | None:
    """A pidfd for child ``pid``: it names that very process, never a later
    one that reuses the pid. ``None`` where pidfds do not exist (or the child
    is already gone); then callers identify children by start time instead.
    """
    if not _HAS_PIDFD_WAIT:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def handle_status(handle: int) -> ChildStatus:
    """``running``, ``zombie`` or ``gone`` for the child behind ``handle``."""
    try:
        result = os.waitid(os.P_PIDFD, handle, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return "gone"
    return "running" if result is None else "zombie"


def close_handle(handle: int) -> None:
    # Not contextlib.suppress: this runs once per spawned child, and the
    # context manager costs three Python calls.
    try:  # noqa: SIM105
        os.close(handle)
    except OSError:  # already closed
        pass


def exit_status(pid: int) -> ExitStatus | None:
    """How a zombie child ended, read without reaping it.

    ``None`` if it is not a zombie child or the platform cannot tell without
    reaping (macOS before Python 3.13).
    """
    if not _HAS_WAITID:  # pragma: no cover
        return None
    try:
        result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if result is None:
        return None
    if result.si_code == os.CLD_EXITED:
        return ExitStatus(code=result.si_status)
    return ExitStatus(
        signal=result.si_status, core_dumped=result.si_code == os.CLD_DUMPED
    )


def reap(pid: int) -> ExitStatus | None:
    """Collect a zombie child; ``None`` if it was not ours to collect."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if reaped == 0:
        return None
    return ExitStatus.from_wait_status(status)


def wait_for_exit(pids: Iterable[int], timeout: float) -> None:
    """Block until every child in ``pids`` has exited, or ``timeout`` passes.

    Nothing is reaped. On Linux a pidfd per child makes this an exact wait in
    the kernel; elsewhere it polls with a short, growing interval.
    """
    waiting = [pid for pid in pids if child_status(pid) == "running"]
    if not waiting or timeout <= 0:
        return
    deadline = time.monotonic() + timeout
    if _HAS_PIDFD:
        _wait_pidfds(waiting, deadline)
        return
    _poll_until_exited(waiting, deadline)  # pragma: no cover - not Linux


def _wait_pidfds(pids: list[int], deadline: float) -> None:
    poller = select.poll()
    fds: list[int] = []
    try:
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except OSError:  # already gone, or no pidfd support in the kernel
                if child_status(pid) == "running":
                    _poll_until_exited([pid], deadline)
                continue
            fds.append(fd)
            poller.register(fd, select.POLLIN)
        remaining = len(fds)
        while remaining:
            left_ms = (deadline - time.monotonic()) * 1000
            if left_ms <= 0:
                return
            for fd, _event in poller.poll(left_ms):
                poller.unregister(fd)
                remaining -= 1
    finally:
        for fd in fds:
            os.close(fd)


def _poll_until_exited(pids: list[int], deadline: float) -> None:
    interval = 0.0005
    while any(child_status(pid) == "running" for pid in pids):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(interval, left))
        interval = min(interval * 2, 0.05)
