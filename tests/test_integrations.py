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

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from helpers import RunInner

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")

NO_RANDOMLY = ("-p", "no:randomly")

#: Imported by the inner test modules (pytester's folder is on sys.path).
INNER_HELPERS = """
import pathlib
import subprocess
import time

import psutil

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


def leak(name="leak"):
    # A real zombie: the child has exited and nobody waited for it. Appends its
    # pid to NAME.pids so each attempt of a rerun adds a line.
    p = subprocess.Popen(["true"])  # SPAWN
    KEPT.append(p)
    wait_exited(p.pid)
    with pathlib.Path(f"{name}.pids").open("a") as pids:
        pids.write(f"{p.pid}\\n")
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


def literal(text: str) -> str:
    """``text`` as an fnmatch pattern that matches only itself."""
    return re.sub(r"([*?[])", r"[\1]", text)


def leak_block(teardown_of: str, nodeid: str, pid: int, site: str) -> list[str]:
    """The lines, as fnmatch patterns, of one ``true`` child leaked in a call."""
    return [
        f"*_ ERROR at teardown of {literal(teardown_of)} _*",
        "test left 1 zombie child process (exited, never waited for):",
        f"  pid {pid}: true",
        "    ended: exited with code 0",
        f"    spawned by: subprocess.Popen during {literal(nodeid)} (call)",
        f"    spawned at: {literal(site)}",
        HINT,
    ]


def summary_line(
    nodeid: str, pid: int, site: str, late: str = "", command: str = "true"
) -> str:
    """One line of the summary for a child spawned in a call, exited with 0."""
    found = f" (late: found while {late} ran)" if late else ""
    return (
        f"{nodeid} (call): pid {pid} {command}, exited with code 0, spawned at "
        f"{site}{found}"
    )


def summary_lines(result: pytest.RunResult) -> list[str]:
    """The lines of the ``nozombies: N zombie leak(s)`` summary section."""
    lines = result.outlines
    start = next(
        i
        for i, line in enumerate(lines)
        if "nozombies: " in line and "zombie leak" in line
    )
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("="))
    return lines[start + 1 : end]


# --- pytest-timeout -----------------------------------------------------------

LEAK_THEN_HANG = """
import time
from nozhelp import assert_no_zombie, leak


def test_leak_then_hang():
    leak()
    time.sleep(60)


def test_next_starts_clean():
    assert_no_zombie()
"""


def test_timeout_signal_method_fails_the_test_and_still_reports_the_leak(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # The SIGALRM method raises inside the test: pytest's protocol goes on,
    # teardown runs, and the leak is judged there as usual.
    pytest.importorskip("pytest_timeout")
    write_inner(pytester, test_hang=LEAK_THEN_HANG)
    result = run_inner(*NO_RANDOMLY, "--timeout=3", "--timeout-method=signal")
    (pid,) = read_pids(pytester)
    nodeid = "test_hang.py::test_leak_then_hang"
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            *leak_block("test_leak_then_hang", nodeid, pid, spawn_site(pytester)),
            "*_ test_leak_then_hang _*",
            "E * Failed: Timeout (>3.0s) from pytest-timeout.",
            "*= nozombies: 1 zombie leak =*",
            summary_line(nodeid, pid, spawn_site(pytester)),
            f"FAILED {nodeid} - Failed: Timeout*",
            f"ERROR {nodeid} - Failed: test left*",
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED


LEAK_NO_HANG = """
from nozhelp import assert_no_zombie, leak


def test_leak():
    leak()


def test_next_starts_clean():
    assert_no_zombie()
"""


def test_timeout_thread_method_leaves_a_suite_that_does_not_time_out_alone(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # The thread method only watches from a timer thread; until it fires,
    # nothing about the run changes.
    pytest.importorskip("pytest_timeout")
    write_inner(pytester, test_leaky=LEAK_NO_HANG)
    result = run_inner(*NO_RANDOMLY, "--timeout=60", "--timeout-method=thread")
    (pid,) = read_pids(pytester)
    nodeid = "test_leaky.py::test_leak"
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "timeout method: thread",
            *leak_block("test_leak", nodeid, pid, spawn_site(pytester)),
            "*= nozombies: 1 zombie leak =*",
            summary_line(nodeid, pid, spawn_site(pytester)),
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
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert "nozombies: 1 zombie leak" not in result.stdout.str()
    assert "test left 1 zombie" not in result.stdout.str()
    assert result.ret == 1


# --- pytest-rerunfailures -----------------------------------------------------

RERUN_SUITE = """
import pathlib
from nozhelp import assert_no_zombie, leak


def test_leaks_on_first_attempt_only():
    attempts = pathlib.Path("attempts")
    attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
    if attempts.read_text() == "x":
        leak("first")
    else:
        # Each attempt starts clean: the first attempt's zombie was reaped.
        assert_no_zombie()


def test_leaks_on_every_attempt():
    assert_no_zombie()
    leak("every")
