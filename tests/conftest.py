"""Shared fixtures. Exporting a zoo model to ONNX takes 5-30 s, so each model is built,
run (`zoo_run`, also used by test_torch_executor.py) and exported (`zoo_case`) once per
session and shared by tests/test_zoo.py and test_zoo_nas.py."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from planner import models
from planner.models import ZooEntry


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
def zoo_case(tmp_path_factory, zoo_run) -> Callable[[str], ZooCase]:
    cache: dict[str, ZooCase] = {}

    def get(name: str) -> ZooCase:
        if name not in cache:
            run = zoo_run(name)
            path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
            models.export_module(run.model, run.args, path)
            cache[name] = ZooCase(run.entry, run.model, run.args, [t.numpy() for t in run.outputs], path)
        return cache[name]

    return get
