"""End to end: a test that leaves a zombie child fails, and says why.

Every inner test makes a real zombie: it spawns a child, blocks until the child
has exited without reaping it (``os.waitid(..., WNOWAIT)``), and keeps the
object that owns the child referenced (CPython's ``Popen.__del__`` reaps a child
that has already exited, which would hide the leak). The inner run's own tests
then check, from inside the inner process, what the plugin did with the zombie
after reporting it: reaped it through the ``Popen`` or ``multiprocessing.Process``
that holds it, or left a raw ``fork``'s zombie in place for the code that made
it (which may still wait for it), never to blame it again.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent

import pytest

from helpers import RunInner, line_of

#: Imported by every inner test module (pytester's folder is on sys.path).
INNER_HELPERS = """
import os
import pathlib


def wait_exited(pid):
    # Blocks until the child has exited and leaves it a zombie.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def record_pid(pid, name="leak"):
    pathlib.Path(f"{name}.pid").write_text(str(pid))


def is_zombie(pid):
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def assert_no_zombie():
    try:
        found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # no children at all
        return
    assert found is None, f"a zombie was left for this test: {found}"
"""

HINT = "Wait for every child you start*"
#: Marks the line of an inner module that spawns the leak.
SPAWN = "# SPAWN"


def write_inner(pytester: pytest.Pytester, source: str, name: str = "test_x") -> Path:
    """Write an inner test module (and the helpers it imports); return its path."""
    pytester.makepyfile(nozhelp=INNER_HELPERS)
    return pytester.makepyfile(**{name: source})


def read_pid(pytester: pytest.Pytester, name: str = "leak") -> int:
    return int((pytester.path / f"{name}.pid").read_text())


def literal(text: str) -> str:
    """``text`` as an fnmatch pattern that matches only itself."""
    return re.sub(r"([*?[])", r"[\1]", text)


def leak_block(
    teardown_of: str, pid: int, command: str, ended: str, spawned_by: str, site: str
) -> list[str]:
    """The lines of a one-zombie failure, as fnmatch patterns, in order.

    ``command`` is already a pattern; the other arguments are literal text.
    """
    return [
        f"*_ ERROR at teardown of {literal(teardown_of)} _*",
        "test left 1 zombie child process (exited, never waited for):",
        f"  pid {pid}: {command}",
        f"    ended: {literal(ended)}",
        f"    spawned by: {literal(spawned_by)}",
        f"    spawned at: {literal(site)}",
        HINT,
    ]


# --- each way of making a child ------------------------------------------------


@dataclass(frozen=True)
class LeakCase:
    #: Inner module with ``test_leak`` (or a fixture) spawning on ``# SPAWN``.
    source: str
    #: fnmatch pattern for the command line the message shows.
    command: str
    ended: str
    #: The "spawned by" line: how, and the owner (test or fixture, and phase).
    how: str
    owner: str
    test: str = "test_leak"
    #: Reaped through the Popen or Process that holds it, after the report;
    #: a raw fork's zombie is left in place instead.
    reaped: bool = True


LEAK_CASES = {
    "popen-kept-referenced": LeakCase(
        """
        import subprocess
        from nozhelp import record_pid, wait_exited

        KEPT = []

        def test_leak():
            p = subprocess.Popen(["sh", "-c", "exit 7"])  # SPAWN
            KEPT.append(p)
            record_pid(p.pid)
            wait_exited(p.pid)
        """,
        command=literal("sh -c 'exit 7'"),
        ended="exited with code 7",
        how="subprocess.Popen",
        owner="test_x.py::test_leak (call)",
    ),
    "popen-dropped-while-running": LeakCase(
        """
        import subprocess
        import sys
        from nozhelp import record_pid, wait_exited

        READS_STDIN = [sys.executable, "-c", "import sys; sys.stdin.read()"]

        def test_leak():
            p = subprocess.Popen(READS_STDIN, stdin=subprocess.PIPE)  # SPAWN
            pid, stdin = p.pid, p.stdin
            del p
            # Still running when dropped: CPython parks it, unreaped.
            assert [q.pid for q in subprocess._active] == [pid]
            stdin.close()  # now it exits
            record_pid(pid)
            wait_exited(pid)
        """,
        command=literal(
            shlex.join([sys.executable, "-c", "import sys; sys.stdin.read()"])
        ),
        ended="exited with code 0",
        how="subprocess.Popen",
        owner="test_x.py::test_leak (call)",
    ),
    "os-fork": LeakCase(
        """
        import os
        from nozhelp import record_pid, wait_exited

        def test_leak():
            pid = os.fork()  # SPAWN
            if pid == 0:
                os._exit(3)
            record_pid(pid)
            wait_exited(pid)
        """,
        command=literal("[") + "*] (forked by os.fork)",
        ended="exited with code 3",
        how="os.fork",
        owner="test_x.py::test_leak (call)",
        reaped=False,
    ),
    "os-posix-spawn": LeakCase(
        """
        import os
        from nozhelp import record_pid, wait_exited

        def test_leak():
            pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 5"], os.environ)  # SPAWN
            record_pid(pid)
            wait_exited(pid)
        """,
        command=literal("sh -c 'exit 5'"),
        ended="exited with code 5",
        how="os.posix_spawn",
        owner="test_x.py::test_leak (call)",
        reaped=False,
    ),
    "pty-fork": LeakCase(
        """
        import os
        import pty
        from nozhelp import record_pid, wait_exited

        def test_leak():
            pid, fd = pty.fork()  # SPAWN
            if pid == 0:
                os._exit(4)
            record_pid(pid)
            wait_exited(pid)
            os.close(fd)
        """,
        command=literal("[") + "*] (forked by os.forkpty)",
        ended="exited with code 4",
        how="os.forkpty",
        owner="test_x.py::test_leak (call)",
        reaped=False,
    ),
    "multiprocessing-fork-no-join": LeakCase(
        """
        import multiprocessing
        import os
        from nozhelp import record_pid, wait_exited

        def test_leak():
            ctx = multiprocessing.get_context("fork")
            proc = ctx.Process(target=os._exit, args=(6,), name="leaker")
            proc.start()  # SPAWN
            record_pid(proc.pid)
            wait_exited(proc.pid)
        """,
        command=literal("[") + "*] (forked by multiprocessing.Process(name='leaker'))",
        ended="exited with code 6",
        how="multiprocessing.Process(name='leaker')",
        owner="test_x.py::test_leak (call)",
    ),
    "popen-from-another-thread": LeakCase(
        """
        import subprocess
        import threading
        from nozhelp import record_pid, wait_exited

        KEPT = []

        def test_leak():
            def spawn():
                KEPT.append(subprocess.Popen(["sh", "-c", "exit 8"]))  # SPAWN

            thread = threading.Thread(target=spawn, name="spawner")
            thread.start()
            thread.join()
            record_pid(KEPT[0].pid)
            wait_exited(KEPT[0].pid)
        """,
        command=literal("sh -c 'exit 8'"),
        ended="exited with code 8",
        how="subprocess.Popen from thread 'spawner'",
        owner="test_x.py::test_leak (call)",
    ),
    "fixture-setup": LeakCase(
        """
        import subprocess
        import pytest
        from nozhelp import record_pid, wait_exited

        KEPT = []

        @pytest.fixture
        def leaky():
            p = subprocess.Popen(["sh", "-c", "exit 9"])  # SPAWN
            KEPT.append(p)
            record_pid(p.pid)
            wait_exited(p.pid)
            yield

        def test_uses(leaky):
            pass
        """,
        command=literal("sh -c 'exit 9'"),
        ended="exited with code 9",
        how="subprocess.Popen",
        owner="fixture 'leaky' (function scope, setup of test_x.py::test_uses)",
        test="test_uses",
    ),
    "fixture-teardown": LeakCase(
        """
        import subprocess
        import pytest
        from nozhelp import record_pid, wait_exited

        KEPT = []

        @pytest.fixture
        def leaky():
            yield
            p = subprocess.Popen(["sh", "-c", "exit 10"])  # SPAWN
            KEPT.append(p)
            record_pid(p.pid)
            wait_exited(p.pid)

        def test_uses(leaky):
            pass
        """,
        command=literal("sh -c 'exit 10'"),
        ended="exited with code 10",
        how="subprocess.Popen",
        owner="fixture 'leaky' (function scope, teardown of test_x.py::test_uses)",
        test="test_uses",
    ),
}

REAPED_AFTER = """

