"""``rosetta-rnn verify``: someone's recurrent model held to the reference, and the mistake named.

The subject (``user_subjects``: a torch module, or forward and step functions in NumPy,
PyTorch, JAX or TensorFlow) is loaded with check weights that hide nothing (``Problem``'s
``distinct`` regime: nonzero biases about a different mean per gate, asymmetric matrices, each
gate's input weights at their own scale) and compared, quantity by quantity, with the plain
chapter computed by core's NumPy float64 — the same quantities ``rosetta-rnn conform`` compares.
When one differs, every known mistake (``mistakes.MISTAKES``, the list ``conform``'s diagnosis
uses) is run on the reference and the ones whose output the subject reproduces are named; when
none does, the row says where the subject first departs (time step, parameter, entry).

    report = verify(model)            # a Report; report.passed, print(report.text())
    assert_matches_reference(model)   # in a user's own test suite
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rosetta_rnn.core import model
from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN
from rosetta_rnn.core.errors import UserError, first_line

from . import checks, mxnet_subjects, onnx_subjects
from .checks import Quantity, _default_mode, _reference_grads, _rounded, diagnose
from .problems import Problem, state_arrays
from .subjects import NotApplicable
from .tolerances import tolerance
from .user_subjects import (
    FunctionSubject,
    SubjectError,
    TorchModuleSubject,
    subject_of,
)

CELL_NAMES: dict[str, str] = {
    "rnn": RNN,
    "gru": GRU_RESET_BEFORE,
    "gru-reset-before": GRU_RESET_BEFORE,
    "gru-reset-after": GRU_RESET_AFTER,
    "lstm": LSTM,
}
"""What ``--cell`` accepts: ``gru`` is d2l's, the reset-before GRU."""

SIZES = {"vocab_size": 11, "num_hiddens": 6, "batch_size": 3, "num_steps": 5}
"""The check problem's sizes: batch and steps differ, so a transposed pair cannot pass."""
TEMPERATURE = 0.5
"""The sampled generation's temperature: not 1, so an inverted one shows."""


# --- the quantities verify adds to conform's --------------------------------------------------


