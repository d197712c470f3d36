"""Training under a byte budget: planner against torch's activation_memory_budget and full
activation checkpointing, side by side, every peak measured from the allocator.

    python benchmarks/train_budget.py [--models gpt2,resnet50,vit_b_16] [--device cpu|cuda]
                                      [--quick] [--steps 5] [--out results.json]

For each model, one training step (forward, loss, backward; no optimizer) run several ways; the
compiled ones go through aot_autograd with the fx graphs run as they are (no Inductor, so they
differ only in the partition), through the same boxed runner (`frontends.train._compilers`):
- planner: `frontends.train.compile_train` at the named budgets M_R (its least peak), M_H and
  M_P (keep everything), and (without --quick) byte budgets between them;
- torch: `min_cut_rematerialization_partition` with `activation_memory_budget` swept over
  [0, 1] (`activation_memory_budget_solver = "dp"`);
- eager, and eager with full activation checkpointing (`torch.utils.checkpoint`, non-reentrant,
  on each block: GPT-2 and ViT layers, ResNet bottlenecks).
Measured peak: on CPU the allocator's own allocation and free events during the step
(`frontends.train_memory.measured_peak`: torch.profiler with profile_memory, kernels' scratch
included); on CUDA `torch.cuda.max_memory_allocated` above what was allocated before the
step. Parameters and inputs exist before the step and are not counted; gradients are.
"planned" is planner's replay of the graphs it returned (`frontends.train.replay_peak`, with
the measured kernel workspaces). Step time is the median CPU time of the process on CPU (one
torch thread; the machine is shared, so wall time would measure the neighbours), wall time
after a synchronize on CUDA, over `--steps` turns after one warm-up, each turn running every
configuration of the model once. The models are CPU-sized stand-ins (see `cases`). Results:
--out (default benchmarks/results/train_budget.json) with .md and .png beside it.
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
from benchmarks.common import RESULTS, machine  # noqa: E402
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


def peak_of(run: Callable[[], None], model: torch.nn.Module, device: str) -> int:
    """Measured peak bytes of one step above what exists before it (gradients cleared first)."""
    from planner.frontends.train_memory import measured_peak

    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return measured_peak(run)


def eager_point(model, loss, inputs, checkpoint: bool, device: str) -> tuple[dict[str, Any], Callable[[], None]]:
    """Eager, optionally with torch.utils.checkpoint on every block: measured peak and the step."""
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
        with wrapped():
            loss(model, *inputs).backward()
    run()
    return {"checkpoint": checkpoint, "measured": peak_of(run, model, device)}, run


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
        out = fn(list(args)) if boxed else fn(*args)
        out[0].backward()
    return run


def timed(runs: list[Callable[[], None]], model: torch.nn.Module, steps: int, device: str) -> list[float]:
    """Median seconds of each run over `steps` turns, the runs interleaved in each turn, after
    one warm-up: CPU time of this process on CPU (the machine is shared: wall time there
    measures the neighbours), wall time after a synchronize on CUDA."""
    clock = time.perf_counter if device == "cuda" else time.process_time
    times: list[list[float]] = [[] for _ in runs]
    for turn in range(steps + 1):
        for run, ts in zip(runs, times):
            model.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = clock()
            run()
            if device == "cuda":
                torch.cuda.synchronize()
            if turn:
                ts.append(clock() - t0)
    return [statistics.median(ts) for ts in times]


def planner_point(model, loss, inputs, budget: int | str, device: str) -> tuple[dict[str, Any], Callable[[], None]]:
    reports = []

    def backend(gm, example_inputs):
        c = compile_train(gm, example_inputs, {"memory_budget": budget, "compiler": "eager"})
        reports.append(c.report)
        return c
    run = capture(model, loss, inputs, backend)
    r = reports[0]
    measured = peak_of(run, model, device)
    return {"asked": budget, "budget": r.budget, "planned": r.replayed_peak, "measured": measured,
            "measured_over_budget": measured / r.budget, "least_peak": r.least_peak,
            "keep_all_peak": r.keep_all_peak, "source": r.source, "recomputed": len(r.recomputed),
            "offloaded": len(r.offloaded), "solver": r.solver.name, "status": r.solver.status, "gap": r.solver.gap,
            "planning_s": r.planning_s}, run


def torch_point(model, loss, inputs, ratio: float, device: str) -> tuple[dict[str, Any], Callable[[], None]]:
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch import config
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    from planner.frontends.train import _WORKSPACES, _compilers
    from planner.frontends.train_memory import annotate_workspaces

    peaks, planning = [], []

    def partition(joint, inputs_, **kw):
        t0 = time.perf_counter()
        fw, bw = min_cut_rematerialization_partition(joint, inputs_, **kw)
        planning.append(time.perf_counter() - t0)
        annotate_workspaces(bw, annotate_workspaces(fw, _WORKSPACES))  # planner's replay, scratch included,
        # from the calibrations planner's own compiles made in this process (one run per distinct call)
        peaks.append(replay_peak(fw, bw))
        return fw, bw
    fw_compiler, bw_compiler = _compilers("eager")
    backend = aot_autograd(fw_compiler=fw_compiler, bw_compiler=bw_compiler, partition_fn=partition)
    try:
        with config.patch(activation_memory_budget=ratio, activation_memory_budget_solver="dp"):
            run = capture(model, loss, inputs, backend)
    except RuntimeError as e:  # recorded, not hidden: torch's partition can fail on a graph
        return {"ratio": ratio, "error": str(e).splitlines()[0][:300]}, None
    return {"ratio": ratio, "planned": peaks[0], "measured": peak_of(run, model, device),
            "planning_s": planning[0]}, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt2,resnet50,vit_b_16")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true",
                    help="named budgets only (M_R, M_H, M_P) and torch ratios 0, 0.5, 1")
    ap.add_argument("--steps", type=int, default=5, help="timed turns (each runs every configuration once)")
    ap.add_argument("--out", type=Path, default=RESULTS / "train_budget.json")
    ap.add_argument("--merge", action="store_true", help="keep the other models' results already in --out")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    if args.merge and args.out.exists():
        out = json.loads(args.out.read_text())["results"]
    for name in args.models.split(","):
        out[name] = measure(name, args.steps, args.quick, args.device)
        payload = {"note": NOTE.format(device=args.device), "device": args.device, "quick": args.quick,
                   "results": out}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine(), **payload}, indent=1))
        plot(out, args.out.with_suffix(".png"))
        args.out.with_suffix(".md").write_text(table(out))
        print(table({name: out[name]}))
        print(f"wrote {args.out}")


NOTE = ("device {device}; one torch thread on CPU, step time = CPU seconds of the process there; measured peaks "
        "from the allocator's events (CPU) or max_memory_allocated (CUDA), gradients included, parameters and "
        "inputs not; planned = replay of the returned fx graphs with measured kernel workspaces; fx graphs run "
        "eagerly; CPU-sized models (see benchmarks/train_budget.py cases)")


def measure(name: str, steps: int, quick: bool, device: str) -> dict[str, Any]:
    """Every configuration of one model: peaks and planning first, then the steps timed in turns."""
    build, loss, make_inputs = cases()[name]
    model = build().to(device)
    inputs = tuple(t.to(device) for t in make_inputs())
    plain = [eager_point(model, loss, inputs, c, device) for c in (False, True)]
    ratios = (0.0, 0.5, 1.0) if quick else (0.0, 0.25, 0.5, 0.75, 1.0)
    theirs = [torch_point(model, loss, inputs, r, device) for r in ratios]
    ours = [planner_point(model, loss, inputs, b, device) for b in ("M_R", "M_H", "M_P")]
    if not quick:
        least, full = ours[0][0]["budget"], ours[2][0]["budget"]
        ours += [planner_point(model, loss, inputs, least + (full - least) * k // 4, device) for k in (1, 3)]
    ran = [(row, run) for row, run in ours + theirs + plain if run is not None]
    for (row, _), s in zip(ran, timed([run for _, run in ran], model, steps, device)):
        row["step_s"] = s
    ours, theirs, plain = ([row for row, _ in rows] for rows in (ours, theirs, plain))
    ours.sort(key=lambda r: r["budget"])
    for row in ours:
        print(f"{name} planner {row['asked']!s:>10} budget {row['budget']:>12,} planned {row['planned']:>12,} "
              f"measured {row['measured']:>12,} ({row['measured_over_budget']:.3f}) step {row['step_s']*1e3:8.1f} ms"
              f" rec {row['recomputed']:3d} off {row['offloaded']:3d} {row['status']} plan {row['planning_s']:.2f} s")
    for row in theirs:
        print(f"{name} torch ratio {row['ratio']:.2f} " + (f"failed: {row['error']}" if "error" in row else
              f"planned {row['planned']:>12,} measured {row['measured']:>12,} step {row['step_s']*1e3:8.1f} ms"))
    for row in plain:
        print(f"{name} eager{' checkpointed' if row['checkpoint'] else ''} measured {row['measured']:>12,} "
              f"step {row['step_s']*1e3:8.1f} ms")
    return {"planner": ours, "torch_activation_memory_budget": theirs, "eager": plain}


def table(out: dict[str, Any]) -> str:
    """The results as markdown: per model, planner's budgets (planned, measured, measured/budget),
    then the least peaks side by side (planner's M_R, torch's sweep best, full checkpointing)."""
    lines = []
    for name, res in out.items():
        lines += [f"### {name}", "",
                  "| method | setting | budget MB | planned MB | measured MB | measured / budget | step ms | "
                  "recomputed / offloaded | planning s |",
                  "|---|---|---:|---:|---:|---:|---:|---|---:|"]
        for r in res["planner"]:
            gap = f", gap {r['gap']:.2f}" if r.get("gap") else ""
            lines.append(f"| planner | {r['asked']} | {r['budget'] / 1e6:.2f} | {r['planned'] / 1e6:.2f} | "
                         f"{r['measured'] / 1e6:.2f} | {r['measured_over_budget']:.3f} | {r['step_s'] * 1e3:.0f} | "
                         f"{r['recomputed']} / {r['offloaded']} ({r['status']}{gap}) | {r['planning_s']:.1f} |")
        for r in res["torch_activation_memory_budget"]:
            if "error" in r:
                lines.append(f"| torch dp | activation_memory_budget {r['ratio']:.2f} | | failed | | | | "
                             f"{r['error'][:80]} | |")
                continue
            lines.append(f"| torch dp | activation_memory_budget {r['ratio']:.2f} | | {r['planned'] / 1e6:.2f} | "
                         f"{r['measured'] / 1e6:.2f} | | {r['step_s'] * 1e3:.0f} | | {r['planning_s']:.1f} |")
        for r in res["eager"]:
            lines.append(f"| eager | {'full checkpointing' if r['checkpoint'] else 'no checkpointing'} | | | "
                         f"{r['measured'] / 1e6:.2f} | | {r['step_s'] * 1e3:.0f} | | |")
        least = next(r for r in res["planner"] if r["asked"] == "M_R")
        sweep = min((r for r in res["torch_activation_memory_budget"] if "measured" in r),
                    key=lambda r: r["measured"], default=None)
        ckpt = next(r for r in res["eager"] if r["checkpoint"])
        lines += ["", "| least peak, measured | MB |", "|---|---:|",
                  f"| planner M_R | {least['measured'] / 1e6:.2f} |"]
        if sweep is not None:
            lines.append(f"| torch activation_memory_budget sweep, best ({sweep['ratio']:.2f}) | "
                         f"{sweep['measured'] / 1e6:.2f} |")
        lines += [f"| full activation checkpointing | {ckpt['measured'] / 1e6:.2f} |", ""]
    return "\n".join(lines) + "\n"


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(out), figsize=(5 * len(out), 4), squeeze=False)
    for ax, (name, res) in zip(axes[0], out.items()):
        for label, rows, mark in (("planner (byte budget)", res["planner"], "o-"),
                                  ("torch activation_memory_budget (dp)", res["torch_activation_memory_budget"],
                                   "s--")):
            rows = sorted((r for r in rows if "measured" in r), key=lambda r: r["measured"])
            ax.plot([r["measured"] / 2**20 for r in rows], [r["step_s"] * 1e3 for r in rows], mark, label=label)
        for r in res["eager"]:
            ax.plot([r["measured"] / 2**20], [r["step_s"] * 1e3], "k^" if r["checkpoint"] else "kv",
                    label="eager, full checkpointing" if r["checkpoint"] else "eager")
        ax.set_title(f"{name} (measured peak)")
        ax.set_xlabel("peak MiB")
        ax.set_ylabel("step ms")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
