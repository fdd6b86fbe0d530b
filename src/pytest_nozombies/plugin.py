"""pytest hooks: *when* things happen. The modules they call know *how*.

* ``pytest_configure`` resolves the settings and starts recording spawns.
* Each test phase (and each fixture's setup) runs with its owner set, so a
  child spawned there is tied to it.
* After a test's teardown its scope is judged: a leak fails the test in its
  teardown (``fail``) or warns (``warn``); wider fixtures are judged when they
  are finalized; late leaks are blamed on the test that spawned them.
* Every leak travels as a record on the teardown report (see results.py), so
  the summary, the JSON report and the exit code see all of them, also under
  pytest-xdist.
"""

from __future__ import annotations

import functools
import itertools
import os
import warnings
from collections.abc import Generator
from typing import Any

import pytest

from . import (
    __version__,
    markers,
    processes,
    reporting,
    results,
    settings,
    spawns,
    subreaper,
)
from .spawns import Owner
from .tracker import NOTHING, Leak, Tracker, Verdict

settings_key = pytest.StashKey[settings.Settings]()
tracker_key = pytest.StashKey[Tracker]()
results_key = pytest.StashKey[results.RunResults]()
baseline_key = pytest.StashKey[frozenset[processes.ChildIdentity]]()
owner_key = pytest.StashKey[Owner]()
session_pid_key = pytest.StashKey[int]()

allowed_key = pytest.StashKey[set[str]]()

_fixture_serials = itertools.count(1)
_NO_ZOMBIES: frozenset[processes.ChildIdentity] = frozenset()


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", markers.MARKER_LINE)
    if config.option.help:
        return  # --help must work even when a setting is wrong
    resolved = settings.resolve(config)
    config.stash[settings_key] = resolved
    config.stash[session_pid_key] = os.getpid()
    run_results = config.stash[results_key] = results.RunResults()
    config.pluginmanager.register(LeakCollector(run_results), "nozombies-results")
    if config.pluginmanager.hasplugin("xdist") and not _is_worker(config):
        from .xdist import XdistControllerHooks

        config.pluginmanager.register(
            XdistControllerHooks(run_results), "nozombies-xdist"
        )
    if resolved.mode == "off" or not processes.SUPPORTED:
        return
    if resolved.subreaper:
        _become_subreaper(config)
    registry = spawns.SpawnRegistry()
    registry.ignore = resolved.ignore
    registry.stack_stop = reporting.runner_folders()
    config.add_cleanup(lambda: spawns.uninstall(registry))
    try:
        spawns.install(registry)
    except Exception as exc:  # e.g. /proc unreadable: degrade, never crash
        spawns.uninstall(registry)
        config.issue_config_time_warning(_disabled_warning(exc), stacklevel=2)
        return
    config.stash[tracker_key] = Tracker(
        registry, resolved.grace, adopt_orphans=resolved.subreaper
    )


def _become_subreaper(config: pytest.Config) -> None:
    # Per process, not inherited: each xdist worker runs this for itself.
    try:
        previous = subreaper.is_subreaper()
        subreaper.set_subreaper(True)
    except OSError as exc:
        raise pytest.UsageError(
            f"pytest-nozombies: --nozombies-subreaper: could not become a child "
            f"subreaper ({exc})"
        ) from None
    config.add_cleanup(lambda: subreaper.set_subreaper(previous))


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_report_header(config: pytest.Config) -> list[str]:
    resolved = config.stash.get(settings_key, None)
    return [] if resolved is None else [reporting.header_line(resolved)]


def pytest_itemcollected(item: pytest.Item) -> None:
    # Every collected item, deselected or not: a typo never hides. Which tests
    # are allowed is decided here once, not at each run of the test.
    if markers.check_item(item):
        item.config.stash.setdefault(allowed_key, set()).add(item.nodeid)


def _tracker(config: pytest.Config) -> Tracker | None:
    tracker = config.stash.get(tracker_key, None)
    # A test that forked and whose child returned into pytest must not judge
    # anything: the session belongs to the original process.
    if tracker is None or not tracker.in_original_process:
        return None
    return tracker


def _run_as(tracker: Tracker, owner: Owner) -> Generator[None, object, object]:
    tracker.push_owner(owner)
    try:
        return (yield)
    finally:
        tracker.pop_owner()


# --- the test protocol ----------------------------------------------------------
# Plain tryfirst hooks mark where each phase starts (a wrapper per phase costs
# a generator per test); only the teardown, after which the test is judged,
# needs a wrapper.


