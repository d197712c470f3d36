"""The PyTorch arena executor: every zoo model, planned on the gpu-fp32 target, runs to eager's
outputs from one arena, without spills at M_P and with real spills below it; a hand-made
recomputation; the memory it allocates besides the arena; the CUDA ordering logic, driven
by fake lanes since these machines have no GPU."""
from __future__ import annotations

import itertools

import json
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

from planner import models
import planner
from planner.frontends.fx import Lowered, lower_module
from planner import bounds
from planner.errors import BadInput
from planner.ir import get_target
from planner.plan import Plan, SolverInfo, Step
from planner.problem import Problem
from planner.runtime.simulator import simulate
from planner.runtime.torch_executor import TorchExecutor, _Ordering

TARGET = get_target("gpu-fp32")


@dataclass
class Case:
    low: Lowered
    args: tuple[torch.Tensor, ...]
    eager: list[torch.Tensor]  # in Lowered.outputs order
    budgets: bounds.Budgets


@pytest.fixture(scope="module")
def case(zoo_run) -> Callable[[str], Case]:
    cache: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in cache:
            run = zoo_run(name)
            low = lower_module(run.model, run.args, fold_bn=False, name=name)  # batch norm stays an op, as eager runs it
            b = bounds.budgets(Problem(low.graph, TARGET), time_limit=2)
            cache[name] = Case(low, run.args, run.outputs, b)
        return cache[name]
    return get


def plan_for(low: Lowered, budget: int | str, solver: str = "minpeak-belady", time_limit: float = 6) -> Plan:
    """A plan, replayed by the independent simulator before anything runs it. The default
    solver is the fastest baseline whose order reaches M_P."""
    p = planner.plan(low.graph, budget, target=TARGET, solver=solver, time_limit=time_limit)
    simulate(p, low.graph, p.target)
    return p


