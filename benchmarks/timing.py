"""Clocks and memory: warm-up apart from timing, sync before every clock read, interleaved
repeats, and peak resident memory per row.

Method. Each row is set up, called once (the first call: tracing, compiling, allocating), then
warmed up. Timed repeats then go round-robin over all rows of a group (one shape, one
workload), so a slow spell of a shared machine falls on every row alike, with a short pause
before every block so the previous framework's worker threads stop spinning. A block is
``calls`` calls in a row with a device sync before both clock reads. On a shared machine a
block during which other processes took CPU time is thrown away and timed again when the
machine is quiet (``QuietGuard``): multi-threaded BLAS slows down many-fold when another
process holds a core, and a benchmark should not report that as the framework's speed.

Memory. Linux lets a process reset its own peak-RSS mark (``/proc/self/clear_refs``, 5). Before
each row's setup the freed heap is returned to the OS (``malloc_trim``) and the mark reset; the
row's ``peak_rss_mb`` is the mark after its first call and warm-up minus the RSS before setup:
the memory that row's workload needed at its peak above what the process already held.
"""

from __future__ import annotations

import ctypes
import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .machine import CpuMeter

PAUSE_S = 0.1  # before every timed block: idle OpenMP/OpenBLAS threads stop spinning by then


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """The resident set size now."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> float | None:
    """The high-water mark of the resident set since start or the last reset."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Set the peak-RSS mark to the current RSS; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass
class Timed:
    """A prepared row: its call, its sync, what it measured while being set up."""

    key: Any
    call: Callable[[], Any]
    sync: Callable[[Any], None]
    first_s: float
    warm_s: float  # median seconds per call during warm-up
    calls: int  # calls per timed block
    peak_rss_mb: float | None
    last: Any = None
    samples: list[float] = field(default_factory=list)  # seconds per call, one per block

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples) if self.samples else self.warm_s

    warm_total_s: float = 0.0  # the warm-up calls together (a retrace can land there)
    warm_calls: int = 0
    discarded: int = 0  # blocks thrown away: other processes were busy during them
    noisy: int = 0  # blocks kept although other processes were busy (no wait budget left)
    background: list[float] = field(default_factory=list)  # other processes' CPUs, kept blocks

    @property
    def compile_s(self) -> float:
        """What the first call and the warm-up took beyond as many steady calls: tracing,
        compiling (and any recompile) and first-touch allocation.

        A steady call is the warm-up's own (``warm_s``), not the timed median: the warm-up runs
        right after the first call, under the same load, while timed blocks on a shared machine
        wait for quiet; against the quiet median a busy first call and warm-up would read as
        seconds of "compile" in code that compiles nothing."""
        spent = self.first_s + self.warm_total_s
        return max(0.0, spent - (1 + self.warm_calls) * self.warm_s)


def prepare(
    key: Any,
    build: Callable[[], tuple[Callable[[], Any], Callable[[Any], None]]],
    min_time: float,
    warmup_time: float,
) -> Timed:
    """Build a row, time its first call, warm it up, and size its timed blocks."""
    release_memory()
    rss0 = rss_mb()
    can_reset = reset_peak_rss()
    peak0 = peak_rss_mb()
    t0 = time.perf_counter()
    call, sync = build()
    out = call()
    sync(out)
    first = time.perf_counter() - t0
    times: list[float] = []
    spent = 0.0
    while len(times) < 3 or spent < warmup_time:
        t0 = time.perf_counter()
        out = call()
        sync(out)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    warm = statistics.median(times[1:][-5:])  # the first warm-up call may still retrace
    peak = peak_rss_mb()
    if peak is None or rss0 is None:
        grown = None
    elif can_reset:
        grown = max(0.0, peak - rss0)
    else:  # only growth beyond the process's earlier peak is visible
        grown = max(0.0, peak - (peak0 or peak))
    calls = max(1, math.ceil(min_time / warm)) if warm > 0 else 1
    timed = Timed(key, call, sync, first, warm, calls, grown, last=out)
    timed.warm_total_s, timed.warm_calls = spent, len(times)
    return timed


@dataclass
class QuietGuard:
    """Keeps timed blocks off other processes' CPU time on a shared machine.

    A block during which other processes kept more than ``threshold`` CPUs busy is thrown away
    and timed again once the machine has been quiet for a moment; waiting stops for good when
    ``budget_s`` is spent, and later blocks are kept as they come (and counted as noisy). With
    ``budget_s`` 0 it never waits and only counts: a busy machine is never hidden.
    """

    threshold: float = 0.25
    budget_s: float = 600.0
    retries: int = 3
    waited_s: float = 0.0
    discarded: int = 0
    noisy: int = 0
    # told the other processes' CPUs after each busy window, and None when the wait ends
    on_wait: Callable[[float | None], None] | None = None

    @property
    def spent(self) -> bool:
        """The wait budget is gone (with ``budget_s`` 0 it never existed)."""
        return self.waited_s >= self.budget_s

    def wait_quiet(self, window: float = 0.5) -> None:
        """Sleep in ``window`` steps until a whole window is quiet (or the budget is gone)."""
        waited = False
        while self.waited_s < self.budget_s:
            meter = CpuMeter()
            time.sleep(window)
            self.waited_s += window
            busy = meter.read()
            if busy is None or busy["other_cpus"] <= self.threshold:
                break
            waited = True
            if self.on_wait is not None:
                self.on_wait(busy["other_cpus"])
        if waited and self.on_wait is not None:
            self.on_wait(None)


def _one_block(row: Timed, pause: float) -> float:
    if pause:
        time.sleep(pause)
    row.sync(row.last)
    t0 = time.perf_counter()
    out = None
    for _ in range(row.calls):
        out = row.call()
    row.sync(out)
    dt = (time.perf_counter() - t0) / row.calls
    row.last = out
    return dt


def time_block(row: Timed, pause: float = PAUSE_S, guard: QuietGuard | None = None) -> float:
    """Seconds per call over one block of ``row.calls`` calls, synced at both clock reads."""
    attempt = 0
    while True:
        meter = CpuMeter()
        dt = _one_block(row, pause)
        busy = meter.read()
        if busy is not None:
            row.background.append(busy["other_cpus"])
        if guard is None or busy is None or busy["other_cpus"] <= guard.threshold:
            break
        if attempt >= guard.retries or guard.spent:
            guard.noisy += 1
            row.noisy += 1
            break
        attempt += 1
        row.background.pop()  # only kept blocks count
        guard.discarded += 1
        row.discarded += 1
        guard.wait_quiet()
    row.samples.append(dt)
    return dt


def run_interleaved(
    rows: Sequence[Timed],
    repeats: int,
    pause: float = PAUSE_S,
    guard: QuietGuard | None = None,
    on_block: Callable[[Timed, int], None] | None = None,
) -> None:
    """``repeats`` rounds; each round times one block of every row, in order. ``on_block`` is
    told each kept block's row and round (from 1)."""
    for repeat in range(1, repeats + 1):
        for row in rows:
            time_block(row, pause, guard)
            if on_block is not None:
                on_block(row, repeat)
