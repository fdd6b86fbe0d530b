"""pytest hooks of the session: a table of contents.

* ``pytest_configure`` resolves the settings and, when there is anything to
  check, starts recording spawns and registers the per-test checks
  (checks.py).
* Markers are validated once collection is done (markers.py).
* At the session's end: children that died after the last check, running
  leftovers, the exit code, the JSON report (results.py) and the terminal
  summary (reporting.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

from . import __version__, markers, processes, results, settings

if TYPE_CHECKING:  # imported when there is something to check
    from .checks import TestChecks

settings_key = pytest.StashKey[settings.Settings]()
results_key = pytest.StashKey[results.RunResults]()
session_pid_key = pytest.StashKey[int]()
allowed_key = pytest.StashKey[markers.AllowedTests]()
checks_key: pytest.StashKey[TestChecks] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", markers.MARKER_LINE)
    config.stash[allowed_key] = markers.AllowedTests()
    if config.option.help:
        return  # --help must work even when a setting is wrong
    resolved = settings.resolve(config)
    config.stash[settings_key] = resolved
    config.stash[session_pid_key] = os.getpid()
    run_results = config.stash[results_key] = results.RunResults()
    if resolved.mode == "off" or not processes.SUPPORTED:
        return  # nothing runs per test; the JSON report is still written
    controller = _is_xdist_controller(config)
    # Reports that come from another process carry their leaks as records:
    # read them as they are logged (an xdist controller, pytest-forked).
    collect = controller or _has_pytest_forked(config)
    if collect:
        config.pluginmanager.register(
            results.LeakCollector(run_results), "nozombies-results"
        )
    if controller:
        from .xdist import XdistControllerHooks

        config.pluginmanager.register(
            XdistControllerHooks(run_results), "nozombies-xdist"
        )
    if resolved.subreaper:
        _become_subreaper(config)
    _start_checks(config, resolved, run_results, count_carried=not collect)


def _start_checks(
    config: pytest.Config,
    resolved: settings.Settings,
    run_results: results.RunResults,
    *,
    count_carried: bool,
) -> None:
    # Loaded here, not with the plugin: with --nozombies-mode=off (or nothing
    # to check on this platform) no spawn is recorded and none of it is needed.
    from . import spawns
    from .checks import TestChecks, disabled_warning, pytest_phase
    from .tracker import Tracker

    registry = spawns.SpawnRegistry()
    registry.ignore = resolved.ignore
    registry.stack_stop = _runner_folders()
    registry.phase_now = pytest_phase
    config.add_cleanup(lambda: spawns.uninstall(registry))
    try:
        spawns.install(registry)
    except Exception as exc:  # e.g. /proc unreadable: degrade, never crash
        spawns.uninstall(registry)
        config.issue_config_time_warning(disabled_warning(exc), stacklevel=2)
        return
    tracker = Tracker(registry, resolved.grace, adopt_orphans=resolved.subreaper)
    checks = TestChecks(
        config,
        tracker,
        resolved,
        run_results,
        config.stash[allowed_key].nodeids,
        count_carried=count_carried,
    )
    config.stash[checks_key] = checks
    config.pluginmanager.register(checks, "nozombies-checks")


def _runner_folders() -> tuple[str, ...]:
    """Folders of pytest and pluggy: a spawn stack need not go past them."""
    import _pytest
    import pluggy

    return tuple(
        os.path.join(os.path.dirname(m.__file__ or ""), "") for m in (_pytest, pluggy)
    )


def _become_subreaper(config: pytest.Config) -> None:
    from . import subreaper

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


def _has_pytest_forked(config: pytest.Config) -> bool:
    # Its option, not its plugin name ("pytest_forked"), is the stable sign.
    return hasattr(config.option, "forked")


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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    # Every collected item in every mode, before -k, -m or --lf deselect any:
    # a typo never hides. Which tests are allowed is decided here once, not at
    # each run; one call for all items rather than a hook call per item.
    check = config.stash[allowed_key].check
    for item in items:
        check(item)


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
    checks = config.stash.get(checks_key, None)
    leftover = checks.finish_session() if checks is not None else []
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
    if run_results is not None and (run_results.leaks or run_results.running):
        from .reporting import write_summary

        write_summary(terminalreporter, run_results.leaks, run_results.running)
