"""The hook pytest-nozombies offers to conftests and plugins.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import pytest

    from .leaks import Leak

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_nozombies_leak(leak: Leak, item: pytest.Item | None) -> bool | None:
    """Called for each finding before it is reported: a zombie a test,
    fixture or import left (``leak.kind == "zombie"``), or a child it left
    running (``"running"``), in the process that ran the test.

    :param leak: the finding, as the reports will show it; text appended to
        ``leak.details`` is shown in the message, the summary and the JSON
        report.
    :param item: the test it is blamed on, or ``None`` when no test is (a
        child spawned while conftests and test modules were imported).

    Return ``False`` to keep it from being reported (it is then cleaned up
    like the children of a test marked ``allow_zombies``).
    """
