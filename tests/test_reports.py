"""Reports: the summary, pytest-xdist, the JSON report and JUnit XML."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from importlib import resources
from typing import Any

import jsonschema
import pytest

from helpers import RunInner

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")

SUITE = """
import os, subprocess, sys
import pytest

state = {}

def test_clean():
    subprocess.run(["true"], check=True)

def test_kept_popen():
    state["p"] = subprocess.Popen(["sh", "-c", "exit 7"])

def test_fork():
    pid = os.fork()
    if pid == 0:
        os._exit(3)

@pytest.mark.allow_zombies(reason="exercises the marker")
def test_allowed():
    state["q"] = subprocess.Popen(["sh", "-c", "exit 1"])

def test_clean_too():
    pass
"""

LATE = """
import os, subprocess, sys

state = {}

def test_a_leaves_child_running():
    state["p"] = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )

def test_b_lets_it_die():
    p = state["p"]
    p.stdin.close()
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
"""


def load_schema() -> dict[str, Any]:
    text = resources.files("pytest_nozombies").joinpath("report.schema.json")
    schema: dict[str, Any] = json.loads(text.read_text())
    return schema


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_summary_lists_every_leak_and_fails_the_right_tests(
    pytester: pytest.Pytester, run_inner: RunInner, workers: list[str]
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run_inner(*workers)
    result.assert_outcomes(passed=5, errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*ERROR*test_suite.py::test_kept_popen*"])
    result.stdout.fnmatch_lines(["*ERROR*test_suite.py::test_fork*"])
    result.stdout.fnmatch_lines(["*= nozombies: 2 zombie leaks =*"])
    result.stdout.fnmatch_lines(
        [
            "test_suite.py::test_kept_popen (call): pid * sh -c 'exit 7', "
            "exited with code 7, spawned at test_suite.py:10"
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "test_suite.py::test_fork (call): pid * [[]*[]] (forked by os.fork), "
            "exited with code 3, spawned at test_suite.py:13"
        ]
    )
    assert "test_allowed" not in result.stdout.str().split("nozombies: 2")[1]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_late_leak_fails_the_run_also_under_xdist(
    pytester: pytest.Pytester, run_inner: RunInner, workers: list[str]
) -> None:
    pytester.makepyfile(test_late=LATE)
    # loadfile keeps both tests on one worker, as their order requires.
    dist = ["--dist", "loadfile"] if workers else []
    result = run_inner("--nozombies-grace=0", *workers, *dist)
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            "test_late.py::test_a_leaves_child_running (call): pid * "
            "(late: found while test_late.py::test_b_lets_it_die ran)",
        ]
    )


def test_xdist_controller_never_flags_its_workers(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        "\n".join(
            f"def test_{i}():\n    import subprocess; subprocess.run(['true'])\n"
            for i in range(8)
        )
    )
    pytester.makeini("[pytest]\nnozombies_running = fail\n")
    result = run_inner("-n", "2")
    result.assert_outcomes(passed=8)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*= nozombies*")


def test_running_leftovers_come_from_workers(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        """
        import subprocess, sys

        def test_leaves_it():
            test_leaves_it.p = subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.stdin.read()"],
                stdin=subprocess.PIPE,
            )
        """
    )
    result = run_inner("-n", "2", "--nozombies-grace=0")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 child still running =*",
            "*::test_leaves_it (call): pid * spawned at *.py:4",
        ]
    )


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_json_report_matches_the_schema_and_the_run(
    pytester: pytest.Pytester, run_inner: RunInner, workers: list[str]
) -> None:
    pytester.makepyfile(test_suite=SUITE, test_late=LATE)
    dist = ["--dist", "loadfile"] if workers else []
    # The default grace lets test_kept_popen's child finish exiting in time;
    # test_late's child blocks until test_b lets it go.
    result = run_inner("--nozombies-report=out/report.json", *workers, *dist)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    path = pytester.path / "out" / "report.json"
    document = json.loads(path.read_text())
    jsonschema.validate(document, load_schema())
    # Written atomically: no scratch file is left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]
    run = document["run"]
    assert run["exit_status"] == 1
    assert run["settings"]["mode"] == "fail"
    assert run["settings"]["grace"] == 1
    assert run["pytest_version"] == pytest.__version__
    leaks = {leak["nodeid"]: leak for leak in document["leaks"]}
    assert set(leaks) == {
        "test_suite.py::test_kept_popen",
        "test_suite.py::test_fork",
        "test_late.py::test_a_leaves_child_running",
    }
    kept = leaks["test_suite.py::test_kept_popen"]
    assert kept["argv"] == ["sh", "-c", "exit 7"]
    assert kept["ended"]["exit_code"] == 7
    assert kept["spawn_site"] == "test_suite.py:10"
    assert kept["spawned_by"] == "subprocess.Popen"
    assert kept["owner"]["phase"] == "call"
    assert kept["verdict"] == "failed-test"
    assert leaks["test_late.py::test_a_leaves_child_running"]["verdict"] == "failed-run"
    assert not kept["late"]
    late = leaks["test_late.py::test_a_leaves_child_running"]
    assert late["late"]
    assert late["found_during"] == "test_late.py::test_b_lets_it_die"


def test_json_report_in_warn_mode_and_with_no_leaks(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run_inner("--nozombies-mode=warn", "--nozombies-report=r.json")
    assert result.ret == pytest.ExitCode.OK
    document = json.loads((pytester.path / "r.json").read_text())
    jsonschema.validate(document, load_schema())
    assert {leak["verdict"] for leak in document["leaks"]} == {"warned"}
    assert len(document["leaks"]) == 2

    pytester.makepyfile(test_suite="def test_ok():\n    pass\n")
    result = run_inner("--nozombies-report=r.json")
    assert result.ret == pytest.ExitCode.OK
    document = json.loads((pytester.path / "r.json").read_text())
    jsonschema.validate(document, load_schema())
    assert document["leaks"] == []
    assert document["running"] == []


def test_unwritable_report_path_is_a_usage_error_at_start(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    (pytester.path / "afile").write_text("")
    result = run_inner("--nozombies-report=afile/report.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-nozombies: invalid value 'afile/report.json' for "
            "--nozombies-report (command line); expected a file path in a folder "
            "this run can write to*"
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    result.stdout.no_fnmatch_line("*passed*")


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_junit_xml_carries_each_leak_on_its_test_case(
    pytester: pytest.Pytester, run_inner: RunInner, workers: list[str]
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run_inner("--junitxml=junit.xml", *workers)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    tree = ET.parse(pytester.path / "junit.xml")
    properties: dict[str, list[str]] = {}
    for case in tree.iter("testcase"):
        values = [
            prop.get("value", "")
            for prop in case.iter("property")
            if prop.get("name") == "nozombies_leak"
        ]
        if values:
            properties[case.get("name", "")] = values
    assert set(properties) == {"test_kept_popen", "test_fork"}
    [kept] = properties["test_kept_popen"]
    assert "sh -c 'exit 7', exited with code 7, spawned at test_suite.py:10" in kept


def test_child_dying_after_the_last_check_is_still_reported(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makeconftest(
        """
        import os
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_sessionfinish(session):
            # After the last test's check: the child left running dies now.
            import test_last
            proc = test_last.state["proc"]
            proc.stdin.close()
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        """
    )
    pytester.makepyfile(
        test_last="""
        import subprocess, sys

        state = {}

        def test_leaves_it_running():
            state["proc"] = subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.stdin.read()"],
                stdin=subprocess.PIPE,
            )
        """
    )
    result = run_inner("--nozombies-grace=0", "--nozombies-report=r.json")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            "test_last.py::test_leaves_it_running (call): pid * "
            "(late: found while the end of the session ran)",
        ]
    )
    result.stdout.no_fnmatch_line("*still running*")
    document = json.loads((pytester.path / "r.json").read_text())
    assert [leak["late"] for leak in document["leaks"]] == [True]


def test_report_path_from_the_ini_starts_beside_the_ini(
    pytester: pytest.Pytester, run_inner: RunInner, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nnozombies_report = out/r.json\n")
    sub = pytester.mkdir("sub")
    (sub / "test_ok.py").write_text("def test_ok():\n    pass\n")
    monkeypatch.chdir(sub)
    result = run_inner()
    result.assert_outcomes(passed=1)
    assert (pytester.path / "out" / "r.json").exists()
    assert not (sub / "out").exists()
