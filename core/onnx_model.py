"""The whole language model as an ONNX graph, read back, and run on ONNX Runtime or on onnx's
own reference evaluator. The weights' layout is ``core.convert``'s (``to_onnx``, ``from_onnx``,
``ONNX_GATES``; ``convert.to_onnx_model`` and ``from_onnx_model`` are the way in and out); this
module builds and reads the graph around the arrays it is given, and imports nothing of
convert's.

Every graph has the same signature, time-major as core::

    inputs   tokens (steps, batch) int64, h0 (batch, H), and c0 (batch, H) for the LSTM
    outputs  logits (steps, batch, V), hidden (steps, batch, H), h_n (batch, H), c_n (LSTM)

The tokens pick rows of an identity matrix ``one_hot`` (V, V), or of ``E`` with a learned
embedding, as the recurrent layer's inputs; logits = hidden · W_hq + b_q. Two forms:

- ``fused``: ONNX's own ``RNN``, ``GRU`` (``linear_before_reset`` 1 for the reset-after GRU,
  0 for the reset-before one) or ``LSTM`` operator, holding ``W``, ``R``, ``B``.
- ``decomposed``: a ``Scan`` over the steps whose body is the cell written out in ``MatMul``,
  ``Add``, ``Mul``, ``Sub``, ``Sigmoid``, ``Tanh`` (``Relu``), holding core's parameters under
  core's names (``W_xh``, ``W_hh``, ``b_h`` ...); the input projections of every step are
  gathered before the loop, as core computes them.

Which runtime runs which form in which dtype is measured, not assumed (``SUPPORT``, and the
tests hold it): ONNX Runtime's CPU kernels of the three recurrent operators are float32 only.

The file records what the tensors cannot say (the vocabulary, the activation, the checkpoint's
metadata) as ``metadata_props`` under the key ``rosetta_rnn``, the document a converted
safetensors file keeps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import model
from .cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN
from .errors import BackendUnavailable, ConversionError

Arrays = dict[str, np.ndarray]

FORMS = ("fused", "decomposed")
RUNTIMES = ("onnxruntime", "reference")
"""ONNX Runtime's CPU execution provider, and onnx's own reference evaluator
(``onnx.reference.ReferenceEvaluator``): two implementations written apart."""
OPSET = 17
OPS = {RNN: "RNN", GRU_RESET_BEFORE: "GRU", GRU_RESET_AFTER: "GRU", LSTM: "LSTM"}
"""The fused form's operator of each cell (the GRU's formulation is its ``linear_before_reset``)."""
METADATA_KEY = "rosetta_rnn"
INPUTS = ("tokens", "h0", "c0")
OUTPUTS = ("logits", "hidden", "h_n", "c_n")
INSTALL = "pip install 'rosetta-rnn[onnx]'"

SUPPORT: dict[tuple[str, str, str], bool] = {  # measured with ONNX Runtime 1.32
    ("onnxruntime", "fused", "float32"): True,
    ("onnxruntime", "fused", "float64"): False,
    ("onnxruntime", "decomposed", "float32"): True,
    ("onnxruntime", "decomposed", "float64"): True,
    ("reference", "fused", "float32"): True,
    ("reference", "fused", "float64"): True,
    ("reference", "decomposed", "float32"): True,
    ("reference", "decomposed", "float64"): True,
}
"""(runtime, form, dtype) -> whether it runs. ONNX Runtime's CPU build has no float64 RNN: the
session refuses the model ("Could not find an implementation for RNN(14) node"); its GRU and
LSTM take a float64 model and fail when run ("GRU operator does not support double yet").
tests/test_onnx.py runs every combination and holds this table to what happened."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise BackendUnavailable(f"ONNX needs the onnx package: {INSTALL}") from None
    return onnx


@dataclass
class Graph:
    """An ONNX model read back: its form, the arrays it holds (fused: the operator's ``W``,
    ``R``, ``B`` and ``W_hq``, ``b_q``, ``E``; decomposed: core's parameters), the fused
    operator and its ``linear_before_reset``, the RNN's activation and our metadata."""

    form: str
    arrays: Arrays
    op: str | None
    linear_before_reset: int
    activation: str
    metadata: dict[str, Any]


# --- building --------------------------------------------------------------------------


