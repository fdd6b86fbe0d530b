"""Never disturb, never hang (issue 13).

Code that waits for its children runs exactly as it does without the plugin:
no innocent test fails, every exit status the code under test reads is the
true one, and nothing the plugin does can hang a run, keep a descriptor, or
escape its guard as an INTERNALERROR. Each test runs a real inner suite in a
subprocess; races run enough iterations to hit them and assert exact values,
and possible hangs run under a deadline (faulthandler in the inner run, and
run_inner's timeout) so that a regression fails instead of hanging.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from textwrap import dedent

import pytest

from helpers import DEADLINE, RunInner, line_of, private_pid_namespace

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Linux: pidfds and /proc"
)

#: Imported by the inner test modules (pytester's folder is on sys.path).
INNER_HELPERS = """
import os
import pathlib
import select
import signal
import time

#: Upper bound of any wait on one child; the inner run's own deadline is longer.
DEADLINE = 30.0


def wait_exited(pid, timeout=DEADLINE):
    # Block until child ``pid`` has exited; it stays a zombie.
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        raise TimeoutError(f"child {pid} still running after {timeout}s")


def reap(pid, timeout=DEADLINE):
    # os.waitpid with a deadline: a child that hangs is killed and the test
    # fails, rather than the run hanging. Returns the exit code.
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"child {pid} hung: still running after {timeout}s")
    got, status = os.waitpid(pid, 0)
    assert got == pid
    return os.waitstatus_to_exitcode(status)


