"""pytest-nozombies: fail tests that leave zombie child processes behind.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Child", "Leak", "NoZombies", "ZombieWarning", "__version__"]

if TYPE_CHECKING:
    from .fixture import Child, NoZombies
    from .leaks import Leak
    from .reporting import ZombieWarning

# Imported on first use, so that the process-inspection layer
# (pytest_nozombies.processes) can be used without importing pytest.
_LAZY = {
    "Child": "fixture",
    "Leak": "leaks",
    "NoZombies": "fixture",
    "ZombieWarning": "reporting",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
