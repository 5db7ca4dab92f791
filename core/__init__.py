"""Backend-neutral core: the tensor interface, the chapter's math, data, sampling, checkpoints.

Imports no framework; every function takes the tensor interface ``ops`` first.
"""

from . import checkpoint, data, errors, model, ops, sampling, training

__all__ = ["checkpoint", "data", "errors", "model", "ops", "sampling", "training"]
