"""MXNet/Gluon subjects for ``rosetta-rnn verify``, run in MXNet's own environment.

MXNet 1.9.1 needs NumPy 1.23 and cannot be imported here, so the user's file is never imported
in this process: it is read (to see that it imports MXNet) and handed, by its path, to the
MXNet worker (``backends.mxnet_subjects``), which imports it, keeps what it names loaded under
an id, and answers each request with NumPy: the time-major logits and the final state of a
forward, and the loss, MXNet autograd's gradients (as the chapter's parameters) and the final
state of a step. ``MxnetSubject`` is then a ``FunctionSubject`` whose framework calls cross the
worker's pipe: the same checks and the same catalogue of mistakes run on it.

The user's object is a Gluon ``Block`` holding one ``rnn.RNN``/``GRU``/``LSTM`` (or their
cells) and one ``nn.Dense``, or the chapter's parameters by name, called as d2l's MXNet
``RNNModel`` is called, ``model(X, state)``; or a function ``forward(params, X, state)`` on
``mxnet.np`` arrays, in the forms the other frameworks' functions take (``--params list``,
``--inputs one-hot``, ``--state tuple``: d2l 0.17's ``rnn(inputs, state, params)``).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rosetta_rnn.core import model
from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE
from rosetta_rnn.core.errors import UserError

from .problems import State
from .user_subjects import Bridge, FunctionSubject, SubjectError, our_state

HOW = "rosetta-rnn backends --setup mxnet"


@dataclass(frozen=True)
class MxnetFile:
    """A Python file written for MXNet and the name of the subject in it ("": the file's one
    Gluon Block, else its ``forward``). Only its path travels: the worker imports it."""

    path: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.name}" if self.name else self.path


def imports_mxnet(path: Path) -> bool:
    """Whether the file's code imports MXNet (``import mxnet``, ``from mxnet ...``, ``from d2l
    import mxnet``), read from its syntax tree: the file is not run."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(a.name.split(".")[0] == "mxnet" for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            if top == "mxnet" or (top == "d2l" and any(a.name == "mxnet" for a in node.names)):
                return True
    return False


def target(text: str, framework: str | None = None) -> MxnetFile | None:
    """``FILE.py[:NAME]`` or ``MODULE:NAME`` as an MXNet subject, when the file imports MXNet
    or ``framework`` says mxnet; else None (the subject is imported here, as any other)."""
    where, colon, name = text.rpartition(":")
    if not colon:
        where, name = text, ""
    path = Path(where)
    if not path.is_file() and not where.endswith(".py"):
        path = Path(*where.split(".")).with_suffix(".py")  # a module beside the current folder
    if framework == "mxnet":
        if not path.is_file():
            raise UserError(f"an MXNet subject is a .py file (FILE.py:NAME); no file {where}")
        return MxnetFile(str(path), name)
    if framework is None and path.is_file() and path.suffix == ".py" and imports_mxnet(path):
        return MxnetFile(str(path), name)
    return None


def worker() -> Any:
    """MXNet's worker, the ``mxnet`` backend's (started once, and again if it has ended). A
    missing environment is a one-line error that says how to set it up."""
    from rosetta_rnn.backends import mxnet

    return mxnet.worker()


class MxnetBridge(Bridge):
    """NumPy on this side of the pipe; MXNet's autograd on the other."""

    name = "mxnet"
    autodiff = True


