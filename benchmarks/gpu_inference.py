"""Inference memory and latency, side by side in one run: eager PyTorch, torch.compile with
inductor, and the planner backend at its default budget (M_P), for ResNet-50, ConvNeXt-T,
EfficientNet-B0, BERT-base and GPT-2 small.

    python benchmarks/gpu_inference.py                      # CUDA if present, else the CPU
    python benchmarks/gpu_inference.py --device cpu --quick --no-inductor --out cpu.json

Per model it prints a markdown row: eager's peak, the planner's planned peak (arena +
outputs + the transient of an op with no out= form, replayed from the plan), the
planner's measured peak, measured/eager, measured/planned, and latency against eager and
inductor. What "peak" means (bytes above what was allocated before compiling: weights,
inputs):
- CUDA: `torch.cuda.max_memory_allocated()` over one call after a warm-up call and
  `reset_peak_memory_stats()`; the planner's arena and spill buffers, allocated at
  compile time, count because they are still allocated.
- CPU: there is no allocator high-water mark, so the profiler's allocator events
  (profile_memory) give the peak bytes allocated during one call; what the compiled
  function holds between calls (the planner's arena and host buffers) is added.
Kernel workspaces (oneDNN's convolution scratch on the CPU, cuBLAS/cuDNN's on CUDA) are
in every measured peak and in no planned one: measured - planned is theirs.
Latency is the median wall time of the timed calls (CUDA: synchronised). The planner runs
one Python step per op, so on small inputs its latency carries that overhead.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner import models  # noqa: E402
from benchmarks.common import write  # noqa: E402
from benchmarks.inference_models import BUILDERS  # noqa: E402
from planner.frontends import dynamo  # noqa: E402

# (model, input shape): the sizes that matter on a GPU, the CPU's, and --quick's (a few minutes on 2 cores).
CASES = {
    "cuda": [("resnet50", (32, 3, 224, 224)), ("convnext_t", (32, 3, 224, 224)), ("efficientnet_b0", (32, 3, 224, 224)),
             ("bert_base", (8, 384)), ("gpt2", (8, 1024))],
    "cpu": [("resnet50", (2, 3, 224, 224)), ("convnext_t", (2, 3, 224, 224)), ("efficientnet_b0", (2, 3, 224, 224)),
            ("bert_base", (1, 384)), ("gpt2", (1, 512))],
    "quick": [("resnet50", (1, 3, 128, 128)), ("convnext_t", (1, 3, 128, 128)), ("efficientnet_b0", (1, 3, 128, 128)),
              ("bert_base", (1, 128)), ("gpt2", (1, 256))],
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small inputs and 3 timed calls (CPU: a few minutes)")
    ap.add_argument("--repeats", type=int, help="timed calls per variant (default 10, --quick 3)")
    ap.add_argument("--no-inductor", action="store_true", help="skip torch.compile's default backend")
    ap.add_argument("--models", nargs="*", help="a subset of the model names")
    ap.add_argument("--budget", default="M_P", help="the planner's memory_budget (default M_P, its default)")
    ap.add_argument("--out", type=Path, help="JSON results path (default benchmarks/results/gpu_inference.json)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    repeats = args.repeats or (3 if args.quick else 10)
    cases = CASES["quick" if args.quick else device.type]
    rows = []
    for name, shape in cases:
        if args.models and name not in args.models:
            continue
        rows.append(bench(name, shape, device, repeats, args))
        print(json.dumps(rows[-1]), flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    payload = {"device": device_name, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "budget": args.budget, "quick": args.quick, "repeats": repeats, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1))
        path = args.out
    else:
        path = write("gpu_inference", payload)
    print(f"\n{device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads, planner budget "
          f"{args.budget}\n\n{table(rows)}\nwrote {path}")


def build(name: str, shape: tuple[int, ...], device: torch.device) -> tuple[torch.nn.Module, tuple]:
    """The model (seeded random weights, eval mode) and its inputs at `shape`."""
    torch.manual_seed(0)
    if name in BUILDERS:
        model = BUILDERS[name]()
        x = torch.randint(0, 30522, shape) if name == "bert_base" else torch.randn(shape)
        inputs: tuple = (x,)
    else:
        entry = models.get(name)
        model = entry.build()
        inputs = tuple(models.example_inputs(entry, shape=shape))
    return model.eval().to(device), tuple(x.to(device) for x in inputs)


def bench(name: str, shape: tuple[int, ...], device: torch.device, repeats: int,
          args: argparse.Namespace) -> dict[str, Any]:
    model, inputs = build(name, shape, device)
    row: dict[str, Any] = {"model": name, "input": list(shape)}
    with torch.no_grad():
        want = model(*inputs)
        row["eager"] = measure(lambda: model, inputs, device, repeats)
        if not args.no_inductor:
            row["inductor"] = measure(lambda: torch.compile(model, fullgraph=True, dynamic=False), inputs, device,
                                      repeats)
        options = {"memory_budget": args.budget}
        before = len(dynamo.compiled_graphs())
        held: list[int] = []

        def compiled() -> Callable[..., Any]:
            fn = torch.compile(model, backend="planner", options=options, fullgraph=True, dynamic=False)
            return fn
        result = measure(compiled, inputs, device, repeats, check=want,
                         held=lambda: held[0] if held else 0,
                         after_first=lambda: held.append(_held(dynamo.compiled_graphs()[before:])))
        graphs = dynamo.compiled_graphs()[before:]
        g = graphs[-1]
        s = g.summary()
        result.update(graphs=len(graphs), planned_peak_bytes=sum(x.planned_peak_bytes for x in graphs),
                      arena_bytes=s["arena_bytes"], transient_bytes=s["transient_bytes"],
                      output_bytes=s["output_bytes"], host_bytes=g.executor.stats.host_bytes,
                      measured_transient_bytes=g.executor.stats.transient_peak_bytes,
                      moved_bytes=s["moved_bytes"], budgets=s["budgets"], solver=s["solver"], status=s["status"],
                      planning_seconds=s["planning_seconds"], lowering_seconds=s["lowering_seconds"], ops=s["ops"],
                      copied_ops=len(g.executor.stats.copied_ops))
        row["planner"] = result
    return row


def _held(graphs: list) -> int:
    """Bytes the planned graphs keep allocated between calls: their arenas (unless a run
    released one, which the next call then allocates in the profiled window) and host buffers."""
    arenas = {id(g.executor.arena): g.executor.arena.untyped_storage().nbytes() for g in graphs}
    return sum(arenas.values()) + sum(g.executor.stats.host_bytes for g in graphs)


def measure(make: Callable[[], Callable[..., Any]], inputs: tuple, device: torch.device, repeats: int,
            check: Any = None, held: Callable[[], int] = lambda: 0,
            after_first: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Compiles (make), calls once (checked against `check`), then the peak bytes of one
    call above what was allocated before compiling, and the median latency."""
    torch._dynamo.reset()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device) if cuda else 0
    t0 = time.perf_counter()
    fn = make()
    out = fn(*inputs)
    first = time.perf_counter() - t0
    after_first()
    if check is not None:
        for g, w in zip(_flat(out), _flat(check)):
            torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-3)
    del out
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*inputs)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
        del out
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        out = fn(*inputs)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
    else:
        peak = cpu_peak(lambda: fn(*inputs)) + held()
    return {"peak_bytes": peak, "latency_s": round(statistics.median(times), 5), "first_call_s": round(first, 2)}