def q_outputs(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
    """The logits of every step, (steps × batch, vocab) in time-major order."""
    params, inputs, _, state = _rounded(problem, dtype)
    return {"logits": subject.forward(params, inputs, state)["logits"]}


def q_final(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
    """The final state: H_T, and the LSTM's C_T."""
    params, inputs, _, state = _rounded(problem, dtype)
    out = subject.forward(params, inputs, state)
    if "final" in out:
        H = out["final"]
    elif "hidden" in out:  # a backend: its last hidden state
        H = out["hidden"][-1]
    else:
        raise NotApplicable("the subject returns no state")
    found = (H, out["memory"]) if "memory" in out else H
    return state_arrays(found)


def q_gradients(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
    """Every parameter's gradient of the mean cross-entropy, from the subject's own autodiff
    (a backend's: its BPTT)."""
    params, inputs, labels, state = _rounded(problem, dtype)
    _, grads, _ = subject.value_and_grad(_default_mode(subject), params, inputs, labels, state)
    return {k: np.asarray(grads[k]) for k in model.param_names(grads)}


def q_step(clipped: bool) -> Quantity:
    """One SGD step (lr 1) of the subject's training step from the check's parameters: clipped
    at half the reference gradient's norm, or at θ = ∞ (the gradient's own scale shows)."""

    def q(subject: Any, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
        params, inputs, labels, state = _rounded(problem, dtype)
        norm = math.sqrt(
            sum(float((g * g).sum()) for g in _reference_grads(problem, dtype).values())
        )
        theta = norm / 2 if clipped else math.inf
        cfg = checks._clipped_training(problem, "sequential")
        spec = subject.spec(params, cfg, problem.seed)
        step = subject.make_step(_default_mode(subject), spec)
        X, Y = subject._inputs(inputs, labels)
        new, *_ = step(subject.put(params), X, Y, subject.put_state(state), 1.0, theta)
        return {k: np.asarray(subject.get(new[k])) for k in model.param_names(new)}

    return q


@dataclass(frozen=True)
class Check:
    name: str
    quantity: Quantity
    kind: str  # the tolerance table's column
    exact: bool = False
    what: str = ""


CHECKS: tuple[Check, ...] = (
    Check("outputs", q_outputs, "values", what="the logits of every step"),
    Check("final state", q_final, "values", what="H_T (and the LSTM's C_T)"),
    Check("loss", checks.q_loss, "values", what="mean cross-entropy over every label"),
    Check("gradients", q_gradients, "grads", what="every parameter's, by the subject's autodiff"),
    Check("step/clipped", q_step(True), "grads", what="one SGD step, clipping at ‖g‖/2"),
    Check("step/unclipped", q_step(False), "grads", what="one SGD step, θ = ∞"),
    Check("trajectory", checks.q_train("sequential"), "train", what="SGD over minibatches"),
    Check("generate/greedy", checks.q_sample(None), "values", True, "30 tokens after a prefix"),
    Check(
        "generate/sampled",
        checks.q_sample(TEMPERATURE),
        "values",
        True,
        f"30 tokens at temperature {TEMPERATURE}, the reference's uniforms",
    ),
)
TRAJECTORIES = ("sequential", "random")
"""How the trajectory's minibatches come: sequential partitions with the state carried (and
detached), or random ones each from a zero state."""


# --- the report ---------------------------------------------------------------------------------


@dataclass
class Row:
    check: str
    what: str
    ran: bool
    passed: bool
    error: float | None = None
    tolerance: float | None = None
    reference: float | None = None  # the reference's value where the two differ most
    subject: float | None = None  # the subject's there
    where: str = ""
    diagnosis: str = ""
    note: str = ""  # why it did not run, or what failed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Report:
    subject: str
    framework: str
    cell: str
    dtype: str
    device: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ran(self) -> list[Row]:
        return [r for r in self.rows if r.ran]

    @property
    def passed(self) -> bool:
        return bool(self.ran) and all(r.passed for r in self.ran)

    @property
    def first_failure(self) -> Row | None:
        return next((r for r in self.ran if not r.passed), None)

    @property
    def mistakes(self) -> list[str]:
        """The known mistakes named by the failing rows, each once, in the rows' order."""
        named = [r.diagnosis for r in self.ran if not r.passed and r.diagnosis]
        return list(dict.fromkeys(named))

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "subject": self.subject,
            "framework": self.framework,
            "cell": self.cell,
            "dtype": self.dtype,
            "device": self.device,
            "rows": [r.to_dict() for r in self.rows],
            "mistakes": self.mistakes,
            "notes": self.notes,
        }

    def text(self) -> str:
        head = (
            f"verify {self.subject} ({self.framework}, {self.cell}, {self.dtype} on {self.device})"
        )
        lines = [head, *self.notes]
        width = max(len(r.check) for r in self.rows) if self.rows else 5
        said = ""
        for r in self.rows:
            if not r.ran:
                lines.append(f"  {r.check:<{width}}  not run   {r.note}")
                continue
            verdict = "ok" if r.passed else "FAILED"
            figures = f"error {r.error:.1e} (tolerance {r.tolerance:.0e})"
            lines.append(f"  {r.check:<{width}}  {verdict:<8}  {figures}")
            if r.passed:
                continue
            pad = f"  {'':<{width}}  "
            if r.where:
                at = f"{pad}{r.where}"
                if r.reference is not None and r.subject is not None:
                    at += f": reference {r.reference:.6g}, subject {r.subject:.6g}"
                lines.append(at)
            cause = r.diagnosis or r.note
            lines.append(f"{pad}→ {'the same' if cause == said else cause}")
            said = cause
        first = self.first_failure
        if self.passed:
            n = len(self.ran)
            lines.append(
                f"passed: {n} {'check agrees' if n == 1 else 'checks agree'} with the reference"
            )
        elif first is not None:
            cause = ", or ".join(self.mistakes) or "no known mistake explains it"
            where = f" ({first.where})" if first.where and not self.mistakes else ""
            lines.append(f"FAILED at {first.check}{where}: {cause}")
        return "\n".join(lines)


class VerifyError(AssertionError):
    """``assert_matches_reference``'s failure: the report's text is the message."""

    def __init__(self, report: Report) -> None:
        super().__init__(report.text())
        self.report = report


# --- where two quantities differ ----------------------------------------------------------------


def _worst(
    got: dict[str, np.ndarray], ref: dict[str, np.ndarray]
) -> tuple[str, tuple, float, float]:
    """(name, index, reference value, subject value) of the largest difference."""
    best: tuple[str, tuple[int, ...], float, float] = ("", (), math.nan, math.nan)
    largest = -1.0
    for name, want in ref.items():
        if name not in got:
            return name, (), float("nan"), float("nan")
        a, b = np.asarray(got[name], dtype=np.float64), np.asarray(want, dtype=np.float64)
        if a.shape != b.shape:
            return name, (), float("nan"), float("nan")
        diff = np.abs(a - b)
        diff = np.where(np.isnan(diff), np.inf, diff)
        if diff.size and float(diff.max()) > largest:
            idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
            largest = float(diff.max())
            best = (name, tuple(int(i) for i in idx), float(b[idx]), float(a[idx]))
    return best


def _where(
    check: str, got: dict, ref: dict, problem: Problem
) -> tuple[str, float | None, float | None]:
    """Where the subject departs most from the reference, in the chapter's terms."""
    name, idx, want, have = _worst(got, ref)
    if not name:
        return "", None, None
    if name in ref and name in got and np.shape(got[name]) != np.shape(ref[name]):
        return f"{name} is {np.shape(got[name])}, the reference's {np.shape(ref[name])}", None, None
    B = problem.batch_size
    if check == "outputs" and idx:
        row, token = idx
        return (
            f"step {row // B + 1} of {problem.num_steps}, sequence {row % B}, token {token}",
            want,
            have,
        )
    if check == "trajectory" and idx:
        return f"SGD step {idx[0] + 1}, {name}{list(idx[1:])}", want, have
    if check.startswith("generate") and idx:
        return f"token {idx[0] + 1} (the prefix is 4)", want, have
    return f"{name}{list(idx) if idx else ''}", want, have


# --- running the checks -------------------------------------------------------------------------


def _problem(subject: Any, cell: str, seed: int) -> Problem:
    sizes = dict(SIZES)
    if hasattr(subject, "sizes"):  # a model: its layers say its sizes
        sizes.update(subject.sizes())
    return Problem(
        vocab_size=sizes["vocab_size"],
        num_hiddens=sizes["num_hiddens"],
        batch_size=sizes["batch_size"],
        num_steps=sizes["num_steps"],
        scale="distinct",
        seed=seed,
        cell=cell,
        zero_state=not getattr(subject, "takes_state", True),
    )


def _row(check: Check, subject: Any, problem: Problem) -> Row:
    tol = 0.0 if check.exact else tolerance(subject.dtype, check.kind)
    try:
        got = check.quantity(subject, problem, subject.dtype)
    except NotApplicable as e:
        return Row(check.name, check.what, False, False, note=str(e) or "not applicable")
    except SubjectError as e:
        return Row(
            check.name, check.what, True, False, math.inf, tol, note=first_line(e), diagnosis=""
        )
    ref = check.quantity(checks.reference(), problem, subject.dtype)
    err = checks.max_error(got, ref)
    leak = checks._dtype_leak(subject, got)
    passed = err <= tol and not leak
    row = Row(check.name, check.what, True, passed, err, tol)
    if passed:
        return row
    row.where, row.reference, row.subject = _where(check.name, got, ref, problem)
    row.diagnosis = leak or diagnose(check.quantity, subject, problem, got, tol)
    if not row.diagnosis and check.name == "generate/sampled":
        again = check.quantity(subject, problem, subject.dtype)
        if checks.max_error(again, got) != 0:  # the same uniforms, another text: its own RNG
            from .mistakes import FrameworkRNG

            row.diagnosis = f"{FrameworkRNG.mistake}: two runs with the same uniforms differ"
    if not row.diagnosis:
        row.note = "no known mistake explains it"
    return row


def verify(
    subject: Any,
    *,
    cell: str | None = None,
    dtype: str | None = None,
    trajectory: str = "sequential",
    seed: int = 0,
    checks_to_run: Sequence[str] | None = None,
    **options: Any,
) -> Report:
    """Hold ``subject`` to the reference. ``subject``: a torch module, a Keras or Flax model,
    a forward function, or a dict / object naming ``forward`` (and ``step``, ``predict``,
    ``cell``, ``names`` ...), an ONNX file, or an ``MxnetFile`` (``mxnet_target``: a file
    written for MXNet, run in MXNet's own environment); ``options`` go to ``FunctionSubject``
    (framework, step, predict, names, params_form, inputs, state_form, device; a model takes
    inputs alone). ``cell``:
    rnn, gru (d2l's, reset-before), gru-reset-after or lstm (a model says its own; a GRU
    model can be held to the other form). ``dtype``: float64 where the subject runs it, else
    float32; a model's weights decide."""
    if trajectory not in TRAJECTORIES:
        raise UserError(f"trajectory is one of {', '.join(TRAJECTORIES)}, got {trajectory!r}")
    wanted = [c for c in CHECKS if checks_to_run is None or c.name in checks_to_run]
    if checks_to_run is not None:
        unknown = set(checks_to_run) - {c.name for c in CHECKS}
        if unknown:
            raise UserError(
                f"unknown check {sorted(unknown)[0]!r}; the checks are "
                + ", ".join(c.name for c in CHECKS)
            )
    notes: list[str] = []
    if cell is None and isinstance(subject, dict) and "cell" in subject:
        cell = subject["cell"]  # a subject given as a dict names its cell as --cell does
    given = None
    if is_onnx(subject):
        built, given = _build_onnx(subject, cell, dtype, options, notes)
    elif isinstance(subject, mxnet_subjects.MxnetFile):
        core = CELL_NAMES.get(cell or "rnn")
        if core is None:
            raise UserError(f"unknown cell {cell!r}; choose from {', '.join(CELL_NAMES)}")
        built = mxnet_subjects.build(
            subject, cell, core, dtype, options, notes, lambda s: _float64_fails(s, core)
        )
    else:
        if {"weights", "runtime"} & set(options):
            raise UserError("weights and runtime are an ONNX model's (verify FILE.onnx)")
        built = _build(subject, cell, dtype, options, notes)
    try:
        return _checked(built, given, trajectory, wanted, seed, notes)
    finally:
        if isinstance(built, mxnet_subjects.MxnetSubject):  # kept loaded in MXNet's worker
            built.close()


def _checked(
    built: Any,
    given: dict[str, np.ndarray] | None,
    trajectory: str,
    wanted: list[Check],
    seed: int,
    notes: list[str],
) -> Report:
    """The report of the checks ``wanted`` on the built subject."""
    core_cell = built.cell
    problem = _problem(built, core_cell, seed)
    if given is not None:
        problem = onnx_subjects.problem_for(problem, given)
    params, inputs, _, state = _rounded(problem, built.dtype)
    if "final" not in built.forward(params, inputs, state) and trajectory == "sequential":
        trajectory = "random"
        notes.append(
            "the model returns no state: its trajectory starts every minibatch from zero "
            "(random minibatches, as d2l 1.0 trains), and generation reads the whole text again "
            "for every token"
        )
    if trajectory == "random":
        wanted = [
            dataclasses.replace(c, quantity=checks.q_train("random"))
            if c.name == "trajectory"
            else c
            for c in wanted
        ]
    report = Report(built.label, built.framework, core_cell, built.dtype, built.device, notes=notes)
    with _full_precision():
        for check in wanted:
            row = _row(check, built, problem)
            if not report.rows and row.ran and row.error == math.inf and row.note:
                raise SubjectError(row.note)  # the first check cannot run it: one line
            report.rows.append(row)
    _name_through_the_outputs(report)
    return report


@contextlib.contextmanager
def _full_precision() -> Iterator[None]:
    """TF32 off in torch's CUDA matmuls and cuDNN while the checks run (a float32 comparison
    is of float32), then as they were; nothing to do where torch is not loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    was = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = was


def _name_through_the_outputs(report: Report) -> None:
    """A gradient, step, trajectory or sample that differs where the outputs already do, for a
    named mistake, is that mistake's mark too (hard_sigmoid has no gradients of its own to
    compare, a float32 leak shows in the outputs' dtype alone)."""
    first = report.rows[0] if report.rows else None
    if first is None or first.check != "outputs" or first.passed or not first.diagnosis:
        return
    for row in report.ran[1:]:
        if not row.passed and not row.diagnosis:
            row.diagnosis = first.diagnosis
            row.note = "named through the outputs, which already differ"


def _build(
    subject: Any, cell: str | None, dtype: str | None, options: dict, notes: list[str]
) -> Any:
    """The subject at the dtype it runs: float64 unless asked or unable (then float32, said);
    a model's own weights decide (a torch module's, a Keras model's)."""
    core = CELL_NAMES.get(cell or "rnn")
    if core is None:
        raise UserError(f"unknown cell {cell!r}; choose from {', '.join(CELL_NAMES)}")
    if is_model(subject):
        made = subject_of(subject, **({"cell": core} if cell else {}), **options)
        if dtype is not None and made.dtype != dtype:
            raise UserError(f"the model's weights are {made.dtype}; it is checked as such")
        return made
    if dtype is not None:
        return subject_of(subject, cell=core, dtype=dtype, **options)
    first = subject_of(subject, cell=core, dtype="float64", **options)
    reason = _float64_fails(first, core)
    if not reason:
        return first
    notes.append(f"checked in float32: in float64 {reason}")
    return subject_of(subject, cell=core, dtype="float32", **options)


def _float64_fails(subject: Any, core: str) -> str:
    """Why a float64 subject cannot be checked in float64 (its logits are another dtype, it
    cannot run), or "" where it can."""
    try:
        out = q_outputs(subject, _problem(subject, core, 0), "float64")
    except SubjectError as e:
        return first_line(e)
    got = np.asarray(out["logits"]).dtype
    return "" if got == np.float64 else f"it returned {got} logits"


def is_onnx(obj: Any) -> bool:
    """An ONNX model: an ``onnx.ModelProto``, or the path of a file holding one."""
    if isinstance(obj, (str, Path)):
        from rosetta_rnn.core.convert import _looks_onnx

        return Path(obj).is_file() and _looks_onnx(obj)
    if "onnx" in sys.modules:
        import onnx

        return isinstance(obj, onnx.ModelProto)
    return False


def _build_onnx(
    subject: Any, cell: str | None, dtype: str | None, options: dict, notes: list[str]
) -> tuple[Any, dict[str, np.ndarray]]:
    """An ONNX file and the parameters it is held to (``weights``: a file convert reads, or
    core's parameters; else its own tensors): the file's floats decide its dtype."""
    extra = set(options) - {"weights", "runtime", "inputs", "label"}
    if extra:
        raise UserError(f"an ONNX model takes no {', '.join(sorted(extra))}")
    proto, label = onnx_subjects.load(subject)
    core = CELL_NAMES.get(cell) if cell else None
    if cell and core is None:
        raise UserError(f"unknown cell {cell!r}; choose from {', '.join(CELL_NAMES)}")
    params, held, more = onnx_subjects.reference_weights(proto, options.get("weights"), core, label)
    notes += more
    made = onnx_subjects.OnnxFileSubject(
        proto,
        params,
        cell=held,
        runtime=options.get("runtime", "onnxruntime"),
        inputs=options.get("inputs", "time-major"),
        label=options.get("label", label),
    )
    if dtype is not None and made.dtype != dtype:
        raise UserError(f"the ONNX model computes in {made.dtype}; it is checked as such")
    return made, params


def mxnet_target(target: str, framework: str | None = None) -> mxnet_subjects.MxnetFile | None:
    """``FILE.py[:NAME]`` as an MXNet subject where the file imports MXNet (read, never run
    here) or ``framework`` is mxnet; else None."""
    return mxnet_subjects.target(target, framework)


def is_model(obj: Any) -> bool:
    """A torch module, a Keras model or a Flax one: its weights say its dtype, its layers its
    sizes."""
    if "torch" in sys.modules:
        import torch

        if isinstance(obj, torch.nn.Module):
            return True
    if "flax" in sys.modules:
        import flax.linen as linen
        from flax import nnx

        if isinstance(obj, (linen.Module, nnx.Module)):
            return True
    if "keras" in sys.modules:
        import keras

        return isinstance(obj, keras.Layer)
    return False


def assert_matches_reference(subject: Any, **kwargs: Any) -> Report:
    """``verify`` in a test: returns the report when every check that ran agrees, raises
    ``VerifyError`` (an AssertionError whose message is the report) when one does not."""
    report = verify(subject, **kwargs)
    if not report.passed:
        raise VerifyError(report)
    return report


# --- MODULE:OBJECT --------------------------------------------------------------------------------


def load_object(target: str) -> Any:
    """``MODULE:OBJECT``: an importable module (or a .py file) and a name in it (dots reach
    into it: ``models:net.rnn``)."""
    if ":" not in target:
        raise UserError(f"{target!r} is not MODULE:OBJECT (a module or .py file, a colon, a name)")
    where, _, name = target.rpartition(":")
    try:
        if where.endswith(".py") or Path(where).is_file():
            path = Path(where)
            if not path.is_file():
                raise UserError(f"no file {where}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise UserError(f"cannot import {where}")
            module = importlib.util.module_from_spec(spec)
            sys.modules.setdefault(path.stem, module)
            spec.loader.exec_module(module)
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(where)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"importing {where} raised {type(e).__name__}: {first_line(e)}") from e
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{where} has no {name!r}")
        obj = getattr(obj, part)
    return obj


__all__ = [
    "CHECKS",
    "FunctionSubject",
    "Report",
    "Row",
    "TorchModuleSubject",
    "VerifyError",
    "assert_matches_reference",
    "load_object",
    "mxnet_target",
    "verify",
]
