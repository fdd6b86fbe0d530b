"""Linux child-subreaper mode: orphaned grandchildren come back to us.

A double-forked daemon's grandchild is normally adopted by init when its
parent exits, so it can never be this process's zombie. With
``PR_SET_CHILD_SUBREAPER`` the nearest subreaper ancestor adopts it instead;
the tracker then sees it as a child it did not record, and judges it.

The flag is per process and not inherited across ``fork``, so every process
that runs tests (each xdist worker) sets its own. No pytest here.
"""

from __future__ import annotations

import os
import sys

AVAILABLE = sys.platform.startswith("linux")

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


def _prctl(option: int, arg: object) -> None:
    import ctypes  # only when the option is used: it is slow to import

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def is_subreaper() -> bool:
    if not AVAILABLE:
        return False
    import ctypes

    value = ctypes.c_int(0)
    _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value))
    return bool(value.value)


def set_subreaper(enabled: bool) -> None:
    """Make this process a child subreaper, or stop being one."""
    if not AVAILABLE:
        raise OSError(f"child subreapers exist only on Linux, not {sys.platform}")
    _prctl(_PR_SET_CHILD_SUBREAPER, int(enabled))
