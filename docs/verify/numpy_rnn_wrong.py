"""The same RNN without its hidden bias."""

import numpy as np


def forward(params, X, H):
    outputs = []
    for x in X:  # X: (steps, batch) ids
        H = np.tanh(params["W_xh"][x] + H @ params["W_hh"])
        outputs.append(H @ params["W_hq"] + params["b_q"])
    return np.concatenate(outputs), H
