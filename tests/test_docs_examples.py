"""The documentation's examples, run as the pages say they run.

Each example test file lives in ``docs/examples/`` and is shown on its page
with ``literalinclude``; so is the output printed next to it
(``docs/examples/output/``). Here every example is copied into a pytester
folder and run in a subprocess with the plugin on, and the test asserts what
the page claims: the outcomes, the exit status, and that the output shown is
the output produced (once pids, timings and paths are made comparable).
README.md's output of its first command is checked the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from helpers import DEADLINE, RunInner

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
OUTPUT = EXAMPLES / "output"
#: Where the shown output was produced; stands for pytester's folder.
SHOWN_DIR = "/home/me/project"

#: Lines that depend on the machine, the installed plugins or pytest's version.
_VARIABLE = re.compile(
    r"^(platform |rootdir: |configfile: |plugins: |cachedir: |ERROR |FAILED |"
    r"-- Docs: |created: |\d+ workers \[|\[gw\d+\] )"
)


def normalize(text: str, folder: Path | None = None) -> list[str]:
    """Lines of pytest output with what varies between runs made constant."""
    if folder is not None:
        text = text.replace(str(folder), SHOWN_DIR)
    text = re.sub(r"\b(pid|process) \d+", r"\1 N", text)
    text = re.sub(r"\[python[0-9.]*\]", "[python]", text)
    text = re.sub(r" in \d+\.\d+s\b", " in Ts", text)
    text = re.sub(r"ForkProcess-\d+", "ForkProcess-N", text)
    # assert_no_zombies says how long it saw each zombie: near its timeout.
    text = re.sub(r"a zombie for at least \d+\.\ds", "a zombie for at least Ts", text)
    # A separator's width depends on its title's (a timing's) length.
    text = re.sub(r"(?m)^([=_-])\1* (.*?) \1+$", r"\1 \2 \1", text)
    return [line.rstrip() for line in text.splitlines() if not _VARIABLE.match(line)]


@dataclass(frozen=True)
class Example:
    """One run of example files, as a page shows it."""

    id: str
    files: tuple[str, ...]
    outcomes: dict[str, int]
    ret: int
    args: tuple[str, ...] = ()
    #: An example ini file, copied in as ``pytest.ini``.
    ini: str | None = None
    #: An example conftest, copied in as ``conftest.py``.
    conftest: str | None = None
    #: The output shown on the page (``docs/examples/output/``).
    shown: str | None = None
    #: The shown output is a part of the output (its lines, in one piece).
    excerpt: bool = False
    #: Lines that must (also) be in the output, fnmatch patterns.
    lines: tuple[str, ...] = ()
    #: Output shown on the page whose lines come in any order (xdist).
    shown_unordered: str | None = None
    linux_only: bool = False

    @property
    def test_files(self) -> tuple[str, ...]:
        """The files named on the command line (not the helpers they import)."""
        return tuple(name for name in self.files if name.startswith("test_"))


EXAMPLES_RUN = [
    # quickstart.rst: the leak fails its test at teardown; pytest exits 1.
    Example(
        "leak",
        ("test_leak_example.py",),
        {"passed": 1, "errors": 1},
        1,
        shown="leak.txt",
    ),
    # quickstart.rst, how-to/gate-ci.rst: warn mode passes with one warning.
    Example(
        "leak-warn",
        ("test_leak_example.py",),
        {"passed": 1, "warnings": 1},
        0,
        args=("--nozombies-mode=warn",),
        shown="leak-warn.txt",
    ),
    # how-to/gate-ci.rst: -W error:: turns the warning back into the failure.
    Example(
        "leak-warn-escalated",
        ("test_leak_example.py",),
        {"passed": 1, "errors": 1},
        1,
        args=("--nozombies-mode=warn", "-W", "error::pytest_nozombies.ZombieWarning"),
        lines=(
            "*ERROR at teardown of test_stop_server*",
            "test left 1 zombie child process (exited, never waited for):",
            "*= nozombies: 1 zombie leak =*",
            "*= 1 passed, 1 error, 1 zombie leak in *",
        ),
    ),
    # how-to/read-the-report.rst: -vv adds the spawning stack.
    Example(
        "leak-very-verbose",
        ("test_leak_example.py",),
        {"passed": 1, "errors": 1},
        1,
        args=("-vv",),
        lines=(
            "    spawned at: test_leak_example.py:7",
            "    stack (most recent call last):",
            "      test_leak_example.py:7 in test_stop_server",
            "      */subprocess.py:* in __init__",
        ),
    ),
    # quickstart.rst: the fixed tests pass and nothing is reported.
    Example(
        "fixed",
        ("test_fixed_example.py",),
        {"passed": 5},
        0,
        shown="fixed.txt",
    ),
    # how-to/allow-zombies.rst: marked tests pass; the zombie is reaped
    # through its Popen, whose returncode is then 7.
    Example(
        "allowed",
        ("test_allowed_example.py", "test_allowed_module_example.py"),
        {"passed": 6},
        0,
        shown="allowed.txt",
    ),
    # how-it-works.rst, how-to/read-the-report.rst, how-to/gate-ci.rst: a late
    # leak is blamed on the test that spawned the child; both tests pass, the
    # closing line counts the leak, the run exits 1.
    Example(
        "late",
        ("test_late_leak_example.py",),
        {"passed": 2},
        1,
        shown="late.txt",
    ),
    # how-to/read-the-report.rst: a module fixture's leak is blamed on the
    # fixture.
    Example(
        "fixture",
        ("test_fixture_leak_example.py",),
        {"passed": 2},
        1,
        shown="fixture.txt",
    ),
    # how-to/read-the-report.rst: nozombies_running = warn lists the child
    # still running at the end, exit 0...
    Example(
        "running",
        ("test_running_example.py",),
        {"passed": 1},
        0,
        shown="running.txt",
    ),
    # ...and nozombies_running = fail (configuration.rst's ini file) fails
    # the test that left it.
    Example(
        "running-fail",
        ("test_running_example.py",),
        {"passed": 1, "errors": 1},
        1,
        ini="running_fail_example.ini",
        shown="running-fail.txt",
    ),
    # how-to/subreaper.rst: without the option the daemon is not ours...
    Example(
        "daemon-plain",
        ("test_daemon_example.py",),
        {"passed": 1},
        0,
        shown="daemon-plain.txt",
        linux_only=True,
    ),
    # ...with it, its zombie comes back and fails the test.
    Example(
        "daemon",
        ("test_daemon_example.py",),
        {"passed": 1, "errors": 1},
        1,
        args=("--nozombies-subreaper",),
        shown="daemon.txt",
        linux_only=True,
    ),
    # how-to/ignore.rst: the helper matching the pattern is no leak.
    Example(
        "ignore",
        ("test_ignore_example.py",),
        {"passed": 2, "errors": 1},
        1,
        ini="ignore_example.ini",
        shown="ignore.txt",
    ),
    # how-to/ignore.rst: without the pattern, both tests leak.
    Example(
        "ignore-without-pattern",
        ("test_ignore_example.py",),
        {"passed": 2, "errors": 2},
        1,
        lines=("*= 2 passed, 2 errors, 2 zombie leaks in *",),
    ),
    # how-to/ignore.rst, configuration.rst: the conftest's hook keeps one
    # leak back and adds a note to the other...
    Example(
        "hook",
        ("test_hook_example.py",),
        {"passed": 2, "errors": 1},
        1,
        conftest="conftest_hook_example.py",
        shown="hook.txt",
    ),
    # ...and, declared optional, costs nothing without the plugin.
    Example(
        "hook-without-plugin",
        ("test_hook_example.py",),
        {"passed": 2},
        0,
        args=("-p", "no:nozombies"),
        conftest="conftest_hook_example.py",
    ),
    # how-to/read-the-report.rst: a spawn in a helper of the project names
    # the test's line too (via:), and one from another thread names it.
    Example(
        "via",
        ("test_via_example.py", "servers_example.py"),
        {"passed": 2, "errors": 2},
        1,
        shown="via.txt",
    ),
    # how-to/test-process-managers.rst: the server that reaps its killed
    # worker passes, the one that forgets it fails, naming the worker.
    Example(
        "manager",
        ("test_manager_example.py",),
        {"passed": 2, "failed": 1},
        1,
        shown="manager.txt",
        excerpt=True,
    ),
    # how-to/test-process-managers.rst: the fixture works in every mode.
    Example(
        "manager-mode-off",
        ("test_manager_example.py",),
        {"passed": 2, "failed": 1},
        1,
        args=("--nozombies-mode=off",),
        lines=("*still has 1 zombie child after 2s:",),
    ),
    # how-to/xdist.rst: under -n 2 the controller lists every worker's leaks,
    # and --dist loadfile keeps the order-dependent late-leak pair together.
    Example(
        "xdist",
        (
            "test_leak_example.py",
            "test_late_leak_example.py",
            "test_fixture_leak_example.py",
        ),
        {"passed": 5, "errors": 1},
        1,
        args=("-n", "2", "--dist", "loadfile"),
        shown_unordered="xdist.txt",
    ),
]


def copy_examples(pytester: pytest.Pytester, example: Example) -> None:
    for name in example.files:
        shutil.copy(EXAMPLES / name, pytester.path / name)
    if example.ini is not None:
        shutil.copy(EXAMPLES / example.ini, pytester.path / "pytest.ini")
    if example.conftest is not None:
        shutil.copy(EXAMPLES / example.conftest, pytester.path / "conftest.py")


@pytest.fixture
def run_example(
    pytester: pytest.Pytester, run_inner: RunInner, monkeypatch: pytest.MonkeyPatch
) -> RunInner:
    # The shown output was produced on an 80-column terminal.
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    return run_inner


@pytest.mark.parametrize("example", EXAMPLES_RUN, ids=lambda e: e.id)
def test_example_runs_as_its_page_says(
    pytester: pytest.Pytester, run_example: RunInner, example: Example
) -> None:
    if example.linux_only and not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    if "-n" in example.args:
        pytest.importorskip("xdist")
    copy_examples(pytester, example)
    result = run_example(*example.args, *example.test_files)
    result.assert_outcomes(**example.outcomes)
    assert result.ret == example.ret
    if example.lines:
        result.stdout.fnmatch_lines(list(example.lines))
    actual = normalize(result.stdout.str(), pytester.path)
    if example.shown is not None:
        shown = normalize((OUTPUT / example.shown).read_text())
        if example.excerpt:
            assert_contains_block(actual, shown)
        else:
            assert actual == shown
    if example.shown_unordered is not None:
        # Workers report in any order: every shown line is there, in some order.
        shown = normalize((OUTPUT / example.shown_unordered).read_text())
        progress = re.compile(r"^[.EF]+ +\[100%\]$")
        assert sorted(x for x in actual if not progress.match(x)) == sorted(
            x for x in shown if not progress.match(x)
        )


def assert_contains_block(lines: list[str], block: list[str]) -> None:
    """``block``'s lines are in ``lines``, in one piece and in order."""
    assert block, "an empty excerpt shows nothing"
    starts = [i for i, line in enumerate(lines) if line == block[0]]
    report = "\n".join(["shown:", *block, "", "produced:", *lines])
    assert any(lines[i : i + len(block)] == block for i in starts), report


