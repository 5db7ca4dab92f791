"""Known mistakes, each a deliberately broken adapter of the NumPy backend.

The suite uses them twice: tests run the checks on them to prove each is caught, and a failing
cell is compared against each of them to name the likely cause in its message. A mistake
applies to the cells in its ``cells`` (the GRU's gate order means nothing to an LSTM); the
diagnosis tries it on those only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.core import cells, data, model, sampling
from rosetta_rnn.core import replicas as replicas_core
from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN
from rosetta_rnn.core.contract import StepFn
from rosetta_rnn.core.run import RunSpec

from .problems import CELLS, State
from .subjects import Arrays, BackendSubject, NotApplicable

GRUS = (GRU_RESET_BEFORE, GRU_RESET_AFTER)
GATED = cells.CELLS


def _batch_major(labels: Any) -> Any:
    """The labels of d2l-en #1349: (B, T) flattened, read as if they were time-major (T, B)."""
    return labels.T.reshape(labels.shape)


class LabelsBatchMajor(BackendSubject):
    """Labels not transposed to time-major (d2l's TensorFlow chapter, d2l-en #1349)."""

    mistake = "labels are not time-major (d2l-en #1349)"

    def value_and_grad(self, mode, params, inputs, labels, state):
        return super().value_and_grad(mode, params, inputs, _batch_major(labels), state)

    def make_step(self, mode: str, spec: RunSpec) -> StepFn:
        step = super().make_step(mode, spec)
        return lambda p, x, y, s, lr, theta: step(p, x, _batch_major(y), s, lr, theta)


def _labels_for_batch_major_logits(labels: Any) -> Any:
    """Time-major labels (T, B) as a model whose logits come batch-major pairs them: the row of
    step t, sequence b is the (b·T + t)-th, so it meets the label at that time-major index."""
    T, B = labels.shape
    return labels.reshape(B, T).T


class LogitsBatchMajor(BackendSubject):
    """The logits stacked batch-major (row b·T + t for step t of sequence b) against
    time-major labels: the other half of d2l-en #1349."""

    mistake = (
        "the logits are stacked batch-major (batch × steps rows) where the labels are "
        "time-major (d2l-en #1349)"
    )

    def forward(self, params: Arrays, inputs: np.ndarray, state: State) -> Arrays:
        out = super().forward(params, inputs, state)
        T, B = inputs.shape
        V = out["logits"].shape[-1]
        out["logits"] = out["logits"].reshape(T, B, V).transpose(1, 0, 2).reshape(T * B, V)
        return out

    def value_and_grad(self, mode, params, inputs, labels, state):
        if labels.shape[0] != inputs.shape[0]:
            raise NotApplicable  # a last-step loss has no row order to get wrong
        paired = _labels_for_batch_major_logits(labels)
        return super().value_and_grad(mode, params, inputs, paired, state)

    def make_step(self, mode: str, spec: RunSpec) -> StepFn:
        step = super().make_step(mode, spec)
        ops = self.ops

        def paired(p, x, y, s, lr, theta):
            labels = ops.asarray(_labels_for_batch_major_logits(ops.to_numpy(y)))
            return step(p, x, labels, s, lr, theta)

        return paired

    def predict(self, params, prefix, n, temperature, seed):
        raise NotApplicable  # one sequence: no row order


def _clip_with_epsilon(ops: Any, grads: Any, theta: float, eps: float = 1e-6) -> tuple[Any, Any]:
    norm = model.global_norm(ops, grads)
    scale = ops.minimum(1.0, theta / (norm + eps))
    return {k: grads[k] * scale for k in model.param_names(grads)}, norm


def _clip_each(ops: Any, grads: Any, theta: float) -> tuple[Any, Any]:
    """Every parameter's gradient clipped to norm θ on its own (the norm returned is the
    global one, as a logger would show it)."""
    out = {}
    for k in model.param_names(grads):
        g = grads[k]
        out[k] = g * ops.minimum(1.0, theta / ops.sqrt(ops.sum(g * g)))
    return out, model.global_norm(ops, grads)


