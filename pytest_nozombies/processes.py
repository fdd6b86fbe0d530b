"""What the operating system says about this process's children.

No pytest here: this layer answers questions about real processes (which
children exist, which are zombies, how one ended, which threads wait for
which child) and can be tested and reused on its own.

Nothing here reaps. ``os.waitid(..., WNOWAIT)`` reads a zombie's exit status
and leaves it in place, so code under test that still means to wait for its
child gets the status it expects. Nothing here keeps a descriptor open past
its own call.

Linux reads ``/proc/self/task/*/children``, which lists only our own
children, so the cost does not depend on how many processes the machine
runs. Other POSIX systems fall back to psutil.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import threading
from typing import Literal, NamedTuple

#: Platforms where a child can become a zombie at all.
SUPPORTED = os.name == "posix"

_HAS_WAITID = hasattr(os, "waitid")
_NON_REAPING = (os.WEXITED | os.WNOHANG | os.WNOWAIT) if _HAS_WAITID else 0


def _proc_children_available() -> bool:
    # CONFIG_PROC_CHILDREN is off on some kernels; then only psutil can tell.
    return os.path.exists(f"/proc/self/task/{os.getpid()}/children")


USES_PROC = sys.platform.startswith("linux") and _proc_children_available()

ChildStatus = Literal["running", "zombie", "gone"]


class ExitStatus(NamedTuple):
    """How a child ended: an exit code, or the signal that killed it."""

    code: int | None = None
    signal: int | None = None
    core_dumped: bool = False

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"

    def describe(self) -> str:
        if self.signal is not None:
            dumped = ", core dumped" if self.core_dumped else ""
            return f"killed by {self.signal_name} ({self.signal}){dumped}"
        return f"exited with code {self.code}"

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        """Decode a status word as ``os.waitpid`` returns it."""
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status), core_dumped=os.WCOREDUMP(status))
        return cls(code=os.WEXITSTATUS(status))

    @classmethod
    def from_returncode(cls, code: int) -> ExitStatus:
        """Decode ``Popen.returncode`` / ``Process.exitcode`` (negative: a signal)."""
        return cls(signal=-code) if code < 0 else cls(code=code)


class Stat(NamedTuple):
    """One reading of a process: its state letter, name, parent, group, start."""

    state: str
    name: str
    parent: int
    group: int
    #: Clock ticks after boot: with the pid, it names one process for good.
    start_time: float
    #: The wait status it exited with, for a zombie (Linux 3.5+); else None.
    exit_code: int | None

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


# --- reading one process ----------------------------------------------------


def _read_file(path: str) -> bytes | None:
    """A small /proc file (stat, syscall, fdinfo: well under 4 KiB), read
    with os.open/os.read: a third of open()'s cost, and judging reads one
    per child per look."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def _parse_stat(raw: bytes) -> Stat | None:
    # The name sits in parentheses and may itself contain ") ": split on the
    # last one.
    head, _, tail = raw.rpartition(b")")
    fields = tail.split()
    if len(fields) < 20:
        return None
    name = head.partition(b"(")[2].decode(errors="backslashreplace")
    exit_code = int(fields[49]) if len(fields) > 49 else None
    return Stat(
        fields[0].decode(),
        name,
        int(fields[1]),
        int(fields[2]),
        float(fields[19]),
        exit_code,
    )


def _psutil_stat(pid: int) -> Stat | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            zombie = proc.status() == psutil.STATUS_ZOMBIE
            return Stat(
                "Z" if zombie else "R",
                proc.name(),
                proc.ppid(),
                os.getpgid(pid) if not zombie else 0,
                proc.create_time(),
                None,
            )
    except (psutil.Error, OSError):
        return None


def read_stat(pid: int) -> Stat | None:
    """Read process ``pid``; ``None`` if it no longer exists."""
    if not USES_PROC:
        return _psutil_stat(pid)
    raw = _read_file(f"/proc/{pid}/stat")
    return None if raw is None else _parse_stat(raw)


#: What tells a process from any later one that gets its pid: a pidfs inode
#: number (an int) or a start time (clock ticks, or seconds from psutil).
Identity = float


