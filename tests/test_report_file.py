"""Where the JSON report is written, and how (issue 14 point 2): through real
pytest runs and through pytest_nozombies.report_file itself.

Every file these tests make, a FIFO or a device node included, is made in
the test's own tmp folder; no test touches a system path.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import DEADLINE, RunInner
from pytest_nozombies import report_file

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")

PASSING = "def test_passes():\n    pass\n"
LEAKING = """
import subprocess
from helpers_inner import wait_until_zombie

kept = []  # a dropped Popen would reap its child as it is freed

def test_leaks():
    proc = subprocess.Popen(["sh", "-c", "exit 3"])
    kept.append(proc)
    wait_until_zombie(proc.pid)
"""
HELPERS_INNER = """
import os, select

def wait_until_zombie(pid):
    fd = os.pidfd_open(pid)
    try:
        assert select.select([fd], [], [], 30)[0]
    finally:
        os.close(fd)
"""
REFUSED = "only a regular file is ever replaced"


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    assert document["schema"] == "pytest-nozombies-report"
    assert document["version"] == 2
    return document


def scratch_files(folder: Path) -> list[str]:
    """What a failed or interrupted write could leave beside its target: a
    hidden file (none of these tests makes one)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


class Watch:
    """Every open, read, write or close of one file, by any process, as
    inotify reports it (Linux)."""

    _EVENTS = 0xFFF  # IN_ALL_EVENTS

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            pytest.skip("no inotify")
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            pytest.skip("inotify is not available")
        if libc.inotify_add_watch(self.fd, os.fsencode(path), self._EVENTS) < 0:
            os.close(self.fd)
            pytest.skip("inotify cannot watch this file")

    def events(self) -> list[int]:
        masks = []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        while data:
            _, mask, _, length = struct.unpack_from("iIII", data)
            masks.append(mask)
            data = data[16 + length :]
        return masks

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def watch() -> Iterator[type[Watch]]:
    made: list[Watch] = []

    class Watching(Watch):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            made.append(self)

    yield Watching
    for one in made:
        one.close()


def make_special(kind: str, path: Path) -> None:
    """Make a file that is not a regular one at ``path`` (in a tmp folder)."""
    if kind == "FIFO":
        os.mkfifo(path)
    elif kind == "character device":
        try:
            # The null device's numbers: harmless even if something wrote.
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("mknod is not permitted here")
    elif kind == "folder":
        path.mkdir()
    else:
        raise AssertionError(kind)


def is_kind(kind: str, path: Path) -> bool:
    mode = os.lstat(path).st_mode
    return {
        "FIFO": stat.S_ISFIFO,
        "character device": stat.S_ISCHR,
        "folder": stat.S_ISDIR,
    }[kind](mode)


# --- through real runs --------------------------------------------------------


@pytest.mark.parametrize("target_exists", [True, False], ids=["existing", "dangling"])
def test_a_symlink_is_followed_to_its_target(
    pytester: pytest.Pytester, run_inner: RunInner, target_exists: bool
) -> None:
    pytester.makepyfile(PASSING)
    target = pytester.path / "out" / "report.json"
    if target_exists:
        target.parent.mkdir()
        target.write_text("old\n")
    link = pytester.path / "report.json"
    link.symlink_to(Path("out", "report.json"))
    result = run_inner("--nozombies-report=report.json")
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    assert link.is_symlink()
    assert os.readlink(link) == os.path.join("out", "report.json")
    document = load(target)
    assert document["run"]["exit_status"] == 0
    assert document["leaks"] == []
    assert scratch_files(target.parent) == []
    assert scratch_files(pytester.path) == []


