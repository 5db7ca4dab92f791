"""ONNX models as subjects: conform's ``onnx`` columns (the reference's parameters exported by
``core.onnx_model`` and run on an ONNX runtime), and ``verify``'s ONNX files (anyone's
exporter's, held to the weights they were exported from).

Exporter mistakes need no catalogue of their own: each is a wrong layout of right weights, so
what a runtime computes from it is the reference model with its parameters permuted, which is
what ``mistakes``' rewired suspects compute (a reset-after GRU written with
``linear_before_reset=0`` is ``reset-other-form``, the LSTM's gates in torch's order
``lstm-gates-ifco``, the GRU's in torch's ``gate-order-zr``, ``B``'s rows exchanged
``candidate-biases-swapped``). ``PLANTED`` writes each into a file, for the tests and the docs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.core import convert, onnx_model, sampling
from rosetta_rnn.core.cells import GRU_RESET_AFTER, LSTM, RNN
from rosetta_rnn.core.errors import BackendUnavailable, UserError

from .problems import CELLS, Problem, State, state_parts
from .subjects import Arrays, NotApplicable
from .user_subjects import FunctionSubject, SubjectError

Exporter = Callable[[convert.Layer, str, str], Any]
"""(layer, form, activation) -> an ``onnx.ModelProto``."""


def export(layer: convert.Layer, form: str, activation: str = "tanh") -> Any:
    """What ``convert --to onnx`` writes (without our metadata)."""
    return convert.to_onnx_model(layer, form, activation)


ONNX_CHECKS = ("hidden", "logits", "sample/greedy", "sample/temperature")
"""What an ONNX column runs: the forward pass (every hidden state, the LSTM's final memory, the
logits) and generation, the state fed back into the model token by token. A model has no
gradients to compare."""


def columns(
    dtypes: tuple[str, ...] | list[str],
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """The (form, runtime, dtype) columns for ``dtypes``, and (column, why) of each one left
    out (``onnx_model.SUPPORT``: ONNX Runtime's recurrent operators are float32 only)."""
    out: list[tuple[str, str, str]] = []
    left: list[tuple[str, str]] = []
    for dtype in dtypes:
        for form in onnx_model.FORMS:
            for runtime in onnx_model.RUNTIMES:
                if onnx_model.SUPPORT[runtime, form, dtype]:
                    out.append((form, runtime, dtype))
                else:
                    left.append(
                        (
                            f"onnx:{form}/{runtime}-{dtype}",
                            f"ONNX Runtime has no {dtype} kernel for RNN, GRU or LSTM (the "
                            "decomposed form runs it)",
                        )
                    )
    return out, left


def installed() -> str:
    """Why the ONNX columns cannot run here, or ""."""
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed ({onnx_model.INSTALL})"
    return ""


def _feeds(cell: str, inputs: np.ndarray, state: State, dtype: str) -> dict[str, np.ndarray]:
    parts = [np.asarray(s, dtype=dtype) for s in state_parts(state)]
    feeds = {"tokens": np.asarray(inputs, dtype=np.int64), "h0": parts[0]}
    if cell == LSTM:
        feeds["c0"] = parts[1]
    return feeds


class OnnxSubject:
    """The reference's parameters exported to ONNX in ``form`` and run on ``runtime``, in
    ``dtype``: one ``onnx`` column of ``conform`` for one cell. ``exporter`` writes the model
    (a planted mistake in the tests)."""

    grad_modes: tuple[str, ...] = ()

    def __init__(
        self,
        form: str,
        runtime: str,
        dtype: str,
        cell: str = RNN,
        exporter: Exporter = export,
    ) -> None:
        if not onnx_model.SUPPORT[runtime, form, dtype]:
            raise BackendUnavailable(f"{runtime} does not run the {form} form in {dtype}")
        self.form, self.runtime, self.dtype, self.cell = form, runtime, dtype, cell
        self.exporter = exporter
        self.backend = self.label = f"onnx:{form}/{runtime}"
        self.device = "cpu"
        self.ops = numpy_backend.make_ops(dtype, "cpu")  # core's sampler on the logits

    def _runner(self, params: Arrays) -> onnx_model.Runner:
        layer = convert.from_params({k: np.asarray(v, dtype=self.dtype) for k, v in params.items()})
        return onnx_model.Runner(self.exporter(layer, self.form, "tanh"), self.runtime)

    def _run(self, runner: onnx_model.Runner, inputs: np.ndarray, state: State) -> Arrays:
        return runner.run(_feeds(self.cell, inputs, state, self.dtype))

    def forward(self, params: Arrays, inputs: np.ndarray, state: State) -> Arrays:
        out = self._run(self._runner(params), inputs, state)
        V = int(params["W_hq"].shape[1])
        found = {"hidden": out["hidden"], "logits": out["logits"].reshape(-1, V)}
        if self.cell == LSTM:
            found["memory"] = out["c_n"]
        return found

    def predict(
        self, params: Arrays, prefix: list[int], n: int, temperature: float | None, seed: int
    ) -> list[int]:
        """d2l's ``predict`` on the model: the prefix read from a zero state, then one token at
        a time with the state fed back, each picked by core's sampler with core's uniforms."""
        runner = self._runner(params)
        rng = np.random.default_rng(seed)
        H = int(params["W_hq"].shape[0])
        zeros = np.zeros((1, H), dtype=self.dtype)
        state: State = (zeros, zeros) if self.cell == LSTM else zeros
        outputs = list(prefix)
        for t in prefix[:-1]:
            out = self._run(runner, np.array([[t]]), state)
            state = (out["h_n"], out["c_n"]) if self.cell == LSTM else out["h_n"]
        for _ in range(n):
            out = self._run(runner, np.array([[outputs[-1]]]), state)
            state = (out["h_n"], out["c_n"]) if self.cell == LSTM else out["h_n"]
            row = self.ops.asarray(out["logits"].reshape(1, -1))
            outputs.append(sampling.next_token(self.ops, row, temperature, rng))
        return outputs


# --- planted exporter mistakes --------------------------------------------------------------


def _blocks(a: np.ndarray, order: list[int], axis: int) -> np.ndarray:
    parts = np.split(a, len(order), axis=axis)
    return np.concatenate([parts[i] for i in order], axis=axis)


def _replace(proto: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    from onnx import numpy_helper

    out = type(proto)()
    out.CopyFrom(proto)
    for t in out.graph.initializer:
        if t.name in arrays:
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arrays[t.name]), t.name))
    return out