def test_wrong_marker_arguments_stop_the_run_with_exit_code_4(
    pytester: pytest.Pytester, run_example: RunInner
) -> None:
    shutil.copy(EXAMPLES / "test_bad_marker_example.py", pytester.path)
    result = run_example("test_bad_marker_example.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    shown = (OUTPUT / "bad-marker.txt").read_text().strip()
    assert result.stderr.str().strip() == shown
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def load_schema() -> dict[str, Any]:
    text = resources.files("pytest_nozombies").joinpath("report.schema.json")
    schema: dict[str, Any] = json.loads(text.read_text())
    return schema


def test_json_report_and_junit_property_are_as_shown(
    pytester: pytest.Pytester, run_example: RunInner
) -> None:
    shutil.copy(EXAMPLES / "test_leak_example.py", pytester.path)
    result = run_example(
        "--nozombies-report=report.json", "--junitxml=junit.xml", "test_leak_example.py"
    )
    assert result.ret == 1
    document = json.loads((pytester.path / "report.json").read_text())
    jsonschema.validate(document, load_schema())
    assert document["schema"] == "pytest-nozombies-report"
    assert document["version"] == 2

    # docs/how-to/read-the-report.rst shows one leak, its stack shortened to
    # the test's own frame.
    [leak] = document["leaks"]
    shown = json.loads((OUTPUT / "report-leak.json").read_text())
    assert set(leak) == set(shown)
    for key in set(shown) - {"pid", "stack"}:
        assert leak[key] == shown[key], key
    assert set(shown["stack"]) <= set(leak["stack"])

    shown_run = json.loads((OUTPUT / "report-run.json").read_text())
    assert set(document["run"]) == set(shown_run)
    assert set(document["run"]["settings"]) == set(shown_run["settings"])
    settings = dict(document["run"]["settings"], report=None)
    assert settings == dict(shown_run["settings"], report=None)
    assert document["run"]["exit_status"] == shown_run["exit_status"]

    tree = ET.parse(pytester.path / "junit.xml")
    [value] = [
        prop.get("value", "")
        for prop in tree.iter("property")
        if prop.get("name") == "nozombies_leak"
    ]
    shown_property = ET.fromstring((OUTPUT / "junit-property.xml").read_text())
    assert shown_property.get("name") == "nozombies_leak"
    assert normalize(value) == normalize(shown_property.get("value", ""))


def test_hook_example_keeps_one_leak_out_of_the_json_report_and_annotates_the_other(
    pytester: pytest.Pytester, run_example: RunInner
) -> None:
    shutil.copy(EXAMPLES / "test_hook_example.py", pytester.path)
    shutil.copy(EXAMPLES / "conftest_hook_example.py", pytester.path / "conftest.py")
    result = run_example("--nozombies-report=report.json", "test_hook_example.py")
    result.assert_outcomes(passed=2, errors=1)
    document = json.loads((pytester.path / "report.json").read_text())
    [leak] = document["leaks"]
    assert leak["nodeid"] == "test_hook_example.py::test_starts_a_server"
    assert leak["argv"] == ["sleep", "60"]
    assert leak["details"] == ["servers must be stopped in their fixture's teardown"]
    assert document["running"] == []


#: The usage errors configuration.rst lists, with what produces each.
USAGE_ERRORS = [
    (
        ("--nozombies-mode=bogus",),
        None,
        "ERROR: pytest-nozombies: invalid value 'bogus' for --nozombies-mode "
        "(command line); expected one of: fail, warn, off",
    ),
    (
        ("--nozombies-grace=-1",),
        None,
        "ERROR: pytest-nozombies: invalid value '-1' for --nozombies-grace "
        "(command line); expected a number of seconds from 0 to 9223372036 "
        "(e.g. 0.5)",
    ),
    (
        ("--nozombies-report=.",),
        None,
        "ERROR: pytest-nozombies: invalid value '.' for --nozombies-report "
        "(command line); expected a regular file in a folder this run can write to "
        "(it is a folder, and only a regular file is ever replaced)",
    ),
    (
        (),
        "nozombies_running = maybe",
        "ERROR: pytest-nozombies: invalid value 'maybe' for nozombies_running "
        "(ini in /home/me/project/pytest.ini); expected one of: ignore, warn, fail",
    ),
    (
        (),
        "nozombies_ignore =\n    ([unclosed",
        "ERROR: pytest-nozombies: invalid value '([unclosed' for nozombies_ignore "
        "(ini in /home/me/project/pytest.ini); expected a Python regular "
        "expression (unterminated character set at position 1)",
    ),
    (
        (),
        "nozombies_subreaper = perhaps",
        "ERROR: pytest-nozombies: invalid truth value 'perhaps' for "
        "nozombies_subreaper (ini in /home/me/project/pytest.ini); expected true "
        "or false",
    ),
]


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    USAGE_ERRORS,
    ids=["mode", "grace", "report", "running", "ignore", "subreaper"],
)
def test_bad_values_give_the_usage_errors_the_reference_lists(
    pytester: pytest.Pytester,
    run_example: RunInner,
    args: tuple[str, ...],
    ini: str | None,
    message: str,
) -> None:
    assert message in (DOCS / "configuration.rst").read_text()
    pytester.makepyfile("def test_x():\n    pass\n")
    if ini is not None:
        (pytester.path / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    result = run_example(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert normalize(result.stderr.str(), pytester.path) == [message]


def test_every_example_file_is_shown_on_a_page_and_run_here() -> None:
    pages = "\n".join(p.read_text() for p in DOCS.rglob("*.rst"))
    run_here = {name for e in EXAMPLES_RUN for name in e.files}
    run_here |= {e.ini for e in EXAMPLES_RUN if e.ini is not None}
    run_here |= {e.conftest for e in EXAMPLES_RUN if e.conftest is not None}
    run_here |= {"test_bad_marker_example.py"}
    for path in EXAMPLES.iterdir():
        if path.is_file():
            assert f"examples/{path.name}" in pages, path.name
            assert path.name in run_here, path.name
    compared = {e.shown for e in EXAMPLES_RUN if e.shown is not None}
    compared |= {e.shown_unordered for e in EXAMPLES_RUN if e.shown_unordered}
    compared |= {
        "bad-marker.txt",
        "report-leak.json",
        "report-run.json",
        "junit-property.xml",
    }
    for path in OUTPUT.iterdir():
        assert f"examples/output/{path.name}" in pages, path.name
        assert path.name in compared, path.name


def readme_output() -> str:
    """The output README.md shows for its first command."""
    text = (ROOT / "README.md").read_text()
    blocks: list[str] = re.findall(r"(?ms)^```text\n(.*?)^```$", text)
    [block] = [b for b in blocks if "test session starts" in b]
    return block


@pytest.mark.usefixtures("run_example")  # for its environment: 80 columns
def test_readme_shows_what_its_first_command_prints(pytester: pytest.Pytester) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python -m pytest examples" in readme
    shutil.copytree(ROOT / "examples", pytester.path / "examples")
    # As a reader types it: no option of the test suite's own.
    result = pytester.run(
        sys.executable, "-m", "pytest", "examples", timeout=DEADLINE * 4
    )
    result.assert_outcomes(passed=5, errors=3)
    assert result.ret == 1
    assert normalize(result.stdout.str(), pytester.path) == normalize(readme_output())
