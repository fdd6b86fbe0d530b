"""Blame the right test or fixture, and say exactly what leaked (issue 3)."""

from __future__ import annotations

import os

import pytest

from helpers import RunInner

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")


def test_spawn_line_is_the_users_helper_not_subprocess(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        helpers="""
        import subprocess

        def start_server():
            return _really_start()

        def _really_start():
            return subprocess.Popen(["sh", "-c", "exit 4"])  # line 7
        """,
        test_deep="""
        import helpers

        def test_leaks_through_helpers():
            test_leaks_through_helpers.proc = helpers.start_server()
        """,
    )
    result = run_inner()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*pid *: sh -c 'exit 4'",
            "*ended: exited with code 4",
            "*spawned by: subprocess.Popen during test_deep.py::"
            "test_leaks_through_helpers (call)",
            "*spawned at: helpers.py:7",
        ]
    )
    assert "subprocess.py" not in result.stdout.str()


def test_leak_from_a_thread_names_the_threads_line(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        """
        import subprocess, threading

        kept = []

        def spawn():
            kept.append(subprocess.Popen(["sh", "-c", "exit 6"]))  # line 6

        def test_thread():
            t = threading.Thread(target=spawn)
            t.start()
            t.join()
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*ended: exited with code 6", "*spawned at: test_leak_from_a_thread*.py:6"]
    )


def test_module_fixture_leak_is_reported_against_the_fixture(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        """
        import subprocess
        import pytest

        @pytest.fixture(scope="module")
        def server():
            proc = subprocess.Popen(["sh", "-c", "exit 3"])
            yield proc
            # never waits for it

        def test_one(server):
            pass

        def test_two(server):
            pass
        """
    )
    result = run_inner()
    # Neither test is to blame; the fixture is, and the run fails.
    result.assert_outcomes(passed=2)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            "fixture 'server' (module scope, setup of "
            "test_module_fixture_leak_is_reported_against_the_fixture.py::test_one):"
            " pid * sh -c 'exit 3', exited with code 3, spawned at *.py:6",
        ]
    )


def test_each_phase_is_named_for_children_of_tests_and_fixtures(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # No hook marks the call phase: pytest's own PYTEST_CURRENT_TEST tells it
    # when a child is spawned. A fixture first requested in the test body is
    # set up during the call phase, and says so.
    pytester.makepyfile(
        test_phases="""
        import subprocess
        import pytest

        KEPT = []

        def spawn(code):
            KEPT.append(subprocess.Popen(["sh", "-c", f"exit {code}"]))

        @pytest.fixture
        def early():
            spawn(11)

        @pytest.fixture
        def late():
            spawn(12)

        def test_phases(early, request):
            spawn(13)
            request.getfixturevalue("late")
        """
    )
    result = run_inner("-p", "no:randomly")
    result.assert_outcomes(passed=1, errors=1)
    nodeid = "test_phases.py::test_phases"
    result.stdout.fnmatch_lines_random(
        [
            f"*fixture 'early' (function scope, setup of {nodeid}): pid * "
            "sh -c 'exit 11'*",
            f"*{nodeid} (call): pid * sh -c 'exit 13'*",
            f"*fixture 'late' (function scope, call of {nodeid}): pid * "
            "sh -c 'exit 12'*",
        ]
    )


def test_a_test_that_clears_the_environment_is_still_blamed(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        test_env="""
        import os
        import subprocess

        def test_clears(monkeypatch):
            monkeypatch.delenv("PYTEST_CURRENT_TEST")
            test_clears.proc = subprocess.Popen(["sh", "-c", "exit 14"])
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1, errors=1)
    # Without pytest's word on the phase it is a guess: "call" for what the
    # test itself spawns before its teardown (right here).
    result.stdout.fnmatch_lines(
        ["*test_env.py::test_clears (call): pid * sh -c 'exit 14'*"]
    )


