"""The outputs: a terminal table, CSV, markdown, JSON and PNG plots of one benchmark document."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rosetta_rnn import backends
from rosetta_rnn.helpers import format_table

from . import machine, roofline
from .targets import main_rows

ROW_FIELDS: tuple[str, ...] = (
    "name",
    "backend",
    "device",
    "dtype",
    "mode",
    "workload",
    "batch_size",
    "num_steps",
    "num_hiddens",
    "tokens_per_sec",
    "ms_per_step",
    "ms_min",
    "ms_max",
    "repeats",
    "calls_per_repeat",
    "compile_s",
    "first_call_s",
    "peak_rss_mb",
    "gflops",
    "roofline_fraction",
    "framework",
    "default_mode",
    "sweep",
    "background_cpus",
    "discarded_repeats",
    "noisy_repeats",
)
FILES = ("results.json", "results.csv", "results.md", "machine.md")
PALETTE = ("#4c72b0", "#dd5144", "#55a868", "#e89a2c", "#8172b3", "#937860", "#da8bc3")
COLORS = dict(zip(backends.BACKENDS, PALETTE, strict=False))  # by registry order


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        return f"{x:,.{digits}f}"
    return str(x)


def _spread(r: dict[str, Any]) -> str:
    return f"±{(r['ms_max'] - r['ms_min']) / 2 / r['ms_per_step'] * 100:.0f}%"


def _main_cells(r: dict[str, Any]) -> list[str]:
    roof = r.get("roofline_fraction")
    return [
        r["name"],
        r["workload"],
        _fmt(r["tokens_per_sec"], 0),
        _fmt(r["ms_per_step"], 2 if r["ms_per_step"] < 100 else 1),
        _spread(r),
        _fmt(r["compile_s"], 2),
        _fmt(r["peak_rss_mb"], 0),
        "-" if roof is None else f"{roof * 100:.0f}%",
    ]


MAIN_HEADERS = (
    "name",
    "workload",
    "tokens/s",
    "ms/step",
    "spread",
    "compile s",
    "peak MB",
    "roofline",
)


def _dtypes(doc: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(r["dtype"] for r in doc["rows"]))


def _target_lines(doc: dict[str, Any]) -> list[list[str]]:
    lines = []
    for t in doc.get("targets", []):
        value = t["value"]
        if value is None:
            shown, verdict = "-", "not measured"
        else:
            shown = f"{value:.2f}" + (" s" if "compile" in t["target"] else "")
            if "R²" in t["target"]:
                shown = f"{value:.4f}"
            elif "compile" not in t["target"]:
                shown = f"{value:.2f}×"
            verdict = "met" if t["met"] else "MISSED"
        lines.append([t["target"], shown, verdict, t["detail"]])
    return lines


def terminal(doc: dict[str, Any]) -> str:
    """The main-shape tables (one per dtype), the roofline, the targets and the notes."""
    shape = doc["shape"]
    parts = []
    for dtype in _dtypes(doc):
        rows = []
        for workload in roofline.WORKLOADS:
            rows += sorted(main_rows(doc, dtype, workload), key=lambda r: -r["tokens_per_sec"])
        parts.append(
            f"B={shape['batch_size']} T={shape['num_steps']} H={shape['num_hiddens']} "
            f"V={shape['vocab_size']} {dtype} {rows[0]['device'] if rows else ''}: median of "
            f"{doc['method']['repeats']} repeats, {doc['method']['threads']} thread(s)"
        )
        parts += [format_table(MAIN_HEADERS, [_main_cells(r) for r in rows]), ""]
    parts.append(_roofline_line(doc))
    targets = _target_lines(doc)
    if targets:
        parts += ["", format_table(["target", "measured", "", "rows"], targets)]
    for note in doc.get("notes", []):
        parts.append(f"note: {note}")
    return "\n".join(parts)


def _roofline_line(doc: dict[str, Any]) -> str:
    out = []
    for dtype, roof in doc.get("roofline", {}).items():
        where = roof.get("device", "cpu")
        line = (
            f"roofline ({dtype}, {where}): peak matmul {roof['peak_gflops']:.1f} GFLOP/s × "
            f"{roof['flops_per_token'].get('train', 0) / 1e6:.3f} MFLOP/token (train) = "
            f"{roof['tokens_per_sec'].get('train', 0):,.0f} tokens/s"
        )
        floor = roof.get("matmul_floor")
        if floor:
            line += (
                f"; the step's matmuls alone at their shapes: {floor['ms_per_step']:.2f} ms = "
                f"{floor['tokens_per_sec']:,.0f} tokens/s"
            )
        out.append(line)
    return "\n".join(out)


def write_csv(doc: dict[str, Any], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW_FIELDS), extrasaction="ignore")
        writer.writeheader()
        for r in doc["rows"]:
            writer.writerow({k: r.get(k) for k in ROW_FIELDS})


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main_markdown_table(doc: dict[str, Any], workload: str = "train") -> str:
    """The main-shape rows of one workload, fastest first (the README's table)."""
    headers = ["name", "mode", "tokens/s", "ms/step", "spread", "compile s", "peak MB", "roofline"]
    dtypes = _dtypes(doc)
    rows = main_rows(doc, dtypes[0], workload) if dtypes else []
    cells = []
    for r in sorted(rows, key=lambda r: -r["tokens_per_sec"]):
        c = _main_cells(r)
        name = f"**{r['name']}**" if r["backend"] == "peer" else r["name"].split()[0]
        cells.append([name, r["mode"], *c[2:]])
    return _md_table(headers, cells)


def markdown(doc: dict[str, Any]) -> str:
    """``results.md``: tables per workload, targets, roofline, memory, sweeps, notes."""
    m = doc["machine"]
    shape = doc["shape"]
    out = ["# rosetta-rnn bench", ""]
    out.append(
        f"{m['cpu']}, {m['cpus']} CPUs, {doc['method']['threads']} thread(s) per framework; "
        f"B={shape['batch_size']} T={shape['num_steps']} H={shape['num_hiddens']} "
        f"V={shape['vocab_size']}; median of {doc['method']['repeats']} interleaved repeats "
        f"(spread = half the min–max range). Peers in **bold**. See machine.md."
    )
    for workload in roofline.WORKLOADS:
        if any(r["workload"] == workload and r["sweep"] is None for r in doc["rows"]):
            unit = " (ms/step per generated token, batch 1)" if workload == "generate" else ""
            out += ["", f"## {workload}{unit}", "", main_markdown_table(doc, workload)]
    out += ["", "## Roofline", "", _roofline_line(doc)]
    for dtype, roof in doc.get("roofline", {}).items():
        by_fw = ", ".join(f"{k} {v:.1f}" for k, v in roof["peak_gflops_by_framework"].items())
        out.append(f"\nPeak {roof['matmul_size']}² matmul GFLOP/s ({dtype}): {by_fw}.")
        floor = roof.get("matmul_floor")
        if floor:
            out += ["", f"The training step's matmuls alone ({dtype}, best framework each):", ""]
            out.append(
                _md_table(
                    ["matmul", "m×k×n", "count", "GFLOP/s", "ms/step", "by"],
                    [
                        [
                            p["matmul"],
                            "×".join(map(str, p["shape"])),
                            p["count"],
                            f"{p['gflops']:.1f}",
                            f"{p['ms_per_step']:.2f}",
                            p["framework"],
                        ]
                        for p in floor["parts"]
                    ],
                )
            )
    targets = _target_lines(doc)
    if targets:
        out += ["", "## Targets", "", _md_table(["target", "measured", "", "rows"], targets)]
    out += ["", "## Memory", "", _memory_markdown(doc)]
    sweeps = _sweep_markdown(doc)
    if sweeps:
        out += ["", "## Sweeps (default mode of each backend, and the peers)", "", sweeps]
    if doc.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(out) + "\n"


def _memory_markdown(doc: dict[str, Any]) -> str:
    """Per framework: what importing it added to RSS, and the largest row peak above that."""
    frameworks = doc["machine"]["frameworks"]
    rows = []
    for name in dict.fromkeys(r["name"] for r in doc["rows"] if r["sweep"] is None):
        mine = [r for r in doc["rows"] if r["name"] == name and r["sweep"] is None]
        peaks = [r["peak_rss_mb"] for r in mine if r["peak_rss_mb"] is not None]
        fw = mine[0]["framework"]
        imp = frameworks.get(fw, {}).get("import_rss_mb")
        rows.append([name, fw, _fmt(imp, 0), _fmt(max(peaks) if peaks else None, 0)])
    text = _md_table(["row", "framework", "import MB", "peak MB above start"], rows)
    return text + (
        "\n\nOne process runs every row. Before each row the freed heap goes back to the OS and "
        "the kernel's peak-RSS mark is reset; a row's peak is the mark after its first call and "
        "warm-up minus the RSS before it. A framework's import is measured once, on load."
    )


def _sweep_markdown(doc: dict[str, Any]) -> str:
    out = []
    for axis in ("num_steps", "num_hiddens"):
        for workload in ("train", "forward"):
            series = _series(doc, axis, workload)
            if not series:
                continue
            values = sorted({x for pts in series.values() for x, _ in pts})
            rows = []
            for name, pts in series.items():
                by_x = dict(pts)
                rows.append([name] + [_fmt(by_x.get(x), 0) for x in values])
            out += [f"{workload}, tokens/s over {axis}:", ""]
            out += [_md_table(["name", *map(str, values)], rows), ""]
    fits = [f for f in doc.get("linearity", []) if f["workload"] == "train"]
    if fits:
        out += ["Train step time vs num_steps, least-squares line:", ""]
        out.append(
            _md_table(
                ["name", "ms at T=0", "ms per time step", "R²"],
                [
                    [
                        f["name"],
                        f"{f['intercept_ms']:.2f}",
                        f"{f['ms_per_time_step']:.3f}",
                        f"{f['r2']:.4f}",
                    ]
                    for f in fits
                ],
            )
        )
    return "\n".join(out).strip()


def _series(doc: dict[str, Any], axis: str, workload: str) -> dict[str, list[tuple[int, float]]]:
    """tokens/s along one sweep axis: default-mode rows of the sweep and of the main shape."""
    if not any(r["sweep"] == axis for r in doc["rows"]):
        return {}
    dtypes = list(dict.fromkeys(r["dtype"] for r in doc["rows"]))
    devices = list(dict.fromkeys(r["device"] for r in doc["rows"]))
    out: dict[str, list[tuple[int, float]]] = {}
    for r in doc["rows"]:
        if (
            r["workload"] == workload
            and r["default_mode"]
            and r["sweep"] in (None, axis)
            and r["dtype"] == dtypes[0]
            and r["device"] == devices[0]
        ):
            out.setdefault(r["name"], []).append((r[axis], r["tokens_per_sec"]))
    return {k: sorted(v) for k, v in out.items() if len(v) > 1}


# --- plots -----------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tokens(doc: dict[str, Any], path: Path) -> None:
    """Horizontal bars of tokens/s per row at the main shape, one panel per workload."""
    plt = _pyplot()
    dtypes = list(dict.fromkeys(r["dtype"] for r in doc["rows"]))
    panels = [
        (w, sorted(main_rows(doc, dtypes[0], w), key=lambda r: r["tokens_per_sec"]))
        for w in roofline.WORKLOADS
    ]
    panels = [(w, rows) for w, rows in panels if rows]
    heights = [max(2.0, 0.32 * len(rows) + 1.0) for _, rows in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9, sum(heights)),
        gridspec_kw={"height_ratios": heights},
        layout="constrained",
    )
    axes = list(axes) if len(panels) > 1 else [axes]
    roof = doc.get("roofline", {}).get(dtypes[0], {}).get("tokens_per_sec", {})
    for ax, (workload, rows) in zip(axes, panels, strict=True):
        labels = [f"{r['name']}" + (" (peer)" if r["backend"] == "peer" else "") for r in rows]
        values = [r["tokens_per_sec"] for r in rows]
        bars = ax.barh(
            range(len(rows)),
            values,
            color=[COLORS.get(r["framework"], "#888888") for r in rows],
            hatch=None,
            edgecolor="black",
            linewidth=0.5,
        )
        for bar, r in zip(bars, rows, strict=True):
            if r["backend"] == "peer":
                bar.set_hatch("///")
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {r['tokens_per_sec']:,.0f}",
                va="center",
                fontsize=7,
            )
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        title = f"{workload}: tokens/s ({dtypes[0]}, {rows[0]['device']})"
        right = max(values)
        if workload in roof and workload != "generate":
            title += f"; roofline {roof[workload]:,.0f}"
            if roof[workload] < 3 * right:  # drawn where it does not squash the bars
                right = max(right, roof[workload])
                ax.axvline(roof[workload], color="black", linestyle="--", linewidth=1)
                ax.text(roof[workload], len(rows) - 0.5, " roofline", fontsize=7, va="top")
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, right * 1.18)
        ax.tick_params(axis="x", labelsize=7)
    shape = doc["shape"]
    fig.suptitle(
        f"rosetta-rnn bench: B={shape['batch_size']} T={shape['num_steps']} "
        f"H={shape['num_hiddens']} V={shape['vocab_size']} (hatched: the framework's own RNN)",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(doc: dict[str, Any], path: Path) -> bool:
    """ms/step over num_steps and tokens/s over num_hiddens (with the roofline), per workload."""
    workloads = [w for w in ("train", "forward") if _series(doc, "num_steps", w)]
    workloads += [
        w for w in ("train", "forward") if w not in workloads and _series(doc, "num_hiddens", w)
    ]
    if not workloads:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(workloads), 2, figsize=(12, 4.2 * len(workloads)), squeeze=False, layout="constrained"
    )
    dtypes = list(dict.fromkeys(r["dtype"] for r in doc["rows"]))
    peak = doc.get("roofline", {}).get(dtypes[0], {}).get("peak_gflops")
    shape = doc["shape"]
    kinds = {r["name"]: (r["framework"], r["backend"] == "peer") for r in doc["rows"]}
    for i, workload in enumerate(workloads):
        ax_t, ax_h = axes[i]
        for name, pts in _series(doc, "num_steps", workload).items():
            fw, peer = kinds[name]
            T = [t for t, _ in pts]
            ms = [shape["batch_size"] * t / tps * 1e3 for t, tps in pts]
            style = "--" if peer else "-"
            ax_t.plot(T, ms, marker="o", ms=3, color=COLORS.get(fw), ls=style, label=name)
        ax_t.set_xlabel("num_steps")
        ax_t.set_ylabel("ms per step")
        ax_t.set_title(f"{workload}: step time over num_steps (H={shape['num_hiddens']})")
        ax_t.grid(alpha=0.3)
        ax_t.legend(fontsize=7)
        for name, pts in _series(doc, "num_hiddens", workload).items():
            fw, peer = kinds[name]
            H, tps = [h for h, _ in pts], [v for _, v in pts]
            style = "--" if peer else "-"
            ax_h.plot(H, tps, marker="o", ms=3, color=COLORS.get(fw), ls=style, label=name)
        hs = sorted({h for pts in _series(doc, "num_hiddens", workload).values() for h, _ in pts})
        if peak and hs:
            B, T, V = shape["batch_size"], shape["num_steps"], shape["vocab_size"]
            roof = [roofline.roofline_tokens_per_sec(peak * 1e9, workload, B, T, h, V) for h in hs]
            ax_h.plot(hs, roof, color="black", linestyle=":", label="roofline")
        ax_h.set_xscale("log", base=2)
        ax_h.set_yscale("log")
        ax_h.set_xlabel("num_hiddens")
        ax_h.set_ylabel("tokens/s")
        ax_h.set_title(f"{workload}: tokens/s over num_hiddens (T={shape['num_steps']})")
        ax_h.grid(alpha=0.3, which="both")
        ax_h.legend(fontsize=7)
    fig.suptitle("rosetta-rnn bench sweeps (dashed: the framework's own RNN)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(doc: dict[str, Any], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Every file into ``out_dir``; returns the paths written and notes (e.g. no matplotlib)."""
    written, notes = [], []
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    write_csv(doc, out_dir / "results.csv")
    (out_dir / "results.md").write_text(markdown(doc))
    (out_dir / "machine.md").write_text(machine.markdown(doc["machine"]))
    written += [out_dir / f for f in FILES]
    try:
        _pyplot()
    except ImportError:
        notes.append("no plots: matplotlib is not installed (pip install 'rosetta-rnn[plot]')")
        return written, notes
    plot_tokens(doc, out_dir / "tokens_per_sec.png")
    written.append(out_dir / "tokens_per_sec.png")
    if plot_scaling(doc, out_dir / "scaling.png"):
        written.append(out_dir / "scaling.png")
    return written, notes
