"""Reports: the summary and the closing line, pytest-xdist, the JSON report,
JUnit XML, ``--lf``, and text that came from hostile command lines."""

from __future__ import annotations

import json
import os
import shlex
import textwrap
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from helpers import DEADLINE, RunInner, read_report

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

def test_c():
    pass

def test_d():
    pass
"""

#: A module-scoped fixture whose child exits and is never waited for: found
#: when the fixture is finalized, after its tests reported.
FIXTURE_LEAK = """
import os, subprocess
import pytest

@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen(["sh", "-c", "exit 2"])
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    yield proc

def test_a(server):
    pass

def test_b(server):
    pass

def test_c():
    pass

def test_d():
    pass
"""

#: A conftest whose import leaves a zombie: judged when collection ends.
IMPORT_LEAK = """
import os, subprocess

_server = subprocess.Popen(["sh", "-c", "exit 5"])
os.waitid(os.P_PID, _server.pid, os.WEXITED | os.WNOWAIT)
"""

FOUR_TESTS = "".join(f"def test_{i}():\n    pass\n\n" for i in range(4))


def line_of(source: str, text: str) -> int:
    """The line of ``source``, as pytester writes it, that holds ``text``."""
    lines = textwrap.dedent(source).strip().splitlines()
    [number] = [i for i, line in enumerate(lines, 1) if text in line]
    return number


def run_with_cache(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """``run_inner`` with pytest's cache provider on (for ``--lf``)."""
    return pytester.runpytest_subprocess(*args, timeout=DEADLINE * 4)


def leaks_by_nodeid(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {leak["nodeid"]: leak for leak in document["leaks"]}
    assert len(found) == len(document["leaks"]), "one leak per node id expected"
    return found


# --- the terminal summary ---------------------------------------------------


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
    result.stdout.fnmatch_lines(["*= 5 passed, 2 errors, 2 zombie leaks in *"])


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_late_leak_fails_the_run_also_under_xdist(
    pytester: pytest.Pytester, run_inner: RunInner, workers: list[str]
) -> None:
    pytester.makepyfile(test_late=LATE)
    # loadfile keeps both tests on one worker, as their order requires.
    dist = ["--dist", "loadfile"] if workers else []
    result = run_inner("--nozombies-grace=0", *workers, *dist)
    result.assert_outcomes(passed=4)
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
            "*= nozombies: 1 child left running =*",
            "*::test_leaves_it (call): pid * spawned at *.py:4",
            "*= 1 passed, 1 child left running in *",
        ]
    )


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
    result.stdout.no_fnmatch_line("*left running*")
    document = read_report(pytester.path / "r.json")
    [leak] = document["leaks"]
    assert leak["late"]
    assert leak["found_during"] == "the end of the session"
    assert leak["verdict"] == "failed-run"
    assert document["running"] == []


# --- totals that agree with the exit status ---------------------------------


