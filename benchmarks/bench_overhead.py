"""Time whole pytest runs with pytest-nozombies on against ``-p no:nozombies``.

Each scenario generates a suite in a temporary folder and runs it in a fresh
``python -m pytest`` subprocess, alternating the variants in pairs
(on, off, off, on, on, off, ...) so slow drift of a shared machine hits both
sides alike. Per scenario it prints the median of the per-pair wall-time
ratios, the median times, the cost per test and the peak RSS of the pytest
process (``ru_maxrss`` from ``os.wait4``).

Only the standard library is needed, plus pytest, the plugin and psutil (for
the psutil reference scenario) installed in the running interpreter. See
``benchmarks/README.md`` for what each scenario means.

    python benchmarks/bench_overhead.py            # full run, ~10 minutes
    python benchmarks/bench_overhead.py --quick    # ~1 minute, indicative only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TypeAlias

SCENARIOS = (
    "trivial",
    "loaded",
    "spawn",
    "spawns",
    "servers",
    "psutil",
    "floor",
    "memory",
)

#: The targets: plugin on against off, and trivial tests against the floor.
RATIO_TARGET = 1.02
FLOOR_MARGIN = 0.015
MEMORY_TARGET_MIB = 2.0
#: "Flat": the on-minus-off peak RSS may grow at most this much from the small
#: suite to the large one (1 MiB over 18,000 extra tests is ~58 bytes a test).
FLAT_TOLERANCE_MIB = 1.0

TESTS_PER_MODULE = 500

OFF = ("-p", "no:nozombies")

PSUTIL_CONFTEST = """\
import psutil
import pytest

_ME = psutil.Process()


@pytest.fixture(autouse=True)
def _scan_children_like_psutil_checkers():
    # What a psutil-based checker does around every test: scan all processes.
    _ME.children()
    yield
    _ME.children()
"""


FLOOR_CONFTEST = """\
import os

import pytest


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    # A lower bound for this kind of check: after each test's teardown, one
    # hook call and the plugin's one non-reaping waitid (processes.children_now),
    # which raises ChildProcessError in a process with no child, as here.
    # No owner, no spawn record, no report.
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        pass
"""


SPAWNS_SUITE = """\
import os
import subprocess


def test_run_true_800_times():
    for _ in range(800):
        subprocess.run(["true"], check=True)


def test_fork_and_wait_800_times():
    for _ in range(800):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
"""

SERVERS_SUITE = """\
import subprocess

import pytest

SERVERS = []


@pytest.mark.parametrize("i", range(20))
def test_leaves_a_server_running(i):
    SERVERS.append(subprocess.Popen(["sleep", "30"]))


def test_zz_stops_the_servers():
    for server in SERVERS:
        server.kill()
        server.wait()
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- suites --------------------------------------------------------------------


def trivial_body(index: int) -> str:
    return f"def test_{index}():\n    pass\n\n\n"


def spawn_body(index: int) -> str:
    return f'def test_{index}():\n    subprocess.run(["true"], check=True)\n\n\n'


def write_suite(
    root: Path,
    tests: int,
    body: Callable[[int], str],
    header: str = "",
    conftest: str | None = None,
) -> Path:
    """Write ``tests`` tests into modules of ``TESTS_PER_MODULE`` each."""
    root.mkdir(parents=True)
    # Its own rootdir and ini, so no project configuration leaks in.
    (root / "pytest.ini").write_text("[pytest]\n")
    if conftest is not None:
        (root / "conftest.py").write_text(conftest)
    for start in range(0, tests, TESTS_PER_MODULE):
        stop = min(start + TESTS_PER_MODULE, tests)
        text = header + "".join(body(i) for i in range(start, stop))
        (root / f"test_m{start // TESTS_PER_MODULE:04d}.py").write_text(text)
    return root


