"""Shared fixtures. Exporting a zoo model to ONNX takes 5-30 s, so each model is built,
run (`zoo_run`, also used by test_torch_executor.py) and exported (`zoo_case`) once per
session and shared by tests/test_zoo.py and test_zoo_nas.py. The exports carry their
weights (1.8 GB for the whole zoo), so they are deleted when the session ends rather than
left to pytest's retention of its last three temporary directories.

Speed (issue 13): a test parametrized over zoo models runs in the default set only for
`FAST_ZOO`, the small networks that exercise the same code paths; the other models' cases
are marked `slow`. `make test` runs the default set and then `-m slow`, so CI runs all.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch

from planner import models
from planner.models import ZOO, ZooEntry

# Zoo models whose cases stay in the default run: a CNN with residuals and depthwise convs,
# and a transformer (attention, layer norm). Every other model runs under -m slow.
FAST_ZOO = {"mobilenet_v2", "transformer"}


def pytest_collection_modifyitems(config, items) -> None:
    """Marks `slow` every zoo test's case parametrized by a model outside FAST_ZOO (zoo
    tests say so in their file or function name; the onnx wheel's light models share some
    names with zoo models and are not zoo cases)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if "zoo" not in item.nodeid.split("[")[0]:
            continue
        names = [v for v in (callspec.params.values() if callspec else ()) if isinstance(v, str) and v in ZOO]
        if any(n not in FAST_ZOO for n in names):
            item.add_marker(pytest.mark.slow)


@dataclass
class ZooRun:
    entry: ZooEntry
    model: torch.nn.Module
    args: tuple[torch.Tensor, ...]  # the entry's small_shape inputs
    outputs: list[torch.Tensor]  # torch eager, flattened


@dataclass
class ZooCase:
    entry: ZooEntry
    model: torch.nn.Module
    args: tuple[torch.Tensor, ...]  # the entry's small_shape inputs
    outputs: list[np.ndarray]  # torch eager, flattened
    path: Path  # the exported ONNX file


@pytest.fixture(scope="session")
def zoo_run() -> Callable[[str], ZooRun]:
    """Each zoo model built and run once at its small shape, for every test file."""
    cache: dict[str, ZooRun] = {}

    def get(name: str) -> ZooRun:
        if name not in cache:
            entry = models.get(name)
            model = entry.build()
            args = models.example_inputs(entry, shape=entry.small_shape)
            with torch.no_grad():
                out = model(*args)
            cache[name] = ZooRun(entry, model, args, list(out) if isinstance(out, (tuple, list)) else [out])
        return cache[name]

    return get


@pytest.fixture(scope="session")
def zoo_case(tmp_path_factory, zoo_run) -> Iterator[Callable[[str], ZooCase]]:
    cache: dict[str, ZooCase] = {}
    root = tmp_path_factory.mktemp("zoo_onnx")

    def get(name: str) -> ZooCase:
        if name not in cache:
            run = zoo_run(name)
            path = root / f"{name}.onnx"
            models.export_module(run.model, run.args, path)
            cache[name] = ZooCase(run.entry, run.model, run.args, [t.numpy() for t in run.outputs], path)
        return cache[name]

    yield get
    shutil.rmtree(root, ignore_errors=True)