class _OtherClipping(BackendSubject):
    """A clipping rule in place of d2l's g·min(1, θ/‖g‖) over every parameter together:
    ``rule(ops, grads, θ) -> (clipped, norm)``, in ``clip`` and in the training step."""

    rule: Callable[[Any, Any, float], tuple[Any, Any]]

    def clip(self, grads: Arrays, theta: float) -> tuple[Arrays, np.ndarray]:
        clipped, norm = self.rule(self.ops, self.put(grads), theta)
        return {k: self.get(v) for k, v in clipped.items()}, self.get(norm)

    def make_step(self, mode: str, spec: RunSpec) -> StepFn:
        ops = self.ops
        vg = self.module.make_value_and_grad(ops, mode, spec.activation, spec.model_cell)

        def step(p, x, y, s, lr, theta):
            loss, grads, final = vg(p, x, y, s)
            clipped, norm = self.rule(ops, grads, theta)
            return model.sgd(ops, p, clipped, lr), final, loss, norm

        return step


class ClipEpsilon(_OtherClipping):
    """Clipping as torch's ``clip_grad_norm_``: g·θ/(‖g‖ + 1e-6)."""

    mistake = "clipping adds an epsilon: g·θ/(‖g‖ + 1e-6), like torch's clip_grad_norm_"
    rule = staticmethod(_clip_with_epsilon)


class ClipPerParameter(_OtherClipping):
    """Clipping each parameter's gradient by its own norm, not all of them by their global
    norm (tf.clip_by_norm per variable, or torch's clip_grad_norm_ called per parameter)."""

    mistake = (
        "clipping per parameter: each gradient scaled by θ/‖g_p‖ on its own, not all by "
        "θ/‖g‖ over every parameter together"
    )
    rule = staticmethod(_clip_each)


class Float32Leak(BackendSubject):
    """A float64 run whose arrays are silently float32 (a default dtype leaking in)."""

    mistake = "float32 leaked into a float64 run"

    def __init__(self, module: Any, dtype: str, device: str = "cpu") -> None:
        super().__init__(module, dtype, device)
        leaky = module.make_ops("float32", device)
        leaky.dtype = dtype  # claims float64, computes float32
        self.ops = leaky


class FrameworkRNG(BackendSubject):
    """Sampling uniforms from the framework's own generator instead of the core's."""

    mistake = "sampling does not use the core generator's uniforms (a framework RNG decides)"

    def predict(self, params, prefix, n, temperature, seed):
        own_rng = np.random.default_rng()  # unseeded: what torch.multinomial & co. amount to
        return sampling.predict(
            self.ops, self.put(params), prefix, n, temperature=temperature, rng=own_rng
        )


class TemperatureInverted(BackendSubject):
    """Sampling at 1/τ for τ: the logits multiplied by the temperature instead of divided."""

    mistake = "the temperature is inverted: logits × τ instead of logits / τ"

    def predict(self, params, prefix, n, temperature, seed):
        inverted = None if not temperature else 1.0 / temperature
        return super().predict(params, prefix, n, inverted, seed)


# --- data-parallel mistakes (core.replicas) ----------------------------------------------------


