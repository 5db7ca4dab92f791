"""One benchmark run in one process: threads, frameworks, roofline, the groups of rows, targets."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from rosetta_rnn import backends
from rosetta_rnn.core.errors import BackendUnavailable, UserError

from . import machine, roofline, targets, threads, timing
from . import peers as peers_mod
from .peers import PEER_FRAMEWORK, PEER_NAMES, PEERS
from .workloads import D2L, Case, Shape, backend_cases, compile_modes, peer_cases

SWEEP_STEPS = (5, 10, 20, 35, 70, 140)
SWEEP_HIDDENS = (64, 128, 256, 512, 1024)
SWEEP_WORKLOADS = ("train", "forward")  # generation does not depend on num_steps
BUSY_CPUS = 0.25  # background load (CPUs) above which the results get a warning note


@dataclass
class BenchConfig:
    """What ``rosetta-rnn bench`` was asked for."""

    backends: list[str] = field(default_factory=lambda: list(backends.BACKENDS))
    explicit_backends: bool = False  # asked for by name: a missing framework is an error
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    workloads: list[str] = field(default_factory=lambda: list(roofline.WORKLOADS))
    shape: Shape = D2L
    sweep: bool = True
    sweep_steps: tuple[int, ...] = SWEEP_STEPS
    sweep_hiddens: tuple[int, ...] = SWEEP_HIDDENS
    repeats: int = 5
    min_time: float = 0.25  # seconds per timed block
    peers: bool = True
    all_modes: bool = True
    threads: int = field(default_factory=threads.available_cpus)
    log: TextIO | None = None  # progress lines go here
    debug: bool = False  # print the traceback of a row that fails
    max_wait: float = 600.0  # seconds the run may wait for other processes to go quiet


class _Log:
    def __init__(self, out: TextIO | None) -> None:
        self.out = out

    def __call__(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)


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
        rss0 = timing.rss_mb()
        try:
            mod = backends.load(name)
        except BackendUnavailable as e:
            if cfg.explicit_backends:
                raise
            notes.append(f"skipped backend {name}: {e}")
            log(f"skipped backend {name}: {e}")
            continue
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


def _devices(cfg: BenchConfig, loaded: list[str], notes: list[str]) -> dict[str, list[str]]:
    """Each backend's resolved devices; a device a backend lacks is a note, not an error."""
    out: dict[str, list[str]] = {}
    for name in loaded:
        mod = backends.load(name)
        resolved: list[str] = []
        for dev in cfg.devices:
            try:
                labels = mod.devices() if dev == "all" else [mod.resolve_device(dev)]
            except BackendUnavailable as e:
                notes.append(f"{name} skipped on {dev}: {e}")
                continue
            resolved += [d for d in labels if d not in resolved]
        out[name] = resolved
    return out


def _groups(
    cfg: BenchConfig, devices: dict[str, list[str]], peer_names: list[str]
) -> list[tuple[str, list[Case]]]:
    """Groups of cases timed together: one per (dtype, device, workload, shape)."""
    groups: list[tuple[str, list[Case]]] = []
    all_devices = list(dict.fromkeys(d for devs in devices.values() for d in devs))

    def cases_for(
        dtype: str, device: str, shape: Shape, workload: str, all_modes: bool, sweep: str | None
    ) -> list[Case]:
        cases: list[Case] = []
        for name, devs in devices.items():
            if device in devs:
                cases += backend_cases(name, device, dtype, shape, [workload], all_modes, sweep)
        for peer in peer_names:
            fw = PEER_FRAMEWORK[peer]
            if device in devices.get(fw, []) and (device == "cpu" or not PEERS[peer].cpu_only):
                cases += peer_cases(peer, device, dtype, shape, [workload], sweep)
        return cases

    for dtype in cfg.dtypes:
        for device in all_devices:
            for workload in cfg.workloads:
                label = f"{workload} {dtype} {device} {_shape_label(cfg.shape)}"
                groups.append(
                    (label, cases_for(dtype, device, cfg.shape, workload, cfg.all_modes, None))
                )
            if not cfg.sweep:
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
                        label = f"{workload} {dtype} {device} {_shape_label(shape)} (sweep)"
                        groups.append(
                            (label, cases_for(dtype, device, shape, workload, False, axis))
                        )
    return [(label, cases) for label, cases in groups if cases]


def _pause(cfg: BenchConfig) -> float:
    """The idle gap before each timed block: PAUSE_S, or less for very short blocks."""
    return min(timing.PAUSE_S, cfg.min_time)


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
    gflops = tokens_per_sec * roofline.flops_per_token(case.workload, *shape.astuple()) / 1e9
    per_step = 1e3 / case.steps_per_call
    return {
        "name": case.name,
        "backend": case.backend,
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
        "compile_s": timed.compile_s,
        "first_call_s": timed.first_s,
        "peak_rss_mb": timed.peak_rss_mb,
        "gflops": gflops,
        "roofline_fraction": None if not peak_gflops else gflops / peak_gflops,
        "framework": case.framework,
        "default_mode": _is_default(case),
        "sweep": case.sweep,
    }


