"""The ``nozombies`` fixture, for tests of code that manages processes.

It works in every mode: it is asked for explicitly. With the mode ``off``
it follows the spawns of its own test only, from its set-up on, and its
``check()`` fails like the mode ``fail``.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from collections.abc import Iterator

import pytest

from . import processes, reporting, spawns
from .checks import TestChecks, new_tracker, start_test
from .leaks import Leak
from .results import RunResults
from .settings import Settings


@dataclasses.dataclass(frozen=True)
class Child:
    """A child of the test process, as the plugin knows it."""

    pid: int
    #: The kernel's state letter: ``R`` running, ``S`` sleeping, ``Z`` zombie...
    state: str
    command: str
    #: ``path:line`` of the code that spawned it, if it was recorded.
    spawn_site: str | None
    #: The test, fixture or import that spawned it, if it was recorded.
    owner: str | None

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


class NoZombies:
    """What the ``nozombies`` fixture gives a test."""

    def __init__(self, item: pytest.Item, checks: TestChecks) -> None:
        self._item = item
        self._checks = checks
        self._tracker = checks.tracker
        self._baseline = {(pid, s.start_time) for pid, s in processes.zombie_children()}

    def check(self) -> list[Leak]:
        """Judge this test's children now, as its teardown will: a zombie it
        spawned (or one nobody recorded that appeared since it started) and
        nobody waits for fails the test, or warns in the mode ``warn``, with
        the message the teardown would give. Children still running are fine
        here. Returns what it found (reported, and cleaned up where that
        disturbs nobody, like a teardown's leaks)."""
        checks = self._checks
        findings = checks.guarded(self._tracker.check_now)
        if not findings:
            return []
        found = checks.guarded(checks.deliver, findings, self._item, test=True) or []
        checks.fail_or_warn(self._item, found)
        return found

    def assert_no_zombies(self, pid: int | None = None, timeout: float = 1.0) -> None:
        """Fail unless process ``pid`` (default: this test process) has no
        zombie children within ``timeout`` seconds. Its children that this
        test signalled (``os.kill``) are first given that time to die. For
        this process, zombies that existed when the fixture was set up do
        not count."""
        target = os.getpid() if pid is None else pid
        self._exists(target)
        deadline = time.monotonic() + timeout
        first_seen: dict[tuple[int, float], float] = {}
        interval = 0.001
        while True:
            # Dying first: a child that dies between the two looks is then
            # seen as a zombie by the second, never missed by both.
            dying = self._dying(target)
            zombies = self._zombies_of(target)
            now = time.monotonic()
            for child, stat in zombies:
                first_seen.setdefault((child, stat.start_time), now)
            if not zombies and not dying:
                self._exists(target)  # and did not end (its zombies with it)
                return
            if now >= deadline:
                break
            time.sleep(min(interval, deadline - now))
            interval = min(interval * 2, 0.05)
        if not zombies:
            return  # a signalled child that never died is no zombie
        parent = processes.read_stat(target)
        name = f" ({reporting.readable(parent.name)})" if parent else ""
        lines = [
            f"process {target}{name} still has {len(zombies)} zombie "
            f"{'child' if len(zombies) == 1 else 'children'} after {timeout:g}s:"
        ]
        for child, child_stat in zombies:
            seen = now - first_seen[(child, child_stat.start_time)]
            lines.append(
                f"  pid {child}: {self._describe(target, child, child_stat)}, "
                f"a zombie for at least {seen:.1f}s"
            )
        pytest.fail("\n".join(lines), pytrace=False)

    def children(self) -> list[Child]:
        """The test process's children now, with what the plugin recorded."""
        spawns.note_forks()
        found = []
        for pid in processes.child_pids():
            stat = processes.read_stat(pid)
            if stat is None:
                continue
            spawn = self._tracker.records.get(pid)
            same = spawn is not None and spawn.identity == processes.identify(pid)
            if spawn is not None and same and spawn.owner:
                leak = self._tracker.finding(spawn, "running", stat)
                found.append(
                    Child(
                        pid, stat.state, leak.command, leak.spawn_site, leak.owner.text
                    )
                )
            else:
                argv = processes.read_cmdline(pid)
                command = shlex.join(argv) if argv else f"[{stat.name}]"
                found.append(Child(pid, stat.state, command, None, None))
        return found

    @staticmethod
    def _exists(pid: int) -> None:
        stat = processes.read_stat(pid)
        if stat is None or stat.zombie:
            pytest.fail(
                f"process {pid} does not run (any more): its zombie children "
                "cannot be checked",
                pytrace=False,
            )

    def _dying(self, parent: int) -> bool:
        """Whether a child of ``parent`` that this test signalled still runs."""
        tracker = self._tracker
        # Copies: another thread's os.kill or spawn may add to them meanwhile.
        signalled = list(tracker.signalled_others)
        if parent == os.getpid():  # our own children are records, not "others"
            signalled += [
                pid for pid, spawn in list(tracker.records.items()) if spawn.signalled
            ]
        for pid in signalled:
            stat = processes.read_stat(pid)
            if stat is not None and stat.parent == parent and not stat.zombie:
                return True
        return False

    def _zombies_of(self, pid: int) -> list[tuple[int, processes.Stat]]:
        if pid != os.getpid():
            return processes.zombie_children_of(pid)
        return [
            (child, stat)
            for child, stat in processes.zombie_children()
            if (child, stat.start_time) not in self._baseline
        ]

    def _describe(self, parent: int, pid: int, stat: processes.Stat) -> str:
        ended = None
        if parent == os.getpid():
            ended = processes.exit_status(pid)
        elif stat.exit_code is not None:
            ended = processes.ExitStatus.from_wait_status(stat.exit_code)
        how = ended.describe() if ended else "exit status unknown"
        return f"[{reporting.readable(stat.name)}], {how}"


def nozombies_for(
    item: pytest.Item,
    checks: TestChecks | None,
    settings: Settings,
    results: RunResults,
) -> Iterator[NoZombies]:
    """The fixture's value: the session's checks (after an internal error
    they judge nothing), or, with the mode off, checks of this test alone,
    from the fixture's set-up on, judging as the mode ``fail`` does."""
    if checks is not None:
        yield NoZombies(item, checks)
        return
    if not processes.SUPPORTED:
        pytest.skip("no zombies on this platform: nothing to check")
    settings = settings._replace(mode="fail")
    own = TestChecks(
        item.config, new_tracker(item.config, settings), settings, results, set()
    )
    try:
        own.tracker.start_recording()
        start_test(own.tracker, item, allowed=False)
        own.tracker.enter_phase("call")
        yield NoZombies(item, own)
    finally:
        own.tracker.stop_recording()
