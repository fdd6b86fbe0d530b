"""Well-behaved code never trips the plugin.

Each test writes an inner suite of code that waits for every child it starts,
runs it with the plugin in its default ``fail`` mode, and checks that every
inner test passed by name, that nothing was reported (no zombie, and no child
left running in the end-of-session list) and that the plugin was really on
(its header line, and no internal error that would have switched it off and
made the run pass for the wrong reason). Children that other threads wait
for are in test_harmless.py.
"""

from __future__ import annotations

import glob
import textwrap
from collections.abc import Sequence

import pytest

from helpers import RunInner

#: Inner helpers: waits on real process states, each with a deadline.
INNER_CONFTEST = """
    import os
    import select

    DEADLINE = 30.0


    def wait_pidfd(fd):
        # Block until the process behind ``fd`` has exited; reaps nothing.
        try:
            ready, _, _ = select.select([fd], [], [], DEADLINE)
        finally:
            os.close(fd)
        assert ready, f"child did not exit within {DEADLINE}s"


    def wait_exited(pid):
        # Block until child ``pid`` has exited, without reaping it.
        wait_pidfd(os.pidfd_open(pid))


    def is_unreaped_zombie(pid):
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info is not None


    def is_running(pid):
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info is None
"""

SERVER_ARGV = '[sys.executable, "-c", "import sys; sys.stdin.read()"]'


def inner(source: str) -> str:
    return textwrap.dedent(source).replace("SERVER_ARGV", SERVER_ARGV)


def run_clean(
    pytester: pytest.Pytester, run_inner: RunInner, *args: str
) -> pytest.RunResult:
    pytester.makeconftest(inner(INNER_CONFTEST))
    return run_inner("-v", *args)


def assert_all_passed(result: pytest.RunResult, nodeids: Sequence[str]) -> None:
    """Every named inner test passed and the plugin, on, reported nothing."""
    output = result.stdout.str() + "\n" + result.stderr.str()
    result.stdout.fnmatch_lines(["nozombies: mode=fail, *"])
    for nodeid in nodeids:
        result.stdout.fnmatch_lines([f"{glob.escape(nodeid)} PASSED*"])
    result.assert_outcomes(passed=len(nodeids))
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*= nozombies: *")
    for text in (
        "zombie child process",
        "left running",
        "ZombieWarning",
        "internal error",
        "INTERNALERROR",
    ):
        assert text not in output, f"{text!r} in the inner output"


def test_harness_sees_a_leak(pytester: pytest.Pytester, run_inner: RunInner) -> None:
    """The checks this file relies on do fail when a test really leaks."""
    pytester.makepyfile(
        inner(
            """
            import subprocess, sys
            from conftest import wait_exited

            kept = []  # a dropped Popen reaps its child in __del__

            def test_leaks():
                kept.append(subprocess.Popen([sys.executable, "-c", "pass"]))
                wait_exited(kept[-1].pid)
            """
        )
    )
    result = run_clean(pytester, run_inner)
    result.stdout.fnmatch_lines(["*test left 1 zombie child process*"])
    with pytest.raises(AssertionError):
        assert_all_passed(result, ["test_harness_sees_a_leak.py::test_leaks"])


