"""Blame the right test or fixture, and name what leaked as the user knows it."""

from __future__ import annotations

import os

import pytest

from helpers import RunInner

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")


def test_spawn_line_is_the_users_library_and_via_the_tests_line(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # A helper package of the project, beside its tests: the spawn line is
    # the package's (never subprocess's), and the test's own line that led
    # to it is shown too, without -vv.
    pytester.makeini("[pytest]\npythonpath = .\n")
    pytester.mkpydir("myproject")
    pytester.makepyfile(
        **{
            "myproject/servers": """
            import subprocess

            def start_server():
                return _really_start()

            def _really_start():
                return subprocess.Popen(["sh", "-c", "exit 4"])  # line 7
            """,
            "tests/test_deep": """
            import os
            from myproject import servers

            def test_leaks_through_a_library():
                proc = servers.start_server()  # line 5
                test_leaks_through_a_library.proc = proc
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            """,
        }
    )
    result = run_inner()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "  pid *: sh -c 'exit 4'",
            "    ended: exited with code 4",
            "    spawned by: subprocess.Popen during tests/test_deep.py::"
            "test_leaks_through_a_library (call)",
            "    spawned at: myproject/servers.py:7",
            "    via: tests/test_deep.py:5",
            "Wait for every child you start*",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            "tests/test_deep.py::test_leaks_through_a_library (call): pid * "
            "sh -c 'exit 4', exited with code 4, spawned at myproject/servers.py:7",
        ]
    )
    assert "subprocess.py" not in result.stdout.str()


def test_a_spawn_in_the_tests_own_file_has_no_via_line(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        """
        import os, subprocess

        def start():
            return subprocess.Popen(["sh", "-c", "exit 4"])  # line 4

        def test_leaks_through_a_helper_of_its_file():
            proc = start()
            test_leaks_through_a_helper_of_its_file.proc = proc
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["    spawned at: *.py:4", "Wait for every child*"])
    result.stdout.no_fnmatch_line("*via:*")


def test_leak_from_a_thread_names_the_thread_and_its_line(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        test_thread="""
        import os, subprocess, threading

        kept = []

        def spawn():
            kept.append(subprocess.Popen(["sh", "-c", "exit 6"]))  # line 6

        def test_thread():
            t = threading.Thread(target=spawn, name="spawner")
            t.start()
            t.join()
            os.waitid(os.P_PID, kept[0].pid, os.WEXITED | os.WNOWAIT)
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "    ended: exited with code 6",
            "    spawned by: subprocess.Popen from thread 'spawner' during "
            "test_thread.py::test_thread (call)",
            "    spawned at: test_thread.py:6",
        ],
        consecutive=True,
    )


