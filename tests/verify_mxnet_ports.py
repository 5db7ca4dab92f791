"""Gluon ports for tests/test_mxnet_verify.py: MXNet 1.9.1 models and functions as d2l's MXNet
pages write them, correct and with a mistake planted. Imported only in MXNet's worker (the
main environment cannot import mxnet): verify reads this file's path, never imports it.

- ``RNNModel``: d2l 0.17's MXNet ``RNNModel`` (8.6), around a Gluon ``rnn.RNN``/``GRU``/
  ``LSTM``; ``dtype`` is the one-hot inputs' (the book's float32 by default).
- ``RNNLM``: d2l 1.0's MXNet ``RNNLM``, returning the logits alone.
- ``GRUScratch``: d2l 0.17's GRU from scratch (9.1) as a Gluon Block whose ``Parameter``\\ s
  carry the chapter's names.
- ``rnn`` / ``forward``: d2l 0.17's MXNet ``rnn(inputs, state, params)`` (8.5) and the
  ``forward(params, X, state)`` verify calls.
"""

from mxnet import np, npx
from mxnet.gluon import nn, rnn

npx.set_np()

V, H = 11, 6


def _float64(model):
    model.cast("float64")
    return model


# --8<-- [start:rnnmodel]
class RNNModel(nn.Block):
    """d2l 0.17's MXNet RNNModel: X (batch, steps) ids, one-hot inside, (output, state)."""

    def __init__(self, rnn_layer, vocab_size, dtype="float32", batch_major=False, **kwargs):
        super().__init__(**kwargs)
        self.rnn = rnn_layer
        self.vocab_size = vocab_size
        self.dense = nn.Dense(vocab_size)
        self.dtype, self.batch_major = dtype, batch_major

    def forward(self, inputs, state):
        X = npx.one_hot(inputs.T, self.vocab_size, dtype=self.dtype)
        Y, state = self.rnn(X, state)
        if self.batch_major:  # planted: rows batch × steps, where the labels are time-major
            Y = Y.swapaxes(0, 1)
        output = self.dense(Y.reshape(-1, Y.shape[-1]))
        return output, state

    def begin_state(self, *args, **kwargs):
        return self.rnn.begin_state(*args, **kwargs)


rnn_tanh = RNNModel(rnn.RNN(H, activation="tanh"), V)
gru = RNNModel(rnn.GRU(H), V)
# --8<-- [end:rnnmodel]
lstm = RNNModel(rnn.LSTM(H), V)
rnn_tanh64 = _float64(RNNModel(rnn.RNN(H, activation="tanh"), V, "float64"))
gru64 = _float64(RNNModel(rnn.GRU(H), V, "float64"))
lstm64 = _float64(RNNModel(rnn.LSTM(H), V, "float64"))

rnn_relu = RNNModel(rnn.RNN(H), V)  # d2l's own line: Gluon's rnn.RNN defaults to ReLU
gru_batch_major = _float64(RNNModel(rnn.GRU(H), V, "float64", batch_major=True))


class RNNLM(nn.Block):
    """d2l 1.0's MXNet RNNLM: model(X) with X (batch, steps) ids, the logits (batch, steps,
    vocab) through Dense(flatten=False); it takes and returns no state."""

    def __init__(self, rnn_layer, vocab_size, dtype="float32", **kwargs):
        super().__init__(**kwargs)
        self.rnn = rnn_layer
        self.vocab_size, self.dtype = vocab_size, dtype
        self.linear = nn.Dense(vocab_size, flatten=False)

    def forward(self, X):
        embs = npx.one_hot(X.T, self.vocab_size, dtype=self.dtype)
        outputs = self.rnn(embs)  # a Gluon layer called without a state starts from zeros
        return self.linear(outputs).swapaxes(0, 1)


lstm_lm64 = _float64(RNNLM(rnn.LSTM(H), V, "float64"))


class GRUCellLoop(nn.Block):
    """A loop over Gluon's GRUCell: Gluon 1.9.1's cells do not run on mxnet.np arrays."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.cell = rnn.GRUCell(H, input_size=V)
        self.dense = nn.Dense(V, in_units=H)

    def forward(self, inputs, state):
        outputs = []
        for x in npx.one_hot(inputs.T, V):
            y, state = self.cell(x, state)
            outputs.append(self.dense(y))
        return np.concatenate(outputs, axis=0), state


gru_cells = GRUCellLoop()


class GRUScratch(nn.Block):
    """d2l 0.17's GRU from scratch (9.1) in Gluon: the chapter's parameters by name."""

    def __init__(self, mistake="", **kwargs):
        super().__init__(**kwargs)
        self.mistake = mistake
        with self.name_scope():
            for g in "zrh":
                self.params.get(f"W_x{g}", shape=(V, H), dtype="float64")
                self.params.get(f"W_h{g}", shape=(H, H), dtype="float64")
                self.params.get(f"b_{g}", shape=(H,), dtype="float64")
            self.params.get("W_hq", shape=(H, V), dtype="float64")
            self.params.get("b_q", shape=(V,), dtype="float64")

    def p(self, name):
        return self.params.get(name).data()

    # --8<-- [start:scratch]
    def forward(self, inputs, state):
        p = self.p
        z, r = ("r", "z") if self.mistake == "gate-order-zr" else ("z", "r")
        (H_,) = state
        outputs = []
        for X in npx.one_hot(inputs.T, V, dtype="float64"):
            Z = npx.sigmoid(X @ p(f"W_x{z}") + H_ @ p(f"W_h{z}") + p(f"b_{z}"))
            R = npx.sigmoid(X @ p(f"W_x{r}") + H_ @ p(f"W_h{r}") + p(f"b_{r}"))
            H_tilda = np.tanh(X @ p("W_xh") + (R * H_) @ p("W_hh") + p("b_h"))
            H_ = Z * H_ + (1 - Z) * H_tilda
            outputs.append(H_ @ p("W_hq") + p("b_q"))
        return np.concatenate(outputs, axis=0), (H_,)
        # --8<-- [end:scratch]


gru_scratch = GRUScratch()
gru_scratch_zr = GRUScratch("gate-order-zr")  # planted: the update and reset gates exchanged


def rnn_017(inputs, state, params, bias=True):
    """d2l 0.17's MXNet rnn() (8.5): one-hot (steps, batch, vocab), params a list, (H,)."""
    W_xh, W_hh, b_h, W_hq, b_q = params
    (H_,) = state
    outputs = []
    for X in inputs:
        H_ = np.tanh(np.dot(X, W_xh) + np.dot(H_, W_hh) + (b_h if bias else 0))
        Y = np.dot(H_, W_hq) + b_q
        outputs.append(Y)
    return np.concatenate(outputs, axis=0), (H_,)


def forward(params, X, state):  # verify calls forward(params, X, state); d2l's order differs
    return rnn_017(X, state, params)


def forward_no_bias(params, X, state):  # planted: the hidden layer's bias left out
    return rnn_017(X, state, params, bias=False)


def forward_raises(params, X, state):
    raise RuntimeError("the user's code fails here")
