"""What the run found, gathered in the process that reports it.

A finding is made in the process that ran the test (an xdist worker, a
pytest-forked fork, or the only process) and travels in its JSON form: on
the report of the test phase during which it was found (so xdist and
pytest-forked carry it, and JUnit XML shows it as a property), or, when it
was found outside any test (at the end of collection or of the session),
in xdist's ``workeroutput``. The process that prints the summary collects
each report's findings as the report is logged: by then the report's
outcome is final, and says whether a leak that was to fail its test did
(a rerun attempt, or an ``xfail`` test that swallowed the error, changes it).

An internal error while reporting stops the plugin with one warning, as one
while checking does (checks.py); it never reaches pytest.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from . import __version__, report_file
from .leaks import FAILED_RUN, FAILED_TEST, RETRIED, Leak
from .reporting import (
    PROPERTY_NAME,
    REPORT_ATTRIBUTE,
    disabled_warning,
    report_document,
    summary_line,
)
from .settings import Settings

T = TypeVar("T")


class RunResults:
    """The findings of one process, and of its workers on a controller."""

    #: Key of xdist's ``workeroutput`` for findings made outside any report.
    WORKER_OUTPUT = "nozombies_findings"
    WORKER_ERRORS = "nozombies_errors"

    def __init__(self) -> None:
        self.leaks: list[Leak] = []
        self.running: list[Leak] = []
        #: Found during the running test phase: for that phase's report.
        self.pending: list[Leak] = []
        #: Found outside any test phase (collection, the end of the session).
        self.outside: list[Leak] = []
        #: The internal error that stopped the reporting (and the checks).
        self.failure: Exception | None = None
        #: Warnings of ours that -W error made errors where no test ran.
        self.errors: list[str] = []

    def guarded(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Run part of the reporting; an internal error stops it with one
        warning, and the checks with it (``TestChecks.guarded`` sees it)."""
        if self.failure is not None:
            return None
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # never let a bug of ours crash the run
            self.failure = exc
            self.warn_outside_tests(disabled_warning(exc))
            return None

    def warn_outside_tests(self, warning: Warning) -> None:
        """Warn where no test runs; one that -W error made an error becomes
        one line of the summary and a failing exit status, not a crash."""
        try:
            warnings.warn(warning, stacklevel=2)
        except Warning as exc:
            self.errors.append(str(exc))

    def add(self, leak: Leak) -> None:
        (self.leaks if leak.kind == "zombie" else self.running).append(leak)

    def attach_pending(self, report: pytest.TestReport, item: pytest.Item) -> None:
        """Put the findings waiting for a report on ``report``."""
        found, self.pending = self.pending, []
        # A plain attribute survives xdist's and pytest-forked's serialization.
        setattr(report, REPORT_ATTRIBUTE, [leak.to_json() for leak in found])
        # user_properties become JUnit XML <property> elements, but only the
        # teardown report's, which pytest copies from the item's: findings of
        # the setup and call phases go on the item too.
        properties = [(PROPERTY_NAME, summary_line(leak)) for leak in found]
        report.user_properties.extend(properties)
        if report.when != "teardown":
            item.user_properties.extend(properties)

    def collect(self, report: pytest.TestReport) -> None:
        """Take the findings off a report as it is logged."""
        outcome: str = report.outcome  # pytest-rerunfailures adds "rerun"
        for data in getattr(report, REPORT_ATTRIBUTE, ()):
            leak = Leak.from_json(data)
            if leak.verdict == FAILED_TEST and outcome != "failed":
                # Rerun (pytest-rerunfailures), or swallowed by xfail: a leak
                # of a retried attempt counts for nothing; any other still
                # fails the run.
                leak.verdict = RETRIED if outcome == "rerun" else FAILED_RUN
            self.add(leak)

    def all(self) -> Iterable[Leak]:
        yield from self.leaks
        yield from self.running


class Collector:
    """Registered in the process that reports (never in an xdist worker)."""

    def __init__(
        self, config: pytest.Config, settings: Settings, results: RunResults
    ) -> None:
        self.config = config
        self.settings = settings
        self.results = results
        #: A test that forks and lets the child return into pytest makes a
        #: copy of this session: the copy must not write anything.
        self._pid = os.getpid()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if hasattr(report, REPORT_ATTRIBUTE):
            self.results.guarded(self.results.collect, report)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(
        self, session: pytest.Session
    ) -> Generator[None, None, None]:
        # Outermost: after pytest's own cache and terminal summary are written.
        yield
        if os.getpid() != self._pid:
            return
        self.results.guarded(self._remember_blamed_tests)
        if self.settings.report is not None:
            self.results.guarded(self._write_report, session, self.settings.report)

    def _remember_blamed_tests(self) -> None:
        """A test blamed only after it reported (a late or fixture leak) goes
        into ``--lf``'s cache, so that ``pytest --lf`` runs it again."""
        cache = getattr(self.config, "cache", None)
        blamed = {
            leak.nodeid for leak in self.results.all() if leak.verdict == FAILED_RUN
        }
        blamed.discard(None)
        if cache is None or not blamed:
            return
        lastfailed = cache.get("cache/lastfailed", {})
        lastfailed.update(dict.fromkeys(blamed, True))
        cache.set("cache/lastfailed", lastfailed)

    def _write_report(self, session: pytest.Session, path: Path) -> None:
        run = {
            "plugin_version": __version__,
            "pytest_version": pytest.__version__,
            "settings": self.settings.as_json(),
            "exit_status": int(session.exitstatus),
        }
        document = report_document(self.results.leaks, self.results.running, run)
        try:
            report_file.write(
                path, json.dumps(document, indent=2, sort_keys=True) + "\n"
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            message = (
                f"pytest-nozombies: could not write the report to {path}: {reason}"
            )
            terminal = self.config.pluginmanager.get_plugin("terminalreporter")
            if terminal is not None:
                terminal.write_line(message, red=True)
            else:
                sys.stderr.write(message + "\n")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