def test_a_thread_spawn_with_none_of_the_users_code_says_why_and_points_at_the_test(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # The thread runs subprocess.Popen itself (as trio's open_process hands
    # it to a worker thread): no frame of the user's code is on its stack.
    # The child blocks on a pipe until the test lets it go, so the Popen,
    # dropped while it still runs, is parked by CPython unreaped.
    pytester.makepyfile(
        test_thread="""
        import os, subprocess, threading


        def test_thread_spawns():  # line 4
            r, w = os.pipe()
            t = threading.Thread(
                target=subprocess.Popen,
                args=(["sh", "-c", "read x; exit 5"],),
                kwargs={"stdin": r},
                name="spawner",
            )
            t.start()
            t.join()
            os.close(r)
            (pid,) = [p.pid for p in subprocess._active]
            os.close(w)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "  pid *: sh -c 'read x; exit 5'",
            "    ended: exited with code 5",
            "    spawned by: subprocess.Popen from thread 'spawner' during "
            "test_thread.py::test_thread_spawns (call)",
            "    spawned at: unknown (spawned from thread 'spawner', whose stack "
            "holds none of your code; the test is at test_thread.py:4)",
            "Wait for every child you start*",
        ],
        consecutive=True,
    )


# --- names as the user knows them ---------------------------------------------

EXECS_CAT = """
import os, pty, signal, time

KEPT = []

def fork_cat():
    pid, fd = pty.fork()  # line 6
    if pid == 0:
        os.execv("/bin/cat", ["cat", "-u"])
    KEPT.append(fd)
    wait_for_exec(pid)
    return pid

def test_killed():
    pid = fork_cat()
    os.kill(pid, signal.SIGKILL)  # never waited for
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)

def test_left_running():
    fork_cat()

def wait_for_exec(pid):
    # Until it has exec'd, the child's command line is the test process's.
    deadline = time.monotonic() + 30
    while True:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read() == b"cat\\0-u\\0":
                return
        assert time.monotonic() < deadline, "cat never started"
        time.sleep(0.001)
"""


def test_a_forked_child_that_execd_shows_its_command_leaked_or_left_running(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # pty.fork + execv, as pexpect does: the command it exec'd is read while
    # it is alive (when it is signalled, or when its test ends with it still
    # running), and a zombie and a child left running read alike.
    pytester.makeini("[pytest]\nnozombies_running = fail\n")
    pytester.makepyfile(test_cat=EXECS_CAT)
    result = run_inner("--nozombies-grace=0", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=2)
    zombie = [
        "test left 1 zombie child process (exited, never waited for):",
        "  pid *: cat -u (forked by os.forkpty)",
        "    ended: killed by SIGKILL (9)",
    ]
    running = [
        "test left 1 child process running:",
        "  pid *: cat -u (forked by os.forkpty)",
    ]
    for test, head, hint in [
        ("test_killed", zombie, "Wait for every child*"),
        ("test_left_running", running, "Stop and wait for every child*"),
    ]:
        result.stdout.fnmatch_lines(
            [
                f"*_ ERROR at teardown of {test} _*",
                *head,
                f"    spawned by: os.forkpty during test_cat.py::{test} (call)",
                "    spawned at: test_cat.py:6",
                hint,
            ],
            consecutive=True,
        )
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            "test_cat.py::test_killed (call): pid * cat -u (forked by os.forkpty), "
            "killed by SIGKILL (9), spawned at test_cat.py:6",
            "*= nozombies: 1 child left running =*",
            "test_cat.py::test_left_running (call): pid * cat -u (forked by "
            "os.forkpty), spawned at test_cat.py:6",
        ],
        consecutive=True,
    )


def test_unittest_class_fixtures_are_named_as_written(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        test_server="""
        import os, subprocess, unittest

        def leak(code):
            p = subprocess.Popen(["sh", "-c", f"exit {code}"])  # line 4
            os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
            return p

        class BadClassServer(unittest.TestCase):
            @classmethod
            def setUpClass(cls):
                cls.started = leak(2)

            @classmethod
            def tearDownClass(cls):
                cls.stopped = leak(3)

            def test_one(self):
                pass
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    nodeid = "test_server.py::BadClassServer::test_one"
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 2 zombie leaks =*",
            f"BadClassServer.setUpClass (of {nodeid}): pid * sh -c 'exit 2', "
            "exited with code 2, spawned at test_server.py:4",
            f"BadClassServer.tearDownClass (of {nodeid}): pid * sh -c 'exit 3', "
            "exited with code 3, spawned at test_server.py:4",
        ],
        consecutive=True,
    )
    result.stdout.no_fnmatch_line("*_unittest_setUpClass_fixture*")


