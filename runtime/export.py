"""A plan in the viewers people already use (CONVENTIONS, "Pictures and existing viewers").

- `chrome_trace`: Chrome / Perfetto trace JSON (ui.perfetto.dev, chrome://tracing). Time is
  the step index (1 us per step). Process "fast memory" has one track per offset, sorted by
  address, with one slice per residency: two residencies at one offset never overlap in
  time, so the tracks read as an allocation map. Process "engine" has a compute track and a
  DMA track (loads and stores). A counter track gives the live bytes after each step.
- `memory_snapshot`: the dict `torch.cuda.memory._snapshot()` returns, which PyTorch's
  memory viewer (pytorch.org/memory_viz) draws: the arena as one segment at address 0 and an
  alloc / free_completed pair per residency in `device_traces`. Pickle it with protocol 4.
- `annotate_onnx`: a copy of the ONNX model whose nodes carry `pkg.planner.*` metadata
  (step, offsets, spilled) that Netron shows in its node panel.

All three read residencies from the simulator's replay, so they show what the plan does.
"""
from __future__ import annotations

from typing import Any

from planner.errors import BadInput
from planner.plan import Plan
from planner.runtime.simulator import Report, simulate

__all__ = ["chrome_trace", "memory_snapshot", "annotate_onnx"]


def _replay(plan: Plan) -> Report:
    return simulate(plan, check_metrics=plan.metrics is not None)


def chrome_trace(plan: Plan) -> dict[str, Any]:
    """The plan as a Chrome trace-event JSON object (`{"traceEvents": [...]}`)."""
    report = _replay(plan)
    memory, engine = 1, 2
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": memory, "name": "process_name", "args": {"name": f"fast memory ({plan.target.name})"}},
        {"ph": "M", "pid": engine, "name": "process_name", "args": {"name": "engine"}},
        {"ph": "M", "pid": engine, "tid": 1, "name": "thread_name", "args": {"name": "compute"}},
        {"ph": "M", "pid": engine, "tid": 2, "name": "thread_name", "args": {"name": "DMA"}},
    ]
    for offset in sorted({r.offset for r in report.residencies}):
        tid = offset + 1  # tid 0 is special in some viewers
        events.append({"ph": "M", "pid": memory, "tid": tid, "name": "thread_name", "args": {"name": f"@{offset}"}})
        events.append({"ph": "M", "pid": memory, "tid": tid, "name": "thread_sort_index",
                       "args": {"sort_index": offset}})
    for r in report.residencies:
        events.append({"ph": "X", "pid": memory, "tid": r.offset + 1, "name": r.tensor, "cat": r.arrived,
                       "ts": r.start, "dur": max(r.end - r.start, 1),
                       "args": {"offset": r.offset, "nbytes": r.nbytes, "arrived": r.arrived, "stored": r.stored}})
    computed: set[str] = set()
    for i, s in enumerate(plan.steps):
        if s.kind == "compute":
            again = s.op in computed
            computed.add(s.op)
            events.append({"ph": "X", "pid": engine, "tid": 1, "name": s.op, "ts": i, "dur": 1,
                           "cat": "recompute" if again else "compute", "args": {"offsets": dict(s.offsets or {})}})
        elif s.kind in ("load", "store"):
            events.append({"ph": "X", "pid": engine, "tid": 2, "name": f"{s.kind} {s.tensor}", "ts": i, "dur": 1,
                           "cat": s.kind})
    for i, live in enumerate(report.live_bytes):
        events.append({"ph": "C", "pid": memory, "name": "live bytes", "ts": i,
                       "args": {"live": live, "capacity": plan.target.capacity}})
    m = report.metrics
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "metadata": {"model": plan.model, "capacity": plan.target.capacity, "solver": plan.solver.name,
                         "status": plan.solver.status, "traffic_bytes": m.traffic_bytes,
                         "noncompulsory_bytes": m.noncompulsory_bytes, "time unit": "1 us = 1 plan step"}}


