"""The checks around every test and fixture, and what each finding becomes.

``TestChecks`` is registered only where tests run and there is something to
check (mode ``fail`` or ``warn`` on a platform with zombies), so a run with
``--nozombies-mode=off`` pays nothing per test.

* A test owns what is spawned from its setup to its teardown, each phase in
  turn; a fixture owns what it spawns while it sets up and tears down.
* When its teardown is over the test is judged; a wider fixture is judged
  when it is finalized (see tracker.py).
* Each finding gets its verdict, passes the ``pytest_nozombies_leak`` hook,
  and rides on the report of the phase during which it was found. The
  test's own findings fail it (mode ``fail``) or warn.

An internal error turns the checks off with one warning; it never reaches
pytest as an error of a test or of the run: every hook runs the plugin's
work through ``guarded``.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import functools
import os
import sysconfig
import warnings
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

import _pytest
import pluggy
import pytest

from . import markers, reporting
from .leaks import FAILED_RUN, FAILED_TEST, WARNED, Leak
from .results import RunResults
from .settings import Settings
from .tracker import Findings, Owner, Tracker

T = TypeVar("T")


class TestChecks:
    """The hooks around every test and fixture of one session."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(
        self,
        config: pytest.Config,
        tracker: Tracker,
        settings: Settings,
        results: RunResults,
        allowed: set[str],
    ) -> None:
        self.config = config
        self.tracker = tracker
        self.settings = settings
        self.results = results
        #: Node ids of the tests marked ``allow_zombies`` (filled at collection).
        self.allowed = allowed
        self.enabled = True
        #: The test whose setup hook ran and which is not judged yet.
        self._item: pytest.Item | None = None
        self._items_by_nodeid: dict[str, pytest.Item] = {}
        #: Fixtures now tearing down: their owner, and that of their teardown.
        self._fixture_teardowns: dict[int, tuple[Owner, Owner]] = {}

    # --- a test, phase by phase ----------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.guarded(self._start_test, item)

    def _start_test(self, item: pytest.Item) -> None:
        tracker = self.tracker
        if not tracker.in_session_process() and not self._move_to_forked_copy(item):
            return  # a test forked and its child returned into pytest: not ours
        start_test(tracker, item, allowed=item.nodeid in self.allowed)
        self._item = item

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if item is self._item and call.when != "teardown":
            # The next phase starts now; if setup did not pass, call is skipped.
            passed = call.when == "setup" and report.passed
            self.guarded(self.tracker.enter_phase, "call" if passed else "teardown")
        if self.results.pending:
            self.guarded(self.results.attach_pending, report, item)
        return report

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item
    ) -> Generator[None, object, object]:
        # tryfirst: outermost, so the test is judged after every other
        # plugin's teardown, fixtures included.
        if item is not self._item:
            return (yield)
        try:
            result = yield
        except BaseException:
            # The teardown failed by itself: keep its error as the report and
            # show the findings beside it.
            own = self._judge_test(item)
            message = self.guarded(self._message, own) if own else None
            if message:
                item.add_report_section("teardown", "nozombies", message)
            raise
        own = self._judge_test(item)
        if own:
            # pytest.fail's exception is no Exception: it passes the guard.
            self.guarded(self.fail_or_warn, item, own)
        return result

    def _judge_test(self, item: pytest.Item) -> list[Leak]:
        """Judge the test that just ended; return what it answers for itself."""
        try:
            verdict = self.guarded(self.tracker.end_test)
            own = (
                self.guarded(self.deliver, verdict, item, test=True) if verdict else []
            )
            return own or []
        finally:
            self._item = None

    def fail_or_warn(self, item: pytest.Item, own: Sequence[Leak]) -> None:
        """Fail the test for its findings, or warn (mode ``warn``)."""
        if not own:
            return
        failing = [leak for leak in own if leak.verdict == FAILED_TEST]
        warned = [leak for leak in own if leak.verdict == WARNED]
        if warned:
            path, lineno, _ = item.location
            try:
                warnings.warn_explicit(
                    reporting.ZombieWarning(self._message(warned)),
                    category=reporting.ZombieWarning,
                    filename=str(self.config.rootpath / path),
                    lineno=(lineno or 0) + 1,
                )
            except reporting.ZombieWarning:
                # -W error::pytest_nozombies.ZombieWarning: the same short
                # message as fail mode (raised outside the except block, so
                # the warning is not chained onto it as a second copy).
                for leak in warned:
                    leak.verdict = FAILED_TEST
                failing = list(own)
        if failing:
            pytest.fail(self._message(failing), pytrace=False)

    # --- findings ------------------------------------------------------------

    def deliver(
        self, verdict: Findings, item: pytest.Item | None, *, test: bool
    ) -> list[Leak]:
        """Give each finding its verdict, let the hook keep it from being
        reported, and queue it; return those of the judged scope itself (not
        the late ones), with ``test`` if that scope is ``item``'s."""
        fail = self.settings.mode == "fail"
        own_zombie = FAILED_TEST if test and fail else (FAILED_RUN if fail else WARNED)
        running = self.settings.running
        own_running = FAILED_TEST if test else FAILED_RUN
        own: list[Leak] = []
        for leak in verdict.leaks:
            leak.verdict = own_zombie
            own.append(leak)
        for leak in verdict.running:
            if running != "ignore":
                leak.verdict = own_running if running == "fail" else WARNED
                own.append(leak)
        for leak in verdict.late:
            leak.verdict = FAILED_RUN if fail else WARNED
        hook_errors: list[Exception] = []
        reported = [
            leak
            for leak in own + verdict.late
            if self._hook_keeps(leak, item, hook_errors)
        ]
        # During a test, findings ride on the report of its phase; otherwise
        # (collection, the end of the session) no report follows.
        queue = self.results.pending if self._item is not None else self.results.outside
        queue.extend(reported)
        # Once queued: a warning made an error (-W error) then fails the test
        # and the findings are still reported.
        for exc in hook_errors:
            self._warn(
                pytest.PytestWarning(
                    f"pytest-nozombies: pytest_nozombies_leak raised {exc!r}"
                )
            )
        return [leak for leak in own if leak in reported]

    def _hook_keeps(
        self, leak: Leak, item: pytest.Item | None, errors: list[Exception]
    ) -> bool:
        blamed = (
            item
            if leak.nodeid == getattr(item, "nodeid", None)
            else self._item_of(leak.nodeid)
        )
        try:
            answers = self.config.hook.pytest_nozombies_leak(leak=leak, item=blamed)
        except Exception as exc:  # the user's hook: say so, keep the finding
            errors.append(exc)
            return True
        return False not in answers

    def _item_of(self, nodeid: str | None) -> pytest.Item | None:
        return self._items_by_nodeid.get(nodeid) if nodeid is not None else None

    def set_items(self, items: Sequence[pytest.Item]) -> None:
        """The collected tests, to hand the hook the item a finding blames."""
        self._items_by_nodeid = {item.nodeid: item for item in items}

    def _message(self, leaks: Sequence[Leak]) -> str:
        return reporting.format_message(leaks, self.config.get_verbosity())

    # --- pytest-forked -------------------------------------------------------

    def _move_to_forked_copy(self, item: pytest.Item) -> bool:
        """Whether this process is pytest-forked's copy running ``item``: that
        copy runs the whole test and sends its reports back, so it judges its
        own children and its findings travel on those reports."""
        option = self.config.option
        if not hasattr(option, "forked"):
            return False  # pytest-forked is not installed
        if not option.forked and item.get_closest_marker("forked") is None:
            return False
        self.tracker.move_to_this_process()
        if self.tracker.adopt_orphans:
            from . import subreaper

            self.guarded(subreaper.set_subreaper, True)  # not inherited by fork
        return True

    # --- fixtures ------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        tracker = self.tracker
        if not tracker.in_session_process():
            return (yield)
        owner = self.guarded(
            tracker.enter_fixture,
            fixturedef.argname,
            fixturedef.scope,
            allowed=markers.allows(request.node),
        )
        if owner is None:
            return (yield)
        try:
            return (yield)
        finally:
            self.guarded(tracker.leave_fixture, owner)
            if self.enabled:
                # Finalizers run last in, first out: this one, added after the
                # fixture's own, runs just before its teardown.
                fixturedef.addfinalizer(
                    functools.partial(
                        self.guarded, self._enter_fixture_teardown, owner, fixturedef
                    )
                )

    def _enter_fixture_teardown(
        self, owner: Owner, fixturedef: pytest.FixtureDef[Any]
    ) -> None:
        teardown = self.tracker.enter_fixture_teardown(owner)
        self._fixture_teardowns[id(fixturedef)] = (owner, teardown)

    def pytest_fixture_post_finalizer(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> None:
        entry = self._fixture_teardowns.pop(id(fixturedef), None)
        if entry is None:
            return
        owner, teardown = entry
        found = self.guarded(self._end_fixture_teardown, owner, teardown)
        if found:
            self._warn_for_run(found, f"fixture {owner.fixture!r}")

    def _end_fixture_teardown(self, owner: Owner, teardown: Owner) -> list[Leak]:
        tracker = self.tracker
        tracker.leave_fixture(teardown)
        if owner.fixture_scope == "function" or not tracker.in_session_process():
            return []  # judged with its test
        verdict = tracker.end_fixture(owner)
        if not verdict:
            return []
        return self.deliver(verdict, self._item_of(owner.nodeid), test=False)

    # --- the end of collection and of the session ----------------------------

    def finish_collection(self) -> None:
        verdict = self.guarded(self.tracker.end_collection)
        if verdict:
            found = self.guarded(self.deliver, verdict, None, test=False)
            if found:
                self._warn_for_run(found, "importing the tests")

    def _warn_for_run(self, found: Sequence[Leak], subject: str) -> None:
        """Warn mode: one ZombieWarning for leaks no test answers for. Under
        ``-W error::pytest_nozombies.ZombieWarning`` they fail the run."""
        warned = [
            leak for leak in found if leak.verdict == WARNED and leak.kind == "zombie"
        ]
        text = self.guarded(reporting.format_message, warned, subject=subject)
        if not warned or text is None:
            return
        # Attributed to the line that spawned the first one, not to the plugin.
        path, _, line = (warned[0].spawn_site or "").rpartition(":")
        try:
            warnings.warn_explicit(
                reporting.ZombieWarning(text),
                category=reporting.ZombieWarning,
                filename=str(self.config.rootpath / path) if path else __file__,
                lineno=int(line) if line.isdigit() else 0,
            )
        except reporting.ZombieWarning:
            for leak in warned:
                leak.verdict = FAILED_RUN

    def finish_session(self) -> None:
        """Judge what died after the last check, and what threads still hold."""
        tracker = self.tracker
        verdict = self.guarded(tracker.final_sweep) or Findings()
        if self.settings.running != "ignore":
            verdict.running.extend(self.guarded(tracker.running_leftovers) or [])
        if verdict:
            self.guarded(self.deliver, verdict, None, test=False)
        self.results.outside.extend(self.results.pending)  # found after the last report
        self.results.pending.clear()

    # --- faults --------------------------------------------------------------

    def guarded(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Run a check; an internal error turns the checks off with one warning."""
        if not self.enabled:
            return None
        if self.tracker.failure is not None:  # raised inside a spawn wrapper
            self.disable(self.tracker.failure)
            return None
        if self.results.failure is not None:  # the reporting warned already
            self.disable(self.results.failure, warn=False)
            return None
        try:
            return func(*args, **kwargs)
        except Warning as warning:  # one of ours, that -W error made an error
            if self._item is not None:
                raise  # it fails the test, as any warning made an error does
            self.results.errors.append(str(warning))
            return None
        except Exception as exc:  # never let a bug of ours crash the run
            self.disable(exc)
            return None

    def _warn(self, warning: Warning) -> None:
        """Warn; made an error outside a test, where it would end pytest with
        an INTERNALERROR, it becomes an error of the run instead."""
        if self._item is not None:
            warnings.warn(warning, stacklevel=2)
        else:
            self.results.warn_outside_tests(warning)

    def disable(self, exc: Exception, *, warn: bool = True) -> None:
        self.enabled = False
        self.results.pending.clear()  # the running test is not judged
        self.config.pluginmanager.unregister(self)
        self.tracker.stop_recording()
        self._item = None
        if warn:
            self.results.warn_outside_tests(reporting.disabled_warning(exc))


def start_test(tracker: Tracker, item: pytest.Item, *, allowed: bool) -> None:
    """``item`` starts: it owns what is spawned until it is judged."""
    path, line, _ = item.location
    site = f"{path}:{line + 1}" if line is not None else path
    tracker.start_test(
        item.nodeid, allowed=allowed, test_file=str(item.path), test_site=site
    )


def new_tracker(config: pytest.Config, settings: Settings) -> Tracker:
    return Tracker(
        grace=settings.grace,
        root=config.rootpath,
        not_user_code=_not_user_code(),
        stack_stop=_runner_folders(),
        ignore=settings.ignore,
        adopt_orphans=settings.subreaper,
        running_fails=settings.running == "fail",
    )


def _folders(modules: Sequence[object]) -> tuple[str, ...]:
    return tuple(
        os.path.join(os.path.dirname(getattr(m, "__file__", "") or ""), "")
        for m in modules
    )


def _runner_folders() -> tuple[str, ...]:
    """pytest's and pluggy's folders: a spawn's stack need not go past them."""
    return _folders((_pytest, pluggy))


def _not_user_code() -> tuple[str, ...]:
    """Folders whose frames are never "the line that spawned it"."""
    paths = sysconfig.get_paths()
    folders = {
        os.path.join(paths[k], "")
        for k in ("stdlib", "platstdlib", "purelib", "platlib")
    }
    # pytest, pluggy and this plugin live in site-packages already, except
    # in a development install.
    folders.update(_folders((_pytest, pytest, pluggy, reporting)))
    return tuple(sorted(folders))
