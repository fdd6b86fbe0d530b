"""Helpers shared by the test suite: import them with ``from helpers import ...``.

End-to-end tests run an inner pytest in a subprocess (``runpytest_subprocess``)
so that the inner session's children are not the outer session's. The outer
session runs with the plugin on too (the suite is held to what the project
sells): tests that make zombies in the outer process on purpose reap them or
are marked ``allow_zombies``.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_nozombies.tracker import Tracker

#: Upper bound for any wait on a real process; generous for a loaded CI box.
DEADLINE = 30.0

RunInner = Callable[..., pytest.RunResult]


def wait_until_zombie(pid: int, timeout: float = DEADLINE) -> None:
    """Block until child ``pid`` has exited, without reaping it."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        raise TimeoutError(f"child {pid} did not exit within {timeout}s")


def wait_for(predicate: Callable[[], object], timeout: float = DEADLINE) -> None:
    """Poll ``predicate()`` with a deadline (for states with no event to wait on)."""
    deadline = time.monotonic() + timeout
    interval = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)
        interval = min(interval * 2, 0.05)


class Waiter(threading.Thread):
    """A thread blocked in one call until it returns."""

    def __init__(self, call: Callable[[], object]) -> None:
        super().__init__(name="waiter", daemon=True)
        self.call = call
        self.result: object = None

    def run(self) -> None:
        self.result = self.call()

    def join(self, timeout: float | None = DEADLINE) -> None:
        join_thread(self, timeout)


def join_thread(thread: threading.Thread, timeout: float | None = DEADLINE) -> None:
    """``thread.join()``, then wait until the kernel has let the thread go:
    join() returns a moment before, and the thread is still listed in /proc
    (12 of 2,000 joins here), where the plugin counts a process's threads."""
    threading.Thread.join(thread, timeout)
    task = f"/proc/self/task/{thread.native_id}"
    if not thread.is_alive() and os.path.isdir("/proc/self/task"):
        wait_for(lambda: not os.path.exists(task))


def line_of(path: Path, marker: str = "# SPAWN") -> int:
    """The number of the one line of ``path`` that carries ``marker``."""
    found = [
        number
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if marker in line
    ]
    assert len(found) == 1, f"{marker!r} should mark exactly one line: {found}"
    return found[0]


# --- driving the tracker directly (no pytest session) -------------------------

#: The repository's top folder: spawn sites are shown relative to it.
ROOT = Path(__file__).resolve().parent.parent


def not_user_code() -> tuple[str, ...]:
    """Folders whose frames are never a spawn site, as the plugin has them:
    the standard library, installed packages, pytest, pluggy, the plugin."""
    import sysconfig

    import pluggy

    import pytest_nozombies

    paths = sysconfig.get_paths()
    folders = {
        os.path.join(paths[key], "")
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
    }
    for module in (pytest, pluggy, pytest_nozombies):
        folders.add(os.path.join(os.path.dirname(module.__file__ or ""), ""))
    return tuple(sorted(folders))


@contextlib.contextmanager
def tracking(*, grace: float = 0.0, **options: Any) -> Iterator[Tracker]:
    """A tracker recording every spawn until the block ends, set up as the
    plugin sets one up. Inside the outer session it stacks on the session's
    own, which takes over, when the block ends, what it still follows."""
    from pytest_nozombies.tracker import Tracker

    tracker = Tracker(grace=grace, root=ROOT, not_user_code=not_user_code(), **options)
    tracker.start_recording()
    try:
        yield tracker
    finally:
        tracker.stop_recording()


def spawn_untracked(argv: list[str]) -> int:
    """Start ``argv`` through libc's own ``posix_spawnp``, as a C extension
    would: a real child that no Python wrapper sees."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    args = [arg.encode() for arg in argv]
    env = [f"{key}={value}".encode() for key, value in os.environ.items()]
    c_argv = (ctypes.c_char_p * (len(args) + 1))(*args, None)
    c_env = (ctypes.c_char_p * (len(env) + 1))(*env, None)
    pid = ctypes.c_int()
    error = libc.posix_spawnp(ctypes.byref(pid), c_argv[0], None, None, c_argv, c_env)
    if error:
        raise OSError(error, os.strerror(error))
    return pid.value


def read_report(path: os.PathLike[str] | str) -> dict[str, Any]:
    """The JSON report at ``path``, checked as strictly as a CI dashboard
    would: the file decodes as UTF-8, holds no escaped lone surrogate (which
    strict JSON parsers reject), and matches ``report.schema.json``."""
    import json
    import re
    from importlib import resources

    import jsonschema

    with open(path, "rb") as f:
        text = f.read().decode("utf-8")  # strict: raises on a byte that is not
    # A \uD800-\uDFFF escape, not preceded by an escaped backslash.
    surrogate = re.search(r"(?<!\\)(?:\\\\)*\\u[dD][89a-fA-F][0-9a-fA-F]{2}", text)
    assert surrogate is None, f"surrogate escape in the report: {surrogate[0]!r}"
    document: dict[str, Any] = json.loads(text)
    schema = json.loads(
        resources.files("pytest_nozombies").joinpath("report.schema.json").read_text()
    )
    jsonschema.Draft202012Validator(schema).validate(document)
    return document


def private_pid_namespace() -> list[str] | None:
    """A command prefix that runs a command as pid 1 of a new pid namespace,
    with its own /proc, where it may write ``ns_last_pid``; None if this
    machine allows none."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    namespace = ["--pid", "--fork", "--mount-proc", "--kill-child"]
    as_root = [unshare, *namespace]
    # Not root: root of a new user namespace that owns the pid namespace.
    mapped = [unshare, "--user", "--map-root-user", *namespace]
    for prefix in (as_root, mapped):
        try:
            probe = subprocess.run(
                [*prefix, "sh", "-c", "echo 1000 > /proc/sys/kernel/ns_last_pid"],
                capture_output=True,
                timeout=DEADLINE,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return None
