"""Faults, races and interruptions never break a run (issue 5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import RunInner

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")

LEAKS = """
import subprocess

kept = []

def test_leak_one():
    kept.append(subprocess.Popen(["sh", "-c", "exit 1"]))

def test_leak_two():
    kept.append(subprocess.Popen(["sh", "-c", "exit 2"]))

def test_clean():
    pass
"""


def test_fault_injection_unreadable_proc_degrades_with_one_warning(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # Fault injection: /proc cannot be made unreadable for one process here,
    # so the listing raises as it would. A plugin given with -p is imported
    # before the recording starts (a conftest only after).
    pytester.makepyfile(
        unreadable_proc="""
        from pytest_nozombies import processes

        def unreadable():
            raise PermissionError(13, "Permission denied", "/proc/self/task")

        processes.child_pids = unreadable
        """
    )
    pytester.makepyfile(LEAKS)
    result = run_inner("-p", "unreadable_proc")
    result.assert_outcomes(passed=3, warnings=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*pytest-nozombies: internal error (PermissionError(13, 'Permission "
            "denied')); zombie checks are off for the rest of this run.*"
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_fault_injection_psutil_access_denied_mid_scan(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # Fault injection: use the psutil path (as on macOS) and make the scan
    # raise AccessDenied, which psutil does for processes it may not read.
    # The recording started before this conftest: the first scan after it is
    # the one at the end of test_leak_one, which is then not judged.
    pytester.makeconftest(
        """
        import psutil
        from pytest_nozombies import processes

        processes.USES_PROC = False

        def denied(self, recursive=False):
            raise psutil.AccessDenied(self.pid)

        psutil.Process.children = denied
        """
    )
    pytester.makepyfile(
        """
        import ctypes, os

        def test_leak_one():
            # A child made outside Python is only found by scanning.
            pid = ctypes.CDLL(None).fork()
            if pid == 0:
                ctypes.CDLL(None)._exit(0)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)

        def test_after():
            pass
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=2, warnings=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "test_fault_injection_psutil_access_denied_mid_scan.py::test_leak_one",
            "*pytest-nozombies: internal error (psutil.AccessDenied*",
        ]
    )
    assert "zombie child" not in result.stdout.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_psutil_path_detects_leaks_like_proc(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # The fallback other POSIX systems use, exercised here on Linux.
    pytester.makeconftest(
        "from pytest_nozombies import processes\nprocesses.USES_PROC = False\n"
    )
    pytester.makepyfile(LEAKS)
    result = run_inner()
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(["*= nozombies: 2 zombie leaks =*"])


def test_code_that_reaps_its_own_children_races_with_nothing(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        """
        import asyncio, os, signal, subprocess, sys, threading, time
        import pytest

        def test_os_wait():
            pid = os.fork()
            if pid == 0:
                os._exit(3)
            got, status = os.wait()
            assert got == pid and os.waitstatus_to_exitcode(status) == 3

        def test_waitpid_any():
            pids = {os.posix_spawn("/bin/sh", ["sh", "-c", "exit 4"], os.environ)
                    for _ in range(5)}
            while pids:
                pid, status = os.waitpid(-1, 0)
                assert os.waitstatus_to_exitcode(status) == 4
                pids.remove(pid)

        @pytest.fixture
        def reaping_handler():
            reaped = {}
            def handler(signum, frame):
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        return
                    if pid == 0:
                        return
                    reaped[pid] = os.waitstatus_to_exitcode(status)
            previous = signal.signal(signal.SIGCHLD, handler)
            yield reaped
            signal.signal(signal.SIGCHLD, previous)

        def test_sigchld_handler_reaps(reaping_handler):
            for code in range(5):
                pid = os.fork()
                if pid == 0:
                    os._exit(code)
            # Children end whenever they like; the handler collects them as
            # their SIGCHLD arrives (it runs between bytecodes of this loop).
            deadline = time.monotonic() + 30
            while len(reaping_handler) < 5:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert sorted(reaping_handler.values()) == [0, 1, 2, 3, 4]

        def test_background_thread_waits():
            proc = subprocess.Popen(["sh", "-c", "exit 5"])
            waiter = threading.Thread(target=proc.wait)
            waiter.start()
            waiter.join()
            assert proc.returncode == 5

        def test_asyncio_child_watcher():
            async def main():
                procs = [await asyncio.create_subprocess_exec("true")
                         for _ in range(3)]
                return [await p.wait() for p in procs]
            assert asyncio.run(main()) == [0, 0, 0]
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=5)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*= nozombies*")


def test_forked_child_returning_into_pytest_does_not_judge_or_report(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        """
        import os, subprocess

        kept = []

        def test_forks_and_child_returns():
            pid = os.fork()
            if pid == 0:
                return  # a bug in the code under test: the child runs on
            os.waitpid(pid, 0)

        def test_leaks():
            kept.append(subprocess.Popen(["sh", "-c", "exit 7"]))
        """
    )
    result = run_inner("--nozombies-report=report.json", "-p", "no:randomly")
    document = json.loads((pytester.path / "report.json").read_text())
    # Only the session's own process wrote the report, with its own leak.
    assert [leak["nodeid"] for leak in document["leaks"]] == [
        "test_forked_child_returning_into_pytest_does_not_judge_or_report.py"
        "::test_leaks"
    ]
    assert document["run"]["exit_status"] == 1
    # The forked copy ran test_leaks too but judged nothing: one error, not two.
    assert result.stdout.str().count("ERROR at teardown of test_leaks") == 1


@pytest.mark.parametrize("stop", [["-x"], ["--maxfail=1"]])
def test_stopping_early_still_reports_what_was_found(
    pytester: pytest.Pytester, run_inner: RunInner, stop: list[str]
) -> None:
    pytester.makepyfile(LEAKS)
    result = run_inner("--nozombies-report=r.json", *stop)
    result.assert_outcomes(passed=1, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*= nozombies: 1 zombie leak =*"])
    document = json.loads((pytester.path / "r.json").read_text())
    assert len(document["leaks"]) == 1


def test_keyboard_interrupt_still_reports_what_was_found(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        LEAKS
        + """
def test_interrupted():
    raise KeyboardInterrupt

def test_never_runs():
    pass
"""
    )
    result = run_inner("--nozombies-report=r.json", "-p", "no:randomly")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*= nozombies: 2 zombie leaks =*"])
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
    document = json.loads((pytester.path / "r.json").read_text())
    assert len(document["leaks"]) == 2
    assert document["run"]["exit_status"] == pytest.ExitCode.INTERRUPTED


def test_a_forked_copy_knows_it_is_not_the_sessions_process() -> None:
    from pytest_nozombies.tracker import Tracker

    tracker = Tracker(grace=0, root=Path.cwd(), not_user_code=())
    assert tracker.in_session_process()
    pid = os.fork()
    if pid == 0:  # the child: told by the fork callback, then by its pid
        os._exit(0 if not tracker.in_session_process() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert tracker.in_session_process()
