"""One benchmark run in one process: threads, frameworks, roofline, the groups of rows, targets.

What it is doing goes to ``BenchConfig.log`` as lines, and on a terminal also as a progress bar
that names the row being compiled or timed and, while the run waits for other processes to go
quiet, how many CPUs they are using.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from rosetta_rnn import backends
from rosetta_rnn.core.cells import RNN
from rosetta_rnn.core.data import cache_dir
from rosetta_rnn.core.display import Progress
from rosetta_rnn.core.errors import BackendUnavailable, UserError, first_line

from . import machine, report, roofline, targets, threads, timing
from . import peers as peers_mod
from .peers import PEER_CELL, PEER_FRAMEWORK, PEER_NAMES, PEERS
from .workloads import (
    D2L,
    GATED_HIDDENS,
    Case,
    Shape,
    backend_cases,
    compile_modes,
    peer_cases,
    replica_cases,
)

SWEEP_STEPS = (5, 10, 20, 35, 70, 140)
SWEEP_HIDDENS = (64, 128, 256, 512, 1024)
SWEEP_WORKLOADS = ("train", "forward")  # generation does not depend on num_steps
BUSY_CPUS = 0.25  # background load (CPUs) above which the results get a warning note
INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"


@dataclass
class BenchConfig:
    """What ``rosetta-rnn bench`` was asked for."""

    backends: list[str] = field(default_factory=lambda: list(backends.BACKENDS))
    explicit_backends: bool = False  # asked for by name: a missing framework is an error
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    workloads: list[str] = field(default_factory=lambda: list(roofline.WORKLOADS))
    cells: list[str] = field(default_factory=lambda: [RNN])  # core's names
    shape: Shape = D2L  # the RNN's main shape (d2l 8.5)
    gated_hiddens: int = GATED_HIDDENS  # num_hiddens of the gated cells' (d2l 9.1/9.2)
    sweep: bool = True
    sweep_steps: tuple[int, ...] = SWEEP_STEPS
    sweep_hiddens: tuple[int, ...] = SWEEP_HIDDENS
    repeats: int = 5
    min_time: float = 0.25  # seconds per timed block
    peers: bool = True
    modes: str = "all"  # one of workloads.MODES
    threads: int = field(default_factory=threads.available_cpus)
    log: TextIO | None = None  # progress lines go here
    debug: bool = False  # print the traceback of a row that fails
    max_wait: float = 600.0  # seconds the run may wait for other processes to go quiet
    cold_compile: bool = False  # torch.compile from an empty cache (else the persistent one)
    quick: bool = False  # chosen by --quick (recorded in the document)
    replicas: tuple[int, ...] = ()  # data-parallel replica counts for the "replicas" rows

    def shape_of(self, cell: str) -> Shape:
        """The main shape of ``cell``: the RNN's, or the gated cells' num_hiddens."""
        return self.shape if cell == RNN else replace(self.shape, num_hiddens=self.gated_hiddens)

    def workloads_of(self, cell: str) -> list[str]:
        """The workloads timed for ``cell``: every one asked for (the sweeps are the RNN's)."""
        return list(self.workloads)


class _Log:
    """Lines to ``out``; on a terminal also a bar saying what is done or waited for now."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.bar: Progress | None = None
        self.now = ""  # what the bar says is being done (restored after a wait)

    @contextmanager
    def showing(self, what: str) -> Iterator[_Log]:
        with Progress(
            what, total=None, unit="steps", stream=self.out, enabled=self._on(), auto_refresh=False
        ) as bar:
            self.bar, self.now = bar, what
            try:
                yield self
            finally:
                self.bar = None

    def _on(self) -> bool | None:
        return False if self.out is None else None  # None: a bar where out is a terminal

    def __call__(self, text: str) -> None:
        if self.out is None:
            return
        if self.bar is not None:
            self.bar.say(text, out=self.out)
        else:
            print(text, file=self.out, flush=True)

    def doing(self, what: str, total: int | None = None) -> None:
        """Say what is being done now; with ``total`` the count of steps starts again."""
        self.now = what
        if self.bar is not None:
            self.bar.describe(what, total=total, reset=total is not None)

    def waiting(self, what: str) -> None:
        """Say what is waited for, until the next ``doing`` or ``done_waiting``."""
        if self.bar is not None:
            self.bar.describe(what)

    def done_waiting(self) -> None:
        if self.bar is not None:
            self.bar.describe(self.now)

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self.bar is not None and n:
            self.bar.advance(n, info=info)


def compile_cache(cold: bool) -> dict[str, Any]:
    """Point torch.compile's inductor cache (``$TORCHINDUCTOR_CACHE_DIR``) at a folder for this
    process, before torch compiles anything; called when a run starts, never at import.

    By default the folder persists: the user's own ``$TORCHINDUCTOR_CACHE_DIR``, else
    ``torchinductor`` in rosetta-rnn's cache folder (``core.data.cache_dir``), so only the first
    run pays a cold build (20-25 s a mode on a quiet 2-core CPU; warm, dynamo's tracing is most
    of what is left, a tenth of that). ``cold``: a fresh temporary folder, removed at exit, to
    measure cold builds. Returns what was chosen."""
    path, reason = None, "--cold-compile" if cold else None
    if not cold:
        path = os.environ.get(INDUCTOR_ENV) or str(cache_dir() / "torchinductor")
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            path, reason = None, f"{path} cannot be created ({e.strerror or e})"
    if path is None:
        path = tempfile.mkdtemp(prefix="bench-inductor-")
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ[INDUCTOR_ENV] = path
    warm = any(Path(path).iterdir())
    return {"torchinductor": path, "persistent": reason is None, "warm": warm, "why_cold": reason}


def roofline_summary(entry: dict[str, Any]) -> str:
    """One readable line: the peak per framework and the roofline per workload."""
    by_fw = ", ".join(f"{k} {v:.1f}" for k, v in entry["peak_gflops_by_framework"].items())
    roof = ", ".join(f"{w} {v:,.0f}" for w, v in entry["tokens_per_sec"].items())
    return f"peak {entry['peak_gflops']:.1f} GFLOP/s ({by_fw}); roofline tokens/s: {roof}"


def _load_frameworks(
    cfg: BenchConfig, notes: list[str], log: _Log
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Import each backend's framework (measuring what the import adds to RSS) and set threads."""
    import numpy as np

    frameworks: dict[str, dict[str, Any]] = {
        "numpy": {"version": np.__version__, "import_rss_mb": None}
    }
    loaded = []
    for name in cfg.backends:
        log.doing(f"importing {name}")
        rss0 = timing.rss_mb()
        try:
            mod = backends.load(name)
        except BackendUnavailable as e:
            if cfg.explicit_backends:
                raise
            notes.append(f"skipped backend {name}: {e}")
            log(f"skipped backend {name}: {e}")
            continue
        if cfg.replicas and name in backends.REPLICA_BACKENDS:
            # JAX and TensorFlow make their CPU devices once, before their first operation
            backends.replica_backend(name, mod, max(cfg.replicas))
        info: dict[str, Any] = {"version": mod.version()}
        if cfg.peers:
            info.update(peers_mod.library_versions(name, notes))
        rss1 = timing.rss_mb()
        if rss0 is not None and rss1 is not None:
            info["import_rss_mb"] = round(rss1 - rss0, 1)
        info["threads"] = mod.set_threads(cfg.threads)
        frameworks[name] = {**frameworks.get(name, {}), **info}
        loaded.append(name)
    return loaded, frameworks


def check_environments(peer_names: list[str]) -> None:
    """Every environment of its own that a chosen peer runs in (the Gluon peers': MXNet's) is
    set up; one that is not is a one-line error saying how to set it up, before anything is
    measured, never a peer left out."""
    from rosetta_rnn.backends import environments

    for env in dict.fromkeys(PEERS[p].environment for p in peer_names):
        if env is not None:
            environments.python(env)  # BackendUnavailable: "... rosetta-rnn backends --setup"


def _devices(cfg: BenchConfig, loaded: list[str], notes: list[str]) -> dict[str, list[str]]:
    """Each backend's resolved devices, before anything is measured. A device some backends
    lack is a note; a device asked for (gpu, gpu:N) that no backend has is a one-line error."""
    out: dict[str, list[str]] = {name: [] for name in loaded}
    for dev in cfg.devices:
        missing = []
        for name in loaded:
            mod = backends.load(name)
            try:
                labels = mod.devices() if dev == "all" else [mod.resolve_device(dev)]
            except BackendUnavailable as e:
                missing.append(f"{name}: {e}")
                continue
            out[name] += [d for d in labels if d not in out[name]]
        if len(missing) == len(loaded):
            raise UserError(f"no backend runs on {dev}: {'; '.join(missing)}")
        notes += [f"skipped on {dev}: {m}" for m in missing]
    return out


def _groups(
    cfg: BenchConfig, devices: dict[str, list[str]], peer_names: list[str]
) -> list[tuple[str, list[Case]]]:
    """Groups of cases timed together: one per (dtype, device, cell, workload, shape). The
    main shapes of every cell come first, then the RNN's sweeps."""
    groups: list[tuple[str, list[Case]]] = []
    all_devices = list(dict.fromkeys(d for devs in devices.values() for d in devs))

    def cases_for(
        dtype: str,
        device: str,
        shape: Shape,
        workload: str,
        modes: str,
        sweep: str | None,
        cell: str = RNN,
    ) -> list[Case]:
        cases: list[Case] = []
        for name, devs in devices.items():
            if device in devs:
                cases += backend_cases(name, device, dtype, shape, [workload], modes, sweep, cell)
        for peer in peer_names:
            fw = PEER_FRAMEWORK[peer]
            if PEER_CELL[peer] != cell or device not in devices.get(fw, []):
                continue
            if dtype not in PEERS[peer].dtypes:
                continue
            if device == "cpu" or not PEERS[peer].cpu_only:
                cases += peer_cases(peer, device, dtype, shape, [workload], sweep)
        return cases

    for dtype in cfg.dtypes:
        for device in all_devices:
            for cell in cfg.cells:
                shape = cfg.shape_of(cell)
                for workload in cfg.workloads_of(cell):
                    label = f"{workload} {cell} {dtype} {device} {_shape_label(shape)}"
                    cases = cases_for(dtype, device, shape, workload, cfg.modes, None, cell)
                    groups.append((label, cases))
            if cfg.replicas and RNN in cfg.cells and "train" in cfg.workloads:
                groups += _replica_groups(cfg, devices, dtype, device)
            if not cfg.sweep or RNN not in cfg.cells:
                continue
            sweeps: list[tuple[str, Shape]] = [
                ("num_steps", Shape(cfg.shape.batch_size, t, cfg.shape.num_hiddens))
                for t in cfg.sweep_steps
                if t != cfg.shape.num_steps
            ] + [
                ("num_hiddens", Shape(cfg.shape.batch_size, cfg.shape.num_steps, h))
                for h in cfg.sweep_hiddens
                if h != cfg.shape.num_hiddens
            ]
            for axis, shape in sweeps:
                for workload in cfg.workloads:
                    if workload in SWEEP_WORKLOADS:
                        label = f"{workload} rnn {dtype} {device} {_shape_label(shape)} (sweep)"
                        groups.append(
                            (label, cases_for(dtype, device, shape, workload, "default", axis))
                        )
    return [(label, cases) for label, cases in groups if cases]


def _replica_groups(
    cfg: BenchConfig, devices: dict[str, list[str]], dtype: str, device: str
) -> list[tuple[str, list[Case]]]:
    """The data-parallel rows: one group per replica count, the first with the one-device
    ``×1`` rows beside it. A process holds one torch.distributed group at a time, so the
    counts cannot share a group (whose rows are all built before any is timed)."""
    engines = [
        n for n, devs in devices.items() if n in backends.REPLICA_BACKENDS and device in devs
    ]
    groups = []
    for i, n in enumerate(cfg.replicas):
        cases = [
            case
            for name in engines
            for case in replica_cases(name, device, dtype, cfg.shape, (n,), one=i == 0)
        ]
        counts = f"×1 ×{n}" if i == 0 else f"×{n}"
        label = f"train rnn {dtype} {device} {_shape_label(cfg.shape)} (replicas {counts})"
        groups.append((label, cases))
    return groups


def _pause(cfg: BenchConfig) -> float:
    """The idle gap before each timed block: PAUSE_S, or less for very short blocks."""
    return min(timing.PAUSE_S, cfg.min_time)


def _shape_dict(shape: Shape) -> dict[str, int]:
    return {
        "batch_size": shape.batch_size,
        "num_steps": shape.num_steps,
        "num_hiddens": shape.num_hiddens,
        "vocab_size": shape.vocab_size,
    }


def _shape_label(shape: Shape) -> str:
    return f"B={shape.batch_size} T={shape.num_steps} H={shape.num_hiddens}"


def _is_default(case: Case) -> bool:
    """A backend's default mode (its first grad and compile mode), or any peer."""
    if case.backend == "peer":
        return True
    first = compile_modes(case.backend, case.workload)[0]
    if case.workload == "train":
        return case.mode == f"{backends.load(case.backend).GRAD_MODES[0]}/{first}"
    return case.mode == first


def _row(case: Case, timed: timing.Timed, peak_gflops: float | None) -> dict[str, Any]:
    s = timed.median_s
    shape = case.shape
    tokens_per_sec = case.tokens_per_call / s
    per_token = roofline.flops_per_token(case.workload, *shape.astuple(), cell=case.cell)
    gflops = tokens_per_sec * per_token / 1e9
    per_step = 1e3 / case.steps_per_call
    return {
        "name": case.name,
        "backend": case.backend,
        "cell": case.cell,
        "device": case.device,
        "dtype": case.dtype,
        "mode": case.mode,
        "workload": case.workload,
        "batch_size": shape.batch_size if case.workload != "generate" else 1,
        "num_steps": shape.num_steps,
        "num_hiddens": shape.num_hiddens,
        "tokens_per_sec": tokens_per_sec,
        "ms_per_step": s * per_step,
        "ms_min": min(timed.samples) * per_step,
        "ms_max": max(timed.samples) * per_step,
        "repeats": len(timed.samples),
        "calls_per_repeat": timed.calls,
        "compile_s": timed.compile_s if case.compiles else None,  # None: compiles nothing
        "first_call_s": timed.first_s,
        "peak_rss_mb": timed.peak_rss_mb,
        "gflops": gflops,
        "roofline_fraction": None if not peak_gflops else gflops / peak_gflops,
        "framework": case.framework,
        "default_mode": _is_default(case),
        "sweep": case.sweep,
        "replicas": case.replicas,
        "collective_ms": _collective_ms(case),
    }


def _path(case: Case) -> dict[str, Any]:
    """The path a peer's framework took (``benchmarks.kernels``); a failure to read it is said
    in the row, not fatal."""
    try:
        return dict(case.engine.pop("path")())
    except Exception as e:
        return {"error": first_line(e)}


def _collective_ms(case: Case) -> float | None:
    """The data-parallel step's mean time in its gradient all-reduce per step, over all its
    calls (warm-up included), where the framework can say; else None."""
    step, calls = case.engine.get("step"), case.engine.get("calls", 0)
    if step is None or not calls or math.isnan(step.collective_seconds):
        return None
    return float(step.collective_seconds) / calls * 1e3


def _close_engines(cases: list[Case]) -> None:
    """Release the data-parallel rows' engines (torch's processes and process group)."""
    for case in cases:
        step = case.engine.pop("step", None)
        if step is not None:
            step.close()
            machine.retire(step.worker_pids)


def _run_group(
    label: str,
    cases: list[Case],
    cfg: BenchConfig,
    peak_gflops: float | None,
    notes: list[str],
    log: _Log,
    guard: timing.QuietGuard,
    readings: list[float],
) -> list[dict[str, Any]]:
    """Prepare every row of one group, time them interleaved, and return their results; the
    other processes' CPUs during each kept block are added to ``readings``."""
    log(f"== {label}: {len(cases)} rows")
    prepared: list[tuple[Case, timing.Timed]] = []
    for case in cases:
        what = "compiling and warming up" if case.compiles else "first call and warm-up"
        log.doing(f"{case.name}: {what} ({label})")
        try:
            timed = timing.prepare(case, case.build, cfg.min_time, cfg.min_time)
        except Exception as e:  # a mode that fails here is reported, not fatal
            first = first_line(e)
            where = f"{case.workload}, {case.cell}, {_shape_label(case.shape)}"
            notes.append(f"{case.name} ({where}) failed: {first}")
            log(f"   {case.name}: FAILED: {first}")
            if log.out is not None and cfg.debug:
                traceback.print_exc(file=log.out)
            log.advance()
            continue
        extra = f", compile {timed.compile_s:.2f} s" if case.compiles else ""
        log(f"   ready {case.name} (first call {timed.first_s:.2f} s{extra})")
        log.advance()
        prepared.append((case, timed))

    def on_block(row: timing.Timed, repeat: int) -> None:
        log.doing(f"timing {label}: repeat {repeat} of {cfg.repeats}")
        bg = row.background[-1] if row.background else None
        busy = bg is not None and bg > guard.threshold
        log.advance(info=f"machine busy: others use {bg:.2f} CPUs" if busy else "")

    log.doing(f"timing {label}: repeat 1 of {cfg.repeats}")
    timing.run_interleaved([t for _, t in prepared], cfg.repeats, _pause(cfg), guard, on_block)
    log.advance(n=cfg.repeats * (len(cases) - len(prepared)))  # failed rows time nothing
    rows = []
    for case, timed in prepared:
        row = _row(case, timed, peak_gflops)
        if "path" in case.engine and case.sweep is None:  # after the timing: it runs once more
            row["path"] = _path(case)
        bg = timed.background  # CPUs other processes used during this row's kept blocks
        readings += bg
        row["background_cpus"] = round(sum(bg) / len(bg), 2) if bg else None
        row["discarded_repeats"] = timed.discarded
        row["noisy_repeats"] = timed.noisy
        busy = f"  busy: others used {max(bg):.2f} CPUs" if timed.noisy else ""
        log(
            f"   {case.name:34s} {row['tokens_per_sec']:11,.0f} tokens/s "
            f"{row['ms_per_step']:9.3f} ms  spread {report.spread(row, why=True)}{busy}"
        )
        rows.append(row)
    return rows


def _measure_roofline(
    cfg: BenchConfig, frameworks: list[str], dtype: str, device: str
) -> dict[str, Any]:
    """Peak matmul GFLOP/s on ``device`` (best framework), the tokens/s it bounds per workload,
    and the training step's own matmuls timed alone (the floor for op-by-op code); with the
    CPUs other processes used meanwhile."""
    meter = machine.CpuMeter()
    size = roofline.peak_size(device)
    peak = roofline.measure_peak(frameworks, dtype, size, device=device)
    best = max(peak.values())
    entry: dict[str, Any] = {
        "device": device,
        "peak_gflops": best,
        "peak_gflops_by_framework": peak,
        "matmul_size": size,
        "flops_per_token": {
            w: roofline.flops_per_token(w, *cfg.shape.astuple()) for w in cfg.workloads
        },
        "tokens_per_sec": {
            w: roofline.roofline_tokens_per_sec(best * 1e9, w, *cfg.shape.astuple())
            for w in cfg.workloads
        },
    }
    entry["cells"] = {
        cell: _cell_roofline(best, cfg.shape_of(cell), cfg.workloads_of(cell), cell)
        for cell in cfg.cells
    }
    if "train" in cfg.workloads and RNN in cfg.cells:
        entry["matmul_floor"] = roofline.measure_matmul_floor(
            frameworks, dtype, *cfg.shape.astuple(), device=device
        )
    busy = meter.read()
    entry["background_cpus"] = None if busy is None else busy["other_cpus"]
    return entry


def _cell_roofline(
    peak_gflops: float, shape: Shape, workloads: list[str], cell: str
) -> dict[str, Any]:
    """One cell's main shape, FLOPs per token and roofline tokens/s per workload."""
    dims = shape.astuple()
    return {
        "num_hiddens": shape.num_hiddens,
        "flops_per_token": {w: roofline.flops_per_token(w, *dims, cell=cell) for w in workloads},
        "tokens_per_sec": {
            w: roofline.roofline_tokens_per_sec(peak_gflops * 1e9, w, *dims, cell=cell)
            for w in workloads
        },
    }


def _roofline(
    cfg: BenchConfig,
    frameworks: list[str],
    dtype: str,
    device: str,
    guard: timing.QuietGuard,
    log: _Log,
) -> dict[str, Any]:
    """``_measure_roofline`` once the machine is quiet (or the wait budget is spent)."""
    log(f"measuring peak matmul throughput ({dtype}, {device}) ...")
    guard.wait_quiet()
    log.doing(f"peak matmul throughput ({dtype}, {device}): {', '.join(frameworks)}")
    entry = _measure_roofline(cfg, frameworks, dtype, device)
    log(f"   {roofline_summary(entry)}")
    log.advance()
    return entry


def _busy_roofline(entry: dict[str, Any], guard: timing.QuietGuard) -> bool:
    return (entry.get("background_cpus") or 0) > guard.threshold


def _roofline_again(
    cfg: BenchConfig,
    frameworks: list[str],
    dtype: str,
    entry: dict[str, Any],
    rows: list[dict[str, Any]],
    guard: timing.QuietGuard,
    log: _Log,
) -> dict[str, Any]:
    """A peak measured beside busy CPUs is measured once more after the rows, and the higher
    of the two kept (a peak is a best case; a busy machine only lowers it). The rows of that
    device and dtype are then set against the peak kept."""
    device = entry["device"]
    log.doing(f"peak matmul throughput again ({dtype}, {device}): it ran beside busy CPUs")
    guard.wait_quiet()
    again = _measure_roofline(cfg, frameworks, dtype, device)
    kept = again if again["peak_gflops"] > entry["peak_gflops"] else entry
    log(
        f"   peak measured again ({dtype}, {device}; first beside "
        f"{entry['background_cpus']:.2f} busy CPUs): {again['peak_gflops']:.1f} against "
        f"{entry['peak_gflops']:.1f} GFLOP/s; kept {kept['peak_gflops']:.1f}"
    )
    for r in rows:
        r["roofline_fraction"] = r["gflops"] / kept["peak_gflops"]
    return kept


def _busy(
    readings: list[float], roofs: list[dict[str, Any]], guard: timing.QuietGuard
) -> dict[str, Any] | None:
    """How busy other processes kept the machine while it was measured, or None if quiet:
    no kept timed block and no peak matmul above the guard's threshold."""
    busy_repeats = sum(x > guard.threshold for x in readings)
    busy_roofs = [r for r in roofs if _busy_roofline(r, guard)]
    if not busy_repeats and not busy_roofs:
        return None
    mean = statistics.fmean(readings) if readings else 0.0
    parts = []
    if readings:
        parts.append(
            f"{busy_repeats} of {len(readings)} timed repeats ran while other processes kept "
            f"more than {guard.threshold:.2f} CPUs busy ({mean:.2f} on average)"
        )
    if busy_roofs:
        cpus = max(r["background_cpus"] for r in busy_roofs)
        parts.append(
            f"the peak matmul ran beside {cpus:.2f} busy CPUs, twice (the roofline may be low)"
        )
    wait = (
        "--max-wait 0: the run did not wait"
        if guard.budget_s == 0
        else f"the run waited {guard.waited_s:.0f} s of its {guard.budget_s:g} s --max-wait"
    )
    note = (
        f"busy machine: {'; '.join(parts)}; {wait}. Multi-threaded BLAS/OpenMP rows (numpy, "
        "torch) slow down many-fold when a core is taken: rerun on a quiet machine"
    )
    short = (
        f"Busy machine: other processes used {mean:.2f} CPUs on average while timing "
        f"({busy_repeats} of {len(readings)} repeats above {guard.threshold:.2f}"
        f"{'; peak matmul too' if busy_roofs else ''}): slower and noisier than a quiet run"
    )
    return {
        "threshold_cpus": guard.threshold,
        "other_cpus_mean": round(mean, 2),
        "busy_repeats": busy_repeats,
        "timed_repeats": len(readings),
        "roofline_busy": [f"{r['device']}" for r in busy_roofs],
        "note": note,
        "short": short,
    }


class _Waits:
    """The quiet guard's ``on_wait``: the bar says what is waited for and how busy the machine
    is; the log gets a line per wait of 2 s or more, and one when the wait budget is spent."""

    def __init__(self, guard: timing.QuietGuard, log: _Log) -> None:
        self.guard, self.log = guard, log
        self.since = 0.0  # guard.waited_s when this wait began
        self.most = 0.0  # the most CPUs other processes used during it
        self.told_spent = False

    def __call__(self, busy: float | None) -> None:
        guard, log = self.guard, self.log
        if busy is not None:
            self.most = max(self.most, busy)
            log.waiting(
                f"waiting for a quiet machine (others use {busy:.2f} CPUs, quiet is "
                f"≤ {guard.threshold:.2f}; {guard.waited_s:.0f} of {guard.budget_s:g} s)"
            )
            return
        log.done_waiting()
        waited = guard.waited_s - self.since
        if waited >= 2:
            log(
                f"   waited {waited:.0f} s for other processes to go quiet "
                f"(they used up to {self.most:.2f} CPUs)"
            )
        self.since, self.most = guard.waited_s, 0.0
        if guard.spent and not self.told_spent:
            self.told_spent = True
            log(
                f"   the --max-wait budget ({guard.budget_s:g} s) is spent: timing goes on "
                "as the machine is, and the results will say it was busy"
            )


def _method(
    cfg: BenchConfig, guard: timing.QuietGuard, cache: dict[str, Any] | None
) -> dict[str, Any]:
    """How the run measured: repeats, blocks, threads, modes, the compile cache, the guard."""
    return {
        "repeats": cfg.repeats,
        "min_time_s": cfg.min_time,
        "pause_s": _pause(cfg),
        "threads": cfg.threads,
        "modes": cfg.modes,
        "quick": cfg.quick,
        "statistic": "median of the timed blocks; ms_min/ms_max their spread",
        "compile_cache": cache,
        "quiet_guard": {
            "threshold_cpus": guard.threshold,
            "budget_s": guard.budget_s,
            "waited_s": round(guard.waited_s, 1),
            "discarded_repeats": guard.discarded,
            "noisy_repeats": guard.noisy,
        },
    }


def _units(cfg: BenchConfig, groups: list[tuple[str, list[Case]]], roofs: int) -> int:
    """Progress steps: each peak matmul, each row's first call and each of its timed blocks."""
    return roofs + sum(len(cases) for _, cases in groups) * (1 + cfg.repeats)


def run(cfg: BenchConfig, on_group: Callable[[list[dict[str, Any]]], None] | None = None) -> dict:
    """Everything in one process, so every ratio compares like with like. Returns the document."""
    log = _Log(cfg.log)
    with log.showing("starting"):
        return _run(cfg, on_group, log)


def _run(
    cfg: BenchConfig, on_group: Callable[[list[dict[str, Any]]], None] | None, log: _Log
) -> dict:
    start = time.perf_counter()
    cpus = threads.available_cpus()  # before the affinity narrows it to cfg.threads
    thread_info = threads.configure_environment(cfg.threads)
    thread_info["openblas_set"] = threads.limit_openblas(cfg.threads)  # NumPy's, loaded already
    cache = compile_cache(cfg.cold_compile) if "torch" in cfg.backends else None
    notes: list[str] = []
    loaded, frameworks = _load_frameworks(cfg, notes, log)
    if not loaded:
        raise UserError("no backend could be loaded; see `rosetta-rnn backends`")
    devices = _devices(cfg, loaded, notes)  # a device asked for that is not there: an error
    all_devices = list(dict.fromkeys(d for devs in devices.values() for d in devs))
    peer_names = [
        p
        for p in PEER_NAMES
        if cfg.peers
        and PEER_FRAMEWORK[p] in loaded
        and all(lib in frameworks[PEER_FRAMEWORK[p]] for lib in PEERS[p].libraries)
    ]
    check_environments(peer_names)
    desc = machine.describe(frameworks, thread_info)
    whole_run = machine.CpuMeter()
    groups = _groups(cfg, devices, peer_names)
    units = _units(cfg, groups, len(all_devices) * len(cfg.dtypes))
    rows_total = sum(len(cases) for _, cases in groups)
    log(
        f"bench: {rows_total} rows ({', '.join(cfg.cells)}) on {', '.join(all_devices)} "
        f"({', '.join(cfg.dtypes)}), "
        f"{cfg.repeats} timed repeat(s) each, {cfg.threads} thread(s)"
        + (
            f"; torch.compile cache {cache['torchinductor']}"
            f" ({'warm' if cache['warm'] else 'empty'})"
            if cache
            else ""
        )
    )
    log.doing("measuring", total=units)

    # other processes may use the CPUs this run leaves free, and BUSY_CPUS more; with
    # --max-wait 0 the guard never waits but still counts the blocks timed on a busy machine
    spare = max(0, cpus - cfg.threads)
    guard = timing.QuietGuard(spare + BUSY_CPUS, cfg.max_wait)
    guard.on_wait = _Waits(guard, log)

    # the machine's limit on each device: the best large-matmul rate of any framework there
    main_device = "cpu" if "cpu" in all_devices else all_devices[0]
    roof_by_device: dict[str, dict[str, Any]] = {}
    for device in all_devices:
        on_device = [name for name in loaded if device in devices[name]]
        roof_by_device[device] = {
            dtype: _roofline(cfg, on_device, dtype, device, guard, log) for dtype in cfg.dtypes
        }

    rows: list[dict[str, Any]] = []
    readings: list[float] = []  # other processes' CPUs during every kept timed block
    for label, cases in groups:
        dtype = cases[0].dtype
        peak_gflops = roof_by_device[cases[0].device][dtype]["peak_gflops"]
        try:
            group_rows = _run_group(label, cases, cfg, peak_gflops, notes, log, guard, readings)
        finally:
            _close_engines(cases)
        rows += group_rows
        if on_group is not None:
            on_group(group_rows)

    for device, by_dtype in roof_by_device.items():  # a peak taken on a busy machine: again
        on_device = [name for name in loaded if device in devices[name]]
        for dtype, entry in by_dtype.items():
            if _busy_roofline(entry, guard):
                mine = [r for r in rows if r["device"] == device and r["dtype"] == dtype]
                by_dtype[dtype] = _roofline_again(cfg, on_device, dtype, entry, mine, guard, log)
    roof = roof_by_device[main_device]

    desc["load_average_end"] = machine.load_average()
    desc["background"] = whole_run.read()
    roofs = [entry for by_dtype in roof_by_device.values() for entry in by_dtype.values()]
    busy = _busy(readings, roofs, guard)
    if busy is not None:
        notes.append(busy["note"])
        log(f"note: {busy['note']}")
    main_dtype = cfg.dtypes[0]
    doc: dict[str, Any] = {
        "machine": desc,
        "roofline_tokens_per_sec": roof[main_dtype]["tokens_per_sec"].get(
            "train", next(iter(roof[main_dtype]["tokens_per_sec"].values()))
        ),
        "rows": rows,
        "roofline": roof,
        "roofline_device": main_device,
        "roofline_by_device": roof_by_device,
        "shape": _shape_dict(cfg.shape),  # the RNN's
        "cells": list(cfg.cells),
        "shapes": {cell: _shape_dict(cfg.shape_of(cell)) for cell in cfg.cells},
        "method": _method(cfg, guard, cache),
        "busy": busy,
        "notes": notes,
    }
    doc["targets"] = targets.evaluate(doc, main_dtype)
    doc["linearity"] = targets.linear_fits(rows)
    doc["wall_s"] = time.perf_counter() - start
    return doc