def _run_group(
    label: str,
    cases: list[Case],
    cfg: BenchConfig,
    peak_gflops: float | None,
    notes: list[str],
    log: _Log,
    guard: timing.QuietGuard | None,
) -> list[dict[str, Any]]:
    log(f"== {label}: {len(cases)} rows")
    prepared: list[tuple[Case, timing.Timed]] = []
    for case in cases:
        try:
            timed = timing.prepare(case, case.build, cfg.min_time, cfg.min_time)
        except Exception as e:  # a mode that fails here is reported, not fatal
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            where = f"{case.workload}, {_shape_label(case.shape)}"
            notes.append(f"{case.name} ({where}) failed: {first}")
            log(f"   {case.name}: FAILED: {first}")
            if log.out is not None and cfg.debug:
                traceback.print_exc(file=log.out)
            continue
        log(f"   ready {case.name} (first call {timed.first_s:.2f} s)")
        prepared.append((case, timed))
    timing.run_interleaved([t for _, t in prepared], cfg.repeats, _pause(cfg), guard)
    rows = []
    for case, timed in prepared:
        row = _row(case, timed, peak_gflops)
        bg = timed.background  # CPUs other processes used during this row's kept blocks
        row["background_cpus"] = round(sum(bg) / len(bg), 2) if bg else None
        row["discarded_repeats"] = timed.discarded
        row["noisy_repeats"] = timed.noisy
        spread = (row["ms_max"] - row["ms_min"]) / row["ms_per_step"] * 100
        log(
            f"   {case.name:34s} {row['tokens_per_sec']:11.0f} tokens/s "
            f"{row['ms_per_step']:9.3f} ms  spread {spread:4.0f}%"
        )
        rows.append(row)
    return rows


def _roofline(
    cfg: BenchConfig,
    frameworks: list[str],
    dtype: str,
    device: str,
    guard: timing.QuietGuard | None,
    log: _Log,
) -> dict[str, Any]:
    """Peak matmul GFLOP/s on ``device`` (best framework), the tokens/s it bounds per workload,
    and the training step's own matmuls timed alone (the floor for op-by-op code)."""
    log(f"measuring peak matmul throughput ({dtype}, {device}) ...")
    if guard is not None:
        guard.wait_quiet()
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
    if "train" in cfg.workloads:
        entry["matmul_floor"] = roofline.measure_matmul_floor(
            frameworks, dtype, *cfg.shape.astuple(), device=device
        )
    log(f"   peak {best:.1f} GFLOP/s; roofline {entry['tokens_per_sec']} tokens/s")
    return entry


def run(cfg: BenchConfig, on_group: Callable[[list[dict[str, Any]]], None] | None = None) -> dict:
    """Everything in one process, so every ratio compares like with like. Returns the document."""
    start = time.perf_counter()
    log = _Log(cfg.log)
    cpus = threads.available_cpus()  # before the affinity narrows it to cfg.threads
    thread_info = threads.configure_environment(cfg.threads)
    notes: list[str] = []
    loaded, frameworks = _load_frameworks(cfg, notes, log)
    if not loaded:
        raise UserError("no backend could be loaded; see `rosetta-rnn backends`")
    devices = _devices(cfg, loaded, notes)
    peer_names = [
        p
        for p in PEER_NAMES
        if cfg.peers
        and PEER_FRAMEWORK[p] in loaded
        and all(lib in frameworks[PEER_FRAMEWORK[p]] for lib in PEERS[p].libraries)
    ]
    desc = machine.describe(frameworks, thread_info)
    whole_run = machine.CpuMeter()

    # the machine's limit on each device: the best large-matmul rate of any framework there
    # other processes may use the CPUs this run leaves free, and BUSY_CPUS more
    spare = max(0, cpus - cfg.threads)
    guard = timing.QuietGuard(spare + BUSY_CPUS, cfg.max_wait) if cfg.max_wait > 0 else None
    all_devices = list(dict.fromkeys(d for devs in devices.values() for d in devs))
    if not all_devices:
        raise UserError(f"no backend runs on {' '.join(cfg.devices)}: {'; '.join(notes)}")
    main_device = "cpu" if "cpu" in all_devices else all_devices[0]
    roof_by_device: dict[str, dict[str, Any]] = {}
    for device in all_devices:
        on_device = [name for name in loaded if device in devices[name]]
        roof_by_device[device] = {
            dtype: _roofline(cfg, on_device, dtype, device, guard, log) for dtype in cfg.dtypes
        }
    roof = roof_by_device[main_device]

    rows: list[dict[str, Any]] = []
    for label, cases in _groups(cfg, devices, peer_names):
        dtype = cases[0].dtype
        peak_gflops = roof_by_device[cases[0].device][dtype]["peak_gflops"]
        group_rows = _run_group(label, cases, cfg, peak_gflops, notes, log, guard)
        rows += group_rows
        if on_group is not None:
            on_group(group_rows)

    desc["load_average_end"] = machine.load_average()
    desc["background"] = whole_run.read()
    noisy = sum(r["noisy_repeats"] for r in rows)
    if noisy:
        notes.append(
            f"{noisy} timed repeats ran while other processes kept more than "
            f"{guard.threshold if guard else BUSY_CPUS} CPUs "
            "busy (the wait budget was spent); multi-threaded BLAS/OpenMP rows (numpy, torch) "
            "slow down many-fold when a core is taken: rerun on a quiet machine"
        )
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
        "shape": {
            "batch_size": cfg.shape.batch_size,
            "num_steps": cfg.shape.num_steps,
            "num_hiddens": cfg.shape.num_hiddens,
            "vocab_size": cfg.shape.vocab_size,
        },
        "method": {
            "repeats": cfg.repeats,
            "min_time_s": cfg.min_time,
            "pause_s": _pause(cfg),
            "threads": cfg.threads,
            "statistic": "median of the timed blocks; ms_min/ms_max their spread",
            "quiet_guard": None
            if guard is None
            else {
                "threshold_cpus": guard.threshold,
                "budget_s": guard.budget_s,
                "waited_s": round(guard.waited_s, 1),
                "discarded_repeats": guard.discarded,
                "noisy_repeats": guard.noisy,
            },
        },
        "notes": notes,
    }
    doc["targets"] = targets.evaluate(doc, main_dtype)
    doc["linearity"] = targets.linear_fits(rows)
    doc["wall_s"] = time.perf_counter() - start
    return doc