# --- runs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    seconds: float
    #: User plus system CPU time of the pytest process: less sensitive than
    #: wall time to other people's work on a shared machine.
    cpu_seconds: float
    max_rss_kib: int


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The caller's pytest settings must not change what is measured.
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(name, None)
    # Installed packages come with compiled bytecode; a source checkout gets it
    # on the warm-up run. Without this, a machine that sets
    # PYTHONDONTWRITEBYTECODE would recompile the plugin (not pytest, whose
    # wheel brought its .pyc files) on every run and charge that to it.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def pytest_argv(suite: Path, extra: Sequence[str]) -> list[str]:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    return [*argv, *extra, str(suite)]


def run_pytest(suite: Path, extra: Sequence[str]) -> Run:
    """One whole pytest run in a fresh interpreter: wall time and peak RSS."""
    argv = pytest_argv(suite, extra)
    with tempfile.TemporaryFile() as output:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=suite, env=child_env(), stdout=output, stderr=output
        )
        try:
            # wait4 rather than proc.wait(): it also returns the child's rusage.
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            output.seek(0)
            tail = output.read()[-4000:].decode(errors="replace")
            raise RuntimeError(
                f"pytest exited with {proc.returncode}: {' '.join(argv)}\n{tail}"
            )
    rss = usage.ru_maxrss
    if sys.platform == "darwin":  # bytes there, KiB on Linux
        rss //= 1024
    return Run(seconds, usage.ru_utime + usage.ru_stime, rss)


@dataclass
class Result:
    """Paired runs of one scenario: ``variant`` against ``baseline``."""

    name: str
    tests: int
    load: str
    variant: str
    target: str = ""
    variant_runs: list[Run] = field(default_factory=list)
    baseline_runs: list[Run] = field(default_factory=list)
    #: (variant, baseline) CPU seconds of pairs run at once on one CPU.
    shared_cpu: list[tuple[float, float]] = field(default_factory=list)
    met: bool | None = None

    @property
    def ratios(self) -> list[float]:
        return [
            v.seconds / b.seconds
            for v, b in zip(self.variant_runs, self.baseline_runs, strict=True)
        ]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def cpu_ratio(self) -> float:
        return statistics.median(
            v.cpu_seconds / b.cpu_seconds
            for v, b in zip(self.variant_runs, self.baseline_runs, strict=True)
        )

    @property
    def shared_cpu_ratio(self) -> float | None:
        if not self.shared_cpu:
            return None
        return statistics.median(v / b for v, b in self.shared_cpu)

    def median_seconds(self, runs: list[Run]) -> float:
        return statistics.median(r.seconds for r in runs)

    def peak_mib(self, runs: list[Run]) -> float:
        return max(r.max_rss_kib for r in runs) / 1024

    @property
    def rss_delta_mib(self) -> float:
        # Median of per-pair differences: robust against one odd run.
        return statistics.median(
            (v.max_rss_kib - b.max_rss_kib) / 1024
            for v, b in zip(self.variant_runs, self.baseline_runs, strict=True)
        )

    @property
    def overhead_us_per_test(self) -> float:
        variant = self.median_seconds(self.variant_runs)
        baseline = self.median_seconds(self.baseline_runs)
        return (variant - baseline) / self.tests * 1e6


def paired(
    result: Result,
    pairs: int,
    variant: Callable[[], Run],
    baseline: Callable[[], Run],
) -> Result:
    """Warm up once each, then run ``pairs`` pairs in alternating order."""
    log(f"[{result.name}] warm-up")
    variant()
    baseline()
    for i in range(pairs):
        order = (variant, baseline) if i % 2 == 0 else (baseline, variant)
        runs = [step() for step in order]
        v, b = runs if i % 2 == 0 else runs[::-1]
        result.variant_runs.append(v)
        result.baseline_runs.append(b)
        log(
            f"[{result.name}] pair {i + 1}/{pairs}: {result.variant} "
            f"{v.seconds:.3f}s, off {b.seconds:.3f}s, ratio {v.seconds / b.seconds:.3f}"
        )
    return result


