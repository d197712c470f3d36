"""Training under a byte budget: planner against torch's activation_memory_budget, side by side.

    python benchmarks/train_budget.py [--models gpt2,resnet50,vit_b_16] [--steps 5]

For each model, one training step (loss, backward) run four ways; the compiled ones go through
aot_autograd with the fx graphs run as they are (no Inductor, so they differ only in the partition):
- planner: `frontends.train.compile_train` at budgets between its least peak and keeping all;
- torch: `min_cut_rematerialization_partition` with `activation_memory_budget` swept over
  [0, 1] (`activation_memory_budget_solver = "dp"`);
- eager, and eager with full activation checkpointing (`torch.utils.checkpoint`, non-reentrant,
  on each block: GPT-2 and ViT layers, ResNet bottlenecks).
Peak bytes of the compiled runs are the replay of the forward and backward graphs each
partition returned (`frontends.train.replay_peak`, the same count for both); the eager runs'
are the storages live between ops, tracked by a dispatch mode (`eager_peak`), which counts the
same things (activations, saved and recomputed values, gradients; not parameters or inputs).
This machine has no GPU: these are planned / tracked bytes, not `torch.cuda.max_memory_allocated`.
Step time is the median CPU time of the process (one torch thread; the machine is shared, so wall
time would measure the neighbours) over `--steps` turns after one warm-up, each turn running every
configuration of the model once. The models are CPU-sized
stand-ins (see `cases`). Results: benchmarks/results/train_budget.json, .png and .md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from planner import models  # noqa: E402
from benchmarks.common import RESULTS, write  # noqa: E402
from planner.frontends.train import compile_train, replay_peak  # noqa: E402
from planner.models.gpt2 import gpt2  # noqa: E402


def cases() -> dict[str, tuple[Callable[[], torch.nn.Module], Callable, Callable[[], tuple]]]:
    """name -> (build, loss(model, *inputs), inputs): CPU-sized stand-ins of the issue's models.

    gpt2: 4 layers, width 128, 4 heads, vocabulary 2048, batch 4 x 128 tokens (GPT-2 small is
    12 x 768). resnet50: the zoo model, batch 8 at 96 x 96. vit_b_16: ViT-B/16's geometry
    (width 768, 12 heads, MLP 3072, 16 x 16 patches) with 4 of its 12 layers, batch 8 at
    112 x 112 (50 tokens).
    """
    def lm_loss(m, idx):
        return torch.nn.functional.cross_entropy(m(idx).flatten(0, 1), idx.flatten())

    def image_loss(m, x):
        return m(x).logsumexp(dim=1).mean()

    g = torch.Generator().manual_seed(0)
    return {
        "gpt2": (lambda: gpt2(layers=4, heads=4, width=128, positions=128, vocab=2048).train(), lm_loss,
                 lambda: (torch.randint(0, 2048, (4, 128), generator=g),)),
        "resnet50": (lambda: models.get("resnet50").build().train(), image_loss,
                     lambda: (torch.randn(8, 3, 96, 96, generator=g),)),
        "vit_b_16": (lambda: _vit(), image_loss, lambda: (torch.randn(8, 3, 112, 112, generator=g),)),
    }


def _vit() -> torch.nn.Module:
    from planner.models.vit import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VisionTransformer(image_size=112, layers=4).train()


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks that full activation checkpointing wraps."""
    if hasattr(model, "h"):  # GPT-2
        return list(model.h)
    if hasattr(model, "encoder"):  # ViT
        return list(model.encoder.layers)
    return [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]  # ResNet


def eager_point(model, loss, inputs, checkpoint: bool) -> tuple[dict[str, Any], Callable[[], None]]:
    """Eager, optionally with torch.utils.checkpoint on every block: peak tracked bytes and the step."""
    import contextlib
    import functools

    from torch.utils.checkpoint import checkpoint as ckpt

    @contextlib.contextmanager
    def wrapped():
        saved = {b: b.forward for b in blocks(model)} if checkpoint else {}
        for b, f in saved.items():
            b.forward = functools.partial(ckpt, f, use_reentrant=False)
        try:
            yield
        finally:
            for b in saved:
                del b.forward  # back to the class's method

    def run() -> None:
        model.zero_grad(set_to_none=True)
        with wrapped():
            loss(model, *inputs).backward()
    run()
    model.zero_grad(set_to_none=True)
    return {"checkpoint": checkpoint, "peak": eager_peak(run, model, inputs)}, run


def eager_peak(run: Callable[[], None], model: torch.nn.Module, inputs: tuple) -> int:
    """The most bytes of storages created by the step (not parameters or inputs) alive at once,
    sampled after every op, forward and backward (a dispatch mode sees both)."""
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode

    before = {StorageWeakRef(t.untyped_storage()).cdata for t in (*model.parameters(), *model.buffers(), *inputs)}

    class Track(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, tuple[StorageWeakRef, int]] = {}
            self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
            out = func(*args, **(kwargs or {}))
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
                    ref = StorageWeakRef(t.untyped_storage())
                    old = self.live.get(ref.cdata)
                    if ref.cdata not in before and (old is None or old[0].expired()):
                        self.live[ref.cdata] = (ref, t.untyped_storage().nbytes())
            self.peak = max(self.peak, sum(n for _, n in self.live.values()))
            return out

    with Track() as track:
        run()
    return track.peak


