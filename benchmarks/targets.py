"""The issue's targets, measured and reported (never asserted): ratios at the main shape.

Every ratio compares training-step tokens/s at the main shape (the d2l shape by default), in
the first dtype asked for, on the main device (the CPU if it was measured, else the first
device), between rows of the same process run. A backend's figure
is its best mode.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

LINEAR_R2 = 0.99  # "step time linear in num_steps": a straight-line fit explains ≥ 99 %

RATIO_TARGETS: tuple[tuple[str, str, float], ...] = (
    ("numpy", "torch.nn.RNN", 1.05),
    ("torch", "torch.nn.RNN", 1.0),
    ("jax", "jax.lax.scan", 1.0),
    ("tensorflow", "keras.SimpleRNN", 1.0),
    ("tensorflow", "torch.nn.RNN", 0.8),
)
ROOFLINE_TARGET = 0.8
COMPILE_TARGETS: tuple[tuple[str, str, float], ...] = (
    ("jax", "jit", 1.0),
    ("tensorflow", "tf.function", 2.0),
)


def main_rows(doc: dict[str, Any], dtype: str, workload: str = "train") -> list[dict[str, Any]]:
    """Rows at the main shape (no sweep) of ``workload`` and ``dtype`` on the main device."""
    rows = [
        r
        for r in doc["rows"]
        if r["sweep"] is None and r["workload"] == workload and r["dtype"] == dtype
    ]
    devices = [r["device"] for r in rows]
    device = "cpu" if "cpu" in devices else (devices[0] if devices else None)
    return [r for r in rows if r["device"] == device]


def _best(rows: list[dict[str, Any]], backend: str) -> dict[str, Any] | None:
    mine = [r for r in rows if r["backend"] == backend]
    return max(mine, key=lambda r: r["tokens_per_sec"]) if mine else None


def _peer(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["backend"] == "peer" and r["name"] == name), None)


def _target(text: str, value: float | None, threshold: float, at_most: bool, detail: str) -> dict:
    met = None if value is None else (value <= threshold if at_most else value >= threshold)
    return {"target": text, "value": value, "threshold": threshold, "met": met, "detail": detail}


def evaluate(doc: dict[str, Any], dtype: str) -> list[dict[str, Any]]:
    """Each target: the measured value, the threshold, met or not, and the rows it compares."""
    rows = main_rows(doc, dtype)
    out = []
    for backend, peer, threshold in RATIO_TARGETS:
        b, p = _best(rows, backend), _peer(rows, peer)
        text = f"{backend} ≥ {threshold:.2f}× {peer}"
        if b is None or p is None:
            out.append(_target(text, None, threshold, False, "not measured"))
            continue
        ratio = b["tokens_per_sec"] / p["tokens_per_sec"]
        detail = (
            f"{b['name']} {b['tokens_per_sec']:.0f} vs {p['name']} "
            f"{p['tokens_per_sec']:.0f} tokens/s"
        )
        out.append(_target(text, ratio, threshold, False, detail))

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
    return out


def linear_fits(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ms per step = a + b·num_steps, least squares, for every default-mode row series over
    the num_steps sweep (with its main-shape point); R² = 1 - SS_res / SS_tot."""
    series: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r["default_mode"] and r["sweep"] in (None, "num_steps") and r["workload"] != "generate":
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
