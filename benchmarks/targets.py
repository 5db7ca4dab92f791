"""The issue's targets, measured and reported (never asserted): ratios at the main shape.

Every ratio compares tokens/s of one workload (the training step, the forward pass or
generation) of one cell at its main shape (d2l's by default:
H 512 for the RNN, 256 for the GRU and the LSTM), in the first dtype asked for, on the main
device (the CPU if it was measured, else the first device), between rows of the same process
run. A backend's figure is its best mode. The gated cells' targets are the issue's "each
backend's best mode ≥ 1.0× its framework's own layer": torch against torch.nn.GRU and
torch.nn.LSTM, TensorFlow against Keras GRU and LSTM, JAX against its ``lax.scan`` GRU and
LSTM peers, MXNet against Gluon's ``rnn.RNN``/``GRU``/``LSTM`` (the reset-after GRU, which is
what the layers compute; d2l's reset-before GRU
against Keras GRU(reset_after=False) alone). NumPy has no layer: its own peer is
min-char-rnn's loop (the RNN alone); JAX's is its ``lax.scan`` peer; the Array API backend has
none. The gated cells' forward and generate ratios are listed where those rows were measured.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN

LINEAR_R2 = 0.99  # "step time linear in num_steps": a straight-line fit explains ≥ 99 %

RATIO_TARGETS: tuple[tuple[str, str, float], ...] = (
    ("numpy", "torch.nn.RNN", 1.05),
    ("numpy", "numpy.min-char-rnn", 1.0),
    ("torch", "torch.nn.RNN", 1.0),
    ("jax", "jax.lax.scan", 1.0),
    ("tensorflow", "keras.SimpleRNN", 1.0),
    ("tensorflow", "torch.nn.RNN", 0.8),
    ("mxnet", "gluon.rnn.RNN", 1.0),
)
"""The RNN's: (backend, peer, at least this × the peer's tokens/s)."""
LAYER_TARGETS: dict[str, tuple[tuple[str, str, float], ...]] = {
    GRU_RESET_AFTER: (
        ("torch", "torch.nn.GRU", 1.0),
        ("tensorflow", "keras.GRU", 1.0),
        ("jax", "jax.lax.scan.GRU", 1.0),
        ("mxnet", "gluon.rnn.GRU", 1.0),
    ),
    LSTM: (
        ("torch", "torch.nn.LSTM", 1.0),
        ("tensorflow", "keras.LSTM", 1.0),
        ("jax", "jax.lax.scan.LSTM", 1.0),
        ("mxnet", "gluon.rnn.LSTM", 1.0),
    ),
    GRU_RESET_BEFORE: (("tensorflow", "keras.GRU(reset_after=False)", 1.0),),
}
"""The gated cells': each backend's best mode against its framework's own layer, for every
workload."""
WORKLOAD_TARGETS: tuple[tuple[str, str, float], ...] = (
    ("numpy", "numpy.min-char-rnn", 1.0),
    ("torch", "torch.nn.RNN", 1.0),
    ("jax", "jax.lax.scan", 1.0),
    ("tensorflow", "keras.SimpleRNN", 1.0),
    ("mxnet", "gluon.rnn.RNN", 1.0),
)
"""The RNN's forward pass and generation: each backend's best mode against its framework's own
layer (NumPy's: min-char-rnn's loop; JAX's: its lax.scan peer)."""
WORKLOADS = ("train", "forward", "generate")
ROOFLINE_TARGET = 0.8
COMPILE_TARGETS: tuple[tuple[str, str, float], ...] = (
    ("jax", "jit", 1.0),
    ("tensorflow", "tf.function", 2.0),
)


def cell_of(row: dict[str, Any]) -> str:
    """A row's cell (rows written before the gated cells were benched are the RNN's)."""
    return str(row.get("cell", RNN))


def cells_of(doc: dict[str, Any]) -> list[str]:
    """The cells with rows, the RNN first, then in the order they were measured."""
    found = dict.fromkeys(cell_of(r) for r in doc["rows"])
    return sorted(found, key=lambda c: c != RNN)


def main_rows(
    doc: dict[str, Any], dtype: str, workload: str = "train", cell: str = RNN
) -> list[dict[str, Any]]:
    """Rows of ``cell`` at its main shape (no sweep) of ``workload`` and ``dtype`` on the main
    device."""
    rows = [
        r
        for r in doc["rows"]
        if r["sweep"] is None
        and r["workload"] == workload
        and r["dtype"] == dtype
        and cell_of(r) == cell
    ]
    devices = [r["device"] for r in rows]
    device = "cpu" if "cpu" in devices else (devices[0] if devices else None)
    return [r for r in rows if r["device"] == device]


def _best(rows: list[dict[str, Any]], backend: str) -> dict[str, Any] | None:
    mine = [r for r in rows if r["backend"] == backend]
    return max(mine, key=lambda r: r["tokens_per_sec"]) if mine else None


def _peer(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["backend"] == "peer" and r["name"] == name), None)


def _target(
    text: str,
    value: float | None,
    threshold: float,
    at_most: bool,
    detail: str,
    cell: str = RNN,
) -> dict:
    met = None if value is None else (value <= threshold if at_most else value >= threshold)
    return {
        "target": text,
        "cell": cell,
        "value": value,
        "threshold": threshold,
        "met": met,
        "detail": detail,
    }


