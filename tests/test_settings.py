"""Activation and settings: how the plugin is turned on and off, and how each
setting is read, validated and shown in the report header.
"""

from __future__ import annotations

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
SECONDS = "expected a number of seconds, 0 or more (e.g. 0.5)"


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
    ],
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
    [("nozombies_mode", "bogus", MODES), ("nozombies_grace", "-2", SECONDS)],
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


# --- help ---------------------------------------------------------------------------


def test_help_lists_the_settings(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    result = run_inner("--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "zombie child processes (pytest-nozombies):",
            "  --nozombies-mode=MODE",
            "*Default: fail. Ini: nozombies_mode.",
            "  --nozombies-grace=GRACE",
            "*Ini: nozombies_grace.",
            "  nozombies_mode (string):",
            "  nozombies_grace (string):",
        ]
    )


def test_help_works_even_with_a_bad_setting(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    pytester.makeini("[pytest]\nnozombies_mode = bogus\n")
    result = run_inner("--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*--nozombies-mode=MODE*"])


def test_simulated_platform_without_zombies_loads_and_never_fails(
    pytester: pytest.Pytester, run_inner: RunInner
) -> None:
    # Simulated platform: Windows cannot be had here, so tell the plugin it runs
    # where no process can become a zombie, as it does on Windows.
    pytester.makeconftest(
        "from pytest_nozombies import processes\nprocesses.SUPPORTED = False\n"
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
    result = run_inner()
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["nozombies: nothing to check on this platform (it has no zombies)"]
    )
