"""The outputs: a terminal table, CSV, markdown, JSON and PNG plots of one benchmark document.

``write_all`` writes them as one set: every file is made in a temporary folder first and only
then moved into the output folder, one rename per file, over the previous run's set (files of
the old set that this run does not make, such as ``scaling.png`` after a run without sweeps,
are removed). If anything fails while the files are made, the previous set is left as it was;
only a crash during the few renames themselves could leave the two sets mixed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rosetta_rnn import backends
from rosetta_rnn.core.cells import RNN
from rosetta_rnn.core.display import format_table
from rosetta_rnn.core.errors import UserError

from . import machine, roofline
from .targets import cell_of, cells_of, main_rows

ROW_FIELDS: tuple[str, ...] = (
    "name",
    "backend",
    "cell",
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
    "replicas",
    "collective_ms",
    "background_cpus",
    "discarded_repeats",
    "noisy_repeats",
)
FILES = ("results.json", "results.csv", "results.md", "machine.md")
PLOTS = ("tokens_per_sec.png", "scaling.png")
RESULT_SET = (*PLOTS, "results.csv", "results.md", "machine.md", "results.json")  # swap order
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


def spread(r: dict[str, Any], why: bool = False) -> str:
    """Half the min-max range of the repeats, in % of the median; "n/a" for one repeat (one
    sample has no spread), with ``why`` "n/a (1 repeat)"."""
    if r.get("repeats", 2) < 2:
        return "n/a (1 repeat)" if why else "n/a"
    return f"±{(r['ms_max'] - r['ms_min']) / 2 / r['ms_per_step'] * 100:.0f}%"


def _compile(r: dict[str, Any]) -> str:
    """Seconds of compiling in the first calls; "none" for a mode that compiles nothing."""
    return "none" if r.get("compile_s") is None else _fmt(r["compile_s"], 2)


def _repeats(doc: dict[str, Any]) -> str:
    n = doc["method"]["repeats"]
    return "1 repeat (no spread)" if n == 1 else f"median of {n} interleaved repeats"


def _main_cells(r: dict[str, Any]) -> list[str]:
    roof = r.get("roofline_fraction")
    return [
        r["name"],
        r["workload"],
        _fmt(r["tokens_per_sec"], 0),
        _fmt(r["ms_per_step"], 2 if r["ms_per_step"] < 100 else 1),
        spread(r),
        _compile(r),
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


REPLICA_HEADERS = ("name", "replicas", "tokens/s", "ms/step", "vs ×1", "all-reduce ms", "spread")


def replica_rows(doc: dict[str, Any], dtype: str) -> list[dict[str, Any]]:
    """The data-parallel rows (``--replicas``) of ``dtype``, by backend, then replica count."""
    rows = [r for r in doc["rows"] if r.get("sweep") == "replicas" and r["dtype"] == dtype]
    return sorted(rows, key=lambda r: (r["device"], r["backend"], r["replicas"]))


def _replica_cells(r: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    one = next(
        (
            o
            for o in rows
            if o["replicas"] == 1 and o["backend"] == r["backend"] and o["device"] == r["device"]
        ),
        None,
    )
    ratio = "-" if one is None else f"{r['tokens_per_sec'] / one['tokens_per_sec']:.2f}×"
    return [
        r["name"],
        str(r["replicas"]),
        _fmt(r["tokens_per_sec"], 0),
        _fmt(r["ms_per_step"], 2),
        ratio,
        _fmt(r.get("collective_ms"), 2),
        spread(r),
    ]


REPLICA_NOTE = (
    "×1 is the same step on one device; ×N splits each minibatch into N shards, one per "
    "replica, and all-reduces the gradients (torch.distributed: N processes with threads/N "
    "threads each; JAX shard_map and TensorFlow MirroredStrategy: N devices in this process, "
    "sharing its thread pool). all-reduce ms: the time torch's rank 0 spends in the all_reduce "
    "per step, waiting for the other replicas included; JAX and TensorFlow run it inside the "
    "compiled step (-). The first count's rows are timed interleaved with ×1; each further "
    "count in a group of its own (a process holds one torch.distributed group at a time). "
    "With --replicas, JAX and TensorFlow run the whole benchmark with as many CPU devices as "
    "the largest count (they make them once, at start), the ×1 and main rows included."
)


def replica_table(doc: dict[str, Any], dtype: str) -> str:
    rows = replica_rows(doc, dtype)
    return format_table(REPLICA_HEADERS, [_replica_cells(r, rows) for r in rows]) if rows else ""


def _dtypes(doc: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(r["dtype"] for r in doc["rows"]))


TARGET_HEADERS = ("cell", "target", "measured", "", "rows")


def _digits(value: float, threshold: float) -> int:
    """Decimals to show ``value`` with: 2, or up to 4 where 2 would round it onto the
    threshold (0.9965 is "0.997", never a MISSED "1.00")."""
    digits = 2
    while digits < 4 and value != threshold and round(value, digits) == round(threshold, digits):
        digits += 1
    return digits


def _target_lines(doc: dict[str, Any]) -> list[list[str]]:
    """One line per target: its cell, what it asks, the measured value, met or MISSED."""
    lines = []
    for t in doc.get("targets", []):
        value = t["value"]
        if value is None:
            shown, verdict = "-", "not measured"
        else:
            digits = 4 if "R²" in t["target"] else _digits(value, t["threshold"])
            unit = " s" if "compile" in t["target"] else ("" if "R²" in t["target"] else "×")
            shown = f"{value:.{digits}f}{unit}"
            verdict = "met" if t["met"] else "MISSED"
        lines.append([t.get("cell", RNN), t["target"], shown, verdict, t["detail"]])
    return lines


def shape_of(doc: dict[str, Any], cell: str) -> dict[str, int]:
    """The main shape ``cell`` was measured at (documents from before the gated cells: the
    one ``shape``)."""
    return doc.get("shapes", {}).get(cell, doc["shape"])


def _shape_text(shape: dict[str, int]) -> str:
    return (
        f"B={shape['batch_size']} T={shape['num_steps']} H={shape['num_hiddens']} "
        f"V={shape['vocab_size']}"
    )


def terminal(doc: dict[str, Any]) -> str:
    """The main-shape tables (one per dtype and cell), the roofline, the targets and the
    notes."""
    parts = []
    for dtype in _dtypes(doc):
        for cell in cells_of(doc):
            rows = []
            for workload in roofline.WORKLOADS:
                rows += sorted(
                    main_rows(doc, dtype, workload, cell), key=lambda r: -r["tokens_per_sec"]
                )
            if not rows:
                continue
            parts.append(
                f"{cell}, {_shape_text(shape_of(doc, cell))} {dtype} {rows[0]['device']}: "
                f"{_repeats(doc)}, {doc['method']['threads']} thread(s)"
            )
            parts += [format_table(MAIN_HEADERS, [_main_cells(r) for r in rows]), ""]
    for dtype in _dtypes(doc):
        rows = replica_rows(doc, dtype)
        if rows:
            parts.append(
                f"data parallel, rnn, {_shape_text(shape_of(doc, RNN))} {dtype}: {_repeats(doc)}"
            )
            parts += [replica_table(doc, dtype), ""]
    parts.append(_roofline_line(doc))
    targets = _target_lines(doc)
    if targets:
        parts += ["", format_table(TARGET_HEADERS, targets)]
    for note in doc.get("notes", []):
        parts.append(f"note: {note}")
    return "\n".join(parts)


def roofline_of(roof: dict[str, Any], cell: str) -> dict[str, Any]:
    """One cell's ``flops_per_token`` and ``tokens_per_sec`` from a roofline entry (entries
    from before the gated cells hold the RNN's alone)."""
    by_cell = roof.get("cells", {})
    if cell in by_cell:
        return by_cell[cell]
    if cell == RNN:
        return {
            "flops_per_token": roof.get("flops_per_token", {}),
            "tokens_per_sec": roof.get("tokens_per_sec", {}),
        }
    return {"flops_per_token": {}, "tokens_per_sec": {}}


