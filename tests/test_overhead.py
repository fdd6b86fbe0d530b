"""The work the plugin leaves undone when nothing leaks.

Timing belongs in ``benchmarks/bench_overhead.py``, never in a test. These
tests pin the design the measured figures rest on: a clean run never takes
the path that builds and reports a finding, which hooks run around every
test, and that ``--nozombies-mode=off`` neither hooks into tests nor loads
the spawn recorder and the tracker. A change that quietly undoes one of them
fails here instead of in next month's benchmark.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from helpers import RunInner

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")

#: The hooks pytest runs for every test (and every fixture of a test).
PER_TEST_HOOKS = (
    "pytest_runtest_protocol",
    "pytest_runtest_setup",
    "pytest_runtest_call",
    "pytest_runtest_teardown",
    "pytest_runtest_makereport",
    "pytest_runtest_logreport",
    "pytest_fixture_setup",
    "pytest_fixture_post_finalizer",
)

#: A conftest that watches the plugin from inside the run: the leak hook
#: (called for every finding before it is reported), every report, the
#: plugins implementing per-test hooks, and the modules loaded.
PROBE = f"""
import json
import sys

import pytest

findings = []
carriers = []


def pytest_nozombies_leak(leak, item):
    findings.append({{"pid": leak.pid, "nodeid": leak.nodeid, "kind": leak.kind}})


def pytest_runtest_logreport(report):
    carried = getattr(report, "nozombies_leaks", None)
    if carried is not None or report.user_properties:
        carriers.append(
            {{
                "nodeid": report.nodeid,
                "when": report.when,
                "pids": [leak["pid"] for leak in carried or ()],
                "properties": len(report.user_properties),
            }}
        )


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
                "hooks": hooks,
                "findings": findings,
                "carriers": carriers,
            }},
            f,
        )
"""

#: Every way of spawning that cleans up after itself: nothing leaks.
CLEAN = """
import os
import signal
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def helper():
    subprocess.run(["true"], check=True)
    yield
    subprocess.run(["true"], check=True)


def test_trivial():
    pass


def test_run_waits(helper):
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_fork_and_waitpid():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitpid(pid, 0)[0] == pid


def test_kill_then_wait():
    proc = subprocess.Popen(["sleep", "30"])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM


def test_posix_spawn_and_waitpid():
    pid = os.posix_spawnp("true", ["true"], os.environ)
    assert os.waitpid(pid, 0)[0] == pid
"""

#: The control: the same probe sees the leak path when a test leaks.
LEAKY = """
import os


def test_trivial():
    pass


def test_leaks():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    with open("leaked.pid", "w") as f:
        f.write(str(pid))


def test_after():
    pass
"""


def probe(
    pytester: pytest.Pytester, run_inner: RunInner, tests: str, *args: str
) -> tuple[pytest.RunResult, dict[str, Any]]:
    pytester.makeconftest(PROBE)
    pytester.makepyfile(test_probe=tests)
    result = run_inner(*args)
    with open(pytester.path / "probe.json") as f:
        found: dict[str, Any] = json.load(f)
    return result, found


def test_a_clean_run_never_takes_the_leak_path(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    result, found = probe(pytester, run_inner, CLEAN)
    result.assert_outcomes(passed=5)
    assert result.ret == pytest.ExitCode.OK
    # No finding was made, so none reached the hook, and no report carries
    # one (nor a JUnit property).
    assert found["findings"] == []
    assert found["carriers"] == []
    result.stdout.no_fnmatch_line("*nozombies: *zombie leak*")
    result.stdout.no_fnmatch_line("*left running*")


def test_the_probe_sees_the_leak_path_when_a_test_leaks(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # The control for the test above: the same probe, one leaking test.
    result, found = probe(pytester, run_inner, LEAKY)
    result.assert_outcomes(passed=3, errors=1)
    pid = int((pytester.path / "leaked.pid").read_text())
    nodeid = "test_probe.py::test_leaks"
    assert found["findings"] == [{"pid": pid, "nodeid": nodeid, "kind": "zombie"}]
    # Carried by the report of the phase it was found in, and by no other.
    assert found["carriers"] == [
        {"nodeid": nodeid, "when": "teardown", "pids": [pid], "properties": 1}
    ]


CHECKING_HOOKS = {
    "pytest_runtest_protocol": [],
    "pytest_runtest_setup": ["nozombies-checks"],
    # The call phase starts when setup's report is made, not by a hook
    # around every call.
    "pytest_runtest_call": [],
    "pytest_runtest_teardown": ["nozombies-checks"],
    "pytest_runtest_makereport": ["nozombies-checks"],
    "pytest_runtest_logreport": ["nozombies-results"],
    "pytest_fixture_setup": ["nozombies-checks"],
    "pytest_fixture_post_finalizer": ["nozombies-checks"],
}
OFF_HOOKS = {
    **{hook: [] for hook in PER_TEST_HOOKS},
    # The collector of findings stays, with the JSON report it writes (mode
    # off still writes one); it reads an attribute of each report.
    "pytest_runtest_logreport": ["nozombies-results"],
}
#: What only the checks need: the spawn recorder, the tracker, the hooks
#: around tests, the fixture's machinery.
CHECKING_MODULES = (
    "pytest_nozombies.spawns",
    "pytest_nozombies.tracker",
    "pytest_nozombies.checks",
    "pytest_nozombies.fixture",
)


@pytest.mark.parametrize(
    ("mode", "hooks", "checking_modules_loaded"),
    [("fail", CHECKING_HOOKS, True), ("off", OFF_HOOKS, False)],
)
def test_hooks_around_tests_and_modules_loaded(
    pytester: pytest.Pytester,
    run_inner: RunInner,
    mode: str,
    hooks: dict[str, list[str]],
    checking_modules_loaded: bool,
) -> None:
    result, found = probe(pytester, run_inner, CLEAN, f"--nozombies-mode={mode}")
    result.assert_outcomes(passed=5)
    assert found["hooks"] == hooks
    loaded = set(found["modules"]) & set(CHECKING_MODULES)
    assert loaded == (set(CHECKING_MODULES) if checking_modules_loaded else set())
    # Never loaded unless the option asks for it.
    assert "pytest_nozombies.subreaper" not in found["modules"]