def padded_peak(graph, order: list[str]) -> int:
    """The most bytes live during one op of `order`, every tracked tensor padded to the
    alignment: what a no-spill plan of that order needs, fragmentation aside."""
    pos = {o: k for k, o in enumerate(order)}
    delta = [0] * (len(order) + 1)
    for t in graph.tensors.values():
        uses = [pos[c] for c in t.consumers] + ([pos[t.producer]] if t.producer else [])
        if TARGET.tracks(t) and uses:
            size = -(-TARGET.size(t) // TARGET.alignment) * TARGET.alignment
            delta[min(uses)] += size
            delta[max(uses) + 1] -= size
    return max(itertools.accumulate(delta[:-1]))


def execute(c: Case, p: Plan) -> tuple[list[torch.Tensor], TorchExecutor]:
    ex = TorchExecutor(p, c.low.graph, c.low.weights)
    values = dict(zip(c.low.graph.outputs, ex.run(*c.args, check_arena=True)))
    return [values[o] for o in c.low.outputs], ex


def assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def spilled(p: Plan) -> set[str]:
    """Activations the plan stores and loads back: real spill traffic."""
    kinds = {t.name: t.kind for t in p.tensors}
    loads = {s.tensor for s in p.steps if s.kind == "load" and kinds[s.tensor] in ("activation", "output")}
    stores = {s.tensor for s in p.steps if s.kind == "store"}
    return loads & stores


ZOO = sorted(models.ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_at_mp(name: str, case: Callable[[str], Case]) -> None:
    """At M_P every model runs to eager's outputs, with no spill where M_P is exact. M_P
    counts unpadded bytes, so the budget is M_P raised to the peak of the M_P order with
    every tensor padded to the 512-B alignment (GPT-2's logits, the NAS cells' odd
    channel counts). A fast baseline first; when its first-fit offsets fragment, the
    portfolio's exact solver. Where M_P is only the DP's upper bound (cut by the time
    limit) a plan may have to spill; the outputs must match all the same."""
    c = case(name)
    budget = max(c.budgets.m_p, padded_peak(c.low.graph, c.budgets.order))
    p = plan_for(c.low, budget)
    if c.budgets.m_p_exact and p.metrics.noncompulsory_bytes:
        p = plan_for(c.low, budget, solver="auto", time_limit=30)
    if c.budgets.m_p_exact:
        assert p.metrics.noncompulsory_bytes == 0 and not spilled(p)
    got, ex = execute(c, p)
    assert_close(got, c.eager)
    assert ex.stats.arena_bytes == p.metrics.arena_bytes <= p.target.capacity
    assert ex.stats.load_bytes + ex.stats.store_bytes == p.metrics.traffic_bytes
    assert ex.stats.direct_ops, "no op wrote straight into the arena"


@pytest.mark.parametrize("name", ZOO)
def test_zoo_between_mr_and_mp(name: str, case: Callable[[str], Case]) -> None:
    """Halfway between M_R and M_P. Below an exact M_P no schedule fits without moving
    data, so the plan must spill activations and the executor must move them through its
    host buffers. Where M_R = M_P (the largest op is the peak: ResNet-50, MobileNetV2, ...)
    no budget lies between, and the plan at M_R runs to the same outputs."""
    c = case(name)
    b = c.budgets
    p = plan_for(c.low, (b.m_r + b.m_p) // 2)
    if b.m_p_exact and b.m_r < b.m_p:
        assert spilled(p), f"{name}: a plan below M_P moves no activation"
    got, ex = execute(c, p)
    assert_close(got, c.eager)
    if spilled(p):
        assert ex.stats.host_bytes > 0 and ex.stats.store_bytes > ex.stats.output_bytes
    assert ex.stats.load_bytes + ex.stats.store_bytes == p.metrics.traffic_bytes


class Residual(torch.nn.Module):
    """Linear layers, relu, adds and a layer norm: no kernel needs a workspace, so the
    executor's own allocations (and layer norm's two small statistics) are all the
    profiler sees."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(64, 256), torch.nn.Linear(256, 256), torch.nn.Linear(256, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = torch.relu(self.b(h)) + h
        return self.c(torch.nn.functional.layer_norm(g * h, (256,))) + x  # layer_norm: no out= form


def _allocated_peak(fn: Callable[[], Any], tmp_path) -> int:
    """Peak bytes the CPU allocator holds during `fn`, above what it held before."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    events = [e for e in json.loads(path.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    return max([0] + [e["args"]["Total Allocated"] for e in events])


@pytest.mark.parametrize("where", ["M_P", "M_R"])
def test_arena_is_the_only_memory(where: str, tmp_path) -> None:
    """The arena is allocated once, never moves, and a run allocates nothing but its
    outputs and the transients it reports (measured by the profiler's allocator events)."""
    model = Residual().eval()
    x = torch.randn(32, 64)
    low = lower_module(model, (x,))
    p = plan_for(low, where)
    ex = TorchExecutor(p, low.graph, low.weights)
    arena = (ex.arena.data_ptr(), ex.arena.numel())
    ex.run(x)
    peak = _allocated_peak(lambda: ex.run(x, check_arena=True), tmp_path)
    assert (ex.arena.data_ptr(), ex.arena.numel()) == arena
    assert ex.stats.copied_ops and ex.stats.direct_ops  # both paths ran
    assert ex.stats.arena_bytes <= p.target.capacity
    assert 0 < peak <= ex.stats.output_bytes + ex.stats.transient_peak_bytes + 1024  # a few scalars
    with torch.no_grad():
        torch.testing.assert_close(ex.run(x)[0], model(x))


def test_recompute_step_reruns_the_op() -> None:
    """A hand-made plan: after the first reader of h = a(x), free h without storing it and
    recompute it at a fresh offset for its other readers (x stays resident: the last op
    reads it). The simulator accepts it as one recomputation; the executor reruns the op."""
    model = Residual().eval()
    x = torch.randn(8, 64)
    low = lower_module(model, (x,))
    g = low.graph
    h = next(o.outputs[0] for o in g.ops if o.inputs[0] == "x")
    producer, first_reader = g.tensors[h].producer, g.tensors[h].consumers[0]
    base = plan_for(low, "M_P")
    top = -(-base.metrics.arena_bytes // TARGET.alignment) * TARGET.alignment  # bytes nothing else uses
    steps: list[Step] = []
    for s in base.steps:
        steps.append(s)
        if s.kind == "compute" and s.op == first_reader:
            steps += [Step("free", tensor=h), Step("compute", op=producer, offsets={h: top})]
    p = Plan.build(Problem(g, TARGET.with_capacity(top + g.tensors[h].nbytes)), steps, SolverInfo("hand", "heuristic"))
    assert simulate(p, g, p.target).metrics.recomputed_ops == 1
    ex = TorchExecutor(p, g, low.weights)
    out = ex.run(x, check_arena=True)[0]
    assert ex.stats.recomputes == 1
    with torch.no_grad():
        torch.testing.assert_close(out, model(x))


def test_plan_for_another_dtype_size_is_rejected() -> None:
    """A plan sized for bf16 cannot hold an fp32 model's tensors: one clear error."""
    model = Residual().eval()
    x = torch.randn(8, 64)
    low = lower_module(model, (x,))
    p = planner.plan(low.graph, "M_P", target="gpu-bf16", solver="baseline", time_limit=6)
    with pytest.raises(BadInput, match="gpu-fp32"):
        TorchExecutor(p, low.graph, low.weights)
    ex = TorchExecutor(plan_for(low, "M_P"), low.graph, low.weights)
    with pytest.raises(BadInput, match=r"input 'x' is \(4, 64\)"):
        ex.run(torch.randn(4, 64))


class FakeLanes:
    """Records the waits the CUDA ordering asks for; events are (lane, number)."""

    def __init__(self) -> None:
        self.waits: list[tuple[str, tuple[str, int]]] = []
        self.count = 0

    def record(self, lane: str) -> tuple[str, int]:
        self.count += 1
        return (lane, self.count)

    def wait(self, lane: str, event: tuple[str, int]) -> None:
        self.waits.append((lane, event))

    def start(self) -> None:
        pass

    def finish(self) -> None:
        pass


def test_ordering_waits_only_across_lanes() -> None:
    """compute a: x -> y; free x; load z over x's bytes; compute b: y, z -> w; store w.
    The load must wait for compute a (last reader of x's bytes), compute b for the load,
    the store for compute b; nothing waits on its own lane."""
    arena = torch.zeros(4096, dtype=torch.uint8)
    x, y, z, w = arena[0:1024], arena[1024:2048], arena[0:512], arena[2048:3072]
    lanes = FakeLanes()
    o = _Ordering(lanes)
    o.begin()
    o.before("copy", [], [("x", x)])
    o.after("copy", [], [("x", x)])  # event 1: load x
    o.before("compute", ["x"], [("y", y)])
    o.after("compute", ["x"], [("y", y)])  # event 2: compute a
    o.free("x")
    o.before("copy", [], [("z", z)])
    o.after("copy", [], [("z", z)])  # event 3: load z
    o.before("compute", ["y", "z"], [("w", w)])
    o.after("compute", ["y", "z"], [("w", w)])  # event 4: compute b
    o.before("copy", ["w"], [])
    assert lanes.waits == [("compute", ("copy", 1)), ("copy", ("compute", 2)), ("compute", ("copy", 3)),
                           ("copy", ("compute", 4))]


class Head(torch.nn.Module):
    """A language-model head in small: a few layers, then a wide last output read from one
    small hidden state, as GPT-2's logits are."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
        self.head = torch.nn.Linear(64, 4096)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nn.functional.layer_norm(self.body(x), (64,)))


def arena_plan(low: Lowered) -> tuple[Plan, set[str]]:
    """A plan of `low` with its inputs and outputs outside the arena (one-byte tokens), as
    frontends.dynamo makes it."""
    from planner.frontends.dynamo import _arena_graph

    g = low.graph
    outside = {g.base(o) for o in g.outputs} | set(g.inputs)
    return planner.plan(_arena_graph(g, outside), "M_P", target=TARGET, solver="minpeak-belady"), outside


def test_outputs_outside_the_arena_and_its_early_release(tmp_path) -> None:
    """Inputs are read where the caller keeps them and outputs written where the run returns
    them: nothing copied in or out. The last op only writes an output, so the arena is
    released before it, and the measured peak is what `planned_peak` replays."""
    from planner.runtime.torch_executor import planned_peak

    model, x = Head().eval(), torch.randn(32, 64)
    low = lower_module(model, (x,))
    p, outside = arena_plan(low)
    ex = TorchExecutor(p, low.graph, low.weights, outside=outside)
    assert ex.release is not None and ex.release.keep  # the last hidden state is copied out
    ex.run(x)
    measured = _allocated_peak(lambda: ex.run(x), tmp_path)  # the released arena is allocated again in the call
    planned = planned_peak(p, low.graph, outside)
    assert abs(measured - planned) <= 0.05 * planned, (measured, planned)
    assert planned < ex.extent + 32 * 4096 * 4  # below holding the arena and the output together
    assert ex.stats.load_bytes == ex.stats.store_bytes == 0
    out = ex.run(x)[0]
    with torch.no_grad():
        torch.testing.assert_close(out, model(x))
    assert not (ex.arena.data_ptr() <= out.data_ptr() < ex.arena.data_ptr() + ex.arena.numel())


class Pointwise(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(8, 16, 1)
        self.b = torch.nn.Conv2d(16, 32, 1, stride=2, bias=False)
        self.c = torch.nn.Conv2d(32, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x).relu()))


def test_1x1_convolutions_write_into_the_arena(tmp_path) -> None:
    """1x1 convolutions (stride 1 and 2) run as matrix products straight into their views;
    the 3x3 one takes the copy path, and the transients the run reports are the predicted
    ones."""
    from planner.runtime.torch_executor import transient_reserve

    model, x = Pointwise().eval(), torch.randn(2, 8, 16, 16)
    low = lower_module(model, (x,))
    p = plan_for(low, "M_P")
    ex = TorchExecutor(p, low.graph, low.weights)
    out = ex.run(x, check_arena=True)[0]
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
    types = {op.name: op.type for op in low.graph.ops}
    convs = sorted(n for n, t in types.items() if "conv" in t)
    assert len(convs) == 3 and len([n for n in convs if n in ex.stats.direct_ops]) == 2
    assert ex.stats.transient_peak_bytes == transient_reserve(low.graph) > 0
