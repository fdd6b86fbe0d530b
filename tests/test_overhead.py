"""The work the plugin leaves undone when nothing leaks.

Timing belongs in ``benchmarks/bench_overhead.py``, never in a test. These
tests pin the design the measured figures rest on: which hooks run around
every test, and which modules an ordinary run never imports. A change that
quietly undoes one of them fails here instead of in next month's benchmark.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from helpers import RunInner

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")

PER_TEST_HOOKS = (
    "pytest_runtest_setup",
    "pytest_runtest_call",
    "pytest_runtest_teardown",
    "pytest_runtest_makereport",
    "pytest_runtest_logreport",
)

PROBE = f"""
import json
import sys

import pytest

registered = []


def pytest_plugin_registered(plugin, manager):
    name = manager.get_name(plugin)
    if name and "nozombies" in name:
        registered.append(name)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    hooks = {{}}
    for hook in {PER_TEST_HOOKS!r}:
        impls = getattr(config.pluginmanager.hook, hook).get_hookimpls()
        hooks[hook] = sorted(
            i.plugin_name for i in impls if "nozombies" in i.plugin_name
        )
    with open("probe.json", "w") as f:
        json.dump(
            {{
                "modules": sorted(m for m in sys.modules if "nozombies" in m),
                "registered": registered,
                "hooks_at_end": hooks,
            }},
            f,
        )
"""

TESTS = """
import subprocess
import sys


def test_trivial():
    pass


def test_spawns_and_waits():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


def probe(pytester: pytest.Pytester, run_inner: RunInner, *args: str) -> dict[str, Any]:
    pytester.makeconftest(PROBE)
    pytester.makepyfile(TESTS)
    result = run_inner(*args)
    result.assert_outcomes(passed=2)
    with open(pytester.path / "probe.json") as f:
        found: dict[str, Any] = json.load(f)
    return found


def assert_not_imported(found: dict[str, Any], *modules: str) -> None:
    imported = set(found["modules"])
    assert imported.isdisjoint(f"pytest_nozombies.{m}" for m in modules)


def test_a_clean_run_runs_two_hooks_per_test_and_never_the_leak_path(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    found = probe(pytester, run_inner)
    hooks = found["hooks_at_end"]
    assert hooks == {
        "pytest_runtest_setup": ["nozombies-checks"],
        # The call phase is told from PYTEST_CURRENT_TEST when a child is
        # spawned, not by a hook around every test.
        "pytest_runtest_call": [],
        "pytest_runtest_teardown": ["nozombies-checks"],
        # Registered only while leak records wait for a report, or where
        # reports come from other processes (xdist, pytest-forked).
        "pytest_runtest_makereport": [],
        "pytest_runtest_logreport": [],
    }
    assert "nozombies-carrier" not in found["registered"]
    # Formatting, reaping and the subreaper are loaded only when needed.
    assert_not_imported(found, "reporting", "reaping", "subreaper", "xdist")


def test_mode_off_adds_no_hook_around_tests(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    found = probe(pytester, run_inner, "--nozombies-mode=off")
    assert found["hooks_at_end"] == {hook: [] for hook in PER_TEST_HOOKS}
    assert_not_imported(found, "checks", "tracker", "spawns", "reporting", "reaping")


def test_a_leak_brings_the_carrier_for_one_report(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makeconftest(PROBE)
    pytester.makepyfile(
        """
        import os

        def test_leaks():
            if os.fork() == 0:
                os._exit(0)

        def test_after():
            pass
        """
    )
    result = run_inner("-v")
    result.assert_outcomes(passed=2, errors=1)
    # The leak is listed once in the summary, carried by one report.
    result.stdout.fnmatch_lines(["*= nozombies: 1 zombie leak =*"])
    with open(pytester.path / "probe.json") as f:
        found = json.load(f)
    assert found["registered"].count("nozombies-carrier") == 1
    assert found["hooks_at_end"]["pytest_runtest_makereport"] == []
