"""pytest-xdist on the controller: gather what the workers found.

Each worker checks its own children (it runs the tests, so they are its
children); the controller's children are the workers themselves and are never
judged, as no test runs there. Leaks reach the controller on the workers'
reports; what a worker found after its last report, and its children still
running at the end, come with its ``workeroutput`` when it shuts down.
"""

from __future__ import annotations

from typing import Any

from . import results


class XdistControllerHooks:
    """Registered on the controller only, when pytest-xdist is installed."""

    def __init__(self, run_results: results.RunResults) -> None:
        self.run_results = run_results

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output: dict[str, Any] = getattr(node, "workeroutput", None) or {}
        self.run_results.leaks.extend(output.get(results.REPORT_ATTRIBUTE, []))
        self.run_results.running.extend(output.get("nozombies_running", []))
