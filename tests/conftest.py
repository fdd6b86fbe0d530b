"""Fixtures shared by the test suite; shared functions live in helpers.py."""

from __future__ import annotations

import pytest

from helpers import DEADLINE, RunInner

pytest_plugins = ["pytester"]


@pytest.fixture
def run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> RunInner:
    """Run pytest in a subprocess in ``pytester.path`` with the plugin loaded."""
    # pytest prints whole messages in its short summary on CI; inner runs look
    # the same everywhere, so that tests read the same output on CI as here.
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)

    def run(*args: str, timeout: float = DEADLINE * 4) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", *args, timeout=timeout
        )

    return run
