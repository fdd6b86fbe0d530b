"""Every setting in one place: declared once, read once, validated once.

Each setting has an ini key and most have a command-line option sharing one
help text; the command line wins. ``resolve`` turns them into a frozen
``Settings`` or raises ``pytest.UsageError`` naming the setting, where its
value came from and what is accepted, so a typo stops the run (exit code 4)
before any test runs. It runs before the first conftest is imported, so it
reads the command line that pytest parsed early (``known_args_namespace``).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import math
import re
import sys
import threading
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar, get_args

import pytest

T = TypeVar("T", bound=str)
Mode = Literal["fail", "warn", "off"]
MODES: tuple[Mode, ...] = get_args(Mode)
Running = Literal["ignore", "warn", "fail"]
RUNNING_CHOICES: tuple[Running, ...] = get_args(Running)
DEFAULT_GRACE = 1.0
#: The longest wait Python's blocking calls accept on this platform.
MAX_GRACE = threading.TIMEOUT_MAX


class Setting(NamedTuple):
    option: str | None
    ini: str
    default: str
    help: str
    metavar: str = ""

    @property
    def dest(self) -> str:
        return self.ini


MODE = Setting(
    "--nozombies-mode",
    "nozombies_mode",
    "fail",
    "What to do when a test leaves a zombie child: fail the test, warn "
    "(ZombieWarning), or off (check nothing).",
    "fail|warn|off",
)
GRACE = Setting(
    "--nozombies-grace",
    "nozombies_grace",
    str(DEFAULT_GRACE),
    "Seconds to wait, after a test ends, for children that the test spawned "
    "and that it signalled or that are busy on a CPU, to finish exiting "
    "(catches kill() without wait()); 0 turns the wait off.",
    "SECONDS",
)
IGNORE = Setting(
    None,
    "nozombies_ignore",
    "",
    "Regular expressions, one per line; a child whose command line matches "
    "one (re.search) is never a leak and is left alone.",
)
RUNNING = Setting(
    None,
    "nozombies_running",
    "warn",
    "Children still running when the test, fixture or import that spawned "
    "them is over: ignore them, warn (list them in the summary), or fail "
    "(that test, or for a fixture the run).",
)
REPORT = Setting(
    "--nozombies-report",
    "nozombies_report",
    "",
    "Write every leak of the run to this JSON file (schema: see the docs' "
    "configuration reference). A relative path starts at the invocation folder "
    "(command line) or at the ini file's folder (ini); an empty value writes "
    "none.",
    "PATH",
)
SUBREAPER = Setting(
    "--nozombies-subreaper",
    "nozombies_subreaper",
    "false",
    "Linux only: make the test process a child subreaper, so orphaned "
    "grandchildren (a double-forked daemon) come back to it and are checked "
    "like children.",
)
ALL = (MODE, GRACE, IGNORE, RUNNING, REPORT, SUBREAPER)


class Settings(NamedTuple):
    """Every setting, resolved and validated once (immutable)."""

    mode: Mode
    grace: float
    running: Running = "warn"
    ignore: tuple[re.Pattern[str], ...] = ()
    report: Path | None = None
    subreaper: bool = False

    def as_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "grace": self.grace,
            "running": self.running,
            "ignore": [p.pattern for p in self.ignore],
            "report": str(self.report) if self.report else None,
            "subreaper": self.subreaper,
        }

    def describe(self) -> str:
        text = f"mode={self.mode}, grace={self.grace:g}s, running={self.running}"
        if self.ignore:
            text += f", ignoring {len(self.ignore)} pattern(s)"
        if self.subreaper:
            text += ", subreaper"
        return text


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("nozombies", "zombie child processes (pytest-nozombies)")
    group.addoption(
        "--nozombies-subreaper",
        dest=SUBREAPER.dest,
        action="store_true",
        default=None,
        help=f"{SUBREAPER.help} Ini: {SUBREAPER.ini}.",
    )
    for setting in ALL:
        if setting.option is not None and setting is not SUBREAPER:
            group.addoption(
                setting.option,
                dest=setting.dest,
                default=None,
                metavar=setting.metavar,
                help=f"{setting.help} Default: {setting.default or 'none'}. "
                f"Ini: {setting.ini}.",
            )
    parser.addini(MODE.ini, MODE.help, default=MODE.default)
    parser.addini(GRACE.ini, GRACE.help, default=GRACE.default)
    parser.addini(IGNORE.ini, IGNORE.help, type="linelist", default=[])
    parser.addini(RUNNING.ini, RUNNING.help, default=RUNNING.default)
    parser.addini(REPORT.ini, REPORT.help, default=REPORT.default)
    parser.addini(SUBREAPER.ini, SUBREAPER.help, type="bool", default=False)


def resolve(config: pytest.Config) -> Settings:
    """Read and validate every setting, or raise ``pytest.UsageError``."""
    return Settings(
        mode=_resolve_mode(config),
        grace=_resolve_grace(config),
        running=_resolve_running(config),
        ignore=_resolve_ignore(config),
        report=_resolve_report(config),
        subreaper=_resolve_subreaper(config),
    )


def _option(config: pytest.Config, setting: Setting) -> object:
    # The namespace pytest parsed before loading conftests, which is when
    # the plugin starts; it holds every option of the plugin already.
    return getattr(config.known_args_namespace, setting.dest, None)


def _read(config: pytest.Config, setting: Setting) -> tuple[str, str]:
    value = _option(config, setting) if setting.option else None
    if value is not None:
        return str(value), f"{setting.option} (command line)"
    return str(config.getini(setting.ini)).strip(), _ini_source(config, setting)


def _invalid(source: str, value: str, accepted: str) -> pytest.UsageError:
    return pytest.UsageError(
        f"pytest-nozombies: invalid value {value!r} for {source}; {accepted}"
    )


def _ini_source(config: pytest.Config, setting: Setting) -> str:
    where = f" in {config.inipath}" if config.inipath else ""
    return f"{setting.ini} (ini{where})"


def _resolve_choice(
    config: pytest.Config, setting: Setting, choices: tuple[T, ...]
) -> T:
    value, source = _read(config, setting)
    normalized = value.strip().lower()
    for choice in choices:
        if normalized == choice:
            return choice
    raise _invalid(source, value, "expected one of: " + ", ".join(choices))


def _resolve_mode(config: pytest.Config) -> Mode:
    return _resolve_choice(config, MODE, MODES)


def _resolve_grace(config: pytest.Config) -> float:
    value, source = _read(config, GRACE)
    accepted = f"expected a number of seconds from 0 to {MAX_GRACE:.0f} (e.g. 0.5)"
    try:
        grace = float(value)
    except ValueError:
        raise _invalid(source, value, accepted) from None
    if not math.isfinite(grace) or not 0 <= grace <= MAX_GRACE:
        raise _invalid(source, value, accepted)
    return grace


def _resolve_running(config: pytest.Config) -> Running:
    return _resolve_choice(config, RUNNING, RUNNING_CHOICES)


def _resolve_ignore(config: pytest.Config) -> tuple[re.Pattern[str], ...]:
    patterns: list[re.Pattern[str]] = []
    for line in config.getini(IGNORE.ini):
        try:
            patterns.append(re.compile(line))
        except re.error as exc:
            raise _invalid(
                _ini_source(config, IGNORE),
                line,
                f"expected a Python regular expression ({exc})",
            ) from None
    return tuple(patterns)


def _resolve_report(config: pytest.Config) -> Path | None:
    value, source = _read(config, REPORT)
    if not value:
        return None
    # From the command line a relative path starts where pytest was invoked;
    # from an ini file, beside that file, as the paths in it are meant.
    from_ini = _option(config, REPORT) is None and config.inipath is not None
    base = config.inipath.parent if from_ini and config.inipath else None
    path = Path(base or config.invocation_params.dir, value)
    # Check now rather than fail after the whole run.
    from . import report_file

    problem = report_file.check(path)
    if problem is not None:
        accepted = "expected a regular file in a folder this run can write to"
        raise _invalid(source, value, f"{accepted} ({problem})")
    return path


def _resolve_subreaper(config: pytest.Config) -> bool:
    if _option(config, SUBREAPER):
        enabled, source = True, f"{SUBREAPER.option} (command line)"
    else:
        try:
            enabled = bool(config.getini(SUBREAPER.ini))
        except (ValueError, pytest.UsageError) as exc:
            # pytest says "invalid truth value 'x'" without naming the key.
            raise pytest.UsageError(
                f"pytest-nozombies: {exc} for {_ini_source(config, SUBREAPER)}; "
                "expected true or false"
            ) from None
        source = _ini_source(config, SUBREAPER)
    if not enabled:
        return False
    from . import subreaper

    if not subreaper.AVAILABLE:
        raise _invalid(
            source,
            "true",
            f"child subreapers exist only on Linux, not on {sys.platform}; "
            "remove the setting on this platform",
        )
    return True
