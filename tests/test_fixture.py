"""The ``nozombies`` fixture (issue 16), end to end with real processes.

``assert_no_zombies(pid)`` is tried on a real prefork server
(tests/prefork_server.py, copied beside the inner tests, which import it)
that reaps its workers or does not; ``assert_no_zombies()`` on the test
process itself; ``check()`` on zombies the test makes mid-test; and
``children()`` on children spawned by a conftest, a fixture and the test.

Inner tests keep every ``Popen`` referenced (``KEEP``): CPython's
``Popen.__del__`` reaps a child that has exited, which would hide a zombie.
Values the outer test needs (pids, what a call returned) are written by the
inner test as JSON files beside it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent, indent
from typing import Any

import pytest

from helpers import DEADLINE, RunInner, line_of

SERVER_SCRIPT = Path(__file__).with_name("prefork_server.py")

#: Imported by the inner test modules.
INNER_HELPERS = """
import json
import os
import pathlib

#: Every Popen made, kept alive so that Popen.__del__ reaps nothing.
KEEP = []


def wait_exited(pid):
    # Blocks until the child has exited and leaves it a zombie.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def is_zombie(pid):
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def record(name, value):
    pathlib.Path(f"{name}.json").write_text(json.dumps(value))
"""

WriteInner = Callable[..., Path]


@pytest.fixture
def inner(pytester: pytest.Pytester) -> WriteInner:
    """Write an inner test module beside the helpers and the prefork server."""
    shutil.copy(SERVER_SCRIPT, pytester.path / SERVER_SCRIPT.name)
    pytester.makepyfile(nozhelp=INNER_HELPERS)

    def write(source: str, name: str = "test_x") -> Path:
        return pytester.makepyfile(**{name: dedent(source)})

    return write


def with_body(head: str, body: str, tail: str = "") -> str:
    """An inner module: ``head`` ends with a ``def``, whose body is ``body``
    then ``tail`` (each written at any indentation)."""
    return dedent(head) + indent(dedent(body), "    ") + indent(dedent(tail), "    ")


def recorded(pytester: pytest.Pytester, name: str) -> Any:
    return json.loads((pytester.path / f"{name}.json").read_text())


def literal(text: str) -> str:
    """``text`` as an fnmatch pattern that matches only itself."""
    return re.sub(r"([*?[])", r"[\1]", text)


# --- assert_no_zombies(pid): a prefork server -------------------------------


@pytest.mark.parametrize("reap", ["signal", "loop"])
def test_assert_no_zombies_passes_when_the_server_reaps_its_killed_worker(
    inner: WriteInner, run_inner: RunInner, reap: str
) -> None:
    inner(
        f"""
        import prefork_server

        def test_server(nozombies):
            server = prefork_server.start(workers=3, reap={reap!r})
            try:
                worker = server.kill_worker(1)
                nozombies.assert_no_zombies(server.pid, timeout={DEADLINE})
                assert server.state_of(worker) is None, "the server reaped it"
                for other in (server.workers[0], server.workers[2]):
                    assert server.state_of(other) not in (None, "Z")
            finally:
                server.stop()
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize(
    ("mode", "killed", "heading"),
    [
        ("fail", 1, "1 zombie child"),
        ("fail", 2, "2 zombie children"),
        ("warn", 1, "1 zombie child"),
        ("off", 1, "1 zombie child"),
    ],
)
def test_assert_no_zombies_fails_listing_the_worker_a_server_never_reaps(
    inner: WriteInner,
    run_inner: RunInner,
    pytester: pytest.Pytester,
    mode: str,
    killed: int,
    heading: str,
) -> None:
    inner(
        f"""
        import prefork_server
        from nozhelp import record

        def test_server(nozombies):
            server = prefork_server.start(workers=3, reap="never")
            try:
                killed = [server.kill_worker(i) for i in range({killed})]
                record("pids", {{
                    "server": server.pid,
                    "killed": killed,
                    "alive": server.workers[{killed}:],
                }})
                nozombies.assert_no_zombies(server.pid, timeout=0.5)
            finally:
                server.stop()
        """
    )
    result = run_inner(f"--nozombies-mode={mode}")
    pids = recorded(pytester, "pids")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_server _*",
            f"process {pids['server']} (*) still has {heading} after 0.5s:",
            *(
                f"  pid {worker}: [[]prefork-worker], killed by SIGKILL (9), "
                "a zombie for at least *s"
                for worker in pids["killed"]
            ),
            "*= short test summary info =*",
        ],
        consecutive=False,
    )
    for worker in pids["alive"]:
        result.stdout.no_fnmatch_line(f"*pid {worker}:*")
    # Nothing of the test's own: the server was stopped and waited for.
    result.stdout.no_fnmatch_line("*nozombies: *zombie leak*")