def _lbr(value: int) -> Callable[[Any], Any]:
    def plant(proto: Any) -> Any:
        from onnx import helper

        out = type(proto)()
        out.CopyFrom(proto)
        node = onnx_model.recurrent_node(out)
        for i, a in enumerate(node.attribute):
            if a.name == "linear_before_reset":
                del node.attribute[i]
                break
        node.attribute.append(helper.make_attribute("linear_before_reset", value))
        return out

    return plant


def _gate_order(order: list[int]) -> Callable[[Any], Any]:
    """W, R and B with ONNX's gate blocks written in another order (``order``: which of
    ONNX's blocks stands in each place)."""

    def plant(proto: Any) -> Any:
        arrays = onnx_model.initializers(proto)
        halves = [_blocks(h, order, axis=1) for h in np.split(arrays["B"], 2, axis=1)]
        return _replace(
            proto,
            {
                "W": _blocks(arrays["W"], order, axis=1),
                "R": _blocks(arrays["R"], order, axis=1),
                "B": np.concatenate(halves, axis=1),
            },
        )

    return plant


_lstm_torch_order = _gate_order([0, 2, 3, 1])
"""ONNX's LSTM blocks [i, o, f, c] written as [i, f, c, o]: torch's i, f, g, o (Keras' i, f,
c, o), which ONNX then reads as i, o, f, c."""
_gru_torch_order = _gate_order([1, 0, 2])
"""ONNX's GRU blocks [z, r, h] written as torch's [r, z, n]."""


def _bias_rows_swapped(proto: Any) -> Any:
    """B written [Rb; Wb] where ONNX reads [Wb; Rb]."""
    B = onnx_model.initializers(proto)["B"]
    return _replace(proto, {"B": np.concatenate(np.split(B, 2, axis=1)[::-1], axis=1)})


PLANTED: dict[str, tuple[tuple[str, ...], Callable[[Any], Any], str]] = {
    "linear-before-reset-0": (
        (GRU_RESET_AFTER,),
        _lbr(0),
        "a reset-after GRU (torch's nn.GRU) written with linear_before_reset=0",
    ),
    "lstm-gates-torch-order": (
        (LSTM,),
        _lstm_torch_order,
        "the LSTM's W, R and B in torch's gate order (i, f, g, o)",
    ),
    "gru-gates-torch-order": (
        (GRU_RESET_AFTER,),
        _gru_torch_order,
        "the GRU's W, R and B in torch's gate order (r, z, n)",
    ),
    "bias-rows-swapped": (
        (GRU_RESET_AFTER,),
        _bias_rows_swapped,
        "B written as [Rb; Wb]",
    ),
}
"""Exporter mistakes planted into our own fused export: name -> (the cells it changes, the
plant (ModelProto -> ModelProto), what it is)."""


