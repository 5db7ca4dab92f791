"""rosetta-rnn: d2l's character-level RNN, written once, run on NumPy, PyTorch, JAX and TensorFlow.

Subpackages: ``rosetta_rnn.core`` (the math), ``rosetta_rnn.backends`` (one module per
framework), ``rosetta_rnn.conformance`` (cross-backend checks), ``rosetta_rnn.benchmarks``.
"""

__version__ = "0.1.0"
"""The one place the version is written: pyproject.toml reads it, CHANGELOG.md names it."""
