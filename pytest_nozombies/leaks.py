"""The one form of a finding: a child a scope left behind, zombie or running.

A ``Leak`` holds everything any report says about one child, as plain data:
the failure message, the terminal summary, the JSON report and JUnit XML are
all rendered from it (reporting.py), and it travels between processes
(pytest-xdist, pytest-forked) as its JSON form, which
``report.schema.json`` describes field by field.

No pytest here.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from . import processes

Kind = Literal["zombie", "running"]

#: What a finding does to the run; the JSON report's ``verdict``.
Verdict = Literal["failed-test", "failed-run", "warned", "retried"]
FAILED_TEST: Verdict = "failed-test"  # it failed its test (a teardown error)
FAILED_RUN: Verdict = "failed-run"  # found after its test reported: the exit status
WARNED: Verdict = "warned"  # warn mode, or a running child under running=warn
RETRIED: Verdict = "retried"  # its test's attempt was rerun (pytest-rerunfailures)


@dataclasses.dataclass
class OwnerInfo:
    """What was running when the child was spawned, and answers for it."""

    nodeid: str | None
    phase: str | None
    fixture: str | None = None
    scope: str | None = None
    text: str = "outside any test"


@dataclasses.dataclass
class Ended:
    """How a zombie ended."""

    exit_code: int | None
    signal: int | None
    signal_name: str | None
    core_dumped: bool
    text: str

    @classmethod
    def of(cls, status: processes.ExitStatus) -> Ended:
        return cls(
            status.code,
            status.signal,
            status.signal_name,
            status.core_dumped,
            status.describe(),
        )


@dataclasses.dataclass
class Leak:
    """One child left behind: a zombie nobody waited for, or one left running."""

    kind: Kind
    pid: int
    #: As spawned (or exec'd); arguments that were not UTF-8 keep their bytes
    #: as lone surrogates here, and as ``\\xNN`` in the JSON report.
    argv: tuple[str, ...] | None
    #: One line a person reads: the command line, or what the kernel knows.
    command: str
    #: How it was spawned: ``subprocess.Popen``, ``os.fork``, ...
    spawned_by: str
    owner: OwnerInfo
    #: How it ended (zombies; ``None`` for children still running).
    ended: Ended | None = None
    #: ``path:line`` of the user's code that spawned it.
    spawn_site: str | None = None
    #: Why the spawn site is unknown, when it is.
    site_note: str | None = None
    #: ``path:line`` in the test's own file that led to a spawn elsewhere.
    test_site: str | None = None
    #: The spawning stack, outermost first, as ``path:line in function``.
    stack: tuple[str, ...] = ()
    #: The thread that spawned it, when not the one running the tests.
    thread: str | None = None
    #: Found after its owner's scope had been judged.
    late: bool = False
    #: The test (or moment) during which a late leak was found.
    found_during: str | None = None
    verdict: Verdict = FAILED_TEST
    #: Lines added by ``pytest_nozombies_leak`` hooks.
    details: list[str] = dataclasses.field(default_factory=list)

    @property
    def nodeid(self) -> str | None:
        """The test (or module) the finding is blamed on."""
        return self.owner.nodeid

    def to_json(self) -> dict[str, Any]:
        """The JSON form: plain data, every string valid UTF-8."""
        data = dataclasses.asdict(self)
        data["nodeid"] = self.nodeid
        result: dict[str, Any] = _as_json(data)
        return result

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Leak:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["owner"] = OwnerInfo(**values["owner"])
        if values.get("ended") is not None:
            values["ended"] = Ended(**values["ended"])
        if values.get("argv") is not None:
            values["argv"] = tuple(values["argv"])
        values["stack"] = tuple(values.get("stack", ()))
        return cls(**values)


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(item) for item in value]
    return value


def _utf8(text: str) -> str:
    # A lone surrogate (a byte that was not UTF-8) cannot be written as
    # UTF-8: write it as \xNN, the way Python shows such bytes.
    try:
        return text.encode("utf-8", "surrogateescape").decode(
            "utf-8", "backslashreplace"
        )
    except UnicodeEncodeError:  # a surrogate no byte became
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
