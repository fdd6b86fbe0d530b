"""The checks around every test and fixture.

``TestChecks`` is registered by ``pytest_configure`` only when there is
something to check (mode fail or warn, on a platform with zombies), so a run
with ``--nozombies-mode=off`` pays nothing per test. The hooks hold their
state on the object rather than in stashes: they run thousands of times per
run, and the fast path of each is a few attribute reads and one ``waitid``.

* Each test phase runs with the test as owner; each fixture's setup and
  teardown with the fixture as owner (see tracker.py for what owning means).
* After a test's teardown its scope is judged: a leak fails the test in its
  teardown (``fail``) or warns (``warn``); wider fixtures are judged when they
  are finalized; late leaks are blamed on the test that spawned them.
* Every leak becomes a record that rides on the next teardown report (see
  results.py).
"""

from __future__ import annotations

import functools
import itertools
import os
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from . import results, spawns
from .settings import Settings
from .spawns import Owner
from .tracker import NOTHING, Leak, Tracker, Verdict

if TYPE_CHECKING:
    from .reporting import Record

T = TypeVar("T")

_fixture_serials = itertools.count(1)


class TestChecks:
    """Hooks around every test and fixture of one session."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(
        self,
        config: pytest.Config,
        tracker: Tracker,
        settings: Settings,
        run_results: results.RunResults,
        allowed: set[str],
        *,
        count_carried: bool,
    ) -> None:
        self.config = config
        self.tracker = tracker
        self.settings = settings
        self.run_results = run_results
        #: Node ids of the tests marked ``allow_zombies`` (filled at collection).
        self.allowed = allowed
        self.carrier = results.ReportCarrier(run_results, count=count_carried)
        self.enabled = True
        #: The test whose setup hook ran and whose teardown is not judged yet.
        self._test_item: pytest.Item | None = None
        #: Owners of wider fixtures now set up, and of fixture teardowns now
        #: running, by ``id(fixturedef)``.
        self._wide_fixtures: dict[int, Owner] = {}
        self._fixture_teardowns: dict[int, Owner] = {}

    # --- the test protocol ----------------------------------------------------
    # Two hooks per test: a plain tryfirst one where the test starts (a wrapper
    # costs a generator per call), and a wrapper around its teardown, after
    # which it is judged. The call phase needs none (see ``pytest_phase``).

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        tracker = self.tracker
        if not tracker.in_session_process() and not self._move_to_forked_copy(item):
            # A test forked and its child returned into pytest: the session
            # belongs to the original process, which judges everything.
            return
        nodeid = item.nodeid
        try:
            tracker.start_test(nodeid, nodeid in self.allowed)
        except Exception as exc:  # never let a bug of ours crash the run
            self.disable(exc)
            return
        self._test_item = item

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item
    ) -> Generator[None, object, object]:
        if item is not self._test_item or not self.tracker.in_session_process():
            # Our setup hook did not run for it (an earlier setup hook failed),
            # or a test forked and its child returned into pytest.
            return (yield)
        self.tracker.enter_phase("teardown")
        try:
            result = yield
        except BaseException:
            # The teardown failed on its own: keep that error as the report and
            # show the leaks beside it rather than in its place.
            leaks = self._judge_test()
            if leaks:
                item.add_report_section("teardown", "nozombies", self._message(leaks))
            raise
        leaks = self._judge_test()
        if leaks:
            self._deliver(item, leaks)
        return result

    def _judge_test(self) -> list[Leak]:
        """Judge the test that just ended; return its own reportable leaks."""
        self._test_item = None
        try:
            verdict = self.tracker.end_test()
        except Exception as exc:  # never let a bug of ours crash the run
            self.disable(exc)
            verdict = NOTHING
        if verdict is NOTHING:
            return []
        own = [leak for leak in verdict.leaks if not leak.owner.allowed]
        self.keep(own, failing="test")
        self.keep([leak for leak in verdict.late if not leak.owner.allowed], "run")
        return own

    def keep(self, leaks: list[Leak], failing: str) -> None:
        """Queue leaks as records for the next report (and so the summary).

        ``failing`` says what a leak fails in fail mode: its ``test`` (which then
        reports the failure itself), or only the ``run``, for leaks found after
        their test had reported (late and fixture leaks).
        """
        if not leaks:
            return
        from .reporting import leak_record  # only ever needed for a leak

        if self.settings.mode != "fail":
            verdict = "warned"
        else:
            verdict = "failed-test" if failing == "test" else "failed-run"
        root = self.config.rootpath
        self.run_results.pending.extend(
            leak_record(leak, root, verdict) for leak in leaks
        )
        # Found during a teardown (a test's, or a fixture's finalization):
        # the records ride on that teardown's report.
        self.carrier.attach_to_next_teardown(self.config)

    def _message(self, leaks: list[Leak]) -> str:
        from .reporting import format_test_leaks

        config = self.config
        return format_test_leaks(leaks, config.rootpath, config.get_verbosity())

    def _deliver(self, item: pytest.Item, leaks: list[Leak]) -> None:
        from .reporting import ZombieWarning

        text = self._message(leaks)
        if self.settings.mode == "fail":
            pytest.fail(text, pytrace=False)
        path, lineno, _ = item.location
        try:
            warnings.warn_explicit(
                ZombieWarning(text),
                category=ZombieWarning,
                filename=str(self.config.rootpath / path),
                lineno=(lineno or 0) + 1,
            )
        except ZombieWarning:
            escalated = True  # -W error::pytest_nozombies.ZombieWarning
        else:
            escalated = False
        if escalated:
            # The same short message as fail mode: raised outside the except
            # block so the warning is not chained onto it as a second copy.
            pytest.fail(text, pytrace=False)

    # --- pytest-forked ----------------------------------------------------------

    def _move_to_forked_copy(self, item: pytest.Item) -> bool:
        """Whether this process is pytest-forked's copy running ``item``.

        That copy runs the whole test and sends its reports back: it judges
        its own children, and the leaks travel on those reports.
        """
        option = self.config.option
        if not hasattr(option, "forked"):
            return False  # pytest-forked is not installed
        if not option.forked and item.get_closest_marker("forked") is None:
            return False
        self.tracker.move_to_this_process()
        if self.tracker.adopt_orphans:
            from . import subreaper

            # A subreaper flag is not inherited across fork.
            self.guarded(subreaper.set_subreaper, True)
        return True

    # --- fixtures ----------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        tracker = self.tracker
        current = tracker.current_owner()
        if current is None or not tracker.in_session_process():
            return (yield)
        owner = Owner(
            current.nodeid,
            current.phase,
            fixture=fixturedef.argname,
            scope=fixturedef.scope,
            serial=next(_fixture_serials),
            allowed=current.allowed,
        )
        if owner.scope != "function":
            tracker.open_scope(owner.scope_key)
            self._wide_fixtures[id(fixturedef)] = owner
        tracker.push_owner(owner)
        try:
            return (yield)
        finally:
            tracker.pop_owner(owner)
            # Finalizers run last in, first out: this one, added after the
            # fixture's own teardown, runs just before it and gives it its owner.
            fixturedef.addfinalizer(
                functools.partial(self._enter_fixture_teardown, owner, fixturedef)
            )

    def _enter_fixture_teardown(
        self, owner: Owner, fixturedef: pytest.FixtureDef[Any]
    ) -> None:
        current = self.tracker.current_owner()
        nodeid = current.nodeid if current is not None else owner.nodeid
        teardown = owner._replace(nodeid=nodeid, phase="teardown")
        self._fixture_teardowns[id(fixturedef)] = teardown
        self.tracker.push_owner(teardown)

    def pytest_fixture_post_finalizer(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> None:
        tracker = self.tracker
        teardown = self._fixture_teardowns.pop(id(fixturedef), None)
        if teardown is not None:
            tracker.pop_owner(teardown)
        owner = self._wide_fixtures.pop(id(fixturedef), None)
        if owner is None or not tracker.in_session_process():
            return
        verdict: Verdict | None = self.guarded(
            tracker.judge_scope, owner.scope_key, owner, None
        )
        if verdict is None:
            return
        leaks = [leak for leak in verdict.leaks if not leak.owner.allowed]
        self.keep(leaks, failing="run")
        if leaks and self.settings.mode == "warn":
            from .reporting import ZombieWarning, format_leak

            root = self.config.rootpath
            text = "\n".join(format_leak(leak, root) for leak in leaks)
            warnings.warn(ZombieWarning(text), stacklevel=1)

    # --- the end of the session -------------------------------------------------

    def finish_session(self) -> list[Record]:
        """Judge what died after the last check; return the running leftovers."""
        tracker = self.tracker
        swept = self.guarded(tracker.final_sweep) or []
        self.keep([leak for leak in swept if not leak.owner.allowed], "run")
        if self.settings.running == "ignore" or not self.enabled:
            return []
        records = self.guarded(tracker.running_leftovers) or []
        if not records:
            return []
        from .reporting import leftover_record

        root = self.config.rootpath
        return [leftover_record(r, root) for r in records]

    # --- faults -----------------------------------------------------------------

    def guarded(self, func: Callable[..., T], *args: Any) -> T | None:
        """Run a check; an internal error turns the checks off with one warning."""
        if not self.enabled:
            return None
        try:
            return func(*args)
        except Exception as exc:  # never let a bug of ours crash the run
            self.disable(exc)
            return None

    def disable(self, exc: Exception) -> None:
        self.enabled = False
        self.config.pluginmanager.unregister(self)
        spawns.uninstall(self.tracker.registry)
        warnings.warn(disabled_warning(exc), stacklevel=1)


def pytest_phase(nodeid: str) -> str | None:
    """The phase test ``nodeid`` is in, as pytest itself announces it.

    pytest sets ``PYTEST_CURRENT_TEST`` to ``"<nodeid> (<phase>)"`` as each
    phase starts. It is read only when a child is spawned, so that no hook
    has to run at the start of every test's call phase. ``None`` if the
    variable is gone or names another test (a test removed it; an in-process
    pytester run set and removed its own): the owner's phase is then guessed
    (see ``SpawnRegistry.spawn_owner``).
    """
    value = os.environ.get("PYTEST_CURRENT_TEST", "")
    prefix = len(nodeid) + 2
    if not value.startswith(nodeid) or value[len(nodeid) : prefix] != " (":
        return None
    phase = value[prefix:-1] if value.endswith(")") else ""
    return phase if phase in ("setup", "call", "teardown") else None


def disabled_warning(exc: Exception) -> pytest.PytestWarning:
    return pytest.PytestWarning(
        f"pytest-nozombies: internal error ({exc!r}); zombie checks are off for "
        "the rest of this run. If this is not a permission problem of this "
        "machine, please report it."
    )
