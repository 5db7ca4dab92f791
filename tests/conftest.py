"""Shared fixtures: hypothesis profiles, the shared copy of The Time Machine, backends."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from rosetta_rnn.core import data
from rosetta_rnn.core.errors import DataError

REPO = Path(__file__).resolve().parent.parent

# ci: fast and derandomized (the same examples every run); dev: deeper, random.
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_sessionstart(session: pytest.Session) -> None:
    """MXNet's environment, set up before collection unless the run leaves the ``mxnet`` group
    out (``-m "not mxnet"``): the tests over every registered backend then collect ``mxnet``
    the same way whatever ran before. Setting it up takes about 15 s from the package registry;
    a setup that fails is an error, never a skip."""
    if "not mxnet" in (session.config.getoption("markexpr", "") or ""):
        return
    from rosetta_rnn.backends import environments

    if environments.status("mxnet") != "ready":
        environments.setup("mxnet", say=lambda line: None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:  # a test run on MXNet belongs to its group, whichever file it is in
        if "mxnet" in item.nodeid.lower() and "mxnet" not in item.keywords:
            item.add_marker(pytest.mark.mxnet)
    if os.environ.get("ROSETTA_RNN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow reproduction run; set ROSETTA_RNN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def timemachine() -> Path:
    """The Time Machine found as the command finds it (never committed): ``$ROSETTA_RNN_DATA``,
    then the sha1-checked cache, then a download into that cache."""
    try:
        return data.locate_time_machine()
    except DataError as e:
        pytest.fail(f"The Time Machine is needed: {e}")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def mxnet() -> Iterator[Any]:
    """MXNet's worker, in its own environment (``pytest_sessionstart`` set it up). One worker
    for the whole session."""
    from rosetta_rnn.backends import environments

    with environments.start("mxnet") as worker:
        yield worker