def _pidfd_inode(pid: int) -> int:
    fd = os.pidfd_open(pid)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def _has_pidfs() -> bool:
    """Whether a pidfd's inode number names one process for good (pidfs,
    Linux 6.9 and newer). Before, every pidfd is the one anonymous inode that
    an eventfd is too."""
    try:
        anonymous = os.eventfd(0)
        try:
            shared = os.fstat(anonymous)
        finally:
            os.close(anonymous)
        pidfd = os.pidfd_open(os.getpid())
        try:
            mine = os.fstat(pidfd)
        finally:
            os.close(pidfd)
    except (AttributeError, OSError):
        return False
    return (mine.st_dev, mine.st_ino) != (shared.st_dev, shared.st_ino)


_PIDFS = USES_PROC and _has_pidfs()


def identify(pid: int) -> Identity | None:
    """What names process ``pid`` for good; ``None`` if it no longer exists.

    Where the kernel has pidfs, a pidfd's inode number, unique for the whole
    boot: a few microseconds and no look-up in ``/proc`` (whose first look
    at a new pid costs ten times more). Elsewhere the start time, which is
    in clock ticks: a pid reused within one tick would share it.
    """
    if _PIDFS:
        try:
            return _pidfd_inode(pid)
        except OSError:
            return None
    stat = read_stat(pid)
    return None if stat is None else stat.start_time


def read_cmdline(pid: int) -> tuple[str, ...] | None:
    """Command line of a live process (a zombie has none), as ``os.fsdecode``
    gives it: bytes that are not UTF-8 become lone surrogates, losslessly."""
    if USES_PROC:
        raw = _read_file_whole(f"/proc/{pid}/cmdline")
        if not raw:
            return None
        return tuple(os.fsdecode(part) for part in raw.rstrip(b"\0").split(b"\0"))
    import psutil

    try:
        return tuple(psutil.Process(pid).cmdline()) or None
    except (psutil.Error, OSError):
        return None


