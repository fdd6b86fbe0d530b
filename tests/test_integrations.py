"""End to end with other pytest plugins installed: each one's own way of running
tests must neither crash the plugin nor blur who leaked what.

Every test here runs a real inner pytest in a subprocess with the real plugin
installed, so each test skips unless its plugin is importable: the tox env
``integrations`` installs pytest-timeout, pytest-rerunfailures, pytest-randomly
and pytest-repeat; ``integrations-pytest8`` adds pytest-forked, which does not
work on pytest 9. Doctest items and pytester need nothing but pytest and run
in every env.

pytest-randomly is loaded by every pytest that can import it, so every inner
run passes ``-p no:randomly`` except the one that is about random order.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from helpers import RunInner

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")

NO_RANDOMLY = ("-p", "no:randomly")
#: The same inner run in one process, and under two pytest-xdist workers.
XDIST = pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["serial", "xdist"])

#: Imported by the inner test modules (pytester's folder is on sys.path).
INNER_HELPERS = """
import pathlib
import subprocess
import time

import psutil

HERE = pathlib.Path(__file__).parent
# CPython's Popen.__del__ reaps an exited child: keep every leaked Popen alive.
KEPT = []


def wait_exited(pid, timeout=30.0):
    # Until the child has exited, leaving it a zombie. psutil rather than
    # os.waitid(WNOWAIT), which macOS only has from Python 3.13.
    deadline = time.monotonic() + timeout
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() > deadline:
            raise TimeoutError(f"child {pid} did not exit within {timeout}s")
        time.sleep(0.005)


def record_pid(pid, name):
    # Appends, so that each attempt of a rerun adds a line. Beside this file,
    # whatever the working folder (pytester changes it).
    with (HERE / f"{name}.pids").open("a") as pids:
        pids.write(f"{pid}\\n")


def leak(name="leak"):
    # A real zombie: the child has exited and nobody waited for it.
    p = subprocess.Popen(["true"])  # SPAWN
    KEPT.append(p)
    wait_exited(p.pid)
    record_pid(p.pid, name)
    return p


def assert_no_zombie():
    zombies = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    assert not zombies, f"zombies were left for this test: {zombies}"
"""

HINT = "Wait for every child you start*"


def write_inner(pytester: pytest.Pytester, **modules: str) -> None:
    pytester.makepyfile(nozhelp=INNER_HELPERS, **modules)


def line_of(path: Path, marker: str) -> str:
    """``name:line`` of the one line of ``path`` that carries ``marker``."""
    lines = path.read_text().splitlines()
    (number,) = (n for n, line in enumerate(lines, start=1) if marker in line)
    return f"{path.name}:{number}"


def spawn_site(pytester: pytest.Pytester) -> str:
    """Where the inner helper spawns: the line marked ``# SPAWN`` in nozhelp.py."""
    return line_of(pytester.path / "nozhelp.py", "# SPAWN")


def read_pids(pytester: pytest.Pytester, name: str = "leak") -> list[int]:
    path = pytester.path / f"{name}.pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def read_report(pytester: pytest.Pytester, name: str = "report.json") -> Any:
    return json.loads((pytester.path / name).read_text())


def literal(text: str) -> str:
    """``text`` as an fnmatch pattern that matches only itself."""
    return re.sub(r"([*?[])", r"[\1]", text)


def leak_block(
    teardown_of: str,
    nodeid: str,
    pid: int,
    site: str,
    *,
    via: str | None = None,
    command: str = "true",
    ended: str = "exited with code 0",
    owner: str | None = None,
) -> list[str]:
    """The lines, as fnmatch patterns, of the teardown error of a test that
    left one zombie spawned in its call (see ``assert_block``).
    ``via`` is the test's own line when the spawn site is elsewhere."""
    owner = owner if owner is not None else f"{nodeid} (call)"
    return [
        f"*_ ERROR at teardown of {literal(teardown_of)} _*",
        "test left 1 zombie child process (exited, never waited for):",
        f"  pid {pid}: {literal(command)}",
        f"    ended: {literal(ended)}",
        f"    spawned by: subprocess.Popen during {literal(owner)}",
        f"    spawned at: {literal(site)}",
        *([f"    via: {literal(via)}"] if via else []),
        HINT,
    ]