def cpu_peak(call: Callable[[], Any]) -> int:
    """Peak bytes the CPU allocator held during `call` above what it held before (profiler events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    return max([0] + [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"])


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the run: one line per model."""
    mb = (lambda b: f"{b / 2**20:.1f}")
    lines = ["| model | input | eager peak (MiB) | planned (MiB) = arena + outputs/transient | measured (MiB) | "
             "measured / eager | measured / planned | eager ms | planner / eager | inductor / eager | planning s |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        e, p = r["eager"], r["planner"]
        ind = r.get("inductor")
        lines.append(
            f"| {r['model']} | {'x'.join(map(str, r['input']))} | {mb(e['peak_bytes'])} | "
            f"{mb(p['planned_peak_bytes'])} = {mb(p['arena_bytes'])} + {mb(p['planned_peak_bytes'] - p['arena_bytes'])}"
            f" | {mb(p['peak_bytes'])} | {p['peak_bytes'] / e['peak_bytes']:.2f} | "
            f"{p['peak_bytes'] / p['planned_peak_bytes']:.2f} | {1e3 * e['latency_s']:.1f} | "
            f"{p['latency_s'] / e['latency_s']:.2f} | "
            f"{'-' if ind is None else format(ind['latency_s'] / e['latency_s'], '.2f')} | "
            f"{p['planning_seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def _flat(v: Any) -> list:
    return list(v) if isinstance(v, (tuple, list)) else [v]


if __name__ == "__main__":
    main()
