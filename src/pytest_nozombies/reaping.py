"""Collect a leaked zombie without lying to whoever still holds it.

A zombie that belongs to a live ``subprocess.Popen`` or
``multiprocessing.Process`` is reaped through that object, so its
``returncode`` / ``exitcode`` afterwards says what really happened; reaping it
behind the object's back would leave it believing the child still runs (or,
for Popen, report a made-up exit code 0 later).
"""

from __future__ import annotations

import multiprocessing.process
import subprocess
from typing import Any

from . import processes
from .spawns import SpawnRecord


def reap_zombie(pid: int, record: SpawnRecord | None) -> processes.ExitStatus | None:
    """Reap the zombie ``pid``; return how it ended, if that can be told."""
    holder = _find_holder(pid, record)
    status: processes.ExitStatus | None = None
    if isinstance(holder, subprocess.Popen):
        status = _status_from_returncode(holder.poll())
    elif isinstance(holder, multiprocessing.process.BaseProcess):
        status = _status_from_returncode(holder.exitcode)
    if processes.child_status(pid) == "zombie":
        # Nobody holds it (or its holder could not reap just now): reap it here.
        status = processes.reap(pid) or status
    return status


def _find_holder(pid: int, record: SpawnRecord | None) -> object | None:
    if record is not None and record.holder is not None:
        holder: object = record.holder()
        if holder is not None and _holder_pid(holder) == pid:
            return holder
    # A Popen dropped while its child still ran is parked here by CPython until
    # a later Popen call polls it.
    active: list[Any] = getattr(subprocess, "_active", None) or []
    for popen in list(active):
        if isinstance(popen, subprocess.Popen) and popen.pid == pid:
            return popen
    return None


def _holder_pid(holder: object) -> int | None:
    if isinstance(holder, subprocess.Popen):
        return holder.pid
    popen = getattr(holder, "_popen", None)
    pid = getattr(popen, "pid", None)
    return pid if isinstance(pid, int) else None


def _status_from_returncode(code: int | None) -> processes.ExitStatus | None:
    if code is None:
        return None
    if code < 0:
        return processes.ExitStatus(signal=-code)
    return processes.ExitStatus(code=code)