def _roofline_line(doc: dict[str, Any]) -> str:
    out = []
    cells = cells_of(doc) or [RNN]
    for dtype, roof in doc.get("roofline", {}).items():
        where = roof.get("device", "cpu")
        for cell in cells:
            mine = roofline_of(roof, cell)
            label = f"{dtype}, {where}" + ("" if cells == [RNN] else f", {cell}")
            line = (
                f"roofline ({label}): peak matmul {roof['peak_gflops']:.1f} GFLOP/s × "
                f"{mine['flops_per_token'].get('train', 0) / 1e6:.3f} MFLOP/token (train) = "
                f"{mine['tokens_per_sec'].get('train', 0):,.0f} tokens/s"
            )
            floor = roof.get("matmul_floor")
            if floor and cell == RNN:
                line += (
                    f"; the step's matmuls alone at their shapes: {floor['ms_per_step']:.2f} "
                    f"ms = {floor['tokens_per_sec']:,.0f} tokens/s"
                )
            out.append(line)
    return "\n".join(out)


def write_csv(doc: dict[str, Any], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW_FIELDS), extrasaction="ignore")
        writer.writeheader()
        for r in doc["rows"]:
            writer.writerow({**{k: r.get(k) for k in ROW_FIELDS}, "cell": cell_of(r)})


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main_markdown_table(doc: dict[str, Any], workload: str = "train", cell: str = RNN) -> str:
    """The main-shape rows of one workload and cell, fastest first (docs/benchmarks.md's
    table)."""
    headers = ["name", "mode", "tokens/s", "ms/step", "spread", "compile s", "peak MB", "roofline"]
    dtypes = _dtypes(doc)
    rows = main_rows(doc, dtypes[0], workload, cell) if dtypes else []
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
    if doc.get("command"):
        out += [f"`{doc['command']}`", ""]
    cells = cells_of(doc)
    hiddens = ", ".join(f"{c} H={shape_of(doc, c)['num_hiddens']}" for c in cells)
    out.append(
        f"{m['cpu']}, {m['cpus']} CPUs, {doc['method']['threads']} thread(s) per framework; "
        f"B={shape['batch_size']} T={shape['num_steps']} V={shape['vocab_size']}, "
        f"{hiddens or 'H=' + str(shape['num_hiddens'])}; {_repeats(doc)} "
        f"(spread = half the min–max range). Peers in **bold**. See machine.md."
    )
    compile_text = (
        'compile s: seconds spent compiling in the first calls; "none": the mode compiles nothing'
    )
    cache = doc["method"].get("compile_cache")
    if cache:
        compile_text += "; torch.compile ran with " + (
            f"a persistent inductor cache ({'warm' if cache['warm'] else 'empty'} at the start)"
            if cache["persistent"]
            else f"an empty inductor cache ({cache['why_cold']})"
        )
    out += ["", compile_text + "."]
    if doc.get("busy"):
        out += ["", f"**{doc['busy']['note']}.**"]
    for cell in cells:
        for workload in roofline.WORKLOADS:
            if any(
                r["workload"] == workload and r["sweep"] is None and cell_of(r) == cell
                for r in doc["rows"]
            ):
                unit = " (ms/step per generated token, batch 1)" if workload == "generate" else ""
                title = f"{workload}, {cell} ({_shape_text(shape_of(doc, cell))}){unit}"
                out += ["", f"## {title}", "", main_markdown_table(doc, workload, cell)]
    for dtype in _dtypes(doc):
        rows = replica_rows(doc, dtype)
        if rows:
            title = f"Data parallel, rnn ({_shape_text(shape_of(doc, RNN))}, {dtype})"
            table = _md_table(REPLICA_HEADERS, [_replica_cells(r, rows) for r in rows])
            out += ["", f"## {title}", "", table, "", REPLICA_NOTE]
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
        out += ["", "## Targets", "", _md_table(TARGET_HEADERS, targets)]
    out += ["", "## Memory", "", _memory_markdown(doc)]
    sweeps = _sweep_markdown(doc)
    if sweeps:
        out += ["", "## Sweeps (default mode of each backend, and the peers)", "", sweeps]
    busy = (doc.get("busy") or {}).get("note")
    notes = [n for n in doc.get("notes", []) if n != busy]  # that one heads the file
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def _memory_markdown(doc: dict[str, Any]) -> str:
    """Per row and cell: what importing its framework added to RSS, and the largest row peak
    above that."""
    frameworks = doc["machine"]["frameworks"]
    rows = []
    main = [r for r in doc["rows"] if r["sweep"] is None]
    for cell, name in dict.fromkeys((cell_of(r), r["name"]) for r in main):
        mine = [r for r in main if r["name"] == name and cell_of(r) == cell]
        peaks = [r["peak_rss_mb"] for r in mine if r["peak_rss_mb"] is not None]
        fw = mine[0]["framework"]
        imp = frameworks.get(fw, {}).get("import_rss_mb")
        rows.append([name, cell, fw, _fmt(imp, 0), _fmt(max(peaks) if peaks else None, 0)])
    text = _md_table(["row", "cell", "framework", "import MB", "peak MB above start"], rows)
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
    """tokens/s along one sweep axis: the RNN's default-mode rows of the sweep and of the main
    shape (only the RNN is swept)."""
    if not any(r["sweep"] == axis for r in doc["rows"]):
        return {}
    dtypes = list(dict.fromkeys(r["dtype"] for r in doc["rows"]))
    devices = list(dict.fromkeys(r["device"] for r in doc["rows"]))
    out: dict[str, list[tuple[int, float]]] = {}
    for r in doc["rows"]:
        if (
            r["workload"] == workload
            and r["default_mode"]
            and cell_of(r) == RNN
            and r["sweep"] in (None, axis)
            and r["dtype"] == dtypes[0]
            and r["device"] == devices[0]
        ):
            out.setdefault(r["name"], []).append((r[axis], r["tokens_per_sec"]))
    return {k: sorted(v) for k, v in out.items() if len(v) > 1}