class _ReplicaTwin(BackendSubject):
    """A data-parallel engine simulated on NumPy, one replica after another, with one mistake
    (``fault``) in how the replicas' results combine or where their data comes from; without
    a fault it is core.replicas' engine (tests check it reproduces the one-device reference)."""

    mistake = ""
    fault: str | None = None

    def train_replicated(self, params, corpus, cfg, seed, steps, replicas):
        ops = self.ops
        value_and_grad = self.module.make_value_and_grad(ops)
        rngs = [np.random.default_rng(seed)]
        if self.fault == "own-randomness":  # replica r seeds its own generator with seed + r
            rngs += [np.random.default_rng(seed + r) for r in range(1, replicas)]
        P = self.put(params)
        out: list[tuple[Arrays, Arrays, np.ndarray]] = []
        while True:
            epochs = [
                data.data_iter(corpus, cfg.batch_size, cfg.num_steps, rng, cfg.sampling)
                for rng in rngs
            ]
            states = [None] * replicas
            for batches in zip(*epochs, strict=False):
                losses, grads = [], []
                for r in range(replicas):
                    X, Y = batches[r if len(batches) > 1 else 0]
                    Y_t = Y.T if cfg.loss == "all-steps" else Y.T[-1:]
                    x = ops.asarray(replicas_core.shard(X.T, replicas, r, 1))
                    y = ops.asarray(replicas_core.shard(Y_t, replicas, r, 1))
                    if states[r] is None:
                        states[r] = cells.initial_state(ops, P, int(x.shape[1]))
                    loss, g, states[r] = value_and_grad(P, x, y, states[r])
                    if self.fault == "clip-per-replica":
                        g, _ = model.clip_by_global_norm(ops, g, cfg.clip)
                    losses.append(loss)
                    grads.append(g)
                total = self.fault in ("summed", "local-batch-loss")  # a sum where a mean belongs
                scale = 1.0 if total else 1.0 / replicas
                g = {k: sum(gr[k] for gr in grads) * scale for k in model.param_names(P)}
                loss_scale = 1.0 if self.fault == "local-batch-loss" else 1.0 / replicas
                loss = self.get(sum(losses) * loss_scale)
                clipped, _ = model.clip_by_global_norm(ops, g, cfg.clip)
                P = model.sgd(ops, P, clipped, cfg.lr)
                out.append((model.to_numpy(ops, P), g, loss))
                if len(out) == steps:
                    return out


class GradsSummed(_ReplicaTwin):
    mistake = "the replicas' gradients summed, not averaged (N times the minibatch's gradient)"
    fault = "summed"


class ClipPerReplica(_ReplicaTwin):
    mistake = (
        "each replica clips its own gradient before the all-reduce (clipping belongs after "
        "it, on the minibatch's gradient)"
    )
    fault = "clip-per-replica"


class LocalBatchLoss(_ReplicaTwin):
    mistake = (
        "the loss divided by the local batch where the collective sums (loss and gradients "
        "N times too large; divide by the global batch)"
    )
    fault = "local-batch-loss"


class OwnRandomness(_ReplicaTwin):
    mistake = (
        "a replica draws its own minibatches from its own generator (seed + rank) instead "
        "of its shard of core's one draw"
    )
    fault = "own-randomness"


# --- the gated cells' mistakes -----------------------------------------------------------------


class _Rewired(BackendSubject):
    """A cell that runs the model of ``rewire(params)`` instead of ``params``: the broken
    model as a linear map of our parameters. Its gradients are pulled back to our parameters
    through that map (its transpose: ``pull_back``), so gradients and training are the broken
    model's, in the parameters the adapter holds. Both work on NumPy and backend arrays, and
    leave a cell outside ``cells`` as it is."""

    cells: tuple[str, ...] = ()

    def _rewire(self, params: Any) -> Any:
        raise NotImplementedError

    def _pull_back(self, grads: Any) -> Any:
        raise NotImplementedError

    def rewire(self, params: Any) -> Any:
        return self._rewire(params) if cells.cell_of(params) in self.cells else params

    def pull_back(self, grads: Any) -> Any:
        """Gradients of the rewired model (named as ``rewire``'s output) as our parameters'."""
        return self._pull_back(grads) if cells.cell_of(grads) in self.cells else grads

    def forward(self, params: Arrays, inputs: np.ndarray, state: State) -> Arrays:
        return super().forward(self.rewire(params), inputs, state)

    def value_and_grad(self, mode, params, inputs, labels, state):
        loss, grads, final = super().value_and_grad(
            mode, self.rewire(params), inputs, labels, state
        )
        return loss, self.pull_back(grads), final

    def make_step(self, mode: str, spec: RunSpec) -> StepFn:
        ops = self.ops
        vg = self.module.make_value_and_grad(ops, mode)

        def step(p, x, y, s, lr, theta):
            loss, grads, final = vg(self.rewire(p), x, y, s)
            clipped, norm = model.clip_by_global_norm(ops, self.pull_back(grads), theta)
            return model.sgd(ops, p, clipped, lr), final, loss, norm

        return step

    def predict(self, params, prefix, n, temperature, seed):
        return super().predict(self.rewire(params), prefix, n, temperature, seed)