def assert_block(result: pytest.RunResult, block: list[str]) -> None:
    """``block`` (from ``leak_block``) in the output, line after line; under
    pytest-xdist a ``[gw0] ...`` line may follow the heading."""
    lines = result.outlines
    heading, body = block[0], block[1:]
    for start, line in enumerate(lines):
        if not fnmatch(line, heading):
            continue
        first = start + 1
        if first < len(lines) and fnmatch(lines[first], "[[]gw*[]] *"):
            first += 1
        found = lines[first : first + len(body)]
        if len(found) == len(body) and all(map(fnmatch, found, body)):
            return
    text = "\n".join(block)
    pytest.fail(f"no block\n{text}\nin the output:\n{result.stdout.str()}")


def summary_line(
    nodeid: str,
    pid: int,
    site: str,
    *,
    late: str = "",
    command: str = "true",
    ended: str | None = "exited with code 0",
    retried: bool = False,
) -> str:
    """One line of a summary section for a child spawned in a call."""
    parts = [f"pid {pid} {command}", *([ended] if ended else []), f"spawned at {site}"]
    line = f"{nodeid} (call): {', '.join(parts)}"
    if late:
        line += f" (late: found while {late} ran)"
    if retried:
        line += " (in an attempt that was rerun)"
    return line


def section_lines(result: pytest.RunResult, title: str = "zombie leak") -> list[str]:
    """The lines of the ``nozombies: N <title>`` summary section."""
    lines = result.outlines
    start = next(
        i for i, line in enumerate(lines) if "nozombies: " in line and title in line
    )
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("="))
    return lines[start + 1 : end]


def assert_no_internal_error(result: pytest.RunResult) -> None:
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output
    assert "internal error" not in output


# --- pytest-timeout -----------------------------------------------------------

LEAK_THEN_HANG = """
import time
from nozhelp import assert_no_zombie, leak


def test_leak_then_hang():
    leak()  # VIA
    time.sleep(60)


def test_next_starts_clean():
    assert_no_zombie()
"""