# --- plots -----------------------------------------------------------------------------------

BUSY_COLOR = "#b00000"
PEER_HATCH = "///"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plotting() -> None:
    """A one-line error now, before any measuring, if matplotlib (a dependency) is broken."""
    try:
        _pyplot()
    except ImportError as e:
        raise UserError(
            f"bench draws its plots with matplotlib, which cannot be imported ({e}); "
            "reinstall rosetta-rnn, or: pip install 'matplotlib>=3.7'"
        ) from None


def _figure(
    plt: Any, heights: list[float], ncols: int, width: float, note: str | None
) -> tuple[Any, list[list[Any]]]:
    """A figure with one row of panels per height, under a strip for ``note`` (the busy-machine
    warning) when there is one; returns the figure and the panels' axes by row."""
    import textwrap

    strip = 0.55 if note else 0.0
    ratios = ([strip] if note else []) + heights
    fig, grid = plt.subplots(
        len(ratios),
        ncols,
        figsize=(width, sum(ratios)),
        gridspec_kw={"height_ratios": ratios},
        squeeze=False,
        layout="constrained",
    )
    if note:
        spec = grid[0][0].get_gridspec()
        for ax in grid[0]:
            ax.remove()
        ax = fig.add_subplot(spec[0, :])  # the strip spans every column
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "\n".join(textwrap.wrap(note, int(width * 10.5))),  # about 10 bold characters an inch
            ha="center",
            va="center",
            fontsize=9,
            fontweight="bold",
            color=BUSY_COLOR,
            transform=ax.transAxes,
        )
        grid = grid[1:]
    return fig, [list(row) for row in grid]


