"""The ``pytest_nozombies_leak(leak, item)`` hook (issue 16), in an inner
conftest, with real zombies and children left running, in one process and
under ``-n 2``.

The inner conftest's hook writes down every call (one JSON line per call,
a file per process), suppresses the findings whose command line says
``suppress-me`` (and a running ``cat``, and any raw fork), annotates those
saying ``annotate-me``, and raises for ``raise-me``.
"""

from __future__ import annotations

import json
from textwrap import dedent
from typing import Any

import pytest

from helpers import RunInner, line_of

INNER_HELPERS = """
import os
import subprocess

#: Every Popen made, kept alive so that Popen.__del__ reaps nothing.
KEEP = []


def wait_exited(pid):
    # Blocks until the child has exited and leaves it a zombie.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def record_pid(pid, name):
    # Appended: under xdist each worker imports the test modules.
    with open(f"{name}.pids", "a") as f:
        f.write(f"{pid}\\n")


def zombie(*argv):
    child = subprocess.Popen(argv)
    KEEP.append(child)
    record_pid(child.pid, argv[-1])
    wait_exited(child.pid)
    return child
"""

CONFTEST = """
import json
import os

import pytest

NOTE = "owned by the cache warmer"


def pytest_nozombies_leak(leak, item):
    with open(f"hook-{os.getpid()}.jsonl", "a") as f:
        call = {
            "pid": leak.pid,
            "kind": leak.kind,
            "argv": leak.argv,
            "argv_type": type(leak.argv).__name__,
            "leak_type": type(leak).__name__,
            "nodeid": leak.nodeid,
            "late": leak.late,
            "item": item.nodeid if item is not None else None,
            "item_type": type(item).__name__,
        }
        f.write(json.dumps(call) + "\\n")
    argv = leak.argv or ()
    if "suppress-me" in argv or leak.spawned_by == "os.fork":
        return False
    if leak.kind == "running" and argv == ("cat",):
        return False
    if "annotate-me" in argv:
        leak.details.append(NOTE)
    if "raise-me" in argv:
        raise RuntimeError("hook bug")
    if leak.late:
        leak.details.append(f"blamed on {item.nodeid}")
    return None
"""

TEST_X = """
import os
import subprocess

from nozhelp import KEEP, record_pid, wait_exited, zombie

zombie("true", "import-leak")
FORKED = []

def test_suppressed():
    zombie("true", "suppress-me")

def test_suppressed_fork():
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    FORKED.append(pid)
    wait_exited(pid)

def test_annotated():
    zombie("true", "annotate-me")

def test_raises():
    zombie("true", "raise-me")

def test_running_suppressed():
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    KEEP.append(child)
    record_pid(child.pid, "cat")

def test_suppressed_ones_were_cleaned_up_as_if_allowed():
    # Through its Popen, which now knows how it ended...
    [suppressed] = [c for c in KEEP if c.args == ("true", "suppress-me")]
    assert suppressed.returncode == 0
    # ... and a raw fork's zombie left for the code that made it.
    [pid] = FORKED
    assert os.waitpid(pid, 0) == (pid, 3 << 8)
"""

TEST_LATE = """
import subprocess

from nozhelp import KEEP, record_pid, wait_exited

def test_spawns():
    child = subprocess.Popen(["cat", "-"], stdin=subprocess.PIPE)  # LATE
    KEEP.append(child)
    record_pid(child.pid, "late")

def test_innocent_while_it_dies():
    child = KEEP[-1]
    child.stdin.close()
    wait_exited(child.pid)
"""


def pids(pytester: pytest.Pytester, name: str) -> list[int]:
    path = pytester.path / f"{name}.pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def hook_calls(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(pytester.path.glob("hook-*.jsonl"))
        for line in path.read_text().splitlines()
    ]