@pytest.mark.parametrize("kind", ["FIFO", "character device"])
@pytest.mark.parametrize("source", ["command line", "ini"])
def test_a_special_file_is_refused_at_start_up_and_never_opened(
    pytester: pytest.Pytester,
    run_inner: RunInner,
    watch: type[Watch],
    kind: str,
    source: str,
) -> None:
    pytester.makepyfile(PASSING)
    special = pytester.path / "report.json"
    make_special(kind, special)
    before = os.lstat(special)
    watching = watch(special)
    if source == "ini":
        pytester.makeini("[pytest]\nnozombies_report = report.json\n")
        result = run_inner()
        named = f"nozombies_report (ini in {pytester.path / 'tox.ini'})"
    else:
        result = run_inner("--nozombies-report=report.json")
        named = "--nozombies-report (command line)"
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*pytest-nozombies: invalid value 'report.json' for {named}; "
            "expected a regular file in a folder this run can write to "
            f"(it is a {kind}, and {REFUSED})"
        ]
    )
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert is_kind(kind, special)  # not replaced
    assert os.lstat(special).st_rdev == before.st_rdev
    assert watching.events() == []  # never opened, read or written
    assert scratch_files(pytester.path) == []


@pytest.mark.parametrize(
    ("umask", "existing", "expected"),
    [
        (0o022, None, 0o644),
        (0o077, None, 0o600),
        (0o002, None, 0o664),
        (0o077, 0o644, 0o644),
        (0o022, 0o600, 0o600),
        (0o000, 0o640, 0o640),
    ],
)
def test_a_new_report_has_the_umasks_mode_and_an_existing_one_keeps_its_own(
    pytester: pytest.Pytester,
    run_inner: RunInner,
    umask: int,
    existing: int | None,
    expected: int,
) -> None:
    pytester.makeconftest(f"import os\nos.umask(0o{umask:03o})\n")
    pytester.makepyfile(PASSING)
    report = pytester.path / "report.json"
    if existing is not None:
        report.write_text("old\n")
        report.chmod(existing)
    result = run_inner("--nozombies-report=report.json")
    result.assert_outcomes(passed=1)
    assert stat.S_IMODE(report.stat().st_mode) == expected
    assert load(report)["run"]["exit_status"] == 0


@pytest.mark.parametrize("leaks", [False, True], ids=["passing", "leaking"])
def test_a_folder_removed_during_the_run_is_recreated(
    pytester: pytest.Pytester, run_inner: RunInner, leaks: bool
) -> None:
    pytester.makepyfile(
        test_removes="""
        import shutil

        def test_cleans_up():
            shutil.rmtree("build")
        """
    )
    if leaks:
        pytester.makepyfile(helpers_inner=HELPERS_INNER, test_leaks=LEAKING)
    result = run_inner("--nozombies-report=build/sub/report.json")
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    document = load(pytester.path / "build" / "sub" / "report.json")
    if leaks:
        result.assert_outcomes(passed=2, errors=1)
        assert result.ret == 1
        [leak] = document["leaks"]
        assert leak["command"] == "sh -c 'exit 3'"
        assert leak["nodeid"] == "test_leaks.py::test_leaks"
        assert leak["ended"]["exit_code"] == 3
    else:
        result.assert_outcomes(passed=1)
        assert result.ret == 0
        assert document["leaks"] == []
    assert document["run"]["exit_status"] == result.ret
    assert scratch_files(pytester.path / "build" / "sub") == []


@pytest.mark.parametrize(
    ("breaks", "report", "reason"),
    [
        (
            'os.mkdir("report.json")',
            "report.json",
            f"it is a folder, and {REFUSED}",
        ),
        (
            'shutil.rmtree("build"); open("build", "w").close()',
            "build/report.json",
            "File exists",
        ),
    ],
    ids=["report path made a folder", "folder made a file"],
)
def test_a_write_that_fails_at_the_end_is_one_line_and_a_failed_run(
    pytester: pytest.Pytester,
    run_inner: RunInner,
    breaks: str,
    report: str,
    reason: str,
) -> None:
    pytester.makepyfile(
        f"""
        import os, shutil

        def test_breaks_the_report_path():
            {breaks}
        """
    )
    result = run_inner(f"--nozombies-report={report}")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # every test passed
    message = (
        f"pytest-nozombies: could not write the report to "
        f"{pytester.path / report}: {reason}"
    )
    lines = [line for line in result.outlines if line.strip()]
    # The normal closing line, then the one line, and nothing else.
    assert lines[-1] == message
    assert lines[-2].startswith("=")
    assert " 1 passed in " in lines[-2]
    assert result.outlines.count(message) == 1
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    assert output.count("could not write the report") == 1
    assert scratch_files(pytester.path) == []


