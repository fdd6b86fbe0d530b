"""The ``allow_zombies`` marker: declared, parsed and checked in one place."""

from __future__ import annotations

import pytest

MARKER = "allow_zombies"
MARKER_LINE = (
    f"{MARKER}(reason=None): let this test leave zombie child processes; "
    "pytest-nozombies still reaps them afterwards so they cannot spill into "
    "other tests."
)


def parse(mark: pytest.Mark) -> str | None:
    """Return the marker's reason, or raise ``ValueError`` for wrong arguments."""
    if mark.args:
        raise ValueError(
            f"takes no positional arguments, got {mark.args!r}; "
            f'use @pytest.mark.{MARKER}(reason="...")'
        )
    unknown = set(mark.kwargs) - {"reason"}
    if unknown:
        raise ValueError(
            f"got unexpected keyword argument(s) {', '.join(sorted(unknown))}; "
            "the only one accepted is reason"
        )
    reason = mark.kwargs.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ValueError(f"reason must be a string, got {reason!r}")
    return reason


def check_item(item: pytest.Item) -> bool:
    """Whether ``item`` is allowed zombies; ``pytest.UsageError`` if misused."""
    allowed = False
    for mark in item.iter_markers(MARKER):
        allowed = True
        try:
            parse(mark)
        except ValueError as exc:
            raise pytest.UsageError(
                f"pytest-nozombies: @pytest.mark.{MARKER} on {item.nodeid} {exc}"
            ) from None
    return allowed
