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
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class LeakCollector:
    """Reads the leak records off every report this process logs.

    In a plain run that is every test's report; on an xdist controller, the
    workers' reports as they arrive; under pytest-forked, the forked copies'.
    """

    def __init__(self, run_results: RunResults) -> None:
        self.run_results = run_results

    def pytest_runtest_logreport(self, report: Any) -> None:
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