@pytest.mark.parametrize(
    "xdist",
    # loadfile: each module's tests run in order in one worker (one test
    # stops the child the test before it left).
    [[], ["-n", "2", "--dist", "loadfile"]],
    ids=["one process", "-n 2"],
)
def test_the_hook_suppresses_annotates_and_survives_raising(
    pytester: pytest.Pytester, run_inner: RunInner, xdist: list[str]
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(nozhelp=INNER_HELPERS)
    pytester.makepyfile(test_x=dedent(TEST_X))
    late_module = pytester.makepyfile(test_late=dedent(TEST_LATE))
    # nozombies_running = warn (the default): the running cat reaches the
    # hook at the end of the session, the child test_spawns leaves running
    # comes back as a late zombie.
    result = run_inner("--nozombies-report=report.json", *xdist)
    [annotated] = pids(pytester, "annotate-me")
    [raised] = pids(pytester, "raise-me")
    [suppressed] = pids(pytester, "suppress-me")
    [cat] = pids(pytester, "cat")
    [late] = pids(pytester, "late")
    imports = pids(pytester, "import-leak")
    # Each process that collected test_x.py spawned one as it imported it.
    assert len(imports) == (2 if xdist else 1)
    site = "nozhelp.py:*"  # the helper's line that spawned them
    # Suppressed ones pass; the annotated and the raising one are reported.
    result.assert_outcomes(passed=8, errors=2, warnings=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_annotated _*",
            "*test left 1 zombie child process (exited, never waited for):",
            f"  pid {annotated}: true annotate-me",
            "    ended: exited with code 0",
            "    spawned by: subprocess.Popen during test_x.py::test_annotated (call)",
            f"    spawned at: {site}",
            "    via: test_x.py:*",
            "    note: owned by the cache warmer",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_raises _*",
            "*test left 1 zombie child process (exited, never waited for):",
            f"  pid {raised}: true raise-me",
            "    ended: exited with code 0",
            "    spawned by: subprocess.Popen during test_x.py::test_raises (call)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*= warnings summary =*",
            "*PytestWarning: pytest-nozombies: pytest_nozombies_leak raised "
            "RuntimeError('hook bug')",
        ]
    )
    leaks = 3 + len(imports)
    result.stdout.fnmatch_lines([f"*= nozombies: {leaks} zombie leaks =*"])
    result.stdout.fnmatch_lines(
        [
            f"test_x.py::test_annotated (call): pid {annotated} true annotate-me, "
            f"exited with code 0, spawned at {site}, owned by the cache warmer",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"test_late.py::test_spawns (call): pid {late} cat -, exited with code 0, "
            f"spawned at test_late.py:{line_of(late_module, '# LATE')}, "
            "blamed on test_late.py::test_spawns "
            "(late: found while test_late.py::test_innocent_while_it_dies ran)",
        ]
    )
    for pid in imports:
        result.stdout.fnmatch_lines(
            [f"import of test_x.py: pid {pid} true import-leak, exited with code 0, *"]
        )
    for pid in (suppressed, cat):
        result.stdout.no_fnmatch_line(f"*pid {pid}*")
    result.stdout.no_fnmatch_line("*left running*")

    # The JSON report: what was reported, with the notes; nothing suppressed.
    report = json.loads((pytester.path / "report.json").read_text())
    assert report["running"] == []
    by_pid = {entry["pid"]: entry for entry in report["leaks"]}
    assert set(by_pid) == {annotated, raised, late, *imports}
    assert by_pid[annotated]["details"] == ["owned by the cache warmer"]
    assert by_pid[raised]["details"] == []
    assert by_pid[late]["details"] == ["blamed on test_late.py::test_spawns"]
    assert by_pid[late]["verdict"] == "failed-run"

    # One call per finding, with the typed record and the blamed test.
    calls = hook_calls(pytester)
    by_pid_calls = {call["pid"]: call for call in calls}
    assert len(calls) == len(by_pid_calls) == 6 + len(imports)
    forked = set(by_pid_calls) - {annotated, raised, suppressed, cat, late, *imports}
    assert len(forked) == 1
    expected = {
        suppressed: ("zombie", ["true", "suppress-me"], "test_x.py::test_suppressed"),
        annotated: ("zombie", ["true", "annotate-me"], "test_x.py::test_annotated"),
        raised: ("zombie", ["true", "raise-me"], "test_x.py::test_raises"),
        cat: ("running", ["cat"], "test_x.py::test_running_suppressed"),
        forked.pop(): ("zombie", None, "test_x.py::test_suppressed_fork"),
        # Found while another test ran: still the test that spawned it.
        late: ("zombie", ["cat", "-"], "test_late.py::test_spawns"),
    }
    for pid, (kind, argv, nodeid) in expected.items():
        call = by_pid_calls[pid]
        assert (call["kind"], call["argv"], call["item"]) == (kind, argv, nodeid)
        assert call["nodeid"] == nodeid
        assert call["item_type"] == "Function"
        assert call["leak_type"] == "Leak"
        assert call["argv_type"] == ("NoneType" if argv is None else "tuple")
    assert by_pid_calls[late]["late"] is True
    for pid in imports:
        call = by_pid_calls[pid]
        # An import's: no test is to blame.
        assert (call["item"], call["item_type"]) == (None, "NoneType")
        assert call["nodeid"] == "test_x.py"
        assert call["argv"] == ["true", "import-leak"]