@pytest.mark.parametrize(
    ("files", "args", "blamed"),
    [
        ({"test_late": LATE}, ["--nozombies-grace=0"], "test_late.py::test_a_*"),
        ({"test_fixture": FIXTURE_LEAK}, [], "fixture 'server' (module scope, *"),
        (
            {"conftest": IMPORT_LEAK, "test_four": FOUR_TESTS},
            [],
            "import of conftest.py",
        ),
    ],
    ids=["late", "fixture", "import"],
)
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_closing_line_counts_leaks_that_fail_only_the_run(
    pytester: pytest.Pytester,
    run_inner: RunInner,
    files: dict[str, str],
    args: list[str],
    blamed: str,
    workers: list[str],
) -> None:
    # Every test passes; the exit status is 1 because of the leak alone, and
    # the closing line says why, the way it counts warnings.
    for name, source in files.items():
        if name == "conftest":
            pytester.makeconftest(source)
        else:
            pytester.makepyfile(**{name: source})
    dist = ["--dist", "loadfile"] if workers else []
    result = run_inner(*args, *workers, *dist)
    result.assert_outcomes(passed=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    leaks = 1
    if workers and "conftest" in files:
        leaks = 3  # the controller and each worker import it
    noun = "zombie leak" if leaks == 1 else "zombie leaks"
    result.stdout.fnmatch_lines(
        [f"*= nozombies: {leaks} {noun} =*", f"{blamed}: pid *"]
    )
    result.stdout.fnmatch_lines([f"*= 4 passed, {leaks} {noun} in *"])


@pytest.mark.parametrize(
    ("body", "outcome"),
    [("assert False", "xfailed"), ("pass", "xpassed")],
    ids=["xfail", "xpass"],
)
def test_leak_in_an_xfail_test_still_fails_the_run(
    pytester: pytest.Pytester, run_inner: RunInner, body: str, outcome: str
) -> None:
    source = f"""
        import os, subprocess
        import pytest

        kept = []

        @pytest.mark.xfail(reason="a known bug")
        def test_known_bug():
            kept.append(subprocess.Popen(["sh", "-c", "exit 6"]))
            os.waitid(os.P_PID, kept[-1].pid, os.WEXITED | os.WNOWAIT)
            {body}

        def test_other():
            pass
        """
    pytester.makepyfile(test_xfail=source)
    result = run_inner("--nozombies-report=r.json")
    # xfail turns the teardown error into an expected failure; the leak
    # still fails the run, like a fixture's.
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            "test_xfail.py::test_known_bug (call): pid * sh -c 'exit 6', "
            f"exited with code 6, spawned at test_xfail.py:{line_of(source, 'exit 6')}",
        ]
    )
    # (pytest counts the teardown error of an xfail test as one more xfailed)
    result.stdout.fnmatch_lines([f"*{outcome}, 1 zombie leak in *"])
    [leak] = read_report(pytester.path / "r.json")["leaks"]
    assert leak["nodeid"] == "test_xfail.py::test_known_bug"
    assert leak["verdict"] == "failed-run"


@pytest.mark.parametrize(
    ("files", "blamed"),
    [
        ({"test_late": LATE}, ["test_late.py::test_a_leaves_child_running"]),
        ({"test_fixture": FIXTURE_LEAK}, ["test_fixture.py::test_a"]),
    ],
    ids=["late", "fixture"],
)
def test_lf_reruns_a_test_blamed_after_it_reported(
    pytester: pytest.Pytester, files: dict[str, str], blamed: list[str]
) -> None:
    pytester.makepyfile(**files)
    first = run_with_cache(pytester, "--nozombies-grace=0")
    first.assert_outcomes(passed=4)
    assert first.ret == pytest.ExitCode.TESTS_FAILED
    again = run_with_cache(pytester, "--lf", "-v", "--nozombies-grace=0")
    again.stdout.fnmatch_lines([f"run-last-failure: rerun previous {len(blamed)} *"])
    ran = [line.split()[0] for line in again.stdout.lines if " PASSED" in line]
    assert ran == blamed


# --- the JSON report ----------------------------------------------------------


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
    document = read_report(path)
    # Written atomically: no scratch file is left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]
    assert document["schema"] == "pytest-nozombies-report"
    assert document["version"] == 2
    run = document["run"]
    assert run["exit_status"] == 1
    assert run["settings"] == {
        "mode": "fail",
        "grace": 1.0,
        "running": "warn",
        "ignore": [],
        "report": str(path),
        "subreaper": False,
    }
    assert run["pytest_version"] == pytest.__version__
    leaks = leaks_by_nodeid(document)
    assert set(leaks) == {
        "test_suite.py::test_kept_popen",
        "test_suite.py::test_fork",
        "test_late.py::test_a_leaves_child_running",
    }
    kept = leaks["test_suite.py::test_kept_popen"]
    assert kept["kind"] == "zombie"
    assert kept["argv"] == ["sh", "-c", "exit 7"]
    assert kept["command"] == "sh -c 'exit 7'"
    assert kept["ended"]["exit_code"] == 7
    assert kept["spawn_site"] == "test_suite.py:10"
    assert kept["spawned_by"] == "subprocess.Popen"
    assert kept["owner"]["phase"] == "call"
    assert kept["verdict"] == "failed-test"
    assert not kept["late"]
    fork = leaks["test_suite.py::test_fork"]
    assert fork["argv"] is None
    assert fork["spawned_by"] == "os.fork"
    assert fork["command"].endswith("] (forked by os.fork)")
    late = leaks["test_late.py::test_a_leaves_child_running"]
    assert late["verdict"] == "failed-run"
    assert late["late"]
    assert late["found_during"] == "test_late.py::test_b_lets_it_die"
    assert document["running"] == []