#: Each kills a child of the process under test and asserts at once, as a
#: user would: the child is not dead yet when the assertion starts, so it
#: must wait for it before it judges. Ten runs each, for the race. Those
#: that must pass get a generous timeout, for a loaded machine.
KILL_THEN_ASSERT = {
    "a server that never reaps": (
        """
        server = prefork_server.start(workers=1, reap="never")
        try:
            os.kill(server.workers[0], signal.SIGKILL)
            nozombies.assert_no_zombies(server.pid)
        finally:
            server.stop()
        """,
        "failed",
    ),
    "a server that reaps": (
        f"""
        server = prefork_server.start(workers=1, reap="signal")
        try:
            os.kill(server.workers[0], signal.SIGKILL)
            nozombies.assert_no_zombies(server.pid, timeout={DEADLINE})
        finally:
            server.stop()
        """,
        "passed",
    ),
    "our child killed and never waited for": (
        """
        child = subprocess.Popen(["sleep", "60"])
        try:
            child.kill()
            nozombies.assert_no_zombies()
        finally:
            child.wait()
        """,
        "failed",
    ),
    "our child killed and waited for": (
        """
        child = subprocess.Popen(["sleep", "60"])
        child.kill()
        child.wait()
        nozombies.assert_no_zombies()
        """,
        "passed",
    ),
}


@pytest.mark.parametrize("case", KILL_THEN_ASSERT)
def test_assert_no_zombies_waits_for_a_child_the_test_just_killed(
    inner: WriteInner, run_inner: RunInner, case: str
) -> None:
    body, outcome = KILL_THEN_ASSERT[case]
    head = """
        import os
        import signal
        import subprocess

        import pytest
        import prefork_server

        @pytest.mark.parametrize("attempt", range(10))
        def test_kill_then_assert(nozombies, attempt):
        """
    inner(with_body(head, body))
    result = run_inner()
    result.assert_outcomes(**{outcome: 10})
    if outcome == "failed":
        result.stdout.fnmatch_lines(
            ["*still has 1 zombie child after 1s:", "  pid *: *killed by SIGKILL (9)*"]
        )


@pytest.mark.parametrize(
    ("reap_after", "timeout", "outcome"),
    [
        # Reaped half a second after the assertion starts: it waits.
        (0.5, DEADLINE, "passed"),
        # Never reaped: it gives up at its timeout and fails.
        (None, 0.3, "failed"),
        (None, 0, "failed"),
    ],
)
def test_assert_no_zombies_honours_its_timeout(
    inner: WriteInner,
    run_inner: RunInner,
    reap_after: float | None,
    timeout: float,
    outcome: str,
) -> None:
    inner(
        f"""
        import threading

        import prefork_server

        def test_server(nozombies):
            server = prefork_server.start(workers=2, reap="on-request")
            timer = None
            try:
                worker = server.kill_worker()
                assert server.state_of(worker) == "Z"
                if {reap_after!r} is not None:
                    timer = threading.Timer({reap_after!r}, server.reap_now)
                    timer.start()
                nozombies.assert_no_zombies(server.pid, timeout={timeout!r})
                assert server.state_of(worker) is None, "reaped before it returned"
            finally:
                if timer is not None:
                    timer.join()
                server.stop()
        """
    )
    result = run_inner()
    result.assert_outcomes(**{outcome: 1})
    if outcome == "failed":
        result.stdout.fnmatch_lines(
            [
                f"process * (*) still has 1 zombie child after {timeout:g}s:",
                "  pid *: [[]prefork-worker], killed by SIGKILL (9), "
                "a zombie for at least *s",
            ]
        )