@pytest.mark.parametrize(
    ("nodeid", "value", "phase"),
    [
        ("test_x.py::test_a", "test_x.py::test_a (call)", "call"),
        ("test_x.py::test_a[x (y)]", "test_x.py::test_a[x (y)] (setup)", "setup"),
        ("test_x.py::test_a", "test_x.py::test_a (teardown)", "teardown"),
        ("test_x.py::test_a", "test_x.py::test_a (later)", None),
        ("test_x.py::test_a", "test_x.py::test_a", None),
        # Another test's phase (a nested pytester run's) is not this test's.
        ("test_x.py::test_a", "test_x.py::test_ab (call)", None),
        ("test_x.py::test_a", "inner.py::test_a (call)", None),
        ("test_x.py::test_a", "", None),
    ],
)
def test_the_phase_is_read_from_pytest_current_test(
    monkeypatch: pytest.MonkeyPatch, nodeid: str, value: str, phase: str | None
) -> None:
    from pytest_nozombies.checks import pytest_phase

    monkeypatch.setenv("PYTEST_CURRENT_TEST", value)
    assert pytest_phase(nodeid) == phase


def test_module_fixture_teardown_leak_is_reported_against_the_fixture(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        test_teardown="""
        import os, subprocess
        import pytest

        kept = []

        @pytest.fixture(scope="module")
        def server():
            yield
            p = subprocess.Popen(["sh", "-c", "exit 5"])
            kept.append(p)
            os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)

        def test_one(server):
            pass

        def test_two(server):
            pass
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=2)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            "fixture 'server' (module scope, teardown of test_teardown.py::test_two)"
            ": pid * sh -c 'exit 5', exited with code 5, spawned at "
            "test_teardown.py:9",
        ]
    )


def test_late_zombie_is_blamed_on_the_test_that_spawned_it(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        """
        import os, subprocess, sys

        state = {}

        def test_a_leaves_a_child_running():
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.stdin.read()"],
                stdin=subprocess.PIPE,
            )
            state["proc"] = proc

        def test_b_innocent():
            proc = state["proc"]
            proc.stdin.close()  # the child exits now, during test_b
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)

        def test_c():
            pass
        """
    )
    result = run_inner("--nozombies-grace=0.05")
    result.assert_outcomes(passed=3)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            "*::test_a_leaves_a_child_running (call): pid * exited with code 0,"
            " spawned at *.py:6 (late: found while *::test_b_innocent ran)",
        ]
    )


def test_late_zombie_in_warn_mode_does_not_fail_the_run(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        """
        import os, subprocess, sys

        state = {}

        def test_a():
            state["proc"] = subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.stdin.read()"],
                stdin=subprocess.PIPE,
            )

        def test_b():
            proc = state["proc"]
            proc.stdin.close()
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        """
    )
    result = run_inner("--nozombies-grace=0", "--nozombies-mode=warn")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*::test_a (call): pid * (late: found while *"])


LEAVES_A_CHILD_RUNNING = """
import subprocess, sys

def test_leaves_server_running():
    # The child ends by itself once this pytest exits and closes the pipe.
    test_leaves_server_running.proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )

def test_other():
    pass
"""


@pytest.mark.parametrize(
    ("running", "ret", "listed"),
    [("warn", 0, True), ("fail", 1, True), ("ignore", 0, False)],
)
def test_children_still_running_at_the_end_are_listed(
    pytester: pytest.Pytester,
    run_inner: RunInner,
    running: str,
    ret: int,
    listed: bool,
) -> None:
    pytester.makeini(f"[pytest]\nnozombies_running = {running}\n")
    pytester.makepyfile(test_left=LEAVES_A_CHILD_RUNNING)
    result = run_inner("--nozombies-grace=0")
    result.assert_outcomes(passed=2)
    assert result.ret == ret
    lines = [
        "*= nozombies: 1 child still running =*",
        "test_left.py::test_leaves_server_running (call): pid * "
        "-c 'import sys; sys.stdin.read()', spawned at test_left.py:5",
    ]
    if listed:
        result.stdout.fnmatch_lines(lines)
    else:
        result.stdout.no_fnmatch_line("*still running*")


def test_stdlib_helpers_are_not_listed_as_running(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        """
        import multiprocessing

        def work():
            pass

        def test_forkserver():
            ctx = multiprocessing.get_context("forkserver")
            p = ctx.Process(target=work)
            p.start()
            p.join()
            assert p.exitcode == 0
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    result.stdout.no_fnmatch_line("*= nozombies*")


