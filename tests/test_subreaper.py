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

            test_daemon.pid = pid

        def test_flag_is_set_as_asked():
            assert is_subreaper() == bool(os.environ.get("EXPECT_SUBREAPER"))

        def test_the_orphan_was_reaped_after_its_report():
            # Only this process could collect it: it is not left a zombie.
            try:
                os.waitid(os.P_PID, test_daemon.pid, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                return
            raise AssertionError("the orphan is still this process's child")
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=3)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPECT_SUBREAPER", "1")
        result = run_inner("--nozombies-subreaper")
    result.assert_outcomes(passed=3, errors=1)
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
    # It came back while test_starts_daemon ran (judged at its teardown) and
    # died during test_stops_it: a late leak of the first.
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            "*::test_starts_daemon (teardown): pid * exited with code 0, "
            "spawned at unknown (*) (late: found while *::test_stops_it ran)",
        ]
    )


#: Writes each process's PR_GET_CHILD_SUBREAPER state, seen from inside the
#: run, at the start and the end of each process's session and in every test
#: a worker runs.
STATES = """
import os
import pathlib

import pytest

from daemon import is_subreaper


def role(config):
    workerinput = getattr(config, "workerinput", None)
    return workerinput["workerid"] if workerinput else "controller"


def note(config, when):
    folder = pathlib.Path(config.rootpath, "states")
    folder.mkdir(exist_ok=True)
    path = folder / f"{role(config)}-{when}-{os.getpid()}"
    path.write_text(str(int(is_subreaper())))


def pytest_sessionstart(session):
    note(session.config, "start")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    note(session.config, "finish")


@pytest.fixture(autouse=True)
def _note_in_test(request):
    note(request.config, "test")
"""


@pytest.mark.parametrize(
    "setting", [["--nozombies-subreaper"], []], ids=["subreaper", "default"]
)
def test_only_xdist_workers_become_subreapers(
    pytester: pytest.Pytester, run_inner: RunInner, setting: list[str]
) -> None:
    pytester.makepyfile(daemon=DAEMON)
    pytester.makeconftest(STATES)
    pytester.makepyfile("".join(f"def test_{i}():\n    pass\n" for i in range(6)))
    result = run_inner("-n", "2", *setting)
    result.assert_outcomes(passed=6)
    states: dict[str, set[str]] = {}
    pids: dict[str, set[str]] = {}
    for path in (pytester.path / "states").iterdir():
        role, when, pid = path.name.split("-")
        states.setdefault(role, set()).add(f"{when}={path.read_text()}")
        pids.setdefault(role, set()).add(pid)
    # Every process wrote its state, each role from one process.
    assert sorted(states) == ["controller", "gw0", "gw1"]
    assert all(len(found) == 1 for found in pids.values()), pids
    worker = "1" if setting else "0"
    assert states == {
        # The controller runs no test: its children are the workers, and an
        # orphan of a crashed worker must not become its zombie.
        "controller": {"start=0", "finish=0"},
        "gw0": {f"start={worker}", f"test={worker}", f"finish={worker}"},
        "gw1": {f"start={worker}", f"test={worker}", f"finish={worker}"},
    }


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


def test_fault_injection_subreaper_off_linux_is_a_usage_error(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # This machine is Linux: pretend the platform lacks subreapers, as macOS
    # does, from a plugin loaded with -p (a conftest is imported only after
    # the settings were read).
    pytester.makepyfile(
        no_subreapers_here=(
            "import pytest_nozombies.subreaper as s\ns.AVAILABLE = False\n"
        )
    )
    pytester.makepyfile("def test_x():\n    pass\n")
    result = run_inner("-p", "no_subreapers_here", "--nozombies-subreaper")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-nozombies: invalid value 'true' for "
            "--nozombies-subreaper (command line); child subreapers exist only "
            "on Linux, not on linux; remove the setting on this platform"
        ]
    )
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    assert "collected" not in output


def test_flag_is_restored_at_the_end_of_an_in_process_session(
    pytester: pytest.Pytester,
) -> None:
    # In-process on purpose: the flag of *this* process must come back off.
    assert not subreaper.is_subreaper()
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "nozombies", "--nozombies-subreaper")
    result.assert_outcomes(passed=1)
    assert not subreaper.is_subreaper()


def test_an_orphan_left_running_fails_only_the_test_it_came_back_in(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # One finding must never be carried over into the checks that follow.
    pytester.makeini("[pytest]\nnozombies_running = fail\n")
    pytester.makepyfile(
        """
        import os

        def test_a_starts_a_daemon():
            # sh starts sleep in the background and exits: sleep is an
            # orphan, and comes back to this process, its subreaper.
            assert os.system("sleep 3 &") == 0

        def test_b():
            pass

        def test_c():
            pass
        """
    )
    result = run_inner("--nozombies-subreaper", "--nozombies-grace=0")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_a_starts_a_daemon*"])
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_b*")
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_c*")
