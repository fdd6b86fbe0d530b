"""Activation and settings: how the plugin is turned on and off, and how each
setting is read, validated and shown in the report header.
"""

from __future__ import annotations

import threading

import pytest

from helpers import RunInner

#: One test that leaves a zombie: the probe for whether the plugin is checking.
LEAKY_TEST = """
    import os
    import select
    import subprocess
    import sys

    kept = []  # a dropped Popen would reap its child in __del__

    def test_leaks():
        kept.append(subprocess.Popen([sys.executable, "-c", "pass"]))
        fd = os.pidfd_open(kept[-1].pid)
        try:
            exited, _, _ = select.select([fd], [], [], 30.0)
        finally:
            os.close(fd)
        assert exited
"""

LEAK_MESSAGE = "*test left 1 zombie child process (exited, never waited for):"
LEAK_SUMMARY = "*= nozombies: 1 zombie leak =*"
MODES = "expected one of: fail, warn, off"
#: The longest wait the platform's blocking calls accept is the upper bound.
SECONDS = (
    f"expected a number of seconds from 0 to {threading.TIMEOUT_MAX:.0f} (e.g. 0.5)"
)


def assert_leak_failed(result: pytest.RunResult) -> None:
    # The verdict comes after the test's own teardown: a teardown error.
    result.assert_outcomes(passed=1, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_leaks*", LEAK_MESSAGE, "  pid *: *", LEAK_SUMMARY]
    )


def assert_leak_warned(result: pytest.RunResult) -> None:
    result.assert_outcomes(passed=1, warnings=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*= warnings summary =*",
            "*ZombieWarning: test left 1 zombie child process*",
            "    pid *: *",
        ]
    )


def assert_leak_passed(result: pytest.RunResult) -> None:
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*zombie child process*")
    result.stdout.no_fnmatch_line(LEAK_SUMMARY)


def assert_not_loaded(result: pytest.RunResult) -> None:
    """No header line and nothing checked: the plugin is not there at all."""
    assert_leak_passed(result)
    result.stdout.no_fnmatch_line("nozombies:*")


# --- activation -----------------------------------------------------------------


def test_active_by_default(pytester: pytest.Pytester, run_inner: RunInner) -> None:
    pytester.makepyfile(LEAKY_TEST)
    result = run_inner()
    result.stdout.fnmatch_lines(["nozombies: mode=fail, grace=1s, *"])
    assert_leak_failed(result)