def test_child_made_outside_python_is_reported_with_its_parent(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        """
        import ctypes, os

        def test_c_level_fork():
            libc = ctypes.CDLL(None, use_errno=True)
            pid = libc.fork()  # not os.fork: invisible to spawn capture
            if pid == 0:
                libc._exit(0)
            assert pid > 0
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            test_c_level_fork.pid = pid

        def test_after():
            pass
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_c_level_fork*",
            "*pid *: [[]*[]] (not spawned through Python, parent pid *: "
            "command line unknown)",
            "*ended: exited with code 0",
        ]
    )


def test_ignored_command_lines_are_never_leaks_and_left_alone(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makeini("[pytest]\nnozombies_ignore =\n    ^sh -c 'exit 9'$\n")
    pytester.makepyfile(
        """
        import subprocess

        kept = {}

        def test_ignored():
            kept["p"] = subprocess.Popen(["sh", "-c", "exit 9"])
            kept["p"].wait()  # only to make it exit; re-made below

        def test_ignored_zombie_left_for_its_owner():
            kept["q"] = subprocess.Popen(["sh", "-c", "exit 9"])

        def test_owner_still_gets_its_status():
            assert kept["q"].wait() == 9

        def test_not_ignored():
            kept["r"] = subprocess.Popen(["sh", "-c", "exit 8"])
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_not_ignored*"])
    result.stdout.fnmatch_lines(["*ignoring 1 pattern(s)*"])


def _can_force_pids() -> bool:
    return os.geteuid() == 0 and os.access("/proc/sys/kernel/ns_last_pid", os.W_OK)


@pytest.mark.skipif(not _can_force_pids(), reason="needs root and ns_last_pid")
def test_reused_pid_is_not_confused_with_an_earlier_child(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        """
        import ctypes, os, signal, subprocess, sys, time
        import pytest

        state = {}

        def start_ticks(pid):
            with open(f"/proc/{pid}/stat") as f:
                return int(f.read().rpartition(")")[2].split()[19])

        def now_ticks():
            with open("/proc/uptime") as f:
                return float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK")

        def test_a_leaves_a_child_running():
            state["proc"] = subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.stdin.read()"],
                stdin=subprocess.PIPE,
            )

        def test_b_reuses_its_pid():
            old = state["proc"]
            old_start = start_ticks(old.pid)
            old.kill()
            os.waitpid(old.pid, 0)  # reaped behind the plugin's back
            # Start times count clock ticks: make sure the new one differs.
            deadline = time.monotonic() + 30
            while now_ticks() < old_start + 3:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            libc = ctypes.CDLL(None, use_errno=True)
            for _ in range(200):
                with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                    f.write(str(old.pid - 1))
                pid = libc.fork()
                if pid == 0:
                    libc._exit(5)
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
                if pid == old.pid:
                    break
                os.waitpid(pid, 0)  # another process took the pid: retry
            else:
                pytest.skip("could not get the same pid back")
            old.stdin.close()
        """
    )
    result = run_inner("--nozombies-grace=0")
    stdout = result.stdout.str()
    if "could not get the same pid back" in stdout:
        pytest.skip("the machine is too busy to force a pid")
    result.assert_outcomes(passed=2, errors=1)
    # The zombie with the old pid is the new, unrecorded child: reported as
    # such on test_b, not as a late leak of test_a with test_a's command line.
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_b_reuses_its_pid*",
            "*not spawned through Python*",
            "*ended: exited with code 5",
        ]
    )
    assert "late" not in stdout
    assert "sys.stdin.read()', exited" not in stdout


def test_a_child_spawned_while_its_test_is_judged_is_still_that_tests(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # test_a leaves child A running and a thread that, once test_a's teardown
    # has begun (its finalizer says so), spawns child B and only then lets A
    # exit: B is spawned in test_a's teardown, and test_a must answer for it.
    # The short sleep makes it nearly always land while the plugin waits out
    # the grace period for A, the case this guards; the verdict is the same
    # either way.
    pytester.makepyfile(
        """
        import subprocess, sys, threading, time

        kept = []
        teardown_started = threading.Event()

        def spawn_then_release(a):
            assert teardown_started.wait(timeout=30)
            time.sleep(0.2)
            kept.append(subprocess.Popen(["true"]))
            a.stdin.close()

        def test_a(request):
            a = subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.stdin.read()"],
                stdin=subprocess.PIPE,
            )
            kept.append(a)
            request.addfinalizer(teardown_started.set)
            threading.Thread(target=spawn_then_release, args=(a,)).start()

        def test_b():
            pass
        """
    )
    result = run_inner("--nozombies-grace=30")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 2 zombie leaks =*",
            "*::test_a (call): pid * exited with code 0, spawned at *.py:13",
            "*::test_a (teardown): pid * true, exited with code 0, spawned at *.py:9 *",
        ],
        consecutive=False,
    )
