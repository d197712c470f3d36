"""The model zoo: reference networks in plain torch, their published input sizes and parameter
counts, and ONNX export.

Every builder returns the real architecture (here: layer for layer as torchvision or torch
builds it, parameter counts equal to the published ones) with random weights drawn from a
fixed seed, in eval mode, so two builds give the same model and the same outputs. Nothing is
downloaded.

    >>> import models
    >>> e = models.get("resnet50")
    >>> e.input_shape, e.params
    ((1, 3, 224, 224), 25557032)
    >>> [x.shape for x in models.example_inputs(e, resolution=64)]
    [torch.Size([1, 3, 64, 64])]

`ZOO` holds the human-designed networks below and the NAS cells of `models.nas`
(`models.nas.ENTRIES`).
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from planner.errors import BadInput


@dataclass(frozen=True)
class ZooEntry:
    name: str
    task: str  # "classification", "video", "segmentation", "translation", "language", "nas"
    build: Callable[[], nn.Module]  # seeded random weights, eval mode
    input_shape: tuple[int, ...]  # the published input size, batch 1
    params: int | None  # the published parameter count; None where there is none
    small_shape: tuple[int, ...]  # a cheap input for tests
    note: str = ""  # which variant, where the input size comes from
    num_inputs: int = 1  # the model takes this many tensors of input_shape (transformer: src, tgt)
    vocab: int | None = None  # inputs are token ids in [0, vocab) instead of floats (language models)


def seeded(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Wraps a builder so it draws its weights from seed 0, without touching the caller's RNG
    state, and returns the model in eval mode."""

    @functools.wraps(builder)
    def build(*args, **kwargs) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return builder(*args, **kwargs).eval()

    return build


def _lazy(module: str, fn: str) -> Callable[[], nn.Module]:
    # the builders' modules load on first build, so `import models` stays cheap
    def build() -> nn.Module:
        return getattr(importlib.import_module(module), fn)()

    build.__qualname__ = build.__name__ = f"{module}.{fn}"
    return build


_IMAGE, _SMALL = (1, 3, 224, 224), (1, 3, 64, 64)
ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry("resnet50", "classification", _lazy("planner.models.resnet", "resnet50"), _IMAGE, 25_557_032, _SMALL,
             "torchvision resnet50 (v1.5)"),
    ZooEntry("densenet121", "classification", _lazy("planner.models.densenet", "densenet121"), _IMAGE, 7_978_856, _SMALL,
             "torchvision densenet121"),
    ZooEntry("resnext50_32x4d", "classification", _lazy("planner.models.resnet", "resnext50_32x4d"), _IMAGE, 25_028_904,
             _SMALL, "torchvision resnext50_32x4d"),
    ZooEntry("mobilenet_v2", "classification", _lazy("planner.models.mobilenet", "mobilenet_v2"), _IMAGE, 3_504_872, _SMALL,
             "torchvision mobilenet_v2, width 1.0"),
    ZooEntry("vit_b_16", "classification", _lazy("planner.models.vit", "vit_b_16"), _IMAGE, 86_567_656, _IMAGE,
             "torchvision vit_b_16; the position embedding fixes the input at 224x224"),
    ZooEntry("r2plus1d_18", "video", _lazy("planner.models.video", "r2plus1d_18"), (1, 3, 16, 112, 112), 31_505_325,
             (1, 3, 8, 32, 32), "torchvision r2plus1d_18; 16 frames of 112x112 (its Kinetics-400 clip size)"),
    ZooEntry("s3d", "video", _lazy("planner.models.video", "s3d"), (1, 3, 16, 224, 224), 8_320_048, (1, 3, 14, 224, 224),
             "torchvision s3d; its AvgPool3d((2, 7, 7)) needs at least 14 frames of 209x209, so 16 of 224x224"),
    ZooEntry("fcn_resnet50", "segmentation", _lazy("planner.models.segmentation", "fcn_resnet50"), (1, 3, 520, 520),
             35_322_218, _SMALL, "torchvision fcn_resnet50 with the aux head (as its published weights); "
             "520x520 is its eval resize; outputs (out, aux)"),
    ZooEntry("deeplabv3_resnet50", "segmentation", _lazy("planner.models.segmentation", "deeplabv3_resnet50"),
             (1, 3, 520, 520), 42_004_074, _SMALL, "torchvision deeplabv3_resnet50 with the aux head (as its "
             "published weights); 520x520 is its eval resize; outputs (out, aux)"),
    ZooEntry("lraspp_mobilenet_v3_large", "segmentation", _lazy("planner.models.segmentation", "lraspp_mobilenet_v3_large"),
             (1, 3, 520, 520), 3_221_538, _SMALL, "torchvision lraspp_mobilenet_v3_large; 520x520 is its eval resize"),
    ZooEntry("transformer", "translation", _lazy("planner.models.transformer", "transformer"), (1, 128, 512), 44_140_544,
             (1, 16, 512), "nn.Transformer base (d_model 512, 8 heads, 6+6 layers, FFN 2048), the body only: "
             "inputs are embedded src and tgt (N, S, 512), no masks; the count excludes embeddings", num_inputs=2),
    ZooEntry("gpt2", "language", _lazy("planner.models.gpt2", "gpt2"), (1, 1024), 124_439_808, (1, 32),
             "GPT-2 small (12 layers, width 768, 12 heads), LM head tied to the token embedding; input: 1024 token "
             "ids, output: logits", vocab=50257),
)}