def _rename_gates(arrays: Any, rename: dict[str, str]) -> Any:
    """Each gate's weights and bias under another gate's name (``rename``: ours -> the name it
    is read under)."""
    out = {}
    for name, value in arrays.items():
        head, _, part = name.partition("_")
        if head in ("W", "b") and name != "W_hq" and part[-1:] in rename and len(part) <= 2:
            name = f"{head}_{part[:-1]}{rename[part[-1]]}"
        out[name] = value
    return out


def _swap_zr(arrays: Any) -> Any:
    """The update gate's weights and bias under the reset gate's names, and back."""
    return _rename_gates(arrays, {"z": "r", "r": "z"})


class GateOrderZR(_Rewired):
    """The GRU's update and reset gates exchanged, weights and bias: torch's (r, z, n) read
    as Keras' (z, r, h), or the other way round."""

    mistake = (
        "z and r swapped: the GRU's update and reset gates exchanged (torch stacks the gates "
        "r, z, n; Keras and ONNX z, r, h)"
    )
    cells = GRUS

    def _rewire(self, params: Any) -> Any:
        return _swap_zr(params)

    def _pull_back(self, grads: Any) -> Any:
        return _swap_zr(grads)


class ResetOtherForm(_Rewired):
    """The reset gate applied in the other GRU formulation: a reset-before GRU run as
    reset-after (R ⊙ (H W_hh), its b_h outside), a reset-after GRU run as reset-before
    ((R ⊙ H) W_hh, its two candidate biases summed), as when a torch GRU is loaded into
    Keras' GRU(reset_after=False) or d2l's GRU into torch's."""

    mistake = (
        "the reset gate in the other GRU formulation: (R ⊙ H) W_hh and R ⊙ (H W_hh + b_hh) "
        "exchanged (reset-before: d2l 9.1, Keras GRU(reset_after=False), ONNX GRU "
        "linear_before_reset=0; reset-after: torch.nn.GRU, cuDNN, Keras' default, ONNX "
        "linear_before_reset=1)"
    )
    cells = GRUS

    def _rewire(self, params: Any) -> Any:
        out = {k: v for k, v in params.items() if k not in ("b_h", "b_xh", "b_hh")}
        if "b_xh" in params:  # reset-after run as reset-before
            out["b_h"] = params["b_xh"] + params["b_hh"]
        else:  # reset-before run as reset-after: b_h is the input bias, no recurrent one
            out["b_xh"], out["b_hh"] = params["b_h"], params["b_h"] * 0
        return out

    def _pull_back(self, grads: Any) -> Any:
        out = {k: v for k, v in grads.items() if k not in ("b_h", "b_xh", "b_hh")}
        if "b_h" in grads:  # the model ran with b_h = b_xh + b_hh
            out["b_xh"], out["b_hh"] = grads["b_h"], grads["b_h"]
        else:  # with b_xh = b_h and a constant b_hh
            out["b_h"] = grads["b_xh"]
        return out


class BhnOutside(_Rewired):
    """The reset-after candidate with its recurrent bias outside the reset product:
    tanh(X W_xh + b_xh + b_hh + R ⊙ (H W_hh)), as when torch's bias_hh[n] is summed into the
    input bias like the other gates' biases."""

    mistake = (
        "b_hn outside the reset product: tanh(X W_xh + b_xh + b_hh + R ⊙ (H W_hh)) instead of "
        "tanh(X W_xh + b_xh + R ⊙ (H W_hh + b_hh)) (torch's bias_hh[n] summed into bias_ih[n])"
    )
    cells = (GRU_RESET_AFTER,)

    def _rewire(self, params: Any) -> Any:
        return {**params, "b_xh": params["b_xh"] + params["b_hh"], "b_hh": params["b_hh"] * 0}

    def _pull_back(self, grads: Any) -> Any:
        return {**grads, "b_hh": grads["b_xh"]}