def test_a_conftest_hook_marked_optional_is_harmless_without_the_plugin(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(optionalhook=True)
        def pytest_nozombies_leak(leak, item):
            return False
        """
    )
    pytester.makepyfile(
        """
        def test_plain():
            pass
        """
    )
    result = run_inner("-p", "no:nozombies")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK


def test_the_hook_sees_children_left_running_when_their_test_ends(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(nozhelp=INNER_HELPERS)
    path = pytester.makepyfile(
        test_x="""
        import subprocess

        from nozhelp import KEEP, record_pid

        def test_suppressed():
            child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
            KEEP.append(child)
            record_pid(child.pid, "cat")

        def test_annotated():
            child = subprocess.Popen(  # SPAWN
                ["cat", "-", "annotate-me"], stdin=subprocess.PIPE
            )
            KEEP.append(child)
            record_pid(child.pid, "annotate-me")
        """
    )
    result = run_inner("-o", "nozombies_running=fail")
    [cat] = pids(pytester, "cat")
    [annotated] = pids(pytester, "annotate-me")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_annotated _*",
            "test left 1 child process running:",
            f"  pid {annotated}: cat - annotate-me",
            "    spawned by: subprocess.Popen during test_x.py::test_annotated (call)",
            f"    spawned at: test_x.py:{line_of(path, '# SPAWN')}",
            "    note: owned by the cache warmer",
            "*= nozombies: 1 child left running =*",
            f"test_x.py::test_annotated (call): pid {annotated} cat - annotate-me, "
            "spawned at *, owned by the cache warmer",
        ]
    )
    result.stdout.no_fnmatch_line(f"*pid {cat}*")
    calls = {call["pid"]: call for call in hook_calls(pytester)}
    assert set(calls) == {cat, annotated}
    assert calls[cat]["item"] == "test_x.py::test_suppressed"
    assert calls[annotated]["item"] == "test_x.py::test_annotated"
    assert {call["kind"] for call in calls.values()} == {"running"}


def test_a_raising_hook_made_an_error_by_w_error_still_reports_the_leak(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(nozhelp=INNER_HELPERS)
    pytester.makepyfile(
        test_x="""
        from nozhelp import zombie

        def test_raises():
            zombie("true", "raise-me")

        def test_annotated():
            zombie("true", "annotate-me")
        """
    )
    result = run_inner(
        "-W", "error::pytest.PytestWarning", "--nozombies-report=report.json"
    )
    [raised] = pids(pytester, "raise-me")
    [annotated] = pids(pytester, "annotate-me")
    # The warning is an error of the test now; its leak is still reported.
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_raises _*",
            "E   *PytestWarning: pytest-nozombies: pytest_nozombies_leak raised "
            "RuntimeError('hook bug')",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 2 zombie leaks =*",
            f"test_x.py::test_raises (call): pid {raised} true raise-me, *",
            f"test_x.py::test_annotated (call): pid {annotated} true annotate-me, "
            "*, owned by the cache warmer",
        ]
    )
    report = json.loads((pytester.path / "report.json").read_text())
    verdicts = {entry["pid"]: entry["verdict"] for entry in report["leaks"]}
    assert verdicts == {raised: "failed-test", annotated: "failed-test"}
