"""Divide and conquer (solvers.dnc): valid plans on random DAGs of a few hundred ops, never
worse than the best baseline, equal to the exact solver on small graphs; segments solved
in turn keep the offsets of what they carry, segments in parallel are placed together."""
from hypothesis import HealthCheck, given, settings

from benchmarks.scaling import layered_dag
from planner import bounds, registry
from planner.ir import Target
from planner.plan import Plan, SolverInfo
from planner.problem import Problem
from planner.runtime.simulator import simulate
from planner.solvers import baselines, dnc, exact
from tests.graphs import chain, random_dags

T = Target("t", capacity=10**9, alignment=64, element_bytes=1)


def at_budget(g, name: str) -> Problem:
    b = bounds.budgets(Problem(g, T), time_limit=10)
    return Problem(g, T.with_capacity(b.get(name))), b.order


def best_baseline(pr: Problem, order: list[str]) -> int:
    costs = []
    for sched in (None, order):
        for rep in ("belady", "greedy"):
            p = baselines.solve(pr, baselines.Params(replacement=rep, schedule=sched))
            costs.append(simulate(p, pr.graph, pr.target).metrics.noncompulsory_bytes)
    return min(costs)


def test_valid_and_no_worse_than_baselines_on_a_few_hundred_ops():
    for seed, budget, n in ((0, "M_R", 200), (1, "M_H", 160)):
        g = layered_dag(n, seed)
        pr, order = at_budget(g, budget)
        p = dnc.solve(pr, dnc.Params(schedule=order, segment_ops=30, time_limit=5, segment_time_limit=2))
        m = simulate(p, g, pr.target).metrics  # raises on any broken rule
        assert m.noncompulsory_bytes == p.solver.objective
        assert m.noncompulsory_bytes <= best_baseline(pr, order)
        assert p.solver.status in ("optimal", "feasible")


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_dags(max_ops=8, alignment=64))
def test_small_graphs_equal_exact(g):
    pr, order = at_budget(g, "M_R")
    d = dnc.solve(pr, dnc.Params(schedule=order, time_limit=30))
    e = exact.solve(pr, exact.Params(schedule=order, time_limit=30))
    assert d.solver.objective == e.solver.objective
    assert simulate(d, g, pr.target).metrics.noncompulsory_bytes == d.solver.objective


def test_segments_solved_in_turn_continue_each_others_offsets():
    g = layered_dag(100, 3)
    pr, order = at_budget(g, "M_R")
    guide = baselines.solve(pr, baselines.Params(schedule=order))
    params = dnc.Params(schedule=order, segment_ops=25, radius=0, lns=False)
    steps, note = dnc._pass(pr, order, guide.steps, 0, params, until=dnc.time.perf_counter() + 30)
    assert steps is not None, note
    # the stitched steps carry the segments' own offsets: no placement after stitching
    m = simulate(Plan.build(pr, steps, SolverInfo("dnc", "feasible")), g, pr.target).metrics
    assert m.noncompulsory_bytes <= best_baseline(pr, order)


def test_segments_in_parallel_are_placed_together_and_valid():
    g = layered_dag(100, 3)
    pr, order = at_budget(g, "M_R")
    p = dnc.solve(pr, dnc.Params(schedule=order, segment_ops=25, workers=2, time_limit=None,
                                 segment_time_limit=30, radius=0, lns=False))
    assert simulate(p, g, pr.target).metrics.noncompulsory_bytes == p.solver.objective <= best_baseline(pr, order)


def test_exact_keeps_the_offsets_pinned_at_a_segments_ends():
    # the segment of ops 30..55 with what crosses its cuts carried, the carried-in tensors
    # pinned at the offsets a baseline plan of the whole graph gave them there
    g = layered_dag(80, 5)
    pr, order = at_budget(g, "M_R")
    guide = baselines.solve(pr, baselines.Params(schedule=order))
    live = dnc._live_sets(pr, order)
    kept = dnc._kept_at(pr, order, guide.steps, [30, 55])
    seg = dnc._segment(pr, order, 30, 55, sorted(kept[0]), sorted(kept[1]), pr.capacity, "highs")
    head = guide.steps[:[i for i, s in enumerate(guide.steps) if s.kind == "compute"][30]]
    pins = {t: off for t, off in dnc._resident_offsets(head).items() if t in kept[0]}
    assert pins and set(pins) <= set(live[30])
    p = exact.solve(seg.problem, exact.Params(time_limit=20, pinned=pins))
    simulate(p, seg.problem.graph, seg.problem.target)
    assert {t: off for t, off in dnc._resident_offsets(p.steps[:p.steps.index(next(
        s for s in p.steps if s.kind == "compute")) + 1]).items() if t in pins} == pins


def test_auto_sizes_graphs_by_their_exact_model():
    chain_ = Problem(chain([4, 8, 2, 16] * 100), T)  # 399 ops, one order: a tiny model
    wide = Problem(layered_dag(300, 0), T)
    assert registry.exact_columns(chain_) <= registry.AUTO_EXACT_MAX_COLUMNS < registry.exact_columns(wide)
    assert registry.members("auto", chain_)[-2:] == ("exact", "dnc")
    assert registry.members("auto", wide) == ("dnc",)
    assert registry.members("auto", Problem(chain([4, 8, 2, 16]), T))[-1] == "exact"  # one dnc segment
    assert registry.members("dnc") == ("dnc",)


def test_segment_that_fits_without_spilling_is_solved_on_the_spot():
    # ops 20..40 of a layered DAG, every live tensor carried across both cuts: with room for
    # their no-spill peak the segment moves no byte it need not; one byte less, it must spill
    g = layered_dag(60, 5)
    pr, order = at_budget(g, "M_P")
    live = dnc._live_sets(pr, order)
    a = pr.target.alignment

    def seg(capacity: int) -> dnc._Segment:
        return dnc._segment(pr, order, 20, 40, live[20], live[40], capacity, "highs")

    used, peak, last = set(), 0, {}
    sub = seg(pr.capacity).problem
    for i, o in enumerate(sub.graph.ops):
        for t in sub.tensors_of(o):
            last[t] = i
    for i, o in enumerate(sub.graph.ops):
        used |= set(sub.tensors_of(o))
        peak = max(peak, sum(-(-sub.sizes[t] // a) * a for t in used))
        used -= {t for t in sub.tensors_of(o) if last[t] == i}
    sp = seg(peak).problem
    steps = dnc._no_spill(seg(peak))
    assert steps is not None and dnc._no_spill(seg(peak - 1)) is None
    placed = dnc._pinned(seg(peak), steps)  # offsets placed (no pins: nothing carried in before it)
    assert placed is not None
    m = simulate(Plan.build(sp, placed, SolverInfo("dnc", "heuristic")), sp.graph, sp.target).metrics
    assert m.noncompulsory_bytes == 0
