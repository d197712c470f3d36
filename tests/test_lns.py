"""Reordering segments (solvers.dnc) and the large-neighbourhood search (solvers.lns):
plans the simulator accepts, never worse than where they start, better where a fixed
order must spill, the lower bound and the progress callback honoured."""
from dataclasses import replace

import pytest

from benchmarks.scaling import layered_dag
from planner import bounds
from planner.ir import Target
from planner.problem import Problem
from planner.runtime.simulator import simulate
from planner.solvers import baselines, dnc, lns
from tests.graphs import build

T = Target("t", capacity=10**9, alignment=64, element_bytes=1)


def blocks(k: int):
    """k blocks in a chain; block i reads the previous join h{i-1} and makes two big
    tensors a, b and two small ones c, d:

        h ──> A(100) ──> c(10) ──┐
          └─> B(100) ──> d(10) ──┴──> h'(10)

    The order A, B, c, d holds A and B together (x + A + B = 210 bytes); A, c, B, d never
    more than 120. At capacity 130 the first order must spill 100 bytes per block."""
    rows, sizes = [], {"h-1": 10}
    bad = []
    for i in range(k):
        h = f"h{i - 1}"
        rows += [(f"a{i}", [h], [f"A{i}"]), (f"b{i}", [h], [f"B{i}"]), (f"c{i}", [f"A{i}"], [f"C{i}"]),
                 (f"d{i}", [f"B{i}"], [f"D{i}"]), (f"j{i}", [f"C{i}", f"D{i}"], [f"h{i}"])]
        sizes |= {f"A{i}": 100, f"B{i}": 100, f"C{i}": 10, f"D{i}": 10, f"h{i}": 10}
        bad += [f"a{i}", f"b{i}", f"c{i}", f"d{i}", f"j{i}"]
    return build(rows, sizes, name=f"blocks_{k}"), bad


def noncompulsory(pr: Problem, plan) -> int:
    m = simulate(plan, pr.graph, pr.target).metrics  # raises on any broken rule
    assert m.noncompulsory_bytes == plan.solver.objective
    return m.noncompulsory_bytes


def test_reordered_segments_are_valid_across_several_cuts():
    g, bad = blocks(8)
    pr = Problem(g, Target("t", 130, alignment=1, element_bytes=1))
    fixed = dnc.solve(pr, dnc.Params(schedule=bad, segment_ops=10, radius=0, lns=False, time_limit=30))
    assert noncompulsory(pr, fixed) > 0  # the order spills in every block
    p = dnc.solve(pr, dnc.Params(schedule=bad, segment_ops=10, lns=False, time_limit=30))
    assert noncompulsory(pr, p) == 0 and p.solver.status == "optimal"
    assert p.schedule() != bad  # segments reordered, each inside its cuts
    assert p.extra["found_by"].startswith("pass")


def test_lns_improves_a_fixed_order_plan_and_never_worsens_it():
    g, bad = blocks(8)
    pr = Problem(g, Target("t", 130, alignment=1, element_bytes=1))
    start = baselines.solve(pr, baselines.Params(replacement="belady", schedule=bad))
    before = noncompulsory(pr, start)
    assert before > 0
    p = lns.solve(pr, lns.Params(start=start.steps, window_ops=10, time_limit=60))
    assert noncompulsory(pr, p) < before
    assert p.solver.objective == 0 and p.solver.status == "optimal"


@pytest.mark.parametrize("budget, seed", [("M_R", 0), ("M_H", 1)])
def test_lns_on_a_layered_dag_is_valid_and_no_worse(budget, seed):
    g = layered_dag(120, seed)
    b = bounds.budgets(Problem(g, T), time_limit=5)
    pr = Problem(g, T.with_capacity(b.get(budget)))
    start = min((baselines.solve(pr, baselines.Params(replacement=r, schedule=b.order)) for r in ("belady", "greedy")),
                key=lambda p: lns.traffic(pr, p.steps))
    seen = []
    p = lns.solve(pr, lns.Params(start=start.steps, window_ops=20, window_time_limit=2, time_limit=8,
                                 progress=seen.append))
    assert noncompulsory(pr, p) <= lns.traffic(pr, start.steps)
    assert [e["traffic"] for e in seen] == sorted((e["traffic"] for e in seen), reverse=True)
    assert not seen or seen[-1]["traffic"] == p.solver.objective


