"""Someone's own recurrent model seen as the suite sees a backend (``rosetta-rnn verify``).

A subject takes the chapter's parameters, inputs and state as NumPy, runs the user's code in
its framework, and gives NumPy back: the logits of every step, the final state, the loss's
gradient by the framework's own autodiff, a training step and generation. The conformance
quantities (``checks``) then compare it with the reference and try the known mistakes on it
exactly as they do for a backend.

- ``FunctionSubject``: the user's ``forward(params, X, state) -> (logits, state)`` in NumPy,
  PyTorch, JAX or TensorFlow, and optionally their training step ``step(params, X, Y, state,
  lr, theta) -> (params, state, loss)``.
- ``TorchModuleSubject``: a ``torch.nn.Module`` holding one ``nn.RNN``/``nn.GRU``/``nn.LSTM``
  (or ``nn.RNNCell``/``GRUCell``/``LSTMCell``) and one ``nn.Linear``, anywhere inside it, or the
  chapter's parameters by name (d2l 1.0's ``RNNLMScratch``: ``rnn.W_xh`` ..., ``W_hq``, ``b_q``).
  Called as the book calls its models: ``module(X, state)`` with X (batch, steps) of token ids.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.core import cells, convert, model, sampling
from rosetta_rnn.core import run as run_spec
from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN
from rosetta_rnn.core.contract import StepFn
from rosetta_rnn.core.errors import UserError

from .problems import State, state_parts
from .subjects import Arrays, BackendSubject, NotApplicable

FRAMEWORKS = ("numpy", "torch", "jax", "tensorflow")
INPUTS = ("time-major", "batch-major", "one-hot")
"""How a function subject takes X: token ids (steps, batch) as core does, ids (batch, steps) as
the book's models do, or one-hot floats (steps, batch, vocab) as d2l 0.17's ``rnn()`` does."""


class SubjectError(UserError):
    """The subject cannot be run as given (one line, exit status 2)."""


# --- frameworks ----------------------------------------------------------------------------------


class Bridge:
    """NumPy to one framework and back, at one dtype and device, and its autodiff."""

    name = "numpy"
    autodiff = False

    def __init__(self, dtype: str, device: str = "cpu") -> None:
        self.dtype = dtype
        self.device = device

    def context(self) -> Any:
        """What the user's code runs inside (JAX: its 64-bit switch as the dtype says)."""
        return contextlib.nullcontext()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` as the framework runs it best (JAX: compiled once per shape)."""
        with self.context():
            return fn(*args)

    def tensor(self, a: np.ndarray) -> Any:
        return np.asarray(a, dtype=self.dtype)

    def ids(self, a: np.ndarray) -> Any:
        return np.asarray(a, dtype=np.int64)

    def numpy(self, t: Any) -> np.ndarray:
        return np.asarray(t)

    def one_hot(self, ids: np.ndarray, depth: int) -> Any:
        return self.tensor(np.eye(depth)[ids])

    def cross_entropy(self, logits: Any, labels: np.ndarray) -> Any:
        """Mean cross-entropy of (N, V) logits against N labels."""
        z = logits - logits.max(axis=-1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return -log_probs[np.arange(len(labels)), labels].mean()

    def time_major(self, logits: Any, steps: int, batch: int, batch_major: bool) -> Any:
        """(steps · batch, V) rows in time-major order, from (T·B, V), (T, B, V) or (B, T, V)."""
        shape = tuple(int(n) for n in logits.shape)
        if len(shape) == 3:
            if batch_major:
                logits = self.swap01(logits)
            shape = tuple(int(n) for n in logits.shape)
            if shape[:2] != (steps, batch):
                raise SubjectError(
                    f"the logits are {tuple(int(n) for n in logits.shape)}, not (steps, batch, "
                    f"vocab) = ({steps}, {batch}, V) or (batch, steps, vocab)"
                )
            return self.reshape(logits, (steps * batch, shape[2]))
        if len(shape) != 2 or shape[0] != steps * batch:
            raise SubjectError(
                f"the logits are {shape}; expected (steps × batch, vocab) = ({steps * batch}, V), "
                "(steps, batch, vocab) or (batch, steps, vocab)"
            )
        return logits

    def swap01(self, t: Any) -> Any:
        return np.swapaxes(t, 0, 1)

    def reshape(self, t: Any, shape: tuple[int, ...]) -> Any:
        return np.reshape(t, shape)

    def value_and_grad(
        self, loss_of: Callable[..., tuple[Any, Any]], params: dict[str, Any], *args: Any
    ) -> tuple[Any, dict[str, Any], Any]:
        """(loss, its gradient by each of ``params``, the aux output) of
        ``loss_of(params, *args) -> (loss, aux)``; the last two args are static ints."""
        raise NotApplicable


class TorchBridge(Bridge):
    name = "torch"
    autodiff = True

    def __init__(self, dtype: str, device: str = "cpu") -> None:
        super().__init__(dtype, device)
        import torch

        self.torch = torch
        self.tdtype = getattr(torch, dtype)

    def tensor(self, a: np.ndarray) -> Any:
        return self.torch.tensor(np.asarray(a), dtype=self.tdtype, device=self.device)

    def ids(self, a: np.ndarray) -> Any:
        return self.torch.tensor(np.asarray(a), dtype=self.torch.int64, device=self.device)

    def numpy(self, t: Any) -> np.ndarray:
        return np.array(t.detach().cpu().numpy()) if hasattr(t, "detach") else np.asarray(t)

    def one_hot(self, ids: np.ndarray, depth: int) -> Any:
        return self.torch.nn.functional.one_hot(self.ids(ids), depth).to(self.tdtype)

    def cross_entropy(self, logits: Any, labels: np.ndarray) -> Any:
        return self.torch.nn.functional.cross_entropy(logits, labels)

    def swap01(self, t: Any) -> Any:
        return t.transpose(0, 1)

    def reshape(self, t: Any, shape: tuple[int, ...]) -> Any:
        return t.reshape(shape)

    def value_and_grad(self, loss_of, params, *args):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        loss, final = loss_of(leaves, *args)
        loss.backward()
        grads = {
            k: (v.grad if v.grad is not None else self.torch.zeros_like(v))
            for k, v in leaves.items()
        }
        return loss, grads, final


class JaxBridge(Bridge):
    name = "jax"
    autodiff = True

    def __init__(self, dtype: str, device: str = "cpu") -> None:
        super().__init__(dtype, device)
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        self._jitted: dict[Any, Any] = {}
        if dtype == "float64":  # as the JAX backend's float64 runs: process-wide, and stays
            jax.config.update("jax_enable_x64", True)

    def context(self) -> Any:
        """A float32 subject runs with JAX's 64-bit types off, as in a float32 process, even
        where a float64 run turned them on (process-wide); a float64 one with them on."""
        switch = getattr(self.jax, "enable_x64", None)
        return switch(self.dtype == "float64") if callable(switch) else contextlib.nullcontext()

    def tensor(self, a: np.ndarray) -> Any:
        return self.jnp.asarray(np.asarray(a, dtype=self.dtype))

    def ids(self, a: np.ndarray) -> Any:
        width = np.int64 if self.dtype == "float64" else np.int32  # 64-bit types only with x64
        return self.jnp.asarray(np.asarray(a).astype(width))

    def one_hot(self, ids: np.ndarray, depth: int) -> Any:
        with self.context():
            return self.jax.nn.one_hot(self.ids(ids), depth, dtype=self.dtype)

    def cross_entropy(self, logits: Any, labels: np.ndarray) -> Any:
        log_probs = self.jax.nn.log_softmax(logits, axis=-1)
        return -log_probs[self.jnp.arange(labels.shape[0]), labels].mean()

    def swap01(self, t: Any) -> Any:
        return self.jnp.swapaxes(t, 0, 1)

    def reshape(self, t: Any, shape: tuple[int, ...]) -> Any:
        return self.jnp.reshape(t, shape)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Under ``jax.jit`` (one trace per shape), or as it is where the user's code cannot
        be jitted (Python control flow on values)."""
        jax = self.jax
        if fn not in self._jitted:
            self._jitted[fn] = jax.jit(fn)
        with self.context():
            try:
                return self._jitted[fn](*args)
            except jax.errors.JAXTypeError:
                self._jitted[fn] = fn
                return fn(*args)

    def value_and_grad(self, loss_of, params, *args):
        """Under ``jax.jit`` (one trace per shape), or traced anew each call where the user's
        code cannot be jitted (Python control flow on values)."""
        jax = self.jax
        plain = jax.value_and_grad(loss_of, has_aux=True)
        if loss_of not in self._jitted:
            self._jitted[loss_of] = jax.jit(plain, static_argnums=(len(args) - 1, len(args)))
        with self.context():
            try:
                (loss, final), grads = self._jitted[loss_of](params, *args)
            except jax.errors.JAXTypeError:
                self._jitted[loss_of] = plain
                (loss, final), grads = plain(params, *args)
        return loss, grads, final


class TensorFlowBridge(Bridge):
    name = "tensorflow"
    autodiff = True

    def __init__(self, dtype: str, device: str = "cpu") -> None:
        super().__init__(dtype, device)
        import tensorflow as tf

        self.tf = tf

    def tensor(self, a: np.ndarray) -> Any:
        return self.tf.constant(np.asarray(a, dtype=self.dtype))

    def ids(self, a: np.ndarray) -> Any:
        return self.tf.constant(np.asarray(a, dtype=np.int64))

    def numpy(self, t: Any) -> np.ndarray:
        return np.array(t.numpy()) if hasattr(t, "numpy") else np.asarray(t)

    def one_hot(self, ids: np.ndarray, depth: int) -> Any:
        return self.tf.one_hot(self.ids(ids), depth, dtype=self.dtype)

    def cross_entropy(self, logits: Any, labels: np.ndarray) -> Any:
        tf = self.tf
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        )

    def swap01(self, t: Any) -> Any:
        return self.tf.transpose(t, (1, 0, 2))

    def reshape(self, t: Any, shape: tuple[int, ...]) -> Any:
        return self.tf.reshape(t, shape)

    def value_and_grad(self, loss_of, params, *args):
        tf = self.tf
        leaves = {k: tf.Variable(v) for k, v in params.items()}
        with tf.GradientTape() as tape:
            loss, final = loss_of(leaves, *args)
        grads = tape.gradient(loss, leaves)
        grads = {k: (g if g is not None else tf.zeros_like(leaves[k])) for k, g in grads.items()}
        return loss, grads, final


BRIDGES: dict[str, type[Bridge]] = {
    "numpy": Bridge,
    "torch": TorchBridge,
    "jax": JaxBridge,
    "tensorflow": TensorFlowBridge,
}


_ALIASES = {
    "torch": "torch",
    "jax": "jax",
    "jnp": "jax",
    "lax": "jax",
    "tf": "tensorflow",
    "tensorflow": "tensorflow",
    "keras": "tensorflow",
}


def _frameworks_named(fn: Any, depth: int = 3) -> set[str]:
    """The frameworks a function's code names: modules at the top of its file or imported in
    it, and, ``depth`` calls deep, those of the functions it calls or closes over."""
    code = getattr(fn, "__code__", None)
    if code is None or depth == 0:
        return set()
    glob = getattr(fn, "__globals__", {})
    found: set[str] = set()
    for name in (*code.co_names, *code.co_varnames):
        value = glob.get(name)
        if inspect.ismodule(value):
            found.add(_ALIASES.get(value.__name__.split(".")[0], ""))
            for attr in code.co_names:  # p.port_forward: a function of the user's own module
                called = getattr(value, attr, None)
                if inspect.isfunction(called) and called is not fn:
                    found |= _frameworks_named(called, depth - 1)
        elif value is None and name in _ALIASES:  # imported inside the function
            found.add(_ALIASES[name])
        elif inspect.isfunction(value) and value is not fn:
            found |= _frameworks_named(value, depth - 1)
    for cell in getattr(fn, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            if inspect.isfunction(cell.cell_contents):
                found |= _frameworks_named(cell.cell_contents, depth - 1)
    return found


def framework_of(fn: Callable[..., Any]) -> str:
    """The framework a function computes in, read from its code: torch, JAX or TensorFlow
    where it (or what it calls) names one of them, else NumPy."""
    found = _frameworks_named(fn)
    return next((f for f in ("torch", "jax", "tensorflow") if f in found), "numpy")


# --- states -------------------------------------------------------------------------------------


def our_state(state: Any, bridge: Bridge, cell: str) -> State:
    """A state the user's code returned, as ours: H (batch, hiddens), or the LSTM's (H, C); a
    one-element tuple (d2l 0.17's ``(H,)``) and torch's leading layer axis (1, batch, hiddens)
    are unwrapped."""
    parts = list(state) if isinstance(state, (tuple, list)) else [state]
    arrays = []
    for part in parts:
        a = bridge.numpy(part)
        while a.ndim > 2 and a.shape[0] == 1:
            a = a[0]
        arrays.append(a)
    if cell == LSTM:
        if len(arrays) != 2:
            raise SubjectError(f"an LSTM's state is (H, C); the subject returned {len(arrays)}")
        return arrays[0], arrays[1]
    if len(arrays) != 1:
        raise SubjectError(f"a {cell} state is H alone; the subject returned {len(arrays)} parts")
    return arrays[0]


class FunctionSubject(BackendSubject):
    """The user's functions, held to the chapter's model of ``cell``.

    ``forward(params, X, state) -> (logits, state)``: params a dict of the chapter's names (or
    the user's, through ``names``: theirs for each of ours) or, with ``params_form="list"``, the
    list in d2l's ``get_params`` order; X as ``inputs`` says; state H, or (H, C) for the LSTM
    (``state_form="tuple"``: d2l 0.17's ``(H,)``). The logits are (steps × batch, vocab) in
    time-major row order, or (steps, batch, vocab), or (batch, steps, vocab) with batch-major X.
    ``step``: the user's whole training step; without one the chapter's step (clipping, SGD)
    is run on the subject's own gradients."""

    def __init__(
        self,
        forward: Callable[..., Any],
        *,
        cell: str = RNN,
        dtype: str = "float64",
        framework: str | None = None,
        step: Callable[..., Any] | None = None,
        predict: Callable[..., Any] | None = None,
        names: Mapping[str, str] | None = None,
        params_form: str = "dict",
        inputs: str = "time-major",
        state_form: str = "array",
        device: str = "cpu",
        label: str | None = None,
    ) -> None:
        super().__init__(numpy_backend, dtype, "cpu")
        self.cell = cells.check_cell(cell) if cell != RNN else RNN
        self.framework = framework or framework_of(forward)
        if self.framework not in BRIDGES:
            raise SubjectError(
                f"unknown framework {self.framework!r}; choose from {', '.join(FRAMEWORKS)}"
            )
        if inputs not in INPUTS:
            raise SubjectError(f"unknown inputs {inputs!r}; choose from {', '.join(INPUTS)}")
        if params_form not in ("dict", "list"):
            raise SubjectError(f"params_form is 'dict' or 'list', got {params_form!r}")
        try:
            self.bridge = BRIDGES[self.framework](dtype, device)
        except ImportError as e:
            extra = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}[self.framework]
            raise SubjectError(
                f"the subject computes in {self.framework}, which is not installed here "
                f"(pip install 'rosetta-rnn[{extra}]')"
            ) from e
        self.forward_fn, self.step_fn, self.predict_fn = forward, step, predict
        self.names = dict(names or {})
        self.params_form, self.inputs, self.state_form = params_form, inputs, state_form
        self.grad_modes = ("autograd",)  # the framework's own (NumPy: none; said when asked)
        self.device = device
        self._label = label or f"{self.framework}:{getattr(forward, '__name__', 'forward')}"

    @property
    def label(self) -> str:
        return self._label

    @property
    def batch_major(self) -> bool:
        """X goes in (batch, steps), so 3-D logits come out (batch, steps, vocab)."""
        return self.inputs == "batch-major"

    # -- the user's side --------------------------------------------------------------------
    def _theirs(self, params: Mapping[str, Any]) -> Any:
        """Our parameters (framework tensors) in the user's form."""
        if self.params_form == "list":
            return [params[k] for k in _param_order(params)]
        return {self.names.get(k, k): v for k, v in params.items()}

    def _ours(self, theirs: Any, like: Mapping[str, Any]) -> dict[str, Any]:
        """The user's parameters (or gradients) under our names."""
        if self.params_form == "list":
            order = _param_order(like)
            if len(theirs) != len(order):
                raise SubjectError(f"the subject gave {len(theirs)} parameters, not {len(order)}")
            return dict(zip(order, theirs, strict=True))
        back = {v: k for k, v in self.names.items()}
        return {back.get(k, k): v for k, v in theirs.items()}

    def _x(self, inputs: np.ndarray, vocab_size: int) -> Any:
        if self.inputs == "one-hot":
            return self.bridge.one_hot(inputs, vocab_size)
        return self.bridge.ids(inputs.T if self.inputs == "batch-major" else inputs)

    def _state(self, state: State) -> Any:
        parts = tuple(self.bridge.tensor(s) for s in state_parts(state))
        if self.cell == LSTM or self.state_form == "tuple":
            return parts
        return parts[0]

    def _run(self, P: dict[str, Any], inputs: np.ndarray, state: State) -> tuple[Any, Any]:
        """(time-major (T·B, V) logits, the user's final state) in the framework."""
        T, B = inputs.shape
        V = int(P["W_hq"].shape[1])
        logits, final = self.bridge.call(
            self._call_forward, P, self._x(inputs, V), self._state(state)
        )
        return self.bridge.time_major(logits, T, B, self.batch_major), final

    def _call_forward(self, P: dict[str, Any], X: Any, S: Any) -> tuple[Any, Any]:
        """The user's forward on framework values: (logits as it returns them, its state)."""
        try:
            with self.bridge.context():
                out = self.forward_fn(self._theirs(P), X, S)
        except SubjectError:
            raise
        except KeyError as e:
            if isinstance(self, (TorchModuleSubject, KerasModelSubject)):
                raise SubjectError(f"the model raised KeyError: {e}") from e
            raise SubjectError(
                f"the subject's forward raised KeyError: {e}; it is given the chapter's names "
                f"({', '.join(P)}): map its own with names (--names OURS=THEIRS)"
            ) from e
        except Exception as e:
            raise SubjectError(f"the subject's forward raised {type(e).__name__}: {e}") from e
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise SubjectError("forward must return (logits, state)")
        return out[0], out[1]

    # -- what the checks call ---------------------------------------------------------------
    def transfer(self, params: Arrays) -> Arrays:
        raise NotApplicable

    def forward(self, params: Arrays, inputs: np.ndarray, state: State) -> Arrays:
        P = {k: self.bridge.tensor(v) for k, v in params.items()}
        logits, final = self._run(P, inputs, state)
        out = {"logits": self.bridge.numpy(logits)}
        if final is not None:  # a model that returns no state has no final-state row
            parts = state_parts(our_state(final, self.bridge, self.cell))
            out["final"] = parts[0]
            if len(parts) == 2:
                out["memory"] = parts[1]
        return out

    def loss(self, params: Arrays, inputs: np.ndarray, labels: np.ndarray, state: State) -> Any:
        logits = self.forward(params, inputs, state)["logits"]
        seen = logits[-labels.size :]  # the loss sees the last len(labels) steps
        return Bridge(self.dtype).cross_entropy(seen, labels.reshape(-1))

    def _loss_of(self, P: dict[str, Any], X: Any, Y: Any, S: Any, T: int, B: int) -> Any:
        """(the mean cross-entropy of the last Y.shape[0] // B steps, the final state), all in
        the framework: what its autodiff differentiates."""
        out = self._call_forward(P, X, S)
        logits = self.bridge.time_major(out[0], T, B, self.batch_major)
        seen = logits[T * B - int(Y.shape[0]) :]
        return self.bridge.cross_entropy(seen, Y), out[1]

    def value_and_grad(self, mode, params, inputs, labels, state):
        if not self.bridge.autodiff:
            raise NotApplicable(f"{self.framework} has no autodiff: give a step to check training")
        b = self.bridge
        T, B = (int(n) for n in inputs.shape)
        V = int(params["W_hq"].shape[1])
        P = {k: b.tensor(v) for k, v in params.items()}
        X, Y, S = self._x(inputs, V), b.ids(labels.reshape(-1)), self._state(state)
        try:
            loss, grads, final = b.value_and_grad(self._loss_of, P, X, Y, S, T, B)
        except SubjectError:
            raise
        except Exception as e:
            raise SubjectError(f"the subject's gradient raised {type(e).__name__}: {e}") from e
        return (
            b.numpy(loss),
            {k: b.numpy(grads[k]) for k in model.param_names(grads)},
            state if final is None else our_state(final, b, self.cell),  # None: it keeps none
        )

    def make_step(self, mode: str, spec: run_spec.RunSpec) -> StepFn:
        """The subject's training step on the trainer's NumPy arrays: the user's own, or the
        chapter's clipping and SGD on the subject's gradients."""
        ops, b = self.ops, self.bridge
        if self.step_fn is None:
            if not b.autodiff:
                raise NotApplicable(f"{self.framework} has no autodiff and the subject no step")

            def chapter_step(p, x, y, s, lr, theta):
                loss, grads, final = self.value_and_grad(mode, p, x, y, s)
                clipped, norm = model.clip_by_global_norm(ops, grads, theta)
                return model.sgd(ops, p, clipped, lr), final, loss, norm

            return chapter_step

        user = self.step_fn

        def user_step(p, x, y, s, lr, theta):
            V = int(p["W_hq"].shape[1])
            P = {k: b.tensor(v) for k, v in p.items()}
            labels = y.T if self.inputs == "batch-major" else y
            try:
                with b.context():
                    out = user(
                        self._theirs(P), self._x(x, V), b.ids(labels), self._state(s), lr, theta
                    )
            except Exception as e:
                raise SubjectError(f"the subject's step raised {type(e).__name__}: {e}") from e
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise SubjectError("step must return (params, state, loss)")
            new, final, loss = out
            new_ours = self._ours(new, p)
            params = {k: np.asarray(b.numpy(new_ours[k]), dtype=self.dtype) for k in p}
            state = our_state(final, b, self.cell)
            # the user's step keeps its gradient: the trainer is told the norm of the update
            # it applied (the clipped gradient's, as lr·g is what moved the parameters)
            moved = math.sqrt(sum(float(((params[k] - p[k]) ** 2).sum()) for k in p)) / lr
            return params, state, np.asarray(b.numpy(loss)), np.float64(moved)

        return user_step

    def predict(self, params, prefix, n, temperature, seed):
        """The user's ``predict(params, prefix, num_preds, temperature, uniforms)`` given the
        reference's uniforms (one per sampled token: pick the first token whose cumulative
        probability exceeds it); else d2l's ``predict`` with the subject's forward one token at
        a time, the state carried, each token picked as the reference picks it."""
        if self.predict_fn is not None:
            uniforms = np.random.default_rng(seed).random(n) if temperature else None
            P = self._theirs({k: self.bridge.tensor(v) for k, v in params.items()})
            try:
                with self.bridge.context():
                    out = self.predict_fn(P, list(prefix), n, temperature, uniforms)
            except Exception as e:
                raise SubjectError(f"the subject's predict raised {type(e).__name__}: {e}") from e
            return [int(t) for t in out]
        rng = np.random.default_rng(seed)
        P = {k: self.bridge.tensor(v) for k, v in params.items()}
        H = int(params["W_hq"].shape[0])
        zeros = np.zeros((1, H), dtype=self.dtype)
        state: State = (zeros, zeros) if self.cell == LSTM else zeros
        outputs = list(prefix)
        carried = True
        if len(prefix) > 1:
            _, final = self._run(P, np.asarray(prefix[:-1]).reshape(-1, 1), state)
            carried = final is not None
            state = our_state(final, self.bridge, self.cell) if carried else state
        for _ in range(n):
            if carried:  # one token, the state carried
                logits, final = self._run(P, np.asarray([[outputs[-1]]]), state)
                state = our_state(final, self.bridge, self.cell)
            else:  # a model that returns no state: the whole text again from zero, the same
                # for a recurrence; padded to the final length, so every call has one shape
                # (one trace for JAX) and step t's logits see tokens up to t alone
                text = np.zeros(len(prefix) + n, dtype=np.int64)
                text[: len(outputs)] = outputs
                logits, _ = self._run(P, text.reshape(-1, 1), state)
                logits = logits[len(outputs) - 1 : len(outputs)]
            row = self.ops.asarray(self.bridge.numpy(logits))
            outputs.append(sampling.next_token(self.ops, row, temperature, rng))
        return outputs


def _param_order(params: Mapping[str, Any]) -> tuple[str, ...]:
    """d2l's ``get_params`` order of the model these parameters are."""
    cell = cells.cell_of(params)
    return model.param_names(params) if cell == RNN else cells.param_names(cell)


# --- torch modules ------------------------------------------------------------------------------

_TORCH_LAYERS = {"RNN": RNN, "GRU": GRU_RESET_AFTER, "LSTM": LSTM}
_TORCH_CELLS = {"RNNCell": RNN, "GRUCell": GRU_RESET_AFTER, "LSTMCell": LSTM}


class TorchModuleSubject(FunctionSubject):
    """A ``torch.nn.Module``: the model (a recurrent layer or cell and a Linear, or the
    chapter's parameters by name) loaded with the check's parameters, called as
    ``module(X, state)`` with X (batch, steps) ids, or ``module(X)`` when it takes no state
    (then the checks start from a zero state). It returns the logits, or (logits, state)."""

    def __init__(self, module: Any, *, cell: str | None = None, label: str | None = None) -> None:
        import torch

        self.torch = torch
        self.net = module
        params = list(module.parameters())
        if not params:
            raise SubjectError("the module has no parameters")
        dtype = str(params[0].dtype).replace("torch.", "")
        if dtype not in ("float32", "float64"):
            raise SubjectError(f"the module's parameters are {dtype}; float32 or float64 only")
        device = params[0].device
        where = "cpu" if device.type == "cpu" else f"gpu:{device.index or 0}"
        self.layer, self.linear, self.kind, own = self._find(module)
        if cell is not None and cell != own:
            if {cell, own} != {GRU_RESET_BEFORE, GRU_RESET_AFTER} or self.kind == "scratch":
                raise SubjectError(f"the module computes {own}, not {cell}")
        super().__init__(
            self._call,
            cell=cell or own,
            dtype=dtype,
            framework="torch",
            inputs="batch-major",
            device=str(device),
            label=label or f"torch:{type(module).__name__}",
        )
        self.device = where
        self.takes_state = len(inspect.signature(module.forward).parameters) >= 2

    def sizes(self) -> dict[str, int]:
        """The vocabulary and hidden sizes the module was built with: the check's own."""
        if self.kind == "scratch":
            named = dict(self.net.named_parameters())
            H, V = named[str(_by_suffix(named, "W_hq"))].shape
        else:
            V, H = self.linear.out_features, self.linear.in_features
        return {"vocab_size": int(V), "num_hiddens": int(H)}

    def _find(self, module: Any) -> tuple[Any, Any, str, str]:
        layers = [
            m
            for m in module.modules()
            if type(m).__name__ in {**_TORCH_LAYERS, **_TORCH_CELLS}
            and isinstance(m, self.torch.nn.Module)
        ]
        linears = [m for m in module.modules() if isinstance(m, self.torch.nn.Linear)]
        if len(layers) == 1 and len(linears) == 1:
            layer = layers[0]
            name = type(layer).__name__
            if getattr(layer, "num_layers", 1) != 1 or getattr(layer, "bidirectional", False):
                raise SubjectError("the chapter's model has one layer, one direction")
            if getattr(layer, "batch_first", False):
                raise SubjectError("batch_first layers are not the book's (it runs time-major)")
            if name in ("RNN", "RNNCell") and getattr(layer, "nonlinearity", "tanh") != "tanh":
                raise SubjectError("the chapter's RNN is tanh; this one is relu")
            kind = "layer" if name in _TORCH_LAYERS else "cell"
            return layer, linears[0], kind, {**_TORCH_LAYERS, **_TORCH_CELLS}[name]
        named = dict(module.named_parameters())
        for cell in (LSTM, GRU_RESET_BEFORE, RNN):
            ours = (
                cells.param_names(cell) if cell != RNN else ("W_xh", "W_hh", "b_h", "W_hq", "b_q")
            )
            found = {n: _by_suffix(named, n) for n in ours}
            if all(found.values()):
                return None, None, "scratch", cell
        if len(layers) > 1 or len(linears) > 1:
            raise SubjectError(
                f"the module holds {len(layers)} recurrent layers and {len(linears)} Linear "
                "layers; verify checks a model of one of each"
            )
        raise SubjectError(
            "no torch.nn.RNN/GRU/LSTM (or their cells) with an nn.Linear in the module, and no "
            "parameters named as the chapter's (W_xh, W_hh, b_h, W_hq, b_q ...)"
        )

    # -- loading the check's parameters ------------------------------------------------------
    def _load(self, P: dict[str, Any]) -> dict[str, Any]:
        """Put our parameters (torch tensors, perhaps requiring grad) into the module: its own
        parameters are replaced by them for the call (``torch.func.functional_call``), so
        autograd reaches ours. Returns the module's names -> tensors."""
        torch = self.torch
        if self.kind == "scratch":
            named = dict(self.net.named_parameters())
            return {str(_by_suffix(named, k)): v for k, v in P.items()}
        arrays = {k: v for k, v in P.items()}
        layer_names = {id(m): n for n, m in self.net.named_modules()}
        lname, oname = layer_names[id(self.layer)], layer_names[id(self.linear)]
        gates = convert.TORCH_GATES[GRU_RESET_AFTER if self.cell == GRU_RESET_BEFORE else self.cell]

        def stack(prefix: str) -> Any:
            return torch.cat([arrays[f"{prefix}{g}"] for g in gates], dim=-1)

        cell = self.cell
        W_x = stack("W_x") if cell != RNN else arrays["W_xh"]
        W_h = stack("W_h") if cell != RNN else arrays["W_hh"]
        if cell == RNN:
            b_x, b_h = arrays["b_h"], torch.zeros_like(arrays["b_h"])
        elif cell in (GRU_RESET_AFTER, GRU_RESET_BEFORE):  # torch's GRU is reset-after:
            # d2l's reset-before GRU goes in with its b_h as the input bias (and computes the
            # other form, which verify names)
            candidate = arrays["b_xh"] if cell == GRU_RESET_AFTER else arrays["b_h"]
            zeros = torch.zeros_like(arrays["b_r"])
            b_x = torch.cat([arrays["b_r"], arrays["b_z"], candidate])
            recurrent = arrays["b_hh"] if cell == GRU_RESET_AFTER else zeros
            b_h = torch.cat([zeros, zeros, recurrent])
        else:
            b_x = torch.cat([arrays[f"b_{g}"] for g in gates])
            b_h = torch.zeros_like(b_x)
        suffix = "_l0" if self.kind == "layer" else ""
        prefix = f"{lname}." if lname else ""
        out = {
            f"{prefix}weight_ih{suffix}": W_x.T,
            f"{prefix}weight_hh{suffix}": W_h.T,
            f"{oname}.weight": arrays["W_hq"].T,
        }
        if self.layer.bias:  # a layer built with bias=False computes without them
            out[f"{prefix}bias_ih{suffix}"] = b_x
            out[f"{prefix}bias_hh{suffix}"] = b_h
        if self.linear.bias is not None:
            out[f"{oname}.bias"] = arrays["b_q"]
        return out

    def _call(self, P: dict[str, Any], X: Any, state: Any) -> tuple[Any, Any]:
        torch = self.torch
        loaded = self._load(P)
        if self.kind == "layer":  # nn.RNN & co. take (1, batch, hiddens)
            state = tuple(s[None] for s in state) if isinstance(state, tuple) else state[None]
        if self.cell != LSTM and isinstance(state, tuple):
            state = state[0]
        args = (X, state) if self.takes_state else (X,)
        out = torch.func.functional_call(self.net, loaded, args)
        if isinstance(out, (tuple, list)) and len(out) == 2:
            return out[0], out[1]
        return out, None


# --- Keras models -------------------------------------------------------------------------------

_KERAS_LAYERS = ("SimpleRNN", "GRU", "LSTM")
_KERAS_BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
"""Keras' backends verify runs a model on, and the framework whose autodiff it then uses."""


class KerasModelSubject(FunctionSubject):
    """A Keras 3 model (on the TensorFlow, JAX or torch backend) holding one ``SimpleRNN``,
    ``GRU`` or ``LSTM`` and one ``Dense``: its weights set from the check's parameters through
    core.convert's orders (kernel columns in Keras' gate order z, r, h and i, f, c, o;
    reset_after's two bias rows), with ``stateless_call`` so the backend's autodiff reaches
    them, called as ``model(X)`` with X (batch, steps) ids (``inputs="one-hot"``: (batch,
    steps, vocab) floats), its logits (batch, steps, vocab). Keras models take and return no
    state: the checks start from zero. ``cell``: the model the user means, where a GRU layer
    could hold either form (d2l's reset-before GRU in ``GRU(reset_after=True)`` computes the
    other form, and is named so)."""

    def __init__(
        self,
        model: Any,
        *,
        cell: str | None = None,
        inputs: str = "batch-major",
        label: str | None = None,
    ) -> None:
        import keras

        backend = keras.backend.backend()
        if backend not in _KERAS_BACKENDS:
            raise SubjectError(
                f"this Keras runs on {backend}; verify runs Keras models on "
                f"{', '.join(_KERAS_BACKENDS)}"
            )
        self.net = model
        layers = list(model._flatten_layers(include_self=True, recursive=True))
        rnns = [l for l in layers if type(l).__name__ in _KERAS_LAYERS]
        denses = [l for l in layers if type(l).__name__ == "Dense"]
        if len(rnns) != 1 or len(denses) != 1:
            raise SubjectError(
                f"the model holds {len(rnns)} recurrent layers and {len(denses)} Dense layers; "
                "verify checks a model of one of each"
            )
        self.layer, self.dense = rnns[0], denses[0]
        kind = type(self.layer).__name__
        if not self.layer.return_sequences:
            raise SubjectError(
                f"the {kind} layer returns its last step only (return_sequences=False): a "
                "language model needs every step's output"
            )
        if getattr(self.layer, "go_backwards", False):
            raise SubjectError(f"the {kind} layer runs backwards (go_backwards=True)")
        if kind == "SimpleRNN" and self.layer.cell.activation.__name__ != "tanh":
            raise SubjectError("the chapter's RNN is tanh; this SimpleRNN is not")
        own = {"SimpleRNN": RNN, "LSTM": LSTM}.get(kind) or (
            GRU_RESET_AFTER if self.layer.reset_after else GRU_RESET_BEFORE
        )
        if (
            cell is not None
            and cell != own
            and not (kind == "GRU" and cell in (GRU_RESET_BEFORE, GRU_RESET_AFTER))
        ):
            raise SubjectError(f"the model's {kind} layer computes {own}, not {cell}")
        ours = set(map(id, [*self.layer.trainable_variables, *self.dense.trainable_variables]))
        extra = [v.path for v in model.trainable_variables if id(v) not in ours]
        if extra:
            raise SubjectError(
                f"the model trains weights besides its {kind} and Dense layers ({extra[0]} ...); "
                "verify checks the chapter's one-hot model"
            )
        dtype = str(self.layer.cell.kernel.dtype)
        if dtype not in ("float32", "float64"):
            raise SubjectError(f"the layer's weights are {dtype}; float32 or float64 only")
        super().__init__(
            self._call,
            cell=cell or own,
            dtype=dtype,
            framework=_KERAS_BACKENDS[backend],  # whose autodiff differentiates the model
            inputs=inputs,
            label=label or f"keras:{type(model).__name__}",
        )
        self.takes_state = False

    @property
    def batch_major(self) -> bool:
        return True  # Keras is batch-major, its one-hot inputs too

    def sizes(self) -> dict[str, int]:
        return {"vocab_size": int(self.dense.units), "num_hiddens": int(self.layer.units)}

    def _x(self, inputs: np.ndarray, vocab_size: int) -> Any:
        if self.inputs == "one-hot":  # Keras is batch-major
            return self.bridge.one_hot(inputs.T, vocab_size)
        return self.bridge.ids(inputs.T)

    def _values(self, P: dict[str, Any]) -> dict[int, Any]:
        """Our parameters as the Keras variables' values, by the variables' ids, made with
        keras.ops, so the backend's autodiff reaches ours."""
        from keras import ops

        cell, layer = self.cell, self.layer
        kind = type(layer).__name__
        gates = convert.KERAS_GATES[cell]  # z, r, h and i, f, c, o: either GRU form alike
        values = {
            id(layer.cell.kernel): ops.concatenate([P[f"W_x{g}"] for g in gates], axis=1),
            id(layer.cell.recurrent_kernel): ops.concatenate([P[f"W_h{g}"] for g in gates], axis=1),
            id(self.dense.kernel): P["W_hq"],
        }
        if self.dense.use_bias:
            values[id(self.dense.bias)] = P["b_q"]
        if not layer.use_bias:
            return values
        if kind == "GRU":
            b_x = P["b_xh"] if cell == GRU_RESET_AFTER else P["b_h"]
            b_hh = P["b_hh"] if cell == GRU_RESET_AFTER else ops.zeros_like(b_x)
            if layer.reset_after:
                zero = ops.zeros_like(b_x)
                bias = ops.stack(
                    [
                        ops.concatenate([P["b_z"], P["b_r"], b_x]),
                        ops.concatenate([zero, zero, b_hh]),
                    ]
                )
            else:  # one bias: the reset-after pair summed
                bias = ops.concatenate([P["b_z"], P["b_r"], b_x + b_hh])
        else:
            bias = ops.concatenate([P[f"b_{g}"] for g in gates])
        values[id(layer.cell.bias)] = bias
        return values

    def _call(self, P: dict[str, Any], X: Any, state: Any) -> tuple[Any, Any]:
        values = self._values(P)
        trainable = [values.get(id(v), v.value) for v in self.net.trainable_variables]
        fixed = [v.value for v in self.net.non_trainable_variables]
        out, _ = self.net.stateless_call(trainable, fixed, X)
        return out, None


# --- Flax models -----------------------------------------------------------------------------

_FLAX_CELLS: dict[frozenset[str], str] = {
    frozenset({"i", "h"}): "linen-simple",
    frozenset({"ir", "iz", "in", "hr", "hz", "hn"}): "linen-gru",
    frozenset({"ii", "if", "ig", "io", "hi", "hf", "hg", "ho"}): "lstm",  # also Optimized
    frozenset({"ii", "if_", "ig", "io", "hi", "hf", "hg", "ho"}): "lstm",  # nnx names 'if_'
    frozenset({"dense_i", "dense_h"}): "nnx-fused",  # nnx Simple, GRU or OptimizedLSTM cell
}
"""Each Flax cell by the names of its parameter groups (linen's and nnx's differ)."""


class FlaxModelSubject(FunctionSubject):
    """A Flax model, linen (a ``Module`` definition: its parameters made by ``init``) or nnx (a
    ``Module`` instance), holding one recurrent cell (``SimpleCell``, ``GRUCell``, ``LSTMCell``,
    ``OptimizedLSTMCell``) driven over time by the user's ``nn.RNN``, scan or loop, and one
    ``Dense``/``Linear`` output. Its parameters are replaced by the check's (Flax's gate
    orders r, z, n and i, f, g, o; an LSTM's input kernels carry no bias, its recurrent ones
    do) and it is called as ``model(X)`` with X (batch, steps) ids (``inputs="one-hot"``: one-hot
    floats), its logits (batch, steps, vocab); it takes and returns no state. Flax's GRU is
    reset-after; ``cell="gru"`` holds it to d2l's reset-before GRU instead."""

    def __init__(
        self,
        model: Any,
        *,
        cell: str | None = None,
        inputs: str = "batch-major",
        label: str | None = None,
    ) -> None:
        import jax
        from flax import nnx

        self.net = model
        self.nnx = isinstance(model, nnx.Module)
        if self.nnx:
            parts: tuple[Any, ...] = nnx.split(model, nnx.Param, ...)
            self._graph: Any = parts[0]
            params, rest = parts[1], parts[2]
            flat = {tuple(k): v for k, v in nnx.to_flat_state(params)}
            self._rest = list(nnx.to_flat_state(rest))
            values = {k: (v.get_value() if hasattr(v, "get_value") else v) for k, v in flat.items()}
        else:
            from flax import traverse_util

            X = np.zeros((1, 2), dtype=np.int32)
            try:
                variables = model.init(jax.random.key(0), X)
            except Exception as first:
                switch = getattr(jax, "enable_x64", None)
                try:  # a float32 model made where a float64 run turned 64-bit types on
                    if not callable(switch):
                        raise first
                    with switch(False):
                        variables = model.init(jax.random.key(0), X)
                except Exception as e:
                    raise SubjectError(
                        f"the model's init(key, X) raised {type(e).__name__}: {e}"
                    ) from e
            extra = set(variables) - {"params"}
            if extra:
                raise SubjectError(
                    f"the model keeps state besides its parameters ({sorted(extra)[0]})"
                )
            values = dict(traverse_util.flatten_dict(variables["params"]))
        self._values0 = values
        self._cell_at, layout = self._find_cell(values)
        self._dense_at = self._find_dense(values)
        kernel = values[(*self._dense_at, "kernel")]
        H, V = (int(n) for n in kernel.shape)
        self._sizes = {"vocab_size": V, "num_hiddens": H}
        if layout == "nnx-fused":
            k = int(values[(*self._cell_at, "dense_h", "kernel")].shape[1]) // H
            layout = {1: "nnx-simple", 3: "nnx-gru", 4: "nnx-lstm"}.get(k, "")
            if not layout:
                raise SubjectError(f"a fused Flax cell with {k} gates is none of the chapter's")
        self.layout = layout
        own = {"linen-simple": RNN, "nnx-simple": RNN, "lstm": LSTM, "nnx-lstm": LSTM}.get(
            layout, GRU_RESET_AFTER
        )
        if cell is not None and cell != own and {cell, own} != {GRU_RESET_BEFORE, GRU_RESET_AFTER}:
            raise SubjectError(f"the model's Flax cell computes {own}, not {cell}")
        dtype = str(kernel.dtype)
        if dtype not in ("float32", "float64"):
            raise SubjectError(f"the model's parameters are {dtype}; float32 or float64 only")
        super().__init__(
            self._call,
            cell=cell or own,
            dtype=dtype,
            framework="jax",
            inputs=inputs,
            label=label or f"flax:{type(model).__name__}",
        )
        self.takes_state = False

    @staticmethod
    def _groups(values: Mapping[tuple, Any]) -> dict[tuple, set[str]]:
        """Each prefix of the parameter paths -> the names just below it."""
        below: dict[tuple, set[str]] = {}
        for path in values:
            for n in range(len(path)):
                below.setdefault(path[:n], set()).add(path[n])
        return below

    def _find_cell(self, values: Mapping[tuple, Any]) -> tuple[tuple, str]:
        found = [
            (p, _FLAX_CELLS[frozenset(c)])
            for p, c in self._groups(values).items()
            if frozenset(c) in _FLAX_CELLS
        ]
        if len(found) != 1:
            raise SubjectError(
                f"the model holds {len(found)} Flax recurrent cells (SimpleCell, GRUCell, "
                "LSTMCell, OptimizedLSTMCell); verify checks a model of one"
            )
        return found[0]

    def _find_dense(self, values: Mapping[tuple, Any]) -> tuple:
        cell = self._cell_at
        denses = [
            p
            for p, c in self._groups(values).items()
            if c in ({"kernel", "bias"}, {"kernel"}) and p[: len(cell)] != cell
        ]
        if len(denses) != 1:
            raise SubjectError(
                f"the model holds {len(denses)} dense layers besides its cell; verify checks a "
                "model of one recurrent cell and one Dense output"
            )
        return denses[0]

    def sizes(self) -> dict[str, int]:
        return dict(self._sizes)

    @property
    def batch_major(self) -> bool:
        return True

    def _x(self, inputs: np.ndarray, vocab_size: int) -> Any:
        if self.inputs == "one-hot":
            return self.bridge.one_hot(inputs.T, vocab_size)
        return self.bridge.ids(inputs.T)

    def _cell_values(self, P: dict[str, Any]) -> dict[tuple, Any]:
        """Our parameters at the Flax cell's paths (relative to the cell)."""
        import jax.numpy as jnp

        cell, layout = self.cell, self.layout
        if cell in (GRU_RESET_AFTER, GRU_RESET_BEFORE):
            b_n = P["b_xh"] if cell == GRU_RESET_AFTER else P["b_h"]
            b_hn = P["b_hh"] if cell == GRU_RESET_AFTER else jnp.zeros_like(b_n)
            if layout == "linen-gru":
                return {
                    ("ir", "kernel"): P["W_xr"],
                    ("ir", "bias"): P["b_r"],
                    ("hr", "kernel"): P["W_hr"],
                    ("iz", "kernel"): P["W_xz"],
                    ("iz", "bias"): P["b_z"],
                    ("hz", "kernel"): P["W_hz"],
                    ("in", "kernel"): P["W_xh"],
                    ("in", "bias"): b_n,
                    ("hn", "kernel"): P["W_hh"],
                    ("hn", "bias"): b_hn,
                }
            # nnx's GRUCell: r, z, n stacked as torch's; no recurrent bias (b_hn has no place)
            torch_order = convert.TORCH_GATES[GRU_RESET_AFTER]
            return {
                ("dense_i", "kernel"): jnp.concatenate([P[f"W_x{g}"] for g in torch_order], 1),
                ("dense_i", "bias"): jnp.concatenate([P["b_r"], P["b_z"], b_n]),
                ("dense_h", "kernel"): jnp.concatenate([P[f"W_h{g}"] for g in torch_order], 1),
            }
        if cell == RNN:
            names = ("i", "h") if layout == "linen-simple" else ("dense_i", "dense_h")
            return {
                (names[0], "kernel"): P["W_xh"],
                (names[0], "bias"): P["b_h"],
                (names[1], "kernel"): P["W_hh"],
            }
        if layout == "nnx-lstm":  # OptimizedLSTMCell: i, f, g, o stacked
            order = convert.TORCH_GATES[LSTM]  # i, f, g, o, as torch stacks them
            return {
                ("dense_i", "kernel"): jnp.concatenate([P[f"W_x{g}"] for g in order], 1),
                ("dense_h", "kernel"): jnp.concatenate([P[f"W_h{g}"] for g in order], 1),
                ("dense_h", "bias"): jnp.concatenate([P[f"b_{g}"] for g in order]),
            }
        f = "if_" if (*self._cell_at, "if_", "kernel") in self._values0 else "if"
        out = {}
        for flax_i, flax_h, g in (
            ("ii", "hi", "i"),
            (f, "hf", "f"),
            ("ig", "hg", "c"),
            ("io", "ho", "o"),
        ):
            out[(flax_i, "kernel")] = P[f"W_x{g}"]
            out[(flax_h, "kernel")] = P[f"W_h{g}"]
            out[(flax_h, "bias")] = P[f"b_{g}"]
        return out

    def _call(self, P: dict[str, Any], X: Any, state: Any) -> tuple[Any, Any]:
        values = dict(self._values0)
        for path, value in self._cell_values(P).items():
            values[(*self._cell_at, *path)] = value
        values[(*self._dense_at, "kernel")] = P["W_hq"]
        if (*self._dense_at, "bias") in values:
            values[(*self._dense_at, "bias")] = P["b_q"]
        if self.nnx:
            from flax import nnx

            model = nnx.merge(
                self._graph,
                nnx.from_flat_state(values),
                nnx.from_flat_state(dict(self._rest)),
                copy=True,
            )
            out = model(X)
        else:
            from flax import traverse_util

            out = self.net.apply({"params": traverse_util.unflatten_dict(values)}, X)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out, None


def _by_suffix(named: Mapping[str, Any], name: str) -> str | None:
    """The one parameter whose dotted name ends in ``name`` (``rnn.W_xh`` for W_xh)."""
    hits = [n for n in named if n == name or n.endswith(f".{name}")]
    return hits[0] if len(hits) == 1 else None


def subject_of(obj: Any, **options: Any) -> FunctionSubject:
    """The subject for a user's object: a torch module, or a forward function (with the
    options ``FunctionSubject`` takes); a dict or object with ``forward`` (and ``step``,
    ``cell``, ``names`` ...) gives them by name."""
    try:
        import torch
    except ImportError:
        torch = None
    if _is_flax(obj):
        extra = set(options) - {"label", "cell", "inputs"}
        if extra:
            raise SubjectError(f"a Flax model takes no {', '.join(sorted(extra))}")
        return FlaxModelSubject(obj, **options)
    if _is_keras(obj):
        extra = set(options) - {"label", "cell", "inputs"}
        if extra:
            raise SubjectError(f"a Keras model takes no {', '.join(sorted(extra))}")
        return KerasModelSubject(obj, **options)
    if torch is not None and isinstance(obj, torch.nn.Module):
        extra = set(options) - {"label", "cell"}
        if extra:
            raise SubjectError(f"a torch module takes no {', '.join(sorted(extra))}")
        return TorchModuleSubject(obj, **options)
    if isinstance(obj, Mapping) or (hasattr(obj, "forward") and not callable(obj)):
        spec = dict(obj) if isinstance(obj, Mapping) else _public(obj)
        if "forward" not in spec:
            raise SubjectError("the subject names no forward")
        forward = spec.pop("forward")
        return FunctionSubject(forward, **{**spec, **options})
    if callable(obj):
        return FunctionSubject(obj, **options)
    raise SubjectError(f"{type(obj).__name__} is not a model or a forward function")


def _is_flax(obj: Any) -> bool:
    """A linen or nnx module, told without importing Flax where the user has not."""
    if "flax" not in sys.modules:
        return False
    import flax.linen as linen
    from flax import nnx

    return isinstance(obj, (linen.Module, nnx.Module))


def _is_keras(obj: Any) -> bool:
    """A Keras layer or model, told without importing Keras where the user has not."""
    if "keras" not in sys.modules:
        return False
    import keras

    return isinstance(obj, keras.Layer)


def _public(obj: Any) -> dict[str, Any]:
    keys = (
        "forward",
        "step",
        "predict",
        "cell",
        "framework",
        "names",
        "params_form",
        "inputs",
        "state_form",
    )
    return {k: getattr(obj, k) for k in keys if hasattr(obj, k)}