def test_after():
    from nozhelp import assert_no_zombie

    assert_no_zombie()
"""

#: A raw fork's zombie stays (its code may still wait for it): it is checked
#: again after this test and at the end of the session, and never blamed again.
LEFT_AFTER = """

def test_after():
    import pathlib
    from nozhelp import is_zombie

    assert is_zombie(int(pathlib.Path("leak.pid").read_text()))
"""


@pytest.mark.parametrize("case", LEAK_CASES.values(), ids=list(LEAK_CASES))
def test_leak_fails_the_test_in_teardown_and_is_reported_once(
    pytester: pytest.Pytester, run_inner: RunInner, case: LeakCase
) -> None:
    after = REAPED_AFTER if case.reaped else LEFT_AFTER
    path = write_inner(pytester, dedent(case.source) + after)
    result = run_inner()
    pid = read_pid(pytester)
    site = f"test_x.py:{line_of(path, SPAWN)}"
    result.assert_outcomes(passed=2, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    spawned_by = f"{case.how} during {case.owner}"
    result.stdout.fnmatch_lines(
        leak_block(case.test, pid, case.command, case.ended, spawned_by, site),
        consecutive=True,
    )
    # The summary lists the same leak on one line.
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            f"{literal(case.owner)}: pid {pid} {case.command}, "
            f"{literal(case.ended)}, spawned at {site}",
            "*= short test summary info =*",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(["*= 2 passed, 1 error, 1 zombie leak in *"])
    # Once in the error, once in the summary: never blamed again.
    assert len(re.findall(rf"\bpid {pid}\b", result.stdout.str())) == 2
    result.stdout.no_fnmatch_line("*stack (most recent call last)*")


def test_kill_without_wait_fails_that_test_not_the_next(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    path = write_inner(
        pytester,
        """
        import subprocess
        from nozhelp import assert_no_zombie, record_pid

        KEPT = []

        def test_kill():
            p = subprocess.Popen(["sleep", "30"])  # SPAWN
            KEPT.append(p)
            record_pid(p.pid)
            p.kill()  # SIGKILL is delivered asynchronously: still running here

        def test_next():
            assert_no_zombie()
        """,
    )
    # A generous grace: the check returns as soon as the child is gone, so this
    # only keeps a loaded machine from turning the verdict into a late leak.
    result = run_inner("-v", "--nozombies-grace=30")
    pid = read_pid(pytester)
    result.assert_outcomes(passed=2, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "test_x.py::test_kill PASSED*",
            "test_x.py::test_kill ERROR*",
            "test_x.py::test_next PASSED*",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(
        leak_block(
            "test_kill",
            pid,
            "sleep 30",
            "killed by SIGKILL (9)",
            "subprocess.Popen during test_x.py::test_kill (call)",
            f"test_x.py:{line_of(path, SPAWN)}",
        ),
        consecutive=True,
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_next*")


# --- every kind of test item ----------------------------------------------------


def test_functions_methods_params_and_unittest_are_each_judged(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    path = write_inner(
        pytester,
        """
        import subprocess
        import unittest
        import pytest
        from nozhelp import assert_no_zombie, wait_exited

        KEPT = []

        def leak(code):
            p = subprocess.Popen(["sh", "-c", f"exit {code}"])  # SPAWN
            KEPT.append(p)
            wait_exited(p.pid)

        def test_function():
            leak(11)

        class TestThing:
            def test_method(self):
                leak(12)

        @pytest.mark.parametrize("n", [1, 2])
        def test_param(n):
            assert_no_zombie()
            if n == 2:
                leak(13)

        class Case(unittest.TestCase):
            def test_unittest(self):
                assert_no_zombie()
                leak(14)

        def test_after():
            assert_no_zombie()
        """,
    )
    result = run_inner()
    site = f"test_x.py:{line_of(path, SPAWN)}"
    result.assert_outcomes(passed=6, errors=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    leaks = [
        ("test_function", "test_x.py::test_function", 11),
        ("TestThing.test_method", "test_x.py::TestThing::test_method", 12),
        ("test_param[2]", "test_x.py::test_param[2]", 13),
        ("Case.test_unittest", "test_x.py::Case::test_unittest", 14),
    ]
    for title, nodeid, code in leaks:
        result.stdout.fnmatch_lines(
            [
                f"*_ ERROR at teardown of {literal(title)} _*",
                "test left 1 zombie child process (exited, never waited for):",
                f"  pid *: sh -c 'exit {code}'",
                f"    ended: exited with code {code}",
                f"    spawned by: subprocess.Popen during {literal(nodeid)} (call)",
                f"    spawned at: {site}",
            ],
            consecutive=True,
        )
    result.stdout.fnmatch_lines(
        ["*= nozombies: 4 zombie leaks =*"]
        + [
            f"{literal(nodeid)} (call): pid * sh -c 'exit {code}', "
            f"exited with code {code}, spawned at {site}"
            for _, nodeid, code in leaks
        ],
        consecutive=True,
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_param[[]1]*")


# --- cleaning up keeps owners truthful, baselines are never blamed ------------


def test_reaped_through_popen_and_process_a_raw_fork_left_to_its_code(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # After the report the plugin reaps a zombie only through the object that
    # holds it, so that object's status stays true; a raw fork's zombie may
    # belong to code that waits for it later (pexpect's close()), so it stays
    # for that code, which then gets its true status.
    write_inner(
        pytester,
        """
        import multiprocessing
        import os
        import subprocess
        from nozhelp import assert_no_zombie, is_zombie, wait_exited

        def test_popen_leak():
            global P
            P = subprocess.Popen(["sh", "-c", "exit 7"])
            wait_exited(P.pid)

        def test_popen_returncode_is_true():
            assert_no_zombie()
            # Not poll(): the plugin must have set it while reaping.
            assert P.returncode == 7

        def test_process_leak():
            global PROC
            PROC = multiprocessing.get_context("fork").Process(
                target=os._exit, args=(6,)
            )
            PROC.start()
            wait_exited(PROC.pid)

        def test_process_exitcode_is_true():
            assert_no_zombie()
            # Reaped behind its back, exitcode would stay None forever.
            assert PROC.exitcode == 6

        def test_fork_leak():
            global PID
            PID = os.fork()
            if PID == 0:
                os._exit(3)
            wait_exited(PID)

        def test_fork_is_left_for_its_code():
            assert is_zombie(PID)
            _, status = os.waitpid(PID, 0)
            assert os.waitstatus_to_exitcode(status) == 3
            assert_no_zombie()
        """,
    )
    result = run_inner("-v")
    result.assert_outcomes(passed=6, errors=3)
    result.stdout.fnmatch_lines(
        [
            "test_x.py::test_popen_leak PASSED*",
            "test_x.py::test_popen_leak ERROR*",
            "test_x.py::test_popen_returncode_is_true PASSED*",
            "test_x.py::test_process_leak PASSED*",
            "test_x.py::test_process_leak ERROR*",
            "test_x.py::test_process_exitcode_is_true PASSED*",
            "test_x.py::test_fork_leak PASSED*",
            "test_x.py::test_fork_leak ERROR*",
            "test_x.py::test_fork_is_left_for_its_code PASSED*",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(["*= 6 passed, 3 errors, 3 zombie leaks in *"])


def test_children_from_before_the_test_are_never_blamed_on_it(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # Two children exist when the tests below start: a raw fork's zombie that
    # a test marked allow_zombies left (the plugin leaves it in place), and a
    # session fixture's server. A test makes the server exit; the fixture
    # waits for it in its teardown, as a server fixture should. Neither is
    # the tests' to answer for. (Children that exist before the plugin starts,
    # and those of conftest imports, are in test_collection.py.)
    pytester.makeconftest(
        """
        import subprocess
        import sys
        import pytest

        @pytest.fixture(scope="session")
        def server():
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.stdin.read()"],
                stdin=subprocess.PIPE,
            )
            yield proc
            assert proc.wait(timeout=30) == 0
        """
    )
    write_inner(
        pytester,
        """
        import os
        import pytest
        from nozhelp import is_zombie, record_pid, wait_exited

        @pytest.mark.allow_zombies(reason="leaves a zombie for the others")
        def test_makes_an_early_zombie(server):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            wait_exited(pid)
            record_pid(pid)

        def test_early_zombie_is_still_there():
            import pathlib

            assert is_zombie(int(pathlib.Path("leak.pid").read_text()))

        def test_stops_the_early_server(server):
            server.stdin.close()
            wait_exited(server.pid)
            assert is_zombie(server.pid)

        def test_after():
            pass
        """,
    )
    result = run_inner()
    result.assert_outcomes(passed=4)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*zombie child process*")
    result.stdout.no_fnmatch_line("*= nozombies: *")


# --- allow_zombies ------------------------------------------------------------

ALLOW_LEAK = """
import subprocess
import pytest
from nozhelp import assert_no_zombie, wait_exited

