"""A small prefork server, the kind of code ``nozombies.assert_no_zombies(pid)``
is for: a parent process that forks worker processes and, depending on how
it is started, reaps them when they die or does not.

Run as a script it is the server::

    python prefork_server.py --workers 3 --reap signal

``--reap`` says what the parent does when a worker dies:

* ``signal``: a SIGCHLD handler reaps it at once (``waitpid(-1, WNOHANG)``);
* ``loop``: the main loop blocks in ``os.wait()`` and reaps it at once;
* ``on-request``: it stays a zombie until the parent gets SIGUSR1 (so a test
  can decide when the parent reaps, with no timing involved);
* ``never``: it stays a zombie for as long as the parent lives (the bug).

A worker renames itself ``prefork-worker`` (the name a zombie keeps) and
exits by itself once its parent is gone, so nothing outlives a run that
crashed. The parent prints ``ready PID PID ...`` (its workers' pids) once
they all run under that name; on SIGTERM it kills its workers, reaps them
and exits.

Imported, it is the test's side: ``start()`` runs the server as a child of
the calling process and returns a ``Server`` handle. It is copied beside the
inner test modules, which import it; no pytest here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

WORKER_NAME = "prefork-worker"
#: Upper bound for any wait on a real process.
DEADLINE = 30.0
MODES = ("signal", "loop", "on-request", "never")


# --- the server -------------------------------------------------------------


def _worker(parent: int, ready: int) -> None:
    try:  # the name a zombie keeps, and the one assert_no_zombies shows
        with open("/proc/self/comm", "w") as comm:
            comm.write(WORKER_NAME)
    except OSError:
        pass
    os.write(ready, b".")
    os.close(ready)
    while os.getppid() == parent:
        time.sleep(0.2)


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(workers: int, reap: str) -> None:
    me = os.getpid()
    pids = []
    # Each worker writes a byte once it has its name: "ready" waits for all.
    ready_read, ready_write = os.pipe()
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                os.close(ready_read)
                _worker(me, ready_write)
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(ready_write)
    started = 0
    while started < workers:
        chunk = os.read(ready_read, workers)
        if not chunk:
            sys.exit("prefork_server: a worker died before it started")
        started += len(chunk)
    os.close(ready_read)

    def stop(signum: int, frame: object) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):  # reaped already
                os.waitpid(pid, 0)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    if reap == "signal":
        signal.signal(signal.SIGCHLD, lambda signum, frame: _reap_all())
    elif reap == "on-request":
        signal.signal(signal.SIGUSR1, lambda signum, frame: _reap_all())
    print("ready", *pids, flush=True)
    if reap == "loop":
        while True:
            try:
                os.wait()
            except ChildProcessError:  # every worker is gone
                signal.pause()
    while True:
        signal.pause()


# --- the test's side --------------------------------------------------------


class Server:
    """A prefork server running as a child of this process."""

    def __init__(self, process: subprocess.Popen[str], workers: list[int]) -> None:
        self.process = process
        self.pid = process.pid
        self.workers = workers

    def state_of(self, worker: int) -> str | None:
        """The kernel's state letter of a worker (``Z``: a zombie); ``None``
        once it is gone (reaped), or no longer this server's."""
        try:
            with open(f"/proc/{worker}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        fields = raw.rpartition(b")")[2].split()
        if int(fields[1]) != self.pid:
            return None
        return fields[0].decode()

    def kill_worker(self, index: int = 0) -> int:
        """SIGKILL one worker and wait until it is dead (a zombie, or already
        reaped by the server); return its pid."""
        worker = self.workers[index]
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: self.state_of(worker) in (None, "Z"))
        return worker

    def reap_now(self) -> None:
        """Ask an ``on-request`` server to reap its dead workers."""
        os.kill(self.pid, signal.SIGUSR1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(DEADLINE)
        self.process.stdout.close()  # type: ignore[union-attr]


def start(workers: int = 3, reap: str = "signal") -> Server:
    """Start a server and wait until all its workers exist."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--workers", str(workers), "--reap", reap],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("ready"):
        process.kill()
        process.wait(DEADLINE)
        raise RuntimeError(f"the prefork server did not start: {line!r}")
    return Server(process, [int(pid) for pid in line.split()[1:]])


def wait_for(predicate: Callable[[], object], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    interval = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)
        interval = min(interval * 2, 0.05)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--reap", choices=MODES, default="signal")
    args = parser.parse_args()
    serve(args.workers, args.reap)