def planted_exporter(name: str) -> Exporter:
    """``export`` with the mistake ``name`` of ``PLANTED`` written into the fused form."""
    cells, plant, _ = PLANTED[name]

    def exporter(layer: convert.Layer, form: str, activation: str = "tanh") -> Any:
        proto = export(layer, form, activation)
        return plant(proto) if form == "fused" and layer.cell in cells else proto

    return exporter


# --- verify: anyone's ONNX file ---------------------------------------------------------------


class OnnxFileSubject(FunctionSubject):
    """An ONNX file held to the weights it was exported from (``weights``: core's parameters,
    float64), run on ``runtime``. The file keeps its own weights: the check's parameters go to
    the reference alone, so a layout mistake of the exporter (gate order, ``B``'s rows,
    ``linear_before_reset``) shows. Its first input is the tokens (int ids, time-major, or
    batch-major with ``inputs="batch-major"``; or one-hot floats), the others the initial
    state (H, and the LSTM's C: (batch, H) or (1, batch, H)); its first output the logits,
    then the final state where it returns one."""

    def __init__(
        self,
        proto: Any,
        weights: Mapping[str, np.ndarray],
        *,
        cell: str,
        runtime: str = "onnxruntime",
        inputs: str = "time-major",
        label: str = "onnx",
    ) -> None:
        self.proto = proto
        self.weights = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self._session = onnx_model.Runner(proto, runtime)
        self.runtime = runtime
        self._dtype = _elem_dtype(proto)
        super().__init__(
            self._call,
            cell=cell,
            dtype=self._dtype,
            framework="numpy",
            inputs=inputs,
            label=label,
        )
        self.framework = f"onnx ({runtime})"
        ins = list(proto.graph.input)
        if not ins:
            raise SubjectError("the ONNX model has no inputs")
        self._tokens = ins[0]
        self._states = [i.name for i in ins[1:]]
        self._state_ranks = [len(i.type.tensor_type.shape.dim) for i in ins[1:]]
        need = 2 if cell == LSTM else 1
        if self._states and len(self._states) != need:
            raise SubjectError(
                f"the ONNX model takes {len(self._states)} inputs besides the tokens; a {cell} "
                f"model's state is {need} ({', '.join(self._states)})"
            )
        self.takes_state = bool(self._states)
        outs = list(proto.graph.output)
        self._state_outputs = [o.name for o in outs[1:] if _is_state(o)]
        elem = self._tokens.type.tensor_type.elem_type
        self._one_hot = elem in (1, 11)  # FLOAT, DOUBLE: one-hot rows, time- or batch-major
        self._ids = np.int32 if elem == 6 else np.int64

    def _x(self, inputs: np.ndarray, vocab_size: int) -> Any:
        ids = inputs.T if self.batch_major else inputs
        return np.eye(vocab_size, dtype=self._dtype)[ids] if self._one_hot else ids

    def sizes(self) -> dict[str, int]:
        H, V = self.weights["W_hq"].shape
        return {"vocab_size": int(V), "num_hiddens": int(H)}

    def _call(self, params: Any, X: Any, S: Any) -> tuple[Any, Any]:
        X = np.asarray(X)
        feeds = {self._tokens.name: X.astype(self._dtype if self._one_hot else self._ids)}
        parts = S if isinstance(S, tuple) else (S,)
        for name, rank, part in zip(self._states, self._state_ranks, parts, strict=False):
            a = np.asarray(part, dtype=self._dtype)
            feeds[name] = a[None] if rank == 3 else a
        out = self._session.run(feeds)
        logits = out[self._session.outputs[0]]
        if not self._state_outputs:
            return logits, None
        finals = tuple(out[n] for n in self._state_outputs)
        return logits, finals if len(finals) > 1 else finals[0]

    def value_and_grad(self, mode, params, inputs, labels, state):
        raise NotApplicable("an ONNX model computes no gradients")

    def make_step(self, mode, spec):
        raise NotApplicable("an ONNX model computes no gradients")


def _elem_dtype(proto: Any) -> str:
    """The dtype of the model's floats: its first float input's or output's."""
    for v in (*proto.graph.input, *proto.graph.output):
        elem = v.type.tensor_type.elem_type
        if elem in (1, 11):
            return "float32" if elem == 1 else "float64"
    raise SubjectError("the ONNX model has no float32 or float64 input or output")