#: Every field of a finding, each filled by one of these leaks; every test
#: notes its child's pid (and its spawning line) for the assertions.
FIELDS_CONFTEST = """
import json, os, pathlib, subprocess

def note(name, pid):
    folder = pathlib.Path(__file__).parent / "pids"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}-{pid}").write_text("")

_server = subprocess.Popen(["sh", "-c", "exit 5"])
os.waitid(os.P_PID, _server.pid, os.WEXITED | os.WNOWAIT)
note("import", _server.pid)

def pytest_nozombies_leak(leak, item):
    leak.details.append(f"hook saw {leak.kind} {leak.pid}")
"""

FIELDS_LIBRARY = """
import subprocess

def start_worker():
    return subprocess.Popen(["sh", "-c", "exit 8"])
"""

FIELDS_TESTS = """
import os, subprocess, sys, threading
from concurrent.futures import ThreadPoolExecutor
import pytest
from conftest import note
from worker_lib import start_worker

kept = []

def exited(pid):
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)

@pytest.fixture(scope="module")
def server():
    kept.append(subprocess.Popen(["sh", "-c", "exit 2"]))
    note("fixture", kept[-1].pid)
    exited(kept[-1].pid)
    yield

def test_uses_server(server):
    pass

def test_in_a_thread():
    def spawn():
        kept.append(subprocess.Popen(["sh", "-c", "exit 4"]))
    thread = threading.Thread(target=spawn, name="spawner")
    thread.start()
    thread.join()
    note("thread", kept[-1].pid)
    exited(kept[-1].pid)

def test_bare_thread():
    # No line of the user's code on the spawning thread's stack.
    with ThreadPoolExecutor(thread_name_prefix="bare") as executor:
        spawn = executor.submit(os.posix_spawnp, "sh", ["sh", "-c", "exit 9"], {})
        pid = spawn.result()
    note("bare", pid)
    exited(pid)

def test_through_a_library():
    kept.append(start_worker())
    note("library", kept[-1].pid)
    exited(kept[-1].pid)

def test_killed():
    kept.append(subprocess.Popen(["sleep", "60"]))
    note("killed", kept[-1].pid)
    kept[-1].kill()
    exited(kept[-1].pid)

def test_left_running():
    kept.append(
        subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE,
        )
    )
    note("running", kept[-1].pid)
"""


