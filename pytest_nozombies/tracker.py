"""Decide which zombies are whose, when each owner's scope ends.

The rules (see docs/how-it-works.rst):

* A child spawned through Python belongs to what was running at the time: a
  test phase, or a fixture's setup. It is judged when that owner's scope ends
  (the test, or the wider-scoped fixture), never earlier and never by an
  innocent test that happens to be running when it dies.
* At a scope's end its children that are still running get up to ``grace``
  seconds to finish exiting (``p.kill()`` without ``p.wait()``); a zombie then
  is a leak of that scope. One still running is remembered, and if it dies
  later it is a *late* leak of the same owner.
* A zombie nobody recorded (a C extension's child) is blamed on the test during
  which it appeared, unless it was already a zombie when that test started.

The fast path, when no child has exited, is one ``waitid`` call per check.
No pytest here: owners are plain values.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Hashable
from typing import NamedTuple

from . import processes
from .spawns import Frame, Owner, SpawnRecord, SpawnRegistry

#: One entry per fork, appended in each child as it starts: the session's
#: process, which nearly never forks itself, knows it is itself without a
#: system call per hook. The callback is C code (list.append) and runs only
#: in children that run Python code anyway (os.fork's, a preexec_fn's), never
#: in subprocess's plain fork-and-exec children; it touches no lock, so a child
#: forked from a threaded test cannot hang on it.
_forks: list[None] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=functools.partial(_forks.append, None))


class Leak(NamedTuple):
    """One zombie left behind, with everything the report needs."""

    pid: int
    argv: tuple[str, ...] | None
    name: str
    how: str
    ended: processes.ExitStatus | None
    owner: Owner
    stack: tuple[Frame, ...] = ()
    #: Found after its owner's scope had already been judged.
    late: bool = False
    #: The test that was running when a late leak was found.
    found_during: str | None = None
    #: Parent pid as the OS reported it (ours, or another thread's task).
    parent: int | None = None


class Verdict:
    """What one check found: leaks of the scope that ended, and late ones."""

    __slots__ = ("late", "leaks")

    def __init__(self) -> None:
        self.leaks: list[Leak] = []
        self.late: list[Leak] = []


#: The verdict of the common check that finds nothing; never mutated.
NOTHING = Verdict()
#: The baseline of nearly every test.
NO_ZOMBIES: frozenset[processes.ChildIdentity] = frozenset()


class Tracker:
    """Says who owns what is spawned now, and judges scopes as they end."""

    def __init__(
        self, registry: SpawnRegistry, grace: float, *, adopt_orphans: bool = False
    ) -> None:
        self.registry = registry
        self.grace = grace
        #: Subreaper mode: children we never spawned are adopted orphans.
        self.adopt_orphans = adopt_orphans
        #: The process the session belongs to; a forked copy never judges.
        self.pid = os.getpid()
        self._forks = len(_forks)
        #: Scopes of wider fixtures now set up: their children wait for them.
        self._open_scopes: dict[Hashable, int] = {}
        #: Zombies that existed when the running test started.
        self._baseline = NO_ZOMBIES
        #: The last test ended with no child at all: the next needs no baseline.
        self._childless = False

    # --- ownership ---------------------------------------------------------
    # Called around every test: plain field updates, no allocation.

    def start_test(self, nodeid: str, allowed: bool) -> None:
        """A test starts: it owns what is spawned from now until ``end_test``.

        Zombies that exist now are its baseline and can never be blamed on it
        (nearly always there are none, as one system call tells).
        """
        registry = self.registry
        registry.test = nodeid
        registry.test_allowed = allowed
        registry.phase = "setup"
        if registry.fixture_owners:
            registry.fixture_owners.clear()
        if self._childless:
            # The last test's check found no child at all, and only pytest ran
            # since: spare the system call. (A child started and dead in
            # between outside Python is then blamed on this test, like any
            # child made outside Python that shows up as a zombie during it.)
            self._childless = False
            self._baseline = NO_ZOMBIES
        elif processes.any_child_exited():
            self._baseline = processes.snapshot_zombies()
        else:
            self._baseline = NO_ZOMBIES

    def enter_phase(self, phase: str) -> None:
        """The running test's next phase starts; no fixture owns anything now."""
        self.registry.phase = phase
        if self.registry.fixture_owners:
            self.registry.fixture_owners.clear()

    def push_owner(self, owner: Owner) -> None:
        """A fixture starts setting up or tearing down: it owns what it spawns."""
        self.registry.fixture_owners.append(owner)

    def pop_owner(self, owner: Owner) -> None:
        """Drop ``owner`` from the fixture owners (finished or failed)."""
        owners = self.registry.fixture_owners
        for index in range(len(owners) - 1, -1, -1):
            if owners[index] is owner:
                del owners[index]
                break

    def current_owner(self) -> Owner | None:
        return self.registry.current_owner()

    def open_scope(self, key: Hashable) -> None:
        """A fixture wider than a test was set up: its children wait for it."""
        self._open_scopes[key] = self._open_scopes.get(key, 0) + 1

    def close_scope(self, key: Hashable) -> None:
        count = self._open_scopes.get(key, 0) - 1
        if count <= 0:
            self._open_scopes.pop(key, None)
        else:
            self._open_scopes[key] = count

    def in_session_process(self) -> bool:
        """Whether this is the session's process, not a copy a test forked."""
        return len(_forks) == self._forks or os.getpid() == self.pid

    def move_to_this_process(self) -> None:
        """Judge in this forked copy of the session (pytest-forked's).

        The records it inherited name the original process's children; they
        are none of this copy's, so they are dropped (closing the copy's pidfds).
        """
        self.pid = os.getpid()
        self._forks = len(_forks)
        self.registry.close()

    # --- checks ----------------------------------------------------------------

    def end_test(self) -> Verdict:
        """The running test finished its teardown: judge what it left.

        The fast path of nearly every test is one dict look-up and one system
        call: nothing recorded for it (or every child it spawned reaped) and
        no zombie anywhere. If that call finds no child at all, the next
        ``start_test`` needs none.
        """
        registry = self.registry
        nodeid = registry.test
        if registry.fixture_owners:
            registry.fixture_owners.clear()
        if nodeid is None:
            return NOTHING
        try:
            if not self.adopt_orphans and registry.forget_collected(nodeid):
                # Nothing spawned, or all of it waited for: one system call
                # tells whether any other child is a zombie.
                now = processes.children_now()
                if now != "exited":
                    self._childless = now == "none"
                    return NOTHING
            current = Owner(nodeid, "teardown", allowed=registry.test_allowed)
            return self.judge_scope(nodeid, current, self._baseline)
        finally:
            # Only now: a thread the test left running may spawn while the
            # grace period is waited out, and the test answers for that child.
            registry.test = None

    def judge_scope(
        self,
        key: Hashable,
        current: Owner,
        baseline: frozenset[processes.ChildIdentity] | None,
    ) -> Verdict:
        """Judge the scope ``key`` that just ended while ``current`` ran.

        With a ``baseline`` (a test's end) every other zombie is looked at too:
        late leaks of earlier owners, and unrecorded zombies that appeared since
        the baseline was taken. Without one (a fixture's end) only the scope's
        own children are judged; the test's own check follows shortly.
        """
        records = self.registry.in_scope(key)
        if not records and (baseline is None or not processes.any_child_exited()):
            # The fast path of nearly every test: nothing spawned, no zombie.
            self.close_scope(key)
            if baseline is not None and self.adopt_orphans:
                self._adopt_unrecorded_children(current)
            return NOTHING
        verdict = Verdict()
        handled: set[int] = set()
        running = [r for r in records if self._settle(r, verdict, handled)]
        allowed = all(r.owner is not None and r.owner.allowed for r in running)
        if running and self.grace > 0 and not allowed:
            processes.wait_for_exit((r.pid for r in running), self.grace)
            still = [r for r in running if self._settle(r, verdict, handled)]
        else:
            still = running
        for record in still:
            record.left_running = True
        self.registry.leave_scope(key)
        self.close_scope(key)
        if baseline is not None:
            self._collect_other_zombies(current, baseline, handled, verdict)
            if self.adopt_orphans:
                self._adopt_unrecorded_children(current)
        return verdict

    def _settle(self, record: SpawnRecord, verdict: Verdict, handled: set[int]) -> bool:
        """Turn a record into a leak or drop it; ``True`` if it still runs."""
        status = record.status()
        if status == "running":
            return True
        if status == "zombie":
            handled.add(record.pid)
            assert record.owner is not None
            self._add_leak(record, record.owner, verdict.leaks, late=False)
        else:
            self.registry.discard(record)
        return False

    def _collect_other_zombies(
        self,
        current: Owner,
        baseline: frozenset[processes.ChildIdentity],
        handled: set[int],
        verdict: Verdict,
    ) -> None:
        for zombie in processes.zombie_children():
            pid = zombie.identity.pid
            if pid in handled:
                continue
            record = self.registry.get(zombie.identity)
            if record is not None:
                owner = record.owner
                if owner is None or owner.scope_key in self._open_scopes:
                    # Spawned outside any test, a stdlib helper, or a child of a
                    # fixture that is still set up and may yet wait for it.
                    continue
                self._add_leak(
                    record, owner, verdict.late, late=True, found_during=current.nodeid
                )
            elif zombie.identity not in baseline:
                unknown = SpawnRecord(
                    pid, zombie.identity.start_time, None, "unknown", (), current
                )
                self._add_leak(unknown, current, verdict.leaks, late=False)

    def _adopt_unrecorded_children(self, current: Owner) -> None:
        """Give orphans that came back to us during this test an owner.

        Each one belongs to the test during which it first showed up, so that
        if it dies later it is a late leak of that test, not of whichever test
        runs then. Costs one read of our own children list per test.
        """
        for pid in processes.child_pids():
            if self.registry.by_pid(pid) is not None:
                continue
            state = processes.read_child(pid)
            if state is None or state.zombie:
                continue  # a zombie was judged above already
            record = SpawnRecord(
                pid,
                state.identity.start_time,
                processes.read_cmdline(pid),
                "adopted orphan",
                (),
                current,
            )
            record.left_running = True
            self.registry.add(record)
            self.registry.leave_scope(current.scope_key)

    def _add_leak(
        self,
        record: SpawnRecord,
        owner: Owner,
        into: list[Leak],
        *,
        late: bool,
        found_during: str | None = None,
    ) -> None:
        from . import reaping  # only when there is something to reap

        state = processes.read_child(record.pid)
        # Read how it ended before reaping, where the platform allows that.
        ended = processes.exit_status(record.pid)
        reaped, holder = reaping.reap_zombie(record.pid, record)
        self.registry.discard(record)
        if ended is None and reaped is None:
            # Someone reaped it between our look and now (a SIGCHLD handler, an
            # asyncio child watcher, os.wait() in another thread): its owner is
            # collecting its children, which is all we ask.
            return
        into.append(
            Leak(
                pid=record.pid,
                argv=record.argv,
                name=state.name if state is not None else "?",
                how=reaping.describe_holder(holder) or record.how,
                ended=ended or reaped,
                owner=owner,
                stack=record.stack,
                late=late,
                found_during=found_during,
                parent=state.parent if state is not None else None,
            )
        )

    def final_sweep(self) -> list[Leak]:
        """At the end of the session: children that died after the last check.

        A child left running by a test and dying after the last test's check
        (during session teardown, say) is still that test's late leak.
        """
        found: list[Leak] = []
        if not processes.any_child_exited():
            return found
        for zombie in processes.zombie_children():
            record = self.registry.get(zombie.identity)
            if record is None or record.owner is None:
                continue  # no test to blame, or not ours to judge
            if record.owner.scope_key in self._open_scopes:
                continue
            self._add_leak(
                record,
                record.owner,
                found,
                late=True,
                found_during="the end of the session",
            )
        return found

    def running_leftovers(self) -> list[SpawnRecord]:
        """Children that outlived their owner's scope and still run.

        A test marked ``allow_zombies`` may leave children behind on purpose;
        its children are not listed.
        """
        return [
            r
            for r in self.registry.all_records()
            if r.left_running
            and r.owner is not None
            and not r.owner.allowed
            and r.status() == "running"
        ]