def _read_file_whole(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


# --- this process's children ------------------------------------------------


def child_pids() -> list[int]:
    """Pids of this process's direct children, alive or zombie."""
    if not USES_PROC:
        import psutil

        return [p.pid for p in psutil.Process().children(recursive=False)]
    pids: list[int] = []
    # A child is listed under the thread that created it, so read every
    # thread's file. An unreadable task list is an error for the caller,
    # never an empty answer.
    for tid in os.listdir("/proc/self/task"):
        raw = _read_file_whole(f"/proc/self/task/{tid}/children")  # any length
        if raw:
            pids.extend(int(p) for p in raw.split())
    return pids


def children_now() -> Literal["none", "running", "exited"]:
    """One non-reaping ``waitid``: no children at all, only running ones, or
    at least one that has exited? (Without ``os.waitid``, macOS before Python
    3.13, it cannot tell cheaply and answers ``exited`` so the caller looks.)
    """
    if not _HAS_WAITID:
        return "exited"
    try:
        found = os.waitid(os.P_ALL, 0, _NON_REAPING)
    except ChildProcessError:  # no children at all, or SIGCHLD ignored
        return "none"
    return "running" if found is None else "exited"


def child_status(pid: int) -> ChildStatus:
    """``running``, ``zombie`` or ``gone`` (reaped, or never ours), non-reaping."""
    if not _HAS_WAITID:
        stat = _psutil_stat(pid)
        if stat is None or stat.parent != os.getpid():
            return "gone"
        return "zombie" if stat.zombie else "running"
    try:
        found = os.waitid(os.P_PID, pid, _NON_REAPING)
    except ChildProcessError:
        return "gone"
    return "running" if found is None else "zombie"


def exit_status(pid: int) -> ExitStatus | None:
    """How the zombie child ``pid`` ended, read without reaping it; ``None``
    if it is not a zombie child of ours (or the platform cannot tell)."""
    if not _HAS_WAITID:
        return None
    try:
        found = os.waitid(os.P_PID, pid, _NON_REAPING)
    except ChildProcessError:
        return None
    if found is None:
        return None
    if found.si_code == os.CLD_EXITED:
        return ExitStatus(code=found.si_status)
    return ExitStatus(
        signal=found.si_status, core_dumped=found.si_code == os.CLD_DUMPED
    )


def reap(pid: int) -> ExitStatus | None:
    """Collect the zombie child ``pid``: only one nobody else can wait for."""
    try:
        found, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return ExitStatus.from_wait_status(status) if found else None


def zombie_children() -> list[tuple[int, Stat]]:
    """Every child that has exited and not been reaped, oldest first."""
    if children_now() != "exited":
        return []
    found = []
    for pid in child_pids():
        stat = read_stat(pid)
        if stat is not None and stat.zombie:
            found.append((pid, stat))
    return sorted(found, key=lambda item: item[1].start_time)


# --- other processes' children (for tests of code that manages processes) ---


def zombie_children_of(pid: int) -> list[tuple[int, Stat]]:
    """The zombie children of any process we may read (psutil)."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=False)
    except psutil.Error:
        return []
    found = []
    for child in children:
        stat = read_stat(child.pid)
        if stat is not None and stat.zombie and stat.parent == pid:
            found.append((child.pid, stat))
    return found


# --- threads that wait for children -----------------------------------------

# System call numbers of wait4 and waitid, for the architectures whose
# numbers are known here; elsewhere no thread is seen waiting.
_WAIT_SYSCALLS = {
    "x86_64": (61, 247),
    "aarch64": (260, 95),
    "riscv64": (260, 95),
}.get(platform.machine(), (-1, -1))
_P_ALL, _P_PID, _P_PGID, _P_PIDFD = 0, 1, 2, 3


class WaitTargets(NamedTuple):
    """What the process's other threads are blocked waiting for, right now."""

    pids: frozenset[int]
    groups: frozenset[int]
    any_child: bool
    #: How many other threads the process has (0: nobody else can collect).
    threads: int

    def covers(self, pid: int, group: int | None) -> bool:
        """Whether some thread is blocked in a wait that will collect ``pid``."""
        return self.any_child or pid in self.pids or group in self.groups


def wait_targets() -> WaitTargets:
    """Which children the process's *other* threads are blocked waiting for.

    Linux shows each thread's current system call and its arguments in
    ``/proc/self/task/TID/syscall``: a thread inside ``wait4`` or ``waitid``
    will collect the child it names (or any child) as soon as it can.
    """
    if not USES_PROC:
        return WaitTargets(
            frozenset(), frozenset(), False, threading.active_count() - 1
        )
    me = str(threading.get_native_id())
    pids: set[int] = set()
    groups: set[int] = set()
    any_child = False
    threads = 0
    for tid in os.listdir("/proc/self/task"):
        if tid == me:
            continue
        threads += 1
        raw = _read_file(f"/proc/self/task/{tid}/syscall")
        target = _wait_target(raw) if raw else None
        if target is None:
            continue
        kind, value = target
        if kind == "any":
            any_child = True
        elif kind == "pid":
            pids.add(value)
        else:
            groups.add(value)
    return WaitTargets(frozenset(pids), frozenset(groups), any_child, threads)


def _wait_target(raw: bytes) -> tuple[str, int] | None:
    fields = raw.split()
    if len(fields) < 3 or not fields[0].isdigit():
        return None  # "running", or not in a system call
    number = int(fields[0])
    if number not in _WAIT_SYSCALLS:
        return None
    first, second = _int32(fields[1]), _int32(fields[2])
    if number == _WAIT_SYSCALLS[0]:  # wait4(pid, ...)
        if first == -1:
            return ("any", 0)
        if first == 0:
            return ("group", os.getpgrp())
        return ("pid", first) if first > 0 else ("group", -first)
    if first == _P_ALL:  # waitid(idtype, id, ...)
        return ("any", 0)
    if first == _P_PID:
        return ("pid", second)
    if first == _P_PGID:
        return ("group", second or os.getpgrp())
    if first == _P_PIDFD:
        pid = _pidfd_pid(second)
        return ("pid", pid) if pid is not None else None
    return None


def _int32(field: bytes) -> int:
    # Registers print as 64-bit hex; the argument is a C int.
    value = int(field, 16) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _pidfd_pid(fd: int) -> int | None:
    raw = _read_file(f"/proc/self/fdinfo/{fd}")
    for line in (raw or b"").splitlines():
        if line.startswith(b"Pid:"):
            return int(line.split()[1])
    return None
