"""Shared helpers for the test suite.

End-to-end tests run an inner pytest in a subprocess (``runpytest_subprocess``)
so that the inner session's children are not the outer session's. The inner
run loads the installed plugin through its ``pytest11`` entry point; the outer
session runs with ``-p no:nozombies`` (see pyproject.toml).
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

import pytest

pytest_plugins = ["pytester"]

#: Upper bound for any wait on a real process; generous for a loaded CI box.
DEADLINE = 30.0


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


RunInner = Callable[..., pytest.RunResult]


@pytest.fixture
def run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> RunInner:
    """Run pytest in a subprocess in ``pytester.path`` with the plugin loaded."""
    # pytest prints whole messages in its short summary on CI; inner runs look
    # the same everywhere, so that tests read the same output on CI as here.
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)

    def run(*args: str, timeout: float = DEADLINE * 4) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", *args, timeout=timeout
        )

    return run
