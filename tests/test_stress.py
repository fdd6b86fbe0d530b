"""Stress: many tests spawning many children from several threads (issue 5).

A generated suite of 200 tests, each spawning 20 children from 4 threads, in
which a random but known subset leaks in one of four ways. The plugin's
verdicts must match that subset exactly: no false alarm, no miss, the right
test blamed, with how each child was spawned and ended, run after run, also
under pytest-xdist. Every leak comes from a worker thread that the test joins
before it ends, so none is handed to a thread that still runs.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field

import pytest

from helpers import RunInner

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="POSIX only"),
    # One at a time (tox runs the suite with --dist loadgroup): two of these
    # at once, each with its own workers, overload a 2-core machine.
    pytest.mark.xdist_group("stress"),
]

#: A deadline, not an expected duration: a run takes 10 to 30 s here, more
#: under coverage.
STRESS_DEADLINE = 900.0

TESTS = 200
PER_FILE = 20
LEAK_KINDS = ("kept_popen", "fork_no_wait", "kill_no_wait", "late_death")

HELPERS = '''
import os, subprocess, threading

KEPT = []
LATE = {}

def well_behaved(worker):
    """Five children, all waited for, in one of four styles."""
    for _ in range(5):
        if worker == 0:
            subprocess.run(["true"], check=True)
        elif worker == 1:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        elif worker == 2:
            pid = os.posix_spawn("/bin/true", ["true"], os.environ)
            os.waitpid(pid, 0)
        else:
            with subprocess.Popen(["true"]):
                pass

def leak(kind, key):
    if kind == "kept_popen":
        KEPT.append(subprocess.Popen(["true"]))
    elif kind == "fork_no_wait":
        if os.fork() == 0:
            os._exit(0)
    elif kind == "kill_no_wait":
        p = subprocess.Popen(["sleep", "60"])
        p.kill()
        KEPT.append(p)
    elif kind == "late_death":
        r, w = os.pipe()
        p = subprocess.Popen(["sh", "-c", "read x"], stdin=r)
        os.close(r)
        KEPT.append(p)
        LATE[key] = w

def end_late_death(key):
    os.close(LATE.pop(key))

def spawn_20(leak_kind=None, key=None, leaking_worker=0):
    errors = []
    def run(worker):
        try:
            well_behaved(worker)
            if leak_kind is not None and worker == leaking_worker:
                leak(leak_kind, key)
        except BaseException as exc:  # surface thread errors in the test
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
'''


@dataclass
class Suite:
    files: dict[str, str] = field(default_factory=dict)
    #: Tests expected to fail at teardown (their own leak, found in time).
    immediate: set[str] = field(default_factory=set)
    #: Tests whose child dies later, during another test: late leaks.
    late: set[str] = field(default_factory=set)
    #: How each leaking test leaks.
    kinds: dict[str, str] = field(default_factory=dict)


def generate(seed: int) -> Suite:
    rng = random.Random(seed)
    suite = Suite()
    for f in range(TESTS // PER_FILE):
        module = f"test_stress_{f:02d}"
        lines = ["from stress_helpers import spawn_20, end_late_death", ""]
        pending_end: str | None = None
        for i in range(PER_FILE):
            name = f"test_{i:02d}"
            nodeid = f"{module}.py::{name}"
            kind: str | None = None
            # Late deaths need a later test in the same file to end them.
            if rng.random() < 0.25 and i < PER_FILE - 1:
                kind = rng.choice(LEAK_KINDS)
                if kind == "late_death" and (pending_end or len(suite.late) >= 2):
                    kind = "kept_popen"
            body = []
            if pending_end is not None:
                body.append(f"    end_late_death({pending_end!r})")
                pending_end = None
            if kind is None:
                body.append("    spawn_20()")
            else:
                worker = rng.randrange(4)
                body.append(f"    spawn_20({kind!r}, {nodeid!r}, {worker})")
                suite.kinds[nodeid] = kind
                if kind == "late_death":
                    suite.late.add(nodeid)
                    pending_end = nodeid
                else:
                    suite.immediate.add(nodeid)
            lines += [f"def {name}():", *body, ""]
        suite.files[module] = "\n".join(lines)
    return suite


ERROR_LINE = re.compile(r"^ERROR (\S+) - ", re.MULTILINE)

#: How each kind of leak was spawned and how it ended (``sh -c "read x"``
#: exits 1 when the pipe closes).
SPAWNED_AND_ENDED = {
    "kept_popen": ("subprocess.Popen", {"exit_code": 0, "signal": None}),
    "fork_no_wait": ("os.fork", {"exit_code": 0, "signal": None}),
    "kill_no_wait": ("subprocess.Popen", {"exit_code": None, "signal": 9}),
    "late_death": ("subprocess.Popen", {"exit_code": 1, "signal": None}),
}


def check_run(suite: Suite, result: pytest.RunResult, report_path: str) -> None:
    output = result.stdout.str()
    errored = set(ERROR_LINE.findall(output))
    assert errored == suite.immediate, (
        f"missed: {sorted(suite.immediate - errored)}, "
        f"false alarms: {sorted(errored - suite.immediate)}"
    )
    with open(report_path) as f:
        document = json.load(f)
    leaks = document["leaks"]
    assert document["running"] == []
    immediate = {leak["nodeid"] for leak in leaks if not leak["late"]}
    late = {leak["nodeid"] for leak in leaks if leak["late"]}
    assert immediate == suite.immediate
    assert late == suite.late
    assert len(leaks) == len(suite.immediate) + len(suite.late)
    for leak in leaks:
        spawned_by, ended = SPAWNED_AND_ENDED[suite.kinds[leak["nodeid"]]]
        assert leak["spawned_by"] == spawned_by, leak
        assert {key: leak["ended"][key] for key in ended} == ended, leak
        assert leak["verdict"] == ("failed-run" if leak["late"] else "failed-test")
        # Spawned by a worker thread, joined before the test ended.
        assert leak["thread"].startswith("Thread-"), leak
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("run", range(5))
@pytest.mark.parametrize("workers", [[], ["-n", "2", "--dist", "loadfile"]])
def test_verdicts_match_the_leaking_set_exactly(
    pytester: pytest.Pytester, run_inner: RunInner, run: int, workers: list[str]
) -> None:
    seed = 1000 * run + len(workers)
    suite = generate(seed)
    assert suite.immediate, "the generator must make immediate leaks"
    assert suite.late, "the generator must make late leaks"
    pytester.makepyfile(stress_helpers=HELPERS, **suite.files)
    result = run_inner(
        "-p",
        "no:randomly",
        "--nozombies-report=report.json",
        # Enough for a killed child to finish exiting on a loaded machine;
        # each late-death child costs it once.
        "--nozombies-grace=2",
        *workers,
        timeout=STRESS_DEADLINE,
    )
    check_run(suite, result, str(pytester.path / "report.json"))
