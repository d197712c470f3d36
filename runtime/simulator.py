"""The independent plan simulator: replays a plan's steps and enforces every rule of DESIGN §3.

It is the oracle every solver is checked against, so it shares no code with any solver and
does not import `planner.problem`: it sizes tensors with `target.size` / `target.tracks`,
and recomputes lifetimes, traffic and the compulsory bytes itself. O(n²) in the number of
steps; clarity first. The first broken rule raises `PlanViolation`, naming the step index,
the tensor or op, and the rule (one of `RULES`).

State it keeps while replaying, for the chain x ─a─> y ─b─> z (x input, z output):

    step  0 load x @0     resident {x}       slow copies {x}
          1 compute a     resident {x, y}    y gets offsets["y"]; x must be resident
          2 free x        resident {y}
          3 compute b     resident {y, z}
          4 free y        resident {z}       y had no slow copy: it is now lost
          5 store z       resident {z}       slow copies {x, z}: the output is saved

A **residency** is one stay of a tensor in fast memory, from the step that brought it in
(load or compute) to the step that freed it (or the end of the plan: what is still resident
then is released implicitly). A stored copy stays valid for ever, since recomputing an
activation yields the same value; an activation freed with no slow copy is lost.

Latency is a roofline with a double-buffered DMA engine. A compute of op o takes
`o.flops / target.flops_per_s`; a load or store of n bytes takes `n / target.dma_bytes_per_s`.
The transfers issued since the previous compute run while the next compute runs, so each
compute costs `max(its compute time, the transfer time issued before it)`, and transfers after
the last compute are added serially. This is optimistic (a load cannot really overlap the
compute that reads it); it lies between max(compute, transfer) and their sum.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.errors import PlannerError
from planner.ir import Bytes, Graph, Target
from planner.plan import Metrics, Plan, PlanOp, Step

__all__ = ["RULES", "PlanViolation", "Residency", "Latency", "Report", "simulate"]

# One name per rule of DESIGN §3 (and of the plan format of §4).
RULES = (
    "unknown",  # a step names a tensor or op the graph lacks, or has the wrong fields
    "untracked",  # a step moves a tensor that takes no fast memory here, or offsets a non-output
    "not resident",  # compute input missing from fast memory; store or free of a non-resident tensor
    "already resident",  # load of a resident tensor; compute of an op whose output is resident
    "load without slow copy",  # load of an activation never computed and stored
    "lost activation",  # load of an activation freed without a slow copy (recompute it instead)
    "over capacity",  # offset < 0 or offset + nbytes > capacity
    "misaligned",  # offset not a multiple of the alignment
    "overlap",  # two residencies overlapping in time share bytes
    "never computed",  # an op with no compute step
    "output not stored",  # a graph output with no copy in slow memory at the end
    "metrics mismatch",  # plan.metrics differ from the replay's
    "plan/graph mismatch",  # plan.tensors / plan.ops disagree with the graph under this target
)


class PlanViolation(PlannerError):
    """A plan breaks a rule. `step` indexes plan.steps (None for a whole-plan rule)."""

    def __init__(self, step: int | None, rule: str, subject: str, detail: str):
        assert rule in RULES, rule
        self.step, self.rule, self.subject, self.detail = step, rule, subject, detail
        where = "plan" if step is None else f"step {step}"
        super().__init__(f"{where}: {rule}: {subject}: {detail}")


@dataclass
class Residency:
    tensor: str
    offset: Bytes
    nbytes: Bytes  # in fast memory, unpadded
    start: int  # step index that made it resident
    end: int  # step index that freed it; len(steps) if never freed
    arrived: str  # "compute" or "load"
    stored: bool = False  # a store happened during it


@dataclass
class Latency:
    seconds: float  # the roofline total (see the module docstring)
    compute_seconds: float  # sum over compute steps
    transfer_seconds: float  # sum over loads and stores


@dataclass
class Report:
    metrics: Metrics
    residencies: list[Residency]  # in order of arrival
    live_bytes: list[Bytes]  # resident bytes after each step
    latency: Latency


@dataclass
class _Model:
    """What the replay needs from the graph, sized under the target."""

    sizes: dict[str, Bytes]  # tracked tensors: bytes in fast memory
    kinds: dict[str, str]  # every tensor, untracked weights included
    ops: dict[str, PlanOp]
    views: dict[str, str]  # folded view -> the tensor holding its bytes


def simulate(plan: Plan, graph: Graph | None = None, target: Target | None = None, *,
             check_metrics: bool = True) -> Report:
    """Replays `plan` and returns its metrics, residencies, live bytes and latency.

    Parameters
    ----------
    plan : the plan to check.
    graph : the graph it was made for; plan.tensors and plan.ops must agree with it. When
        None, the plan's own tensors and ops are taken as the graph (sizes as written, and any
        op input missing from plan.tensors is an untracked weight).
    target : defaults to plan.target; its capacity is the budget checked.
    check_metrics : compare plan.metrics, when set, with the replay's.

    Raises
    ------
    PlanViolation : on the first broken rule, with its step index, subject and rule.

    Examples
    --------
    The chain x ─a─> y ─b─> z with 64-byte tensors, run in 128 bytes:

    >>> from planner.ir import Target
    >>> from planner.plan import Plan, PlanOp, PlanTensor, SolverInfo, Step
    >>> tensors = [PlanTensor("x", 64, "input", None, ["a"]), PlanTensor("y", 64, "activation", "a", ["b"]),
    ...            PlanTensor("z", 64, "output", "b", [])]
    >>> ops = [PlanOp("a", "Relu", ["x"], ["y"], 64), PlanOp("b", "Relu", ["y"], ["z"], 64)]
    >>> steps = [Step("load", "x", 0), Step("compute", op="a", offsets={"y": 64}), Step("free", "x"),
    ...          Step("compute", op="b", offsets={"z": 0}), Step("free", "y"), Step("store", "z")]
    >>> plan = Plan("chain", Target("t", capacity=128), tensors, ops, steps, SolverInfo("hand", "heuristic"))
    >>> r = simulate(plan)
    >>> m = r.metrics
    >>> m.traffic_bytes, m.compulsory_bytes, m.noncompulsory_bytes, m.peak_bytes, m.arena_bytes
    (128, 128, 0, 128, 128)
    >>> r.live_bytes
    [64, 128, 64, 128, 64, 64]
    >>> simulate(plan, target=Target("t", capacity=96))
    Traceback (most recent call last):
    ...
    runtime.simulator.PlanViolation: step 1: over capacity: y: bytes [64, 128) exceed capacity 96
    """
    target = target or plan.target
    model = _model_from_graph(graph, target) if graph is not None else _model_from_plan(plan, target)
    _check_agreement(plan, model)
    replay = _Replay(model, target)
    for i, s in enumerate(plan.steps):
        replay.step(i, s)
    report = replay.finish(len(plan.steps))
    if check_metrics and plan.metrics is not None and plan.metrics != report.metrics:
        diffs = [f"{k} {v} (replay {getattr(report.metrics, k)})" for k, v in vars(plan.metrics).items()
                 if getattr(report.metrics, k) != v]
        raise PlanViolation(None, "metrics mismatch", plan.model, "plan says " + ", ".join(diffs))
    return report


def _model_from_graph(graph: Graph, target: Target) -> _Model:
    sizes = {n: target.size(t) for n, t in graph.tensors.items() if target.tracks(t)}
    kinds = {n: t.kind for n, t in graph.tensors.items()}
    ops = {o.name: PlanOp(o.name, o.type, list(o.inputs), list(o.outputs), o.flops) for o in graph.ops}
    return _Model(sizes, kinds, ops, {v: graph.base(v) for v in graph.views})


def _model_from_plan(plan: Plan, target: Target) -> _Model:
    """The plan's own tensors and ops as the graph; names an op reads but the plan does not
    list are untracked weights, which only exist when the target does not track weights."""
    sizes = {t.name: t.nbytes for t in plan.tensors}
    kinds = {t.name: t.kind for t in plan.tensors}
    ops = {o.name: o for o in plan.ops}
    for t in plan.tensors:
        if t.kind == "weight" and not target.track_weights:
            raise PlanViolation(None, "plan/graph mismatch", t.name, "plan.tensors lists a weight, but the target "
                                "does not track weights")
    for o in plan.ops:
        for n in o.inputs + o.outputs:
            if n in sizes:
                continue
            if n in o.outputs or target.track_weights:
                raise PlanViolation(None, "plan/graph mismatch", n, f"op {o.name!r} uses it but plan.tensors "
                                    "does not list it")
            kinds[n] = "weight"
    return _Model(sizes, kinds, ops, {})


def _check_agreement(plan: Plan, model: _Model) -> None:
    """plan.tensors lists exactly the tracked tensors, at their sizes; plan.ops every op once."""
    mismatch = "plan/graph mismatch"
    seen: set[str] = set()
    for t in plan.tensors:
        if t.name in seen or t.name not in model.sizes:
            why = "is listed twice" if t.name in seen else "is not a tracked tensor of the graph under this target"
            raise PlanViolation(None, mismatch, t.name, f"plan.tensors entry {why}")
        seen.add(t.name)
        if t.nbytes != model.sizes[t.name] or t.kind != model.kinds[t.name]:
            raise PlanViolation(None, mismatch, t.name, f"plan says {t.nbytes} bytes, kind {t.kind}; the graph "
                                f"under this target gives {model.sizes[t.name]} bytes, kind {model.kinds[t.name]}")
        producer = next((o.name for o in model.ops.values() if t.name in o.outputs), None)
        consumers = sorted(o.name for o in model.ops.values() if t.name in o.inputs)
        if t.producer != producer or sorted(t.consumers) != consumers:
            raise PlanViolation(None, mismatch, t.name, f"plan says producer {t.producer!r}, consumers "
                                f"{sorted(t.consumers)}; the graph gives {producer!r}, {consumers}")
    for n in model.sizes:
        if n not in seen:
            raise PlanViolation(None, mismatch, n, "tracked tensor missing from plan.tensors")
    seen = set()
    for o in plan.ops:
        if o.name in seen or o.name not in model.ops:
            why = "is listed twice" if o.name in seen else "is not an op of the graph"
            raise PlanViolation(None, mismatch, o.name, f"plan.ops entry {why}")
        seen.add(o.name)
        if o != model.ops[o.name]:
            raise PlanViolation(None, mismatch, o.name, f"plan says {o}; the graph has {model.ops[o.name]}")
    for n in model.ops:
        if n not in seen:
            raise PlanViolation(None, mismatch, n, "op missing from plan.ops")


class _Replay:
    """The state of fast and slow memory, advanced one step at a time."""

    def __init__(self, model: _Model, target: Target):
        self.model, self.target = model, target
        self.resident: dict[str, Residency] = {}
        self.residencies: list[Residency] = []
        # inputs and weights start in slow memory; activations get a copy when stored
        self.slow = {n for n in model.sizes if model.kinds[n] in ("input", "weight")}
        self.lost: dict[str, int] = {}  # activation -> the step that freed it with no slow copy
        self.computes: dict[str, int] = {o: 0 for o in model.ops}
        self.traffic = 0
        self.live_bytes: list[Bytes] = []
        self.compute_s = self.transfer_s = self.pending_s = self.seconds = 0.0

    def step(self, i: int, s: Step) -> None:
        handler = {"load": self._load, "store": self._store, "free": self._free, "compute": self._compute}.get(s.kind)
        if handler is None:
            raise PlanViolation(i, "unknown", str(s.kind), "step kind must be load, store, free or compute")
        handler(i, s)
        self.live_bytes.append(sum(r.nbytes for r in self.resident.values()))

    def _tensor(self, i: int, s: Step, fields: set[str]) -> str:
        """Checks a load/store/free step's shape and tensor; returns the tensor's name."""
        given = {f for f in ("tensor", "offset", "op", "offsets") if getattr(s, f) is not None}
        if given != fields:
            raise PlanViolation(i, "unknown", str(s.tensor), f"a {s.kind} step has fields {sorted(fields)}, "
                                f"this one has {sorted(given)}")
        n = s.tensor
        if n in self.model.views:
            raise PlanViolation(i, "unknown", n, f"is a folded view; name {self.model.views[n]!r}, which holds "
                                "its bytes")
        if n not in self.model.kinds:
            raise PlanViolation(i, "unknown", str(n), "no such tensor in the graph")
        if n not in self.model.sizes:
            raise PlanViolation(i, "untracked", n, f"a {self.model.kinds[n]} takes no fast memory on this target")
        return n  # type: ignore[return-value]

    def _load(self, i: int, s: Step) -> None:
        n = self._tensor(i, s, {"tensor", "offset"})
        if n in self.resident:
            raise PlanViolation(i, "already resident", n, f"resident since step {self.resident[n].start}")
        if n not in self.slow:
            if n in self.lost:
                raise PlanViolation(i, "lost activation", n, f"freed at step {self.lost[n]} with no slow copy; "
                                    "recompute its producer or store it before freeing")
            raise PlanViolation(i, "load without slow copy", n, "slow memory holds no copy: it was never "
                                "computed and stored")
        self._place(i, n, s.offset, "load")  # type: ignore[arg-type]
        self._transfer(n)

    def _store(self, i: int, s: Step) -> None:
        n = self._tensor(i, s, {"tensor"})
        if n not in self.resident:
            raise PlanViolation(i, "not resident", n, "only a resident tensor can be stored")
        self.resident[n].stored = True
        self.slow.add(n)
        self._transfer(n)

    def _free(self, i: int, s: Step) -> None:
        n = self._tensor(i, s, {"tensor"})
        if n not in self.resident:
            raise PlanViolation(i, "not resident", n, "only a resident tensor can be freed")
        self.resident.pop(n).end = i
        if n not in self.slow:
            self.lost[n] = i

    def _compute(self, i: int, s: Step) -> None:
        given = {f for f in ("tensor", "offset", "op", "offsets") if getattr(s, f) is not None}
        if not given <= {"op", "offsets"} or not isinstance(s.op, str) or not isinstance(s.offsets, dict):
            raise PlanViolation(i, "unknown", str(s.op), f"a compute step has an op and an offsets dict, "
                                f"this one has {sorted(given)}")
        op = self.model.ops.get(s.op)
        if op is None:
            raise PlanViolation(i, "unknown", s.op, "no such op in the graph")
        for n in s.offsets:
            if n not in op.outputs:
                raise PlanViolation(i, "untracked", n, f"offsets names it, but it is not an output of {op.name!r}")
        for n in op.outputs:
            if n not in s.offsets:
                raise PlanViolation(i, "unknown", op.name, f"offsets lacks output {n!r}")
        # DESIGN §3 compute rule: every tracked input resident, outputs placed at this step
        for n in op.inputs:
            if n in self.model.sizes and n not in self.resident:
                why = f"lost at step {self.lost[n]}" if n in self.lost else "not in fast memory"
                raise PlanViolation(i, "not resident", n, f"input of {op.name!r} is {why}")
        for n in op.outputs:
            if n in self.resident:
                raise PlanViolation(i, "already resident", n, f"output of {op.name!r} resident since step "
                                    f"{self.resident[n].start}")
        for n in op.outputs:
            self._place(i, n, s.offsets[n], "compute")
            self.lost.pop(n, None)
        self.computes[op.name] += 1
        t = op.flops / self.target.flops_per_s
        self.compute_s += t
        self.seconds += max(t, self.pending_s)
        self.pending_s = 0.0

    def _place(self, i: int, n: str, offset: object, arrived: str) -> None:
        """Makes `n` resident at `offset`, checking capacity, alignment and overlap."""
        size = self.model.sizes[n]
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise PlanViolation(i, "unknown", n, f"offset {offset!r} is not an integer")
        if offset < 0 or offset + size > self.target.capacity:
            raise PlanViolation(i, "over capacity", n, f"bytes [{offset}, {offset + size}) exceed capacity "
                                f"{self.target.capacity}")
        if offset % self.target.alignment:
            raise PlanViolation(i, "misaligned", n, f"offset {offset} is not a multiple of {self.target.alignment}")
        for r in self.resident.values():
            if offset < r.offset + r.nbytes and r.offset < offset + size:
                raise PlanViolation(i, "overlap", n, f"bytes [{offset}, {offset + size}) overlap {r.tensor!r} at "
                                    f"[{r.offset}, {r.offset + r.nbytes}), resident since step {r.start}")
        r = Residency(n, offset, size, i, -1, arrived)
        self.resident[n] = r
        self.residencies.append(r)

    def _transfer(self, n: str) -> None:
        size = self.model.sizes[n]
        self.traffic += size
        t = size / self.target.dma_bytes_per_s
        self.transfer_s += t
        self.pending_s += t

    def finish(self, n_steps: int) -> Report:
        """Checks the end-of-plan rules and returns the report."""
        for o, count in self.computes.items():
            if count == 0:
                raise PlanViolation(None, "never computed", o, "the plan has no compute step for it")
        for n, kind in self.model.kinds.items():
            if kind == "output" and n not in self.slow:
                raise PlanViolation(None, "output not stored", n, "graph output has no copy in slow memory at the end")
        for r in self.resident.values():  # released implicitly at the end
            r.end = n_steps
        # DESIGN §3: compulsory = first load of every used input/weight + one store per output
        compulsory = sum(b for n, b in self.model.sizes.items()
                         if self.model.kinds[n] == "output"
                         or (self.model.kinds[n] in ("input", "weight")
                             and any(n in o.inputs for o in self.model.ops.values())))
        metrics = Metrics(
            traffic_bytes=self.traffic,
            compulsory_bytes=compulsory,
            noncompulsory_bytes=self.traffic - compulsory,
            peak_bytes=max(self.live_bytes, default=0),
            arena_bytes=max((r.offset + r.nbytes for r in self.residencies), default=0),
            recomputed_ops=sum(c - 1 for c in self.computes.values()),
        )
        latency = Latency(self.seconds + self.pending_s, self.compute_s, self.transfer_s)
        return Report(metrics, self.residencies, self.live_bytes, latency)
