"""Everything the user reads: leak messages, the warning, the summary."""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import _pytest
import pluggy
import pytest

from . import processes
from .spawns import Frame, Owner, SpawnRecord, iter_user_frames
from .tracker import Leak

T = TypeVar("T")


class ZombieWarning(pytest.PytestWarning):
    """A test left a zombie child process (``--nozombies-mode=warn``)."""

    __module__ = "pytest_nozombies"


HINT = (
    "Wait for every child you start (Popen.wait() or a with-block, "
    "Process.join(), os.waitpid()), or mark the test "
    "@pytest.mark.allow_zombies(reason=...)."
)


_FORKS = ("os.fork", "os.forkpty")


@functools.cache
def _not_user_code() -> tuple[str, ...]:
    """Folders whose frames are never "the line that spawned it"."""
    import sysconfig

    paths = sysconfig.get_paths()
    folders = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    # pytest, pluggy and this plugin usually live in site-packages already, but
    # not in a development checkout.
    for module in (_pytest, pytest, pluggy, processes):
        folders.add(os.path.dirname(module.__file__ or ""))
    return tuple(sorted(os.path.join(f, "") for f in folders if f))


def _relative(filename: str, root: Path) -> str:
    try:
        return str(Path(filename).relative_to(root))
    except ValueError:
        return filename


def describe_command(leak: Leak) -> str:
    """The command line captured at spawn time, or the best the OS can say."""
    if leak.argv and leak.how not in _FORKS:
        return shlex.join(leak.argv)
    if leak.how == "unknown":
        return (
            f"[{leak.name}] (not spawned through Python, parent pid "
            f"{leak.parent}: command line unknown)"
        )
    # A forked child runs this interpreter's code; its name is what it last
    # exec'd, if anything.
    return f"[{leak.name}] (forked by {leak.how})"


def describe_site(leak: Leak, root: Path) -> str:
    return _site_of(leak.stack, root, default="spawn site unknown")


def _site_of(stack: tuple[Frame, ...], root: Path, default: T) -> str | T:
    """``path:line`` of the innermost frame in the user's own code."""
    frame = next(iter_user_frames(stack, _not_user_code()), None)
    if frame is None:
        return default
    return f"{_relative(frame.filename, root)}:{frame.lineno}"


def format_leak(leak: Leak, root: Path, verbosity: int = 0) -> str:
    ended = leak.ended.describe() if leak.ended else "exit status unknown"
    lines = [
        f"pid {leak.pid}: {describe_command(leak)}",
        f"  ended: {ended}",
        f"  spawned by: {leak.how} during {leak.owner.describe()}",
        f"  spawned at: {describe_site(leak, root)}",
    ]
    if leak.late:
        lines.append(f"  found late, while {leak.found_during} ran")
    if verbosity >= 2 and leak.stack:
        lines.append("  stack (most recent call last):")
        lines.extend(
            f"    {_relative(f.filename, root)}:{f.lineno} in {f.function}"
            for f in reversed(leak.stack)
        )
    return "\n".join(lines)


def format_test_leaks(leaks: Sequence[Leak], root: Path, verbosity: int = 0) -> str:
    count = len(leaks)
    noun = "zombie child process" if count == 1 else "zombie child processes"
    body = "\n".join(
        "  " + format_leak(leak, root, verbosity).replace("\n", "\n  ")
        for leak in leaks
    )
    return f"test left {count} {noun} (exited, never waited for):\n{body}\n{HINT}"


# --- records: what travels on reports, across xdist, into the JSON report ----

#: A leak or a running leftover as plain JSON-able data.
Record = dict[str, Any]


def _ended_record(ended: processes.ExitStatus | None) -> Record | None:
    if ended is None:
        return None
    signal_name = None
    if ended.signal is not None:
        signal_name = ended.describe().removeprefix("killed by ").split(" ")[0]
    return {
        "exit_code": ended.code,
        "signal": ended.signal,
        "signal_name": signal_name,
        "core_dumped": ended.core_dumped,
        "text": ended.describe(),
    }


def _owner_record(owner: Owner | None) -> Record:
    if owner is None:
        return {"nodeid": None, "phase": None, "fixture": None, "scope": None}
    return {
        "nodeid": owner.nodeid,
        "phase": owner.phase,
        "fixture": owner.fixture,
        "scope": owner.scope,
        "text": owner.describe(),
    }


def leak_record(leak: Leak, root: Path, verdict: str) -> Record:
    """A leak as data: the JSON report's ``leaks`` entries (schema v1)."""
    return {
        "nodeid": leak.owner.nodeid,
        "owner": _owner_record(leak.owner),
        "pid": leak.pid,
        "argv": list(leak.argv) if leak.argv else None,
        "command": describe_command(leak),
        "spawned_by": leak.how,
        "ended": _ended_record(leak.ended),
        "spawn_site": _site_of(leak.stack, root, default=None),
        "stack": [
            f"{_relative(f.filename, root)}:{f.lineno} in {f.function}"
            for f in reversed(leak.stack)
        ],
        "late": leak.late,
        "found_during": leak.found_during,
        "verdict": verdict,
    }


def leftover_record(record: SpawnRecord, root: Path) -> Record:
    """A child still running at the end: the JSON report's ``running`` entries."""
    return {
        "nodeid": record.owner.nodeid if record.owner else None,
        "owner": _owner_record(record.owner),
        "pid": record.pid,
        "argv": list(record.argv) if record.argv else None,
        "command": shlex.join(record.argv) if record.argv else f"({record.how})",
        "spawned_by": record.how,
        "spawn_site": _site_of(record.stack, root, default=None),
    }


def leak_line(record: Record) -> str:
    """One line of the summary (and a JUnit XML property) for a leak."""
    ended = record["ended"]["text"] if record["ended"] else "exit status unknown"
    site = record["spawn_site"] or "spawn site unknown"
    late = (
        f" (late: found while {record['found_during']} ran)" if record["late"] else ""
    )
    return (
        f"{record['owner']['text']}: pid {record['pid']} {record['command']}, "
        f"{ended}, spawned at {site}{late}"
    )


def leftover_line(record: Record) -> str:
    owner = record["owner"].get("text") or "outside any test"
    site = record["spawn_site"] or "spawn site unknown"
    return f"{owner}: pid {record['pid']} {record['command']}, spawned at {site}"


def write_summary(
    terminalreporter: pytest.TerminalReporter,
    leaks: Sequence[Record],
    running: Sequence[Record],
) -> None:
    """The run's leaks, then the children still running, one line each."""
    if leaks:
        noun = "zombie leak" if len(leaks) == 1 else "zombie leaks"
        terminalreporter.write_sep("=", f"nozombies: {len(leaks)} {noun}", yellow=True)
        for record in leaks:
            terminalreporter.write_line(leak_line(record))
    if running:
        noun = "child" if len(running) == 1 else "children"
        terminalreporter.write_sep(
            "=", f"nozombies: {len(running)} {noun} still running", yellow=True
        )
        for record in running:
            terminalreporter.write_line(leftover_line(record))