# --- assert_no_zombies(): the test process ----------------------------------


def test_assert_no_zombies_of_the_test_process(
    inner: WriteInner, run_inner: RunInner, pytester: pytest.Pytester
) -> None:
    inner(
        """
        import os
        import subprocess
        import threading

        import pytest
        from nozhelp import KEEP, is_zombie, record, wait_exited

        @pytest.fixture
        def earlier_zombie():
            child = subprocess.Popen(["sh", "-c", "exit 4"])
            wait_exited(child.pid)
            yield child
            child.wait()

        def test_left_unreaped(nozombies):
            child = subprocess.Popen(["sh", "-c", "exit 3"])
            KEEP.append(child)
            record("left", {"me": os.getpid(), "child": child.pid})
            wait_exited(child.pid)
            try:
                nozombies.assert_no_zombies()
            finally:
                child.wait()

        def test_waited_for(nozombies):
            child = subprocess.Popen(["sh", "-c", "exit 3"])
            child.wait()
            nozombies.assert_no_zombies()

        def test_reaped_by_a_thread_within_the_timeout(nozombies):
            child = subprocess.Popen(["sh", "-c", "exit 3"])
            KEEP.append(child)
            wait_exited(child.pid)
            reaper = threading.Timer(0.5, child.wait)
            reaper.start()
            try:
                nozombies.assert_no_zombies(timeout=30)
                assert child.returncode == 3
            finally:
                reaper.join()

        def test_a_zombie_older_than_the_fixture_does_not_count(
            earlier_zombie, nozombies
        ):
            nozombies.assert_no_zombies()
            assert is_zombie(earlier_zombie.pid)
        """
    )
    result = run_inner()
    left = recorded(pytester, "left")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_left_unreaped _*",
            f"process {left['me']} (*) still has 1 zombie child after 1s:",
            f"  pid {left['child']}: [[]sh], exited with code 3, "
            "a zombie for at least *s",
            "*= short test summary info =*",
            "FAILED test_x.py::test_left_unreaped - Failed: process *",
        ],
        consecutive=False,
    )


# --- check() ----------------------------------------------------------------

CHECK_HEAD = """
    import os
    import subprocess

    from nozhelp import KEEP, record, wait_exited

    def test_mid(nozombies):
    """
CHECK_SPAWNS = {
    "Popen": (
        """
        child = subprocess.Popen(["sh", "-c", "exit 5"])  # SPAWN
        KEEP.append(child)
        pid = child.pid
        """,
        "sh -c 'exit 5'",
        "subprocess.Popen",
    ),
    "os.fork": (
        """
        pid = os.fork()  # SPAWN
        if pid == 0:
            os._exit(5)
        """,
        "[[]python*] (forked by os.fork)",
        "os.fork",
    ),
}


@pytest.mark.parametrize("spawn", CHECK_SPAWNS)
@pytest.mark.parametrize("mode", ["fail", "off"])
def test_check_fails_mid_test_with_the_teardown_message(
    inner: WriteInner,
    run_inner: RunInner,
    pytester: pytest.Pytester,
    mode: str,
    spawn: str,
) -> None:
    code, command, spawned_by = CHECK_SPAWNS[spawn]
    path = inner(
        with_body(
            CHECK_HEAD,
            code,
            """
            record("pid", pid)
            wait_exited(pid)
            nozombies.check()
            record("after", "check() returned")
            """,
        )
    )
    result = run_inner(f"--nozombies-mode={mode}")
    pid = recorded(pytester, "pid")
    assert not (pytester.path / "after.json").exists()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_mid _*",
            "test left 1 zombie child process (exited, never waited for):",
            f"  pid {pid}: {command}",
            "    ended: exited with code 5",
            f"    spawned by: {spawned_by} during test_x.py::test_mid (call)",
            f"    spawned at: test_x.py:{line_of(path)}",
            "Wait for every child you start*",
            "*= nozombies: 1 zombie leak =*",
            f"test_x.py::test_mid (call): pid {pid} *",
            "*= short test summary info =*",
            "FAILED test_x.py::test_mid - Failed: test left 1 zombie child process*",
        ]
    )
    # Reported once: not again at the teardown.
    result.stdout.no_fnmatch_line("*ERROR at teardown*")


