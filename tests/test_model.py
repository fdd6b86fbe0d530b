"""The tracker against a model, on generated histories of real children.

Each history is a run of a few tests; each test spawns ``sleep`` children
(through Popen, through a raw posix_spawn, or through libc where no Python
wrapper sees them) and gives each a fate: waited for by its test, left a
zombie, dying during a later test (reaped then or not) or just before one
starts, dying after the last test, or never dying; some tests are marked
allow_zombies, and children that exist before the tracker starts are
nobody's. The children are real and are killed, with a chosen
signal, exactly when their fate says, before the check that must see them;
so the tracker's findings must equal the model's, finding for finding:
who is blamed, late or not, found during what, how the child ended. After
the last check, every zombie held by a Popen has been reaped through it
with its true returncode, and every other one is still there to be waited
for.

The grace period plays no part here (it is 0: every child is dead or alive
before its check, never dying during one); test_tracker.py covers it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import spawn_untracked, tracking, wait_until_zombie
from pytest_nozombies import processes
from pytest_nozombies.leaks import Leak
from pytest_nozombies.tracker import Tracker

pytestmark = pytest.mark.skipif(not processes.SUPPORTED, reason="POSIX only")

SLEEP = shutil.which("sleep") or "/bin/sleep"
ARGV = ["sleep", "300"]
END = "the end of the session"

FATES = (
    "waited",  # dies during its test, which reaps it: nothing
    "zombie",  # dies during its test, never reaped: its test's leak
    "late",  # dies during a later test, or after the last one: a late leak
    "late_reaped",  # dies during a later test, which reaps it: nothing
    "forever",  # still running at the end: listed as running
)
HOLDERS = ("popen", "raw", "untracked")
SIGNALS = (signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1)


@dataclass(frozen=True)
class Child:
    """A child a test spawns, and what becomes of it."""

    fate: str
    holder: str
    dies_after: int  # for late fates: how many tests later it dies
    between: bool  # for "late": just before that test starts, not during it
    signal: int


@dataclass(frozen=True)
class Scenario:
    """One test of a history: marked allow_zombies or not, and its children."""

    allowed: bool
    children: tuple[Child, ...]


@dataclass(frozen=True)
class Finding:
    kind: str
    pid: int
    nodeid: str | None
    late: bool
    found_during: str | None
    signal: int | None
    command: str


@dataclass
class Live:
    """A child as the history made it."""

    child: Child
    pid: int
    nodeid: str
    allowed: bool
    popen: subprocess.Popen[bytes] | None = None
    dead: bool = False
    reaped: bool = False

    @property
    def command(self) -> str:
        if self.child.holder == "untracked":
            return (
                "[sleep] (not spawned through Python, parent pid "
                f"{os.getpid()}: command line unknown)"
            )
        return "sleep 300"


children_st = st.builds(
    Child,
    fate=st.sampled_from(FATES),
    holder=st.sampled_from(HOLDERS),
    dies_after=st.integers(min_value=1, max_value=3),
    between=st.booleans(),
    signal=st.sampled_from(SIGNALS),
)
scenarios_st = st.builds(
    Scenario,
    # Mostly ordinary tests; an allowed one now and then.
    allowed=st.sampled_from((False, False, False, True)),
    children=st.lists(children_st, max_size=3).map(tuple),
)
history_st = st.lists(scenarios_st, min_size=1, max_size=5)


def spawn(child: Child, nodeid: str, allowed: bool) -> Live:
    if child.holder == "popen":
        popen = subprocess.Popen(ARGV)
        return Live(child, popen.pid, nodeid, allowed, popen)
    if child.holder == "raw":
        pid = os.posix_spawn(SLEEP, ARGV, os.environ)
    else:
        pid = spawn_untracked(ARGV)
    return Live(child, pid, nodeid, allowed)


def die(live: Live, *, reap: bool) -> None:
    os.kill(live.pid, live.child.signal)
    wait_until_zombie(live.pid)
    live.dead = True
    if reap:
        reap_now(live)


def reap_now(live: Live) -> None:
    if live.popen is not None:
        live.popen.wait()
    else:
        os.waitpid(live.pid, 0)
    live.reaped = True


@dataclass
class Model:
    """What the tracker must find as the history unfolds, and what it found."""

    expected: list[Finding] = field(default_factory=list)
    found: list[Finding] = field(default_factory=list)

    def died(
        self, live: Live, during: str, during_allowed: bool, *, between: bool = False
    ) -> None:
        """``live`` died, unreaped, during test ``during`` (or at the end; or
        ``between`` the test before and that one)."""
        if live.child.holder == "untracked":
            # Nothing recorded it: blamed on the test during which it appears,
            # if there is one; a zombie when a test starts is not its own.
            if during != END and not during_allowed and not between:
                self._zombie(live, during, late=False, found_during=None)
        elif not live.allowed:
            own = during == live.nodeid
            self._zombie(
                live, live.nodeid, late=not own, found_during=None if own else during
            )

    def running_at_the_end(self, live: Live) -> None:
        if live.child.holder != "untracked" and not live.allowed:
            self.expected.append(
                Finding(
                    "running", live.pid, live.nodeid, False, None, None, live.command
                )
            )

    def _zombie(
        self, live: Live, blamed: str, *, late: bool, found_during: str | None
    ) -> None:
        self.expected.append(
            Finding(
                "zombie",
                live.pid,
                blamed,
                late,
                found_during,
                live.child.signal,
                live.command,
            )
        )

    def record(self, leaks: list[Leak]) -> None:
        self.found.extend(
            Finding(
                leak.kind,
                leak.pid,
                leak.nodeid,
                leak.late,
                leak.found_during,
                leak.ended.signal if leak.ended else None,
                leak.command,
            )
            for leak in leaks
        )


def run_history(tracker: Tracker, history: list[Scenario], lives: list[Live]) -> Model:
    """Run ``history`` through ``tracker``: what it must find, what it found."""
    model = Model()
    #: test index -> children dying during that test (reaped by it or not)
    deaths: dict[int, list[Live]] = {}
    for index, test in enumerate(history):
        nodeid = f"test_{index}"
        dying = deaths.pop(index, [])
        for live in dying:
            if live.child.fate == "late" and live.child.between:
                die(live, reap=False)
                model.died(live, nodeid, test.allowed, between=True)
        tracker.start_test(nodeid, allowed=test.allowed, test_file=None, test_site=None)
        tracker.enter_phase("call")
        for live in dying:
            if live.dead:
                continue
            reaped = live.child.fate == "late_reaped"
            die(live, reap=reaped)
            if not reaped:
                model.died(live, nodeid, test.allowed)
        for child in test.children:
            live = spawn(child, nodeid, test.allowed)
            lives.append(live)
            if child.fate in ("waited", "zombie"):
                die(live, reap=child.fate == "waited")
                if child.fate == "zombie":
                    model.died(live, nodeid, test.allowed)
            elif child.fate != "forever":
                deaths.setdefault(index + child.dies_after, []).append(live)
        verdict = tracker.end_test()
        model.record(verdict.leaks + verdict.late + verdict.running)
    # After the last test: late children die unreaped; the others live on.
    for live in [live for later in deaths.values() for live in later]:
        if live.child.fate == "late":
            die(live, reap=False)
            model.died(live, END, False)
    model.record(tracker.final_sweep().late)
    model.record(tracker.running_leftovers())
    for live in lives:
        if not live.dead:
            model.running_at_the_end(live)
    return model


def check_reaping(lives: list[Live]) -> None:
    """A dead child that nobody reaped: reaped by the tracker through its
    Popen, with its true returncode, or left in place for its spawner."""
    for live in lives:
        if not live.dead or live.reaped:
            continue
        if live.popen is not None:
            assert live.popen.returncode == -live.child.signal, live
        else:
            assert processes.exit_status(live.pid) == processes.ExitStatus(
                signal=live.child.signal
            ), live


def clean_up(lives: list[Live]) -> None:
    for live in lives:
        if live.reaped or (
            live.popen is not None and live.popen.returncode is not None
        ):
            continue
        if not live.dead:
            os.kill(live.pid, signal.SIGKILL)
        reap_now(live)


def simulate(history: list[Scenario], preexisting: bool) -> Model:
    lives: list[Live] = []
    before: list[int] = []
    try:
        if preexisting:
            # Children that exist when the plugin starts are nobody's.
            before.append(os.posix_spawn(SLEEP, ARGV, os.environ))
            before.append(os.posix_spawn(SLEEP, ["sleep", "0"], os.environ))
            wait_until_zombie(before[-1])
        with tracking() as tracker:
            model = run_history(tracker, history, lives)
        check_reaping(lives)
        return model
    finally:
        clean_up(lives)
        for pid in before:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def by_pid(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.pid, f.kind))


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(history=history_st, preexisting=st.booleans())
def test_the_tracker_matches_the_model(
    history: list[Scenario], preexisting: bool
) -> None:
    model = simulate(history, preexisting)
    assert by_pid(model.found) == by_pid(model.expected)


def child(fate: str, holder: str, dies_after: int = 1, between: bool = False) -> Child:
    return Child(fate, holder, dies_after, between, signal.SIGTERM)


def test_the_model_finds_every_kind_of_finding() -> None:
    # Guard against a vacuous model: a known history gives known findings.
    history = [
        Scenario(
            allowed=False,
            children=(
                child("zombie", "popen"),
                child("late", "raw"),
                child("late", "popen", between=True),
                child("waited", "popen"),
                child("forever", "popen"),
                child("late", "untracked"),
                child("late", "untracked", between=True),  # never blamed
            ),
        ),
        Scenario(
            allowed=False,
            children=(
                child("late", "popen", dies_after=5),
                child("zombie", "untracked"),
                child("late_reaped", "raw"),
            ),
        ),
        Scenario(allowed=True, children=(child("zombie", "popen"),)),
    ]
    model = simulate(history, preexisting=True)
    assert by_pid(model.found) == by_pid(model.expected)
    kinds = sorted((f.kind, f.nodeid, f.late, f.found_during) for f in model.found)
    assert kinds == [
        ("running", "test_0", False, None),
        ("zombie", "test_0", False, None),
        ("zombie", "test_0", True, "test_1"),  # died during test_1
        ("zombie", "test_0", True, "test_1"),  # died before test_1 started
        ("zombie", "test_1", False, None),  # test_0's untracked child
        ("zombie", "test_1", False, None),  # test_1's own untracked child
        ("zombie", "test_1", True, END),
    ]