"""


def test_rerunfailures_a_leak_on_the_first_attempt_only_is_rerun_and_passes(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytest.importorskip("pytest_rerunfailures")
    write_inner(pytester, test_rerun=RERUN_SUITE)
    result = run_inner(*NO_RANDOMLY, "--reruns=2", "-k", "first_attempt_only", "-rA")
    (pid,) = read_pids(pytester, "first")
    nodeid = "test_rerun.py::test_leaks_on_first_attempt_only"
    # rerunfailures counts the call of the attempt that failed in teardown as
    # passed too, exactly as for any other teardown error.
    assert result.parseoutcomes() == {"passed": 2, "rerun": 1, "deselected": 1}
    result.stdout.fnmatch_lines(
        [
            "test_rerun.py .R. *",
            "*= nozombies: 1 zombie leak =*",
            summary_line(nodeid, pid, spawn_site(pytester)),
            f"PASSED {nodeid}",
            f"PASSED {nodeid}",
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str()
    # The leak was reported on the attempt it happened in, and rerunfailures
    # decides what a failed attempt followed by a good one means: the run
    # passes, as it does for any flaky teardown error. The summary still lists
    # the leak.
    assert result.ret == pytest.ExitCode.OK


def test_rerunfailures_a_leak_on_every_attempt_is_judged_on_each(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytest.importorskip("pytest_rerunfailures")
    write_inner(pytester, test_rerun=RERUN_SUITE)
    result = run_inner(*NO_RANDOMLY, "--reruns=2", "-k", "every_attempt")
    pids = read_pids(pytester, "every")
    assert len(set(pids)) == 3, pids
    nodeid = "test_rerun.py::test_leaks_on_every_attempt"
    assert result.parseoutcomes() == {
        "passed": 3,
        "errors": 1,
        "rerun": 2,
        "deselected": 1,
    }
    result.stdout.fnmatch_lines(
        [
            "test_rerun.py .R.R.E *",
            # Only the last attempt's report is an error; it shows its own leak.
            *leak_block(
                "test_leaks_on_every_attempt", nodeid, pids[2], spawn_site(pytester)
            ),
            "*= nozombies: 3 zombie leaks =*",
        ]
    )
    assert summary_lines(result) == [
        summary_line(nodeid, pid, spawn_site(pytester)) for pid in pids
    ]
    assert result.ret == pytest.ExitCode.TESTS_FAILED


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
    leak()


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
    late_site = line_of(pytester.path / "test_random_a.py", "# LATE")
    result.assert_outcomes(passed=6, errors=1)
    result.stdout.fnmatch_lines([f"Using --randomly-seed={seed}"])
    result.stdout.fnmatch_lines(
        leak_block("test_leaks_now", leaker, pid, spawn_site(pytester))
    )
    lines = summary_lines(result)
    command = shlex.join([sys.executable, "child.py"])
    assert lines == [
        summary_line(leaker, pid, spawn_site(pytester)),
        summary_line(spawner, late_pid, late_site, late=finder, command=command),
    ] or lines == [
        summary_line(spawner, late_pid, late_site, late=finder, command=command),
        summary_line(leaker, pid, spawn_site(pytester)),
    ]
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
    result.assert_outcomes(passed=6, errors=3)
    blocks = []
    for number, pid in enumerate(pids, start=1):
        name = f"test_leak[{number}-3]"
        blocks += leak_block(name, f"test_repeat.py::{name}", pid, spawn_site(pytester))
    result.stdout.fnmatch_lines([*blocks, "*= nozombies: 3 zombie leaks =*"])
    assert summary_lines(result) == [
        summary_line(f"test_repeat.py::test_leak[{n}-3]", pid, spawn_site(pytester))
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
    return [
        "*_ ERROR at teardown of [[]doctest[]] mod.leaky _*",
        "test left 1 zombie child process (exited, never waited for):",
        f"  pid {pid}: true",
        "    ended: exited with code 0",
        "    spawned by: subprocess.Popen during mod.py::mod.leaky (call)",
        # The doctest example itself, not the pytest launcher or doctest.py.
        "    spawned at: <doctest mod.leaky[[]0[]]>:1",
        HINT,
    ]


def test_doctest_item_that_leaks_fails_at_teardown(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    write_inner(pytester, mod=DOCTEST_MODULE)
    result = run_inner(*NO_RANDOMLY, "--doctest-modules", "mod.py")
    pid = int((pytester.path / "doctest.pid").read_text())
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "mod.py .*E *",
            *doctest_block(pid),
            "*= nozombies: 1 zombie leak =*",
            "mod.py::mod.leaky (call): pid * true, exited with code 0, "
            "spawned at <doctest mod.leaky[[]0[]]>:1",
            "ERROR mod.py::mod.leaky - Failed: test left*",
        ]
    )
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
    result.stdout.fnmatch_lines(doctest_block(pid))


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
            "    spawned by: subprocess.Popen during "
            "test_inner.py::test_inner_leaks (call)",
            "    spawned at: test_inner.py:10",
            "*= nozombies: 1 zombie leak =*",
        ]
    )


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
    leak()
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
    late = "test_user.py::test_z_leaks_after_the_inner_runs"
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
            *leak_block(late.split("::")[1], late, pid, spawn_site(pytester)),
            "*= nozombies: 2 zombie leaks =*",
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str()
    lines = summary_lines(result)
    assert len(lines) == 2
    assert lines[0].startswith(f"{outer} (call): pid ")
    assert lines[1] == summary_line(late, pid, spawn_site(pytester))
    assert result.ret == pytest.ExitCode.TESTS_FAILED


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
    result = run_inner(*NO_RANDOMLY, "--forked")
    (pid,) = read_pids(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            f"test_forked.py::test_leak (call): pid {pid} *",
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