def _busy_short(doc: dict[str, Any]) -> str | None:
    return (doc.get("busy") or {}).get("short")


def _tokens_legend(rows: list[dict[str, Any]], roofline_drawn: bool) -> list[Any]:
    """Legend entries: one colour per framework, the peers' hatching, the roofline line."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    present = {r["framework"] for r in rows}
    order = [fw for fw in COLORS if fw in present] + sorted(present - set(COLORS))
    handles: list[Any] = [
        Patch(facecolor=COLORS.get(fw, "#888888"), edgecolor="black", linewidth=0.5, label=fw)
        for fw in order  # the registry's order, as the colours
    ]
    if any(r["backend"] == "peer" for r in rows):
        handles.append(
            Patch(
                facecolor="white",
                edgecolor="black",
                hatch=PEER_HATCH,
                linewidth=0.5,
                label="the framework's own layer (peer)",
            )
        )
    if roofline_drawn:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1, label="roofline"))
    return handles


def tokens_figure(doc: dict[str, Any]) -> Any:
    """Horizontal bars of tokens/s per row at the main shape, one panel per cell and workload,
    coloured by framework (legend below), the peers hatched; None when there is no main-shape
    row."""
    dtypes = list(dict.fromkeys(r["dtype"] for r in doc["rows"]))
    if not dtypes:
        return None
    panels = [
        (c, w, sorted(main_rows(doc, dtypes[0], w, c), key=lambda r: r["tokens_per_sec"]))
        for c in cells_of(doc)
        for w in roofline.WORKLOADS
    ]
    panels = [(c, w, rows) for c, w, rows in panels if rows]
    if not panels:
        return None
    plt = _pyplot()
    heights = [max(2.0, 0.32 * len(rows) + 1.3) for _, _, rows in panels]
    fig, grid = _figure(plt, heights, 1, 9, _busy_short(doc))
    entry = doc.get("roofline", {}).get(dtypes[0], {})
    drawn = False
    for (ax,), (cell, workload, rows) in zip(grid, panels, strict=True):
        roof = roofline_of(entry, cell).get("tokens_per_sec", {}) if entry else {}
        labels = [f"{r['name']}" + (" (peer)" if r["backend"] == "peer" else "") for r in rows]
        values = [r["tokens_per_sec"] for r in rows]
        bars = ax.barh(
            range(len(rows)),
            values,
            color=[COLORS.get(r["framework"], "#888888") for r in rows],
            edgecolor="black",
            linewidth=0.5,
        )
        for bar, r in zip(bars, rows, strict=True):
            if r["backend"] == "peer":
                bar.set_hatch(PEER_HATCH)
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {r['tokens_per_sec']:,.0f}",
                va="center",
                fontsize=7,
            )
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        H = shape_of(doc, cell)["num_hiddens"]
        title = f"{workload}, {cell} (H={H}): tokens/s ({dtypes[0]}, {rows[0]['device']})"
        right = max(values)
        if workload in roof and workload != "generate":
            title += f"; roofline {roof[workload]:,.0f}"
            if roof[workload] < 3 * right:  # drawn where it does not squash the bars
                right = max(right, roof[workload])
                ax.axvline(roof[workload], color="black", linestyle="--", linewidth=1)
                drawn = True
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, right * 1.18)
        unit = (
            "generated tokens per second, batch 1"
            if workload == "generate"
            else ("tokens per second (batch_size × num_steps per step)")
        )
        ax.set_xlabel(f"{unit}; higher is faster", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f}")
    all_rows = [r for _, _, rows in panels for r in rows]
    handles = _tokens_legend(all_rows, drawn)
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(len(handles), 4),
        fontsize=8,
        title="colour: framework",
        title_fontsize=8,
        frameon=False,
    )
    shape = doc["shape"]
    fig.suptitle(
        f"rosetta-rnn bench: B={shape['batch_size']} T={shape['num_steps']} "
        f"V={shape['vocab_size']}, H per panel; {_repeats(doc)}",
        fontsize=10,
    )
    return fig


def plot_tokens(doc: dict[str, Any], path: Path) -> bool:
    """``tokens_figure`` saved as a PNG; False when there was nothing to draw."""
    fig = tokens_figure(doc)
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return True


def scaling_figure(doc: dict[str, Any]) -> Any:
    """ms/step over num_steps and tokens/s over num_hiddens (with the roofline), per workload;
    None without a sweep."""
    workloads = [w for w in ("train", "forward") if _series(doc, "num_steps", w)]
    workloads += [
        w for w in ("train", "forward") if w not in workloads and _series(doc, "num_hiddens", w)
    ]
    if not workloads:
        return None
    plt = _pyplot()
    fig, grid = _figure(plt, [4.2] * len(workloads), 2, 12, _busy_short(doc))
    dtypes = list(dict.fromkeys(r["dtype"] for r in doc["rows"]))
    peak = doc.get("roofline", {}).get(dtypes[0], {}).get("peak_gflops")
    shape = doc["shape"]
    kinds = {r["name"]: (r["framework"], r["backend"] == "peer") for r in doc["rows"]}
    for (ax_t, ax_h), workload in zip(grid, workloads, strict=True):
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
        for ax, axis in ((ax_t, "num_steps"), (ax_h, "num_hiddens")):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, f"no {axis} sweep", ha="center", transform=ax.transAxes)
    fig.suptitle("rosetta-rnn bench sweeps (dashed: the framework's own RNN)", fontsize=10)
    return fig


def plot_scaling(doc: dict[str, Any], path: Path) -> bool:
    """``scaling_figure`` saved as a PNG; False without a sweep."""
    fig = scaling_figure(doc)
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return True


# --- the set of files ---------------------------------------------------------------------


def write_all(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every file of the set into ``out_dir``, over the previous set (see the module
    docstring); other files in ``out_dir`` are left alone. Returns the paths written."""
    if not doc["rows"]:
        raise ValueError("a result set needs at least one measured row")
    new = Path(tempfile.mkdtemp(prefix=".bench-new-", dir=out_dir))
    try:
        (new / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
        write_csv(doc, new / "results.csv")
        (new / "results.md").write_text(markdown(doc))
        (new / "machine.md").write_text(machine.markdown(doc["machine"], doc["rows"]))
        plot_tokens(doc, new / "tokens_per_sec.png")
        plot_scaling(doc, new / "scaling.png")
        written = []
        for name in RESULT_SET:  # every file is made: now swap them in, results.json last
            if (new / name).exists():
                os.replace(new / name, out_dir / name)
                written.append(out_dir / name)
            else:  # the previous run's, which this run does not make
                (out_dir / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    return written
