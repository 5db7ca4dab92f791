"""Benchmarks: measured and reported by ``rosetta-rnn bench``, never asserted in tests."""