def _runs_in_forked_copy(item: pytest.Item) -> bool:
    """pytest-forked runs this test in a fork of the session, on purpose."""
    config = item.config
    if not hasattr(config.option, "forked"):
        return False  # pytest-forked is not installed
    return bool(config.option.forked) or item.get_closest_marker("forked") is not None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    tracker = _tracker(item.config)
    if tracker is None:
        forked = item.config.stash.get(tracker_key, None)
        if forked is None or not _runs_in_forked_copy(item):
            return
        # pytest-forked's copy runs the whole test and sends its reports back:
        # it judges its own children, and the leaks travel on those reports.
        tracker = forked
        tracker.move_to_this_process()
        if tracker.adopt_orphans:
            # A subreaper flag is not inherited across fork.
            _guarded(item.config, subreaper.set_subreaper, True)
    baseline = _guarded(item.config, tracker.baseline)
    if baseline:  # usually empty: then nothing is stored
        item.stash[baseline_key] = baseline
    allowed = item.nodeid in item.config.stash.get(allowed_key, ())
    owner = Owner(item.nodeid, "setup", allowed=allowed)
    item.stash[owner_key] = owner
    tracker.open_scope(owner.scope_key)
    tracker.enter_phase(owner)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    tracker = _tracker(item.config)
    owner = item.stash.get(owner_key, None)
    if tracker is not None and owner is not None:
        # Built directly: NamedTuple._replace costs several times more.
        tracker.enter_phase(Owner(owner.nodeid, "call", allowed=owner.allowed))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    tracker = _tracker(item.config)
    owner = item.stash.get(owner_key, None)
    if tracker is None or owner is None:
        return (yield)
    owner = Owner(owner.nodeid, "teardown", allowed=owner.allowed)
    tracker.enter_phase(owner)
    try:
        result = yield
    except BaseException:
        # The teardown failed on its own: keep that error as the report and
        # show the leaks beside it rather than in its place.
        leaks = _judge_test(item, tracker, owner)
        if leaks:
            item.add_report_section("teardown", "nozombies", _message(item, leaks))
        raise
    leaks = _judge_test(item, tracker, owner)
    if leaks:
        _deliver(item, leaks)
    return result


def _judge_test(item: pytest.Item, tracker: Tracker, owner: Owner) -> list[Leak]:
    """Judge the test's scope; return its own reportable leaks."""
    baseline = item.stash.get(baseline_key, _NO_ZOMBIES)
    verdict: Verdict | None = _guarded(
        item.config, tracker.judge_scope, owner.scope_key, owner, baseline
    )
    tracker.leave_test()
    # Nothing of this test stays behind: memory is flat however long the run.
    del item.stash[owner_key]
    if baseline_key in item.stash:
        del item.stash[baseline_key]
    if verdict is None or verdict is NOTHING:
        return []
    own = [leak for leak in verdict.leaks if not leak.owner.allowed]
    _keep(item.config, own, failing="test")
    late = [leak for leak in verdict.late if not leak.owner.allowed]
    _keep(item.config, late, failing="run")
    return own


def _keep(config: pytest.Config, leaks: list[Leak], failing: str) -> None:
    """Queue leaks as records for the next report (and so the summary).

    ``failing`` says what a leak fails in fail mode: its ``test`` (which then
    reports the failure itself), or only the ``run``, for leaks found after
    their test had reported (late and fixture leaks).
    """
    if config.stash[settings_key].mode != "fail":
        verdict = "warned"
    else:
        verdict = "failed-test" if failing == "test" else "failed-run"
    config.stash[results_key].pending.extend(
        reporting.leak_record(leak, config.rootpath, verdict) for leak in leaks
    )


def _message(item: pytest.Item, leaks: list[Leak]) -> str:
    config = item.config
    return reporting.format_test_leaks(leaks, config.rootpath, config.get_verbosity())