#: A suite and the extra pytest arguments of one side of a comparison.
Side: TypeAlias = tuple[Path, Sequence[str]]


def shared_cpu_pair(first: Side, second: Side) -> tuple[float, float]:
    """Run two pytest runs at the same time on one CPU; their CPU seconds.

    Both share whatever the machine does meanwhile (a neighbour on the host,
    frequency changes), which on a virtual machine swings a run's time by
    tens of percent from one run to the next; taking turns on one CPU, each
    run's CPU time counts only its own work. The CPU time includes children
    it waited for, as ``os.wait4`` reports it.
    """
    cpu = min(os.sched_getaffinity(0))
    mine = os.sched_getaffinity(0)
    procs = []
    os.sched_setaffinity(0, {cpu})  # inherited by both runs, and only by them
    try:
        for suite, extra in (first, second):
            procs.append(
                subprocess.Popen(
                    pytest_argv(suite, extra),
                    cwd=suite,
                    env=child_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    finally:
        os.sched_setaffinity(0, mine)
    cpu_seconds = []
    try:
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"pytest exited with {proc.returncode}: {proc.args!r}"
                )
            cpu_seconds.append(usage.ru_utime + usage.ru_stime)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
    return cpu_seconds[0], cpu_seconds[1]


def shared_cpu_pairs(result: Result, variant: Side, baseline: Side, pairs: int) -> None:
    """``pairs`` runs of both sides sharing one CPU, the starter swapped."""
    if pairs <= 0 or not hasattr(os, "sched_setaffinity"):
        return
    for i in range(pairs):
        if i % 2 == 0:
            variant_cpu, baseline_cpu = shared_cpu_pair(variant, baseline)
        else:
            baseline_cpu, variant_cpu = shared_cpu_pair(baseline, variant)
        result.shared_cpu.append((variant_cpu, baseline_cpu))
        log(
            f"[{result.name}] shared-CPU pair {i + 1}/{pairs}: {result.variant} "
            f"{variant_cpu:.3f}s CPU, baseline {baseline_cpu:.3f}s CPU, "
            f"ratio {variant_cpu / baseline_cpu:.3f}"
        )


def plugin_on_off(
    name: str,
    suite: Path,
    tests: int,
    load: str,
    pairs: int,
    target: str,
    shared_pairs: int = 0,
) -> Result:
    result = Result(name, tests, load, "on", target)
    paired(result, pairs, lambda: run_pytest(suite, ()), lambda: run_pytest(suite, OFF))
    shared_cpu_pairs(result, (suite, ()), (suite, OFF), shared_pairs)
    return result


# --- idle processes that are not pytest's children -------------------------------


@contextlib.contextmanager
def idle_processes(count: int) -> Iterator[int]:
    """``count`` idle processes on the machine, children of this script only.

    Each is ``cat`` reading one pipe whose only writer is this script, so they
    all exit on end-of-file even if this script is killed outright.
    """
    read_fd, write_fd = os.pipe()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log(f"starting {count} idle processes")
        for _ in range(count):
            procs.append(
                subprocess.Popen(
                    ["cat"],
                    stdin=read_fd,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C is ours to handle
                )
            )
        os.close(read_fd)
        read_fd = -1
        yield len(procs)
    finally:
        if read_fd >= 0:
            os.close(read_fd)
        os.close(write_fd)
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.kill()
        for proc in procs:
            proc.wait()
        log(f"stopped {len(procs)} idle processes")


def count_processes() -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


# --- the machine ------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def plugin_location() -> str:
    """Where the pytest children import the plugin from (PYTHONPATH counts)."""
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pytest_nozombies; print(pytest_nozombies.__file__)",
        ],
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "not importable"


def machine_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"CPU: {cpu_model()}; {os.cpu_count()} cores; "
        f"{platform.system()} {platform.release()}; "
        f"Python {platform.python_version()} ({platform.python_implementation()}); "
        f"pytest {version('pytest')}; pytest-nozombies {version('pytest-nozombies')} "
        f"from {plugin_location()}; "
        f"psutil {version('psutil')}; other pytest plugins: {other_plugins()}; "
        f"load average at start {load}; {count_processes()} processes at start"
    )


