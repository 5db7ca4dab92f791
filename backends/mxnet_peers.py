"""MXNet's worker: the requests of the bench's Gluon peers.

Imported only in MXNet's environment (``backends.mxnet_worker`` serves these beside its own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

HANDLERS: dict[str, Callable[..., Any]] = {}