def capture(model: torch.nn.Module, loss: Callable, inputs: tuple, backend: Callable) -> Callable[[], None]:
    """Compiles one training step with `backend` (running it once) and returns a closure that
    runs the compiled graphs again on the same arguments, without dynamo in the way (so the
    steps of many configurations can be timed in turns)."""
    seen: dict[str, Any] = {}

    def wrapper(gm, example_inputs):
        compiled = backend(gm, example_inputs)

        def record(*args):
            boxed = len(args) == 1 and isinstance(args[0], list)  # a boxed call empties its list
            seen.update(fn=compiled, boxed=boxed, args=list(args[0]) if boxed else list(args))
            return compiled(*args)
        record._boxed_call = getattr(compiled, "_boxed_call", False)
        return record

    torch._dynamo.reset()
    step = torch.compile(lambda *a: loss(model, *a), backend=wrapper, fullgraph=True, dynamic=False)
    model.zero_grad(set_to_none=True)
    step(*inputs).backward()
    fn, args, boxed = seen["fn"], seen["args"], seen["boxed"]

    def run() -> None:
        model.zero_grad(set_to_none=True)
        out = fn(list(args)) if boxed else fn(*args)
        out[0].backward()
    return run


def timed(runs: list[Callable[[], None]], steps: int) -> list[float]:
    """Median CPU seconds of this process for each run over `steps` turns, the runs interleaved in
    each turn, after one warm-up (the machine is shared: wall time there measures the neighbours)."""
    times: list[list[float]] = [[] for _ in runs]
    for turn in range(steps + 1):
        for run, ts in zip(runs, times):
            t0 = time.process_time()
            run()
            if turn:
                ts.append(time.process_time() - t0)
    return [statistics.median(ts) for ts in times]


def planner_point(model, loss, inputs, budget: int) -> tuple[dict[str, Any], Callable[[], None]]:
    reports = []

    def backend(gm, example_inputs):
        c = compile_train(gm, example_inputs, {"memory_budget": budget, "compiler": "eager", "time_limit": 30})
        reports.append(c.report)
        return c
    run = capture(model, loss, inputs, backend)
    r = reports[0]
    return {"budget": budget, "peak": r.replayed_peak, "modelled_peak": r.modelled_peak,
            "recomputed": len(r.recomputed), "offloaded": len(r.offloaded), "solver": r.solver.name,
            "status": r.solver.status, "gap": r.solver.gap, "planning_s": r.planning_s}, run


def torch_point(model, loss, inputs, ratio: float) -> tuple[dict[str, Any], Callable[[], None]]:
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch import config
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    peaks, planning = [], []

    def partition(joint, inputs_, **kw):
        t0 = time.perf_counter()
        fw, bw = min_cut_rematerialization_partition(joint, inputs_, **kw)
        planning.append(time.perf_counter() - t0)
        peaks.append(replay_peak(fw, bw))
        return fw, bw
    eager = lambda gm, _: make_boxed_func(gm.forward)  # noqa: E731
    backend = aot_autograd(fw_compiler=eager, bw_compiler=eager, partition_fn=partition)
    try:
        with config.patch(activation_memory_budget=ratio, activation_memory_budget_solver="dp"):
            run = capture(model, loss, inputs, backend)
    except RuntimeError as e:  # recorded, not hidden: torch's partition can fail on a graph
        return {"ratio": ratio, "error": str(e).splitlines()[0][:300]}, None
    return {"ratio": ratio, "peak": peaks[0], "planning_s": planning[0]}, run