class NoBhn(_Rewired):
    """The reset-after candidate without its recurrent bias: tanh(X W_xh + b_xh + R ⊙ (H W_hh)),
    as Flax's nnx.GRUCell computes (its recurrent Linear has no bias)."""

    mistake = (
        "the reset-after candidate's recurrent bias b_hn is missing: tanh(X W_xh + b_xh + "
        "R ⊙ (H W_hh)) (Flax's nnx.GRUCell has none, though its docstring writes one)"
    )
    cells = (GRU_RESET_AFTER,)

    def _rewire(self, params: Any) -> Any:
        return {**params, "b_hh": params["b_hh"] * 0}

    def _pull_back(self, grads: Any) -> Any:
        return {**grads, "b_hh": grads["b_hh"] * 0}  # it learns nothing


class ForgetBiasOne(_Rewired):
    """The LSTM's forget gate with 1 more bias than ours: one side initialised b_f = 1 (Keras'
    unit_forget_bias, a +1 in the forward) where the other has 0 (d2l, torch)."""

    mistake = (
        "the forget bias is 1 more than ours: b_f + 1 (Keras' unit_forget_bias) where the other "
        "side has 0 (d2l, torch)"
    )
    cells = (LSTM,)

    def _rewire(self, params: Any) -> Any:
        return {**params, "b_f": params["b_f"] + 1.0}

    def _pull_back(self, grads: Any) -> Any:
        return grads


class SecondBias(_Rewired):
    """b_h added twice in the recurrence: torch.nn.RNN's bias_hh loaded with b_h as well as its
    bias_ih, or a port that adds the bias again; its gradient is then the doubled bias's."""

    mistake = "a second bias: b_h is added twice (torch.nn.RNN's bias_hh must be zero)"
    cells = (RNN,)

    def _rewire(self, params: Any) -> Any:
        return {**params, "b_h": 2 * params["b_h"]}

    def _pull_back(self, grads: Any) -> Any:
        return {**grads, "b_h": 2 * grads["b_h"]}


def _recurrent_weights(arrays: Any) -> list[str]:
    """The square recurrent matrices: W_hh, or each gate's W_h· (not the output W_hq)."""
    return [k for k in arrays if k.startswith("W_h") and k != "W_hq"]


class TransposedRecurrent(_Rewired):
    """Every recurrent matrix transposed: H W_hhᵀ for H W_hh, as when torch's (out, in)
    weight_hh is copied without its transpose."""

    mistake = (
        "the recurrent weights transposed: H W_hhᵀ for H W_hh (torch keeps weights as (out, "
        "in), the chapter as (in, out))"
    )
    cells = CELLS

    def _rewire(self, params: Any) -> Any:
        return {k: (v.T if k in _recurrent_weights(params) else v) for k, v in params.items()}

    def _pull_back(self, grads: Any) -> Any:
        return self._rewire(grads)


def _layer_biases(arrays: Any) -> list[str]:
    """The recurrent layer's biases: every ``b_`` but the output layer's b_q."""
    return [k for k in arrays if k.startswith("b_") and k != "b_q"]


class NoLayerBias(_Rewired):
    """The recurrent layer run without its biases (torch's ``bias=False``, or a bias left out
    of the port): only the output layer's b_q is added."""

    mistake = "the recurrent layer's biases are missing (bias=False): only b_q is added"
    cells = CELLS

    def _rewire(self, params: Any) -> Any:
        return {k: (v * 0 if k in _layer_biases(params) else v) for k, v in params.items()}

    def _pull_back(self, grads: Any) -> Any:
        return self._rewire(grads)  # the missing biases learn nothing


class GateBiasesTwice(_Rewired):
    """A gated cell's biases added twice, every gate's: torch's bias_ih and bias_hh both
    loaded with the chapter's one bias per gate."""

    mistake = (
        "each gate's bias added twice (torch's bias_ih and bias_hh both loaded with the one "
        "bias the chapter keeps)"
    )
    cells = (GRU_RESET_BEFORE, LSTM)

    def _rewire(self, params: Any) -> Any:
        return {k: (2 * v if k in _layer_biases(params) else v) for k, v in params.items()}

    def _pull_back(self, grads: Any) -> Any:
        return self._rewire(grads)


