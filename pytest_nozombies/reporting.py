"""Everything the user reads, rendered from ``Leak`` records: the message of
a failing test or a warning, the terminal summary, JUnit XML properties and
the JSON report.

Text that came from a child (its command line, its name) can hold anything:
in every text output, control characters are escaped and a long command
line is shortened, with a note of how much was cut.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import codecs
import platform
import sys
from collections.abc import Sequence
from typing import Any

import pytest

from .leaks import RETRIED, Leak

SCHEMA_ID = "pytest-nozombies-report"
SCHEMA_VERSION = 2
#: Attribute set on reports; survives xdist's and pytest-forked's serialization.
REPORT_ATTRIBUTE = "nozombies_leaks"
#: JUnit XML property name, one per finding.
PROPERTY_NAME = "nozombies_leak"
#: Longest command line shown in text output, in characters.
COMMAND_LIMIT = 300


class ZombieWarning(pytest.PytestWarning):
    """A test left a zombie child process (``--nozombies-mode=warn``)."""

    __module__ = "pytest_nozombies"


ZOMBIE_HINT = (
    "Wait for every child you start (Popen.wait() or a with-block, "
    "Process.join(), os.waitpid()), or mark the test "
    "@pytest.mark.allow_zombies(reason=...)."
)
RUNNING_HINT = (
    "Stop and wait for every child a test starts before it ends (terminate() "
    "then wait(), Process.join()), or mark the test "
    "@pytest.mark.allow_zombies(reason=...)."
)


# Looked up now, not when the first leak is reported: a codec is a module
# imported on first use, and an import while a leak is reported can run
# the code under test's finalizers halfway through.
codecs.lookup("unicode_escape")


def disabled_warning(exc: Exception) -> pytest.PytestWarning:
    return pytest.PytestWarning(
        f"pytest-nozombies: internal error ({exc!r}); zombie checks are off for "
        "the rest of this run. If this is not a permission problem of this "
        "machine, please report it."
    )


def readable(text: str, limit: int | None = None) -> str:
    """``text`` with control characters escaped (``\\x1b``, ``\\n``), bytes
    that were not UTF-8 shown as ``\\xNN``, and cut after ``limit`` characters."""
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        text = f"{text[:limit]}... ({cut:,} more characters)"
    return text


def _escape(ch: str) -> str:
    if "\udc80" <= ch <= "\udcff":  # a byte os.fsdecode could not decode
        return f"\\x{ord(ch) - 0xDC00:02x}"
    return ch.encode("unicode_escape").decode("ascii")


def _plural(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


# --- one finding ------------------------------------------------------------


def _site(leak: Leak) -> str:
    if leak.spawn_site is not None:
        return readable(leak.spawn_site)
    return f"unknown ({readable(leak.site_note or 'no frame of your code')})"


def format_leak(leak: Leak, verbosity: int = 0) -> str:
    """One finding as a short block: what, how it ended, who, where."""
    thread = f" from thread {readable(repr(leak.thread))}" if leak.thread else ""
    lines = [f"pid {leak.pid}: {readable(leak.command, COMMAND_LIMIT)}"]
    if leak.ended is not None:
        lines.append(f"  ended: {leak.ended.text}")
    lines.append(
        f"  spawned by: {leak.spawned_by}{thread} during {readable(leak.owner.text)}"
    )
    lines.append(f"  spawned at: {_site(leak)}")
    if leak.test_site:
        lines.append(f"  via: {readable(leak.test_site)}")
    if leak.late:
        lines.append(f"  found late, while {readable(leak.found_during or '?')} ran")
    lines.extend(f"  note: {readable(detail)}" for detail in leak.details)
    if verbosity >= 2 and leak.stack:
        lines.append("  stack (most recent call last):")
        lines.extend(f"    {readable(frame)}" for frame in leak.stack)
    return "\n".join(lines)


def format_message(
    leaks: Sequence[Leak], verbosity: int = 0, subject: str = "test"
) -> str:
    """The message of a test that left zombies or running children."""
    parts = []
    zombies = [leak for leak in leaks if leak.kind == "zombie"]
    running = [leak for leak in leaks if leak.kind == "running"]
    if zombies:
        noun = _plural(len(zombies), "zombie child process", "zombie child processes")
        parts.append(f"{subject} left {noun} (exited, never waited for):")
        parts.extend(_indent(format_leak(leak, verbosity)) for leak in zombies)
        parts.append(ZOMBIE_HINT)
    if running:
        noun = _plural(len(running), "child process", "child processes")
        parts.append(f"{subject} left {noun} running:")
        parts.extend(_indent(format_leak(leak, verbosity)) for leak in running)
        parts.append(RUNNING_HINT)
    return "\n".join(parts)


def _indent(block: str) -> str:
    return "  " + block.replace("\n", "\n  ")


def summary_line(leak: Leak) -> str:
    """One line for the terminal summary and for a JUnit XML property."""
    parts = [f"pid {leak.pid} {readable(leak.command, COMMAND_LIMIT)}"]
    if leak.ended is not None:
        parts.append(leak.ended.text)
    parts.append(f"spawned at {_site(leak)}")
    parts.extend(readable(detail) for detail in leak.details)
    line = f"{readable(leak.owner.text)}: {', '.join(parts)}"
    if leak.late:
        line += f" (late: found while {readable(leak.found_during or '?')} ran)"
    if leak.verdict == RETRIED:
        line += " (in an attempt that was rerun)"
    return line


# --- the run ----------------------------------------------------------------


def summary_stats(
    leaks: Sequence[Leak], running: Sequence[Leak]
) -> dict[str, list[Leak]]:
    """Entries for the closing line ("4 passed, 1 zombie leak in 0.3s")."""
    stats = {}
    if leaks:
        stats["zombie leak" if len(leaks) == 1 else "zombie leaks"] = list(leaks)
    if running:
        key = "child left running" if len(running) == 1 else "children left running"
        stats[key] = list(running)
    return stats


def write_summary(
    terminalreporter: pytest.TerminalReporter,
    leaks: Sequence[Leak],
    running: Sequence[Leak],
) -> None:
    """The run's zombie leaks, then the children left running, a line each."""
    if leaks:
        title = f"nozombies: {_plural(len(leaks), 'zombie leak', 'zombie leaks')}"
        terminalreporter.write_sep("=", title, yellow=True)
        for leak in leaks:
            terminalreporter.write_line(summary_line(leak))
    if running:
        title = f"nozombies: {_plural(len(running), 'child', 'children')} left running"
        terminalreporter.write_sep("=", title, yellow=True)
        for leak in running:
            terminalreporter.write_line(summary_line(leak))


def report_document(
    leaks: Sequence[Leak], running: Sequence[Leak], run: dict[str, Any]
) -> dict[str, Any]:
    """The JSON report (``report.schema.json``)."""
    return {
        "schema": SCHEMA_ID,
        "version": SCHEMA_VERSION,
        "run": {
            **run,
            "python_version": platform.python_version(),
            "platform": sys.platform,
        },
        "leaks": [leak.to_json() for leak in leaks],
        "running": [leak.to_json() for leak in running],
    }