def noted_pids(folder: Path) -> dict[str, list[int]]:
    pids: dict[str, list[int]] = {}
    for path in folder.iterdir():
        name, pid = path.name.split("-")
        pids.setdefault(name, []).append(int(pid))
    return pids


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_json_report_holds_every_field_of_a_finding(
    pytester: pytest.Pytester, run_inner: RunInner, workers: list[str]
) -> None:
    pytester.makeconftest(FIELDS_CONFTEST)
    pytester.makepyfile(worker_lib=FIELDS_LIBRARY, test_fields=FIELDS_TESTS)
    dist = ["--dist", "loadfile"] if workers else []
    result = run_inner("--nozombies-report=r.json", *workers, *dist)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    document = read_report(pytester.path / "r.json")
    pids = noted_pids(pytester.path / "pids")
    import_line = line_of(FIELDS_CONFTEST, "exit 5")
    library_line = line_of(FIELDS_LIBRARY, "exit 8")

    def line(text: str) -> int:
        return line_of(FIELDS_TESTS, text)

    leaks = [leak for leak in document["leaks"] if leak["nodeid"] != "conftest.py"]
    by_test = leaks_by_nodeid({"leaks": leaks})

    # The conftest's import: once per process that imported it.
    imports = [leak for leak in document["leaks"] if leak["nodeid"] == "conftest.py"]
    assert sorted(leak["pid"] for leak in imports) == sorted(pids["import"])
    for leak in imports:
        assert leak["owner"] == {
            "nodeid": "conftest.py",
            "phase": "collect",
            "fixture": None,
            "scope": None,
            "text": "import of conftest.py",
        }
        assert leak["spawn_site"] == f"conftest.py:{import_line}"
        assert leak["stack"][0] == f"conftest.py:{import_line} in <module>"
        assert leak["verdict"] == "failed-run"
        assert leak["details"] == [f"hook saw zombie {leak['pid']}"]

    fixture = by_test["test_fields.py::test_uses_server"]
    assert fixture["pid"] == pids["fixture"][0]
    assert fixture["owner"] == {
        "nodeid": "test_fields.py::test_uses_server",
        "phase": "setup",
        "fixture": "server",
        "scope": "module",
        "text": "fixture 'server' (module scope, setup of "
        "test_fields.py::test_uses_server)",
    }
    assert fixture["verdict"] == "failed-run"
    assert fixture["spawn_site"] == f"test_fields.py:{line('exit 2')}"

    thread = by_test["test_fields.py::test_in_a_thread"]
    assert thread["pid"] == pids["thread"][0]
    assert thread["thread"] == "spawner"
    assert thread["spawn_site"] == f"test_fields.py:{line('exit 4')}"
    assert thread["verdict"] == "failed-test"

    bare = by_test["test_fields.py::test_bare_thread"]
    assert bare["spawned_by"] == "os.posix_spawnp"
    assert bare["argv"] == ["sh", "-c", "exit 9"]
    assert bare["pid"] == pids["bare"][0]
    assert bare["thread"] == "bare_0"
    assert bare["spawn_site"] is None
    assert bare["site_note"] == (
        "spawned from thread 'bare_0', whose stack holds none of your code; "
        f"the test is at test_fields.py:{line('def test_bare_thread')}"
    )
    assert bare["test_site"] is None

    library = by_test["test_fields.py::test_through_a_library"]
    assert library["pid"] == pids["library"][0]
    assert library["spawn_site"] == f"worker_lib.py:{library_line}"
    assert library["test_site"] == f"test_fields.py:{line('start_worker()')}"
    assert library["site_note"] is None

    killed = by_test["test_fields.py::test_killed"]
    assert killed["pid"] == pids["killed"][0]
    assert killed["ended"] == {
        "exit_code": None,
        "signal": 9,
        "signal_name": "SIGKILL",
        "core_dumped": False,
        "text": "killed by SIGKILL (9)",
    }
    assert killed["argv"] == ["sleep", "60"]
    assert killed["command"] == "sleep 60"
    assert killed["spawned_by"] == "subprocess.Popen"
    assert killed["stack"][0] == f"test_fields.py:{line('sleep')} in test_killed"
    assert killed["details"] == [f"hook saw zombie {killed['pid']}"]
    for leak in document["leaks"]:
        assert leak["kind"] == "zombie"
        assert not leak["late"]
        assert leak["found_during"] is None

    [running] = document["running"]
    assert running["pid"] == pids["running"][0]
    assert running["kind"] == "running"
    assert running["nodeid"] == "test_fields.py::test_left_running"
    assert running["ended"] is None
    assert running["verdict"] == "warned"
    assert (
        running["spawn_site"] == f"test_fields.py:{line('        subprocess.Popen(')}"
    )
    assert running["command"].endswith(" -c 'import sys; sys.stdin.read()'")
    assert running["details"] == [f"hook saw running {running['pid']}"]


DELETE = object()


def changed(document: dict[str, Any], path: tuple[str | int, ...], value: Any) -> Any:
    """A copy of ``document`` with the value at ``path`` replaced (or deleted)."""
    copy = json.loads(json.dumps(document))
    *parents, last = path
    target = copy
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return copy


