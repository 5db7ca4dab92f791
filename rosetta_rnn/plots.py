"""PNG plots (matplotlib, Agg), each written atomically to a path the user gives."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rosetta_rnn.core.errors import UserError
from rosetta_rnn.core.files import atomic_file
from rosetta_rnn.core.run import RunSpec


def require_matplotlib() -> None:
    """matplotlib is a dependency of the package; a Python that cannot import it (a broken or
    partial install) is told so before any work, not after a run it would lose."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise UserError(
            f"plots need matplotlib, which this Python cannot import ({e}): pip install matplotlib"
        ) from None


def _figure() -> tuple[Any, Any]:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.2), dpi=110)


def check_plot_path(path: str | os.PathLike[str]) -> Path:
    """Fail before any work, in one line, when ``--plot PATH`` cannot be written or drawn."""
    require_matplotlib()
    target = Path(path)
    if target.is_dir():
        raise UserError(f"--plot {path}: is a folder; give a file name such as plot.png")
    if not target.parent.is_dir():
        raise UserError(f"--plot {path}: folder {target.parent} does not exist")
    if target.suffix.lower() != ".png":
        raise UserError(f"--plot {path}: plots are PNG files; the name does not end in .png")
    return target


def save(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write the figure as a PNG, atomically."""
    check_plot_path(path)
    fig.tight_layout()
    try:
        with atomic_file(path) as f:
            fig.savefig(f, format="png")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def perplexity(history: Sequence[Mapping[str, Any]], path: str, title: str) -> None:
    """Perplexity per epoch: training, and held-out or validation when there is one (with
    d2l 1.0's plotted means, dotted, where the run has them). ``title`` may be two lines (what
    ran; its configuration)."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    epochs = [h["epoch"] for h in history]
    marker = "o" if len(epochs) <= 30 else None  # a short run's epochs are visible as points
    ax.plot(epochs, [h["perplexity"] for h in history], label="train", marker=marker, ms=3)
    for key, label, style in (
        ("book_perplexity", "train, the book's mean of exp(minibatch loss)", ":"),
        ("heldout_perplexity", "held-out", "-"),
        ("val_perplexity", "validation", "-"),
        ("val_book_perplexity", "validation, the book's mean", ":"),
    ):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax.plot(epochs, values, style, label=label, marker=marker, ms=3)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    ax.set_ylabel("perplexity (log scale)")
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save(fig, path)


def _plain_ticks(ax: Any) -> None:
    """Log axes labelled 2, 5, 10 rather than 2×10⁰."""
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))


def grad_norms(
    runs: Mapping[str, Sequence[float]], theta: float, path: str, title: str, note: str = ""
) -> None:
    """Gradient norm per step for several runs, with the clipping threshold θ. Later runs are
    drawn dashed over the earlier ones, so a run that repeats another stays visible; ``note``
    (e.g. that clipping never acted) is written under the title."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    styles = ["-", (0, (4, 3)), ":", "-."]
    for i, (label, norms) in enumerate(runs.items()):
        ax.plot(
            range(1, len(norms) + 1),
            norms,
            label=label,
            linewidth=0.9 if i == 0 else 1.2,
            linestyle=styles[i % len(styles)],
        )
    ax.axhline(theta, color="gray", linestyle="--", linewidth=0.8, label=f"θ = {theta:g}")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("global gradient norm ‖g‖, before clipping (log scale)")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
    if note:  # under the title, where it covers no curve
        title = f"{title}\n" + "\n".join(textwrap.wrap(note, 80))
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save(fig, path)


def distributions(
    probs: Mapping[float, Any],
    tokens: Sequence[str],
    path: str,
    title: str,
    top: int = 12,
) -> None:
    """The next-token distribution q ∝ P^α for several α: the ``top`` most likely tokens
    (by their largest probability under any α), one bar group per token."""
    import numpy as np

    fig, ax = _figure()
    alphas = list(probs)
    table = np.array([probs[a] for a in alphas])  # (alphas, vocab)
    order = np.argsort(-table.max(axis=0), kind="stable")[:top]
    x = np.arange(len(order))
    width = 0.8 / max(len(alphas), 1)
    for i, alpha in enumerate(alphas):
        ax.bar(x + i * width - 0.4 + width / 2, table[i, order], width, label=f"α = {alpha:g}")
    labels = ["space" if tokens[j] == " " else tokens[j] for j in order]
    ax.set_xticks(x, labels)
    ax.set_xlabel(f"next token (the {len(order)} most likely)")
    ax.set_ylabel("probability q")
    ax.set_title(title)
    ax.legend()
    save(fig, path)


def run_title(backend: str, device: str, grad: str, mode: str, spec: RunSpec) -> str:
    """What ran, then its configuration: the plot says which run it shows."""
    clip = "no clipping" if math.isinf(spec.clip) else f"clip θ = {spec.clip:g}"
    state = (
        ", no detach"
        if not spec.detach
        else ", state reset per minibatch"
        if spec.reset_state
        else ""
    )
    return (
        f"{backend} {spec.dtype} on {device}, grad {grad}, {mode}: perplexity per epoch\n"
        f"{spec.recipe}: {spec.token}s, batch {spec.batch_size} × {spec.num_steps} steps, "
        f"{spec.num_hiddens} hidden "
        f"{spec.activation if spec.cell == 'rnn' else spec.model_cell}, lr {spec.lr:g}, "
        f"{clip}, {spec.sampling}{state}, seed {spec.seed}"
    )
