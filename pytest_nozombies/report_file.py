"""Write the JSON report where it was asked for, and only there.

* A symlink is followed: its target is written (created if it is missing).
* Only a regular file is ever replaced. A FIFO, a device, a socket or a
  folder is refused when the run starts; one that appears during the run
  makes the write fail.
* A new file gets the mode the umask gives, an existing one keeps its mode
  (and, where permitted, its owner).
* The folder is created if missing, also when a test removed it meanwhile.
* Readers never see half a report: it is written beside its target and
  renamed over it.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str | None:
    """What a non-regular file is; ``None`` for a regular file."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def check(path: Path) -> str | None:
    """Why the report cannot be written to ``path``, or ``None`` if it can."""
    target = Path(os.path.realpath(path))
    try:
        kind = _kind(os.stat(target).st_mode)
    except FileNotFoundError:
        kind = None
    except OSError as exc:
        return exc.strerror or str(exc)
    if kind is not None:
        return f"it is {kind}, and only a regular file is ever replaced"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = _scratch_name(target)
        os.close(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(scratch)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as described above; ``OSError`` if it fails."""
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and _kind(existing.st_mode) is not None:
        kind = _kind(existing.st_mode)
        raise OSError(f"it is {kind}, and only a regular file is ever replaced")
    scratch = _scratch_name(target)
    # 0o666: the kernel applies the umask, as it would to any new file.
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        if existing is not None:
            os.fchmod(fd, stat.S_IMODE(existing.st_mode))
            with contextlib.suppress(OSError):  # only root may give a file away
                os.fchown(fd, existing.st_uid, existing.st_gid)
        with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as f:
            f.write(text)
        os.close(fd)
        fd = -1
        os.replace(scratch, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.unlink(scratch)
        raise


def _scratch_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
