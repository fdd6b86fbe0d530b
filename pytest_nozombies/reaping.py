"""Collect a leaked zombie without lying to whoever still holds it.

A zombie that belongs to a live ``subprocess.Popen`` or
``multiprocessing.Process`` is reaped through that object, so its
``returncode`` / ``exitcode`` afterwards says what really happened; reaping it
behind the object's back would leave ``Process.exitcode`` at ``None`` forever
and make ``Popen`` report a made-up exit code 0 later.

Imported only when there is something to reap.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from . import processes
from .spawns import SpawnRecord, parked_popen


def reap_zombie(
    pid: int, record: SpawnRecord | None
) -> tuple[processes.ExitStatus | None, object | None]:
    """Reap the zombie ``pid``; return how it ended and the object holding it."""
    holder = find_holder(pid, record)
    status: processes.ExitStatus | None = None
    if isinstance(holder, subprocess.Popen):
        status = _status_from_returncode(holder.poll())
    elif holder is not None:
        status = _status_from_returncode(holder.exitcode)  # type: ignore[attr-defined]
    if processes.child_status(pid) == "zombie":
        # Nobody holds it (or its holder could not reap just now): reap it here.
        status = processes.reap(pid) or status
    return status, holder


def find_holder(pid: int, record: SpawnRecord | None) -> object | None:
    """The live Popen or multiprocessing Process whose child ``pid`` is."""
    if record is not None and record.holder is not None:
        held: object = record.holder()
        if isinstance(held, subprocess.Popen) and held.pid == pid:
            return held
    parked = parked_popen(pid)
    if parked is not None:
        return parked
    # multiprocessing keeps every Process it started (and has not yet seen
    # end) in this set; only look if the program uses multiprocessing at all.
    mp_process = sys.modules.get("multiprocessing.process")
    children: Any = getattr(mp_process, "_children", None) or ()
    for process in list(children):
        popen = getattr(process, "_popen", None)
        if getattr(popen, "pid", None) == pid:
            found: object = process
            return found
    return None


def describe_holder(holder: object | None) -> str | None:
    """How a multiprocessing child was spawned, named after its Process."""
    if holder is None or isinstance(holder, subprocess.Popen):
        return None
    name = getattr(holder, "name", "?")
    return f"multiprocessing.Process(name={name!r})"


def _status_from_returncode(code: int | None) -> processes.ExitStatus | None:
    if code is None:
        return None
    if code < 0:
        return processes.ExitStatus(signal=-code)
    return processes.ExitStatus(code=code)