def other_plugins() -> str:
    """Installed pytest plugins besides this one: they run in both sides."""
    names = sorted(
        {
            ep.name
            for ep in importlib.metadata.entry_points(group="pytest11")
            if ep.name != "nozombies"
        }
    )
    return ", ".join(names) or "none"


# --- report -----------------------------------------------------------------------


def verdict(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "**no**")


def table(results: list[Result]) -> str:
    lines = [
        "| scenario | tests | load | pairs | median off (s) | median variant (s) "
        "| median ratio (min-max) | CPU ratio | shared-CPU ratio (pairs) "
        "| cost per test (µs) "
        "| peak RSS off / variant (MiB) | RSS Δ (MiB) | target | met |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        ratios = r.ratios
        shared = r.shared_cpu_ratio
        shared_text = "" if shared is None else f"{shared:.3f} ({len(r.shared_cpu)})"
        lines.append(
            f"| {r.name} | {r.tests:,} | {r.load} | {len(ratios)} "
            f"| {r.median_seconds(r.baseline_runs):.3f} "
            f"| {r.median_seconds(r.variant_runs):.3f} "
            f"| {r.ratio:.3f} ({min(ratios):.3f}-{max(ratios):.3f}) "
            f"| {r.cpu_ratio:.3f} | {shared_text} "
            f"| {r.overhead_us_per_test:,.0f} "
            f"| {r.peak_mib(r.baseline_runs):.1f} / {r.peak_mib(r.variant_runs):.1f} "
            f"| {r.rss_delta_mib:+.2f} | {r.target} | {verdict(r.met)} |"
        )
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Scenarios: " + ", ".join(SCENARIOS) + ". See benchmarks/README.md.",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset of: %(default)s",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few pairs (about a minute); indicative only",
    )
    parser.add_argument("--pairs", type=int, help="paired runs per scenario (15)")
    parser.add_argument(
        "--shared-pairs",
        type=int,
        help="pairs run at once on one CPU, for the shared-CPU ratio (7; 0: none)",
    )
    parser.add_argument("--tests", type=int, help="tests per suite (2000)")
    parser.add_argument(
        "--idle-processes",
        type=int,
        help="idle processes started for the loaded scenarios (2000)",
    )
    parser.add_argument(
        "--reference-tests",
        type=int,
        help="tests in the psutil reference suite (200: a psutil scan under load "
        "costs tens of ms, so 2,000 tests would take minutes per run)",
    )
    parser.add_argument(
        "--reference-pairs", type=int, help="paired runs of the psutil reference (3)"
    )
    parser.add_argument(
        "--large-tests", type=int, help="tests in the large memory suite (20000)"
    )
    parser.add_argument(
        "--large-pairs", type=int, help="paired runs of the large memory suite (3)"
    )
    parser.add_argument("--output", type=Path, help="also write the report here")
    parser.add_argument(
        "--fail-on-miss",
        action="store_true",
        help="exit with status 1 if a target is missed",
    )
    args = parser.parse_args(argv)
    defaults = (
        {"pairs": 3, "tests": 500, "idle_processes": 500, "reference_tests": 50}
        | {"reference_pairs": 1, "large_tests": 5000, "large_pairs": 1}
        | {"shared_pairs": 2}
        if args.quick
        else {"pairs": 15, "tests": 2000, "idle_processes": 2000, "shared_pairs": 7}
        | {"reference_tests": 200, "reference_pairs": 3}
        | {"large_tests": 20000, "large_pairs": 3}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {SCENARIOS}")
    args.scenarios = chosen
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Result], list[str]]:
    wanted = set(args.scenarios)
    n = args.tests

    results: list[Result] = []
    notes: list[str] = []

    def ratio_scenario(name: str, suite: Path, load: str) -> Result:
        """Plugin on against off, judged by the ratio target."""
        result = plugin_on_off(
            name,
            suite,
            n,
            load,
            args.pairs,
            f"ratio ≤ {RATIO_TARGET}",
            args.shared_pairs,
        )
        result.met = result.ratio <= RATIO_TARGET
        results.append(result)
        return result

    trivial = write_suite(workdir / "trivial", n, trivial_body)
    reference = None
    if "psutil" in wanted:
        reference = write_suite(
            workdir / "psutil",
            args.reference_tests,
            trivial_body,
            conftest=PSUTIL_CONFTEST,
        )
        reference_off = write_suite(
            workdir / "psutil-off", args.reference_tests, trivial_body
        )

    def psutil_reference(load: str) -> None:
        assert reference is not None
        result = Result(
            f"psutil scan per test ({load})",
            args.reference_tests,
            load,
            "psutil",
        )
        results.append(
            paired(
                result,
                args.reference_pairs,
                lambda: run_pytest(reference, OFF),
                lambda: run_pytest(reference_off, OFF),
            )
        )

    memory_small: Result | None = None
    if "trivial" in wanted:
        memory_small = ratio_scenario("trivial tests", trivial, "idle")
    if "spawn" in wanted:
        spawn = write_suite(
            workdir / "spawn", n, spawn_body, header="import subprocess\n\n\n"
        )
        ratio_scenario("spawn and wait per test", spawn, "idle")
    if "spawns" in wanted:
        # 1,600 spawns in two tests: what recording a spawn costs beside the
        # spawn itself. CPU time includes the children the run waited for.
        suite = workdir / "spawns"
        suite.mkdir()
        (suite / "pytest.ini").write_text("[pytest]\n")
        (suite / "test_spawns.py").write_text(SPAWNS_SUITE)
        result = plugin_on_off(
            "800 runs and 800 forks in two tests",
            suite,
            2,
            "idle",
            args.pairs,
            f"CPU ratio ≤ {RATIO_TARGET}",
            args.shared_pairs,
        )
        result.met = result.cpu_ratio <= RATIO_TARGET
        results.append(result)
    if "servers" in wanted:
        # Twenty tests that each leave a child asleep for later tests: the
        # grace period must cost them nothing (it can change no verdict).
        suite = workdir / "servers"
        suite.mkdir()
        (suite / "pytest.ini").write_text("[pytest]\n")
        (suite / "test_servers.py").write_text(SERVERS_SUITE)
        result = plugin_on_off(
            "20 tests leave `sleep 30` running",
            suite,
            21,
            "idle",
            args.pairs,
            "on within 1 s of off",
        )
        slower = result.median_seconds(result.variant_runs) - result.median_seconds(
            result.baseline_runs
        )
        result.met = slower <= 1.0
        results.append(result)
    if "psutil" in wanted:
        psutil_reference("idle")
    if "floor" in wanted and not hasattr(os, "waitid"):
        notes.append("Floor: skipped, this Python has no `os.waitid`.")
    elif "floor" in wanted:
        # What pytest's hook call and CPython's ChildProcessError alone cost
        # per test. Both sides run from one folder, so that only the conftest
        # differs (see README.md on path lengths).
        floor = write_suite(workdir / "floor", n, trivial_body, conftest=FLOOR_CONFTEST)
        bare = (floor, OFF)
        without = (floor, (*OFF, "--noconftest"))
        result = Result("bare check per test (floor)", n, "idle", "floor")
        paired(
            result,
            args.pairs,
            lambda: run_pytest(*bare),
            lambda: run_pytest(*without),
        )
        shared_cpu_pairs(result, bare, without, args.shared_pairs)
        results.append(result)
        trivial_result = next((r for r in results if r.name == "trivial tests"), None)
        floor_shared = result.shared_cpu_ratio
        if trivial_result is not None and floor_shared is not None:
            plugin_shared = trivial_result.shared_cpu_ratio
            if plugin_shared is not None:
                above = plugin_shared - floor_shared
                result.target = f"trivial within {FLOOR_MARGIN:.1%} of it"
                result.met = above <= FLOOR_MARGIN
                notes.append(
                    f"Floor: trivial tests {plugin_shared:.3f}, floor "
                    f"{floor_shared:.3f} (shared-CPU ratios): the plugin is "
                    f"{above:+.1%} above the floor."
                )
    if "memory" in wanted:
        if memory_small is None:
            memory_small = plugin_on_off(
                "trivial tests", trivial, n, "idle", args.pairs, ""
            )
            results.append(memory_small)
        memory_small.target = (
            f"{memory_small.target}; RSS Δ ≤ {MEMORY_TARGET_MIB:g} MiB".lstrip("; ")
        )
        rss_ok = memory_small.rss_delta_mib <= MEMORY_TARGET_MIB
        memory_small.met = rss_ok and memory_small.met is not False
        large = write_suite(workdir / "large", args.large_tests, trivial_body)
        big = plugin_on_off(
            "trivial tests, large (memory)",
            large,
            args.large_tests,
            "idle",
            args.large_pairs,
            f"RSS Δ within {FLAT_TOLERANCE_MIB:g} MiB of the {n:,}-test run",
        )
        growth = big.rss_delta_mib - memory_small.rss_delta_mib
        big.met = growth <= FLAT_TOLERANCE_MIB
        per_test = growth * 1024 * 1024 / max(args.large_tests - n, 1)
        notes.append(
            f"Memory: plugin-on minus plugin-off peak RSS is "
            f"{memory_small.rss_delta_mib:+.2f} MiB at {n:,} tests and "
            f"{big.rss_delta_mib:+.2f} MiB at {args.large_tests:,} tests: "
            f"{growth:+.2f} MiB, {per_test:+.1f} bytes per extra test."
        )
        results.append(big)
    if wanted & {"loaded", "psutil"}:
        with idle_processes(args.idle_processes) as started:
            load = f"{started:,} idle processes"
            notes.append(
                f"Loaded scenarios: {started:,} idle `cat` processes (not children "
                f"of pytest); {count_processes():,} processes on the machine."
            )
            if "loaded" in wanted:
                ratio_scenario("trivial tests", trivial, load)
            if "psutil" in wanted:
                psutil_reference(load)
    return results, notes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    started = datetime.datetime.now().astimezone()
    machine = machine_line()
    log(machine)
    with tempfile.TemporaryDirectory(prefix="nozombies-bench-") as tmp:
        try:
            results, notes = run(args, Path(tmp))
        except KeyboardInterrupt:
            log("interrupted")
            return 130
    took = (datetime.datetime.now().astimezone() - started).total_seconds()
    mode = "quick" if args.quick else "full"
    report = "\n".join(
        [
            f"Run: {started:%Y-%m-%d %H:%M %Z}, {mode} mode, {took:.0f} s.",
            "",
            f"Machine: {machine}.",
            "",
            table(results),
            "",
            *(f"- {note}" for note in notes),
            "- Ratio: median over pairs of (variant time / plugin-off time), "
            "whole pytest runs. Cost per test: (median variant - median off) / "
            "tests. Variant is plugin on; for the psutil rows, plugin off plus "
            "a psutil `children()` scan before and after each test; for the "
            "floor row, plugin off plus a conftest hook making one non-reaping "
            "`waitid` after each test. CPU ratio: "
            "the same for user+system CPU time of the pytest process, which "
            "other load on the machine disturbs less than wall time. "
            "Shared-CPU ratio: median over pairs of the CPU-time ratio of a "
            "variant run and a baseline run started together on one CPU, so "
            "that both see the same machine at the same moments (see "
            "README.md).",
        ]
    )
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")
    missed = [r for r in results if r.met is False]
    return 1 if missed and args.fail_on_miss else 0


if __name__ == "__main__":
    sys.exit(main())