def test_p_no_nozombies_turns_it_off(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(LEAKY_TEST)
    assert_not_loaded(run_inner("-p", "no:nozombies"))


def test_off_without_autoload(
    pytester: pytest.Pytester, run_inner: RunInner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(LEAKY_TEST)
    assert_not_loaded(run_inner())


def test_p_nozombies_turns_it_on_without_autoload(
    pytester: pytest.Pytester, run_inner: RunInner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(LEAKY_TEST)
    result = run_inner("-p", "nozombies")
    result.stdout.fnmatch_lines(["nozombies: mode=fail, grace=1s, *"])
    assert_leak_failed(result)


# --- modes ------------------------------------------------------------------------


def test_mode_off_checks_nothing(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(LEAKY_TEST)
    result = run_inner("--nozombies-mode=off")
    result.stdout.fnmatch_lines(["nozombies: mode=off, nothing is checked"])
    assert_leak_passed(result)


def test_mode_is_case_insensitive(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(LEAKY_TEST)
    result = run_inner("--nozombies-mode=WARN")
    result.stdout.fnmatch_lines(["nozombies: mode=warn, grace=1s, *"])
    assert_leak_warned(result)


def test_warn_escalated_to_error_fails(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(LEAKY_TEST)
    result = run_inner(
        "--nozombies-mode=warn", "-W", "error::pytest_nozombies.ZombieWarning"
    )
    result.stdout.fnmatch_lines(["nozombies: mode=warn, *"])
    # As in fail mode: one short block on the test's teardown, no traceback
    # through the plugin and no second copy of the message.
    assert_leak_failed(result)
    output = result.stdout.str()
    errors_section = output.partition("short test summary info")[0]
    assert errors_section.count("test left 1 zombie child process") == 1, output
    assert "During handling" not in output
    assert "plugin.py" not in output


# --- grace ------------------------------------------------------------------------


def test_grace_zero_still_catches_zombies(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(LEAKY_TEST)
    result = run_inner("--nozombies-grace=0")
    result.stdout.fnmatch_lines(["nozombies: mode=fail, grace=0s, *"])
    assert_leak_failed(result)


def test_header_shows_fractional_grace(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = run_inner("--nozombies-grace=0.25")
    result.stdout.fnmatch_lines(["nozombies: mode=fail, grace=0.25s, *"])
    result.assert_outcomes(passed=1)


# --- ini and precedence -------------------------------------------------------------


def test_ini_settings(pytester: pytest.Pytester, run_inner: RunInner) -> None:
    pytester.makeini("[pytest]\nnozombies_mode = warn\nnozombies_grace = 0.25\n")
    pytester.makepyfile(LEAKY_TEST)
    result = run_inner()
    result.stdout.fnmatch_lines(["nozombies: mode=warn, grace=0.25s, *"])
    assert_leak_warned(result)


def test_ini_settings_in_pyproject(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\nnozombies_mode = "off"\nnozombies_grace = "2"\n'
    )
    pytester.makepyfile(LEAKY_TEST)
    result = run_inner()
    result.stdout.fnmatch_lines(["nozombies: mode=off, nothing is checked"])
    assert_leak_passed(result)


def test_command_line_beats_ini(pytester: pytest.Pytester, run_inner: RunInner) -> None:
    pytester.makeini("[pytest]\nnozombies_mode = off\nnozombies_grace = 3\n")
    pytester.makepyfile(LEAKY_TEST)
    result = run_inner("--nozombies-mode=fail", "--nozombies-grace=0.5")
    result.stdout.fnmatch_lines(["nozombies: mode=fail, grace=0.5s, *"])
    assert_leak_failed(result)


# --- bad values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "accepted"),
    [
        ("--nozombies-mode", "bogus", MODES),
        ("--nozombies-mode", "", MODES),
        ("--nozombies-grace", "-1", SECONDS),
        ("--nozombies-grace", "nan", SECONDS),
        ("--nozombies-grace", "abc", SECONDS),
        # Longer than the platform can wait for (threading.TIMEOUT_MAX).
        ("--nozombies-grace", "1e10", SECONDS),
        ("--nozombies-grace", "inf", SECONDS),
        ("--nozombies-grace", "-inf", SECONDS),
    ],
    ids=lambda value: "" if value in (MODES, SECONDS) else value or "empty",
)
def test_bad_command_line_value_is_usage_error(
    pytester: pytest.Pytester,
    run_inner: RunInner,
    option: str,
    value: str,
    accepted: str,
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = run_inner(f"{option}={value}")
    assert_usage_error(
        result,
        f"ERROR: pytest-nozombies: invalid value {value!r} for {option} "
        f"(command line); {accepted}",
    )


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("nozombies_mode", "bogus", MODES),
        ("nozombies_grace", "-2", SECONDS),
        ("nozombies_grace", "1e10", SECONDS),
    ],
    ids=lambda value: "" if value in (MODES, SECONDS) else value,
)
def test_bad_ini_value_is_usage_error(
    pytester: pytest.Pytester,
    run_inner: RunInner,
    key: str,
    value: str,
    accepted: str,
) -> None:
    ini = pytester.makeini(f"[pytest]\n{key} = {value}\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = run_inner()
    assert_usage_error(
        result,
        f"ERROR: pytest-nozombies: invalid value {value!r} for {key} "
        f"(ini in {ini}); {accepted}",
    )


def assert_usage_error(result: pytest.RunResult, message: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.lines
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    assert "collected" not in output  # stopped before any test ran


def test_longest_grace_the_platform_accepts_still_reports_leaks(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # 1e9 s is below threading.TIMEOUT_MAX: accepted, and every wait of the
    # grace period must still work with it (it once overflowed a poll()
    # timeout and switched the checks off mid-run). A child killed and not
    # waited for is waited out; a sleeping child is left running at once
    # (the run_inner timeout turns a hang into a failure).
    pytester.makepyfile(
        """
        import subprocess
        import sys

        kept = []

        def test_kill_without_wait():
            kept.append(subprocess.Popen(["sleep", "60"]))
            kept[-1].kill()

        def test_leaves_a_sleeper():
            kept.append(
                subprocess.Popen(
                    [sys.executable, "-c", "import sys; sys.stdin.read()"],
                    stdin=subprocess.PIPE,
                )
            )

        def test_after():
            pass
        """
    )
    result = run_inner("--nozombies-grace=1e9")
    result.stdout.fnmatch_lines(["nozombies: mode=fail, grace=1e+09s, *"])
    result.assert_outcomes(passed=3, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_kill_without_wait*",
            LEAK_MESSAGE,
            "  pid *: sleep 60",
            "    ended: killed by SIGKILL (9)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            LEAK_SUMMARY,
            "*::test_kill_without_wait (call): pid * sleep 60, "
            "killed by SIGKILL (9), spawned at *.py:7",
            "*= nozombies: 1 child left running =*",
            "*::test_leaves_a_sleeper (call): pid * -c 'import sys; sys.stdin.read()'*",
        ]
    )
    result.stdout.no_fnmatch_line("*internal error*")


# --- the marker ---------------------------------------------------------------------

#: A test that leaves a zombie, under a marker line put in front of it.
MARKED_LEAK = """
import os
import select
import subprocess
import sys

import pytest

kept = []

{marker}
def test_leaks():
    kept.append(subprocess.Popen([sys.executable, "-c", "pass"]))
    fd = os.pidfd_open(kept[-1].pid)
    try:
        exited, _, _ = select.select([fd], [], [], 30.0)
    finally:
        os.close(fd)
    assert exited
"""


@pytest.mark.parametrize(
    "marker",
    [
        '@pytest.mark.allow_zombies("it hands the child to a daemon")',
        '@pytest.mark.allow_zombies(reason="it hands the child to a daemon")',
        "@pytest.mark.allow_zombies",
        "@pytest.mark.allow_zombies()",
        'pytestmark = pytest.mark.allow_zombies("the whole module")',
    ],
    ids=["positional", "keyword", "bare", "no-arguments", "module"],
)
def test_marker_allows_the_leak(
    pytester: pytest.Pytester, run_inner: RunInner, marker: str
) -> None:
    pytester.makepyfile(MARKED_LEAK.format(marker=marker))
    assert_leak_passed(run_inner())


def test_marker_on_a_class_allows_its_tests(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makepyfile(
        """
        import os
        import select
        import subprocess

        import pytest

        kept = []

        def leave_zombie(code):
            kept.append(subprocess.Popen(["sh", "-c", f"exit {code}"]))
            fd = os.pidfd_open(kept[-1].pid)
            try:
                assert select.select([fd], [], [], 30.0)[0]
            finally:
                os.close(fd)

        @pytest.mark.allow_zombies("a server that outlives its tests")
        class TestServer:
            def test_leaks(self):
                leave_zombie(1)

        def test_not_in_the_class():
            leave_zombie(2)
        """
    )
    result = run_inner()
    # Only the test outside the class is blamed.
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*= nozombies: 1 zombie leak =*",
            "*::test_not_in_the_class (call): pid * sh -c 'exit 2', *",
        ]
    )
    result.stdout.no_fnmatch_line("*TestServer*")


@pytest.mark.parametrize(
    ("marker", "problem"),
    [
        (
            '@pytest.mark.allow_zombies("why", reason="why")',
            "takes one reason, got ('why',) {'reason': 'why'}",
        ),
        (
            '@pytest.mark.allow_zombies("one", "two")',
            "takes one reason, got ('one', 'two') {}",
        ),
        ("@pytest.mark.allow_zombies(42)", "reason must be a string, got 42"),
        (
            "@pytest.mark.allow_zombies(reason=b'why')",
            "reason must be a string, got b'why'",
        ),
        (
            '@pytest.mark.allow_zombies(why="because")',
            "got unexpected keyword argument(s) why",
        ),
    ],
    ids=["both", "two-positional", "int", "bytes", "unknown-keyword"],
)
def test_wrong_marker_arguments_are_a_usage_error(
    pytester: pytest.Pytester, run_inner: RunInner, marker: str, problem: str
) -> None:
    pytester.makepyfile(test_marked=MARKED_LEAK.format(marker=marker))
    pytester.makepyfile(test_other="def test_other():\n    pass\n")
    # Checked as collected, before -k deselects the marked test: a typo in
    # the marker never hides.
    result = run_inner("-k", "test_other")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    [line] = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert line.startswith(
        "ERROR: pytest-nozombies: @pytest.mark.allow_zombies on "
        f"test_marked.py::test_leaks {problem}"
    ), line
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    result.stdout.no_fnmatch_line("*passed*")


# --- help ---------------------------------------------------------------------------


def test_help_lists_the_settings(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    result = run_inner("--help")
    assert result.ret == pytest.ExitCode.OK
    # The metavars are the docs' names for the values.
    result.stdout.fnmatch_lines(
        [
            "zombie child processes (pytest-nozombies):",
            "  --nozombies-subreaper",
            "  --nozombies-mode=fail|warn|off",
            "  --nozombies-grace=SECONDS",
            "  --nozombies-report=PATH",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "  nozombies_mode (string):",
            "  nozombies_grace (string):",
            "  nozombies_ignore (linelist):",
            "  nozombies_running (string):",
            "  nozombies_report (string):",
            "  nozombies_subreaper (bool):",
        ]
    )


def test_help_works_even_with_a_bad_setting(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makeini("[pytest]\nnozombies_mode = bogus\nnozombies_grace = 1e99\n")
    result = run_inner("--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*--nozombies-mode=fail|warn|off*"])


def test_fault_injection_platform_without_zombies_loads_and_never_fails(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # Windows cannot be had here: tell the plugin it runs where no process can
    # become a zombie, as it does on Windows. A plugin loaded with -p does so
    # before the plugin starts (a conftest would be too late).
    pytester.makepyfile(
        no_zombies_here=(
            "from pytest_nozombies import processes\nprocesses.SUPPORTED = False\n"
        )
    )
    pytester.makepyfile(
        """
        import subprocess
        kept = []
        def test_leaks():
            kept.append(subprocess.Popen(["sh", "-c", "exit 1"]))
            kept[-1].wait()
            kept.append(subprocess.Popen(["sh", "-c", "exit 2"]))
        """
    )
    result = run_inner("-p", "no_zombies_here")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["nozombies: nothing to check on this platform (it has no zombies)"]
    )
    result.stdout.no_fnmatch_line("*zombie leak*")