def _swap_oc(arrays: Any) -> Any:
    """The LSTM's output gate and candidate exchanged: W_xo, W_ho, b_o under the candidate's
    names (W_xc, W_hc, b_c) and back."""
    return _rename_gates(arrays, {"o": "c", "c": "o"})


class GateOrderOC(_Rewired):
    """The LSTM's gates read in another order: torch's (i, f, g, o) stack read as (i, f, o,
    g), so the output gate and the candidate memory exchange weights and biases."""

    mistake = (
        "the LSTM's output gate and candidate exchanged: torch stacks i, f, g, o (Keras i, f, "
        "c, o) and they were read as i, f, o, g"
    )
    cells = (LSTM,)

    def _rewire(self, params: Any) -> Any:
        return _swap_oc(params)

    def _pull_back(self, grads: Any) -> Any:
        return _swap_oc(grads)


_IFCO_READ_AS_IOFC = {"f": "o", "c": "f", "o": "c"}


class LstmGatesIFCO(_Rewired):
    """The LSTM's gates stacked i, f, c, o (torch's i, f, g, o; Keras' order) where ONNX's LSTM
    reads i, o, f, c: the forget gate's weights act as the output gate, the candidate's as the
    forget gate, the output gate's as the candidate."""

    mistake = (
        "the LSTM's gates stacked i, f, c, o (torch's i, f, g, o, or Keras') where ONNX's LSTM "
        "reads i, o, f, c"
    )
    cells = (LSTM,)

    def _rewire(self, params: Any) -> Any:
        return _rename_gates(params, _IFCO_READ_AS_IOFC)

    def _pull_back(self, grads: Any) -> Any:
        return _rename_gates(grads, {v: k for k, v in _IFCO_READ_AS_IOFC.items()})


def _swap_candidate_biases(arrays: Any) -> Any:
    swap = {"b_xh": "b_hh", "b_hh": "b_xh"}
    return {swap.get(name, name): value for name, value in arrays.items()}


class CandidateBiasesSwapped(_Rewired):
    """The reset-after candidate's two biases exchanged: b_hh outside the reset, b_xh inside
    it, as when ONNX's ``B`` is written ``[Rb; Wb]`` (or torch's bias_ih and bias_hh swapped)."""

    mistake = (
        "the candidate's two biases exchanged (b_xh inside the reset, b_hh outside): ONNX's B "
        "written as [Rb; Wb], or torch's bias_ih and bias_hh swapped"
    )
    cells = (GRU_RESET_AFTER,)

    def _rewire(self, params: Any) -> Any:
        return _swap_candidate_biases(params)

    def _pull_back(self, grads: Any) -> Any:
        return _swap_candidate_biases(grads)


class LossOverBatchOnly(BackendSubject):
    """The cross-entropy summed over time and averaged over the batch only: the loss, and so
    every gradient, num_steps times the chapter's mean over every label."""

    mistake = (
        "the loss is averaged over the batch only (summed over the time steps): num_steps × the "
        "mean over every label"
    )

    def value_and_grad(self, mode, params, inputs, labels, state):
        w = labels.shape[0]
        loss, grads, final = super().value_and_grad(mode, params, inputs, labels, state)
        return loss * w, {k: g * w for k, g in grads.items()}, final

    def make_step(self, mode: str, spec: RunSpec) -> StepFn:
        ops = self.ops
        vg = self.module.make_value_and_grad(ops, mode, spec.activation, spec.model_cell)

        def step(p, x, y, s, lr, theta):
            loss, grads, final = vg(p, x, y, s)
            w = int(y.shape[0])
            clipped, norm = model.clip_by_global_norm(
                ops, {k: g * w for k, g in grads.items()}, theta
            )
            return model.sgd(ops, p, clipped, lr), final, loss * w, norm

        return step


