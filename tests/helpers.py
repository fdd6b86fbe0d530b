"""Helpers shared by the test suite: import them with ``from helpers import ...``.

End-to-end tests run an inner pytest in a subprocess (``runpytest_subprocess``)
so that the inner session's children are not the outer session's. The outer
session runs with the plugin on too (the suite is held to what the project
sells): tests that make zombies in the outer process on purpose reap them or
are marked ``allow_zombies``.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from typing import Any

import pytest

#: Upper bound for any wait on a real process; generous for a loaded CI box.
DEADLINE = 30.0

RunInner = Callable[..., pytest.RunResult]


def wait_until_zombie(pid: int, timeout: float = DEADLINE) -> None:
    """Block until child ``pid`` has exited, without reaping it."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        raise TimeoutError(f"child {pid} did not exit within {timeout}s")


def wait_for(predicate: Callable[[], object], timeout: float = DEADLINE) -> None:
    """Poll ``predicate()`` with a deadline (for states with no event to wait on)."""
    deadline = time.monotonic() + timeout
    interval = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)
        interval = min(interval * 2, 0.05)


def read_report(path: os.PathLike[str] | str) -> dict[str, Any]:
    """The JSON report at ``path``, checked as strictly as a CI dashboard
    would: the file decodes as UTF-8, holds no escaped lone surrogate (which
    strict JSON parsers reject), and matches ``report.schema.json``."""
    import json
    import re
    from importlib import resources

    import jsonschema

    with open(path, "rb") as f:
        text = f.read().decode("utf-8")  # strict: raises on a byte that is not
    # A \uD800-\uDFFF escape, not preceded by an escaped backslash.
    surrogate = re.search(r"(?<!\\)(?:\\\\)*\\u[dD][89a-fA-F][0-9a-fA-F]{2}", text)
    assert surrogate is None, f"surrogate escape in the report: {surrogate[0]!r}"
    document: dict[str, Any] = json.loads(text)
    schema = json.loads(
        resources.files("pytest_nozombies").joinpath("report.schema.json").read_text()
    )
    jsonschema.Draft202012Validator(schema).validate(document)
    return document
