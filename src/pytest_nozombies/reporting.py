"""Everything the user reads: leak messages, the warning, the summary."""

from __future__ import annotations

import os
import shlex
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path

import _pytest
import pluggy
import pytest

from . import processes
from .settings import Settings
from .spawns import Frame, SpawnRecord, iter_user_frames
from .tracker import Leak


class ZombieWarning(pytest.PytestWarning):
    """A test left a zombie child process (``--nozombies-mode=warn``)."""

    __module__ = "pytest_nozombies"


HINT = (
    "Wait for every child you start (Popen.wait() or a with-block, "
    "Process.join(), os.waitpid()), or mark the test "
    "@pytest.mark.allow_zombies(reason=...)."
)


_FORKS = ("os.fork", "os.forkpty")


def _not_user_code() -> tuple[str, ...]:
    """Folders whose frames are never "the line that spawned it"."""
    paths = sysconfig.get_paths()
    folders = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    # pytest, pluggy and this plugin usually live in site-packages already, but
    # not in a development checkout.
    for module in (_pytest, pytest, pluggy, processes):
        folders.add(os.path.dirname(module.__file__ or ""))
    return tuple(sorted(os.path.join(f, "") for f in folders if f))


_EXCLUDED = _not_user_code()


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
    return _site_of(leak.stack, root)


def _site_of(stack: tuple[Frame, ...], root: Path) -> str:
    frame = next(iter_user_frames(stack, _EXCLUDED), None)
    if frame is None:
        return "spawn site unknown"
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


def header_line(settings: Settings) -> str:
    if not processes.SUPPORTED:
        return "nozombies: nothing to check on this platform (it has no zombies)"
    if settings.mode == "off":
        return "nozombies: off (--nozombies-mode=off)"
    source = "/proc" if processes.USES_PROC else "psutil"
    return f"nozombies: {settings.describe()}, children read from {source}"


def write_summary(
    terminalreporter: pytest.TerminalReporter,
    leaks: Iterable[Leak],
    root: Path,
) -> None:
    leaks = list(leaks)
    if not leaks:
        return
    noun = "zombie leak" if len(leaks) == 1 else "zombie leaks"
    terminalreporter.write_sep("=", f"nozombies: {len(leaks)} {noun}", yellow=True)
    for leak in leaks:
        ended = leak.ended.describe() if leak.ended else "exit status unknown"
        late = f" (late: found while {leak.found_during} ran)" if leak.late else ""
        where = leak.owner.describe()
        terminalreporter.write_line(
            f"{where}: pid {leak.pid} {describe_command(leak)}, {ended}, "
            f"spawned at {describe_site(leak, root)}{late}"
        )


def write_leftovers(
    terminalreporter: pytest.TerminalReporter,
    leftovers: Sequence[SpawnRecord],
    root: Path,
) -> None:
    """List children still running at the end, with who left them."""
    if not leftovers:
        return
    noun = "child" if len(leftovers) == 1 else "children"
    terminalreporter.write_sep(
        "=", f"nozombies: {len(leftovers)} {noun} still running", yellow=True
    )
    for record in leftovers:
        owner = record.owner.describe() if record.owner else "outside any test"
        command = shlex.join(record.argv) if record.argv else f"({record.how})"
        site = _site_of(record.stack, root)
        terminalreporter.write_line(
            f"{owner}: pid {record.pid} {command}, spawned at {site}"
        )