def test_subprocess_waited_for(pytester: pytest.Pytester, run_inner: RunInner) -> None:
    pytester.makepyfile(
        inner(
            """
            import concurrent.futures
            import os
            import subprocess
            import sys

            import pytest

            EXIT_3 = [sys.executable, "-c", "raise SystemExit(3)"]

            def test_run():
                assert subprocess.run(EXIT_3).returncode == 3

            def test_run_timeout_kills_and_waits():
                # The child blocks on a pipe we keep open, so only the kill
                # after the timeout ends it.
                read_end, write_end = os.pipe()
                blocked = [sys.executable, "-c", f"import os; os.read({read_end}, 1)"]
                try:
                    with pytest.raises(subprocess.TimeoutExpired):
                        subprocess.run(blocked, pass_fds=[read_end], timeout=0.01)
                finally:
                    os.close(read_end)
                    os.close(write_end)

            def test_check_output():
                out = subprocess.check_output([sys.executable, "-c", "print('hi')"])
                assert out.strip() == b"hi"

            def test_check_output_failing():
                with pytest.raises(subprocess.CalledProcessError) as info:
                    subprocess.check_output(EXIT_3)
                assert info.value.returncode == 3

            def test_popen_context_manager():
                with subprocess.Popen(SERVER_ARGV, stdin=subprocess.PIPE) as p:
                    p.stdin.write(b"bye")
                assert p.returncode == 0

            def test_popen_wait():
                p = subprocess.Popen(EXIT_3)
                assert p.wait(timeout=30) == 3

            def test_popen_kill_then_wait():
                p = subprocess.Popen(SERVER_ARGV, stdin=subprocess.PIPE)
                p.kill()
                assert p.wait(timeout=30) == -9
                p.stdin.close()

            def test_popen_communicate():
                p = subprocess.Popen(
                    SERVER_ARGV, stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
                assert p.communicate(b"x", timeout=30) == (b"", None)
                assert p.returncode == 0

            def test_shell():
                assert subprocess.run("exit 4", shell=True).returncode == 4

            def test_run_from_another_thread():
                def run(_):
                    return subprocess.run(EXIT_3).returncode

                with concurrent.futures.ThreadPoolExecutor(2) as pool:
                    assert list(pool.map(run, range(4))) == [3, 3, 3, 3]
            """
        )
    )
    result = run_clean(pytester, run_inner)
    module = "test_subprocess_waited_for.py"
    assert_all_passed(
        result,
        [
            f"{module}::{name}"
            for name in (
                "test_run",
                "test_run_timeout_kills_and_waits",
                "test_check_output",
                "test_check_output_failing",
                "test_popen_context_manager",
                "test_popen_wait",
                "test_popen_kill_then_wait",
                "test_popen_communicate",
                "test_shell",
                "test_run_from_another_thread",
            )
        ],
    )


def test_os_level_children_waited_for(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        inner(
            """
            import os
            import pty
            import sys

            def test_fork_waitpid():
                pid = os.fork()
                if pid == 0:
                    os._exit(7)
                assert os.waitpid(pid, 0) == (pid, 7 << 8)

            def test_fork_wait():
                pid = os.fork()
                if pid == 0:
                    os._exit(7)
                assert os.wait() == (pid, 7 << 8)

            def test_fork_waitstatus_to_exitcode():
                pids = []
                for code in range(3):
                    pid = os.fork()
                    if pid == 0:
                        os._exit(code)
                    pids.append(pid)
                codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
                assert codes == [0, 1, 2]

            def test_posix_spawn_waitpid():
                argv = [sys.executable, "-c", "raise SystemExit(2)"]
                pid = os.posix_spawn(sys.executable, argv, os.environ)
                assert os.waitpid(pid, 0) == (pid, 2 << 8)

            def test_pty_fork_waitpid():
                pid, fd = pty.fork()
                if pid == 0:
                    os._exit(0)
                try:
                    assert os.waitpid(pid, 0) == (pid, 0)
                finally:
                    os.close(fd)
            """
        )
    )
    result = run_clean(pytester, run_inner)
    module = "test_os_level_children_waited_for.py"
    assert_all_passed(
        result,
        [
            f"{module}::{name}"
            for name in (
                "test_fork_waitpid",
                "test_fork_wait",
                "test_fork_waitstatus_to_exitcode",
                "test_posix_spawn_waitpid",
                "test_pty_fork_waitpid",
            )
        ],
    )