@pytest.mark.parametrize("spawn", CHECK_SPAWNS)
def test_check_warns_and_returns_what_it_found(
    inner: WriteInner, run_inner: RunInner, pytester: pytest.Pytester, spawn: str
) -> None:
    code, command, spawned_by = CHECK_SPAWNS[spawn]
    path = inner(
        with_body(
            CHECK_HEAD,
            code,
            """
            wait_exited(pid)
            found = nozombies.check()
            record("found", [
                [leak.pid, leak.kind, leak.ended.text, leak.verdict,
                 leak.owner.text, leak.spawn_site]
                for leak in found
            ])
            assert nozombies.check() == [], "reported once"
            if KEEP:  # cleaned up through its Popen, which tells the truth
                assert KEEP[0].returncode == 5
            else:  # a raw fork's zombie is left for the code that made it
                assert os.waitpid(pid, 0) == (pid, 5 << 8)
            """,
        )
    )
    result = run_inner("--nozombies-mode=warn")
    found = recorded(pytester, "found")
    [[pid, *_]] = found
    assert found == [
        [
            pid,
            "zombie",
            "exited with code 5",
            "warned",
            "test_x.py::test_mid (call)",
            f"test_x.py:{line_of(path)}",
        ]
    ]
    # One warning: the teardown does not report it again.
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*= warnings summary =*",
            "*ZombieWarning: test left 1 zombie child process (exited, never "
            "waited for):",
            f"    pid {pid}: {command}",
            "      ended: exited with code 5",
            f"      spawned by: {spawned_by} during test_x.py::test_mid (call)",
            f"      spawned at: test_x.py:{line_of(path)}",
        ]
    )