KEPT = []

def leak(code):
    p = subprocess.Popen(["sh", "-c", f"exit {code}"])
    KEPT.append(p)
    wait_exited(p.pid)
"""


def test_allow_zombies_lets_the_test_pass_and_still_reaps(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    write_inner(
        pytester,
        ALLOW_LEAK
        + """
@pytest.mark.allow_zombies
def test_function_marked():
    leak(21)

def test_after_function():
    assert_no_zombie()

@pytest.mark.allow_zombies(reason="checks how a crash is reported")
def test_function_marked_with_reason():
    leak(22)

def test_after_function_with_reason():
    assert_no_zombie()

@pytest.mark.allow_zombies("a positional reason, as skip and xfail take it")
def test_function_marked_with_positional_reason():
    leak(25)

def test_after_function_with_positional_reason():
    assert_no_zombie()

@pytest.mark.allow_zombies
class TestMarkedClass:
    def test_in_class(self):
        leak(23)

    def test_after_in_class(self):
        assert_no_zombie()

def test_after_class():
    assert_no_zombie()
""",
    )
    pytester.makepyfile(
        test_y=ALLOW_LEAK
        + """
pytestmark = pytest.mark.allow_zombies(reason="legacy module")

def test_module_marked():
    leak(24)

def test_after_module_marked():
    assert_no_zombie()