def test_unittest_module_fixtures_are_named_as_written(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # pytest makes one fixture of setup_module and of unittest's setUpModule:
    # the report names the one the module defines.
    pytester.makepyfile(
        test_module="""
        import os, subprocess, unittest

        KEPT = []

        def setUpModule():
            KEPT.append(subprocess.Popen(["sh", "-c", "exit 4"]))  # line 6
            os.waitid(os.P_PID, KEPT[-1].pid, os.WEXITED | os.WNOWAIT)

        class Server(unittest.TestCase):
            def test_one(self):
                pass
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            "setUpModule (of test_module.py::Server::test_one): pid * sh -c 'exit 4', "
            "exited with code 4, spawned at test_module.py:6",
        ],
        consecutive=True,
    )
    result.stdout.no_fnmatch_line("*setup_module*")


def test_pool_workers_show_their_process_name(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        test_pool="""
        import multiprocessing

        KEPT = []

        def test_pool_left_open():
            KEPT.append(multiprocessing.get_context("fork").Pool(2))  # line 6
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*= nozombies: 2 children left running =*"])
    result.stdout.fnmatch_lines_random(
        [
            "test_pool.py::test_pool_left_open (call): pid * [[]*[]] (forked by "
            f"multiprocessing.Process(name='ForkPoolWorker-{n}')), "
            "spawned at test_pool.py:6"
            for n in (1, 2)
        ]
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
    # Each phase of a test, and each fixture's setup and teardown, owns what
    # it spawns. A fixture first requested in the test body is named by its
    # own phase, being set up (the test's call phase is not its owner).
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
            yield
            spawn(15)

        @pytest.fixture
        def late():
            spawn(12)

        def test_phases(early, request):
            spawn(13)
            request.getfixturevalue("late")
            request.addfinalizer(lambda: spawn(14))
        """
    )
    result = run_inner("-p", "no:randomly")
    result.assert_outcomes(passed=1, errors=1)
    nodeid = "test_phases.py::test_phases"
    result.stdout.fnmatch_lines(["*= nozombies: 5 zombie leaks =*"])
    result.stdout.fnmatch_lines_random(
        [
            f"fixture 'early' (function scope, setup of {nodeid}): pid * "
            "sh -c 'exit 11'*",
            f"{nodeid} (call): pid * sh -c 'exit 13'*",
            f"fixture 'late' (function scope, setup of {nodeid}): pid * "
            "sh -c 'exit 12'*",
            f"{nodeid} (teardown): pid * sh -c 'exit 14'*",
            f"fixture 'early' (function scope, teardown of {nodeid}): pid * "
            "sh -c 'exit 15'*",
        ]
    )


def test_a_test_that_clears_the_environment_is_still_blamed_with_its_phase(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # pytest's PYTEST_CURRENT_TEST is gone with the rest of the environment:
    # the phase comes from pytest's hooks, not from it.
    pytester.makepyfile(
        test_env="""
        import os
        import subprocess
        import pytest

        KEPT = []

        def spawn_without_environment(code):
            saved = dict(os.environ)
            os.environ.clear()
            try:
                KEPT.append(subprocess.Popen(["sh", "-c", f"exit {code}"]))
            finally:
                os.environ.update(saved)

        @pytest.fixture
        def cleared():
            spawn_without_environment(13)

        def test_clears(cleared, request):
            spawn_without_environment(14)
            request.addfinalizer(lambda: spawn_without_environment(15))
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 3 zombie leaks =*",
            "fixture 'cleared' (function scope, setup of test_env.py::test_clears): "
            "pid * sh -c 'exit 13'*",
            "test_env.py::test_clears (call): pid * sh -c 'exit 14'*",
            "test_env.py::test_clears (teardown): pid * sh -c 'exit 15'*",
        ],
        consecutive=True,
    )


def test_leaks_are_listed_in_the_order_they_were_spawned(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # The first child dies during the grace period, after the second is
    # already a zombie: the report still lists them as they were spawned.
    pytester.makepyfile(
        test_order="""
        import subprocess

        KEPT = []

        def test_leaves_two():
            slow = subprocess.Popen(
                ["sh", "-c", "trap 'sleep 0.3; exit 1' TERM; echo ready; "
                 "while :; do sleep 0.01; done"],
                stdout=subprocess.PIPE,
            )
            assert slow.stdout.readline() == b"ready\\n"
            fast = subprocess.Popen(["sh", "-c", "exit 2"])
            slow.terminate()  # asked to exit: worth the grace period
            KEPT.extend([slow, fast])
        """
    )
    # A grace period well beyond the slow child's 0.3 s, however busy the
    # machine: it must die as a zombie leak, not be left running.
    result = run_inner("--nozombies-grace=10")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 2 zombie leaks =*",
            "test_order.py::test_leaves_two (call): * 'trap *, exited with code 1,*",
            "test_order.py::test_leaves_two (call): * 'exit 2', exited with code 2,*",
        ],
        consecutive=True,
    )


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

LEFT_RUNNING_LINE = (
    "test_left.py::test_leaves_server_running (call): pid * "
    "-c 'import sys; sys.stdin.read()', spawned at test_left.py:5"
)


@pytest.mark.parametrize(
    ("running", "outcomes", "ret", "closing"),
    [
        pytest.param(
            "warn", {"passed": 2}, 0, "2 passed, 1 child left running", id="warn"
        ),
        pytest.param(
            "fail",
            {"passed": 2, "errors": 1},
            1,
            "2 passed, 1 error, 1 child left running",
            id="fail",
        ),
        pytest.param("ignore", {"passed": 2}, 0, None, id="ignore"),
    ],
)
def test_a_child_left_running_is_listed_or_fails_its_test(
    pytester: pytest.Pytester,
    run_inner: RunInner,
    running: str,
    outcomes: dict[str, int],
    ret: int,
    closing: str | None,
) -> None:
    pytester.makeini(f"[pytest]\nnozombies_running = {running}\n")
    pytester.makepyfile(test_left=LEAVES_A_CHILD_RUNNING)
    result = run_inner("--nozombies-grace=0")
    result.assert_outcomes(**outcomes)
    assert result.ret == ret
    if closing is None:
        result.stdout.no_fnmatch_line("*left running*")
        result.stdout.no_fnmatch_line("*= nozombies:*")
        return
    if running == "fail":
        # Failed when its scope ended, with the same block as a zombie's.
        result.stdout.fnmatch_lines(
            [
                "*_ ERROR at teardown of test_leaves_server_running _*",
                "test left 1 child process running:",
                "  pid *: *python* -c 'import sys; sys.stdin.read()'",
                "    spawned by: subprocess.Popen during "
                "test_left.py::test_leaves_server_running (call)",
                "    spawned at: test_left.py:5",
                "Stop and wait for every child a test starts*",
            ],
            consecutive=True,
        )
    else:
        result.stdout.no_fnmatch_line("*ERROR at teardown*")
    result.stdout.fnmatch_lines(
        ["*= nozombies: 1 child left running =*", LEFT_RUNNING_LINE],
        consecutive=True,
    )
    result.stdout.fnmatch_lines([f"*= {closing} in *"])