def test_multiprocessing_joined(pytester: pytest.Pytester, run_inner: RunInner) -> None:
    """Process.join under every start method; the stdlib helpers it starts
    (forkserver, resource tracker) keep running across tests and are not leaks.
    """
    pytester.makepyfile(
        inner(
            """
            import concurrent.futures
            import multiprocessing
            import sys
            from multiprocessing import forkserver, resource_tracker, shared_memory

            import pytest
            from conftest import is_running

            def exit_with(code):
                sys.exit(code)

            def square(x):
                return x * x

            def helper_pids():
                return {
                    "forkserver": forkserver._forkserver._forkserver_pid,
                    "resource tracker": resource_tracker._resource_tracker._pid,
                }

            def test_shared_memory_starts_resource_tracker():
                assert resource_tracker._resource_tracker._pid is None
                shm = shared_memory.SharedMemory(create=True, size=16)
                try:
                    shm.buf[0] = 1
                finally:
                    shm.close()
                    shm.unlink()
                assert is_running(resource_tracker._resource_tracker._pid)

            @pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
            def test_process_join(method):
                p = multiprocessing.get_context(method).Process(
                    target=exit_with, args=(3,)
                )
                p.start()
                p.join(timeout=30)
                assert p.exitcode == 3

            def test_spawn_queue():
                ctx = multiprocessing.get_context("spawn")
                q = ctx.Queue()
                q.put("x")
                assert q.get(timeout=30) == "x"
                q.close()
                q.join_thread()

            def test_pool_with_block():
                with multiprocessing.Pool(2) as pool:
                    assert pool.map(square, range(4)) == [0, 1, 4, 9]

            def test_process_pool_executor_with_block():
                with concurrent.futures.ProcessPoolExecutor(2) as pool:
                    assert list(pool.map(square, range(4))) == [0, 1, 4, 9]

            def test_manager_with_block():
                with multiprocessing.Manager() as manager:
                    shared = manager.list([1])
                    assert list(shared) == [1]

            def test_helpers_outlive_the_tests_that_started_them():
                pids = helper_pids()
                assert all(pids.values()), pids
                assert all(is_running(pid) for pid in pids.values()), pids
            """
        )
    )
    result = run_clean(pytester, run_inner)
    module = "test_multiprocessing_joined.py"
    assert_all_passed(
        result,
        [
            f"{module}::{name}"
            for name in (
                "test_shared_memory_starts_resource_tracker",
                "test_process_join[fork]",
                "test_process_join[spawn]",
                "test_process_join[forkserver]",
                "test_spawn_queue",
                "test_pool_with_block",
                "test_process_pool_executor_with_block",
                "test_manager_with_block",
                "test_helpers_outlive_the_tests_that_started_them",
            )
        ],
    )


def test_asyncio_subprocesses_awaited(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        inner(
            """
            import asyncio
            import sys

            def test_exec_wait():
                async def main():
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-c", "raise SystemExit(5)"
                    )
                    return await proc.wait()

                assert asyncio.run(main()) == 5

            def test_exec_communicate():
                async def main():
                    proc = await asyncio.create_subprocess_exec(
                        *SERVER_ARGV,
                        stdin=asyncio.subprocess.PIPE,
                    )
                    await proc.communicate(b"bye")
                    return proc.returncode

                assert asyncio.run(main()) == 0

            def test_shell_gathered():
                async def one(code):
                    proc = await asyncio.create_subprocess_shell(f"exit {code}")
                    return await proc.wait()

                async def main():
                    return await asyncio.gather(*(one(c) for c in range(3)))

                assert asyncio.run(main()) == [0, 1, 2]
            """
        )
    )
    result = run_clean(pytester, run_inner)
    module = "test_asyncio_subprocesses_awaited.py"
    assert_all_passed(
        result,
        [
            f"{module}::test_exec_wait",
            f"{module}::test_exec_communicate",
            f"{module}::test_shell_gathered",
        ],
    )


def test_sigchld_ignored(pytester: pytest.Pytester, run_inner: RunInner) -> None:
    """With SIGCHLD ignored the kernel reaps every child: nothing to blame."""
    pytester.makepyfile(
        inner(
            """
            import os
            import signal
            import subprocess
            import sys

            import pytest
            from conftest import wait_pidfd

            @pytest.fixture
            def sigchld_ignored():
                previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
                yield
                signal.signal(signal.SIGCHLD, previous)

            def gone(pid):
                # Auto-reaped: no zombie left to wait for.
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    return True
                return False

            def test_children_never_waited_for(sigchld_ignored):
                # Both children block until released, so their pidfds can be
                # opened before the kernel reaps them.
                p = subprocess.Popen(SERVER_ARGV, stdin=subprocess.PIPE)
                read_end, write_end = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(write_end)
                    os.read(read_end, 1)
                    os._exit(0)
                os.close(read_end)
                pidfds = [os.pidfd_open(p.pid), os.pidfd_open(pid)]
                os.close(write_end)
                p.stdin.close()
                for fd in pidfds:
                    wait_pidfd(fd)
                assert gone(pid)
                assert gone(p.pid)

            def test_run_and_wait(sigchld_ignored):
                # Popen reads ECHILD as "exited with 0".
                assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0
                p = subprocess.Popen([sys.executable, "-c", "pass"])
                assert p.wait(timeout=30) == 0
            """
        )
    )
    result = run_clean(pytester, run_inner)
    module = "test_sigchld_ignored.py"
    assert_all_passed(
        result,
        [f"{module}::test_children_never_waited_for", f"{module}::test_run_and_wait"],
    )


