"""The checks. Each compares one quantity of a subject with NumPy float64 (the reference) on
the same problem and returns a Cell; a failing cell names the known mistake it matches. Every
check but ``interface`` and ``sample/ties`` (which involve no cell) runs per cell: the problem
says which."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.core import cells, checkpoint, model, sampling
from rosetta_rnn.core.training import TrainConfig

from .interface import missing_operations
from .problems import CELLS, Problem, State, state_arrays, state_parts
from .subjects import Arrays, BackendSubject, NotApplicable
from .tolerances import REPLICA_COUNTS, TRAIN_STEPS, tolerance


@dataclass
class Cell:
    check: str
    backend: str
    dtype: str
    device: str
    max_error: float
    tolerance: float
    passed: bool
    message: str = ""
    cell: str | None = "rnn"
    """rnn, gru-reset-before, gru-reset-after or lstm (conform's names); None for a check that
    involves no cell (``CELL_FREE``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Quantity = Callable[[Any, Problem, str], dict[str, np.ndarray]]
"""(subject, problem, the cell's dtype) -> named arrays; the dtype rounds the inputs."""


def max_error(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """max|a - b| / max|reference|, both maxima over every entry of the quantity together (all
    gradients, all steps of a trajectory); inf on a shape mismatch, a missing entry or a
    non-finite value. 0 when both are identical, even if the reference is all zeros."""
    diff, scale = 0.0, 0.0
    for key, r in ref.items():
        a = got.get(key)
        if a is None or np.shape(a) != np.shape(r):
            return math.inf
        a64, r64 = np.asarray(a, np.float64), np.asarray(r, np.float64)
        if not (np.isfinite(a64).all() and np.isfinite(r64).all()):
            return 0.0 if np.array_equal(a64, r64, equal_nan=True) else math.inf
        diff = max(diff, float(np.max(np.abs(a64 - r64), initial=0.0)))
        scale = max(scale, float(np.max(np.abs(r64), initial=0.0)))
    if diff == 0.0:
        return 0.0
    return diff / scale if scale > 0 else math.inf


_reference_cache: dict[str, BackendSubject] = {}


def reference() -> BackendSubject:
    if "ref" not in _reference_cache:
        _reference_cache["ref"] = BackendSubject(numpy_backend, "float64", "cpu")
    return _reference_cache["ref"]


def _round(a: np.ndarray, dtype: str) -> np.ndarray:
    return a.astype(dtype).astype(np.float64)


def _rounded(problem: Problem, dtype: str) -> tuple[Arrays, np.ndarray, np.ndarray, State]:
    """The problem with parameters and state rounded to ``dtype`` (held as float64), so
    a float32 subject and the float64 reference start from the same numbers."""
    params, inputs, labels, state = problem.draw()
    params = {k: _round(v, dtype) for k, v in params.items()}
    parts = tuple(_round(s, dtype) for s in state_parts(state))
    return params, inputs, labels, parts if isinstance(state, tuple) else parts[0]


def _dtype_leak(subject: Any, got: dict[str, np.ndarray]) -> str:
    if subject.dtype == "float64":
        for a in got.values():
            if np.asarray(a).dtype.kind == "f" and np.asarray(a).dtype != np.float64:
                return f"float32 leaked into a float64 run ({np.asarray(a).dtype} arrays)"
    return ""


def diagnose(
    quantity: Quantity, subject: Any, problem: Problem, got: dict[str, np.ndarray], tol: float
) -> str:
    """Name the known mistakes whose output the subject reproduces, if any: every one that
    does (``A, or B``), as two mistakes can leave the same mark on a quantity (summing the
    replicas' gradients and dividing their loss by the local batch give the same trajectory;
    only the loss tells them apart)."""
    from .mistakes import MISTAKES

    leak = _dtype_leak(subject, got)
    if leak:
        return leak
    named: list[str] = []
    for build in MISTAKES.values():
        suspect = build()
        if problem.cell not in getattr(suspect, "cells", CELLS):
            continue  # a mistake of another cell (the GRU's gate order on an LSTM)
        try:
            theirs = quantity(suspect, problem, subject.dtype)
        except NotApplicable:
            continue
        if _dtype_leak(suspect, theirs):
            continue  # the float32 leak is recognised by dtype, not by value
        if max_error(got, theirs) <= tol:
            named.append(str(getattr(suspect, "mistake", "a known mistake")))
    return ", or ".join(named)


def compare(
    name: str, subject: Any, problem: Problem, quantity: Quantity, kind: str, exact: bool = False
) -> Cell:
    """Run ``quantity`` on the subject and on the reference; a cell with the max error."""
    tol = 0.0 if exact else tolerance(subject.dtype, kind)
    got = quantity(subject, problem, subject.dtype)
    ref = quantity(reference(), problem, subject.dtype)
    err = max_error(got, ref)
    leak = _dtype_leak(subject, got)
    passed = err <= tol and not leak
    message = ""
    if not passed:
        message = diagnose(quantity, subject, problem, got, tol)
        hint = HINTS.get(name)
        message = message or (hint(subject, problem) if hint else "") or "differs"
    cell = None if name in CELL_FREE else problem.label
    return Cell(name, subject.label, subject.dtype, subject.device, err, tol, passed, message, cell)


# --- the quantities -------------------------------------------------------------------------


def q_params(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
    if not hasattr(subject, "transfer"):
        raise NotApplicable
    params, *_ = _rounded(problem, dtype)
    return subject.transfer(params)


def q_forward(key: str, *more: str) -> Quantity:
    """``key`` of the subject's forward, and those of ``more`` the subject has (the LSTM's
    final ``memory`` next to its hidden states)."""

    def q(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
        params, inputs, _, state = _rounded(problem, dtype)
        out = subject.forward(params, inputs, state)
        if key not in out:
            raise NotApplicable
        return {k: out[k] for k in (key, *more) if k in out}

    return q


def _default_mode(subject: Any) -> str:
    return str(subject.grad_modes[0])


def q_loss(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
    """The loss the gradient engine computes (a suspect without one has ``loss`` alone)."""
    params, inputs, labels, state = _rounded(problem, dtype)
    if hasattr(subject, "loss"):
        return {"loss": np.asarray(subject.loss(params, inputs, labels, state))}
    loss, _, _ = subject.value_and_grad(_default_mode(subject), params, inputs, labels, state)
    return {"loss": np.asarray(loss)}


def q_perplexity(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
    return {"perplexity": np.exp(q_loss(subject, problem, dtype)["loss"])}


def q_grads(mode: str) -> Quantity:
    def q(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
        if mode not in subject.grad_modes:
            mode_used = _default_mode(subject)  # the reference (or a suspect) has bptt only
        else:
            mode_used = mode
        params, inputs, labels, state = _rounded(problem, dtype)
        _, grads, final = subject.value_and_grad(mode_used, params, inputs, labels, state)
        return {**grads, **state_arrays(final)}

    return q


def _reference_grads(problem: Problem, dtype: str) -> Arrays:
    params, inputs, labels, state = _rounded(problem, dtype)
    _, grads, _ = reference().value_and_grad("bptt", params, inputs, labels, state)
    return {k: _round(v, dtype) for k, v in grads.items()}


def q_clip(branch: str) -> Quantity:
    """Clipping the reference gradients with θ above, below or at infinity of their norm."""

    def q(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
        if not hasattr(subject, "clip"):
            raise NotApplicable
        grads = _reference_grads(problem, dtype)
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        if norm == 0:  # vocab 1: nothing to learn; clip a random gradient instead
            rng = np.random.default_rng(problem.seed)
            grads = {
                k: rng.standard_normal(v.shape).astype(dtype).astype(np.float64)
                for k, v in grads.items()
            }
            norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        theta = {"above": norm / 3, "below": norm * 3, "inf": math.inf}[branch]
        clipped, got_norm = subject.clip(grads, theta)
        return {**clipped, "norm": np.asarray(got_norm)}

    return q


PREFIX_LEN = 4


def q_sample(temperature: float | None) -> Quantity:
    def q(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
        if not hasattr(subject, "predict"):
            raise NotApplicable
        params, inputs, _, _ = _rounded(problem, dtype)
        prefix = [int(t) for t in inputs[:PREFIX_LEN, 0]]
        out = subject.predict(params, prefix, 30, temperature, problem.seed)
        return {"tokens": np.asarray(out, dtype=np.int64)}

    return q


def q_ties(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
    """The interface's argmax and the sampler on logits with equal maxima."""
    if not hasattr(subject, "ops"):
        raise NotApplicable
    ops = subject.ops
    logits = np.array([[0.5, 2.0, -1.0, 2.0, 2.0], [3.0, 3.0, 3.0, 3.0, 3.0]])
    arg = ops.to_numpy(ops.argmax(ops.asarray(logits), axis=-1))
    picks = [sampling.next_token(ops, ops.asarray(row[None]), None, None) for row in logits]
    return {"argmax": np.asarray(arg, np.int64), "greedy": np.asarray(picks, np.int64)}


def _clipped_training(problem: Problem, sampling: str, detach: bool = True) -> TrainConfig:
    """The training runs' configuration: ``problem``'s shapes, lr 1, and θ = 0.1, small
    enough that clipping acts on most steps. d2l 1.0's windows: 3 × B - 1 training windows,
    so every third minibatch is the partial one, and an epoch (a new shuffle) every 3 steps."""
    return TrainConfig(
        num_train=3 * problem.batch_size - 1,
        batch_size=problem.batch_size,
        num_steps=problem.num_steps,
        num_hiddens=problem.num_hiddens,
        lr=1.0,
        clip=0.1,
        sampling=sampling,
        embed_dim=problem.embed_dim,
        loss="last-step" if problem.last_step_loss else "all-steps",
        detach=detach,
    )


def q_train(sampling_kind: str) -> Quantity:
    """Parameter trajectory of SGD with clipping through the real training loop.

    Training starts from the chapter's initialisation at the problem's shapes: from the
    moderate and saturating regimes, SGD at lr 1 is chaotic on these toy problems, and any two
    roundings drift apart by about ×10 every 5 steps (measured), whatever the backend.
    """

    def q(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
        if not hasattr(subject, "train"):
            raise NotApplicable
        problem = dataclasses.replace(problem, scale="d2l")
        params, *_ = _rounded(problem, dtype)
        sampling = sampling_kind if sampling_kind != "no-detach" else "sequential"
        cfg = _clipped_training(problem, sampling, detach=sampling_kind != "no-detach")
        steps = TRAIN_STEPS[dtype] if sampling_kind != "no-detach" else min(TRAIN_STEPS[dtype], 20)
        traj = subject.train(
            _default_mode(subject), params, problem.corpus(), cfg, problem.seed, steps
        )
        return {k: np.stack([p[k] for p in traj]) for k in model.param_names(traj[0])}

    return q


REPLICA_BATCH = 8
"""The minibatch of the data-parallel checks: it splits into 2 and into 4 equal shards."""


def replica_problem(problem: Problem) -> Problem:
    """The problem's cell and shapes at the chapter's initialisation (see ``q_train``) with a
    minibatch that every count of ``REPLICA_COUNTS`` divides."""
    return dataclasses.replace(problem, scale="d2l", batch_size=REPLICA_BATCH)


def _replica_runs(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
    """For each replica count: the parameter trajectory (``N:params:name``), the minibatch's
    gradient before each step (``N:grads:name``) and its loss (``N:grads:loss``), over
    ``TRAIN_STEPS`` steps of sequential partitioning (the carried state is sharded too, and
    every epoch draws a new offset from core's generator) with clipping acting. Kept on the
    subject: the trajectory check and the gradient check read the same runs."""
    if not hasattr(subject, "train_replicated"):
        raise NotApplicable
    engine = hasattr(getattr(subject, "module", None), "REPLICA_ENGINE")
    if not (engine or subject is reference() or hasattr(subject, "fault")):
        raise NotApplicable  # a one-device mistake: nothing of its own to show here
    problem = replica_problem(problem)
    cache = subject.__dict__.setdefault("_replica_runs", {})
    if (problem, dtype) in cache:
        return dict(cache[(problem, dtype)])
    params, *_ = _rounded(problem, dtype)
    cfg = _clipped_training(problem, "sequential")
    out: dict[str, np.ndarray] = {}
    for n in REPLICA_COUNTS:
        runs = subject.train_replicated(
            params, problem.corpus(), cfg, problem.seed, TRAIN_STEPS[dtype], n
        )
        for name in model.param_names(runs[0][0]):
            out[f"{n}:params:{name}"] = np.stack([after[name] for after, _, _ in runs])
            out[f"{n}:grads:{name}"] = np.stack([grads[name] for _, grads, _ in runs])
        out[f"{n}:grads:loss"] = np.stack([np.asarray(loss) for _, _, loss in runs])
    cache[(problem, dtype)] = out
    return dict(out)


def q_replicas(part: str) -> Quantity:
    """``params``: the trajectory of data-parallel SGD against one device's; ``grads``: the
    combined gradient and loss of every step against the minibatch's own."""

    def q(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
        runs = _replica_runs(subject, problem, dtype)
        return {k: v for k, v in runs.items() if k.split(":")[1] == part}

    return q


def q_interface(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
    if not hasattr(subject, "ops"):
        raise NotApplicable
    missing = missing_operations(subject.ops)
    return {"missing": np.asarray([len(missing)], np.float64)}


def check_interface(subject: Any) -> Cell:
    missing = missing_operations(subject.ops)
    return Cell(
        "interface",
        subject.label,
        subject.dtype,
        subject.device,
        0.0 if not missing else math.inf,
        0.0,
        not missing,
        "" if not missing else "missing operations: " + ", ".join(missing),
        None,
    )


def finite_difference_error(
    params: Arrays,
    inputs: np.ndarray,
    labels: np.ndarray,
    state: State,
    activation: str = "tanh",
    h: float = 1e-5,
) -> float:
    """core's BPTT gradients (of the parameters and of the initial state, both parts of the
    LSTM's) against central finite differences of core's loss, float64, for any cell, as
    ``max_error`` over all of them together: a parameter with a tiny gradient has a finite
    difference made of rounding, which must not decide the verdict."""
    ops = reference().ops
    _, grads, _, dstate = cells.any_bptt(ops, params, inputs, labels, state, activation)
    parts = dict(zip(("state", "state_c"), state_parts(state), strict=False))
    targets = {**params, **parts}

    def loss_at() -> float:
        loss, _ = cells.any_forward_loss(ops, params, inputs, labels, state, activation)
        return float(loss)

    numeric: Arrays = {}
    for name, value in targets.items():  # each perturbed in place, where the loss reads it
        numeric[name] = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            old = value[idx]
            value[idx] = old + h
            up = loss_at()
            value[idx] = old - h
            down = loss_at()
            value[idx] = old
            numeric[name][idx] = (up - down) / (2 * h)
    analytic = dict(zip(("state", "state_c"), state_parts(dstate), strict=False))
    return max_error({**grads, **analytic}, numeric)


def check_bptt_vs_fd(problem: Problem, h: float = 1e-5) -> Cell:
    """The reference BPTT of the problem's cell against central finite differences of the
    reference loss (float64)."""
    worst = finite_difference_error(*problem.draw(), h=h)
    tol = tolerance("float64", "fd")
    return Cell(
        "bptt-vs-fd",
        "numpy",
        "float64",
        "cpu",
        worst,
        tol,
        worst <= tol,
        "" if worst <= tol else "hand-written BPTT disagrees with finite differences",
        problem.label,
    )


def _run_meta(cell: str) -> dict[str, Any]:
    """The ``run`` a checkpoint of ``cell`` carries, as ``rosetta-rnn train`` writes it (the
    cell, and the GRU's formulation apart)."""
    kind, _, form = cell.partition("/")
    return {"cell": kind, "gru": form or None}


def check_checkpoint(
    subject: BackendSubject, problem: Problem, loaders: Sequence[BackendSubject]
) -> Cell:
    """Write the subject's parameters as a checkpoint; every loader gives the same logits."""
    params, inputs, _, state = _rounded(problem, subject.dtype)
    mine = subject.transfer(params)
    meta = {
        "dtype": subject.dtype,
        "backend": subject.backend,
        "epoch": 0,
        "config": {"num_hiddens": problem.num_hiddens, "embed_dim": problem.embed_dim},
        "vocab": [f"t{i}" for i in range(problem.vocab_size)],
        "run": _run_meta(problem.cell),
    }
    ref = reference().forward({k: v.astype(np.float64) for k, v in mine.items()}, inputs, state)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "c.safetensors")
        checkpoint.save(path, mine, meta)
        for loader in loaders:
            got = loader.logits_from_checkpoint(path, inputs, state)
            worst = max(worst, max_error({"logits": got["logits"]}, {"logits": ref["logits"]}))
    tol = tolerance(subject.dtype, "values")
    return Cell(
        "checkpoint",
        subject.label,
        subject.dtype,
        subject.device,
        worst,
        tol,
        worst <= tol,
        "" if worst <= tol else "a checkpoint loads to different outputs",
        problem.label,
    )


CHECKS: dict[str, tuple[Quantity, str, bool]] = {
    # name: (quantity, tolerance kind, exact)
    "params": (q_params, "values", True),
    "embedding": (q_forward("embedding"), "values", False),
    "hidden": (q_forward("hidden", "memory"), "values", False),
    "logits": (q_forward("logits"), "values", False),
    "loss": (q_loss, "values", False),
    "perplexity": (q_perplexity, "values", False),
    "grads/autograd": (q_grads("autograd"), "grads", False),
    "grads/bptt": (q_grads("bptt"), "grads", False),
    "clip/above": (q_clip("above"), "grads", False),
    "clip/below": (q_clip("below"), "grads", False),
    "clip/inf": (q_clip("inf"), "grads", False),
    "sample/greedy": (q_sample(None), "values", True),
    "sample/temperature": (q_sample(1.0), "values", True),
    "sample/ties": (q_ties, "values", True),
    "train/sequential": (q_train("sequential"), "train", False),
    "train/random": (q_train("random"), "train", False),
    "train/no-detach": (q_train("no-detach"), "train", False),
    "train/windows": (q_train("windows"), "train", False),
    "train/replicas": (q_replicas("params"), "train", False),
    "grads/replicas": (q_replicas("grads"), "grads", False),
}

CELL_FREE: tuple[str, ...] = ("sample/ties",)
"""Checks that involve no cell (the sampler on fixed logits): once per column, as
``interface``; every other check runs once per cell."""


def _hint_temperature(subject: Any, problem: Problem) -> str:
    """Greedy agrees but temperature sampling does not: the uniforms are not the core's."""
    greedy = q_sample(None)
    if (
        max_error(
            greedy(subject, problem, subject.dtype), greedy(reference(), problem, subject.dtype)
        )
        == 0
    ):
        from .mistakes import FrameworkRNG

        return FrameworkRNG.mistake
    return ""


def _hint_forward(subject: Any, problem: Problem) -> str:
    """A gradient, trajectory or sample that differs because the forward pass already does:
    the known mistake the hidden states match (a suspect that has no gradients of its own,
    hard_sigmoid for one, is still named)."""
    quantity = CHECKS["hidden"][0]
    try:
        got = quantity(subject, problem, subject.dtype)
    except NotApplicable:
        return ""
    tol = tolerance(subject.dtype, "values")
    if max_error(got, quantity(reference(), problem, subject.dtype)) <= tol:
        return ""
    named = diagnose(quantity, subject, problem, got, tol)
    return f"{named} (the hidden states already differ)" if named else ""


HINTS: dict[str, Callable[[Any, Problem], str]] = {
    "sample/temperature": _hint_temperature,
    **{
        name: _hint_forward
        for name in CHECKS
        if name.startswith(("grads/", "train/")) or name == "sample/greedy"
    },
}
"""What a failing check says when no known mistake reproduces its own output."""


REPLICA_CHECKS = ("train/replicas", "grads/replicas")
"""The data-parallel checks: float64 columns of a backend with a replica engine, on one
problem per cell (two replica counts of 100 steps each)."""


def applicable(name: str, subject: Any) -> bool:
    if name in REPLICA_CHECKS:
        module = getattr(subject, "module", None)
        return subject.dtype == "float64" and hasattr(module, "REPLICA_ENGINE")
    if name.startswith("grads/"):
        return name.split("/", 1)[1] in subject.grad_modes
    try:
        needs = {
            "params": "transfer",
            "embedding": "ops",
            "clip": "clip",
            "sample": "predict",
            "train": "train",
        }[name.split("/")[0]]
    except KeyError:
        return True
    return hasattr(subject, needs)


def run_check(name: str, subject: Any, problems: Sequence[Problem]) -> Cell:
    """One cell: the worst error of check ``name`` over ``problems`` (all of one cell)."""
    quantity, kind, exact = CHECKS[name]
    if name in REPLICA_CHECKS:
        problems = problems[:1]
    results = [compare(name, subject, p, quantity, kind, exact) for p in problems]
    return max(results, key=lambda c: (not c.passed, c.max_error))