"""
    )
    # Not listed in any ini here: --strict-markers passes only if the plugin
    # registers the marker itself.
    result = run_inner("--strict-markers", "-v")
    result.assert_outcomes(passed=11)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "test_x.py::test_function_marked PASSED*",
            "test_x.py::test_after_function PASSED*",
            "test_x.py::test_function_marked_with_reason PASSED*",
            "test_x.py::test_after_function_with_reason PASSED*",
            "test_x.py::test_function_marked_with_positional_reason PASSED*",
            "test_x.py::test_after_function_with_positional_reason PASSED*",
            "test_x.py::TestMarkedClass::test_in_class PASSED*",
            "test_x.py::TestMarkedClass::test_after_in_class PASSED*",
            "test_x.py::test_after_class PASSED*",
            "test_y.py::test_module_marked PASSED*",
            "test_y.py::test_after_module_marked PASSED*",
        ],
        consecutive=True,
    )
    result.stdout.no_fnmatch_line("*zombie child process*")
    result.stdout.no_fnmatch_line("*nozombies: * zombie leak*")


@pytest.mark.parametrize(
    ("mark", "complaint"),
    [
        pytest.param(
            'allow_zombies("x", "y")',
            "takes one reason, got ('x', 'y') {}",
            id="two-positional",
        ),
        pytest.param(
            'allow_zombies("x", reason="y")',
            "takes one reason, got ('x',) {'reason': 'y'}",
            id="positional-and-keyword",
        ),
        pytest.param(
            "allow_zombies(3)",
            "reason must be a string, got 3",
            id="positional-not-a-string",
        ),
        pytest.param(
            "allow_zombies(foo=1)",
            "got unexpected keyword argument(s) foo",
            id="unknown-keyword",
        ),
        pytest.param(
            "allow_zombies(reason=3)",
            "reason must be a string, got 3",
            id="reason-not-a-string",
        ),
    ],
)
def test_wrong_marker_arguments_are_a_usage_error(
    pytester: pytest.Pytester, run_inner: RunInner, mark: str, complaint: str
) -> None:
    write_inner(
        pytester,
        f"""
        import pytest

        @pytest.mark.{mark}
        def test_marked():
            pass
        """,
    )
    result = run_inner()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-nozombies: @pytest.mark.allow_zombies on "
            f"test_x.py::test_marked {literal(complaint)}*"
        ]
    )
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    result.stdout.no_fnmatch_line("*passed*")


DESELECTING_CONFTEST = """
def pytest_collection_modifyitems(config, items):
    dropped = [item for item in items if item.name == "test_marked"]
    items[:] = [item for item in items if item not in dropped]
    config.hook.pytest_deselected(items=dropped)
