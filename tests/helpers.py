"""Helpers shared by the test suite: import them with ``from helpers import ...``.

End-to-end tests run an inner pytest in a subprocess (``runpytest_subprocess``)
so that the inner session's children are not the outer session's. The outer
session runs with the plugin on too (the suite is held to what the project
sells): tests that make zombies in the outer process on purpose reap them or
are marked ``allow_zombies``.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from pathlib import Path

import pytest

#: Upper bound for any wait on a real process; generous for a loaded CI box.
DEADLINE = 30.0

RunInner = Callable[..., pytest.RunResult]


def wait_until_zombie(pid: int, timeout: float = DEADLINE) -> None:
    """Block until child ``pid`` has exited, without reaping it."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        raise TimeoutError(f"child {pid} did not exit within {timeout}s")


def wait_for(predicate: Callable[[], object], timeout: float = DEADLINE) -> None:
    """Poll ``predicate()`` with a deadline (for states with no event to wait on)."""
    deadline = time.monotonic() + timeout
    interval = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)
        interval = min(interval * 2, 0.05)


def line_of(path: Path, marker: str) -> int:
    """The number of the one line of ``path`` that carries ``marker``."""
    found = [
        number
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if marker in line
    ]
    assert len(found) == 1, f"{marker!r} should mark exactly one line: {found}"
    return found[0]
