"""Benchmarks: measured and reported by ``rosetta-rnn bench``, never asserted in tests.

``cli`` (the command), ``runner`` (one run in one process), ``workloads`` (train, forward and
generate cases of the backends, per cell), ``peers`` (the frameworks' own RNN, GRU and LSTM
layers), ``roofline`` (FLOPs and the machine's matmul limit), ``timing`` (clocks, interleaving,
peak RSS, the quiet guard), ``targets`` (the speed ratios each backend should reach),
``report`` (table, CSV, markdown, PNG), ``machine``, ``threads`` and ``profile`` (where a step's
time goes). Results live in ``results/<machine>/``.
"""
