"""The simulator on hand-written plans: exact metrics, and each injected fault rejected with
its rule and step index. Graphs are int8 so every tensor's nbytes is its element count."""
from __future__ import annotations

import copy
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.ir import Graph, Op, Target, Tensor
from planner.plan import Metrics, Plan, SolverInfo, Step
from planner.problem import Problem
from planner.runtime.simulator import RULES, PlanViolation, Residency, simulate


def make_graph(name: str, ops: list[tuple[str, list[str], list[str], int]], sizes: dict[str, int],
               outputs: list[str], weights: tuple[str, ...] = ()) -> Graph:
    """ops are (name, inputs, outputs, flops); kinds and links follow from them."""
    producer = {t: o for o, _, outs, _ in ops for t in outs}
    tensors = {}
    for t, n in sizes.items():
        kind = "weight" if t in weights else "output" if t in outputs else "activation" if t in producer else "input"
        tensors[t] = Tensor(t, (n,), "int8", n, kind, producer.get(t), [o for o, ins, _, _ in ops if t in ins])
    inputs = [t for t, x in tensors.items() if x.kind == "input"]
    return Graph(name, tensors, [Op(o, "Op", ins, outs, f) for o, ins, outs, f in ops], inputs, outputs).lint()


def build(graph: Graph, target: Target, steps: list[Step]) -> Plan:
    return Plan.build(Problem(graph, target), steps, SolverInfo("hand", "heuristic"))


def load(t, off):
    return Step("load", tensor=t, offset=off)


def store(t):
    return Step("store", tensor=t)


def free(t):
    return Step("free", tensor=t)


def compute(op, **offsets):
    return Step("compute", op=op, offsets=offsets)


def target(capacity=512, **kw):
    return Target("t", capacity=capacity, alignment=64, flops_per_s=100.0, dma_bytes_per_s=64.0, **kw)


# x ─a─> y ─b(w)─> z ─c─> o
CHAIN = make_graph("chain", [("a", ["x"], ["y"], 100), ("b", ["y", "w"], ["z"], 200), ("c", ["z"], ["o"], 100)],
                   {"x": 64, "y": 128, "w": 64, "z": 100, "o": 64}, ["o"], weights=("w",))
CHAIN_STEPS = [load("x", 0), compute("a", y=64), free("x"), compute("b", z=192), free("y"),
               compute("c", o=0), free("z"), store("o")]

# x ─a─> y ─b─> u ─┐
#        └──c─> v ─d─> o
DIAMOND = make_graph("diamond", [("a", ["x"], ["y"], 0), ("b", ["y"], ["u"], 0), ("c", ["y"], ["v"], 0),
                                 ("d", ["u", "v"], ["o"], 0)], {t: 64 for t in "xyuvo"}, ["o"])

# x ─conv1(w1)─> h1 ─conv2(w2)─> h2 ─add(+x)─> o
RESIDUAL = make_graph("residual", [("conv1", ["x", "w1"], ["h1"], 0), ("conv2", ["h1", "w2"], ["h2"], 0),
                                   ("add", ["h2", "x"], ["o"], 0)],
                      {"x": 128, "w1": 64, "h1": 128, "w2": 64, "h2": 128, "o": 128}, ["o"], weights=("w1", "w2"))


def test_chain_metrics_and_report():
    r = simulate(build(CHAIN, target(), CHAIN_STEPS), CHAIN)
    assert r.metrics == Metrics(traffic_bytes=128, compulsory_bytes=128, noncompulsory_bytes=0, peak_bytes=228,
                                arena_bytes=292, recomputed_ops=0)
    assert r.live_bytes == [64, 192, 128, 228, 100, 164, 64, 64]
    assert r.residencies == [Residency("x", 0, 64, 0, 2, "load"), Residency("y", 64, 128, 1, 4, "compute"),
                             Residency("z", 192, 100, 3, 6, "compute"), Residency("o", 0, 64, 5, 8, "compute", True)]
    # a: max(1 s compute, 1 s load of x) + b: 2 s + c: 1 s + the store of o after the last compute: 1 s
    assert (r.latency.seconds, r.latency.compute_seconds, r.latency.transfer_seconds) == (5.0, 4.0, 2.0)


def test_chain_with_tracked_weights():
    steps = [load("x", 0), compute("a", y=64), free("x"), load("w", 0), compute("b", z=192), free("y"), free("w"),
             compute("c", o=0), free("z"), store("o")]
    r = simulate(build(CHAIN, target(track_weights=True), steps), CHAIN)
    assert r.metrics == Metrics(192, 192, 0, 292, 292, 0)