def test_dnc_stops_at_the_lower_bound_and_reports_progress():
    g = layered_dag(150, 2)
    b = bounds.budgets(Problem(g, T), time_limit=5)
    pr = Problem(g, T.with_capacity(b.get("M_R")))
    best = min(lns.traffic(pr, baselines.solve(pr, baselines.Params(replacement=r, schedule=s)).steps)
               for s in (None, b.order) for r in ("belady", "greedy"))
    seen = []
    p = dnc.solve(pr, dnc.Params(schedule=b.order, segment_ops=30, time_limit=600, lower_bound=best,
                                 progress=seen.append))
    # the best baseline meets the bound: nothing is solved, the plan is proven optimal
    assert noncompulsory(pr, p) == best
    assert p.solver.status == "optimal" and p.solver.bound == best and p.solver.gap == 0.0
    assert p.extra["log"] == []
    assert seen and seen[-1] == {"traffic": best, "bound": best, "elapsed": seen[-1]["elapsed"]}


def test_dnc_with_a_bound_it_does_not_reach_reports_the_gap():
    g, bad = blocks(8)
    pr = Problem(g, Target("t", 130, alignment=1, element_bytes=1))
    seen = []
    p = dnc.solve(pr, dnc.Params(schedule=bad, segment_ops=10, radius=0, lns=False, time_limit=30,
                                 lower_bound=1.0, progress=seen.append))
    cost = noncompulsory(pr, p)
    assert cost > 1
    assert p.solver.status == "feasible" and p.solver.bound == 1.0 and p.solver.gap == (cost - 1.0) / cost
    assert seen[-1]["traffic"] == p.solver.objective and seen[0]["traffic"] >= seen[-1]["traffic"]


@pytest.mark.slow
def test_lns_improves_fixed_order_dnc_on_a_layered_dag():
    # the same start for both: comparing two dnc runs of one time limit compares how their
    # passes split it, which the load on the machine decides (benchmarks/scaling.py does that)
    g = layered_dag(300, 0)
    b = bounds.budgets(Problem(g, T), time_limit=10)
    pr = Problem(g, T.with_capacity(b.get("M_R")))
    old = dnc.solve(pr, dnc.Params(schedule=b.order, radius=0, lns=False, time_limit=60))
    new = lns.solve(pr, lns.Params(start=old.steps, time_limit=60))
    assert noncompulsory(pr, new) < noncompulsory(pr, old)
    assert any("-> non-compulsory" in line for line in new.extra["log"])  # a window improved it


@pytest.mark.parametrize("budget,stretch", [("M_R", False), ("M_H", False), ("M_H", True)])
def test_a_window_starts_from_the_plans_own_steps_placed_where_the_plan_has_them(budget, stretch):
    # a baseline plan of a layered DAG, windows of 30 ops: the plan's own steps are a valid
    # plan of each window's problem (carried tensors at their pinned offsets; residencies
    # stretched across the cuts freed and reloaded as the plan has them), and the window's
    # solve, started from them, never ends worse than the plan there
    g = layered_dag(120, 2)
    b = bounds.budgets(Problem(g, T), time_limit=10)
    pr = Problem(g, T.with_capacity(b.get(budget)))
    plan = baselines.solve(pr, baselines.Params(schedule=b.order))
    steps, cut = plan.steps, lns._cuts(plan.steps)
    for lo in (20, 50, 80):
        bd = lns._boundary(pr, steps, cut, lo, lo + 30, stretch=stretch)
        seg = dnc._segment(pr, bd.order, lo, lo + 30, bd.carried_in, bd.carried_out, pr.capacity, "highs",
                           0, bd.has_copy, bd.need_copy)
        seg.pinned, seg.pinned_end = bd.pinned, bd.pinned_end
        start = lns._incumbent(seg, steps[cut[lo]:cut[lo + 30]], bd.stretched_in, bd.stretched_out)
        assert start is not None
        seg.start, seg.time_limit = start, 5.0
        sub = dnc._solve_segment(seg)
        assert sub is not None and dnc._pinned(seg, sub) == sub  # placed around the pins
        assert lns.traffic(seg.problem, sub) <= lns.traffic(seg.problem, start)
        body, _ = dnc._stitch(pr, [seg], [sub], set(bd.carried_in), bd.stored, offsets=True)
        new = lns._tidy(pr, bd.head + body + bd.tail)
        assert baselines.offset_error(pr, new) is None  # the spliced plan keeps every offset: no placement needed
        simulate(dnc.Plan.build(pr, new, dnc.SolverInfo("lns", "feasible")), g, pr.target)


