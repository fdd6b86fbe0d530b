"""pytest-nozombies: when each part runs. How is in the other modules.

* ``pytest_load_initial_conftests``, before the first conftest is imported:
  the settings are resolved (settings.py) and spawns are recorded from then
  on (spawns.py, tracker.py); the collection owns what is spawned while
  conftests and test modules are imported.
* ``pytest_configure``: the checks around every test and fixture (checks.py)
  where tests run, the collecting of findings (results.py) where they are
  reported, and the hooks for pytest-xdist and pytest-timeout.
* Collection's end: what the imports left is judged.
* The session's end: a last look, the exit status, the closing line and the
  summary (reporting.py), the JSON report (report_file.py).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import pytest

from . import hookspecs, markers, processes, reporting, settings
from .integrations import TimeoutDeadline, XdistController
from .leaks import FAILED_RUN
from .results import Collector, RunResults

if TYPE_CHECKING:
    # Imported when the checks start: --nozombies-mode=off loads neither the
    # spawn recorder nor the tracker (and registers no at-fork callback).
    from .checks import TestChecks
    from .fixture import NoZombies
    from .tracker import Tracker

settings_key = pytest.StashKey[settings.Settings]()
tracker_key: pytest.StashKey[Tracker] = pytest.StashKey()
checks_key: pytest.StashKey[TestChecks] = pytest.StashKey()
results_key = pytest.StashKey[RunResults]()
allowed_key = pytest.StashKey[markers.AllowedTests]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config,
) -> Generator[None, None, None]:
    _start(early_config)
    try:
        return (yield)
    finally:
        # The conftests are imported: until collection starts, pytest and the
        # plugins configure themselves, and a child started now (a service
        # for the whole session, in pytest_configure) is nobody's.
        tracker = early_config.stash.get(tracker_key, None)
        if tracker is not None:
            tracker.stop_owning()


def _start(config: pytest.Config) -> None:
    """Resolve the settings and start recording spawns (once)."""
    namespace = config.known_args_namespace
    if settings_key in config.stash or namespace.help or namespace.version:
        return  # --help and --version must work even with a bad setting
    resolved = config.stash[settings_key] = settings.resolve(config)
    if resolved.mode == "off" or not processes.SUPPORTED:
        return  # nothing runs per test; the JSON report is still written
    from . import fixture  # noqa: F401  # loaded before any test, as checks are
    from .checks import new_tracker

    tracker = new_tracker(config, resolved)
    try:
        tracker.start_recording()
    except Exception as exc:  # e.g. /proc unreadable: degrade, never crash
        tracker.stop_recording()
        config.issue_config_time_warning(reporting.disabled_warning(exc), stacklevel=2)
        return
    config.stash[tracker_key] = tracker
    config.add_cleanup(tracker.stop_recording)
    tracker.start_collection()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", markers.MARKER_LINE)
    config.stash[allowed_key] = markers.AllowedTests()
    if config.option.help:
        return
    _start(config)  # in case the plugin was registered after the conftests
    resolved = config.stash[settings_key]
    results = config.stash[results_key] = RunResults()
    controller = _is_xdist_controller(config)
    if not _is_worker(config):
        config.pluginmanager.register(
            Collector(config, resolved, results), "nozombies-results"
        )
    if controller:
        config.pluginmanager.register(XdistController(results), "nozombies-xdist")
    tracker = config.stash.get(tracker_key, None)
    if tracker is None:
        return
    from .checks import TestChecks

    checks = config.stash[checks_key] = TestChecks(
        config, tracker, resolved, results, config.stash[allowed_key].nodeids
    )
    if controller:
        return  # it runs no test: only what its conftests spawned is judged
    config.pluginmanager.register(checks, "nozombies-checks")
    if config.pluginmanager.hasplugin("timeout"):
        config.pluginmanager.register(TimeoutDeadline(tracker), "nozombies-timeout")
    if resolved.subreaper:
        _become_subreaper(config)


def _become_subreaper(config: pytest.Config) -> None:
    from . import subreaper

    # Per process, not inherited: each xdist worker sets its own.
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


def _is_xdist_controller(config: pytest.Config) -> bool:
    """Whether this process hands the tests out to xdist workers (``-n``)."""
    if not config.pluginmanager.hasplugin("xdist") or _is_worker(config):
        return False
    return bool(config.getoption("dist", "no") != "no")


def pytest_report_header(config: pytest.Config) -> list[str]:
    resolved = config.stash.get(settings_key, None)
    if resolved is None:
        return []
    if not processes.SUPPORTED:
        return ["nozombies: nothing to check on this platform (it has no zombies)"]
    if resolved.mode == "off":
        return ["nozombies: mode=off, nothing is checked"]
    source = "/proc" if processes.USES_PROC else "psutil"
    return [f"nozombies: {resolved.describe()}, children read from {source}"]


# --- collection -------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # Between the initial conftests and collection only pytest runs (and,
    # under xdist, the controller starts its workers): nobody's children.
    tracker = session.config.stash.get(tracker_key, None)
    if tracker is not None:
        tracker.stop_owning()


# Not tryfirst: inside pytest's own wrapper that captures collection's
# warnings, so warn mode's ZombieWarning for an import's leak lands there.
@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Generator[None, object, object]:
    config = session.config
    tracker = config.stash.get(tracker_key, None)
    if tracker is not None:
        tracker.start_collection()
    try:
        return (yield)
    finally:
        checks = config.stash.get(checks_key, None)
        if checks is not None and checks.enabled:
            checks.guarded(checks.set_items, session.items)
            checks.finish_collection()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    # Every collected item in every mode, before -k, -m or --lf deselect any:
    # a typo never hides. Which tests are allowed is decided here, once.
    check = config.stash[allowed_key].check
    for item in items:
        check(item)


# --- the fixture ------------------------------------------------------------


@pytest.fixture
def nozombies(request: pytest.FixtureRequest) -> Iterator[NoZombies]:
    """Check this test's children mid-test (``check()``), assert that a
    process under test reaps its children (``assert_no_zombies(pid)``), and
    list the children (``children()``). See the configuration reference."""
    from .fixture import nozombies_for

    config = request.config
    yield from nozombies_for(
        request.node,
        config.stash.get(checks_key, None),
        config.stash[settings_key],
        config.stash[results_key],
    )


# --- the end of the session -------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # trylast: after the runner has torn down the session's fixtures.
    config = session.config
    results = config.stash.get(results_key, None)
    if results is None:
        return
    tracker = config.stash.get(tracker_key, None)
    if tracker is not None and not tracker.in_session_process():
        return  # a test forked and its child returned into pytest: not ours
    checks = config.stash.get(checks_key, None)
    if checks is not None:
        checks.finish_session()
    if _is_worker(config):
        output = getattr(config, "workeroutput", {})
        found = results.guarded(lambda: [leak.to_json() for leak in results.outside])
        output[RunResults.WORKER_OUTPUT] = found or []
        output[RunResults.WORKER_ERRORS] = results.errors
        return
    results.guarded(_conclude, session, results)


def _conclude(session: pytest.Session, results: RunResults) -> None:
    """Gather what was found outside any report; the exit status and the
    closing line say what the run found."""
    config = session.config
    for leak in results.outside:
        results.add(leak)
    results.outside.clear()
    failed_run = any(leak.verdict == FAILED_RUN for leak in results.all())
    if (failed_run or results.errors) and session.exitstatus == pytest.ExitCode.OK:
        # Found after their test reported: only the exit status can say so.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal.stats.update(reporting.summary_stats(results.leaks, results.running))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    results = config.stash.get(results_key, None)
    if results is not None:
        results.guarded(
            reporting.write_summary, terminalreporter, results.leaks, results.running
        )
        for error in results.errors:
            terminalreporter.write_line(error, red=True)
