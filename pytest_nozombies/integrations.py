"""Hooks for other plugins, each registered only where that plugin is.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from .leaks import Leak
from .results import RunResults

if TYPE_CHECKING:
    from .tracker import Tracker


class XdistController:
    """pytest-xdist's controller: what each worker found after its last
    report (and at its collection) comes with its ``workeroutput``. The
    controller's own children, the workers, are never judged."""

    def __init__(self, results: RunResults) -> None:
        self.results = results

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output: dict[str, Any] = getattr(node, "workeroutput", None) or {}
        for data in output.get(RunResults.WORKER_OUTPUT, []):
            self.results.guarded(self._add, data)
        self.results.errors.extend(output.get(RunResults.WORKER_ERRORS, []))

    def _add(self, data: dict[str, Any]) -> None:
        self.results.add(Leak.from_json(data))


class TimeoutDeadline:
    """pytest-timeout: the grace period never runs past a test's timeout."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    @pytest.hookimpl(tryfirst=True)
    def pytest_timeout_set_timer(self, item: pytest.Item, settings: Any) -> None:
        timeout = getattr(settings, "timeout", None)
        if timeout:
            self.tracker.deadline = time.monotonic() + timeout

    @pytest.hookimpl(tryfirst=True)
    def pytest_timeout_cancel_timer(self, item: pytest.Item) -> None:
        self.tracker.deadline = None
