"""pytest hooks: *when* things happen. The modules they call know *how*.

* ``pytest_configure`` resolves the settings and starts recording spawns.
* Each test phase (and each fixture's setup) runs with its owner set, so a
  child spawned there is tied to it.
* After a test's teardown its scope is judged: a leak fails the test in its
  teardown (``fail``) or warns (``warn``); wider fixtures are judged when they
  are finalized; late leaks are kept for the summary and the exit code.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Generator
from typing import Any

import pytest

from . import markers, processes, reporting, settings, spawns
from .spawns import Owner
from .tracker import Leak, Tracker, Verdict

settings_key = pytest.StashKey[settings.Settings]()
tracker_key = pytest.StashKey[Tracker]()
session_leaks_key = pytest.StashKey[list[Leak]]()
baseline_key = pytest.StashKey[frozenset[processes.ChildIdentity]]()
owner_key = pytest.StashKey[Owner]()
leftovers_key = pytest.StashKey[list[spawns.SpawnRecord]]()

_fixture_serials = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", markers.MARKER_LINE)
    resolved = settings.resolve(config)
    config.stash[settings_key] = resolved
    config.stash[session_leaks_key] = []
    if resolved.mode == "off" or not processes.SUPPORTED:
        return
    registry = spawns.SpawnRegistry()
    registry.ignore = resolved.ignore
    spawns.install(registry)
    config.add_cleanup(spawns.uninstall)
    config.stash[tracker_key] = Tracker(registry, resolved.grace)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [reporting.header_line(config.stash[settings_key])]


def pytest_itemcollected(item: pytest.Item) -> None:
    # Every collected item, deselected or not: a typo never hides.
    markers.check_item(item)


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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    tracker = _tracker(item.config)
    if tracker is None:
        return (yield)
    item.stash[baseline_key] = _guarded(item.config, tracker.baseline) or frozenset()
    owner = Owner(item.nodeid, "setup", allowed=markers.is_allowed(item))
    item.stash[owner_key] = owner
    tracker.open_scope(owner.scope_key)
    return (yield from _run_as(tracker, owner))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    tracker = _tracker(item.config)
    owner = item.stash.get(owner_key, None)
    if tracker is None or owner is None:
        return (yield)
    return (yield from _run_as(tracker, _phase(owner, "call")))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    tracker = _tracker(item.config)
    owner = item.stash.get(owner_key, None)
    if tracker is None or owner is None:
        return (yield)
    owner = _phase(owner, "teardown")
    try:
        result = yield from _run_as(tracker, owner)
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


def _phase(owner: Owner, phase: str) -> Owner:
    return Owner(owner.nodeid, phase, allowed=owner.allowed)


def _judge_test(item: pytest.Item, tracker: Tracker, owner: Owner) -> list[Leak]:
    """Judge the test's scope; return its own reportable leaks."""
    baseline = item.stash.get(baseline_key, frozenset())
    verdict = _guarded(
        item.config, tracker.judge_scope, owner.scope_key, owner, baseline
    )
    if verdict is None:
        return []
    session_leaks = item.config.stash[session_leaks_key]
    own = [leak for leak in verdict.leaks if not leak.owner.allowed]
    session_leaks.extend(own)
    session_leaks.extend(leak for leak in verdict.late if not leak.owner.allowed)
    return own


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
        # -W error::pytest_nozombies.ZombieWarning: the same short message as
        # fail mode, not a traceback through this plugin.
        pytest.fail(text, pytrace=False)


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
    return (yield from _run_as(tracker, owner))


def pytest_fixture_post_finalizer(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> None:
    tracker = _tracker(request.config)
    if tracker is None:
        return
    owner = tracker.fixture_owners.pop(id(fixturedef), None)
    if owner is None:
        return
    verdict: Verdict | None = _guarded(
        request.config, tracker.judge_scope, owner.scope_key, owner, None
    )
    if verdict is None:
        return
    leaks = [leak for leak in verdict.leaks if not leak.owner.allowed]
    request.config.stash[session_leaks_key].extend(leaks)
    if leaks and request.config.stash[settings_key].mode == "warn":
        root = request.config.rootpath
        text = "\n".join(reporting.format_leak(leak, root) for leak in leaks)
        warnings.warn(reporting.ZombieWarning(text), stacklevel=1)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # trylast: runs after the runner has torn down the session's fixtures.
    config = session.config
    tracker = _tracker(config)
    if tracker is None:
        return
    resolved = config.stash[settings_key]
    if resolved.running != "ignore":
        leftovers = _guarded(config, tracker.running_leftovers) or []
        config.stash[leftovers_key] = leftovers
    failing = bool(config.stash[session_leaks_key]) and resolved.mode == "fail"
    if resolved.running == "fail" and config.stash.get(leftovers_key, None):
        failing = True
    if failing and session.exitstatus == pytest.ExitCode.OK:
        # Late, fixture and running leftovers were found after their test had
        # reported: only the exit code can still say so.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    leaks = config.stash.get(session_leaks_key, [])
    reporting.write_summary(terminalreporter, leaks, config.rootpath)
    leftovers = config.stash.get(leftovers_key, [])
    reporting.write_leftovers(terminalreporter, leftovers, config.rootpath)


def _guarded(config: pytest.Config, func: Any, *args: Any) -> Any:
    """Run a check; an internal error disables the plugin with one warning."""
    try:
        return func(*args)
    except Exception as exc:  # never let a bug of ours crash the run
        if config.stash.get(tracker_key, None) is not None:
            del config.stash[tracker_key]
            spawns.uninstall()
            warnings.warn(
                pytest.PytestWarning(
                    f"pytest-nozombies: internal error ({exc!r}); zombie checks "
                    "are off for the rest of this run. Please report this."
                ),
                stacklevel=1,
            )
        return None
