"""Children started while conftests and test modules are imported (issue 14).

What an import starts is the collection's: judged when collection ends,
against the file being imported and the line that spawned it. A zombie is a
leak like a wider fixture's (in the summary and the JSON report, verdict
``failed-run``, exit status 1 in fail mode), a child still running is listed
as running. Children that exist before the plugin starts are the baseline
and are never blamed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import DEADLINE, RunInner, line_of

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")

#: Each spawn is marked ``# SPAWN <name>``; each waits (without reaping) for
#: its child to exit, so it is a zombie when collection ends.
CONFTEST = """
import os
import subprocess

EXITS = subprocess.Popen(["sh", "-c", "exit 3"])  # SPAWN conftest-popen
os.waitid(os.P_PID, EXITS.pid, os.WEXITED | os.WNOWAIT)

FORKED = os.fork()  # SPAWN conftest-fork
if FORKED == 0:
    os._exit(4)
os.waitid(os.P_PID, FORKED, os.WEXITED | os.WNOWAIT)

SERVER = subprocess.Popen(["sleep", "30"])  # SPAWN conftest-sleep
with open("sleep.pids", "a") as f:  # the outer test stops it
    f.write(f"{SERVER.pid}\\n")
"""

SUB_CONFTEST = """
import os
import subprocess

EXITS = subprocess.Popen(["sh", "-c", "exit 7"])  # SPAWN sub-conftest-popen
os.waitid(os.P_PID, EXITS.pid, os.WEXITED | os.WNOWAIT)
"""

TEST_MODULE = """
import os
import subprocess

EXITS = subprocess.Popen(["sh", "-c", "exit 5"])  # SPAWN module-popen
os.waitid(os.P_PID, EXITS.pid, os.WEXITED | os.WNOWAIT)

FORKED = os.fork()  # SPAWN module-fork
if FORKED == 0:
    os._exit(6)
os.waitid(os.P_PID, FORKED, os.WEXITED | os.WNOWAIT)


def test_one():
    pass


def test_two():
    pass
"""


@pytest.fixture
def importing_project(pytester: pytest.Pytester) -> Iterator[Path]:
    """A rootdir conftest (loaded before collection starts), a conftest of a
    sub-folder and a test module, all starting children when imported; the
    ``sleep 30`` children the inner runs leave are stopped afterwards."""
    pytester.makeconftest(CONFTEST)
    pytester.mkdir("sub")
    pytester.makepyfile(
        **{"sub/conftest": SUB_CONFTEST, "sub/test_imports": TEST_MODULE}
    )
    try:
        yield pytester.path
    finally:
        _stop_sleepers(pytester.path / "sleep.pids")


def _stop_sleepers(pids: Path) -> None:
    # Orphans of the inner run by now: not our children, nothing to reap.
    if not pids.exists():
        return
    for pid in map(int, pids.read_text().split()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() != b"sleep\0" + b"30\0":
                    continue  # gone, and the pid taken by another process
            os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


def expected_leaks(root: Path) -> list[tuple[str, str, str, str]]:
    """(owner, command, how it ended, spawn site) of each zombie the imports
    leave, in the order they are spawned."""
    conftest = root / "conftest.py"
    sub_conftest = root / "sub" / "conftest.py"
    module = root / "sub" / "test_imports.py"
    forked = "[[]*[]] (forked by os.fork)"
    return [
        (
            "import of conftest.py",
            "sh -c 'exit 3'",
            "exited with code 3",
            f"conftest.py:{line_of(conftest, 'SPAWN conftest-popen')}",
        ),
        (
            "import of conftest.py",
            forked,
            "exited with code 4",
            f"conftest.py:{line_of(conftest, 'SPAWN conftest-fork')}",
        ),
        (
            "import of sub/conftest.py",
            "sh -c 'exit 7'",
            "exited with code 7",
            f"sub/conftest.py:{line_of(sub_conftest, 'SPAWN sub-conftest-popen')}",
        ),
        (
            "import of sub/test_imports.py",
            "sh -c 'exit 5'",
            "exited with code 5",
            f"sub/test_imports.py:{line_of(module, 'SPAWN module-popen')}",
        ),
        (
            "import of sub/test_imports.py",
            forked,
            "exited with code 6",
            f"sub/test_imports.py:{line_of(module, 'SPAWN module-fork')}",
        ),
    ]


def summary_line(owner: str, command: str, ended: str, site: str) -> str:
    return f"{owner}: pid * {command}, {ended}, spawned at {site}"


def running_line(root: Path) -> str:
    line = line_of(root / "conftest.py", "SPAWN conftest-sleep")
    return f"import of conftest.py: pid * sleep 30, spawned at conftest.py:{line}"


def load_report(root: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((root / "report.json").read_text())
    return report


@pytest.mark.parametrize(
    ("mode", "ret", "verdict"),
    [
        (None, pytest.ExitCode.TESTS_FAILED, "failed-run"),
        ("warn", pytest.ExitCode.OK, "warned"),
    ],
    ids=["fail", "warn"],
)
def test_children_started_at_import_are_judged_when_collection_ends(
    importing_project: Path,
    run_inner: RunInner,
    mode: str | None,
    ret: pytest.ExitCode,
    verdict: str,
) -> None:
    args = ["--nozombies-report=report.json", "-p", "no:randomly"]
    if mode is not None:
        args.append(f"--nozombies-mode={mode}")
    result = run_inner(*args)
    result.assert_outcomes(passed=2)
    assert result.ret == ret
    leaks = expected_leaks(importing_project)
    result.stdout.fnmatch_lines(
        ["*= nozombies: 5 zombie leaks =*"]
        + [summary_line(*leak) for leak in leaks]
        + ["*= nozombies: 1 child left running =*", running_line(importing_project)],
        consecutive=True,
    )
    # In warn mode the leaks are also one ZombieWarning, in pytest's summary.
    warned = ", 1 warning" if mode == "warn" else ""
    result.stdout.fnmatch_lines(
        [f"*= 2 passed{warned}, 5 zombie leaks, 1 child left running in *"]
    )
    # Reported once, at the end of collection: never again as found late.
    result.stdout.no_fnmatch_line("*(late: found while*")
    result.stdout.no_fnmatch_line("*ERROR*")

    report = load_report(importing_project)
    found = [
        (
            leak["owner"]["text"],
            leak["owner"]["phase"],
            leak["nodeid"],
            leak["ended"]["text"],
            leak["spawn_site"],
            leak["verdict"],
        )
        for leak in report["leaks"]
    ]
    assert found == [
        (owner, "collect", owner.removeprefix("import of "), ended, site, verdict)
        for owner, _, ended, site in leaks
    ]
    assert [leak["argv"] for leak in report["leaks"]] == [
        ["sh", "-c", "exit 3"],
        None,
        ["sh", "-c", "exit 7"],
        ["sh", "-c", "exit 5"],
        None,
    ]
    (running,) = report["running"]
    assert running["argv"] == ["sleep", "30"]
    assert running["owner"]["text"] == "import of conftest.py"
    assert running["verdict"] == "warned"
    assert report["run"]["exit_status"] == ret


def test_children_started_at_import_under_xdist(
    importing_project: Path, run_inner: RunInner
) -> None:
    # The controller imports the rootdir conftest (and no test module); each
    # worker imports every conftest and test module. Each process judges
    # what its own imports started and the controller lists them all: the
    # rootdir conftest's leaks three times (its own and each worker's, each
    # a process of its own), the others twice.
    result = run_inner("-n", "2", "--nozombies-report=report.json")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    leaks = expected_leaks(importing_project)
    times = {"import of conftest.py": 3}
    expected = [
        summary_line(*leak) for leak in leaks for _ in range(times.get(leak[0], 2))
    ]
    result.stdout.fnmatch_lines(
        ["*= nozombies: 12 zombie leaks =*", "*= nozombies: 3 children left running =*"]
    )
    result.stdout.fnmatch_lines_random([*expected, running_line(importing_project)])
    result.stdout.fnmatch_lines(
        ["*= 2 passed, 12 zombie leaks, 3 children left running in *"]
    )
    report = load_report(importing_project)
    pids = [leak["pid"] for leak in report["leaks"]]
    assert len(set(pids)) == len(pids) == 12
    assert {leak["verdict"] for leak in report["leaks"]} == {"failed-run"}
    owners_and_sites = sorted(
        (leak["owner"]["text"], leak["spawn_site"]) for leak in report["leaks"]
    )
    assert owners_and_sites == sorted(
        (owner, site) for owner, _, _, site in leaks for _ in range(times.get(owner, 2))
    )
    assert [leak["argv"] for leak in report["running"]] == [["sleep", "30"]] * 3


WRAPPER = """
import os
import sys


