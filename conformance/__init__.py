"""Cross-backend conformance checks (NumPy float64 is the reference)."""