def build(
    cell: str,
    form: str,
    params: Arrays,
    fused: Arrays | None = None,
    activation: str = "tanh",
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """The ``onnx.ModelProto`` of a model of ``cell`` in ``form``, checked by
    ``onnx.checker``: ``params`` are core's (``E`` for a learned embedding), ``fused`` the
    operator's ``W``, ``R``, ``B`` (``convert.to_onnx``) for the fused form."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    if form not in FORMS:
        raise ConversionError(f"unknown ONNX form {form!r}; choose from {', '.join(FORMS)}")
    if cell == RNN and activation not in ("tanh", "relu"):
        raise ConversionError(f"the RNN's activation is tanh or relu, not {activation!r}")
    dtype = np.dtype(params["W_hq"].dtype)
    elem = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}[dtype.type]
    H, V = (int(n) for n in params["W_hq"].shape)
    lstm = cell == LSTM
    inits: dict[str, np.ndarray] = {}
    nodes: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits[name] = value
        return name

    def node(op: str, ins: list[str], outs: list[str], **attrs: Any) -> None:
        nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{len(nodes)}", **attrs))

    const("axis0", np.array([0], np.int64))
    const("axis1", np.array([1], np.int64))
    if form == "fused":
        if fused is None:
            raise ConversionError("the fused form needs the operator's W, R and B")
        _fused(cell, params, fused, activation, dtype, const, node)
    else:
        _decomposed(cell, params, activation, dtype, const, node, helper, elem, H)
    node("MatMul", ["hidden", "W_hq"], ["hidden_W_hq"])
    node("Add", ["hidden_W_hq", "b_q"], ["logits"])
    inits.setdefault("W_hq", np.ascontiguousarray(params["W_hq"]))
    inits.setdefault("b_q", np.ascontiguousarray(params["b_q"]))

    def value(name: str, elem_type: int, shape: list[Any]) -> Any:
        return helper.make_tensor_value_info(name, elem_type, shape)

    inputs = [value("tokens", TensorProto.INT64, ["steps", "batch"])]
    inputs += [value(n, elem, ["batch", H]) for n in (("h0", "c0") if lstm else ("h0",))]
    outputs = [
        value("logits", elem, ["steps", "batch", V]),
        value("hidden", elem, ["steps", "batch", H]),
    ]
    outputs += [value(n, elem, ["batch", H]) for n in (("h_n", "c_n") if lstm else ("h_n",))]
    graph = helper.make_graph(
        nodes,
        f"rosetta-rnn {cell} ({form})",
        inputs,
        outputs,
        initializer=[numpy_helper.from_array(np.ascontiguousarray(a), n) for n, a in inits.items()],
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="rosetta-rnn",
        doc_string="a character-level RNN language model (d2l's chapter), written by rosetta-rnn",
    )
    proto.ir_version = 8  # what OPSET needs, so older runtimes read the file
    doc = {"form": form, "activation": activation, "cell": cell, **(metadata or {})}
    helper.set_model_props(proto, {METADATA_KEY: json.dumps(doc)})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _inputs(params: Arrays, dtype: np.dtype, const: Any, node: Any) -> str:
    """The recurrent layer's inputs (steps, batch, I): rows of E, or of the identity."""
    V = int(params["W_hq"].shape[1])
    table = (
        const(model.EMBEDDING, np.ascontiguousarray(params[model.EMBEDDING]))
        if model.EMBEDDING in params
        else const("one_hot", np.eye(V, dtype=dtype))
    )
    node("Gather", [table, "tokens"], ["X"], axis=0)
    return "X"


def _fused(
    cell: str,
    params: Arrays,
    fused: Arrays,
    activation: str,
    dtype: np.dtype,
    const: Any,
    node: Any,
) -> None:
    X = _inputs(params, dtype, const, node)
    for name in ("W", "R", "B"):
        const(name, np.ascontiguousarray(fused[name]))
    H = int(params["W_hq"].shape[0])
    node("Unsqueeze", ["h0", "axis0"], ["initial_h"])
    ins = [X, "W", "R", "B", "", "initial_h"]
    outs = ["Y", "Y_h"]
    attrs: dict[str, Any] = {"hidden_size": H}
    if cell == RNN:
        attrs["activations"] = ["Relu" if activation == "relu" else "Tanh"]
    elif cell == LSTM:
        node("Unsqueeze", ["c0", "axis0"], ["initial_c"])
        ins.append("initial_c")
        outs.append("Y_c")
        attrs["activations"] = ["Sigmoid", "Tanh", "Tanh"]
    else:
        attrs["activations"] = ["Sigmoid", "Tanh"]
        attrs["linear_before_reset"] = int(cell == GRU_RESET_AFTER)
    node(OPS[cell], ins, outs, **attrs)
    node("Squeeze", ["Y", "axis1"], ["hidden"])  # (steps, 1 direction, batch, H)
    node("Squeeze", ["Y_h", "axis0"], ["h_n"])
    if cell == LSTM:
        node("Squeeze", ["Y_c", "axis0"], ["c_n"])


DECOMPOSED_GATES = {
    RNN: ("h",),
    GRU_RESET_BEFORE: ("z", "r", "h"),
    GRU_RESET_AFTER: ("z", "r", "h"),
    LSTM: ("i", "f", "o", "c"),
}
"""The decomposed form's scanned inputs, one per gate, under core's names."""


def _decomposed(
    cell: str,
    params: Arrays,
    activation: str,
    dtype: np.dtype,
    const: Any,
    node: Any,
    helper: Any,
    elem: int,
    H: int,
) -> None:
    """The cell as a ``Scan`` over steps: X_t W_x· + b_· for every step first (a row gather of
    W_x· for one-hot inputs, as core's ``embed``), the recurrence in the body."""
    for name, a in params.items():
        if name != model.EMBEDDING:
            const(name, np.ascontiguousarray(a))
    gates = DECOMPOSED_GATES[cell]
    embedded = model.EMBEDDING in params
    if embedded:
        const(model.EMBEDDING, np.ascontiguousarray(params[model.EMBEDDING]))
        node("Gather", [model.EMBEDDING, "tokens"], ["X"], axis=0)
    scanned = []
    for g in gates:
        bias = "b_xh" if cell == GRU_RESET_AFTER and g == "h" else f"b_{g}"
        if embedded:
            node("MatMul", ["X", f"W_x{g}"], [f"XW_{g}"])
        else:
            node("Gather", [f"W_x{g}", "tokens"], [f"XW_{g}"], axis=0)
        node("Add", [f"XW_{g}", bias], [f"xw_{g}"])
        scanned.append(f"xw_{g}")
    if cell in (GRU_RESET_BEFORE, GRU_RESET_AFTER):
        const("one", np.ones((), dtype))
    body = _body(cell, activation, gates, helper, elem, H)
    states = ["h0", "c0"] if cell == LSTM else ["h0"]
    finals = ["h_n", "c_n"] if cell == LSTM else ["h_n"]
    node(
        "Scan",
        [*states, *scanned],
        [*finals, "hidden"],
        body=body,
        num_scan_inputs=len(scanned),
    )


def _body(
    cell: str, activation: str, gates: tuple[str, ...], helper: Any, elem: int, H: int
) -> Any:
    """One step of the cell: (h[, c], xw_g for each gate) -> (h'[, c'], h')."""
    nodes: list[Any] = []

    def node(op: str, ins: list[str], out: str) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=f"step_{op}_{len(nodes)}"))
        return out

    def gate(g: str, squash: str) -> str:
        pre = node("Add", [f"s_xw_{g}", node("MatMul", ["s_h", f"W_h{g}"], f"hW_{g}")], f"a_{g}")
        return node(squash, [pre], f"g_{g}")

    if cell == RNN:
        h = gate("h", "Relu" if activation == "relu" else "Tanh")
    elif cell == LSTM:
        i, f, o = (gate(g, "Sigmoid") for g in ("i", "f", "o"))
        c_tilde = gate("c", "Tanh")
        c = node(
            "Add",
            [node("Mul", [f, "s_c"], "fc"), node("Mul", [i, c_tilde], "ic")],
            "c_new",
        )
        h = node("Mul", [o, node("Tanh", [c], "tanh_c")], "h_new")
    else:
        z, r = gate("z", "Sigmoid"), gate("r", "Sigmoid")
        if cell == GRU_RESET_BEFORE:
            rh = node("MatMul", [node("Mul", [r, "s_h"], "rh"), "W_hh"], "rhW")
        else:
            hW = node("Add", [node("MatMul", ["s_h", "W_hh"], "hW_h"), "b_hh"], "hW_b")
            rh = node("Mul", [r, hW], "rhW")
        cand = node("Tanh", [node("Add", ["s_xw_h", rh], "a_h")], "cand")
        zh = node("Mul", [z, "s_h"], "zh")
        rest = node("Mul", [node("Sub", ["one", z], "one_z"), cand], "zc")
        h = node("Add", [zh, rest], "h_new")
    outs = [node("Identity", [h], "h_out")]
    if cell == LSTM:
        outs.append(node("Identity", ["c_new"], "c_out"))
    outs.append(node("Identity", [h], "h_step"))

    def value(name: str) -> Any:
        return helper.make_tensor_value_info(name, elem, ["batch", H])

    states = ["s_h", "s_c"] if cell == LSTM else ["s_h"]
    return helper.make_graph(
        nodes,
        f"{cell} step",
        [value(s) for s in states] + [value(f"s_xw_{g}") for g in gates],
        [value(o) for o in outs],
    )


