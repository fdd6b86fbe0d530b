"""Who answers for each child, and what each owner left behind.

The tracker keeps the owner stack: the test phase, fixture or import that
runs now and answers for what is spawned (spawns.py asks it). Each owner
belongs to a *scope*, the span after which its children are judged: a test
(its phases and function-scoped fixtures), a wider fixture (until it is
finalized), or the collection (conftests and test modules being imported).

When a scope ends, each of its children is, in this order:

* gone: reaped by whoever spawned it; forgotten;
* waited for: its ``Popen`` is inside ``wait()``, or another thread is
  blocked in a wait system call that will collect it; left to them;
* a zombie: a leak, unless another thread of the process might still
  collect it, which it is given up to the grace period to do;
* running: given up to the grace period to exit if waiting can change its
  verdict (this process signalled it, it is on a CPU rather than asleep,
  or ``nozombies_running = fail`` fails it if it stays); after that, left
  running, unless it was spawned by another thread that still runs, which
  then answers for it. Children left running fail their owner at once
  under ``nozombies_running = fail``, or are listed at the end of the
  session if they still run then.

A zombie found at any check that belongs to a scope already judged is a
*late* leak of that scope's owner; one nobody recorded is blamed on the test
during which it appears. After a leak is reported it is reaped through the
``Popen`` or ``multiprocessing.Process`` that holds it; a zombie no such
object holds (a raw ``fork``) may still be waited for by the code that made
it, and is left as it is, never blamed again.

No pytest here: owners are plain values.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from . import processes, spawns
from .leaks import Ended, Kind, Leak, OwnerInfo
from .spawns import Spawn

#: pytest's names for the fixtures it makes of xunit and unittest set-ups.
_XUNIT_FIXTURES = {
    "_unittest_setUpClass_fixture_": ("{}.setUpClass", "{}.tearDownClass"),
    "_unittest_setup_method_fixture_": ("{}.setUp", "{}.tearDown"),
    "_xunit_setup_module_fixture_": ("setup_module", "teardown_module"),
    "_xunit_setup_class_fixture_": ("{}.setup_class", "{}.teardown_class"),
    "_xunit_setup_method_fixture_": ("{}.setup_method", "{}.teardown_method"),
    "_xunit_setup_function_fixture_": ("setup_function", "teardown_function"),
}
#: How children nobody here spawned are recorded (orphans, in subreaper mode).
_ORPHANS = ("adopted orphan", "unknown")
#: Longest sleep between two looks while waiting out the grace period.
_MAX_INTERVAL = 0.02
#: Left to pytest-timeout's handler before its deadline.
_TIMEOUT_MARGIN = 0.1


class Scope:
    """Children judged together: a test, a wider fixture, or the collection."""

    __slots__ = ("children", "open")

    def __init__(self) -> None:
        self.children: list[Spawn] = []
        #: Until it is judged: its children are not late leaks of anyone.
        self.open = True


class Owner:
    """What answers for a child spawned now."""

    __slots__ = (
        "allowed",
        "fixture",
        "fixture_scope",
        "nodeid",
        "phase",
        "scope",
        "test_file",
        "test_site",
    )

    def __init__(
        self,
        scope: Scope,
        nodeid: str | None,
        phase: str,
        *,
        fixture: str | None = None,
        fixture_scope: str | None = None,
        allowed: bool = False,
        test_file: str | None = None,
        test_site: str | None = None,
    ) -> None:
        self.scope = scope
        self.nodeid = nodeid
        self.phase = phase
        self.fixture = fixture
        self.fixture_scope = fixture_scope
        #: Marked ``allow_zombies``: what it leaves is cleaned up, not reported.
        self.allowed = allowed
        #: The test's own file, and ``path:line`` of its definition.
        self.test_file = test_file
        self.test_site = test_site

    def with_phase(self, phase: str) -> Owner:
        # Not copy.copy, which goes through __reduce_ex__ on a slotted object:
        # this runs twice per test, and with copy.copy 2,000 trivial tests
        # measured 1.095 against 1.070 (bench_overhead.py, shared-CPU).
        return Owner(
            self.scope,
            self.nodeid,
            phase,
            fixture=self.fixture,
            fixture_scope=self.fixture_scope,
            allowed=self.allowed,
            test_file=self.test_file,
            test_site=self.test_site,
        )

    def describe(self) -> str:
        if self.fixture is None:
            return f"{self.nodeid} ({self.phase})"
        for prefix, (setup, teardown) in _XUNIT_FIXTURES.items():
            if self.fixture.startswith(prefix):
                named = self.fixture.removeprefix(prefix)
                if setup == "setup_module" and _unittest_module(named):
                    setup, teardown = "setUpModule", "tearDownModule"
                name = teardown if self.phase == "teardown" else setup
                return f"{name.format(named)} (of {self.nodeid})"
        return (
            f"fixture {self.fixture!r} ({self.fixture_scope} scope, "
            f"{self.phase} of {self.nodeid})"
        )

    def __repr__(self) -> str:
        return f"<Owner {self.describe()}>"


def _unittest_module(name: str) -> bool:
    """Whether module ``name`` spells its set-up the unittest way."""
    module = sys.modules.get(name)
    return hasattr(module, "setUpModule") or hasattr(module, "tearDownModule")


class Findings:
    """What one check found: leaks of the judged scope, late ones, and
    children it left running."""

    __slots__ = ("late", "leaks", "running")

    def __init__(self) -> None:
        #: Zombies the judged scope left.
        self.leaks: list[Leak] = []
        #: Zombies of scopes judged earlier, found now.
        self.late: list[Leak] = []
        #: Children the judged scope left running.
        self.running: list[Leak] = []

    def __bool__(self) -> bool:
        return bool(self.leaks or self.late or self.running)


Others = Literal["none", "unknown", "all"]


class Tracker:
    """The owner stack of one pytest session, and the judge of its scopes."""

    def __init__(
        self,
        *,
        grace: float,
        root: Path,
        not_user_code: tuple[str, ...],
        stack_stop: tuple[str, ...] = (),
        ignore: tuple[re.Pattern[str], ...] = (),
        adopt_orphans: bool = False,
        running_fails: bool = False,
    ) -> None:
        self.grace = grace
        self.root = root
        self.not_user_code = not_user_code
        self.stack_stop = stack_stop
        self.ignore = ignore
        #: Subreaper mode: children nobody spawned here are adopted orphans.
        self.adopt_orphans = adopt_orphans
        #: nozombies_running = fail: a child left running fails its scope's
        #: owner at once, so every running child is worth the grace period.
        #: Otherwise those still running at the end of the session are listed.
        self.running_fails = running_fails
        self.thread_id = threading.get_ident()
        #: Every child recorded and not known to be reaped, by pid (a pid is
        #: only reused once its child was reaped, so a new record replaces it).
        self._records: dict[int, Spawn] = {}
        #: What answers for a child spawned now (None: nobody, never judged):
        #: the innermost fixture setting up or tearing down, else the base.
        self.owner: Owner | None = None
        #: The collection, or the running test's phase.
        self._base: Owner | None = None
        #: Fixtures setting up or tearing down now, innermost last.
        self._fixtures: list[Owner] = []
        #: The running test's owner in its setup phase.
        self.test: Owner | None = None
        self.collection = Scope()
        #: Process groups this process signalled during the running test.
        self.signalled_groups: set[int] = set()
        #: Processes that are not its children it signalled meanwhile (a
        #: server's worker, for the fixture's assert_no_zombies).
        self.signalled_others: set[int] = set()
        #: pytest-timeout's deadline for the running test (time.monotonic).
        self.deadline: float | None = None
        #: An error inside a spawn wrapper, for the plugin to report.
        self.failure: Exception | None = None
        #: The outer session's owner when this session started inside it (a
        #: pytester run): what it spawns while this one owns nothing is that
        #: owner's, not nobody's.
        self.outer_owner: Owner | None = None
        self._pid = os.getpid()
        #: Zombies that existed when the running test started.
        self._baseline: frozenset[tuple[int, processes.Identity | None]] = frozenset()
        #: The last check found no child at all: the next test needs no baseline.
        self._childless = False

    @property
    def records(self) -> dict[int, Spawn]:
        """Every child recorded and not known to be reaped, by pid."""
        spawns.note_forks()
        return self._records

    # --- recording (spawns.Recorder) -----------------------------------------

    def start_recording(self) -> None:
        """Wrap the spawning functions; children that exist now are nobody's."""
        outer = spawns.install(self)
        self.outer_owner = self.owner = outer.owner if outer is not None else None
        for pid in processes.child_pids():
            identity = processes.identify(pid)
            if identity is not None and pid not in self._records:
                self._records[pid] = Spawn(
                    pid, identity, processes.read_cmdline(pid), "unknown", None
                )

    def stop_recording(self) -> None:
        """Stop recording; an outer session takes over what is still followed."""
        outer = spawns.uninstall(self)
        if isinstance(outer, Tracker) and self.outer_owner is not None:
            outer.take_over(self._records.values(), self.outer_owner)
        self._records = {}

    def take_over(self, records: Iterable[Spawn], owner: Owner) -> None:
        """Children a nested session left behind become ``owner``'s, the
        outer test that ran that session (and named as its)."""
        for spawn in records:
            if spawn.owner is None or spawn.exempt or spawn.judged == "reported":
                continue
            if spawn.owner is not owner:  # spawned by a test of that session
                spawn.via, spawn.owner = spawn.owner, owner
                owner.scope.children.append(spawn)
            spawn.judged = None
            self._records[spawn.pid] = spawn

    def record(self, spawn: Spawn) -> None:
        self._records[spawn.pid] = spawn
        if spawn.owner is not None and spawn.exempt is None:
            spawn.owner.scope.children.append(spawn)

    def knows(self, pid: int, identity: processes.Identity) -> bool:
        known = self._records.get(pid)
        return known is not None and known.identity == identity

    def exemption(self, argv: tuple[str, ...] | None) -> str | None:
        return spawns.exemption(argv, self.ignore)

    def note_signal(self, pid: int) -> None:
        try:
            spawns.note_forks()
            if pid > 0:
                spawn = self._records.get(pid)
                if spawn is not None:
                    spawn.signalled = True
                    self._exempt_now(spawn)
                else:
                    self.signalled_others.add(pid)
            elif pid < -1:
                self.signalled_groups.add(-pid)
            elif pid == 0:
                self.signalled_groups.add(os.getpgrp())
        except RecursionError:
            pass  # the caller's stack is full (nested signal handlers)
        except Exception as exc:  # reported by the plugin, never to the caller
            self.failure = exc

    def internal_error(self, exc: Exception) -> None:
        self.failure = exc

    # --- which process this is -----------------------------------------------

    def in_session_process(self) -> bool:
        """Whether this is the session's process, not a copy a test forked."""
        return os.getpid() == self._pid

    def move_to_this_process(self) -> None:
        """Judge in this forked copy of the session (pytest-forked's): what it
        inherited names the original process's children, none of its own."""
        self._pid = os.getpid()
        spawns.forget_forks()
        self._records.clear()
        self.collection.children.clear()

    # --- owners --------------------------------------------------------------

    def _own(self, base: Owner | None) -> None:
        self._base = base
        self._fixtures.clear()
        self.owner = base or self.outer_owner

    def start_collection(self) -> None:
        """Conftests and test modules are imported now: the collection owns."""
        self._own(Owner(self.collection, None, "collect"))

    def stop_owning(self) -> None:
        """Between owners (pytest's own start-up): what is spawned is nobody's."""
        self._own(None)

    def start_test(
        self,
        nodeid: str,
        *,
        allowed: bool,
        test_file: str | None,
        test_site: str | None,
    ) -> None:
        """A test starts: it owns what is spawned until ``end_test``. Zombies
        that exist now are its baseline and are never blamed on it."""
        self.test = Owner(
            Scope(),
            nodeid,
            "setup",
            allowed=allowed,
            test_file=test_file,
            test_site=test_site,
        )
        self._own(self.test)
        self.signalled_groups.clear()
        self.signalled_others.clear()
        if self._childless:
            # The last check found no child at all and only pytest ran since.
            self._childless = False
            self._baseline = frozenset()
        else:
            self._baseline = frozenset(
                (pid, processes.identify(pid)) for pid, _ in processes.zombie_children()
            )

    def enter_phase(self, phase: str) -> None:
        """The running test's next phase (``call``, ``teardown``) starts."""
        if self.test is not None:
            self._own(self.test.with_phase(phase))

    def enter_fixture(
        self, name: str, fixture_scope: str, *, allowed: bool
    ) -> Owner | None:
        """A fixture starts setting up: it owns what is spawned until
        ``leave_fixture``. A function-scoped one shares its test's scope; a
        wider one has a scope of its own until it is finalized. ``allowed``:
        whether the node of a wider fixture's scope (its class, its module)
        is marked ``allow_zombies``; not the test that asked for it."""
        current = self.owner
        if current is None or current.nodeid is None:
            return None
        function = fixture_scope == "function"
        owner = Owner(
            current.scope if function else Scope(),
            current.nodeid,
            "setup",
            fixture=name,
            fixture_scope=fixture_scope,
            allowed=current.allowed if function else allowed,
            test_file=current.test_file,
            test_site=current.test_site,
        )
        self._fixtures.append(owner)
        self.owner = owner
        return owner

    def enter_fixture_teardown(self, fixture: Owner) -> Owner:
        """A fixture starts tearing down, in the teardown of the test that
        runs now: it owns what is spawned until ``leave_fixture``."""
        owner = fixture.with_phase("teardown")
        if self.owner is not None and self.owner.nodeid is not None:
            owner.nodeid = self.owner.nodeid
        self._fixtures.append(owner)
        self.owner = owner
        return owner

    def leave_fixture(self, owner: Owner) -> None:
        """A fixture's setup or teardown is over (or failed)."""
        if owner in self._fixtures:
            self._fixtures.remove(owner)
        self.owner = self._fixtures[-1] if self._fixtures else self._base
        self.owner = self.owner or self.outer_owner

    # --- checks --------------------------------------------------------------

    def end_collection(self) -> Findings:
        self._own(None)
        return self._end_scope(self.collection, None, found_during="collection")

    def end_test(self) -> Findings:
        """The running test's teardown is over: judge what it left.

        The fast path of nearly every test is one system call: nothing was
        recorded for it (or all of it was reaped) and no child has exited.
        """
        spawns.note_forks()
        test, self.test = self.test, None
        self._own(None)
        if test is None:
            return Findings()
        scope = test.scope
        if not scope.children and not self.adopt_orphans:
            now = processes.children_now()
            if now != "exited":
                self._childless = now == "none"
                scope.open = False
                return Findings()
        current = test.with_phase("teardown")
        # Still the test's teardown: a child that one of its threads spawns
        # while it is judged (during the grace period) is its own, a late leak.
        self._own(current)
        try:
            verdict = self._end_scope(
                scope, current, found_during=test.nodeid, others="all"
            )
        finally:
            self._own(None)
        if self.adopt_orphans:
            verdict.running.extend(self._adopt_orphans(current))
        return verdict

    def end_fixture(self, owner: Owner) -> Findings:
        """A wider fixture was finalized: judge its children."""
        return self._end_scope(owner.scope, None, found_during=owner.nodeid)

    def check_now(self) -> Findings:
        """Judge the running test's zombies now, mid-test (the fixture's
        ``check()``); children still running are not judged."""
        test = self.test
        if test is None:
            return Findings()
        current = self.owner or test
        return self._judge(
            test.scope,
            current,
            found_during=test.nodeid,
            others="unknown",
            running=False,
        )

    def final_sweep(self) -> Findings:
        """At the end of the session: children that died after the last check."""
        return self._judge(
            None,
            None,
            found_during="the end of the session",
            others="all",
            running=False,
        )

    def running_leftovers(self) -> list[Leak]:
        """At the end of the session: children that outlived their scope (or
        were handed to a thread) and still run, each with the owner that
        answered for it when its scope ended."""
        spawns.note_forks()
        found = []
        for spawn in sorted(self._records.values(), key=lambda s: s.order):
            owner = spawn.owner
            if spawn.judged not in ("left running", "handed"):
                continue
            if owner is None or owner.allowed or spawn.status() != "running":
                continue
            if self._exempt_now(spawn):
                continue  # a fork that exec'd an ignored command
            # Not marked "reported": nothing judges after this, except an
            # outer session that takes it over (``take_over``) and answers for
            # it if it dies while that session still runs.
            found.append(self.finding(spawn, "running", None))
        return found

    def _end_scope(
        self,
        scope: Scope,
        current: Owner | None,
        *,
        found_during: str | None,
        others: Others = "none",
    ) -> Findings:
        try:
            return self._judge(
                scope, current, found_during=found_during, others=others, running=True
            )
        finally:
            scope.open = False
            for spawn in scope.children:
                if spawn.judged is None:
                    # Spawned while the scope was judged (by one of its
                    # threads): a late leak if it dies, listed if it runs on.
                    spawn.judged = "handed"
            scope.children = []

    def _judge(
        self,
        scope: Scope | None,
        current: Owner | None,
        *,
        found_during: str | None,
        others: Others,
        running: bool,
    ) -> Findings:
        spawns.note_forks()
        candidates = [
            (s, False) for s in (scope.children if scope else ()) if s.judged is None
        ]
        if others != "none":
            candidates += self._other_zombies(scope, current, late=others == "all")
        candidates = [(s, late) for s, late in candidates if not self._exempt_now(s)]
        if not candidates:
            return Findings()
        zombies, left = self._settle(candidates, running=running)
        verdict = Findings()
        for spawn, late in zombies:
            leak = self._report_zombie(spawn, late, found_during)
            if leak is not None:
                (verdict.late if late else verdict.leaks).append(leak)
        for spawn in left:
            spawn.judged = "left running"
            spawn.note_exec()
            if self.running_fails and spawn.owner and not spawn.owner.allowed:
                spawn.judged = "reported"
                verdict.running.append(self.finding(spawn, "running", None))
        return verdict

    def _exempt_now(self, spawn: Spawn) -> bool:
        """Whether a child is exempt; for a forked child, judged by what it
        exec'd, which can only be read while it runs (so not for a zombie)."""
        if spawn.exempt is None and spawn.argv is None and spawn.exec_argv is None:
            spawn.note_exec()
            spawn.exempt = self.exemption(spawn.exec_argv)
        return spawn.exempt is not None

    def _other_zombies(
        self, scope: Scope | None, current: Owner | None, *, late: bool
    ) -> list[tuple[Spawn, bool]]:
        """Zombies outside ``scope``: late leaks of scopes judged earlier, and
        zombies nobody recorded (blamed on ``current``)."""
        found: list[tuple[Spawn, bool]] = []
        for pid, _ in processes.zombie_children():
            spawn = self._records.get(pid)
            identity = processes.identify(pid)
            if identity is None:
                continue  # collected meanwhile
            if spawn is not None and spawn.identity == identity:
                owner = spawn.owner
                if (
                    not late
                    or owner is None
                    or spawn.exempt
                    or spawn.judged == "reported"
                ):
                    continue
                if owner.scope.open:
                    continue  # its own scope (a fixture still set up) judges it
                found.append((spawn, True))
            elif current is not None and (pid, identity) not in self._baseline:
                unknown = Spawn(pid, identity, None, "unknown", current)
                self._records[pid] = unknown
                found.append((unknown, False))
        return found

    def _settle(
        self, candidates: list[tuple[Spawn, bool]], *, running: bool
    ) -> tuple[list[tuple[Spawn, bool]], list[Spawn]]:
        """Split candidates into zombies nobody collects and children left
        running, waiting up to the grace period where that can change the
        answer. Children gone or waited for are dropped on the way."""
        zombies: list[tuple[Spawn, bool]] = []
        left: list[Spawn] = []
        deadline = self._wait_deadline()
        interval = 0.0005
        pending = candidates
        while True:
            targets: processes.WaitTargets | None = None
            may_wait = time.monotonic() < deadline
            still = []
            for spawn, late in pending:
                # A newer record of its pid means it was reaped and the pid
                # reused (where the identity is a start time, in clock ticks,
                # it cannot tell two children started within one tick apart).
                superseded = self._records.get(spawn.pid) is not spawn
                status = "gone" if superseded else spawn.status()
                if status == "gone":
                    self._forget(spawn)
                    continue
                if targets is None:  # read /proc only once something is not gone
                    targets = processes.wait_targets()
                if spawn.waited_for(targets):
                    spawn.judged = "handed"
                    continue
                allowed = spawn.owner is not None and spawn.owner.allowed
                if status == "zombie":
                    if may_wait and targets.threads and not allowed:
                        still.append((spawn, late))  # another thread may collect it
                    else:
                        zombies.append((spawn, late))
                elif not running:
                    continue
                elif spawn.spawning_thread_alive():
                    spawn.judged = "handed"  # its thread answers for it for now
                elif may_wait and not allowed and self._may_exit_soon(spawn):
                    still.append((spawn, late))
                else:
                    left.append(spawn)
            if not still:
                zombies.sort(key=lambda item: item[0].order)  # not as they died
                left.sort(key=lambda spawn: spawn.order)
                return zombies, left
            time.sleep(interval)
            interval = min(interval * 2, _MAX_INTERVAL)
            pending = still

    def _may_exit_soon(self, spawn: Spawn) -> bool:
        """Whether waiting for a running child can change its verdict."""
        if spawn.signalled or self.running_fails:
            return True
        stat = processes.read_stat(spawn.pid)
        if stat is None:
            return False
        # On a CPU or in an uninterruptible wait: it is doing something, likely
        # finishing (or it has just finished). Asleep or stopped, it will not
        # exit unless asked.
        return stat.group in self.signalled_groups or stat.state in ("R", "D", "Z")

    def _wait_deadline(self) -> float:
        now = time.monotonic()
        deadline = now + self.grace
        if self.deadline is not None:
            deadline = min(deadline, self.deadline - _TIMEOUT_MARGIN)
        return deadline

    def _report_zombie(
        self, spawn: Spawn, late: bool, found_during: str | None
    ) -> Leak | None:
        """Turn a zombie into a leak and clean it up where that harms nobody."""
        stat = processes.read_stat(spawn.pid)
        ended = processes.exit_status(spawn.pid)
        if (
            stat is None
            or not stat.zombie
            or processes.identify(spawn.pid) != spawn.identity
        ):
            return None  # collected between our look and now: all we ask
        spawn.judged = "reported"
        reaped = spawn.reap_through_holder()
        if reaped is None and self.adopt_orphans and spawn.how in _ORPHANS:
            # Most likely an orphan that came back: its parent is gone, and
            # only this process, its subreaper, can collect it.
            reaped = processes.reap(spawn.pid)
        if reaped is not None:
            self._forget(spawn)
        if spawn.owner is None or spawn.owner.allowed:
            return None
        status = ended or reaped
        return self.finding(
            spawn,
            "zombie",
            stat,
            ended=Ended.of(status) if status else None,
            late=late,
            found_during=found_during if late else None,
        )

    def _adopt_orphans(self, current: Owner) -> list[Leak]:
        """Subreaper mode: orphans that came back during this test are its own
        (a double-forked daemon), so their later death is blamed on it."""
        adopted = []
        for pid in processes.child_pids():
            if pid in self._records:
                continue
            stat = processes.read_stat(pid)
            identity = processes.identify(pid)
            if stat is None or stat.zombie or identity is None:
                continue
            spawn = Spawn(pid, identity, None, "adopted orphan", current)
            spawn.exec_argv = spawns.exec_argv(pid)
            spawn.judged = "left running"
            self._records[pid] = spawn
            if self.running_fails and not current.allowed:
                spawn.judged = "reported"
                adopted.append(self.finding(spawn, "running", stat))
        return adopted

    def _forget(self, spawn: Spawn) -> None:
        if self._records.get(spawn.pid) is spawn:
            del self._records[spawn.pid]

    # --- the finding as the report has it ------------------------------------

    def finding(
        self,
        spawn: Spawn,
        kind: Kind,
        stat: processes.Stat | None,
        *,
        ended: Ended | None = None,
        late: bool = False,
        found_during: str | None = None,
    ) -> Leak:
        if stat is None:
            stat = processes.read_stat(spawn.pid)
        frames = spawn.stack()
        user = list(spawns.iter_user_frames(frames, self.not_user_code))
        owner = spawn.owner
        assert owner is not None
        site = f"{self._relative(user[0].filename)}:{user[0].lineno}" if user else None
        return Leak(
            kind=kind,
            pid=spawn.pid,
            argv=spawn.argv or spawn.exec_argv,
            command=self._command(spawn, stat),
            spawned_by=spawn.how,
            owner=self._owner_info(owner, spawn.via, user),
            ended=ended,
            spawn_site=site,
            site_note=self._site_note(spawn, owner) if site is None else None,
            test_site=self._test_site(owner, user, site),
            stack=tuple(
                f"{self._relative(f.filename)}:{f.lineno} in {f.function}"
                for f in reversed(frames)
            ),
            thread=spawn.thread,
            late=late,
            found_during=found_during,
        )

    def _command(self, spawn: Spawn, stat: processes.Stat | None) -> str:
        name = stat.name if stat is not None else None
        if spawn.how == "unknown":
            parent = stat.parent if stat is not None else "?"
            return (
                f"[{name or '?'}] (not spawned through Python, parent pid "
                f"{parent}: command line unknown)"
            )
        return spawn.command(name)

    def _owner_info(
        self, owner: Owner, via: Owner | None, user: list[spawns.Frame]
    ) -> OwnerInfo:
        if owner.phase == "collect":
            module = next((f for f in user if f.function == "<module>"), None)
            if module is None:
                return OwnerInfo(None, "collect", text="collection")
            path = self._relative(module.filename)
            return OwnerInfo(path, "collect", text=f"import of {path}")
        text = owner.describe()
        if via is not None:
            text += f", in a pytest session it ran: {via.describe()}"
        return OwnerInfo(
            owner.nodeid,
            owner.phase,
            owner.fixture,
            owner.fixture_scope or "function",
            text,
        )

    def _site_note(self, spawn: Spawn, owner: Owner) -> str:
        if spawn.how == "unknown":
            return "not spawned through Python"
        if spawn.how == "adopted orphan":
            return "an orphan that came back to this process, spawned out of its sight"
        where = f"; the test is at {owner.test_site}" if owner.test_site else ""
        if spawn.thread is not None:
            return (
                f"spawned from thread {spawn.thread!r}, whose stack holds none "
                f"of your code{where}"
            )
        return f"no frame of your code on the spawning stack{where}"

    def _test_site(
        self, owner: Owner, user: list[spawns.Frame], site: str | None
    ) -> str | None:
        test_file = owner.test_file
        if site is None or test_file is None or user[0].filename == test_file:
            return None
        frame = next((f for f in user if f.filename == test_file), None)
        return f"{self._relative(frame.filename)}:{frame.lineno}" if frame else None

    def _relative(self, filename: str) -> str:
        try:
            return str(Path(filename).relative_to(self.root))
        except ValueError:
            return filename
