"""The suite tests the installed wheel, never the checkout beside it."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest_nozombies

CHECKOUT = Path(__file__).resolve().parents[1]


def test_the_plugin_under_test_is_the_installed_wheel_not_the_checkout() -> None:
    imported = Path(pytest_nozombies.__file__).resolve().parent
    installed = {
        Path(sysconfig.get_paths()[key]).resolve() / "pytest_nozombies"
        for key in ("purelib", "platlib")
    }
    assert imported != CHECKOUT / "pytest_nozombies", (
        "the tests imported the source tree: run pytest through its script "
        "(see tox.ini), not `python -m pytest` from the checkout"
    )
    assert imported in installed, f"{imported} is not in site-packages"