# --- report_file itself -----------------------------------------------------------


def test_write_follows_a_chain_of_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "real" / "report.json"
    middle = tmp_path / "middle.json"
    link = tmp_path / "link.json"
    middle.symlink_to(target)  # dangling: the folder does not exist either
    link.symlink_to(middle)
    assert report_file.check(link) is None
    assert target.parent.is_dir()  # made when the run starts
    report_file.write(link, "first\n")
    report_file.write(link, "second\n")
    assert target.read_text() == "second\n"
    assert link.is_symlink()
    assert middle.is_symlink()
    assert os.readlink(link) == str(middle)
    assert scratch_files(target.parent) == []


def _bound_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


@pytest.mark.parametrize("kind", ["FIFO", "character device", "folder", "socket"])
def test_check_and_write_refuse_what_is_not_a_regular_file(
    tmp_path: Path, watch: type[Watch], kind: str
) -> None:
    path = tmp_path / "report.json"
    sock = None
    if kind == "socket":
        sock = _bound_socket(path)
    else:
        make_special(kind, path)
    watching = watch(path)
    try:
        reason = f"it is a {kind}, and {REFUSED}"
        assert report_file.check(path) == reason
        with pytest.raises(OSError, match=reason):
            report_file.write(path, "{}\n")
        # The same through a symlink to it.
        link = tmp_path / "link.json"
        link.symlink_to(path)
        assert report_file.check(link) == reason
        with pytest.raises(OSError, match=reason):
            report_file.write(link, "{}\n")
        assert watching.events() == []  # never opened
        assert scratch_files(tmp_path) == []
    finally:
        if sock is not None:
            sock.close()


def test_an_existing_report_keeps_its_owner_and_mode(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root gives a file away")
    report = tmp_path / "report.json"
    report.write_text("old\n")
    os.chown(report, 12345, 23456)
    report.chmod(0o640)
    report_file.write(report, "new\n")
    st = report.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (12345, 23456, 0o640)
    assert report.read_text() == "new\n"


def test_a_reader_never_sees_a_partial_report(tmp_path: Path) -> None:
    # The write goes to a scratch file renamed over the target: a reader
    # that has the old report open keeps reading it whole.
    report = tmp_path / "report.json"
    report.write_text("old\n")
    with open(report) as reader:
        before = os.fstat(reader.fileno()).st_ino
        report_file.write(report, "new\n")
        assert reader.read() == "old\n"
    assert report.read_text() == "new\n"
    assert report.stat().st_ino != before
    # Readers opening it while it is rewritten again and again see one
    # whole version or the other, never an empty or cut one.
    versions = ["a" * 300_000 + "\n", "b" * 200_000 + "\n"]
    report_file.write(report, versions[0])
    seen: set[str] = set()
    partial: list[int] = []
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            text = report.read_text()
            if text in versions:
                seen.add(text[0])
            else:
                partial.append(len(text))

    reader_thread = threading.Thread(target=read_until_done)
    reader_thread.start()
    try:
        for i in range(300):
            report_file.write(report, versions[i % 2])
    finally:
        done.set()
        reader_thread.join(DEADLINE)
    assert partial == []
    assert seen  # the reader did read
    assert scratch_files(tmp_path) == []


FILE_TOO_LARGE = """
import os, resource, signal, sys
from pathlib import Path
from pytest_nozombies import report_file

report = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
try:
    report_file.write(report, "x" * 5000)
except OSError as exc:
    print(exc.strerror)
"""


def test_a_write_failing_midway_leaves_the_old_report_and_no_scratch_file(
    tmp_path: Path,
) -> None:
    # A real failure after the scratch file was made: a file size limit
    # (in a fresh interpreter, so that the limit is its own).
    report = tmp_path / "report.json"
    report.write_text("old\n")
    out = subprocess.run(
        [sys.executable, "-c", FILE_TOO_LARGE, str(report)],
        capture_output=True,
        text=True,
        check=True,
        timeout=DEADLINE,
    ).stdout
    assert out == "File too large\n"
    assert report.read_text() == "old\n"
    assert scratch_files(tmp_path) == []