class MxnetSubject(FunctionSubject):
    """A subject loaded in MXNet's worker (``info``: what ``subject_load`` said of it), held to
    ``cell``: every forward and gradient is a request to the worker."""

    def __init__(
        self,
        where: MxnetFile,
        info: dict[str, Any],
        conn: Any,
        *,
        cell: str,
        dtype: str,
        inputs: str = "time-major",
        params_form: str = "dict",
        state_form: str = "array",
        names: dict[str, str] | None = None,
    ) -> None:
        self.where, self.info, self.conn = where, info, conn
        self.is_model = info["kind"] != "function"
        super().__init__(
            self._never,
            cell=cell,
            dtype=dtype,
            framework="numpy",
            names=names,
            params_form=params_form,
            inputs="batch-major" if self.is_model else inputs,
            state_form=state_form,
            label=info["label"],
        )
        self.framework = "mxnet"
        self.bridge = MxnetBridge(dtype)
        if self.is_model:
            self.takes_state = bool(info["takes_state"])

    @staticmethod
    def _never(*args: Any) -> Any:
        raise AssertionError("an MXNet subject runs in its worker")

    def _ask(self, op: str, *args: Any) -> Any:
        from rosetta_rnn.backends.worker import RemoteError

        try:
            return self.conn.call(op, self.info["id"], *args)
        except RemoteError as e:
            raise SubjectError(str(e).removeprefix("mxnet: ")) from None

    def _sent(self, P: dict[str, Any]) -> Any:
        """The parameters as the worker takes them: ours for a model (it writes Gluon's
        layout), the user's form for a function."""
        P = {k: np.asarray(v, dtype=self.dtype) for k, v in P.items()}
        return P if self.is_model else self._theirs(P)

    def _run(self, P: dict[str, Any], inputs: np.ndarray, state: State) -> tuple[Any, Any]:
        V = int(P["W_hq"].shape[1])
        X = np.asarray(self._x(inputs, V))
        return self._ask(
            "subject_forward",
            self.cell,
            self._sent(P),
            X,
            self._state(state),
            self.dtype,
            self.batch_major,
        )

    def value_and_grad(self, mode, params, inputs, labels, state):
        V = int(params["W_hq"].shape[1])
        X = np.asarray(self._x(inputs, V))
        loss, grads, final = self._ask(
            "subject_value_and_grad",
            self.cell,
            self._sent(params),
            X,
            np.asarray(labels, dtype=np.int64),
            self._state(state),
            self.dtype,
            self.batch_major,
        )
        ours = grads if self.is_model else self._ours(grads, params)
        return (
            np.asarray(loss),
            {k: np.asarray(ours[k]) for k in model.param_names(ours)},
            state if final is None else our_state(final, self.bridge, self.cell),
        )

    def close(self) -> None:
        """Forget the subject in the worker (the worker stays, for the next one)."""
        from rosetta_rnn.core.errors import BackendUnavailable

        try:
            self.conn.call("subject_close", self.info["id"])
        except (UserError, BackendUnavailable):
            pass


class MxnetModelSubject(MxnetSubject):
    """A Gluon model: its layers say its sizes (a function's are the check's own)."""

    def sizes(self) -> dict[str, int]:
        return dict(self.info["sizes"])


def build(
    where: MxnetFile,
    cell: str | None,
    core: str,
    dtype: str | None,
    options: dict[str, Any],
    notes: list[str],
    float64_fails: Callable[[MxnetSubject], str],
) -> MxnetSubject:
    """The subject of ``where`` at the dtype it runs: a model's weights decide; a function runs
    in float64 unless asked or unable (``float64_fails`` says why; then float32, said).
    ``core``: the cell ``cell`` names (rnn where none is given)."""
    extra = set(options) - {"inputs", "params_form", "state_form", "names"}
    if extra:
        raise UserError(f"an MXNet subject takes no {', '.join(sorted(extra))}")
    conn = worker()
    try:
        info = conn.call("subject_load", str(Path(where.path).resolve()), where.name, where.path)
    except UserError as e:
        raise SubjectError(str(e).removeprefix("mxnet: ")) from None
    notes.append(
        f"{where.path} runs in MXNet {conn.ready['version']}'s own environment ({HOW}), "
        "imported there by its worker, not here"
    )
    if info["kind"] != "function":
        own = info["cell"]
        gru_forms = {GRU_RESET_BEFORE, GRU_RESET_AFTER}
        if cell is not None and core != own:
            if {core, own} != gru_forms or info["kind"] == "scratch":
                raise SubjectError(f"the model computes {own}, not {core}")
        function_only = {
            k
            for k, default in (("params_form", "dict"), ("state_form", "array"), ("names", {}))
            if options.get(k, default) != default
        }
        if function_only or options.get("inputs", "batch-major") != "batch-major":
            raise UserError("a model is its own framework, step, sampler and names")
        if dtype is not None and dtype != info["dtype"]:
            raise UserError(f"the model's weights are {info['dtype']}; it is checked as such")
        return MxnetModelSubject(where, info, conn, cell=core if cell else own, dtype=info["dtype"])
    if dtype is not None:
        return MxnetSubject(where, info, conn, cell=core, dtype=dtype, **options)
    first = MxnetSubject(where, info, conn, cell=core, dtype="float64", **options)
    reason = float64_fails(first)
    if not reason:
        return first
    notes.append(f"checked in float32: in float64 {reason}")
    return MxnetSubject(where, info, conn, cell=core, dtype="float32", **options)


__all__ = [
    "MxnetFile",
    "MxnetModelSubject",
    "MxnetSubject",
    "build",
    "imports_mxnet",
    "target",
    "worker",
]