@pytest.mark.parametrize("output", [False, True])
def test_a_reloads_span_is_tried_first_and_keeps_the_tensor(output: bool):
    # X is read by q and by z, 20 ops later; in the blocks' bad order Belady spills it, and
    # the 5-op grid windows between see no traffic to save. The reload's span (from X's
    # free to z) holds the whole choice, and reordering the blocks inside it keeps X. As a
    # graph output too, X's store is compulsory but its reload is not: a span all the same.
    g0, bad = blocks(4)
    rows = [("p", ["x"], ["X"]), ("q", ["X"], ["h-1"])]
    rows += [(o.name, list(o.inputs), list(o.outputs)) for o in g0.ops] + [("z", ["X", "h3"], ["out"])]
    sizes = {**Problem(g0, T).sizes, "x": 10, "X": 100, "out": 10}
    g = build(rows, sizes, outputs=["X", "out"] if output else None)
    pr = Problem(g, Target("t", 230, alignment=1, element_bytes=1))
    start = baselines.solve(pr, baselines.Params(replacement="belady", schedule=["p", "q"] + bad + ["z"]))
    moved = 100 if output else 200  # X loaded again, and stored unless that is compulsory
    assert noncompulsory(pr, start) == moved
    assert lns._spans(pr, start.steps) == {(3, 23): moved}  # freed after a0; z is op 22
    p = lns.solve(pr, lns.Params(start=start.steps, window_ops=5, time_limit=60))
    assert noncompulsory(pr, p) == 0 and p.solver.status == "optimal"
    assert p.extra["log"][0] == "lns sweep 0: window [3, 23) -> non-compulsory 0"


def test_the_spans_of_another_start_are_tried_and_the_best_plan_kept():
    # The start spills X (200 B) and only X's 20-op span could keep it, wider than the
    # search may go (max_window_ops 5): alone it ends where it began. The other plan, in
    # the blocks' good order, moves more (Y stored and loaded again, 240 B) but Y's span is
    # 2 ops: kept there, it moves nothing, and the search goes on from it.
    g0, bad = blocks(4)
    good = [f"{k}{i}" for i in range(4) for k in "acbdj"]
    rows = [("p", ["x"], ["X"]), ("q", ["X"], ["h-1"])]
    rows += [(o.name, list(o.inputs), list(o.outputs)) for o in g0.ops] + [("z", ["X", "h3"], ["out"])]
    rows += [("r", ["out"], ["Y"]), ("s1", ["Y"], ["S1"]), ("u", ["S1"], ["U"]), ("s2", ["Y", "U"], ["out2"])]
    sizes = {**Problem(g0, T).sizes, "x": 10, "X": 100, "out": 10, "Y": 120, "S1": 10, "U": 10, "out2": 10}
    g = build(rows, sizes)
    pr = Problem(g, Target("t", 230, alignment=1, element_bytes=1))
    tail = ["z", "r", "s1", "u", "s2"]
    start = baselines.solve(pr, baselines.Params(replacement="belady", schedule=["p", "q"] + bad + tail))
    assert noncompulsory(pr, start) == 200
    kept = baselines.solve(pr, baselines.Params(replacement="belady", schedule=["p", "q"] + good + tail)).steps
    i = next(k for k, s in enumerate(kept) if s.op == "s1") + 1
    j = next(k for k, s in enumerate(kept) if s.op == "s2")
    at = next(s.offsets["Y"] for s in kept if s.op == "r")
    other = (kept[:i] + [dnc.Step("store", "Y"), dnc.Step("free", "Y")] + kept[i:j]
             + [dnc.Step("load", "Y", offset=at)] + kept[j:])
    assert lns.traffic(pr, other) == 240 and lns._spans(pr, other) == {(25, 27): 240}
    simulate(dnc.Plan.build(pr, other, dnc.SolverInfo("t", "feasible")), g, pr.target)
    params = lns.Params(start=start.steps, window_ops=5, max_window_ops=5, time_limit=60)
    alone = lns.solve(pr, params)
    assert noncompulsory(pr, alone) == 200  # stuck: its span is too wide
    p = lns.solve(pr, replace(params, others=(other,)))
    assert noncompulsory(pr, p) == 0 and p.solver.status == "optimal"
    assert p.extra["log"][0] == "lns: another start's spans -> non-compulsory 0"


def test_a_window_whose_plan_packs_nowhere_gives_up_instead_of_retrying(monkeypatch):
    # When no packing of the window's plan without spills is found, around the plan's
    # offsets or alone, the window is solved instead and each try runs once; it used to
    # try the unpinned packing again and again until the search's deadline.
    g, bad = blocks(8)
    pr = Problem(g, Target("t", 130, alignment=1, element_bytes=1))
    start = baselines.solve(pr, baselines.Params(replacement="belady", schedule=bad))
    calls = []
    monkeypatch.setattr(dnc, "_pinned", lambda seg, steps: calls.append(1))
    params = lns.Params(window_ops=10)
    found = lns._window(pr, start.steps, 0, 10, params, lns.time.perf_counter() + 60)
    assert 1 <= len(calls) <= 4  # a pinned and an unpinned packing per try, stretched or not
    if found is not None:
        assert found[1] < noncompulsory(pr, start)
        simulate(dnc.Plan.build(pr, found[0], dnc.SolverInfo("lns", "feasible")), g, pr.target)