def _deliver(item: pytest.Item, leaks: list[Leak]) -> None:
    text = _message(item, leaks)
    if item.config.stash[settings_key].mode == "fail":
        pytest.fail(text, pytrace=False)
    path, lineno, _ = item.location
    try:
        warnings.warn_explicit(
            reporting.ZombieWarning(text),
            category=reporting.ZombieWarning,
            filename=str(item.config.rootpath / path),
            lineno=(lineno or 0) + 1,
        )
    except reporting.ZombieWarning:
        escalated = True  # -W error::pytest_nozombies.ZombieWarning
    else:
        escalated = False
    if escalated:
        # The same short message as fail mode: raised outside the except
        # block so the warning is not chained onto it as a second copy.
        pytest.fail(text, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "teardown":
        found = item.config.stash[results_key].take_pending()
        if found:
            # A plain attribute survives xdist's serialization of the report;
            # user_properties become JUnit XML <property> elements.
            setattr(report, results.REPORT_ATTRIBUTE, found)
            report.user_properties.extend(
                (results.PROPERTY_NAME, reporting.leak_line(r)) for r in found
            )
    return report


class LeakCollector:
    """Reads the leak records off every report this process logs.

    In a plain run that is every test's report; on an xdist controller, the
    workers' reports as they arrive.
    """

    def __init__(self, run_results: results.RunResults) -> None:
        self.run_results = run_results

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        found = getattr(report, results.REPORT_ATTRIBUTE, None)
        if found:
            self.run_results.leaks.extend(found)


# --- fixtures wider than a test -----------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, object, object]:
    tracker = _tracker(request.config)
    current = tracker.registry.owner if tracker is not None else None
    if tracker is None or current is None:
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
        tracker.fixture_owners[id(fixturedef)] = owner
    try:
        return (yield from _run_as(tracker, owner))
    finally:
        # Finalizers run last in, first out: this one, added after the
        # fixture's own teardown, runs just before it and gives it its owner.
        fixturedef.addfinalizer(
            functools.partial(_enter_fixture_teardown, tracker, owner, fixturedef)
        )


def _enter_fixture_teardown(
    tracker: Tracker, owner: Owner, fixturedef: pytest.FixtureDef[Any]
) -> None:
    current = tracker.registry.owner
    nodeid = current.nodeid if current is not None else owner.nodeid
    teardown = owner._replace(nodeid=nodeid, phase="teardown")
    tracker.fixture_teardowns[id(fixturedef)] = teardown
    tracker.push_owner(teardown)


def pytest_fixture_post_finalizer(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> None:
    tracker = _tracker(request.config)
    if tracker is None:
        return
    teardown = tracker.fixture_teardowns.pop(id(fixturedef), None)
    if teardown is not None:
        tracker.pop_owner(teardown)
    owner = tracker.fixture_owners.pop(id(fixturedef), None)
    if owner is None:
        return
    verdict: Verdict | None = _guarded(
        request.config, tracker.judge_scope, owner.scope_key, owner, None
    )
    if verdict is None:
        return
    leaks = [leak for leak in verdict.leaks if not leak.owner.allowed]
    _keep(request.config, leaks, failing="run")
    if leaks and request.config.stash[settings_key].mode == "warn":
        root = request.config.rootpath
        text = "\n".join(reporting.format_leak(leak, root) for leak in leaks)
        warnings.warn(reporting.ZombieWarning(text), stacklevel=1)


# --- the end of the session -------------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # trylast: runs after the runner has torn down the session's fixtures.
    config = session.config
    if config.stash.get(settings_key, None) is None:
        return
    resolved = config.stash[settings_key]
    run_results = config.stash[results_key]
    if config.stash.get(session_pid_key, None) != os.getpid():
        return  # a test forked and its child returned into pytest: not ours
    tracker = _tracker(config)
    leftover: list[reporting.Record] = []
    if tracker is not None:
        swept = _guarded(config, tracker.final_sweep) or []
        _keep(config, [leak for leak in swept if not leak.owner.allowed], "run")
    if tracker is not None and resolved.running != "ignore":
        records = _guarded(config, tracker.running_leftovers) or []
        leftover = [reporting.leftover_record(r, config.rootpath) for r in records]
    late = run_results.take_pending()  # found after the last report
    if _is_worker(config):
        output: dict[str, Any] = getattr(config, "workeroutput", {})
        output[results.REPORT_ATTRIBUTE] = late
        output["nozombies_running"] = leftover
        return
    run_results.leaks.extend(late)
    run_results.running.extend(leftover)
    # A leak that failed its test is in that test's outcome already (and a
    # rerun that passes must leave the run green); the others only here.
    failing = any(r["verdict"] == "failed-run" for r in run_results.leaks)
    if resolved.running == "fail" and run_results.running:
        failing = True
    if failing and session.exitstatus == pytest.ExitCode.OK:
        # Late, fixture and running leftovers were found after their test had
        # reported: only the exit code can still say so.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if resolved.report is not None:
        metadata = {
            "plugin_version": __version__,
            "pytest_version": pytest.__version__,
            "settings": resolved.as_json(),
        }
        document = results.report_document(
            run_results, metadata, int(session.exitstatus)
        )
        results.write_json_atomically(resolved.report, document)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    run_results = config.stash.get(results_key, None)
    if run_results is not None:
        reporting.write_summary(
            terminalreporter, run_results.leaks, run_results.running
        )


def _guarded(config: pytest.Config, func: Any, *args: Any) -> Any:
    """Run a check; an internal error disables the plugin with one warning."""
    try:
        return func(*args)
    except Exception as exc:  # never let a bug of ours crash the run
        tracker = config.stash.get(tracker_key, None)
        if tracker is not None:
            del config.stash[tracker_key]
            spawns.uninstall(tracker.registry)
            warnings.warn(_disabled_warning(exc), stacklevel=1)
        return None


def _disabled_warning(exc: Exception) -> pytest.PytestWarning:
    return pytest.PytestWarning(
        f"pytest-nozombies: internal error ({exc!r}); zombie checks are off for "
        "the rest of this run. If this is not a permission problem of this "
        "machine, please report it."
    )