"""


@pytest.mark.parametrize(
    "deselect",
    [("-k", "not marked"), ("-m", "not slow"), ("--conftest-deselects",)],
    ids=["-k", "-m", "conftest"],
)
def test_a_wrong_marker_on_a_deselected_test_is_still_a_usage_error(
    pytester: pytest.Pytester, run_inner: RunInner, deselect: tuple[str, ...]
) -> None:
    # A conftest's plain hook runs before an installed plugin's: the check is
    # tryfirst so that it still sees every item (pytest's own -k and -m run
    # after it anyway).
    if deselect == ("--conftest-deselects",):
        pytester.makeconftest(DESELECTING_CONFTEST)
        deselect = ()
    write_inner(
        pytester,
        """
        import pytest

        @pytest.mark.slow
        @pytest.mark.allow_zombies(foo=1)
        def test_marked():
            pass

        def test_other():
            pass
        """,
    )
    pytester.makeini("[pytest]\nmarkers = slow: a slow test\n")
    result = run_inner(*deselect)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-nozombies: @pytest.mark.allow_zombies on "
            "test_x.py::test_marked*"
        ]
    )


# --- modes --------------------------------------------------------------------

MODE_LEAK = """
import subprocess
from nozhelp import assert_no_zombie, is_zombie, record_pid, wait_exited