def test_residual_block():
    steps = [load("x", 0), load("w1", 128), compute("conv1", h1=192), free("w1"), load("w2", 128),
             compute("conv2", h2=320), free("w2"), free("h1"), compute("add", o=128), free("x"), free("h2"), store("o")]
    r = simulate(build(RESIDUAL, target(1024, track_weights=True), steps), RESIDUAL)
    assert r.metrics == Metrics(384, 384, 0, 448, 448, 0)
    assert r.live_bytes == [128, 192, 320, 256, 320, 448, 384, 256, 384, 256, 128, 128]


def test_spill_and_reload_at_new_offset():
    steps = [load("x", 0), compute("a", y=64), free("x"), compute("b", u=0), store("y"), free("y"), load("y", 128),
             compute("c", v=64), free("y"), compute("d", o=128), free("u"), free("v"), store("o")]
    r = simulate(build(DIAMOND, target(192), steps), DIAMOND)
    assert r.metrics == Metrics(256, 128, 128, 192, 192, 0)
    ys = [x for x in r.residencies if x.tensor == "y"]
    assert [(x.offset, x.start, x.end, x.arrived, x.stored) for x in ys] == [(64, 1, 5, "compute", True),
                                                                            (128, 6, 8, "load", False)]


def test_recomputation():
    steps = [load("x", 0), compute("a", y=64), compute("b", u=128), free("y"), compute("a", y=64), free("x"),
             compute("c", v=0), free("y"), compute("d", o=64), free("u"), free("v"), store("o")]
    r = simulate(build(DIAMOND, target(192), steps), DIAMOND)
    assert r.metrics == Metrics(128, 128, 0, 192, 192, 1)


def test_store_stays_valid_across_recompute():
    # y is stored, freed, recomputed and freed again: its first store is still a valid copy
    steps = [load("x", 0), compute("a", y=64), store("y"), free("y"), compute("a", y=64), free("y"), free("x"),
             load("y", 0), compute("b", u=64), compute("c", v=128), free("y"), compute("d", o=0), store("o")]
    assert simulate(build(DIAMOND, target(192), steps), DIAMOND).metrics == Metrics(256, 128, 128, 192, 192, 1)


def test_unused_input_is_not_compulsory():
    g = make_graph("spare", [("a", ["x"], ["o"], 0)], {"x": 64, "s": 64, "o": 64}, ["o"])
    steps = [load("x", 0), compute("a", o=64), store("o")]
    assert simulate(build(g, target(), steps), g).metrics == Metrics(128, 128, 0, 128, 128, 0)
    steps = [load("s", 128)] + steps  # loading it anyway is legal, and non-compulsory
    assert simulate(build(g, target(), steps), g).metrics == Metrics(192, 128, 64, 192, 192, 0)


def test_json_round_trip_and_graphless_replay():
    plan = build(CHAIN, target(), CHAIN_STEPS)
    plan.metrics = simulate(plan, CHAIN).metrics
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert simulate(again, CHAIN).metrics == plan.metrics
    assert simulate(again).metrics == plan.metrics  # the plan's own tensors and ops as the graph


def _mutated(steps, i, new=None, insert=False):
    steps = copy.deepcopy(steps)
    if insert:
        steps.insert(i, new)
    elif new is None:
        del steps[i]
    else:
        steps[i] = new
    return steps


FAULTS = {
    "overlap": (_mutated(CHAIN_STEPS, 1, compute("a", y=0)), "overlap", 1),
    "capacity": (_mutated(CHAIN_STEPS, 3, compute("b", z=448)), "over capacity", 3),
    "negative offset": (_mutated(CHAIN_STEPS, 0, load("x", -64)), "over capacity", 0),
    "misaligned": (_mutated(CHAIN_STEPS, 1, compute("a", y=96)), "misaligned", 1),
    "missing input": (_mutated(CHAIN_STEPS, 0), "not resident", 0),
    "load of lost activation": (_mutated(CHAIN_STEPS, 5, load("y", 256), insert=True), "lost activation", 5),
    "load never stored": (_mutated(CHAIN_STEPS, 0, load("y", 256), insert=True), "load without slow copy", 0),
    "output never stored": (CHAIN_STEPS[:-1], "output not stored", None),
    "op never computed": (CHAIN_STEPS[:5], "never computed", None),
    "double load": (_mutated(CHAIN_STEPS, 1, load("x", 256), insert=True), "already resident", 1),
    "output already resident": (_mutated(CHAIN_STEPS, 2, compute("a", y=256), insert=True), "already resident", 2),
    "free non-resident": (CHAIN_STEPS + [free("x")], "not resident", 8),
    "store non-resident": (CHAIN_STEPS + [store("y")], "not resident", 8),
    "unknown tensor": (_mutated(CHAIN_STEPS, 0, load("nope", 0)), "unknown", 0),
    "unknown op": (_mutated(CHAIN_STEPS, 1, compute("nope", y=64)), "unknown", 1),
    "load without offset": (_mutated(CHAIN_STEPS, 0, Step("load", tensor="x")), "unknown", 0),
    "free with offset": (_mutated(CHAIN_STEPS, 2, Step("free", tensor="x", offset=0)), "unknown", 2),
    "missing output offset": (_mutated(CHAIN_STEPS, 1, compute("a")), "unknown", 1),
    "bad kind": (_mutated(CHAIN_STEPS, 2, Step("spill", tensor="x")), "unknown", 2),
    "untracked weight": (_mutated(CHAIN_STEPS, 3, load("w", 256), insert=True), "untracked", 3),
    "offset for a non-output": (_mutated(CHAIN_STEPS, 1, compute("a", y=64, z=256)), "untracked", 1),
}


