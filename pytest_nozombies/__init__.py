"""pytest-nozombies: fail tests that leave zombie child processes behind."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ZombieWarning", "__version__"]

if TYPE_CHECKING:
    from .reporting import ZombieWarning


def __getattr__(name: str) -> Any:
    # Imported lazily so that the process-inspection layer
    # (pytest_nozombies.processes) can be used without importing pytest.
    if name == "ZombieWarning":
        from .reporting import ZombieWarning

        return ZombieWarning
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