def memory_snapshot(plan: Plan) -> dict[str, Any]:
    """The plan as a PyTorch memory snapshot (plain ints and strs, pickles with protocol 4)."""
    report = _replay(plan)
    cap = plan.target.capacity
    frames = lambda i, what: [{"filename": plan.model, "line": i, "name": what}]  # noqa: E731
    trace: list[dict[str, Any]] = [{"action": "segment_alloc", "addr": 0, "size": cap, "stream": 0, "time_us": 0,
                                    "frames": []}]
    events = []
    for r in report.residencies:
        events.append((r.start, 1, {"action": "alloc", "addr": r.offset, "size": r.nbytes, "stream": 0,
                                    "time_us": r.start, "frames": frames(r.start, f"{r.arrived} {r.tensor}")}))
        if r.end < len(plan.steps):
            events.append((r.end, 0, {"action": "free_completed", "addr": r.offset, "size": r.nbytes, "stream": 0,
                                      "time_us": r.end, "frames": frames(r.end, f"free {r.tensor}")}))
    trace += [e for _, _, e in sorted(events, key=lambda x: (x[0], x[1]))]  # frees before allocs of a step
    blocks, at = [], 0
    for r in sorted((r for r in report.residencies if r.end >= len(plan.steps)), key=lambda r: r.offset):
        if r.offset > at:
            blocks.append({"address": at, "size": r.offset - at, "requested_size": 0, "state": "inactive",
                           "frames": []})
        blocks.append({"address": r.offset, "size": r.nbytes, "requested_size": r.nbytes,
                       "state": "active_allocated", "frames": frames(r.start, f"{r.arrived} {r.tensor}")})
        at = r.offset + r.nbytes
    if at < cap:
        blocks.append({"address": at, "size": cap - at, "requested_size": 0, "state": "inactive", "frames": []})
    active = sum(b["size"] for b in blocks if b["state"] == "active_allocated")
    segment = {"device": 0, "address": 0, "total_size": cap, "allocated_size": active, "active_size": active,
               "requested_size": active, "stream": 0, "segment_type": "large", "segment_pool_id": (0, 0),
               "is_expandable": False, "frames": [], "blocks": blocks}
    return {"segments": [segment], "device_traces": [trace]}


def annotate_onnx(model: Any, plan: Plan) -> Any:
    """A copy of `model` (an onnx.ModelProto) with `pkg.planner.*` metadata on every node the
    plan computes: `step` (compute step indices, several when recomputed), `op` (the plan's op,
    which a fused Conv+BN+Relu shares with its epilogue nodes), `offsets` (output@offset) and
    `spilled` (an output was stored and reloaded). Raises BadInput when no node matches."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    producer = {o: op.name for op in plan.ops for o in op.outputs}
    steps: dict[str, list[int]] = {}
    offsets: dict[str, dict[str, int]] = {}
    for i, s in enumerate(plan.steps):
        if s.kind == "compute":
            steps.setdefault(s.op, []).append(i)
            offsets.setdefault(s.op, {}).update(s.offsets or {})
    reloaded = {s.tensor for s in plan.steps if s.kind == "load" and producer.get(s.tensor)}
    matched = 0
    for node in out.graph.node:
        name = node.name if node.name in steps else next((producer[o] for o in node.output if o in producer), None)
        if name is None or name not in steps:
            continue
        matched += 1
        op = next(op for op in plan.ops if op.name == name)
        props = {"op": name, "step": ",".join(map(str, steps[name])),
                 "offsets": ",".join(f"{t}@{o}" for t, o in offsets[name].items()),
                 "spilled": str(any(t in reloaded for t in op.outputs)).lower()}
        for key, value in props.items():
            node.metadata_props.add(key=f"pkg.planner.{key}", value=value)
    if matched == 0:
        raise BadInput(f"no node of the ONNX model matches an op of plan {plan.model!r}; was the plan made from "
                       "this file (plans of torch models name ops after the fx graph)?")
    m = plan.metrics
    for key, value in {"capacity": plan.target.capacity, "target": plan.target.name, "solver": plan.solver.name,
                       "status": plan.solver.status,
                       "noncompulsory_bytes": m.noncompulsory_bytes if m else None}.items():
        if value is not None:
            out.metadata_props.add(key=f"pkg.planner.{key}", value=str(value))
    return out