class StateNotCarried(BackendSubject):
    """Sequential minibatches each started from a zero state: the state is not carried from
    one minibatch to the next (random sampling's rule applied to sequential partitioning)."""

    mistake = (
        "the state is not carried between sequential minibatches: each starts from zero, as "
        "random sampling's do"
    )

    def make_step(self, mode: str, spec: RunSpec) -> StepFn:
        step = super().make_step(mode, spec)
        ops = self.ops

        def zeros(a: Any) -> Any:
            return ops.zeros(tuple(int(n) for n in a.shape))

        def from_zero(p, x, y, s, lr, theta):
            zero = tuple(zeros(part) for part in s) if isinstance(s, tuple) else zeros(s)
            return step(p, x, y, zero, lr, theta)

        return from_zero


def gated_forward(
    ops: Any, params: Any, inputs: Any, state: Any, gate: Callable[[Any, Any], Any]
) -> tuple[Any, Any]:
    """(Hs, final state) of a gated cell as core.cells computes them, with ``gate(ops, x)`` in
    place of σ in every gate (the candidate keeps tanh). Written again here, not borrowed:
    core.cells' σ is fixed."""
    cell = cells.cell_of(params)
    if cell == RNN:  # no gates: nothing to replace
        return cells.any_forward(ops, params, inputs, state)
    table = {"E": params["E"]} if "E" in params else {}

    def projection(g: str, bias: str) -> Any:  # X_t W_xg + b for every step
        return model.embed(ops, {**table, "W_xh": params[f"W_x{g}"]}, inputs) + params[bias]

    if cell == LSTM:
        W = {g: params[f"W_h{g}"] for g in "ifoc"}

        def lstm_step(carry: Any, x: Any) -> tuple[Any, Any]:
            H, C = carry
            xi, xf, xo, xc = x
            I = gate(ops, xi + ops.matmul(H, W["i"]))
            F = gate(ops, xf + ops.matmul(H, W["f"]))
            O = gate(ops, xo + ops.matmul(H, W["o"]))
            C = F * C + I * ops.tanh(xc + ops.matmul(H, W["c"]))
            H = O * ops.tanh(C)
            return (H, C), H

        xs = tuple(projection(g, f"b_{g}") for g in "ifoc")
        final, Hs = ops.scan(lstm_step, (state[0], state[1]), xs)
        return Hs, final
    after = cell == GRU_RESET_AFTER
    W_hz, W_hr, W_hh = params["W_hz"], params["W_hr"], params["W_hh"]

    def gru_step(H: Any, x: Any) -> tuple[Any, Any]:
        xz, xr, xh = x
        Z = gate(ops, xz + ops.matmul(H, W_hz))
        R = gate(ops, xr + ops.matmul(H, W_hr))
        if after:
            H_tilde = ops.tanh(xh + R * (ops.matmul(H, W_hh) + params["b_hh"]))
        else:
            H_tilde = ops.tanh(xh + ops.matmul(R * H, W_hh))
        H = Z * H + (1 - Z) * H_tilde
        return H, H

    xs = (
        projection("z", "b_z"),
        projection("r", "b_r"),
        projection("h", "b_xh" if after else "b_h"),
    )
    final, Hs = ops.scan(gru_step, state, xs)
    return Hs, final


def hard_sigmoid(ops: Any, x: Any) -> Any:
    """Keras 3's hard_sigmoid: relu6(x + 3) / 6."""
    return ops.minimum(6.0, ops.relu(x + 3.0)) / 6.0


def hard_sigmoid_keras2(ops: Any, x: Any) -> Any:
    """Keras 2's hard_sigmoid: clip(0.2 x + 0.5, 0, 1)."""
    return ops.minimum(1.0, ops.relu(0.2 * x + 0.5))