KEPT = []

def test_leak():
    p = subprocess.Popen(["sh", "-c", "exit 7"])  # SPAWN
    KEPT.append(p)
    record_pid(p.pid)
    wait_exited(p.pid)
"""

WARN_AFTER = """
def test_after():
    assert_no_zombie()
"""


def assert_warned(result: pytest.RunResult, pid: int, site: str) -> None:
    result.assert_outcomes(passed=2, warnings=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*= warnings summary =*",
            "test_x.py::test_leak",
            "  */test_x.py:*: ZombieWarning: test left 1 zombie child process "
            "(exited, never waited for):",
            f"    pid {pid}: sh -c 'exit 7'",
            "      ended: exited with code 7",
            "      spawned by: subprocess.Popen during test_x.py::test_leak (call)",
            f"      spawned at: {site}",
        ],
        consecutive=False,
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown*")


def test_warn_mode_passes_and_warns(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    path = write_inner(pytester, MODE_LEAK + WARN_AFTER)
    result = run_inner("--nozombies-mode=warn")
    assert_warned(result, read_pid(pytester), f"test_x.py:{line_of(path, SPAWN)}")
    result.stdout.fnmatch_lines(["nozombies: mode=warn, *"])


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("pytest.ini", "[pytest]\nnozombies_mode = warn\n"),
        ("tox.ini", "[pytest]\nnozombies_mode = warn\n"),
        ("pyproject.toml", '[tool.pytest.ini_options]\nnozombies_mode = "warn"\n'),
    ],
    ids=["pytest.ini", "tox.ini", "pyproject.toml"],
)
def test_warn_mode_from_ini(
    pytester: pytest.Pytester, run_inner: RunInner, filename: str, content: str
) -> None:
    path = write_inner(pytester, MODE_LEAK + WARN_AFTER)
    (pytester.path / filename).write_text(content)
    result = run_inner()
    assert_warned(result, read_pid(pytester), f"test_x.py:{line_of(path, SPAWN)}")
    result.stdout.fnmatch_lines(["nozombies: mode=warn, *"])
    result.stdout.fnmatch_lines([f"configfile: {filename}"])


def test_warn_mode_escalated_by_w_error_fails_the_test(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    write_inner(pytester, MODE_LEAK + WARN_AFTER)
    result = run_inner(
        "--nozombies-mode=warn", "-W", "error::pytest_nozombies.ZombieWarning"
    )
    pid = read_pid(pytester)
    result.assert_outcomes(passed=2, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_leak _*",
            "test left 1 zombie child process (exited, never waited for):",
            f"  pid {pid}: sh -c 'exit 7'",
        ]
    )
    # The escalated warning reads like fail mode, not a traceback of the plugin.
    result.stdout.no_fnmatch_line("*plugin.py*")


def test_off_mode_checks_nothing(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    write_inner(
        pytester,
        MODE_LEAK
        + """