def test_timeout_signal_method_fails_the_test_and_still_reports_the_leak(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # The SIGALRM method raises inside the test: pytest's protocol goes on,
    # teardown runs, and the leak is judged there as usual (with no grace
    # wait: the test's deadline has passed).
    pytest.importorskip("pytest_timeout")
    write_inner(pytester, test_hang=LEAK_THEN_HANG)
    result = run_inner(*NO_RANDOMLY, "--timeout=3", "--timeout-method=signal")
    (pid,) = read_pids(pytester)
    nodeid = "test_hang.py::test_leak_then_hang"
    site = spawn_site(pytester)
    via = line_of(pytester.path / "test_hang.py", "# VIA")
    result.assert_outcomes(passed=1, failed=1, errors=1)
    block = leak_block("test_leak_then_hang", nodeid, pid, site, via=via)
    assert_block(result, block)
    result.stdout.fnmatch_lines(
        [
            *block,
            "*_ test_leak_then_hang _*",
            "E * Failed: Timeout (>3.0s) from pytest-timeout.",
            "*= nozombies: 1 zombie leak =*",
            summary_line(nodeid, pid, site),
            f"FAILED {nodeid} - Failed: Timeout*",
            f"ERROR {nodeid} - Failed: test left*",
        ]
    )
    assert_no_internal_error(result)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


LEAK_NO_HANG = """
from nozhelp import assert_no_zombie, leak


def test_leak():
    leak()  # VIA


def test_next_starts_clean():
    assert_no_zombie()
"""


def test_timeout_thread_method_leaves_a_suite_that_does_not_time_out_alone(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # The thread method only watches from a timer thread; until it fires,
    # nothing about the run changes (the zombie is given the grace period
    # because another thread exists, well within the 60s).
    pytest.importorskip("pytest_timeout")
    write_inner(pytester, test_leaky=LEAK_NO_HANG)
    result = run_inner(*NO_RANDOMLY, "--timeout=60", "--timeout-method=thread")
    (pid,) = read_pids(pytester)
    nodeid = "test_leaky.py::test_leak"
    site = spawn_site(pytester)
    via = line_of(pytester.path / "test_leaky.py", "# VIA")
    result.assert_outcomes(passed=2, errors=1)
    assert_block(result, leak_block("test_leak", nodeid, pid, site, via=via))
    result.stdout.fnmatch_lines(
        [
            "timeout method: thread",
            "*= nozombies: 1 zombie leak =*",
            summary_line(nodeid, pid, site),
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_timeout_thread_method_firing_ends_the_process_before_any_report(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # A known limitation, pinned so it is noticed if it ever changes: when the
    # thread method fires, pytest-timeout dumps the stacks and os._exit()s the
    # whole process. No teardown, no summary, no report of any plugin: the
    # leak cannot be reported. The exit code is pytest-timeout's 1.
    pytest.importorskip("pytest_timeout")
    write_inner(pytester, test_hang=LEAK_THEN_HANG)
    result = run_inner(*NO_RANDOMLY, "--timeout=3", "--timeout-method=thread")
    assert len(read_pids(pytester)) == 1
    result.stdout.fnmatch_lines(["test_hang.py *+ Timeout +*"])
    assert_no_internal_error(result)
    assert "nozombies: 1 zombie leak" not in result.stdout.str()
    assert "test left 1 zombie" not in result.stdout.str()
    assert result.ret == 1


#: Children that a test leaves running, each ending by itself when the inner
#: pytest process does (its stdin closes, or its parent changes), so that none
#: outlives the run. Asleep in read(): never waited for, nobody asked it to
#: exit.
SLEEPS = ["cat"]
#: On a CPU: given the grace period, as it may be about to finish. At the
#: lowest priority, so that it slows down no other test.
SPINS = [
    sys.executable,
    "-c",
    "import os\nos.nice(19)\nparent = os.getppid()\nwhile os.getppid() == parent: pass",
]
#: Asked to exit (SIGTERM), it does not: given the grace period too.
IGNORES_TERM = ["sh", "-c", "trap '' TERM; echo ready; exec cat"]

#: Tests that pass in well under 0.5s with the plugin off.
WITHIN_TIMEOUT = f"""
import subprocess
from nozhelp import KEPT, record_pid

SLEEPS = {SLEEPS!r}
SPINS = {SPINS!r}
IGNORES_TERM = {IGNORES_TERM!r}


def start(name, argv, **kwargs):
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, **kwargs)  # SPAWN
    KEPT.append(p)
    record_pid(p.pid, name)
    return p


def test_leaves_a_sleeping_child():
    start("sleeping", SLEEPS)


def test_leaves_a_busy_child():
    start("busy", SPINS)


def test_signals_a_child_that_ignores_it():
    p = start("ignores", IGNORES_TERM, stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\\n"
    p.terminate()


def test_kills_a_child_without_waiting():
    start("killed", SLEEPS).kill()
"""


@XDIST
@pytest.mark.parametrize("method", ["signal", "thread"])
def test_timeout_the_grace_wait_ends_before_the_tests_timeout(
    pytester: pytest.Pytester, run_inner: RunInner, method: str, xdist: tuple[str, ...]
) -> None:
    # Issue 13 point 5: the plugin waits up to the grace period (1s by
    # default) for children that may be about to exit. pytest-timeout tells
    # it the test's deadline (its set_timer and cancel_timer hooks), so with
    # --timeout=0.5 that wait stops short of it: no test that passes without
    # the plugin errors "Timeout" (the signal method) or ends the whole run
    # (the thread method), and the children are still listed as running.
    # The killed child is a zombie leak, reported as such; it too is given
    # the grace period while another thread exists that might collect it (the
    # thread method's timer; pytest-rerunfailures' server thread, where that
    # plugin is installed).
    pytest.importorskip("pytest_timeout")
    write_inner(pytester, test_grace=WITHIN_TIMEOUT)
    result = run_inner(
        *NO_RANDOMLY, *xdist, "--timeout=0.5", f"--timeout-method={method}"
    )
    output = result.stdout.str() + result.stderr.str()
    assert "Timeout" not in output
    assert_no_internal_error(result)
    result.assert_outcomes(passed=4, errors=1)
    pid = {
        name: read_pids(pytester, name)[0]
        for name in ("sleeping", "busy", "ignores", "killed")
    }
    site = line_of(pytester.path / "test_grace.py", "# SPAWN")
    nodeid = "test_grace.py::test_kills_a_child_without_waiting"
    assert_block(
        result,
        leak_block(
            "test_kills_a_child_without_waiting",
            nodeid,
            pid["killed"],
            site,
            command="cat",
            ended="killed by SIGKILL (9)",
        ),
    )
    assert section_lines(result) == [
        summary_line(
            nodeid, pid["killed"], site, command="cat", ended="killed by SIGKILL (9)"
        )
    ]
    running = [
        summary_line(
            "test_grace.py::test_leaves_a_sleeping_child",
            pid["sleeping"],
            site,
            command="cat",
            ended=None,
        ),
        summary_line(
            "test_grace.py::test_leaves_a_busy_child",
            pid["busy"],
            site,
            command=shlex.join(SPINS).replace("\n", r"\n"),
            ended=None,
        ),
        summary_line(
            "test_grace.py::test_signals_a_child_that_ignores_it",
            pid["ignores"],
            site,
            command=shlex.join(IGNORES_TERM),
            ended=None,
        ),
    ]
    assert sorted(section_lines(result, "left running")) == sorted(running)
    result.stdout.fnmatch_lines(
        ["*= 4 passed, 1 error, 1 zombie leak, 3 children left running in *"]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


# --- pytest-rerunfailures -----------------------------------------------------

LEAKS_ON_FIRST_ATTEMPT = """
from nozhelp import HERE, assert_no_zombie, leak


def test_leaks_on_first_attempt_only():
    attempts = HERE / "attempts"
    attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
    if attempts.read_text() == "x":
        leak("first")  # VIA
    else:
        # Each attempt starts clean: the first attempt's zombie was reaped.
        assert_no_zombie()
"""

LEAKS_ON_EVERY_ATTEMPT = """
from nozhelp import assert_no_zombie, leak


def test_leaks_on_every_attempt():
    assert_no_zombie()
    leak("every")  # VIA
"""


@XDIST
def test_rerunfailures_a_leak_on_the_first_attempt_only_is_retried_and_green(
    pytester: pytest.Pytester, run_inner: RunInner, xdist: tuple[str, ...]
) -> None:
    # Issue 14 point 4: the leak fails the attempt, rerunfailures runs the
    # test again, the second attempt is clean. The leak stays in the summary
    # and the JSON as one of a retried attempt, and the exit status follows
    # the final attempt: green.
    pytest.importorskip("pytest_rerunfailures")
    write_inner(pytester, test_rerun=LEAKS_ON_FIRST_ATTEMPT)
    result = run_inner(
        *NO_RANDOMLY, *xdist, "--reruns=2", "--nozombies-report=report.json", "-rA"
    )
    (pid,) = read_pids(pytester, "first")
    nodeid = "test_rerun.py::test_leaks_on_first_attempt_only"
    site = spawn_site(pytester)
    outcomes = result.parseoutcomes()
    # rerunfailures counts the call of the attempt that failed in teardown as
    # passed too, exactly as for any other teardown error.
    assert outcomes == {"passed": 2, "rerun": 1, "zombie": 1}
    if not xdist:
        result.stdout.fnmatch_lines(["test_rerun.py .R. *"])
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            summary_line(nodeid, pid, site, retried=True),
            f"PASSED {nodeid}",
            f"PASSED {nodeid}",
            "*= 2 passed, 1 rerun, 1 zombie leak in *",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR*")
    assert_no_internal_error(result)
    assert result.ret == pytest.ExitCode.OK
    report = read_report(pytester)
    assert report["run"]["exit_status"] == 0
    assert report["running"] == []
    ((leak),) = report["leaks"]
    assert (leak["pid"], leak["nodeid"], leak["verdict"]) == (pid, nodeid, "retried")
    assert (leak["kind"], leak["spawn_site"]) == ("zombie", site)
    assert leak["test_site"] == line_of(pytester.path / "test_rerun.py", "# VIA")


@XDIST
def test_rerunfailures_a_leak_on_every_attempt_fails_the_run(
    pytester: pytest.Pytester, run_inner: RunInner, xdist: tuple[str, ...]
) -> None:
    # Every attempt leaks: the first two are retried, the last one fails its
    # test, and only its error is shown; the summary and the JSON list all
    # three, each with the attempt's own zombie.
    pytest.importorskip("pytest_rerunfailures")
    write_inner(pytester, test_rerun=LEAKS_ON_EVERY_ATTEMPT)
    result = run_inner(
        *NO_RANDOMLY, *xdist, "--reruns=2", "--nozombies-report=report.json"
    )
    pids = read_pids(pytester, "every")
    assert len(set(pids)) == 3, pids
    nodeid = "test_rerun.py::test_leaks_on_every_attempt"
    site = spawn_site(pytester)
    via = line_of(pytester.path / "test_rerun.py", "# VIA")
    assert result.parseoutcomes() == {
        "passed": 3,
        "errors": 1,
        "rerun": 2,
        "zombie": 3,
    }
    if not xdist:
        result.stdout.fnmatch_lines(["test_rerun.py .R.R.E *"])
    assert_block(
        result,
        leak_block("test_leaks_on_every_attempt", nodeid, pids[2], site, via=via),
    )
    assert result.stdout.str().count("ERROR at teardown") == 1
    assert section_lines(result) == [
        summary_line(nodeid, pids[0], site, retried=True),
        summary_line(nodeid, pids[1], site, retried=True),
        summary_line(nodeid, pids[2], site),
    ]
    result.stdout.fnmatch_lines(["*= 3 passed, 1 error, 2 rerun, 3 zombie leaks in *"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    report = read_report(pytester)
    assert report["run"]["exit_status"] == 1
    assert [(leak["pid"], leak["verdict"]) for leak in report["leaks"]] == [
        (pids[0], "retried"),
        (pids[1], "retried"),
        (pids[2], "failed-test"),
    ]
    assert {leak["nodeid"] for leak in report["leaks"]} == {nodeid}


# --- pytest-randomly ----------------------------------------------------------

RANDOM_A = '''
import pathlib
import subprocess
import sys
from nozhelp import KEPT, leak, wait_exited

CHILD = """
import os, time

deadline = time.monotonic() + 30
while not os.path.exists("release") and time.monotonic() < deadline:
    time.sleep(0.01)
"""


def test_leaks_now():
    leak()  # VIA


def test_spawns_a_child_that_dies_later():
    # Still running at the end of this test; it exits when a later test
    # writes "release".
    pathlib.Path("child.py").write_text(CHILD)
    p = subprocess.Popen([sys.executable, "child.py"])  # LATE
    KEPT.append(p)
    pathlib.Path("late.pid").write_text(str(p.pid))


def test_innocent_a():
    release_if_spawned()


def release_if_spawned():
    # Whichever test runs first after the spawner makes its child a zombie,
    # and must not be blamed for it.
    pid_file = pathlib.Path("late.pid")
    if pid_file.exists() and not pathlib.Path("release").exists():
        pathlib.Path("release").write_text("")
        wait_exited(int(pid_file.read_text()))
'''

RANDOM_B = """
from test_random_a import release_if_spawned


def test_innocent_b1():
    release_if_spawned()


def test_innocent_b2():
    release_if_spawned()


def test_innocent_b3():
    release_if_spawned()
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_randomly_blames_the_leaking_test_in_any_order(
    pytester: pytest.Pytester, run_inner: RunInner, seed: int
) -> None:
    pytest.importorskip("pytest_randomly")
    write_inner(pytester, test_random_a=RANDOM_A, test_random_b=RANDOM_B)
    result = run_inner(
        "-p", "randomly", f"--randomly-seed={seed}", "--nozombies-grace=0.2", "-v"
    )
    order = [
        match.group(1)
        for line in result.outlines
        if (match := re.match(r"(test_random_\w+\.py::\w+) (PASSED|ERROR)", line))
    ]
    order = list(dict.fromkeys(order))  # ERROR lines repeat a PASSED nodeid
    spawner = "test_random_a.py::test_spawns_a_child_that_dies_later"
    innocents = [n for n in order if "innocent" in n]
    after = [n for n in order[order.index(spawner) + 1 :] if n in innocents]
    assert after, f"seed {seed} ran no innocent test after the spawner: {order}"
    finder = after[0]
    (pid,) = read_pids(pytester)
    late_pid = int((pytester.path / "late.pid").read_text())
    leaker = "test_random_a.py::test_leaks_now"
    site = spawn_site(pytester)
    via = line_of(pytester.path / "test_random_a.py", "# VIA")
    late_site = line_of(pytester.path / "test_random_a.py", "# LATE")
    result.assert_outcomes(passed=6, errors=1)
    result.stdout.fnmatch_lines([f"Using --randomly-seed={seed}"])
    assert_block(result, leak_block("test_leaks_now", leaker, pid, site, via=via))
    command = shlex.join([sys.executable, "child.py"])
    expected = [
        summary_line(leaker, pid, site),
        summary_line(spawner, late_pid, late_site, late=finder, command=command),
    ]
    # In the order they were found, which the seed decides.
    assert sorted(section_lines(result)) == sorted(expected)
    result.stdout.fnmatch_lines(["*= 6 passed, 1 error, 2 zombie leaks in *"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


# --- pytest-repeat ------------------------------------------------------------


def test_repeat_judges_each_repetition(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytest.importorskip("pytest_repeat")
    write_inner(pytester, test_repeat=LEAK_NO_HANG)
    result = run_inner(*NO_RANDOMLY, "--count=3")
    pids = read_pids(pytester)
    assert len(set(pids)) == 3, pids
    site = spawn_site(pytester)
    via = line_of(pytester.path / "test_repeat.py", "# VIA")
    result.assert_outcomes(passed=6, errors=3)
    for number, pid in enumerate(pids, start=1):
        name = f"test_leak[{number}-3]"
        assert_block(
            result, leak_block(name, f"test_repeat.py::{name}", pid, site, via=via)
        )
    assert section_lines(result) == [
        summary_line(f"test_repeat.py::test_leak[{n}-3]", pid, site)
        for n, pid in enumerate(pids, start=1)
    ]
    assert result.ret == pytest.ExitCode.TESTS_FAILED


# --- doctest items ------------------------------------------------------------

DOCTEST_MODULE = '''
"""Doctests that start children."""
import subprocess

from nozhelp import wait_exited

KEPT = []


def leaky():
    """Start a child and never wait for it.

    >>> p = subprocess.Popen(["true"])
    >>> KEPT.append(p)
    >>> wait_exited(p.pid)
    >>> open("doctest.pid", "w").write(str(p.pid)) > 0
    True
    """


def clean():
    """Start a child and wait for it.

    >>> subprocess.run(["true"]).returncode
    0
    """
'''


def doctest_block(pid: int) -> list[str]:
    # The doctest example itself is the spawn site, not the pytest launcher
    # or doctest.py; no "via" line, as the example is the test's own code.
    return leak_block(
        "[doctest] mod.leaky",
        "mod.py::mod.leaky",
        pid,
        "<doctest mod.leaky[0]>:1",
    )


def test_doctest_item_that_leaks_fails_at_teardown(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    write_inner(pytester, mod=DOCTEST_MODULE)
    result = run_inner(*NO_RANDOMLY, "--doctest-modules", "mod.py")
    pid = int((pytester.path / "doctest.pid").read_text())
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["mod.py .*E *"])
    assert_block(result, doctest_block(pid))
    assert section_lines(result) == [
        summary_line("mod.py::mod.leaky", pid, "<doctest mod.leaky[0]>:1")
    ]
    result.stdout.fnmatch_lines(["ERROR mod.py::mod.leaky - Failed: test left*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_doctest_spawn_site_is_not_the_pytest_console_script(
    pytester: pytest.Pytester,
) -> None:
    # Run through the `pytest` console script, as users do, rather than
    # `python -m pytest`: the script's own frame (bin/pytest, outside
    # site-packages) is the only frame left once the doctest's "<doctest ...>"
    # frames are skipped, and must not be named as the spawn site.
    script = shutil.which("pytest", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("no pytest console script beside this interpreter")
    write_inner(pytester, mod=DOCTEST_MODULE)
    result = pytester.run(
        script, "-p", "no:cacheprovider", *NO_RANDOMLY, "--doctest-modules", "mod.py"
    )
    pid = int((pytester.path / "doctest.pid").read_text())
    result.assert_outcomes(passed=2, errors=1)
    assert_block(result, doctest_block(pid))


# --- pytester -----------------------------------------------------------------

PYTESTER_USER_TESTS = """
from nozhelp import leak

INNER = '''
import subprocess
import time

import psutil

KEPT = []


def test_inner_leaks():
    p = subprocess.Popen(["true"])
    KEPT.append(p)
    while psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.005)


def test_inner_clean():
    subprocess.run(["true"], check=True)
'''


def test_runs_inner_pytest_in_process(pytester):
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_inner_leaks _*",
            "test left 1 zombie child process (exited, never waited for):",
            "  pid *: true",
            "    ended: exited with code 0",
            "    spawned by: subprocess.Popen during "
            "test_inner.py::test_inner_leaks (call)",
            "    spawned at: test_inner.py:10",
            "Wait for every child you start*",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(["*= nozombies: 1 zombie leak =*"])


def test_runs_inner_pytest_in_a_subprocess(pytester):
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "    spawned at: test_inner.py:10",
            "*= nozombies: 1 zombie leak =*",
        ]
    )


def test_runs_inner_pytest_in_process_without_the_plugin(pytester):
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest("-p", "no:randomly", "-p", "no:nozombies")
    result.assert_outcomes(passed=2)


def test_z_leaks_after_the_inner_runs():
    leak()  # VIA
"""


def test_pytester_inner_runs_judge_their_own_tests_and_the_outer_its_own(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # Three levels: this suite, the user's session (checked by the plugin),
    # and the runs its tests start with the pytester fixture. An in-process
    # inner run is a second session of the plugin in the same process: it
    # judges and reaps its own tests' zombies, so the user's test that
    # started it is not blamed again for the same zombie; a subprocess inner
    # run is a plugin of its own. With the plugin off in the inner run, the
    # zombie is the user's test's, which ran the leaky code. After all that,
    # the user's session still records who spawns what.
    write_inner(pytester, test_user=PYTESTER_USER_TESTS)
    result = run_inner(*NO_RANDOMLY, "-p", "pytester")
    (pid,) = read_pids(pytester)
    outer = "test_user.py::test_runs_inner_pytest_in_process_without_the_plugin"
    last = "test_user.py::test_z_leaks_after_the_inner_runs"
    site = spawn_site(pytester)
    via = line_of(pytester.path / "test_user.py", "# VIA")
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(
        [
            f"*_ ERROR at teardown of {outer.split('::')[1]} _*",
            "test left 1 zombie child process (exited, never waited for):",
            "  pid *: true",
            "    ended: exited with code 0",
            f"    spawned by: subprocess.Popen during {outer} (call)",
            "    spawned at: */test_inner.py:10",
            HINT,
        ],
        consecutive=True,
    )
    assert_block(result, leak_block(last.split("::")[1], last, pid, site, via=via))
    assert_no_internal_error(result)
    lines = section_lines(result)
    assert len(lines) == 2
    assert re.fullmatch(
        rf"{re.escape(outer)} \(call\): pid \d+ true, exited with code 0, "
        r"spawned at \S+/test_inner\.py:10",
        lines[0],
    )
    assert lines[1] == summary_line(last, pid, site)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


#: The nested session's test module, which the user's test writes.
NESTED_INNER = """
import subprocess
from nozhelp import KEPT, record_pid


def test_inner_leaves_a_child_running():
    # Asleep in read() until its stdin closes: not waited for, left running.
    p = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # NESTED
    KEPT.append(p)
    record_pid(p.pid, "nested")
"""
#: pytester writes a module stripped of its leading blank lines.
NESTED_LINE = next(
    n
    for n, line in enumerate(NESTED_INNER.strip().splitlines(), start=1)
    if "# NESTED" in line
)

NESTED_USER_TESTS = f"""
from nozhelp import HERE, KEPT, wait_exited

INNER = {NESTED_INNER!r}


def end_the_child():
    (p,) = KEPT
    p.stdin.close()
    wait_exited(p.pid)


def test_runs_a_session_whose_test_leaves_a_child_running(pytester):
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1)
    # The nested session lists its child as still running when it ends.
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 child left running =*",
            "test_inner.py::test_inner_leaves_a_child_running (call): pid * cat, "
            "spawned at test_inner.py:{NESTED_LINE}",
        ]
    )
    if (HERE / "end-in").read_text() == "same":
        end_the_child()


def test_next():
    if not KEPT[0].stdin.closed:
        end_the_child()
"""


@pytest.mark.parametrize("end_in", ["same", "next"])
def test_pytester_a_nested_sessions_child_dying_later_is_blamed_on_its_test(
    pytester: pytest.Pytester, run_inner: RunInner, end_in: str
) -> None:
    # Issue 13 point 7: a test of an in-process nested session (pytester's
    # runpytest()) leaves a child running; the nested session ends and lists
    # it. The child dies later, while the outer session runs: during the
    # outer test that ran the nested session, or during the next one. The
    # outer session reports the zombie as that outer test's, naming the
    # nested test that spawned it and the line, never as a child "not
    # spawned through Python".
    write_inner(pytester, test_user=NESTED_USER_TESTS)
    (pytester.path / "end-in").write_text(end_in)
    result = run_inner(*NO_RANDOMLY, "-p", "pytester", "--nozombies-report=report.json")
    assert_no_internal_error(result)
    result.stdout.no_fnmatch_line("*not spawned through Python*")
    (pid,) = read_pids(pytester, "nested")
    outer = "test_user.py::test_runs_a_session_whose_test_leaves_a_child_running"
    nested = "test_inner.py::test_inner_leaves_a_child_running"
    owner = f"{outer} (call), in a pytest session it ran: {nested} (call)"
    nested_site = f"*/test_inner.py:{NESTED_LINE}"
    if end_in == "same":
        result.assert_outcomes(passed=2, errors=1)
        assert_block(
            result,
            [
                f"*_ ERROR at teardown of {outer.split('::')[1]} _*",
                "test left 1 zombie child process (exited, never waited for):",
                f"  pid {pid}: cat",
                "    ended: exited with code 0",
                f"    spawned by: subprocess.Popen during {literal(owner)}",
                f"    spawned at: {nested_site}",
                HINT,
            ],
        )
        closing = "2 passed, 1 error, 1 zombie leak"
        late_text = ""
    else:
        # Left running when its test ended; found dead during the next test,
        # which is not blamed: a late leak of the test that ran the session.
        result.assert_outcomes(passed=2)
        result.stdout.no_fnmatch_line("*ERROR*")
        closing = "2 passed, 1 zombie leak"
        late_text = " (late: found while test_user.py::test_next ran)"
    (line,) = section_lines(result)
    assert re.fullmatch(
        rf"{re.escape(owner)}: pid {pid} cat, exited with code 0, "
        rf"spawned at \S+/test_inner\.py:{NESTED_LINE}{re.escape(late_text)}",
        line,
    ), line
    # Nothing is left running: the outer session lists no child as such.
    assert re.fullmatch(rf"=+ {closing} in [\d.]+s =+", result.outlines[-1])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    report = read_report(pytester)
    assert report["running"] == []
    (leak,) = report["leaks"]
    assert (leak["pid"], leak["nodeid"], leak["spawned_by"]) == (
        pid,
        outer,
        "subprocess.Popen",
    )
    assert leak["verdict"] == ("failed-test" if end_in == "same" else "failed-run")
    assert leak["owner"]["text"] == owner
    assert leak["argv"] == ["cat"]


# --- pytest-forked (pytest 8 only) --------------------------------------------


def test_forked_tests_are_judged_in_their_fork(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # With --forked each test runs entirely in a fork of the session, which
    # sends its reports back. The fork judges its own children (and only
    # there: a fork that a test makes and that returns into pytest never
    # does), and the leak reaches the session on the teardown report.
    pytest.importorskip("pytest_forked")
    if int(pytest.__version__.split(".")[0]) >= 9:
        pytest.skip("pytest-forked does not work on pytest 9")
    write_inner(pytester, test_forked=LEAK_NO_HANG)
    result = run_inner(*NO_RANDOMLY, "--forked", "--nozombies-report=report.json")
    (pid,) = read_pids(pytester)
    nodeid = "test_forked.py::test_leak"
    site = spawn_site(pytester)
    via = line_of(pytester.path / "test_forked.py", "# VIA")
    result.assert_outcomes(passed=2, errors=1)
    assert_block(result, leak_block("test_leak", nodeid, pid, site, via=via))
    assert section_lines(result) == [summary_line(nodeid, pid, site)]
    assert_no_internal_error(result)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    (leak,) = read_report(pytester)["leaks"]
    assert (leak["pid"], leak["nodeid"], leak["verdict"]) == (
        pid,
        nodeid,
        "failed-test",
    )


INNER_CONFIG = """
import os, subprocess, time

pytest_plugins = ["pytester"]
KEPT = []

def exited(pid):
    deadline = time.monotonic() + 30
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        assert time.monotonic() < deadline
        time.sleep(0.001)

def test_spawns_while_an_inner_config_is_open(pytester):
    pytester.parseconfigure()  # a configured inner session, never run
    KEPT.append(subprocess.Popen(["sh", "-c", "exit 4"]))  # line 14
    exited(KEPT[-1].pid)
    r, w = os.pipe()
    KEPT.append(subprocess.Popen(["head", "-c1"], stdin=r))  # line 17
    os.close(r)
    KEPT.append(w)

def test_innocent():
    os.write(KEPT[-1], b"x")  # the second child ends now
    exited(KEPT[-2].pid)
"""


def test_pytester_a_child_spawned_while_an_inner_config_is_open_is_the_tests(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # pytester.parseconfigure() leaves an inner config (with its own tracker)
    # open for the rest of the test: what the test spawns meanwhile is still
    # the test's, named as such, and a late death is blamed on it, never on
    # the next test.
    pytester.makepyfile(test_inner_config=INNER_CONFIG)
    result = run_inner("-p", "no:randomly", "--nozombies-grace=0")
    result.assert_outcomes(passed=2, errors=1)
    nodeid = "test_inner_config.py::test_spawns_while_an_inner_config_is_open"
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 2 zombie leaks =*",
            f"{nodeid} (call): pid * sh -c 'exit 4', exited with code 4, "
            "spawned at test_inner_config.py:14",
            f"{nodeid} (call): pid * head -c1, exited with code 0, spawned at "
            "test_inner_config.py:17 (late: found while "
            "test_inner_config.py::test_innocent ran)",
        ],
        consecutive=True,
    )
    result.stdout.no_fnmatch_line("*not spawned through Python*")