class HardSigmoid(BackendSubject):
    """hard_sigmoid in place of σ in every gate (Keras' recurrent_activation="hard_sigmoid",
    Keras 2's LSTM default). Only the forward pass and the loss: core's BPTT has σ' built in,
    so there are no gradients to compare; a gradient that differs is named through its hidden
    states (checks.HINTS)."""

    mistake = "hard_sigmoid in place of sigmoid in the gates (Keras 3's relu6(x + 3) / 6)"
    cells = GATED
    gate = staticmethod(hard_sigmoid)

    def recurrence(self, P: Any, X: Any, state: Any) -> tuple[Any, Any]:
        return gated_forward(self.ops, P, X, state, self.gate)

    def loss(self, params: Arrays, inputs: np.ndarray, labels: np.ndarray, state: State) -> Any:
        """The mean cross-entropy of this forward pass (there is no gradient engine for it)."""
        P = self.put(params)
        X, Y = self._inputs(inputs, labels)
        Hs, _ = self.recurrence(P, X, self.put_state(state))
        return self.get(model.output_loss(self.ops, P, Hs, Y))

    def _gated(self, params: Arrays) -> bool:
        return cells.cell_of(params) in self.cells

    def value_and_grad(self, mode, params, inputs, labels, state):
        if self._gated(params):
            raise NotApplicable
        return super().value_and_grad(mode, params, inputs, labels, state)

    def train(self, mode, params, corpus, cfg, seed, steps):
        if self._gated(params):
            raise NotApplicable
        return super().train(mode, params, corpus, cfg, seed, steps)

    def predict(self, params, prefix, n, temperature, seed):
        if self._gated(params):
            raise NotApplicable
        return super().predict(params, prefix, n, temperature, seed)


class HardSigmoidKeras2(HardSigmoid):
    """Keras 2's hard_sigmoid in place of σ in every gate."""

    mistake = "hard_sigmoid in place of sigmoid in the gates (Keras 2's clip(0.2x + 0.5, 0, 1))"
    gate = staticmethod(hard_sigmoid_keras2)


MISTAKES: dict[str, Callable[[], BackendSubject]] = {
    "labels-batch-major": lambda: LabelsBatchMajor(numpy_backend, "float64"),
    "logits-batch-major": lambda: LogitsBatchMajor(numpy_backend, "float64"),
    "second-bias": lambda: SecondBias(numpy_backend, "float64"),
    "clip-epsilon": lambda: ClipEpsilon(numpy_backend, "float64"),
    "float32-leak": lambda: Float32Leak(numpy_backend, "float64"),
    "framework-rng": lambda: FrameworkRNG(numpy_backend, "float64"),
    "temperature-inverted": lambda: TemperatureInverted(numpy_backend, "float64"),
    "gate-order-zr": lambda: GateOrderZR(numpy_backend, "float64"),
    "reset-other-form": lambda: ResetOtherForm(numpy_backend, "float64"),
    "bhn-outside": lambda: BhnOutside(numpy_backend, "float64"),
    "no-bhn": lambda: NoBhn(numpy_backend, "float64"),
    "forget-bias-one": lambda: ForgetBiasOne(numpy_backend, "float64"),
    "hard-sigmoid": lambda: HardSigmoid(numpy_backend, "float64"),
    "hard-sigmoid-keras2": lambda: HardSigmoidKeras2(numpy_backend, "float64"),
    "transposed-recurrent": lambda: TransposedRecurrent(numpy_backend, "float64"),
    "no-layer-bias": lambda: NoLayerBias(numpy_backend, "float64"),
    "gate-biases-twice": lambda: GateBiasesTwice(numpy_backend, "float64"),
    "gate-order-oc": lambda: GateOrderOC(numpy_backend, "float64"),
    "lstm-gates-ifco": lambda: LstmGatesIFCO(numpy_backend, "float64"),
    "candidate-biases-swapped": lambda: CandidateBiasesSwapped(numpy_backend, "float64"),
    "loss-over-batch-only": lambda: LossOverBatchOnly(numpy_backend, "float64"),
    "clip-per-parameter": lambda: ClipPerParameter(numpy_backend, "float64"),
    "state-not-carried": lambda: StateNotCarried(numpy_backend, "float64"),
    "grads-summed": lambda: GradsSummed(numpy_backend, "float64"),
    "clip-per-replica": lambda: ClipPerReplica(numpy_backend, "float64"),
    "local-batch-loss": lambda: LocalBatchLoss(numpy_backend, "float64"),
    "own-randomness": lambda: OwnRandomness(numpy_backend, "float64"),
}
"""In the order the diagnosis tries them; every one whose output matches is named in the
cell (``A, or B``)."""