def test_zombie_is_left_alone():
    import pathlib

    assert is_zombie(int(pathlib.Path("leak.pid").read_text()))
""",
    )
    result = run_inner("--nozombies-mode=off")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["nozombies: mode=off, nothing is checked"])
    result.stdout.no_fnmatch_line("*nozombies: * zombie leak*")
    result.stdout.no_fnmatch_line("*ZombieWarning*")
    result.stdout.no_fnmatch_line("*warnings summary*")


# --- what the message shows -------------------------------------------------


def test_very_verbose_shows_the_spawn_stack(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    path = write_inner(pytester, MODE_LEAK)
    result = run_inner("-vv")
    line = line_of(path, SPAWN)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            f"    spawned at: test_x.py:{line}",
            "    stack (most recent call last):",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(
        [
            "    stack (most recent call last):",
            f"      test_x.py:{line} in test_leak",
            "      */subprocess.py:* in __init__",
            HINT,
        ]
    )


WIDE_FIXTURE_LEAKS = """
import subprocess
import pytest

KEPT = []

@pytest.fixture(scope="{scope}")
def server():
    KEPT.append(subprocess.Popen(["sh", "-c", "exit 6"]))
    yield

{mark}
def test_{first}(server):
    pass

def test_{second}(server):
    pass
"""


@pytest.mark.parametrize(
    "marked_first", [True, False], ids=["marked-first", "unmarked-first"]
)
def test_a_wider_fixture_is_allowed_by_its_own_scope_not_by_the_test_that_asked(
    pytester: pytest.Pytester, run_inner: RunInner, marked_first: bool
) -> None:
    # A session fixture is no test's: marking the test that happens to set it
    # up first must not silence its leak, whatever the order of the tests.
    first, second = ("marked", "plain") if marked_first else ("plain", "marked")
    mark_line = "@pytest.mark.allow_zombies" if marked_first else ""
    source = WIDE_FIXTURE_LEAKS.format(
        scope="session", mark=mark_line, first=first, second=second
    )
    if not marked_first:  # the mark goes on the second test
        source = source.replace(
            f"def test_{second}(server)",
            f"@pytest.mark.allow_zombies\ndef test_{second}(server)",
        )
    pytester.makepyfile(test_wide=source)
    result = run_inner("-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*= nozombies: 1 zombie leak =*", "fixture 'server' (session scope, *exit 6*"]
    )


def test_a_module_fixture_is_allowed_by_its_modules_mark(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    source = WIDE_FIXTURE_LEAKS.format(scope="module", mark="", first="a", second="b")
    pytester.makepyfile(
        test_wide="pytestmark = __import__('pytest').mark.allow_zombies\n" + source
    )
    result = run_inner()
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*zombie leak*")