def _is_state(value: Any) -> bool:
    """An output shaped as a state: (batch, H), or (1, batch, H) as ONNX's Y_h."""
    dims = value.type.tensor_type.shape.dim
    if len(dims) == 2:
        return True
    return len(dims) == 3 and dims[0].HasField("dim_value") and dims[0].dim_value == 1


def load(path_or_proto: Any) -> tuple[Any, str]:
    """(ModelProto, a label) of a path or a ModelProto."""
    if not isinstance(path_or_proto, (str, Path)):
        return path_or_proto, "onnx model"
    path = Path(path_or_proto)
    if not path.is_file():
        raise UserError(f"no file {path}")
    return onnx_model.parse(path.read_bytes(), str(path)), path.name


def reference_weights(
    proto: Any, weights: Any, cell: str | None, what: str
) -> tuple[dict[str, np.ndarray], str, list[str]]:
    """The parameters the file is held to, its cell, and notes: ``weights`` (a path convert
    reads, or arrays in any layout convert reads: a torch state dict, Keras weights, core's
    parameters ...), else the file's own tensors read through ONNX's layout, as the cell the
    file records (rosetta-rnn's files) or its operator computes. ``cell``, when given, must be
    the weights' own; an RNN with relu is refused (verify holds the chapter's tanh)."""
    notes: list[str] = []
    activation = "tanh"
    if weights is None:
        try:
            graph = convert.from_onnx_model(proto, what)
        except convert.ConversionError as e:
            raise UserError(
                f"{e}: give the weights it was exported from (--weights FILE, any file convert "
                "reads)"
            ) from None
        layer, activation = graph.layer, graph.activation
        recorded = graph.metadata.get("cell")
        held = recorded if recorded in CELLS else layer.cell
        layer = convert.Layer(held, *_fields(layer))
        notes.append(
            "held to its own tensors read through ONNX's layout (give --weights FILE, the "
            "weights it was exported from, to check the layout too)"
        )
    elif isinstance(weights, Mapping):
        arrays = {k: np.asarray(v) for k, v in weights.items()}
        layer = convert.layer_of(arrays, convert.detect_format(arrays, None) or "rosetta", what)
    else:
        read = convert.read(weights)
        layer, activation = read.layer, read.activation
    if activation != "tanh":
        raise UserError(
            f"the model's RNN computes {activation}; verify holds the chapter's tanh RNN "
            "(conform's onnx columns check relu exports against core)"
        )
    if cell is not None and cell != layer.cell:
        raise UserError(
            f"the weights are a {layer.cell} model, not the {cell} the cell names; drop the cell"
        )
    params = {k: np.asarray(v, dtype=np.float64) for k, v in convert.to_params(layer).items()}
    return params, layer.cell, notes


def _fields(layer: convert.Layer) -> tuple[Any, ...]:
    return (layer.W_x, layer.W_h, layer.b_x, layer.b_h, layer.W_hq, layer.b_q, layer.E)


def problem_for(base: Problem, params: Mapping[str, np.ndarray]) -> Problem:
    """``base`` at the weights' sizes whose ``draw`` gives ``params`` (and its own inputs,
    labels and state)."""
    return GivenWeights(
        vocab_size=int(params["W_hq"].shape[1]),
        num_hiddens=int(params["W_hq"].shape[0]),
        batch_size=base.batch_size,
        num_steps=base.num_steps,
        scale=base.scale,
        seed=base.seed,
        embed_dim=int(params["E"].shape[1]) if "E" in params else None,
        cell=base.cell,
        zero_state=base.zero_state,
        given=tuple(sorted(params.items())),
        fingerprint=_fingerprint(params),
    )


def _fingerprint(params: Mapping[str, np.ndarray]) -> str:
    """A digest of the weights: two problems are equal (and hash equal) only with the same."""
    digest = hashlib.sha256()
    for name in sorted(params):
        a = np.ascontiguousarray(params[name])
        digest.update(f"{name}{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class GivenWeights(Problem):
    """A problem whose parameters are given (the weights an ONNX file was exported from); the
    arrays compare through their ``fingerprint``."""

    given: tuple[tuple[str, np.ndarray], ...] = field(default=(), compare=False, hash=False)
    fingerprint: str = ""

    def draw(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, State]:
        _, inputs, labels, state = super().draw()
        return {k: np.array(v) for k, v in self.given}, inputs, labels, state


__all__ = [
    "ONNX_CHECKS",
    "PLANTED",
    "OnnxFileSubject",
    "OnnxSubject",
    "columns",
    "planted_exporter",
]
