"""Property-based tests of the snapshot, diff and ownership logic (issue 5).

The tracker's decisions are checked against a simple model on thousands of
generated histories. The kernel is replaced by a small simulation so that
histories with pid reuse, deaths during later tests and concurrent reaping
can be generated at will; this is the one place where processes are
simulated, on purpose: real processes are what every other test uses.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_nozombies import processes, reaping, tracker
from pytest_nozombies.spawns import Owner, SpawnRecord, SpawnRegistry

# --- a simulated kernel: children of one process -------------------------------


@dataclass
class Proc:
    start: float
    state: str = "running"  # running | zombie
    code: int = 0


@dataclass
class FakeKernel:
    procs: dict[int, Proc] = field(default_factory=dict)
    clock: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    #: pids that finish exiting during the grace period, when waited for.
    exit_in_grace: set[int] = field(default_factory=set)

    def spawn(self, pid_pool: range) -> int:
        # The lowest free pid, so that pids are reused as soon as possible.
        pid = next(p for p in pid_pool if p not in self.procs)
        self.procs[pid] = Proc(start=float(next(self.clock)))
        return pid

    def exit(self, pid: int, code: int = 0) -> None:
        self.procs[pid].state = "zombie"
        self.procs[pid].code = code

    def reap(self, pid: int) -> processes.ExitStatus | None:
        proc = self.procs.get(pid)
        if proc is None or proc.state != "zombie":
            return None
        del self.procs[pid]
        return processes.ExitStatus(code=proc.code)

    # The functions of pytest_nozombies.processes the tracker uses:

    def identify(self, pid: int) -> processes.ChildIdentity | None:
        proc = self.procs.get(pid)
        return None if proc is None else processes.ChildIdentity(pid, proc.start)

    def read_child(self, pid: int) -> processes.ChildState | None:
        proc = self.procs.get(pid)
        if proc is None:
            return None
        identity = processes.ChildIdentity(pid, proc.start)
        return processes.ChildState(identity, proc.state == "zombie", "sim", 1)

    def child_status(self, pid: int) -> processes.ChildStatus:
        proc = self.procs.get(pid)
        if proc is None:
            return "gone"
        return "zombie" if proc.state == "zombie" else "running"

    def zombie_children(self) -> list[processes.ChildState]:
        states = (self.read_child(pid) for pid in sorted(self.procs))
        return [s for s in states if s is not None and s.zombie]

    def children_now(self) -> str:
        if not self.procs:
            return "none"
        return "exited" if self.any_child_exited() else "running"

    def any_child_exited(self) -> bool:
        return any(proc.state == "zombie" for proc in self.procs.values())

    def snapshot_zombies(self) -> frozenset[processes.ChildIdentity]:
        return frozenset(s.identity for s in self.zombie_children())

    def exit_status(self, pid: int) -> processes.ExitStatus | None:
        proc = self.procs.get(pid)
        if proc is None or proc.state != "zombie":
            return None
        return processes.ExitStatus(code=proc.code)

    def wait_for_exit(self, pids: object, timeout: float) -> None:
        for pid in list(self.exit_in_grace):
            if pid in self.procs:
                self.exit(pid)
        self.exit_in_grace.clear()


_SIMULATED = (
    "children_now",
    "any_child_exited",
    "identify",
    "read_child",
    "child_status",
    "zombie_children",
    "snapshot_zombies",
    "exit_status",
    "wait_for_exit",
)


def use_kernel(mp: pytest.MonkeyPatch, fake: FakeKernel) -> None:
    for name in _SIMULATED:
        mp.setattr(processes, name, getattr(fake, name))
    mp.setattr(reaping, "reap_zombie", lambda pid, record: (fake.reap(pid), None))


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    fake = FakeKernel()
    use_kernel(monkeypatch, fake)
    return fake


# --- histories ---------------------------------------------------------------------

FATES = (
    "waited",  # exits and is reaped by its test: no leak
    "zombie",  # exits during its test, never reaped: its test's leak
    "grace",  # still exiting when its test ends: its test's leak
    "late",  # dies during a later test: a late leak of its test
    "late_reaped",  # dies later and is reaped by whoever then runs: no leak
    "forever",  # still running at the end: no leak
)


@dataclass(frozen=True)
class Child:
    fate: str
    tracked: bool
    dies_after: int  # for late fates: how many tests later it dies


children_st = st.builds(
    Child,
    fate=st.sampled_from(FATES),
    tracked=st.booleans(),
    dies_after=st.integers(min_value=1, max_value=3),
)
history_st = st.lists(st.lists(children_st, max_size=5), min_size=1, max_size=6)


@dataclass(frozen=True)
class Found:
    pid: int
    owner: str
    late: bool
    found_during: str | None


def simulate(
    kernel: FakeKernel, history: list[list[Child]], preexisting_zombie: bool
) -> tuple[list[Found], list[Found]]:
    """Run ``history`` through the tracker; return (found, expected)."""
    pool = range(100, 112)  # small: pids are reused all the time
    registry = SpawnRegistry()
    judge = tracker.Tracker(registry, grace=1.0)
    found: list[Found] = []
    expected: list[Found] = []
    #: test index -> children (pid, owner nodeid, child) dying during it
    deaths: dict[int, list[tuple[int, str, Child]]] = {}
    if preexisting_zombie:
        kernel.exit(kernel.spawn(range(1, 2)))  # never anyone's leak

    for index, children in enumerate(history):
        nodeid = f"test_{index}"
        judge.start_test(nodeid, allowed=False)
        judge.enter_phase("call")
        owner = judge.current_owner()
        assert owner == Owner(nodeid, "call")
        # Children of earlier tests dying now. The last test to use a pid must
        # be looked up before any new spawn can reuse it.
        dying = deaths.pop(index, [])
        for pid, spawner, child in dying:
            kernel.exit(pid)
            if child.fate == "late_reaped":
                kernel.reap(pid)
            elif child.tracked:
                expected.append(Found(pid, spawner, True, nodeid))
            else:
                # Unrecorded: blamed on the test during which it appeared.
                expected.append(Found(pid, nodeid, False, None))
        for child in children:
            if len(kernel.procs) >= len(pool):
                continue  # pool exhausted: this child never starts
            pid = kernel.spawn(pool)
            if child.tracked:
                # Identified by start time, as where there are no pidfds.
                start = kernel.procs[pid].start
                registry.add(SpawnRecord(pid, start, ("sim",), "sim", (), owner))
            if child.fate == "waited":
                kernel.exit(pid)
                kernel.reap(pid)
            elif child.fate == "zombie":
                kernel.exit(pid)
                expected.append(Found(pid, nodeid, False, None))
            elif child.fate == "grace":
                if child.tracked:
                    kernel.exit_in_grace.add(pid)
                    expected.append(Found(pid, nodeid, False, None))
                else:
                    # Only recorded children are waited for: an unrecorded
                    # one is seen when it next shows up as a zombie.
                    deaths.setdefault(index + 1, []).append(
                        (pid, nodeid, Child("late", False, 1))
                    )
            elif child.fate in ("late", "late_reaped"):
                deaths.setdefault(index + child.dies_after, []).append(
                    (pid, nodeid, child)
                )
        verdict = judge.end_test()
        found.extend(
            Found(leak.pid, leak.owner.nodeid, leak.late, leak.found_during)
            for leak in verdict.leaks + verdict.late
        )
    # Deaths scheduled after the last test never happen: no leak, as expected.
    return found, expected


@settings(max_examples=300, deadline=None)
@given(history=history_st, preexisting_zombie=st.booleans())
def test_tracker_matches_the_model(
    history: list[list[Child]], preexisting_zombie: bool
) -> None:
    # Hypothesis runs many examples per test call: a fresh kernel for each.
    with pytest.MonkeyPatch.context() as mp:
        kernel = FakeKernel()
        use_kernel(mp, kernel)
        found, expected = simulate(kernel, history, preexisting_zombie)
    key = lambda f: (f.owner, f.pid, f.late)  # noqa: E731
    assert sorted(found, key=key) == sorted(expected, key=key)


def test_the_model_finds_something(kernel: FakeKernel) -> None:
    # Guard against a vacuous model: a known history gives known leaks.
    history = [
        [Child("zombie", True, 1), Child("late", True, 1), Child("waited", True, 1)],
        [Child("grace", True, 1), Child("zombie", False, 1)],
    ]
    found, expected = simulate(kernel, history, preexisting_zombie=True)
    assert sorted(found, key=repr) == sorted(expected, key=repr)
    assert {(f.owner, f.late) for f in found} == {
        ("test_0", False),
        ("test_0", True),
        ("test_1", False),
    }
    assert len(found) == 4


# --- the registry against a dict ---------------------------------------------------

ops_st = st.lists(
    st.tuples(
        st.sampled_from(["add", "discard", "leave"]),
        st.integers(min_value=1, max_value=4),  # pid
        st.integers(min_value=0, max_value=2),  # owner (test) index
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops_st)
def test_registry_matches_a_dict(ops: list[tuple[str, int, int]]) -> None:
    registry = SpawnRegistry()
    by_pid: dict[int, SpawnRecord] = {}
    #: The model of the grouping: a scope that ended forgets its members; a
    #: scope key used again (a rerun of the same test) starts a new group.
    groups: dict[object, set[int]] = {}
    clock = itertools.count(1)
    for op, pid, owner_index in ops:
        owner = Owner(f"t{owner_index}", "call")
        if op == "add":
            start = float(next(clock))
            record = SpawnRecord(pid, start, None, "sim", (), owner)
            registry.add(record)
            if pid in by_pid:
                for members in groups.values():
                    members.discard(pid)
            by_pid[pid] = record
            groups.setdefault(owner.scope_key, set()).add(pid)
        elif op == "discard" and pid in by_pid:
            registry.discard(by_pid.pop(pid))
            for members in groups.values():
                members.discard(pid)
        elif op == "leave":
            registry.leave_scope(owner.scope_key)
            groups.pop(owner.scope_key, None)
        for p, record in by_pid.items():
            assert registry.by_pid(p) is record
            assert record.start_time is not None
            identity = processes.ChildIdentity(p, record.start_time)
            assert registry.get(identity) is record
            stale = processes.ChildIdentity(p, record.start_time + 0.5)
            assert registry.get(stale) is None
        assert {r.pid for r in registry.all_records()} == set(by_pid)
        for index in range(3):
            key = Owner(f"t{index}", "call").scope_key
            in_scope = {r.pid for r in registry.in_scope(key)}
            assert in_scope == groups.get(key, set())