from planner.models.nas import ENTRIES as _NAS_ENTRIES  # noqa: E402 - needs ZooEntry, defined above

ZOO.update((e.name, e) for e in _NAS_ENTRIES)


def get(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise BadInput(f"unknown model {name!r}; choose one of {', '.join(sorted(ZOO))}") from None


def shape_for(entry: ZooEntry | str, shape: tuple[int, ...] | None = None, batch: int = 1,
              resolution: int | None = None) -> tuple[int, ...]:
    """The shape of each input: `shape` (default: the published one) with its batch set to
    `batch` and, when given, its spatial size (the last two dims of an image or a video, the
    sequence length of the transformer and of GPT-2) set to `resolution`."""
    entry = get(entry) if isinstance(entry, str) else entry
    s = list(entry.input_shape if shape is None else shape)
    if not isinstance(batch, int) or batch < 1:
        raise BadInput(f"batch must be a positive integer, got {batch!r}")
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise BadInput(f"resolution must be a positive integer, got {resolution!r}")
    s[0] = batch
    if resolution is not None:
        if len(s) >= 4:
            s[-2:] = [resolution, resolution]
        else:
            s[1] = resolution
    return tuple(s)


def example_inputs(entry: ZooEntry | str, shape: tuple[int, ...] | None = None, batch: int = 1,
                   resolution: int | None = None) -> tuple[torch.Tensor, ...]:
    """Standard-normal inputs (token ids uniform over the vocabulary for a language model)
    from a fixed seed: the same tensors on every call."""
    entry = get(entry) if isinstance(entry, str) else entry
    s = shape_for(entry, shape, batch, resolution)
    g = torch.Generator().manual_seed(0)
    if entry.vocab is not None:
        return tuple(torch.randint(0, entry.vocab, s, generator=g) for _ in range(entry.num_inputs))
    return tuple(torch.randn(s, generator=g) for _ in range(entry.num_inputs))


def export_onnx(name: str, path: str | os.PathLike, batch: int = 1, resolution: int | None = None,
                shape: tuple[int, ...] | None = None) -> None:
    """Writes model `name` (eval mode) to `path` as one ONNX file through torch's dynamo
    exporter, with static shapes from `example_inputs(name, shape, batch, resolution)`.

    Raises BadInput for an unknown name, a bad batch or resolution, an input size the model
    cannot run at, or an unwritable path."""
    entry = get(name)
    args = example_inputs(entry, shape, batch, resolution)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise BadInput(f"cannot write {os.fspath(path)!r}: {parent!r} is not a writable directory")
    model = entry.build()
    try:
        with torch.no_grad():
            model(*args)
    except (RuntimeError, AssertionError, ValueError) as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise BadInput(f"{name} cannot run on input {tuple(args[0].shape)}: {first}") from None
    export_module(model, args, path)


def export_module(model: nn.Module, args: tuple[torch.Tensor, ...], path: str | os.PathLike) -> None:
    """The export behind `export_onnx`: dynamo, static shapes, one file, eval mode."""
    names = {1: ["input"], 2: ["src", "tgt"]}.get(len(args), [f"input{i}" for i in range(len(args))])
    # The exporter logs that torchvision's ops are missing (nothing here uses them) and
    # warns about its own pytree use: noise on every export.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(model.eval(), args, os.fspath(path), dynamo=True, external_data=False, verbose=False,
                              input_names=names)
    finally:
        registration.setLevel(level)