# --- reading ---------------------------------------------------------------------------


def metadata_of(proto: Any) -> dict[str, Any]:
    """Our document in the model's ``metadata_props`` ({} when there is none)."""
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                doc = json.loads(prop.value)
            except ValueError:
                raise ConversionError(f"its {METADATA_KEY} metadata is not JSON") from None
            if not isinstance(doc, dict):
                raise ConversionError(f"its {METADATA_KEY} metadata is not a JSON object")
            return doc
    return {}


def initializers(proto: Any) -> dict[str, np.ndarray]:
    """The model's stored tensors by name: its initializers and its Constant nodes' values."""
    from onnx import numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant":
            value = attribute(n, "value")
            if value is not None and hasattr(value, "data_type"):
                arrays[n.output[0]] = numpy_helper.to_array(value)
    return arrays


ACTIVATIONS = {
    "RNN": (["tanh"], ["relu"]),
    "GRU": (["sigmoid", "tanh"],),
    "LSTM": (["sigmoid", "tanh", "tanh"],),
}
"""The operators' activations the chapter's cells compute (the RNN: tanh, or relu)."""


def _same_model(op: Any, ins: list[str], arrays: Arrays, what: str) -> None:
    """Refuse an operator whose attributes or extra inputs make it another model than the
    chapter's cell: other activations (or their alpha, beta), clipping, the LSTM's coupled
    input and forget gates or peepholes, sequence lengths, a stored nonzero initial state."""
    kind = op.op_type
    acts = [str(a).lower() for a in attribute(op, "activations") or []]
    if acts and acts not in [list(a) for a in ACTIVATIONS[kind]]:
        allowed = " or ".join(str(list(a)) for a in ACTIVATIONS[kind])
        raise ConversionError(
            f"{what}: the {kind}'s activations {acts}; rosetta-rnn's cell computes {allowed}"
        )
    for name, why in (
        ("activation_alpha", "activation parameters"),
        ("activation_beta", "activation parameters"),
        ("clip", "a clipped cell"),
    ):
        if attribute(op, name) is not None:
            raise ConversionError(f"{what}: the {kind} has {why} ({name}), which the cell has not")
    if kind == "LSTM" and int(attribute(op, "input_forget", 0)):
        raise ConversionError(f"{what}: the LSTM couples its input and forget gates (input_forget)")
    if kind == "LSTM" and len(ins) > 7 and ins[7]:
        raise ConversionError(f"{what}: the LSTM has peepholes (P), which the cell has not")
    if len(ins) > 4 and ins[4]:
        raise ConversionError(
            f"{what}: the {kind} takes sequence_lens; rosetta-rnn's model reads whole sequences"
        )
    for i in (5, 6):
        if len(ins) > i and ins[i] in arrays and np.any(arrays[ins[i]] != 0):
            raise ConversionError(f"{what}: the {kind}'s initial state is a stored nonzero tensor")


