"""Every setting in one place: declared once, read once, validated once.

Each setting has a command-line option and an ini key sharing one help text;
the command line wins. ``resolve`` turns them into a frozen ``Settings`` or
raises ``pytest.UsageError`` naming the setting, where its value came from and
what is accepted, so a typo stops the run (exit code 4) before any test runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pytest

Mode = Literal["fail", "warn", "off"]
MODES: tuple[Mode, ...] = ("fail", "warn", "off")
DEFAULT_GRACE = 1.0


@dataclass(frozen=True)
class Setting:
    option: str
    ini: str
    default: str
    help: str

    @property
    def dest(self) -> str:
        return self.ini


MODE = Setting(
    "--nozombies-mode",
    "nozombies_mode",
    "fail",
    "What to do when a test leaves a zombie child: fail the test, warn "
    "(ZombieWarning), or off (check nothing).",
)
GRACE = Setting(
    "--nozombies-grace",
    "nozombies_grace",
    str(DEFAULT_GRACE),
    "Seconds to wait, after a test ends, for children that the test spawned "
    "and that are still running to finish exiting (catches kill() without "
    "wait()).",
)
ALL = (MODE, GRACE)


@dataclass(frozen=True)
class Settings:
    mode: Mode
    grace: float

    def describe(self) -> str:
        return f"mode={self.mode}, grace={self.grace:g}s"


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("nozombies", "zombie child processes (pytest-nozombies)")
    for setting in ALL:
        group.addoption(
            setting.option,
            dest=setting.dest,
            default=None,
            metavar=setting.ini.removeprefix("nozombies_").upper(),
            help=f"{setting.help} Default: {setting.default}. Ini: {setting.ini}.",
        )
        parser.addini(setting.ini, setting.help, default=setting.default)


def resolve(config: pytest.Config) -> Settings:
    """Read and validate every setting, or raise ``pytest.UsageError``."""
    return Settings(mode=_resolve_mode(config), grace=_resolve_grace(config))


def _read(config: pytest.Config, setting: Setting) -> tuple[str, str]:
    value = config.getoption(setting.dest)
    if value is not None:
        return str(value), f"{setting.option} (command line)"
    where = f" in {config.inipath}" if config.inipath else ""
    return str(config.getini(setting.ini)).strip(), f"{setting.ini} (ini{where})"


def _invalid(source: str, value: str, accepted: str) -> pytest.UsageError:
    return pytest.UsageError(
        f"pytest-nozombies: invalid value {value!r} for {source}; {accepted}"
    )


def _resolve_mode(config: pytest.Config) -> Mode:
    value, source = _read(config, MODE)
    normalized = value.strip().lower()
    for mode in MODES:
        if normalized == mode:
            return mode
    raise _invalid(source, value, "expected one of: " + ", ".join(MODES))


def _resolve_grace(config: pytest.Config) -> float:
    value, source = _read(config, GRACE)
    accepted = "expected a number of seconds, 0 or more (e.g. 0.5)"
    try:
        grace = float(value)
    except ValueError:
        raise _invalid(source, value, accepted) from None
    if not math.isfinite(grace) or grace < 0:
        raise _invalid(source, value, accepted)
    return grace