@pytest.mark.parametrize("name", FAULTS)
def test_fault_is_rejected(name):
    steps, rule, step = FAULTS[name]
    with pytest.raises(PlanViolation) as e:
        simulate(build(CHAIN, target(), steps), CHAIN)
    assert (e.value.rule, e.value.step) == (rule, step), str(e.value)
    assert str(e.value).startswith(f"step {step}: {rule}: " if step is not None else f"plan: {rule}: ")


def test_overlap_names_both_tensors_and_ranges():
    with pytest.raises(PlanViolation, match=r"y: bytes \[0, 128\) overlap 'x' at \[0, 64\)"):
        simulate(build(CHAIN, target(), FAULTS["overlap"][0]), CHAIN)


def test_views_are_not_steps():
    g = copy.deepcopy(CHAIN)
    g.views["y_flat"] = Tensor("y_flat", (128,), "int8", 128, "activation", alias="y")
    with pytest.raises(PlanViolation, match="folded view; name 'y'") as e:
        simulate(build(g, target(), _mutated(CHAIN_STEPS, 2, store("y_flat"), insert=True)), g)
    assert (e.value.rule, e.value.step) == ("unknown", 2)


def test_wrong_metrics():
    plan = build(CHAIN, target(), CHAIN_STEPS)
    good = simulate(plan, CHAIN).metrics
    plan.metrics = Metrics(**{**vars(good), "traffic_bytes": 0})
    with pytest.raises(PlanViolation, match=r"traffic_bytes 0 \(replay 128\)") as e:
        simulate(plan, CHAIN)
    assert (e.value.rule, e.value.step) == ("metrics mismatch", None)
    assert simulate(plan, CHAIN, check_metrics=False).metrics == good


@pytest.mark.parametrize("fault", ["nbytes", "kind", "missing op", "extra tensor", "target", "graphless weight"])
def test_plan_graph_mismatch(fault):
    plan, tgt = build(CHAIN, target(), CHAIN_STEPS), None
    if fault == "nbytes":
        plan.tensors[0].nbytes += 1
    elif fault == "kind":
        plan.tensors[-1].kind = "activation"
    elif fault == "missing op":
        del plan.ops[1]
    elif fault == "extra tensor":
        plan.tensors.append(copy.deepcopy(plan.tensors[0]))
    elif fault == "target":  # the same graph under 2-byte elements has other sizes
        tgt = target(element_bytes=2)
    else:
        plan = build(CHAIN, target(track_weights=True), CHAIN_STEPS)
        plan.target = target()
    with pytest.raises(PlanViolation) as e:
        simulate(plan, None if fault == "graphless weight" else CHAIN, tgt)
    assert (e.value.rule, e.value.step) == ("plan/graph mismatch", None), str(e.value)


# Random DAGs and valid plans for them; one random mutation must be rejected by a named rule or,
# when accepted, give a report that passes an independent check of DESIGN §3 (as tinygrad's
# check_assign recomputes lifetimes itself).

def _random_graph(rng: random.Random) -> Graph:
    names = [f"in{i}" for i in range(rng.randint(1, 2))]
    sizes = {n: rng.choice([32, 64, 100, 128]) for n in names}
    ops = []
    for k in range(rng.randint(2, 5)):
        ins = rng.sample(names, min(len(names), rng.randint(1, 2)))
        out = f"t{k}"
        sizes[out] = rng.choice([32, 64, 100, 128])
        ops.append((f"op{k}", ins, [out], rng.randint(0, 100)))
        names.append(out)
    used = {t for _, ins, _, _ in ops for t in ins}
    outputs = [t for _, _, (t,), _ in ops if t not in used or rng.random() < 0.2]
    return make_graph("random", ops, sizes, outputs)


