"""The LSTM from scratch (d2l 9.2) in TensorFlow: X (steps, batch) ids, state (H, C)."""

import tensorflow as tf


def forward(params, X, state):
    H, C = state
    V = params["W_hq"].shape[1]
    outputs = []
    for x in tf.one_hot(X, V, dtype=H.dtype):
        I = tf.sigmoid(x @ params["W_xi"] + H @ params["W_hi"] + params["b_i"])
        F = tf.sigmoid(x @ params["W_xf"] + H @ params["W_hf"] + params["b_f"])
        O = tf.sigmoid(x @ params["W_xo"] + H @ params["W_ho"] + params["b_o"])
        C_tilda = tf.tanh(x @ params["W_xc"] + H @ params["W_hc"] + params["b_c"])
        C = F * C + I * C_tilda
        H = O * tf.tanh(C)
        outputs.append(H @ params["W_hq"] + params["b_q"])
    return tf.concat(outputs, axis=0), (H, C)