def test_a_child_left_running_then_stopped_is_not_listed_in_warn_mode(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # Left running by test_a, stopped and waited for by test_b: under the
    # default nozombies_running = warn only children still running at the end
    # of the session are listed, and a child that was waited for is no leak.
    pytester.makepyfile(
        test_left="""
        import subprocess, sys

        state = {}

        def test_a_starts_a_server():
            state["proc"] = subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.stdin.read()"],
                stdin=subprocess.PIPE,
            )

        def test_b_stops_it():
            proc = state["proc"]
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0
        """
    )
    result = run_inner("--nozombies-grace=0")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stdout.no_fnmatch_line("*left running*")
    result.stdout.no_fnmatch_line("*= nozombies:*")


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


def test_a_fork_that_execs_an_ignored_command_is_ignored(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # What a forked child runs is only known once it has exec'd: it is read
    # while the child runs (when it is signalled, or when its test ends).
    pytester.makeini("[pytest]\nnozombies_ignore =\n    ^sleep \n")
    pytester.makepyfile(
        test_forks="""
        import os, signal, time

        def fork_exec(*argv):
            pid = os.fork()
            if pid == 0:
                os.execvp(argv[0], argv)
            # Return once it has exec'd (/proc shows what it runs then).
            deadline = time.monotonic() + 30
            while True:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().split(b"\\0")[0] == argv[0].encode():
                        return pid
                assert time.monotonic() < deadline
                time.sleep(0.001)

        def test_killed_without_a_wait():
            pid = fork_exec("sleep", "30")
            os.kill(pid, signal.SIGKILL)

        def test_left_running():
            with open("left.pid", "w") as f:
                f.write(str(fork_exec("sleep", "30")))

        def test_not_ignored():
            # Runs until killed (cat would read an empty stdin and exit).
            os.kill(fork_exec("tail", "-f", "/dev/null"), signal.SIGKILL)
        """
    )
    pytester.makeconftest(
        """
        import os, signal

        def pytest_unconfigure():
            # After the end-of-session listing, so the child still runs there.
            with open("left.pid") as f:
                pid = int(f.read())
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_not_ignored*",
            "  pid *: tail -f /dev/null (forked by os.fork)",
        ]
    )
    result.stdout.no_fnmatch_line("*sleep 30*")


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
    # test_a asks child A to stop (SIGTERM), but A ignores it until its stdin
    # closes, so the plugin waits out the grace period for A in test_a's
    # teardown. Meanwhile a thread of test_a spawns child B and only then
    # lets A exit: B is spawned while test_a is judged, and test_a must
    # answer for it. B is not among the children being judged then, so it is
    # blamed later, as a late leak of test_a's teardown (the verdict is the
    # same if the thread spawns before the judging starts; the short sleep
    # makes it nearly always land during the grace wait, the case this
    # guards).
    pytester.makepyfile(
        """
        import subprocess, sys, threading, time

        kept = []
        teardown_started = threading.Event()
        IGNORES_SIGTERM = (
            "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); sys.stdin.read()"
        )

        def spawn_then_release(a):
            assert teardown_started.wait(timeout=30)
            time.sleep(0.2)
            kept.append(subprocess.Popen(["true"]))  # line 13
            a.stdin.close()

        def test_a(request):
            a = subprocess.Popen(  # line 17
                [sys.executable, "-c", IGNORES_SIGTERM],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            kept.append(a)
            assert a.stdout.readline() == b"ready\\n"
            a.terminate()
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
            "*::test_a (call): pid * exited with code 0, spawned at *.py:17",
            "*::test_a (teardown): pid * true, exited with code 0, spawned at *.py:13*",
        ],
        consecutive=False,
    )