def wait_for(predicate, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(0.001)


def record_pid(pid, name):
    pathlib.Path(f"{name}.pid").write_text(str(pid))
"""

#: An inner conftest fixture that kills a hung inner test with every
#: thread's stack, well before run_inner's own timeout.
INNER_DEADLINE = f"""
import faulthandler
import pytest

@pytest.fixture(autouse=True)
def _deadline():
    faulthandler.dump_traceback_later({DEADLINE * 2}, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
"""

HINT = "Wait for every child you start*"


def write(pytester: pytest.Pytester, source: str, name: str = "test_x") -> Path:
    """Write an inner test module and the helpers it imports; return its path."""
    pytester.makepyfile(inner_helpers=INNER_HELPERS)
    return pytester.makepyfile(**{name: dedent(source)})


def pid_of(pytester: pytest.Pytester, name: str) -> int:
    return int((pytester.path / f"{name}.pid").read_text())


def assert_undisturbed(result: pytest.RunResult, passed: int) -> None:
    """Every inner test passed, the plugin was on, and it reported nothing."""
    output = result.stdout.str() + "\n" + result.stderr.str()
    result.stdout.fnmatch_lines(["nozombies: mode=fail, *"])
    result.assert_outcomes(passed=passed)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*= nozombies: *")
    for text in (
        "zombie child",
        "zombie leak",
        "internal error",
        "INTERNALERROR",
        "Timeout",
    ):
        assert text not in output, f"{text!r} in the inner output"


# --- 1. children another thread waits for are neither blamed nor reaped ------


def test_a_thread_running_commands_across_many_tests_is_never_disturbed(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    """A session fixture's thread loops ``subprocess.run`` while 250 short
    tests run: whatever state its child is in when a test ends (running,
    exiting, a zombie its ``Popen.wait`` is about to collect), no test is
    blamed and every exit status the thread reads is the true one."""
    pytester.makeconftest(
        INNER_DEADLINE
        + dedent(
            """
            import json, pathlib, subprocess, threading
            import pytest
            from inner_helpers import DEADLINE

            @pytest.fixture(scope="session")
            def runner():
                codes = []
                stop = threading.Event()

                def loop():
                    while not stop.is_set():
                        run = subprocess.run(["sh", "-c", "sleep 0.02; exit 3"])
                        codes.append(run.returncode)

                thread = threading.Thread(target=loop, name="runner")
                thread.start()
                yield codes
                stop.set()
                thread.join(DEADLINE)
                pathlib.Path("codes.json").write_text(json.dumps(codes))
            """
        )
    )
    write(
        pytester,
        """
        import pytest
        from inner_helpers import wait_for

        @pytest.mark.parametrize("i", range(250))
        def test_short(runner, i):
            # Lasts until the thread finished one more run, so that every
            # test ends with one of the thread's children in flight.
            done = len(runner)
            wait_for(lambda: len(runner) > done)
        """,
    )
    result = run_inner()
    assert_undisturbed(result, passed=250)
    codes = json.loads((pytester.path / "codes.json").read_text())
    assert len(codes) >= 250
    assert codes == [3] * len(codes)


WAITED_BY_THREADS = {
    "process pool shut down without waiting, or dropped": (
        """
        import concurrent.futures, multiprocessing, threading
        import pytest
        from inner_helpers import DEADLINE

        #: Every worker of every pool, to check how each one ended.
        WORKERS = {}

        def square(x):
            return x * x

        def start_pool():
            pool = concurrent.futures.ProcessPoolExecutor(2)
            assert list(pool.map(square, range(4))) == [0, 1, 4, 9]
            for process in multiprocessing.active_children():
                # By object, not pid: pids are reused (pid_max may be 32768).
                WORKERS.setdefault(id(process), process)
            return pool

        @pytest.mark.parametrize("i", range(20))
        def test_shutdown_without_wait(i):
            # The executor's own thread joins the workers.
            start_pool().shutdown(wait=False)

        @pytest.mark.parametrize("i", range(20))
        def test_dropped(i):
            # Dropping the executor wakes its thread, which joins the workers.
            start_pool()

        def test_every_worker_ended_cleanly():
            # Each executor's thread joins its workers. A worker joined from
            # two threads at once can lose its exit code (the loser's waitpid
            # fails before the winner stores it), plugin or not: so wait for
            # those threads first.
            manager = concurrent.futures.process._ExecutorManagerThread
            for thread in threading.enumerate():
                if isinstance(thread, manager):
                    thread.join(DEADLINE)
                    assert not thread.is_alive()
            for process in WORKERS.values():
                process.join(DEADLINE)
            assert len(WORKERS) == 80
            assert [p.exitcode for p in WORKERS.values()] == [0] * 80
        """,
        41,
    ),
    "asyncio subprocesses awaited": (
        """
        import asyncio
        import pytest

        async def run_all(codes):
            procs = [
                await asyncio.create_subprocess_exec("sh", "-c", f"exit {code}")
                for code in codes
            ]
            return [await proc.wait() for proc in procs]

        async def read_output(text):
            proc = await asyncio.create_subprocess_exec(
                "echo", text, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await proc.communicate()
            return out, proc.returncode

        @pytest.mark.parametrize("i", range(30))
        def test_awaited(i):
            codes = list(range(i % 7, i % 7 + 4))
            assert asyncio.run(run_all(codes)) == codes
            assert asyncio.run(read_output(f"run {i}")) == (f"run {i}\\n".encode(), 0)
        """,
        30,
    ),
    "a thread blocked in os.waitpid(pid, 0)": (
        """
        import os, threading
        import pytest
        from inner_helpers import DEADLINE

        THREADS = []
        RESULTS = []

        def wait_for_it(pid):
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError as exc:
                RESULTS.append(repr(exc))
            else:
                RESULTS.append(os.waitstatus_to_exitcode(status))

        @pytest.mark.parametrize("how", ["fork", "posix_spawn"])
        @pytest.mark.parametrize("i", range(25))
        def test_left_to_a_thread(i, how):
            if how == "fork":
                pid = os.fork()
                if pid == 0:
                    os._exit(5)
            else:
                pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 5"], os.environ)
            thread = threading.Thread(target=wait_for_it, args=(pid,))
            thread.start()
            THREADS.append(thread)  # the test ends while it waits, or before

        def test_every_thread_got_its_childs_status():
            for thread in THREADS:
                thread.join(DEADLINE)
            assert RESULTS == [5] * 50
        """,
        51,
    ),
}


@pytest.mark.parametrize("case", WAITED_BY_THREADS)
def test_children_that_threads_wait_for_are_neither_blamed_nor_reaped(
    pytester: pytest.Pytester, run_inner: RunInner, case: str
) -> None:
    source, passed = WAITED_BY_THREADS[case]
    pytester.makeconftest(INNER_DEADLINE)
    write(pytester, source)
    assert_undisturbed(run_inner(), passed=passed)


def test_a_child_left_to_a_thread_that_never_waits_is_still_a_leak(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    """Another thread holding a child, or having spawned it, is not enough:
    a zombie that no thread waits for is a leak of the test that spawned it,
    and is reaped through its Popen after the report."""
    path = write(
        pytester,
        """
        import subprocess, threading
        from inner_helpers import DEADLINE, record_pid, wait_exited, wait_for

        release = threading.Event()
        KEPT = []
        THREADS = []

        def hold(popen):
            release.wait(DEADLINE)  # holds the Popen, never waits for its child

        def spawn_and_hold():
            KEPT.append(subprocess.Popen(["sh", "-c", "exit 4"]))  # SPAWN-B
            release.wait(DEADLINE)

        def start(target, *args, name):
            thread = threading.Thread(target=target, args=args, name=name)
            thread.start()
            THREADS.append(thread)

        def test_handed_to_a_thread():
            KEPT.append(subprocess.Popen(["sh", "-c", "exit 3"]))  # SPAWN-A
            start(hold, KEPT[0], name="holder")
            record_pid(KEPT[0].pid, "a")
            wait_exited(KEPT[0].pid)

        def test_spawned_by_a_thread():
            start(spawn_and_hold, name="spawner")
            wait_for(lambda: len(KEPT) == 2)
            record_pid(KEPT[1].pid, "b")
            wait_exited(KEPT[1].pid)

        def test_after():
            release.set()
            for thread in THREADS:
                thread.join(DEADLINE)
            # Reaped through their Popens after the report: the true codes.
            assert [p.returncode for p in KEPT] == [3, 4]
        """,
    )
    result = run_inner("--nozombies-report=report.json")
    result.assert_outcomes(passed=3, errors=2)
    a, b = pid_of(pytester, "a"), pid_of(pytester, "b")
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_handed_to_a_thread _*",
            "test left 1 zombie child process (exited, never waited for):",
            f"  pid {a}: sh -c 'exit 3'",
            "    ended: exited with code 3",
            "    spawned by: subprocess.Popen during "
            "test_x.py::test_handed_to_a_thread (call)",
            f"    spawned at: test_x.py:{line_of(path, 'SPAWN-A')}",
            HINT,
            "*_ ERROR at teardown of test_spawned_by_a_thread _*",
            "test left 1 zombie child process (exited, never waited for):",
            f"  pid {b}: sh -c 'exit 4'",
            "    ended: exited with code 4",
            "    spawned by: subprocess.Popen from thread 'spawner' during "
            "test_x.py::test_spawned_by_a_thread (call)",
            f"    spawned at: test_x.py:{line_of(path, 'SPAWN-B')}",
            HINT,
        ]
    )
    leaks = json.loads((pytester.path / "report.json").read_text())["leaks"]
    assert [(leak["pid"], leak["nodeid"], leak["late"]) for leak in leaks] == [
        (a, "test_x.py::test_handed_to_a_thread", False),
        (b, "test_x.py::test_spawned_by_a_thread", False),
    ]


# --- 2. fork-safe and signal-safe recording ----------------------------------


def test_forks_and_signal_handlers_that_spawn_never_hang(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    """Nothing the recording holds survives into a forked child or blocks a
    spawn from a signal handler that interrupted a spawn."""
    pytester.makeconftest(
        INNER_DEADLINE
        + dedent(
            """
            import os, subprocess, sys, threading
            import pytest
            from inner_helpers import DEADLINE, reap

            @pytest.fixture
            def busy_threads():
                # Threads that spawn all the time, switched between as often as
                # the interpreter can, so that many forks happen while another
                # thread is inside the spawn recording.
                stop = threading.Event()
                codes = []

                def loop():
                    while not stop.is_set():
                        codes.append(reap(os.posix_spawn("/bin/true", ["true"], {})))
                        codes.append(subprocess.run(["true"]).returncode)

                threads = [threading.Thread(target=loop) for _ in range(3)]
                for thread in threads:
                    thread.start()
                interval = sys.getswitchinterval()
                sys.setswitchinterval(1e-6)
                yield
                sys.setswitchinterval(interval)
                stop.set()
                for thread in threads:
                    thread.join(DEADLINE)
                assert codes and set(codes) == {0}
            """
        )
    )
    write(
        pytester,
        """
        import multiprocessing, os, signal, subprocess, sys
        import pytest
        from inner_helpers import DEADLINE, reap

        def test_daemon_style_double_forks(busy_threads):
            for i in range(1000):
                pid = os.fork()
                if pid == 0:
                    # The intermediate child forks the daemon and leaves.
                    if os.fork() == 0:
                        os._exit(0)
                    os._exit(0)
                assert reap(pid) == 0, f"fork {i}"

        def run_a_command():
            sys.exit(subprocess.run(["sh", "-c", "exit 7"]).returncode)

        def test_fork_context_processes_running_commands(busy_threads):
            context = multiprocessing.get_context("fork")
            for i in range(100):
                process = context.Process(target=run_a_command)
                process.start()
                process.join(DEADLINE)
                if process.exitcode is None:
                    process.kill()
                    process.join()
                    pytest.fail(f"process {i} hung")
                assert process.exitcode == 7

        def test_a_signal_handler_spawns_while_the_code_spawns():
            from_handler = []

            def on_alarm(signum, frame):
                argv = ["true"]
                from_handler.append(os.posix_spawn("/bin/true", argv, os.environ))

            previous = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
            try:
                for _ in range(300):
                    argv = ["sh", "-c", "exit 2"]
                    assert reap(os.posix_spawn("/bin/sh", argv, os.environ)) == 2
                    assert subprocess.run(["sh", "-c", "exit 3"]).returncode == 3
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0, 0)
                signal.signal(signal.SIGALRM, previous)
            assert from_handler
            assert [reap(pid) for pid in from_handler] == [0] * len(from_handler)
        """,
    )
    assert_undisturbed(run_inner(), passed=3)


# --- 3. no descriptor per child ----------------------------------------------


def test_children_cost_no_descriptor(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makeconftest(
        """
        import resource

        # ulimit -n 1024, as many CI images and shells have it.
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        soft = 1024 if hard == resource.RLIM_INFINITY else min(1024, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        """
    )
    write(
        pytester,
        """
        import multiprocessing, os, resource, subprocess
        import pytest
        from inner_helpers import DEADLINE

        def descriptors():
            return sorted(os.listdir("/proc/self/fd"))

        def test_more_forks_than_the_descriptor_limit():
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= 1024
            for _ in range(1100):
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                assert os.waitpid(pid, 0) == (pid, 0)
            with open(__file__) as f:
                assert f.readline()

        def test_joined_processes_leave_the_descriptors_as_they_were():
            context = multiprocessing.get_context("fork")
            before = descriptors()
            for _ in range(600):
                process = context.Process(target=int)
                process.start()
                process.join(DEADLINE)
                assert process.exitcode == 0
                process.close()
            assert descriptors() == before

        @pytest.mark.parametrize("how", ["fork", "posix_spawn", "Popen"])
        def test_a_waited_child_leaves_the_descriptors_as_they_were(how):
            before = descriptors()
            if how == "fork":
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                assert os.waitpid(pid, 0) == (pid, 0)
            elif how == "posix_spawn":
                pid = os.posix_spawn("/bin/true", ["true"], os.environ)
                assert os.waitpid(pid, 0) == (pid, 0)
            else:
                assert subprocess.Popen(["true"]).wait(DEADLINE) == 0
            assert descriptors() == before
        """,
    )
    assert_undisturbed(run_inner(), passed=5)


# --- 4. identity holds for every record --------------------------------------


def run_as_pid_1(pytester: pytest.Pytester) -> pytest.RunResult:
    """Run the inner session as pid 1 of a pid namespace of its own, where it
    may force the next pid through ``ns_last_pid`` and touch nothing else on
    the machine; skip where the machine allows no such namespace."""
    prefix = private_pid_namespace()
    if prefix is None:
        pytest.skip("cannot make a private pid namespace with ns_last_pid here")
    basetemp = pytester.path / "basetemp"
    return pytester.run(
        *prefix,
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        f"--basetemp={basetemp}",
        timeout=DEADLINE * 4,
    )


def test_a_reused_pid_is_never_taken_for_a_popens_child(
    pytester: pytest.Pytester,
) -> None:
    """A Popen's child is reaped behind its back (a SIGCHLD handler) and its
    pid goes to a stranger (forced through ``ns_last_pid``, inside a pid
    namespace of the inner run's own, so nothing else on the machine is
    touched). The stranger is reported as itself, and never reaped through
    the stale Popen."""
    path = write(
        pytester,
        """
        import os, signal, subprocess
        from inner_helpers import record_pid, wait_exited, wait_for

        STATE = {}

        def test_pid_reused():
            argv = ["sh", "-c", "read x; exit 3"]
            popen = subprocess.Popen(argv, stdin=subprocess.PIPE)
            reaped = []

            def on_sigchld(signum, frame):
                if not reaped and os.waitpid(popen.pid, os.WNOHANG)[0]:
                    reaped.append(popen.pid)

            previous = signal.signal(signal.SIGCHLD, on_sigchld)
            popen.stdin.close()  # the child exits; the handler reaps it
            wait_for(lambda: reaped)
            signal.signal(signal.SIGCHLD, previous)
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(popen.pid - 1))
            argv = ["sh", "-c", "exit 9"]
            stranger = os.posix_spawn("/bin/sh", argv, os.environ)  # SPAWN
            assert stranger == popen.pid, "the pid was not reused"
            STATE.update(popen=popen, stranger=stranger)
            record_pid(stranger, "stranger")
            wait_exited(stranger)

        def test_after():
            # Nobody reaped through the stale Popen: its returncode is what
            # the handler left it, and the stranger waits for its owner.
            assert STATE["popen"].returncode is None
            _, status = os.waitpid(STATE["stranger"], 0)
            assert os.waitstatus_to_exitcode(status) == 9
        """,
    )
    result = run_as_pid_1(pytester)
    result.assert_outcomes(passed=2, errors=1)
    stranger = pid_of(pytester, "stranger")
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_pid_reused _*",
            "test left 1 zombie child process (exited, never waited for):",
            f"  pid {stranger}: sh -c 'exit 9'",
            "    ended: exited with code 9",
            "    spawned by: os.posix_spawn during test_x.py::test_pid_reused (call)",
            f"    spawned at: test_x.py:{line_of(path, '# SPAWN')}",
            HINT,
        ]
    )
    assert "exit 3" not in result.stdout.str()


#: The later child that gets a reaped fork's pid before that fork is noted:
#: how it is spawned (``later`` is its pid), what test_after asserts, and how
#: the report names it.
LATER_CHILDREN = {
    "a Popen": (
        """
            popen = subprocess.Popen(["sh", "-c", "exit 9"])  # SPAWN
            later = popen.pid
            STATE["popen"] = popen
        """,
        'assert STATE["popen"].returncode == 9  # reaped through it',
        "sh -c 'exit 9'",
        "subprocess.Popen",
    ),
    "a fork": (
        """
            later = os.fork()  # SPAWN
            if later == 0:
                os._exit(9)
        """,
        # Left for the code that made it, which collects it now.
        '_, status = os.waitpid(STATE["later"], 0)\n'
        "            assert os.waitstatus_to_exitcode(status) == 9",
        "[[]*[]] (forked by os.fork)",
        "os.fork",
    ),
}


@pytest.mark.parametrize("later", LATER_CHILDREN)
def test_a_fork_noted_late_never_takes_the_record_of_a_later_child(
    pytester: pytest.Pytester, later: str
) -> None:
    """Forks are noted in batches, after the fact. A fork's child is reaped
    before it is noted, and a later child gets its pid (forced through
    ``ns_last_pid`` in a private pid namespace): that child is reported once,
    as itself, with its own spawning line."""
    spawn, after, command, spawned_by = LATER_CHILDREN[later]
    source = """
        import os, subprocess
        from inner_helpers import wait_exited

        STATE = {}

        def test_pid_reused():
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
            SPAWN_LATER
            assert later == pid, "the pid was not reused"
            STATE["later"] = later
            wait_exited(later)

        def test_after():
            AFTER
        """
    source = source.replace(
        "SPAWN_LATER", dedent(spawn).strip().replace("\n", "\n" + " " * 12)
    )
    path = write(pytester, source.replace("AFTER", after))
    result = run_as_pid_1(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_pid_reused _*",
            "test left 1 zombie child process (exited, never waited for):",
            f"  pid *: {command}",
            "    ended: exited with code 9",
            f"    spawned by: {spawned_by} during test_x.py::test_pid_reused (call)",
            f"    spawned at: test_x.py:{line_of(path, '# SPAWN')}",
            HINT,
        ]
    )


# --- 6. after an internal error, nothing more is judged ----------------------


def test_fault_injection_after_an_internal_error_nothing_more_is_judged(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    """A module fixture's judging fails inside the teardown of the test that
    finalizes it: the checks turn off there, and that test's own judging,
    which follows in the same teardown, does not run; nor does any later."""
    # Fault injection: a bug of ours, once, while the fixture is judged; the
    # fault is gone after it, so whatever is judged later is judged for real.
    pytester.makeconftest(
        """
        import subprocess
        import pytest
        from pytest_nozombies.tracker import Tracker

        original = Tracker.end_fixture

        def fails_once(self, *args, **kwargs):
            Tracker.end_fixture = original
            raise PermissionError(13, "Permission denied", "/proc/self/task")

        @pytest.fixture(scope="module")
        def server():
            with subprocess.Popen(["sleep", "60"]) as popen:
                yield popen
                popen.kill()
            Tracker.end_fixture = fails_once  # judged right after this
        """
    )
    pytester.makepyfile(inner_helpers=INNER_HELPERS)
    leak = """
        import subprocess
        from inner_helpers import wait_exited

        KEPT = []

        def leak():
            KEPT.append(subprocess.Popen(["true"]))
            wait_exited(KEPT[-1].pid)
        """
    pytester.makepyfile(
        test_a=dedent(leak) + "\n\ndef test_uses_server(server):\n    leak()\n",
        test_b=dedent(leak) + "\n\ndef test_after():\n    leak()\n",
    )
    result = run_inner("-p", "no:randomly")
    result.assert_outcomes(passed=2, warnings=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*pytest-nozombies: internal error (PermissionError(13, 'Permission "
            "denied')); zombie checks are off for the rest of this run.*"
        ]
    )
    output = result.stdout.str() + result.stderr.str()
    for text in ("zombie child", "not spawned through Python", "INTERNALERROR"):
        assert text not in output


# --- 10. a raw fork's zombie is reported once and left as it is --------------


def test_a_raw_childs_zombie_is_reported_once_and_left_for_its_owner(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    """A class that keeps a pid and waits for it in ``close()``, called in
    the next test, gets its child's true status: the plugin reported the
    zombie and left it as it would be without the plugin."""
    path = write(
        pytester,
        """
        import os
        import pytest
        from inner_helpers import record_pid, wait_exited

        class Child:
            def __init__(self, how):
                self.fd = None
                if how == "fork":
                    self.pid = os.fork()  # fork-spawn
                    if self.pid == 0:
                        os._exit(5)
                elif how == "forkpty":
                    self.pid, self.fd = os.forkpty()  # forkpty-spawn
                    if self.pid == 0:
                        os._exit(5)
                else:
                    argv, env = ["sh", "-c", "exit 5"], os.environ
                    self.pid = os.posix_spawn("/bin/sh", argv, env)  # posix_spawn-spawn

            def close(self):
                _, status = os.waitpid(self.pid, 0)
                if self.fd is not None:
                    os.close(self.fd)
                return os.waitstatus_to_exitcode(status)

        HELD = []

        @pytest.mark.parametrize("how", ["fork", "forkpty", "posix_spawn"])
        def test_leaves_a_zombie(how):
            HELD.append(Child(how))
            record_pid(HELD[-1].pid, how)
            wait_exited(HELD[-1].pid)

        def test_closes_them():
            assert [child.close() for child in HELD] == [5, 5, 5]
        """,
    )
    result = run_inner("--nozombies-report=report.json", "-v", "-p", "no:randomly")
    result.assert_outcomes(passed=4, errors=3)
    for how, command in [
        ("fork", "[[]*] (forked by os.fork)"),
        ("forkpty", "[[]*] (forked by os.forkpty)"),
        ("posix_spawn", "sh -c 'exit 5'"),
    ]:
        result.stdout.fnmatch_lines(
            [
                f"*_ ERROR at teardown of test_leaves_a_zombie[[]{how}] _*",
                "test left 1 zombie child process (exited, never waited for):",
                f"  pid {pid_of(pytester, how)}: {command}",
                "    ended: exited with code 5",
                f"    spawned by: os.{how} during "
                f"test_x.py::test_leaves_a_zombie[[]{how}] (call)",
                f"    spawned at: test_x.py:{line_of(path, f'# {how}-spawn')}",
                HINT,
            ]
        )
    result.stdout.fnmatch_lines(["*= nozombies: 3 zombie leaks =*"])
    result.stdout.fnmatch_lines(["*test_x.py::test_closes_them PASSED*"])
    leaks = json.loads((pytester.path / "report.json").read_text())["leaks"]
    assert [(leak["nodeid"], leak["late"]) for leak in leaks] == [
        (f"test_x.py::test_leaves_a_zombie[{how}]", False)
        for how in ("fork", "forkpty", "posix_spawn")
    ]


def test_a_pexpect_child_is_left_for_pexpect_to_close(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    """pexpect's spawn objects wait for their child in ``close()``, also from
    the garbage collector: under ``filterwarnings = error`` an innocent later
    test must not fail because the plugin took the status first."""
    pytest.importorskip("pexpect")
    pytester.makeini(
        """
        [pytest]
        filterwarnings = error
        """
    )
    write(
        pytester,
        """
        import gc
        import pexpect
        from inner_helpers import record_pid, wait_exited

        HELD = []

        def test_leaves_spawns_open():
            for code in (4, 6):
                # Nothing read: pexpect looks for the child's end only then.
                child = pexpect.spawn("sh", ["-c", f"exit {code}"])
                HELD.append(child)
                record_pid(child.pid, f"exit{code}")
                wait_exited(child.pid)

        def test_closes_one():
            child = HELD.pop(0)
            child.close()
            assert child.exitstatus == 4

        def test_drops_the_other():
            HELD.clear()
            gc.collect()
        """,
    )
    result = run_inner("-v", "-p", "no:randomly")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*::test_leaves_spawns_open PASSED*",
            "*::test_leaves_spawns_open ERROR*",
            "*::test_closes_one PASSED*",
            "*::test_drops_the_other PASSED*",
            "*_ ERROR at teardown of test_leaves_spawns_open _*",
            "test left 2 zombie child processes (exited, never waited for):",
            f"  pid {pid_of(pytester, 'exit4')}: *(forked by os.forkpty)",
            "    ended: exited with code 4",
            f"  pid {pid_of(pytester, 'exit6')}: *(forked by os.forkpty)",
            "    ended: exited with code 6",
        ]
    )
    assert "Did someone else call waitpid" not in result.stdout.str()


# --- 11. every path inside the internal-error guard --------------------------


def test_a_finalizer_that_waits_during_the_first_report_breaks_nothing(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    """Garbage collection runs at nearly every allocation while the first
    leak is reported, and each collection runs a finalizer (of an object in a
    reference cycle) that calls waitpid and fails, which pytest formats with
    ``traceback`` (and so ``ast``). Nothing the plugin needs for the report is
    imported then, let alone rewritten: the report is whole."""
    path = write(
        pytester,
        """
        import gc, os, subprocess
        from inner_helpers import record_pid, wait_exited

        KEPT = []
        CHAIN = [True]

        class Waiter:
            # Waits for its pid when freed; it sits in a reference cycle, so
            # only the garbage collector frees it, and each one freed leaves
            # the next one to free, until the chain is stopped.
            def __init__(self, pid):
                self.pid = pid
                self.me = self

            def __del__(self):
                if CHAIN:
                    Waiter(self.pid)
                os.waitpid(self.pid, os.WNOHANG)

        def test_leaks_while_finalizers_run():
            KEPT.append(subprocess.Popen(["sh", "-c", "exit 3"]))  # SPAWN
            record_pid(KEPT[0].pid, "leak")
            wait_exited(KEPT[0].pid)
            done = os.posix_spawn("/bin/true", ["true"], os.environ)
            os.waitpid(done, 0)
            gc.set_threshold(1, 1, 1)
            Waiter(done)  # its waitpid raises ChildProcessError: already reaped

        def test_stops_the_chain():
            CHAIN.clear()
            gc.collect()
            gc.set_threshold(700, 10, 10)
            assert KEPT[0].returncode == 3  # reaped through its Popen
        """,
    )
    result = run_inner(
        "-p", "no:randomly", "-W", "ignore::pytest.PytestUnraisableExceptionWarning"
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_leaks_while_finalizers_run _*",
            "test left 1 zombie child process (exited, never waited for):",
            f"  pid {pid_of(pytester, 'leak')}: sh -c 'exit 3'",
            "    ended: exited with code 3",
            "    spawned by: subprocess.Popen during "
            "test_x.py::test_leaks_while_finalizers_run (call)",
            f"    spawned at: test_x.py:{line_of(path, '# SPAWN')}",
            HINT,
        ]
    )
    output = result.stdout.str() + result.stderr.str()
    for text in ("SystemError", "INTERNALERROR", "internal error"):
        assert text not in output


def test_the_plugin_is_whole_before_the_first_test(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    """What reporting a leak needs is imported before the first test, and
    pytest's assertion rewriter leaves the plugin's modules alone."""
    write(
        pytester,
        """
        import pkgutil, sys
        import pytest_nozombies

        def test_first():
            names = [m.name for m in pkgutil.iter_modules(pytest_nozombies.__path__)]
            assert "reporting" in names
            needed = {"leaks", "reporting", "results", "report_file", "tracker"}
            assert {f"pytest_nozombies.{n}" for n in needed} <= set(sys.modules)
            for name in names:
                module = sys.modules.get(f"pytest_nozombies.{name}")
                if module is None:
                    continue  # imported only when its option is used
                assert "PYTEST_DONT_REWRITE" in module.__doc__, name
                # What the assertion rewriter adds to every module it rewrites.
                assert "@pytest_ar" not in vars(module), name
        """,
    )
    result = run_inner()
    result.assert_outcomes(passed=1)


#: Where a fault is injected (module, object, attribute), and how many inner
#: tests still error: the leak's own error stands where the fault comes after
#: its test failed; where it comes first, that test is not judged.
HOOK_FAULTS = {
    "setup and makereport (the phase)": ("tracker", "Tracker", "enter_phase", 0),
    "fixture setup": ("tracker", "Tracker", "enter_fixture", 1),
    "collection": ("checks", "TestChecks", "set_items", 0),
    "teardown (the message)": ("reporting", None, "format_message", 0),
    "makereport (findings on the report)": ("leaks", "Leak", "to_json", 1),
    "logreport": ("results", "RunResults", "collect", 1),
    "sessionfinish": ("reporting", None, "summary_stats", 1),
    "terminal summary": ("reporting", None, "write_summary", 1),
    "JSON report": ("results", None, "report_document", 1),
}


@pytest.mark.parametrize("case", HOOK_FAULTS)
def test_fault_injection_in_every_hook_is_one_warning_never_an_internalerror(
    pytester: pytest.Pytester, run_inner: RunInner, case: str
) -> None:
    # Fault injection: an exception from inside the plugin's own code, which
    # only a bug of ours can raise, at each hook in turn.
    module, owner, name, errors = HOOK_FAULTS[case]
    target = f"{module}.{owner}" if owner else module
    pytester.makeconftest(
        f"""
        from pytest_nozombies import {module}

        def injected(*args, **kwargs):
            raise RuntimeError("injected fault")

        setattr({target}, {name!r}, injected)
        """
    )
    write(
        pytester,
        """
        import subprocess
        import pytest
        from inner_helpers import wait_exited

        KEPT = []

        @pytest.fixture
        def server():
            with subprocess.Popen(["sleep", "60"]) as popen:
                yield popen
                popen.kill()

        def test_leaks():
            KEPT.append(subprocess.Popen(["sh", "-c", "exit 3"]))
            wait_exited(KEPT[-1].pid)

        def test_with_a_fixture(server):
            assert server.poll() is None

        def test_clean():
            pass
        """,
    )
    result = run_inner("-p", "no:randomly", "--nozombies-report=report.json")
    result.assert_outcomes(passed=3, errors=errors)
    assert result.ret == (
        pytest.ExitCode.TESTS_FAILED if errors else pytest.ExitCode.OK
    )
    output = result.stdout.str() + result.stderr.str()
    warning = "pytest-nozombies: internal error (RuntimeError('injected fault'))"
    assert output.count(warning) == 1
    for text in ("INTERNALERROR", "Traceback", "RuntimeError: injected fault"):
        assert text not in output


# --- the code under test's objects are its own ------------------------------


def test_the_plugin_keeps_no_object_of_the_code_under_test_alive(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # CPython's own multiprocessing tests check that a joined Process is
    # freed; a fork's note must hold the Process and the forking thread
    # weakly while it waits for the plugin's next turn.
    write(
        pytester,
        """
        import gc, multiprocessing, os, threading, weakref

        def work():
            pass

        def test_a_joined_process_is_freed():
            p = multiprocessing.get_context("fork").Process(target=work)
            p.start()
            p.join()
            assert p.exitcode == 0
            ref = weakref.ref(p)
            del p
            gc.collect()
            assert ref() is None

        def test_a_thread_that_forked_is_freed():
            def fork_and_wait():
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                os.waitpid(pid, 0)

            t = threading.Thread(target=fork_and_wait)
            t.start()
            t.join()
            ref = weakref.ref(t)
            del t
            gc.collect()
            assert ref() is None
        """,
    )
    result = run_inner("-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