def _random_plan(g: Graph, rng: random.Random) -> tuple[Plan, Metrics]:
    """Graph order, first-fit offsets, random spills; returns the plan and its metrics by hand."""
    cap = sum(-(-t.nbytes // 64) * 64 for t in g.tensors.values())
    steps, resident, slow = [], {}, {n for n, t in g.tensors.items() if t.kind == "input"}
    traffic = peak = arena = 0

    def place(t):
        nonlocal arena
        off = 0
        for o, n in sorted(resident.values()):
            if off + g.tensors[t].nbytes <= o:
                break
            off = max(off, -(-(o + n) // 64) * 64)
        resident[t] = (off, g.tensors[t].nbytes)
        arena = max(arena, off + g.tensors[t].nbytes)
        return off

    for k, op in enumerate(g.ops):
        for t in op.inputs:
            if t not in resident:
                steps.append(load(t, place(t)))
                traffic += g.tensors[t].nbytes
        steps.append(compute(op.name, **{t: place(t) for t in op.outputs}))
        peak = max(peak, sum(n for _, n in resident.values()))
        for t in list(resident):
            later = [o for o in g.ops[k + 1:] if t in o.inputs]
            if not later or rng.random() < 0.3:
                if g.tensors[t].kind == "output" and t not in slow or later and t not in slow:
                    steps.append(store(t))
                    slow.add(t)
                    traffic += g.tensors[t].nbytes
                steps.append(free(t))
                del resident[t]
    compulsory = sum(t.nbytes for t in g.tensors.values() if t.kind == "output" or t.kind == "input" and t.consumers)
    plan = build(g, Target("t", capacity=cap, alignment=64), steps)
    return plan, Metrics(traffic, compulsory, traffic - compulsory, peak, arena, 0)


def _mutate(plan: Plan, rng: random.Random) -> None:
    steps, i = plan.steps, rng.randrange(len(plan.steps))
    what = rng.choice(["delete", "duplicate", "swap", "offset", "rename"])
    if what == "delete":
        del steps[i]
    elif what == "duplicate":
        steps.insert(i, copy.deepcopy(steps[i]))
    elif what == "swap" and i + 1 < len(steps):
        steps[i], steps[i + 1] = steps[i + 1], steps[i]
    elif what == "offset":
        s = steps[i]
        new = rng.choice([-64, 0, 32, 64, 128, 192, plan.target.capacity - 64])
        if s.kind == "load":
            s.offset = new
        elif s.kind == "compute":
            s.offsets = {t: new for t in s.offsets}
    elif what == "rename" and steps[i].tensor is not None:
        steps[i].tensor = rng.choice([t.name for t in plan.tensors])


def _check_report(plan: Plan, g: Graph, r) -> None:
    """DESIGN §3 recomputed from the report and the steps alone."""
    size = {t.name: t.nbytes for t in plan.tensors}
    assert r.metrics.traffic_bytes == sum(size[s.tensor] for s in plan.steps if s.kind in ("load", "store"))
    assert r.metrics.recomputed_ops == len(plan.schedule()) - len(g.ops)
    assert set(plan.schedule()) == {o.name for o in g.ops}
    for a in r.residencies:
        assert a.offset >= 0 and a.offset + a.nbytes <= plan.target.capacity and a.offset % 64 == 0
        for b in r.residencies:
            if a is not b and a.start < b.end and b.start < a.end:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset
    for i, s in enumerate(plan.steps):
        if s.kind == "compute":
            for t in g.op(s.op).inputs:
                assert any(a.tensor == t and a.start < i < a.end for a in r.residencies)
    live = [sum(a.nbytes for a in r.residencies if a.start <= i < a.end) for i in range(len(plan.steps))]
    assert r.live_bytes == live and r.metrics.peak_bytes == max(live)
    assert r.metrics.arena_bytes == max(a.offset + a.nbytes for a in r.residencies)
    for t in g.outputs:
        assert any(s.kind == "store" and s.tensor == t for s in plan.steps)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32))
def test_random_plans_with_one_mutation(seed):
    rng = random.Random(seed)
    g = _random_graph(rng)
    plan, expected = _random_plan(g, rng)
    r = simulate(plan, g)
    assert r.metrics == expected
    _check_report(plan, g, r)
    _mutate(plan, rng)
    try:
        r = simulate(plan, g)
    except PlanViolation as e:
        assert e.rule in RULES and (e.step is None or 0 <= e.step < len(plan.steps))
        return
    _check_report(plan, g, r)