def _ratios(
    rows: list[dict[str, Any]],
    targets: tuple[tuple[str, str, float], ...],
    cell: str,
    workload: str = "train",
) -> list[dict[str, Any]]:
    """Each (backend, peer, threshold): the backend's best mode over the peer (a workload
    other than the training step is named before the target)."""
    out = []
    for backend, peer, threshold in targets:
        b, p = _best(rows, backend), _peer(rows, peer)
        text = f"{backend} ≥ {threshold:.2f}× {peer}"
        if workload != "train":
            text = f"{workload}: {text}"
        if b is None or p is None:
            out.append(_target(text, None, threshold, False, "not measured", cell))
            continue
        ratio = b["tokens_per_sec"] / p["tokens_per_sec"]
        detail = (
            f"{b['name']} {b['tokens_per_sec']:.0f} vs {p['name']} "
            f"{p['tokens_per_sec']:.0f} tokens/s"
        )
        out.append(_target(text, ratio, threshold, False, detail, cell))
    return out


def evaluate(doc: dict[str, Any], dtype: str) -> list[dict[str, Any]]:
    """Each target: the measured value, the threshold, met or not, and the rows it compares;
    those of each cell that has rows (the RNN's with ``not measured`` where a row is missing,
    and also when nothing was measured)."""
    cells = cells_of(doc)
    out = _rnn_targets(doc, dtype) if RNN in cells or not cells else []
    for cell, layer_targets in LAYER_TARGETS.items():
        if cell in cells:
            for workload in WORKLOADS:
                rows = main_rows(doc, dtype, workload, cell)
                if rows or workload == "train":
                    out += _ratios(rows, layer_targets, cell, workload)
    return out


def _rnn_targets(doc: dict[str, Any], dtype: str) -> list[dict[str, Any]]:
    """The RNN's: the peer ratios, the roofline, compile times and linearity in num_steps."""
    rows = main_rows(doc, dtype)
    out = _ratios(rows, RATIO_TARGETS, RNN)

    backend_rows = [r for r in rows if r["backend"] != "peer"]
    roof = doc.get("roofline", {}).get(dtype, {}).get("tokens_per_sec", {}).get("train")
    text = f"fastest backend ≥ {ROOFLINE_TARGET:.2f}× roofline"
    if backend_rows and roof:
        fastest = max(backend_rows, key=lambda r: r["tokens_per_sec"])
        detail = (
            f"{fastest['name']} {fastest['tokens_per_sec']:.0f} vs roofline {roof:.0f} tokens/s"
        )
        out.append(_target(text, fastest["tokens_per_sec"] / roof, ROOFLINE_TARGET, False, detail))
    else:
        out.append(_target(text, None, ROOFLINE_TARGET, False, "not measured"))

    for backend, mode, limit in COMPILE_TARGETS:
        compiled = [r for r in rows if r["backend"] == backend and r["mode"].endswith("/" + mode)]
        text = f"{backend} {mode} compile ≤ {limit:g} s"
        if not compiled:
            out.append(_target(text, None, limit, True, "not measured"))
            continue
        worst = max(compiled, key=lambda r: r["compile_s"])
        detail = ", ".join(f"{r['mode']} {r['compile_s']:.2f} s" for r in compiled)
        out.append(_target(text, worst["compile_s"], limit, True, detail))

    fits = [f for f in linear_fits(doc["rows"]) if f["dtype"] == dtype and f["workload"] == "train"]
    text = f"step time linear in num_steps (R² ≥ {LINEAR_R2})"
    if fits:
        worst = min(fits, key=lambda f: f["r2"])
        detail = f"lowest R² {worst['r2']:.4f} ({worst['name']}) over {len(fits)} fits"
        out.append(_target(text, worst["r2"], LINEAR_R2, False, detail))
    else:
        out.append(_target(text, None, LINEAR_R2, False, "no num_steps sweep"))
    for workload in WORKLOADS[1:]:
        out += _ratios(main_rows(doc, dtype, workload), WORKLOAD_TARGETS, RNN, workload)
    return out


def linear_fits(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ms per step = a + b·num_steps, least squares, for every default-mode row series over
    the num_steps sweep (with its main-shape point); R² = 1 - SS_res / SS_tot."""
    series: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if (
            r["default_mode"]
            and r["sweep"] in (None, "num_steps")
            and r["workload"] != "generate"
            and cell_of(r) == RNN  # the sweeps are the RNN's
        ):
            key = (r["name"], r["dtype"], r["device"], r["workload"], r["num_hiddens"])
            series[key].append((r["num_steps"], r["ms_per_step"]))
    fits = []
    for (name, dtype, device, workload, hiddens), points in series.items():
        if len({t for t, _ in points}) < 3:
            continue
        T = np.array([t for t, _ in points], dtype=float)
        ms = np.array([m for _, m in points])
        slope, intercept = np.polyfit(T, ms, 1)
        residual = ms - (intercept + slope * T)
        total = ms - ms.mean()
        r2 = 1 - float(residual @ residual) / float(total @ total) if total.any() else 1.0
        fits.append(
            {
                "name": name,
                "dtype": dtype,
                "device": device,
                "workload": workload,
                "num_hiddens": hiddens,
                "intercept_ms": float(intercept),
                "ms_per_time_step": float(slope),
                "r2": r2,
                "points": sorted(points),
            }
        )
    return fits