def least_peak(model, loss, inputs) -> int:
    from planner.errors import Infeasible

    try:
        planner_point(model, loss, inputs, 1)
    except Exception as e:  # dynamo wraps the backend's error
        err: BaseException | None = e
        while err is not None and not isinstance(err, Infeasible):
            err = getattr(err, "inner_exception", None) or err.__cause__
        if err is not None:
            return int(err.minimum)
        raise
    raise AssertionError("a 1-byte budget was met")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt2,resnet50,vit_b_16")
    ap.add_argument("--steps", type=int, default=5, help="timed turns (each runs every configuration once)")
    ap.add_argument("--points", type=int, default=5, help="planner budgets between least and full")
    ap.add_argument("--merge", action="store_true", help="keep the other models' results already in the JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    if args.merge and (RESULTS / "train_budget.json").exists():
        out = json.loads((RESULTS / "train_budget.json").read_text())["results"]
    for name in args.models.split(","):
        out[name] = measure(name, args.steps, args.points)
        path = write("train_budget", {"note": NOTE, "results": out})
        plot(out)
        (RESULTS / "train_budget.md").write_text(table(out))
        print(f"wrote {path}")


NOTE = ("CPU (no GPU for this task), one torch thread, step time = CPU seconds of the process; compiled peaks are "
        "replayed planned bytes of the returned fx graphs, eager peaks are storages tracked by a dispatch mode; "
        "fx graphs run eagerly; CPU-sized models (see benchmarks/train_budget.py cases)")


def measure(name: str, steps: int, points: int) -> dict[str, Any]:
    """Every configuration of one model: peaks and planning first, then the steps timed in turns."""
    build, loss, make_inputs = cases()[name]
    model, inputs = build(), make_inputs()
    plain = [eager_point(model, loss, inputs, c) for c in (False, True)]
    theirs = [torch_point(model, loss, inputs, r) for r in (0.0, 0.25, 0.5, 0.75, 1.0)]
    full = planner_point(model, loss, inputs, 2**40)
    least = least_peak(model, loss, inputs)
    budgets = [least + (full[0]["peak"] - least) * k // (points - 1) for k in range(points - 1)]
    ours = [planner_point(model, loss, inputs, b) for b in budgets] + [full]
    ran = [(row, run) for row, run in ours + theirs + plain if run is not None]
    for (row, _), s in zip(ran, timed([run for _, run in ran], steps)):
        row["step_s"] = s
    ours, theirs, plain = ([row for row, _ in rows] for rows in (ours, theirs, plain))
    for row in ours:
        print(f"{name} planner budget {row['budget']:>12,} peak {row['peak']:>12,} step {row['step_s']*1e3:8.1f} ms"
              f" rec {row['recomputed']:3d} off {row['offloaded']:3d} {row['status']} plan {row['planning_s']:.2f} s")
    for row in theirs:
        print(f"{name} torch ratio {row['ratio']:.2f} " + (f"failed: {row['error']}" if "error" in row else
              f"peak {row['peak']:>12,} step {row['step_s']*1e3:8.1f} ms plan {row['planning_s']:.2f} s"))
    for row in plain:
        print(f"{name} eager{' checkpointed' if row['checkpoint'] else ''} peak {row['peak']:>12,} "
              f"step {row['step_s']*1e3:8.1f} ms")
    return {"planner": ours, "torch_activation_memory_budget": theirs, "eager": plain}


def table(out: dict[str, Any]) -> str:
    """The results as a markdown table, one row per point."""
    lines = ["| model | method | setting | peak MB | step ms | recomputed / offloaded | planning s |",
             "|---|---|---|---:|---:|---|---:|"]
    for name, res in out.items():
        for r in res["planner"]:
            budget = "keep all (no budget)" if r["budget"] >= 2**40 else f"budget {r['budget'] / 1e6:.2f} MB"
            lines.append(f"| {name} | planner | {budget} | {r['peak'] / 1e6:.2f} | {r['step_s'] * 1e3:.0f} | "
                         f"{r['recomputed']} / {r['offloaded']} ({r['status']}) | {r['planning_s']:.2f} |")
        for r in res["torch_activation_memory_budget"]:
            if "error" in r:
                lines.append(f"| {name} | torch dp | activation_memory_budget {r['ratio']:.2f} | failed | | "
                             f"{r['error'][:80]} | |")
                continue
            lines.append(f"| {name} | torch dp | activation_memory_budget {r['ratio']:.2f} | {r['peak'] / 1e6:.2f} | "
                         f"{r['step_s'] * 1e3:.0f} | | {r['planning_s']:.2f} |")
        for r in res["eager"]:
            lines.append(f"| {name} | eager | {'full checkpointing' if r['checkpoint'] else 'no checkpointing'} | "
                         f"{r['peak'] / 1e6:.2f} | {r['step_s'] * 1e3:.0f} | | |")
    return "\n".join(lines) + "\n"


def plot(out: dict[str, Any]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(out), figsize=(5 * len(out), 4), squeeze=False)
    for ax, (name, res) in zip(axes[0], out.items()):
        for label, rows, mark in (("planner (byte budget)", res["planner"], "o-"),
                                  ("torch activation_memory_budget (dp)", res["torch_activation_memory_budget"], "s--")):
            rows = sorted((r for r in rows if "peak" in r), key=lambda r: r["peak"])
            ax.plot([r["peak"] / 2**20 for r in rows], [r["step_s"] * 1e3 for r in rows], mark, label=label)
        for r in res["eager"]:
            ax.plot([r["peak"] / 2**20], [r["step_s"] * 1e3], "k^" if r["checkpoint"] else "kv",
                    label="eager, full checkpointing" if r["checkpoint"] else "eager")
        ax.set_title(f"{name} (CPU; replayed / tracked peak)")
        ax.set_xlabel("peak MiB")
        ax.set_ylabel("step ms")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "train_budget.png", dpi=120)


if __name__ == "__main__":
    main()