def test_check_passes_once_the_test_waited_for_its_children(
    inner: WriteInner, run_inner: RunInner
) -> None:
    inner(
        """
        import subprocess

        from nozhelp import wait_exited

        def test_steps(nozombies):
            subprocess.run(["true"], check=True)
            assert nozombies.check() == []
            step = subprocess.Popen(["sh", "-c", "exit 5"])
            wait_exited(step.pid)
            step.wait()
            assert nozombies.check() == []
            # A child still running is fine mid-test.
            server = subprocess.Popen(["sleep", "60"])
            try:
                assert nozombies.check() == []
            finally:
                server.kill()
                server.wait()
            assert nozombies.check() == []
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*= nozombies: *")


# --- children() -------------------------------------------------------------


def test_children_lists_state_command_spawn_site_and_owner(
    inner: WriteInner, run_inner: RunInner, pytester: pytest.Pytester
) -> None:
    pytester.makeconftest(
        """
        import subprocess

        from nozhelp import record

        SERVICE = []

        def pytest_sessionstart(session):
            # Between owners: nobody's child, never judged.
            SERVICE.append(subprocess.Popen(["sleep", "60"]))
            record("service", SERVICE[0].pid)

        def pytest_sessionfinish(session):
            for child in SERVICE:
                child.kill()
                child.wait()
        """
    )
    path = inner(
        """
        import dataclasses
        import json
        import subprocess
        import time

        import pytest
        from nozhelp import KEEP, record, wait_exited

        def state(pid):
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rpartition(")")[2].split()[0]

        @pytest.fixture
        def feeder():
            child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # FEEDER
            yield child
            child.stdin.close()
            child.wait()

        def test_children(feeder, nozombies):
            server = subprocess.Popen(["sleep", "60"])  # SERVER
            done = subprocess.Popen(["sh", "-c", "exit 2"])  # DONE
            KEEP.append(done)
            wait_exited(done.pid)
            with open("service.json") as f:
                service = json.load(f)
            try:
                for pid in (service, feeder.pid, server.pid):
                    while state(pid) != "S":  # asleep, not starting
                        time.sleep(0.001)
                children = nozombies.children()
                record("children", [dataclasses.asdict(c) for c in children])
                record("zombie", {c.pid: c.zombie for c in children})
                record("pids", {
                    "feeder": feeder.pid, "server": server.pid, "done": done.pid
                })
            finally:
                server.kill()
                server.wait()
                done.wait()
        """
    )
    result = run_inner()
    result.assert_outcomes(passed=1)
    pids = recorded(pytester, "pids")
    service = recorded(pytester, "service")
    test = "test_x.py::test_children"

    def child(
        pid: int, state: str, command: str, marker: str | None, owner: str | None
    ) -> dict[str, Any]:
        site = f"test_x.py:{line_of(path, marker)}" if marker else None
        return {
            "pid": pid,
            "state": state,
            "command": command,
            "spawn_site": site,
            "owner": owner,
        }

    expected = [
        child(service, "S", "sleep 60", None, None),
        child(
            pids["feeder"],
            "S",
            "cat",
            "# FEEDER",
            f"fixture 'feeder' (function scope, setup of {test})",
        ),
        child(pids["server"], "S", "sleep 60", "# SERVER", f"{test} (call)"),
        child(pids["done"], "Z", "sh -c 'exit 2'", "# DONE", f"{test} (call)"),
    ]
    by_pid = sorted(recorded(pytester, "children"), key=lambda c: c["pid"])
    assert by_pid == sorted(expected, key=lambda c: c["pid"])
    assert recorded(pytester, "zombie") == {
        str(service): False,
        str(pids["feeder"]): False,
        str(pids["server"]): False,
        str(pids["done"]): True,
    }


# --- where the fixture exists -----------------------------------------------


@pytest.mark.parametrize("mode", ["fail", "warn", "off"])
def test_the_fixture_works_in_every_mode(
    inner: WriteInner, run_inner: RunInner, mode: str
) -> None:
    inner(
        """
        import subprocess

        def test_all_three(nozombies):
            child = subprocess.Popen(["sleep", "60"])  # SPAWN
            try:
                [listed] = [c for c in nozombies.children() if c.pid == child.pid]
                assert listed.owner == "test_x.py::test_all_three (call)"
                assert nozombies.check() == []
            finally:
                child.kill()
                child.wait()
            nozombies.assert_no_zombies()
        """
    )
    result = run_inner(f"--nozombies-mode={mode}")
    result.assert_outcomes(passed=1)


def test_the_fixture_does_not_exist_without_the_plugin(
    inner: WriteInner, run_inner: RunInner
) -> None:
    inner(
        """
        def test_wants_it(nozombies):
            pass
        """
    )
    result = run_inner("-p", "no:nozombies")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'nozombies' not found*"])


def test_assert_no_zombies_fails_for_a_process_that_does_not_run(
    inner: WriteInner, run_inner: RunInner
) -> None:
    # A mistyped pid, or a server that crashed, must not pass as "reaps its
    # children": there is nothing to check.
    inner(
        """
        import subprocess

        def test_server_that_is_gone(nozombies):
            server = subprocess.Popen(["true"])
            server.wait()
            nozombies.assert_no_zombies(server.pid)
        """
    )
    result = run_inner()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["process * does not run (any more): its zombie children cannot be checked"]
    )


@pytest.mark.parametrize(
    "broken",
    ["end_test", "check_now"],
    ids=["after-an-internal-error", "an-internal-error-inside-check"],
)
def test_fault_injection_the_fixture_judges_nothing_once_the_checks_are_off(
    inner: WriteInner, run_inner: RunInner, broken: str
) -> None:
    # An internal error turns the checks off with one warning: from then on
    # nothing is judged, the fixture's check() included, and its own error
    # never reaches the test that called it.
    inner(
        f"""
        import os, subprocess
        import pytest
        from pytest_nozombies import tracker
        from nozhelp import KEEP

        def test_a_breaks_the_plugin():
            # For the rest of the run (monkeypatch would undo it before the
            # plugin's own check at this test's end).
            def broken(*args, **kwargs):
                raise RuntimeError("injected")
            setattr(tracker.Tracker, "{broken}", broken)

        def test_b_checks_a_leak(nozombies):
            KEEP.append(subprocess.Popen(["sh", "-c", "exit 3"]))
            os.waitid(os.P_PID, KEEP[-1].pid, os.WEXITED | os.WNOWAIT)
            assert nozombies.check() == []
        """
    )
    result = run_inner("-p", "no:randomly")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*internal error (RuntimeError('injected'))*"])
    result.stdout.no_fnmatch_line("*zombie leak*")
