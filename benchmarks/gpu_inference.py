"""Inference memory and latency, side by side in one run: eager PyTorch, torch.compile with
inductor, and the planner backend at M_P (no spills) and at M_H (spills), for ResNet-50,
DenseNet-121, ViT-B/16 and GPT-2 small.

    python benchmarks/gpu_inference.py                 # CUDA if present, else the CPU sizes
    python benchmarks/gpu_inference.py --device cpu --no-inductor

What "peak" means (bytes above what was allocated before the model was compiled: its
weights and inputs):
- CUDA: `torch.cuda.max_memory_allocated()` over the timed calls, after a warm-up call and
  `reset_peak_memory_stats()`; whatever stays allocated (the planner's arena and spill
  buffers, inductor's workspaces) is included because it is still allocated.
- CPU: there is no allocator high-water mark, so the profiler's allocator events give the
  peak bytes held during one call; the planner's arena and host buffers, allocated once at
  compile time, are added. Kernel workspaces (oneDNN convolutions) show up in both.
Latency is the median wall time of the timed calls (CUDA: synchronised). The planner runs
one Python step per op, so on small inputs its latency is dominated by that overhead.
Results: benchmarks/results/gpu_inference.json (`benchmarks.common.write`).
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
from planner.frontends import dynamo  # noqa: E402

# (model, batch, input shape override): sizes that matter on a GPU, and CPU sizes that finish on 2 cores.
CUDA_CASES = [("resnet50", 64, None), ("densenet121", 64, None), ("vit_b_16", 64, None), ("gpt2", 8, (8, 1024))]
CPU_CASES = [("resnet50", 4, (4, 3, 128, 128)), ("densenet121", 4, (4, 3, 128, 128)), ("vit_b_16", 1, None),
             ("gpt2", 1, (1, 256))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-inductor", action="store_true", help="skip torch.compile's default backend")
    ap.add_argument("--models", nargs="*", help="a subset of the model names")
    ap.add_argument("--solver", default="auto", help="planner solver (default: auto)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cases = CUDA_CASES if device.type == "cuda" else CPU_CASES
    rows = []
    for name, batch, shape in cases:
        if args.models and name not in args.models:
            continue
        rows.append(bench(name, batch, shape, device, args))
        print(json.dumps(rows[-1]), flush=True)
    note = None if device.type == "cuda" else (
        "CPU run: no GPU on this machine. Peaks are the CPU allocator's bytes held during one call (profiler events)"
        " plus, for the planner, its arena and spill buffers; small inputs, so per-op Python overhead dominates the"
        " planner's latency. GPU figures need a CUDA machine.")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    path = write("gpu_inference", {"device": device_name, "torch": torch.__version__, "note": note,
                                   "threads": torch.get_num_threads(), "rows": rows})
    print(f"wrote {path}")


def bench(name: str, batch: int, shape: tuple[int, ...] | None, device: torch.device,
          args: argparse.Namespace) -> dict[str, Any]:
    entry = models.get(name)
    model = entry.build().to(device)
    inputs = tuple(x.to(device) for x in models.example_inputs(entry, shape=shape, batch=batch))
    row: dict[str, Any] = {"model": name, "input": list(inputs[0].shape)}
    with torch.no_grad():
        want = model(*inputs)
        row["eager"] = measure(lambda: model, inputs, device, args.repeats)
        if not args.no_inductor:
            row["inductor"] = measure(lambda: torch.compile(model, fullgraph=True, dynamic=False), inputs, device,
                                      args.repeats)
        for budget in ("M_P", "M_H"):
            options = {"memory_budget": budget, "solver": args.solver, "time_limit": 60}
            result = measure(lambda: torch.compile(model, backend="planner", options=options, fullgraph=True,
                                                   dynamic=False), inputs, device, args.repeats, check=want)
            g = dynamo.compiled_graphs()[-1]
            p, st = g.plan, g.executor.stats
            if device.type != "cuda":
                result["peak_bytes"] += st.arena_bytes + st.host_bytes  # allocated at compile time
            result.update(budget_bytes=p.target.capacity, arena_bytes=st.arena_bytes, m_p=p.extra["budgets"]["M_P"],
                          m_r=p.extra["budgets"]["M_R"], noncompulsory_bytes=p.metrics.noncompulsory_bytes,
                          transient_peak_bytes=st.transient_peak_bytes, output_bytes=st.output_bytes,
                          host_bytes=st.host_bytes, solver=p.solver.name, status=p.solver.status,
                          planning_seconds=round(g.planning_seconds, 3), lowering_seconds=round(g.lowering_seconds, 3),
                          ops=len(g.lowered.graph.ops), copied_ops=len(st.copied_ops))
            row[f"planner_{budget}"] = result
    return row


def measure(make: Callable[[], Callable[..., Any]], inputs: tuple, device: torch.device, repeats: int,
            check: Any = None) -> dict[str, Any]:
    """Compiles (make), warms up, then peak bytes above the pre-compile allocation and median latency."""
    torch._dynamo.reset()
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) if cuda else 0
    t0 = time.perf_counter()
    fn = make()
    out = fn(*inputs)
    first = time.perf_counter() - t0
    if check is not None:
        for g, w in zip(_flat(out), _flat(check)):
            torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-3)
    del out
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*inputs)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
        del out
    peak = torch.cuda.max_memory_allocated(device) - before if cuda else _cpu_peak(lambda: fn(*inputs))
    return {"peak_bytes": peak, "latency_s": round(statistics.median(times), 5), "first_call_s": round(first, 2)}


def _cpu_peak(call: Callable[[], Any]) -> int:
    """Peak bytes the CPU allocator holds during `call`, above what it held before (profiler events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    return max([0] + [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"])


def _flat(v: Any) -> list:
    return list(v) if isinstance(v, (tuple, list)) else [v]


if __name__ == "__main__":
    main()
