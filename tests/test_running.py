"""Children left running (issue 16): ``nozombies_running = fail | warn | ignore``.

Each inner test leaves a real child running: ``cat`` reading a pipe that the
inner test keeps open (``KEEP``), so the child sleeps in ``read()`` for as
long as the inner pytest runs and exits by itself when that process ends
and the pipe closes. Nothing outlives the inner run, and no test has to kill
what it examines.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from helpers import DEADLINE, RunInner, line_of

#: Imported by the inner test modules.
INNER_HELPERS = """
import json
import os
import pathlib
import subprocess

#: Every Popen made, kept alive: the pipe stays open, the child keeps running.
KEEP = []


def record(name, value):
    pathlib.Path(f"{name}.json").write_text(json.dumps(value))


def record_pid(child, name="child"):
    # Appended, one pid a line: several tests (and xdist workers) may leave one.
    with open(f"{name}.pids", "a") as f:
        f.write(f"{child.pid}\\n")
"""

RUNNING_HEADING = "test left 1 child process running:"
RUNNING_HINT = "Stop and wait for every child a test starts before it ends*"


def write_inner(pytester: pytest.Pytester, source: str, name: str = "test_x") -> Path:
    pytester.makepyfile(nozhelp=INNER_HELPERS)
    return pytester.makepyfile(**{name: dedent(source)})


def pids(pytester: pytest.Pytester, name: str = "child") -> list[int]:
    path = pytester.path / f"{name}.pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def running_option(value: str) -> tuple[str, str]:
    return ("-o", f"nozombies_running={value}")


# --- fail: the scope that left it answers at once ---------------------------

#: What leaves the child running, and the owner the message names.
LEAVERS = {
    "the test": (
        """
        def test_leaves():
            child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # SPAWN
            KEEP.append(child)
            record_pid(child)
        """,
        "test_x.py::test_leaves (call)",
    ),
    "its function-scoped fixture": (
        """
        @pytest.fixture
        def feeder():
            child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # SPAWN
            KEEP.append(child)
            record_pid(child)
            return child

        def test_leaves(feeder):
            pass
        """,
        "fixture 'feeder' (function scope, setup of test_x.py::test_leaves)",
    ),
    "its setup_function": (
        """
        def setup_function(function):
            if function.__name__ != "test_leaves":
                return
            child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # SPAWN
            KEEP.append(child)
            record_pid(child)

        def test_leaves():
            pass
        """,
        "setup_function (of test_x.py::test_leaves)",
    ),
}


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["one process", "-n 2"])
@pytest.mark.parametrize("leaver", LEAVERS)
def test_running_fail_blames_the_test_that_left_a_child_running(
    pytester: pytest.Pytester, run_inner: RunInner, leaver: str, xdist: list[str]
) -> None:
    code, owner = LEAVERS[leaver]
    path = write_inner(
        pytester,
        dedent(
            """
            import subprocess

            import pytest
            from nozhelp import KEEP, record_pid

            def test_before():
                pass
            """
        )
        + dedent(code)
        + dedent(
            """
            def test_after():
                pass
            """
        ),
    )
    result = run_inner(*running_option("fail"), *xdist)
    [pid] = pids(pytester)
    site = f"test_x.py:{line_of(path)}"
    result.assert_outcomes(passed=3, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_leaves _*",
            RUNNING_HEADING,
            f"  pid {pid}: cat",
            f"    spawned by: subprocess.Popen during {owner}",
            f"    spawned at: {site}",
            RUNNING_HINT,
            "*= nozombies: 1 child left running =*",
            f"{owner}: pid {pid} cat, spawned at {site}",
            "*= short test summary info =*",
            f"ERROR test_x.py::test_leaves - Failed: {RUNNING_HEADING}",
            "*= 3 passed, 1 error, 1 child left running in *",
        ]
    )


def test_running_fail_blames_a_module_fixture_on_the_run(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    path = write_inner(
        pytester,
        """
        import subprocess

        import pytest
        from nozhelp import KEEP, record_pid

        @pytest.fixture(scope="module")
        def server():
            child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # SPAWN
            KEEP.append(child)
            record_pid(child)
            return child

        def test_one(server):
            pass

        def test_two(server):
            pass
        """,
    )
    result = run_inner(*running_option("fail"))
    [pid] = pids(pytester)
    owner = "fixture 'server' (module scope, setup of test_x.py::test_one)"
    # No test is to blame: the run fails, and says why in its summary.
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 child left running =*",
            f"{owner}: pid {pid} cat, spawned at test_x.py:{line_of(path)}",
            "*= 2 passed, 1 child left running in *",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR*")


ALLOWED = {
    "the test": """
        @pytest.mark.allow_zombies(reason="leaves its server to the session")
        def test_leaves():
            leave()
        """,
    "its class": """
        @pytest.mark.allow_zombies
        class TestServer:
            def test_leaves(self):
                leave()
        """,
    "its module": """
        pytestmark = pytest.mark.allow_zombies("leaves its server")

        def test_leaves():
            leave()
        """,
}


@pytest.mark.parametrize("marked", ALLOWED)
def test_running_fail_spares_a_test_marked_allow_zombies(
    pytester: pytest.Pytester, run_inner: RunInner, marked: str
) -> None:
    write_inner(
        pytester,
        dedent(
            """
            import subprocess

            import pytest
            from nozhelp import KEEP, record_pid

            def leave():
                child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
                KEEP.append(child)
                record_pid(child)
            """
        )
        + dedent(ALLOWED[marked])
        + dedent(
            """
            def test_it_still_runs():
                # Left alone: not reported, and not killed either.
                for child in KEEP:
                    assert child.poll() is None
            """
        ),
    )
    result = run_inner(*running_option("fail"))
    assert len(pids(pytester)) == 1
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*left running*")


def test_running_fail_exempts_stdlib_helpers_and_ignore_patterns(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    path = write_inner(
        pytester,
        """
        import multiprocessing
        import os
        import subprocess

        from nozhelp import KEEP, record_pid

        def work():
            pass

        def our_children():
            commands = []
            for tid in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{tid}/children") as f:
                    for pid in f.read().split():
                        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                            commands.append(cmdline.read().replace(b"\\0", b" "))
            return b"\\n".join(commands)

        def test_forkserver():
            # Starts multiprocessing's forkserver and resource tracker, which
            # stay running for the rest of the session, on purpose.
            process = multiprocessing.get_context("forkserver").Process(target=work)
            process.start()
            process.join()
            assert process.exitcode == 0
            running = our_children()
            assert b"multiprocessing.forkserver" in running
            assert b"multiprocessing.resource_tracker" in running

        def test_ignored():
            child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
            KEEP.append(child)

        def test_not_ignored():
            child = subprocess.Popen(["cat", "-"], stdin=subprocess.PIPE)  # SPAWN
            KEEP.append(child)
            record_pid(child)
        """,
    )
    result = run_inner(*running_option("fail"), "-o", "nozombies_ignore=^cat$")
    [pid] = pids(pytester)
    site = f"test_x.py:{line_of(path)}"
    # Only the child the pattern does not match is reported.
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_not_ignored _*",
            RUNNING_HEADING,
            f"  pid {pid}: cat -",
            "*= nozombies: 1 child left running =*",
            f"test_x.py::test_not_ignored (call): pid {pid} cat -, spawned at {site}",
            "*= 3 passed, 1 error, 1 child left running in *",
        ]
    )


def test_running_fail_gives_a_child_the_grace_period_to_exit(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # The child exits half a second after its test: within the grace period
    # it is a zombie the test left (never waited for), not a child left running.
    path = write_inner(
        pytester,
        """
        import subprocess

        from nozhelp import KEEP, record_pid

        def test_leaves():
            child = subprocess.Popen(["sleep", "0.5"])  # SPAWN
            KEEP.append(child)
            record_pid(child)
        """,
    )
    result = run_inner(*running_option("fail"), f"--nozombies-grace={DEADLINE}")
    [pid] = pids(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_leaves _*",
            "test left 1 zombie child process (exited, never waited for):",
            f"  pid {pid}: sleep 0.5",
            "    ended: exited with code 0",
            "    spawned by: subprocess.Popen during test_x.py::test_leaves (call)",
            f"    spawned at: test_x.py:{line_of(path)}",
            "*= nozombies: 1 zombie leak =*",
            "*= 1 passed, 1 error, 1 zombie leak in *",
        ]
    )
    result.stdout.no_fnmatch_line("*left running*")


# --- warn and ignore --------------------------------------------------------

WARN_AND_STOP = """
import subprocess

