"""What the run found, gathered where it is reported.

Leaks are found in the process that ran the test (an xdist worker, or the
only process) and travel as plain records: on the teardown report of the test
during which they were found (so xdist carries them to the controller, and
JUnit XML shows them as properties), or, when found after the last report,
through xdist's ``workeroutput``. Whichever process prints the summary and
writes the JSON report collects them here.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .reporting import Record

#: Attribute set on teardown reports; survives xdist's report serialization.
REPORT_ATTRIBUTE = "nozombies_leaks"
#: JUnit XML property name, one per leak.
PROPERTY_NAME = "nozombies_leak"
SCHEMA_ID = "pytest-nozombies-report"
SCHEMA_VERSION = 1


class RunResults:
    __slots__ = ("leaks", "pending", "running")

    def __init__(self) -> None:
        #: Found here and not yet attached to a report.
        self.pending: list[Record] = []
        #: Every leak reported in this run (from all workers, on the controller).
        self.leaks: list[Record] = []
        #: Children still running at the end of the session.
        self.running: list[Record] = []

    def take_pending(self) -> list[Record]:
        pending, self.pending = self.pending, []
        return pending


class ReportCarrier:
    """Puts waiting leak records on the next teardown report, then leaves.

    Registered only while records wait, so that an ordinary test pays for no
    ``pytest_runtest_makereport`` wrapper. With ``count``, it also adds what
    it carries to the run's leaks; otherwise a ``LeakCollector`` reads them
    off the reports as they are logged.
    """

    def __init__(self, run_results: RunResults, *, count: bool) -> None:
        self.run_results = run_results
        self.count = count
        self._config: pytest.Config | None = None

    def attach_to_next_teardown(self, config: pytest.Config) -> None:
        if self._config is None:
            self._config = config
            config.pluginmanager.register(self, "nozombies-carrier")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.when == "teardown":
            self._attach(report)
        return report

    def _attach(self, report: pytest.TestReport) -> None:
        from .reporting import leak_line

        found = self.run_results.take_pending()
        if found:
            # A plain attribute survives xdist's and pytest-forked's
            # serialization of the report; user_properties become JUnit XML
            # <property> elements.
            setattr(report, REPORT_ATTRIBUTE, found)
            report.user_properties.extend((PROPERTY_NAME, leak_line(r)) for r in found)
            if self.count:
                self.run_results.leaks.extend(found)
        if self._config is not None:
            self._config.pluginmanager.unregister(self)
            self._config = None


class LeakCollector:
    """Reads the leak records off every report this process logs.

    Registered where reports come from other processes: on an xdist
    controller (its workers run the tests) and wherever pytest-forked may run
    a test in a forked copy of the session.
    """

    def __init__(self, run_results: RunResults) -> None:
        self.run_results = run_results

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        found = getattr(report, REPORT_ATTRIBUTE, None)
        if found:
            self.run_results.leaks.extend(found)


def report_document(
    results: RunResults, metadata: dict[str, Any], exit_status: int
) -> dict[str, Any]:
    """The JSON report (see docs/configuration.rst for the schema)."""
    import platform

    return {
        "schema": SCHEMA_ID,
        "version": SCHEMA_VERSION,
        "run": {
            **metadata,
            "python_version": platform.python_version(),
            "platform": sys.platform,
            "exit_status": exit_status,
        },
        "leaks": results.leaks,
        "running": results.running,
    }


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    """Write to a scratch file beside ``path`` and rename it over ``path``."""
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=".nozombies-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(scratch, path)
    except BaseException:
        os.unlink(scratch)
        raise