_PASS_THROUGH = ("Squeeze", "Unsqueeze", "Reshape", "Transpose", "Identity", "Flatten", "Cast")


def _consumers(proto: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for name in n.input:
            found.setdefault(name, []).append(n)
    return found


def _output_layer(proto: Any, arrays: Arrays, start: str, what: str) -> Arrays:
    """``W_hq`` (H, V) and ``b_q`` of a graph another exporter wrote: the MatMul (with the
    Add after it) or Gemm the recurrent output reaches through reshapes alone."""
    consumers = _consumers(proto)
    name = start
    for _ in range(8):
        after = [n for n in consumers.get(name, []) if n.op_type != "Shape"]
        if len(after) != 1:
            break
        n = after[0]
        if n.op_type in _PASS_THROUGH:
            name = n.output[0]
            continue
        if n.op_type == "Gemm" and n.input[0] == name and n.input[1] in arrays:
            plain = (
                attribute(n, "alpha", 1.0),
                attribute(n, "beta", 1.0),
                attribute(n, "transA", 0),
            )
            if plain != (1.0, 1.0, 0):
                raise ConversionError(
                    f"{what}: its output layer's Gemm scales or transposes (alpha, beta, transA "
                    f"= {plain}); the chapter's is hidden · W_hq + b_q"
                )
            W = arrays[n.input[1]]
            W = W.T if attribute(n, "transB", 0) else W
            C = n.input[2] if len(n.input) > 2 else ""
            return {"W_hq": np.ascontiguousarray(W), "b_q": _bias(arrays.get(C), W, what)}
        if n.op_type == "MatMul" and n.input[0] == name and n.input[1] in arrays:
            W = arrays[n.input[1]]
            adds = [a for a in consumers.get(n.output[0], []) if a.op_type == "Add"]
            bias = next(
                (arrays[i] for a in adds[:1] for i in a.input if i != n.output[0] and i in arrays),
                None,
            )
            return {"W_hq": np.ascontiguousarray(W), "b_q": _bias(bias, W, what)}
        break
    raise ConversionError(
        f"{what}: no output layer (a MatMul and an Add, or a Gemm, with stored weights) follows "
        "its recurrent operator"
    )


def _bias(bias: np.ndarray | None, W: np.ndarray, what: str) -> np.ndarray:
    """The output layer's bias as (V,): a stored tensor of V numbers in any shape Add takes."""
    if W.ndim != 2:
        raise ConversionError(f"{what}: its output layer's weight has shape {list(W.shape)}")
    V = int(W.shape[1])
    if bias is None:
        raise ConversionError(f"{what}: its output layer has no stored bias")
    if bias.size != V:
        raise ConversionError(
            f"{what}: its output layer's bias has shape {list(bias.shape)}, not {V} numbers"
        )
    return np.ascontiguousarray(bias.reshape(V))


def _input_table(proto: Any, arrays: Arrays, start: str, what: str) -> np.ndarray | None:
    """A learned embedding's E where the operator's input is a Gather of a stored table that
    is not the identity (one-hot inputs: a OneHot, or a Gather of the identity)."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    name = start
    for _ in range(8):
        n = producers.get(name)
        if n is None:
            return None
        if n.op_type in _PASS_THROUGH:
            name = n.input[0]
            continue
        if n.op_type == "Gather" and n.input[0] in arrays:
            if int(attribute(n, "axis", 0)) != 0:
                raise ConversionError(f"{what}: its inputs gather a table along another axis")
            table = arrays[n.input[0]]
            square = table.ndim == 2 and table.shape[0] == table.shape[1]
            return None if square and np.array_equal(table, np.eye(len(table))) else table
        return None
    return None


def recurrent_node(proto: Any, what: str = "the ONNX model") -> Any:
    """The graph's one RNN, GRU or LSTM operator, or None when it has none (a Scan)."""
    found = [n for n in proto.graph.node if n.op_type in ("RNN", "GRU", "LSTM")]
    if len(found) > 1:
        raise ConversionError(f"{what} has {len(found)} recurrent operators; one layer converts")
    return found[0] if found else None


def attribute(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            if isinstance(value, list):
                return [v.decode() if isinstance(v, bytes) else v for v in value]
            return value.decode() if isinstance(value, bytes) else value
    return default


def read(proto: Any, what: str = "the ONNX model") -> Graph:
    """What an ONNX model holds: a fused one by its operator's inputs and attributes (the
    output layer and a learned embedding by our names, or, in another exporter's file, by
    where they sit in the graph), a decomposed one of ours by core's names
    (``convert.from_onnx_model`` makes the layer)."""
    meta = metadata_of(proto)
    arrays = initializers(proto)
    op = recurrent_node(proto, what)
    if op is not None:
        ins = list(op.input)
        direction = attribute(op, "direction", "forward")
        if direction != "forward":
            raise ConversionError(f"{what}: a {direction} {op.op_type} does not convert")
        if len(ins) < 3 or any(n not in arrays for n in ins[1:3]):
            raise ConversionError(f"{what}: the {op.op_type}'s W and R are not stored tensors")
        if len(ins) < 4 or not ins[3]:
            raise ConversionError(f"{what}: the {op.op_type} has no B (a model without biases)")
        if ins[3] not in arrays:
            raise ConversionError(f"{what}: the {op.op_type}'s B is computed, not stored")
        _same_model(op, ins, arrays, what)
        tensors = {k: arrays[v] for k, v in zip(("W", "R", "B"), ins[1:4], strict=True)}
        if "W_hq" in arrays:  # ours, by name
            tensors.update({k: arrays[k] for k in ("W_hq", "b_q", model.EMBEDDING) if k in arrays})
        else:  # another exporter's: found by the graph's structure
            tensors.update(_output_layer(proto, arrays, op.output[0], what))
            table = _input_table(proto, arrays, ins[0], what)
            if table is not None:
                tensors[model.EMBEDDING] = table
        acts = [str(a).lower() for a in attribute(op, "activations") or []]
        relu = op.op_type == "RNN" and acts[:1] == ["relu"]
        lbr = int(attribute(op, "linear_before_reset", 0))
        return Graph("fused", tensors, op.op_type, lbr, "relu" if relu else "tanh", meta)
    if not any(n.op_type == "Scan" for n in proto.graph.node):
        raise ConversionError(
            f"{what} has no RNN, GRU or LSTM operator and no Scan: not a recurrent model "
            "convert reads"
        )
    keep = {k: a for k, a in arrays.items() if k.startswith(("W_", "b_")) or k == model.EMBEDDING}
    activation = str(meta.get("activation") or "tanh")
    return Graph("decomposed", keep, None, 0, activation, meta)


# --- running ---------------------------------------------------------------------------


class Runner:
    """An ONNX model ready to run on ``runtime``: ``run(tokens, h0[, c0])`` -> the outputs by
    name. A (runtime, form, dtype) that cannot run raises ``BackendUnavailable`` at once."""

    def __init__(self, proto: Any, runtime: str = "onnxruntime", threads: int | None = None):
        if runtime not in RUNTIMES:
            raise BackendUnavailable(
                f"unknown ONNX runtime {runtime!r}; choose from {', '.join(RUNTIMES)}"
            )
        self.runtime = runtime
        self.inputs = [i.name for i in proto.graph.input]
        self.outputs = [o.name for o in proto.graph.output]
        if runtime == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError:
                raise BackendUnavailable(f"ONNX Runtime is not installed: {INSTALL}") from None
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._quiet = ort.RunOptions()
            self._quiet.log_severity_level = 4  # a refused kernel is said once, in our error
            try:
                self._session = ort.InferenceSession(
                    proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
            except Exception as e:  # ORT raises its own classes for a missing kernel
                raise BackendUnavailable(
                    f"ONNX Runtime {ort.__version__} cannot run it: {_first(e)}"
                ) from None
        else:
            _onnx()
            from onnx.reference import ReferenceEvaluator

            self._session = ReferenceEvaluator(proto)

    def settings(self) -> dict[str, Any]:
        """What ONNX Runtime's session runs with: its providers, threads and graph
        optimisation (the reference evaluator: nothing to say)."""
        if self.runtime != "onnxruntime":
            return {}
        options = self._session.get_session_options()
        return {
            "providers": self._session.get_providers(),
            "threads": f"intra {options.intra_op_num_threads} (0: ONNX Runtime's choice)",
            "graph_optimization": str(options.graph_optimization_level).rsplit(".", 1)[-1],
        }

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs by name, for ``feeds`` by input name (the ones the model takes). ONNX
        Runtime's GRU and LSTM accept a float64 model and refuse it only here: a
        ``BackendUnavailable`` with its message."""
        given = {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in self.inputs}
        if self.runtime == "onnxruntime":
            try:
                values = self._session.run(None, given, self._quiet)
            except Exception as e:
                if "NOT_IMPLEMENTED" in str(e) or "does not support" in str(e):
                    raise BackendUnavailable(f"ONNX Runtime cannot run it: {_first(e)}") from None
                raise
        else:
            values = self._session.run(None, given)
        return dict(zip(self.outputs, (np.asarray(v) for v in values), strict=True))


def _first(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300]


def serialize(proto: Any) -> bytes:
    return bytes(proto.SerializeToString())


def parse(data: bytes, what: str) -> Any:
    """An ``onnx.ModelProto`` from a file's bytes; not ONNX: a ConversionError."""
    onnx = _onnx()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception:
        raise ConversionError(f"{what} is not an ONNX model") from None
    if not proto.graph.node:
        raise ConversionError(f"{what} is not an ONNX model (no graph)")
    return proto


__all__ = [
    "FORMS",
    "OPS",
    "RUNTIMES",
    "Graph",
    "Runner",
    "build",
    "read",
]