def test_fixture_servers_waited_for_in_teardown(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    """A session fixture's server lives across tests and modules; a function
    fixture's dies in its teardown. Neither is any test's leak.
    """
    pytester.makeconftest(
        inner(INNER_CONFTEST)
        + inner(
            """

            import subprocess
            import sys

            import pytest

            @pytest.fixture(scope="session")
            def session_server():
                proc = subprocess.Popen(SERVER_ARGV, stdin=subprocess.PIPE)
                yield proc
                proc.stdin.close()
                assert proc.wait(timeout=DEADLINE) == 0

            @pytest.fixture
            def function_server():
                proc = subprocess.Popen(SERVER_ARGV, stdin=subprocess.PIPE)
                yield proc
                proc.kill()
                assert proc.wait(timeout=DEADLINE) == -9
            """
        )
    )
    pytester.makepyfile(
        test_a="""
            import subprocess, sys

            def test_one(session_server):
                assert session_server.poll() is None

            def test_without_it():
                assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0

            def test_two(session_server, function_server):
                assert session_server.poll() is None
                assert function_server.poll() is None
            """,
        test_b="""
            def test_three(session_server):
                assert session_server.poll() is None

            def test_four(function_server):
                assert function_server.poll() is None

            def test_five(session_server):
                assert session_server.poll() is None
            """,
    )
    result = run_inner("-v")
    assert_all_passed(
        result,
        [
            "test_a.py::test_one",
            "test_a.py::test_without_it",
            "test_a.py::test_two",
            "test_b.py::test_three",
            "test_b.py::test_four",
            "test_b.py::test_five",
        ],
    )


def test_module_fixture_server_dies_mid_module(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    """The server stops during one test and stays an unreaped zombie until its
    fixture waits for it: no test is blamed, and the plugin does not reap it
    behind the fixture's back.
    """
    pytester.makepyfile(
        inner(
            """
            import subprocess
            import sys

            import pytest
            from conftest import DEADLINE, is_unreaped_zombie, wait_exited

            @pytest.fixture(scope="module")
            def server():
                proc = subprocess.Popen(SERVER_ARGV, stdin=subprocess.PIPE)
                yield proc
                assert proc.returncode is None, "reaped behind the fixture's back"
                proc.stdin.close()
                assert proc.wait(timeout=DEADLINE) == 0

            def test_before(server):
                assert server.poll() is None

            def test_stops_server(server):
                server.stdin.close()
                wait_exited(server.pid)
                assert is_unreaped_zombie(server.pid)

            def test_after(server):
                assert is_unreaped_zombie(server.pid)

            def test_unrelated_spawner():
                assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0

            def test_last(server):
                assert is_unreaped_zombie(server.pid)
            """
        )
    )
    result = run_clean(pytester, run_inner)
    module = "test_module_fixture_server_dies_mid_module.py"
    assert_all_passed(
        result,
        [
            f"{module}::{name}"
            for name in (
                "test_before",
                "test_stops_server",
                "test_after",
                "test_unrelated_spawner",
                "test_last",
            )
        ],
    )


def test_wider_fixture_child_costs_no_grace(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    """The grace is for a test's own exiting children; a module fixture's child
    that runs across 20 tests must not make any of them wait for it.
    """
    grace = 5
    pytester.makepyfile(
        inner(
            f"""
            import subprocess
            import sys
            import time

            import pytest
            from conftest import DEADLINE

            GRACE = {grace}
            started = []

            @pytest.fixture(scope="module")
            def server():
                proc = subprocess.Popen(SERVER_ARGV, stdin=subprocess.PIPE)
                yield proc
                proc.stdin.close()
                assert proc.wait(timeout=DEADLINE) == 0

            @pytest.mark.parametrize("i", range(20))
            def test_uses_server(server, i):
                started.append(time.monotonic())
                assert server.poll() is None
                # Had any earlier test waited out the grace, this is past it.
                elapsed = started[-1] - started[0]
                assert elapsed < GRACE, f"grace spent: {{elapsed:.1f}}s"
            """
        )
    )
    result = run_clean(pytester, run_inner, f"--nozombies-grace={grace}", "-x")
    result.stdout.fnmatch_lines([f"nozombies: mode=fail, grace={grace}s, *"])
    module = "test_wider_fixture_child_costs_no_grace.py"
    assert_all_passed(result, [f"{module}::test_uses_server[{i}]" for i in range(20)])