def test_the_schema_rejects_what_the_plugin_never_writes(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # The schema is exact, so the validations above can fail.
    pytester.makepyfile(test_suite=SUITE)
    run_inner("--nozombies-report=r.json")
    document = read_report(pytester.path / "r.json")
    schema = json.loads(
        resources.files("pytest_nozombies").joinpath("report.schema.json").read_text()
    )
    validator = jsonschema.Draft202012Validator(schema)
    leak = document["leaks"][0]
    assert validator.is_valid(document)
    for path, value in [
        (("version",), 1),
        (("leaks", 0, "kind"), "running"),
        (("leaks", 0, "verdict"), "failed"),
        (("leaks", 0, "extra"), 1),
        (("leaks", 0, "details"), DELETE),
        (("leaks", 0, "owner", "phase"), "collection"),
        (("leaks", 0, "ended", "signal"), "SIGKILL"),
        (("run", "settings", "mode"), "strict"),
        (("running",), [dict(leak, kind="running")]),  # ended, not null
    ]:
        assert not validator.is_valid(changed(document, path, value)), path


def test_json_report_in_warn_mode_and_with_no_leaks(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run_inner("--nozombies-mode=warn", "--nozombies-report=r.json")
    assert result.ret == pytest.ExitCode.OK
    document = read_report(pytester.path / "r.json")
    assert {leak["verdict"] for leak in document["leaks"]} == {"warned"}
    assert len(document["leaks"]) == 2
    assert document["run"]["settings"]["mode"] == "warn"

    pytester.makepyfile(test_suite="def test_ok():\n    pass\n")
    result = run_inner("--nozombies-report=r.json")
    assert result.ret == pytest.ExitCode.OK
    document = read_report(pytester.path / "r.json")
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
            "--nozombies-report (command line); expected a regular file in a "
            "folder this run can write to (Not a directory)"
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    result.stdout.no_fnmatch_line("*passed*")


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


# --- JUnit XML ------------------------------------------------------------------


def junit_properties(path: Path) -> dict[str, list[str]]:
    properties: dict[str, list[str]] = {}
    for case in ET.parse(path).iter("testcase"):
        values = [
            prop.get("value", "")
            for prop in case.iter("property")
            if prop.get("name") == "nozombies_leak"
        ]
        if values:
            properties[case.get("name", "")] = values
    return properties


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_junit_xml_carries_each_leak_on_its_test_case(
    pytester: pytest.Pytester, run_inner: RunInner, workers: list[str]
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run_inner("--junitxml=junit.xml", *workers)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    properties = junit_properties(pytester.path / "junit.xml")
    assert set(properties) == {"test_kept_popen", "test_fork"}
    [kept] = properties["test_kept_popen"]
    assert kept.startswith("test_suite.py::test_kept_popen (call): pid ")
    assert kept.endswith(
        " sh -c 'exit 7', exited with code 7, spawned at test_suite.py:10"
    )


def test_junit_xml_carries_leaks_found_before_the_teardown(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # A leak found mid-test (nozombies.check()) rides on the call report;
    # junitxml writes only the teardown report's properties.
    pytester.makepyfile(
        test_mid="""
        import os, subprocess
        import pytest

        KEPT = []

        def test_checks_mid_test(nozombies):
            KEPT.append(subprocess.Popen(["sh", "-c", "exit 9"]))
            os.waitid(os.P_PID, KEPT[-1].pid, os.WEXITED | os.WNOWAIT)
            with pytest.raises(pytest.fail.Exception):
                nozombies.check()
        """
    )
    result = run_inner("--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    properties = junit_properties(pytester.path / "junit.xml")
    [found] = properties["test_checks_mid_test"]
    assert found.startswith("test_mid.py::test_checks_mid_test (call): pid ")
    assert "sh -c 'exit 9', exited with code 9" in found


# --- hostile command lines ------------------------------------------------------

#: One test whose child has the given argv (a Python expression); it notes
#: the child's pid and waits until it has exited, without reaping it.
HOSTILE = """
import os, subprocess

kept = []

def test_hostile():
    kept.append(subprocess.Popen({argv}))
    with open("child.pid", "w") as f:
        f.write(str(kept[-1].pid))
    os.waitid(os.P_PID, kept[-1].pid, os.WEXITED | os.WNOWAIT)
"""
HOSTILE_LINE = line_of(HOSTILE, "subprocess.Popen(")


def run_hostile(
    pytester: pytest.Pytester, run_inner: RunInner, argv: str, *args: str
) -> tuple[pytest.RunResult, int]:
    pytester.makepyfile(test_hostile=HOSTILE.format(argv=argv))
    result = run_inner("--junitxml=junit.xml", "--nozombies-report=r.json", *args)
    return result, int((pytester.path / "child.pid").read_text())


def summary_line(pid: int, command: str) -> str:
    return (
        f"test_hostile.py::test_hostile (call): pid {pid} {command}, "
        f"exited with code 3, spawned at test_hostile.py:{HOSTILE_LINE}"
    )


CONTROL_ARGV = ["sh", "-c", "exit 3", "sh", "\x1b[31mred", "two\nlines", "tab\there"]
#: As the terminal and JUnit show it: every character printable.
CONTROL_SHOWN = r"sh -c 'exit 3' sh '\x1b[31mred' 'two\nlines' 'tab\there'"


@pytest.mark.parametrize("mode", ["fail", "warn"])
def test_control_characters_are_escaped_in_every_text_output(
    pytester: pytest.Pytester, run_inner: RunInner, mode: str
) -> None:
    result, pid = run_hostile(
        pytester, run_inner, repr(CONTROL_ARGV), f"--nozombies-mode={mode}"
    )
    output = result.stdout.str()
    # Nothing reaches the terminal raw: no escape sequence, and the argument
    # with a newline does not split the one-line summary.
    assert "\x1b" not in output
    assert "\t" not in output
    assert not any(line.startswith("lines'") for line in result.stdout.lines)
    # The failure message (or the warning), then the summary line.
    message = [line.strip() for line in result.stdout.lines if "pid" in line]
    assert f"pid {pid}: {CONTROL_SHOWN}" in message
    assert summary_line(pid, CONTROL_SHOWN) in result.stdout.lines
    assert junit_properties(pytester.path / "junit.xml") == {
        "test_hostile": [summary_line(pid, CONTROL_SHOWN)]
    }
    # The JSON report keeps the argv exactly (as JSON escapes).
    [leak] = read_report(pytester.path / "r.json")["leaks"]
    assert leak["argv"] == CONTROL_ARGV
    assert leak["command"] == shlex.join(CONTROL_ARGV)


def test_long_command_line_is_shortened_in_the_terminal_and_junit(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # 1.5 MB of arguments (one argument may not exceed 128 kB on Linux).
    argv = ["sh", "-c", "exit 3", "sh"] + [f"{i:02}" + "a" * 99_998 for i in range(15)]
    result, pid = run_hostile(pytester, run_inner, repr(argv))
    result.assert_outcomes(passed=1, errors=1)
    command = shlex.join(argv)
    cut = len(command) - 300
    shown = f"{command[:300]}... ({cut:,} more characters)"
    assert cut > 1_499_000
    lines = result.stdout.lines
    assert f"  pid {pid}: {shown}" in lines  # the failure message
    assert summary_line(pid, shown) in lines
    # Shown shortened, once in the message and once in the summary, never
    # in full.
    output = result.stdout.str()
    assert output.count(command[:300]) == 2
    assert len(output) < 20_000
    assert junit_properties(pytester.path / "junit.xml") == {
        "test_hostile": [summary_line(pid, shown)]
    }
    assert (pytester.path / "junit.xml").stat().st_size < 20_000
    # The JSON report is the full record.
    [leak] = read_report(pytester.path / "r.json")["leaks"]
    assert leak["argv"] == argv


def test_non_utf8_arguments_are_valid_utf8_in_the_json(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    argv = '["sh", "-c", "exit 3", "sh", b"caf\\xe9", b"\\xff\\xfe", "ok"]'
    result, pid = run_hostile(pytester, run_inner, argv)
    result.assert_outcomes(passed=1, errors=1)
    # read_report decodes the file strictly, rejects surrogate escapes, and
    # validates it against the schema, which says how such bytes are written.
    document = read_report(pytester.path / "r.json")
    [leak] = document["leaks"]
    assert leak["argv"] == ["sh", "-c", "exit 3", "sh", r"caf\xe9", r"\xff\xfe", "ok"]
    assert leak["command"] == r"sh -c 'exit 3' sh 'caf\xe9' '\xff\xfe' ok"
    shown = r"sh -c 'exit 3' sh 'caf\xe9' '\xff\xfe' ok"
    assert summary_line(pid, shown) in result.stdout.lines
    assert junit_properties(pytester.path / "junit.xml") == {
        "test_hostile": [summary_line(pid, shown)]
    }