import pytest
from nozhelp import KEEP, record_pid

@pytest.fixture(scope="module")
def server():
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # SERVER
    KEEP.append(child)
    record_pid(child, "server")
    return child

def test_leaves(server):
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # LEAVES
    KEEP.append(child)
    record_pid(child)

def test_leaves_then_stops():
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    KEEP.append(child)
    record_pid(child, "stopped")

def test_stops_it():
    # Left running by the test before, stopped before the session ends.
    child = KEEP[-1]
    child.stdin.close()
    child.wait()
"""


def test_running_warn_lists_what_still_runs_at_the_end_with_its_owner(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    path = write_inner(pytester, WARN_AND_STOP)
    result = run_inner()  # nozombies_running = warn is the default
    [pid] = pids(pytester)
    [server] = pids(pytester, "server")
    [stopped] = pids(pytester, "stopped")
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 2 children left running =*",
            f"fixture 'server' (module scope, setup of test_x.py::test_leaves): "
            f"pid {server} cat, spawned at test_x.py:{line_of(path, '# SERVER')}",
            f"test_x.py::test_leaves (call): pid {pid} cat, "
            f"spawned at test_x.py:{line_of(path, '# LEAVES')}",
            "*= 3 passed, 2 children left running in *",
        ]
    )
    result.stdout.no_fnmatch_line(f"*pid {stopped}*")
    result.stdout.no_fnmatch_line("*ERROR*")


def test_running_ignore_is_silent(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    write_inner(pytester, WARN_AND_STOP)
    result = run_inner(*running_option("ignore"))
    assert len(pids(pytester)) == 1
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*left running*")
    result.stdout.no_fnmatch_line("*= nozombies*")


# --- the JSON report and JUnit XML ------------------------------------------


@pytest.mark.parametrize(
    ("running", "test_verdict", "fixture_verdict"),
    [
        ("fail", "failed-test", "failed-run"),
        ("warn", "warned", "warned"),
        ("ignore", None, None),
    ],
)
def test_the_json_report_carries_children_left_running_with_their_verdict(
    pytester: pytest.Pytester,
    run_inner: RunInner,
    running: str,
    test_verdict: str | None,
    fixture_verdict: str | None,
) -> None:
    path = write_inner(pytester, WARN_AND_STOP)
    run_inner(*running_option(running), "--nozombies-report=report.json")
    [pid] = pids(pytester)
    [server] = pids(pytester, "server")
    [stopped] = pids(pytester, "stopped")
    report = json.loads((pytester.path / "report.json").read_text())
    assert report["leaks"] == []
    if test_verdict is None or fixture_verdict is None:
        assert report["running"] == []
        return
    by_pid = {entry["pid"]: entry for entry in report["running"]}
    # Under fail the child test_stops_it stops was reported when its own test
    # ended; under warn it no longer runs at the end of the session.
    expected = {pid, server, stopped} if running == "fail" else {pid, server}
    assert set(by_pid) == expected
    assert_running_entry(
        by_pid[pid],
        nodeid="test_x.py::test_leaves",
        owner_text="test_x.py::test_leaves (call)",
        site=f"test_x.py:{line_of(path, '# LEAVES')}",
        verdict=test_verdict,
    )
    assert_running_entry(
        by_pid[server],
        nodeid="test_x.py::test_leaves",
        owner_text="fixture 'server' (module scope, setup of test_x.py::test_leaves)",
        site=f"test_x.py:{line_of(path, '# SERVER')}",
        verdict=fixture_verdict,
    )
    assert by_pid[server]["owner"]["fixture"] == "server"
    assert by_pid[server]["owner"]["scope"] == "module"


def assert_running_entry(
    entry: dict[str, Any], *, nodeid: str, owner_text: str, site: str, verdict: str
) -> None:
    assert entry["kind"] == "running"
    assert entry["argv"] == ["cat"]
    assert entry["command"] == "cat"
    assert entry["spawned_by"] == "subprocess.Popen"
    assert entry["ended"] is None
    assert entry["nodeid"] == nodeid
    assert entry["owner"]["text"] == owner_text
    assert entry["spawn_site"] == site
    assert entry["verdict"] == verdict


@pytest.mark.parametrize(
    "running",
    [
        "fail",
        pytest.param(
            "warn",
            marks=pytest.mark.xfail(
                strict=True,
                reason="children still running at the end of the session are "
                "found after pytest's junitxml plugin has written its file",
            ),
        ),
    ],
)
def test_junit_xml_carries_children_left_running(
    pytester: pytest.Pytester, run_inner: RunInner, running: str
) -> None:
    path = write_inner(pytester, WARN_AND_STOP)
    run_inner(*running_option(running), "--junitxml=junit.xml")
    [pid] = pids(pytester)
    [server] = pids(pytester, "server")
    properties = junit_properties(pytester.path / "junit.xml")
    test_site = f"test_x.py:{line_of(path, '# LEAVES')}"
    fixture_site = f"test_x.py:{line_of(path, '# SERVER')}"
    fixture_owner = "fixture 'server' (module scope, setup of test_x.py::test_leaves)"
    # A property per finding, each the summary's line, on the test case of
    # the test that left it (a fixture's: of the test during which it ended).
    assert properties.get("test_leaves") == [
        f"test_x.py::test_leaves (call): pid {pid} cat, spawned at {test_site}"
    ]
    all_properties = [value for values in properties.values() for value in values]
    assert (
        f"{fixture_owner}: pid {server} cat, spawned at {fixture_site}"
        in all_properties
    )


def junit_properties(path: Path) -> dict[str, list[str]]:
    """The ``nozombies_leak`` properties of each test case, by test name."""
    found: dict[str, list[str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        for prop in case.iter("property"):
            if prop.get("name") == "nozombies_leak":
                found.setdefault(case.get("name", ""), []).append(prop.get("value", ""))
    return found


# --- children that nobody owns ----------------------------------------------

SERVICE_HOOKS = {
    "pytest_configure": ("pytest_configure(config)", "pytest_unconfigure(config)"),
    "pytest_sessionstart": (
        "pytest_sessionstart(session)",
        "pytest_sessionfinish(session)",
    ),
}


@pytest.mark.parametrize("running", ["fail", "warn"])
@pytest.mark.parametrize("started_in", SERVICE_HOOKS)
def test_a_service_a_conftest_starts_for_the_session_is_nobodys(
    pytester: pytest.Pytester, run_inner: RunInner, started_in: str, running: str
) -> None:
    # Started once pytest has started up, stopped as it ends: between
    # owners, never judged (only what conftests spawn while they are
    # imported belongs to the collection).
    start, stop = SERVICE_HOOKS[started_in]
    pytester.makeconftest(
        f"""
        import subprocess

        SERVICE = []

        def {start}:
            SERVICE.append(subprocess.Popen(["cat"], stdin=subprocess.PIPE))

        def {stop}:
            for child in SERVICE:
                child.stdin.close()
                child.wait()
        """
    )
    write_inner(
        pytester,
        """
        def test_uses_the_service():
            pass
        """,
    )
    result = run_inner(*running_option(running))
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*left running*")


@pytest.mark.parametrize("running", ["fail", "warn"])
def test_a_child_a_conftest_leaves_running_as_it_is_imported(
    pytester: pytest.Pytester, run_inner: RunInner, running: str
) -> None:
    conftest = pytester.makeconftest(
        """
        import subprocess

        from nozhelp import KEEP, record_pid

        KEEP.append(subprocess.Popen(["cat"], stdin=subprocess.PIPE))  # SPAWN
        record_pid(KEEP[-1])
        """
    )
    write_inner(
        pytester,
        """
        def test_innocent():
            pass
        """,
    )
    result = run_inner(*running_option(running))
    [pid] = pids(pytester)
    result.assert_outcomes(passed=1)
    expected = pytest.ExitCode.TESTS_FAILED if running == "fail" else pytest.ExitCode.OK
    assert result.ret == expected
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 child left running =*",
            f"import of conftest.py: pid {pid} cat, "
            f"spawned at conftest.py:{line_of(conftest)}",
        ]
    )