KEPT_PIPES = []


def early_child():
    # Runs until the write end of its pipe, kept by the test process, closes.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in [w, *KEPT_PIPES]:  # only the test process may hold them
            os.close(fd)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    os.set_inheritable(w, True)
    KEPT_PIPES.append(w)
    return pid, w


# Before pytest, and the plugin, start: a child that exits and is never
# waited for, one that a test lets go and one that runs to the end.
zombie = os.fork()
if zombie == 0:
    os._exit(0)
os.waitid(os.P_PID, zombie, os.WEXITED | os.WNOWAIT)
let_go, let_go_pipe = early_child()
server, _ = early_child()
os.environ["EARLY"] = f"{zombie} {let_go} {let_go_pipe} {server}"
os.execv(sys.executable, [sys.executable, "-m", "pytest", *sys.argv[1:]])
"""

BASELINE_TESTS = """
import os

ZOMBIE, LET_GO, LET_GO_PIPE, SERVER = map(int, os.environ["EARLY"].split())


def is_zombie(pid):
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def test_the_early_zombie_is_there():
    assert is_zombie(ZOMBIE)


def test_lets_an_early_child_go():
    assert not is_zombie(LET_GO)
    os.close(LET_GO_PIPE)
    os.waitid(os.P_PID, LET_GO, os.WEXITED | os.WNOWAIT)


def test_they_are_left_as_they_are():
    assert is_zombie(ZOMBIE)
    assert is_zombie(LET_GO)
    assert not is_zombie(SERVER)
"""


def test_children_from_before_the_plugin_are_the_baseline(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wrapper script forks, then execs pytest in the same process: its
    # children are pytest's from the first instant, before any plugin runs.
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(wrapper=WRAPPER, test_baseline=BASELINE_TESTS)
    result = pytester.run(
        sys.executable,
        "wrapper.py",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-v",
        timeout=DEADLINE * 4,
    )
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["nozombies: mode=fail, *"])
    result.stdout.no_fnmatch_line("*= nozombies:*")
    result.stdout.no_fnmatch_line("*zombie leak*")
    result.stdout.no_fnmatch_line("*left running*")
