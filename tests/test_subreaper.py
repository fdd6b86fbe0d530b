"""Subreaper mode: orphaned grandchildren come back and are judged (Linux)."""

from __future__ import annotations

import pytest

from helpers import RunInner
from pytest_nozombies import subreaper

pytestmark = pytest.mark.skipif(not subreaper.AVAILABLE, reason="Linux only")

DAEMON = """
import ctypes, os, signal

def is_subreaper():
    value = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(37, ctypes.byref(value), 0, 0, 0)
    return value.value == 1

def start_daemon(exit_code, wait_for_pipe=None, close=()):
    \"\"\"Double fork: the middle child exits at once, the grandchild lives on.\"\"\"
    ready_r, ready_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        grandchild = os.fork()
        if grandchild == 0:
            signal.alarm(120)  # never outlive a broken test run by much
            for fd in close:
                os.close(fd)
            os.close(ready_r)
            os.write(ready_w, str(os.getpid()).encode())
            os.close(ready_w)
            if wait_for_pipe is not None:
                os.read(wait_for_pipe, 1)
            os._exit(exit_code)
        os._exit(0)
    os.close(ready_w)
    grandchild = int(os.read(ready_r, 32))
    os.close(ready_r)
    os.waitpid(middle, 0)  # the middle child is reaped properly
    return grandchild
"""


def test_double_forked_daemon_is_caught_only_with_the_option(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(daemon=DAEMON)
    pytester.makepyfile(
        """
        import os, time
        from daemon import start_daemon, is_subreaper

        def test_daemon():
            pid = start_daemon(4)
            # Wait until the grandchild has exited (it is ours only as a
            # subreaper; otherwise init reaps it and the pid disappears).
            deadline = time.monotonic() + 30
            while True:
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().rpartition(")")[2].split()[0] == "Z":
                            break
                except FileNotFoundError:
                    break
                assert time.monotonic() < deadline
                time.sleep(0.005)

        def test_flag_is_set_as_asked():
            assert is_subreaper() == bool(os.environ.get("EXPECT_SUBREAPER"))
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=2)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPECT_SUBREAPER", "1")
        result = run_inner("--nozombies-subreaper")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "nozombies: mode=fail, *, subreaper, *",
            "*ERROR at teardown of test_daemon*",
            "*not spawned through Python, parent pid *",
            "*ended: exited with code 4",
        ]
    )


def test_orphan_that_dies_later_is_blamed_on_the_test_it_came_back_in(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(daemon=DAEMON)
    pytester.makepyfile(
        """
        import os
        from daemon import start_daemon

        state = {}

        def test_starts_daemon():
            r, w = os.pipe()
            # The daemon must not hold the write end, or it never sees EOF.
            state["pid"] = start_daemon(0, wait_for_pipe=r, close=(w,))
            state["w"] = w

        def test_stops_it():
            os.close(state["w"])  # the daemon exits now
            os.waitid(os.P_PID, state["pid"], os.WEXITED | os.WNOWAIT)
        """
    )
    result = run_inner("--nozombies-subreaper", "--nozombies-grace=0")
    result.assert_outcomes(passed=2)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            "*::test_starts_daemon (teardown): pid * exited with code 0, "
            "spawned at spawn site unknown (late: found while *::test_stops_it ran)",
        ]
    )


def test_subreaper_is_set_in_each_xdist_worker(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(daemon=DAEMON)
    pytester.makepyfile(
        "from daemon import is_subreaper\n"
        + "".join(f"def test_{i}():\n    assert is_subreaper()\n" for i in range(4))
    )
    pytester.makeini("[pytest]\nnozombies_subreaper = true\n")
    result = run_inner("-n", "2")
    result.assert_outcomes(passed=4)


def test_bad_subreaper_ini_value_is_a_usage_error(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    pytester.makeini("[pytest]\nnozombies_subreaper = perhaps\n")
    result = run_inner()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-nozombies: invalid truth value 'perhaps' for "
            "nozombies_subreaper (ini in *); expected true or false"
        ]
    )
    assert "Traceback" not in result.stderr.str()


def test_subreaper_off_linux_is_a_usage_error_fault_injected(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # Fault injection: this machine is Linux, so pretend the platform lacks
    # subreapers, as macOS does.
    pytester.makeconftest(
        "import pytest_nozombies.subreaper as s\ns.AVAILABLE = False\n"
    )
    pytester.makepyfile("def test_x():\n    pass\n")
    result = run_inner("--nozombies-subreaper")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-nozombies: invalid value 'true' for "
            "--nozombies-subreaper (command line); child subreapers exist only "
            "on Linux*"
        ]
    )
    assert "Traceback" not in result.stderr.str()


def test_flag_is_restored_at_the_end_of_an_in_process_session(
    pytester: pytest.Pytester,
) -> None:
    # In-process on purpose: the flag of *this* process must come back off.
    assert not subreaper.is_subreaper()
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "nozombies", "--nozombies-subreaper")
    result.assert_outcomes(passed=1)
    assert not subreaper.is_subreaper()
