"""planner.solvers.exact (issue 4): every plan replays in the simulator, the optimum equals a brute
force on graphs small enough to enumerate, never more traffic than the baselines, and a
status and gap that tell the truth under a tiny time limit."""
import heapq
import itertools
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import planner
from planner import bounds as B
from planner.errors import Infeasible
from planner.ir import Target
from planner.problem import Problem
from planner.runtime.simulator import simulate
from planner.solvers import baselines, exact
from tests.graphs import build, chain, random_dags

T1 = Target("t", 1, alignment=1, element_bytes=1)


def problem(graph, capacity, alignment=1, **kw) -> Problem:
    return Problem(graph, Target("t", capacity, alignment=alignment, element_bytes=1), **kw)


def noncompulsory(p, pr) -> int:
    return simulate(p, pr.graph, pr.target).metrics.noncompulsory_bytes


def brute_force(pr: Problem, offsets: bool = True) -> float:
    """Least non-compulsory bytes over every order, residency and offset, by Dijkstra over
    (ops done, resident tensors with their offsets, tensors with a slow copy). Loads happen
    just before the op that reads them (an earlier load only holds its bytes longer); a
    tensor no op can read again is freed; a live activation is freed only with a slow copy,
    unless pr.allow_recompute: then it may be lost, a done op whose outputs are all away may
    run again (recompute_weight per FLOP), and a tensor stays live while a done reader may
    have to run again. offsets=False checks only the sum of resident bytes against the
    capacity: a relaxation, at most the optimum. Shares nothing with the solver."""
    g, size, cap, al = pr.graph, pr.sizes, pr.capacity, pr.target.alignment
    names = [o.name for o in g.ops]
    outputs = {o.name: [t for t in o.outputs if t in size] for o in g.ops}
    slow0 = frozenset(t for t in size if g.tensors[t].kind in ("input", "weight"))
    compulsory = sum(s for t, s in size.items() if (g.tensors[t].kind in ("input", "weight") and g.tensors[t].consumers)
                     or g.tensors[t].kind == "output")
    start = (frozenset(), frozenset(), slow0)
    dist = {start: 0}
    heap = [(0, 0, 0, start)]  # ties go to the state with more ops done: found sooner, same optimum
    tick = itertools.count(1)

    def placements(todo, busy):
        if not todo:
            yield {}
            return
        t = todo[0]
        for off in range(0, cap - size[t] + 1, al) if offsets else [0]:
            if (all(off + size[t] <= lo or hi <= off for lo, hi in busy) if offsets
                    else sum(hi - lo for lo, hi in busy) + size[t] <= cap):
                for rest in placements(todo[1:], busy + [(off, off + size[t])]):
                    yield {t: off, **rest}

    def may_run(op, done, seen):
        # op has yet to run, or has run and may have to again for a reader of its outputs
        if op not in done:
            return True
        seen.add(op)
        return pr.allow_recompute and any(may_run(c, done, seen) for t in outputs[op]
                                          for c in g.tensors[t].consumers if c not in seen)

    while heap:
        cost, _, _, state = heapq.heappop(heap)
        done, res, slow = state
        if cost > dist[state]:
            continue
        if len(done) == len(names):
            return cost - compulsory
        where = dict(res)
        for o in g.ops:
            again = o.name in done
            if again and (not pr.allow_recompute or any(t in where for t in o.outputs)):
                continue
            if any(g.tensors[t].producer not in done | {None} for t in o.inputs):
                continue
            need = [t for t in o.inputs if t in size]
            missing = [t for t in need if t not in where]
            if any(t not in slow for t in missing):
                continue
            outs = outputs[o.name]
            busy = [(off, off + size[t]) for t, off in where.items()]
            after = done | {o.name}
            live_now = {t for t in {*where, *need, *outs} if any(may_run(c, after, set()) for c in g.tensors[t].consumers)}
            for placed in placements(missing + outs, busy):
                res2 = {**where, **placed}
                c2 = cost + sum(size[t] for t in missing) + (pr.recompute_weight * o.flops if again else 0)
                must = [t for t in outs if g.tensors[t].kind == "output"]
                may = [t for t in outs if g.tensors[t].kind == "activation"]
                must = [t for t in must if t not in slow]  # a recomputed output is stored already
                for stored in itertools.product((False, True), repeat=len(may)):
                    slow2 = slow | set(must) | {t for t, s in zip(may, stored) if s}
                    c3 = c2 + sum(size[t] for t in must) + sum(size[t] for t, s in zip(may, stored) if s)
                    live = live_now & res2.keys()
                    optional = [t for t in live if t in slow2 or pr.allow_recompute]
                    for drop in itertools.product((False, True), repeat=len(optional)):
                        gone = {t for t, d in zip(optional, drop) if d}
                        keep = frozenset((t, off) for t, off in res2.items() if t in live and t not in gone)
                        nxt = (frozenset(after), keep, frozenset(slow2))
                        if c3 < dist.get(nxt, float("inf")):
                            dist[nxt] = c3
                            heapq.heappush(heap, (c3, -len(after), next(tick), nxt))
    raise AssertionError("no plan found")


def optimum(pr: Problem, achieved: float) -> float:
    """The brute-force optimum, given the cost of a plan that replays: when it meets the
    relaxation without offsets, it is optimal and the search over offsets (whose states
    multiply with recompute) is not needed. A plan below the relaxation gets the relaxation,
    so that the caller's comparison with it fails."""
    low = brute_force(pr, offsets=False)
    return low if achieved <= low + 1e-9 else brute_force(pr)


@st.composite
def pressured_dags(draw, max_ops: int = 6, max_size: int = 4):
    """DAGs whose tensors are read far from where they are made (skips and branches), so
    budgets near M_R force spills: op i reads one or two earlier tensors or a fresh input."""
    n = draw(st.integers(3, max_ops))
    sizes, rows, made = {"in": draw(st.integers(1, max_size))}, [], ["in"]
    for i in range(n):
        ins = [made[-1] if draw(st.booleans()) else draw(st.sampled_from(made))]
        extra = draw(st.sampled_from(made + ["fresh"]))
        if extra == "fresh" and draw(st.booleans()):
            extra = f"w{i}"
            sizes[extra] = draw(st.integers(1, max_size))
        if extra != "fresh" and extra not in ins:
            ins.append(extra)
        outs = [f"t{i}"] + ([f"u{i}"] if draw(st.integers(0, 4)) == 0 else [])
        for t in outs:
            sizes[t] = draw(st.integers(1, max_size))
        rows.append((f"op{i}", ins, outs))
        made += outs
    return build(rows, sizes)


def budgets(graph, alignment=1):
    pr = problem(graph, 1 << 30, alignment)
    r, _ = B.m_r(pr)
    p = max(B.min_peak(pr).peak, r)
    return r, (r + p) // 2, p


def test_chain_fits_with_no_traffic():
    # x0 -op1-> x1 -op2-> x2 -op3-> x3 with 4, 8, 2, 16 bytes: M_R = 18 (op3), no spill needed
    pr = problem(chain([4, 8, 2, 16]), 18)
    p = exact.solve(pr)
    assert (p.solver.status, p.solver.objective, p.solver.gap) == ("optimal", 0, 0.0)
    assert simulate(p, pr.graph, pr.target).metrics.traffic_bytes == 4 + 16


def skip(**sizes):
    """x -a-> y -b-> z -c-> w, and d reads y and w: y lives across b and c."""
    return build([("a", ["x"], ["y"]), ("b", ["y"], ["z"]), ("c", ["z"], ["w"]), ("d", ["y", "w"], ["o"])],
                 {"x": 10, "y": 10, "z": 20, "w": 10, "o": 10, **sizes})


def test_skip_connection_spills_once():
    # M_R = 30 (b: y + z, c: z + w, d: y + w + o); at 30, c cannot also hold y, so y
    # leaves: one store and one reload, 20 bytes.
    g = skip()
    pr = problem(g, 30)
    p = exact.solve(pr)
    assert (p.solver.status, p.solver.objective, p.solver.bound) == ("optimal", 20, 20)
    assert noncompulsory(p, pr) == 20 == brute_force(pr)


def test_densenet121_light_is_optimal_at_m_h():
    # The hard case: DenseNet-121 at M_H, int8 (onnx wheel's light model).
    from pathlib import Path

    import onnx

    from planner.frontends.onnx import load_onnx

    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_densenet121.onnx"
    g = load_onnx(path, fuse=True)
    tgt = planner.ir.get_target("cosma-int8")
    b = B.budgets(Problem(g, tgt))
    pr = Problem(g, tgt.with_capacity(b.m_h))
    p = exact.solve(pr, exact.Params(time_limit=60))
    assert p.solver.status == "optimal" and p.solver.gap == 0.0
    base = min(noncompulsory(baselines.solve(pr, baselines.Params(order=o, replacement=r)), pr)
               for o in ("file", "minpeak") for r in ("belady", "greedy"))
    assert noncompulsory(p, pr) == p.solver.objective < base


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dags(max_ops=7, max_size=64, alignment=8), st.sampled_from(["M_R", "M_H", "M_P"]))
def test_random_dags_replay_and_never_lose_to_baselines(graph, budget):
    r, h, p_ = budgets(graph, alignment=8)
    pr = problem(graph, {"M_R": r, "M_H": h, "M_P": p_}[budget], alignment=8)
    p = exact.solve(pr, exact.Params(time_limit=20))
    cost = noncompulsory(p, pr)  # the simulator is the oracle
    assert cost == p.solver.objective
    assert p.solver.bound <= cost and (p.solver.status == "optimal") == (p.solver.bound == cost)
    for o in ("file", "minpeak"):
        for rep in ("belady", "greedy"):
            assert cost <= noncompulsory(baselines.solve(pr, baselines.Params(order=o, replacement=rep)), pr)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(random_dags(max_ops=4, max_size=3), pressured_dags()), st.integers(0, 3))
def test_optimum_equals_brute_force(graph, extra):
    r, _, p_ = budgets(graph)
    pr = problem(graph, min(r + extra, p_))
    p = exact.solve(pr, exact.Params(time_limit=30))
    assert p.solver.status == "optimal"
    assert noncompulsory(p, pr) == p.solver.objective == optimum(pr, p.solver.objective)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pressured_dags(), st.integers(0, 2), st.sampled_from(["belady", "greedy"]))
def test_warm_start_is_a_feasible_point_of_the_model(graph, extra, replacement):
    # encode() makes a baseline plan canonical; every row of both models must hold for it
    from planner.solvers.exact import decode
    from planner.solvers.exact.model import Flags, build

    r, _, p_ = budgets(graph)
    pr = problem(graph, min(r + extra, p_))
    base = baselines.solve(pr, baselines.Params(replacement=replacement))
    for order in ([o.name for o in graph.ops], None):
        f = build(pr, Flags(), order)
        x = decode.encode(f, pr, base.steps)
        assert f.model.violated(x) is None
        assert f.model.objective(x) * f.obj_unit <= noncompulsory(base, pr)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pressured_dags(), st.integers(0, 2), st.booleans())
def test_spine_relaxation_bounds_every_order(graph, extra, redo):
    # each chain's relaxation, solved to optimality, is at most the brute-force optimum
    from planner.solvers.exact import backends, stages

    r, _, p_ = budgets(graph)
    pr = problem(graph, min(r + extra, p_), allow_recompute=redo, recompute_weight=0.01)
    best = optimum(pr, exact.solve(pr, exact.Params(time_limit=30)).solver.objective)
    for spine in stages.spines(pr):
        rel = stages.Relaxation(pr, spine)
        res = backends.solve(rel.model, "highs", 30, 1, None)
        assert res.status == "optimal" and res.bound * rel.unit <= best + 1e-9


def test_fixed_order_is_kept_and_optimal_for_it():
    # file order computes the big u early and holds it across b; the free order need not
    g = build([("a", ["x"], ["y"]), ("c", ["x"], ["u"]), ("b", ["y"], ["z"]), ("d", ["z", "u"], ["o"])],
              {"x": 4, "y": 8, "u": 16, "z": 8, "o": 4})
    fixed, free = problem(g, 28, fixed_order=True), problem(g, 28)
    p, q = exact.solve(fixed), exact.solve(free)
    assert p.schedule() == ["a", "c", "b", "d"]
    assert p.solver.status == q.solver.status == "optimal"
    assert noncompulsory(p, fixed) == p.solver.objective > noncompulsory(q, free) == q.solver.objective


def test_tiny_time_limit_gives_a_truthful_feasible_plan():
    pr = problem(skip(), 30)
    p = exact.solve(pr, exact.Params(time_limit=0.0))
    cost = noncompulsory(p, pr)
    assert p.solver.status == "feasible" and p.solver.objective == cost > 0  # never "infeasible"
    assert p.solver.bound <= brute_force(pr) <= cost
    assert p.solver.gap == pytest.approx((cost - p.solver.bound) / cost)


def recompute_graph():
    """x -a-> y -b-> z -c-> w, and d reads y, w and x. With 2, 10, 20, 10, 2 bytes at
    capacity 30, b holds y and z (x leaves) and c holds z and w (y leaves). d reloads x
    anyway, so y can come back by re-running a (1,000 FLOPs) instead of a store and a load."""
    rows = [("a", ["x"], ["y"]), ("b", ["y"], ["z"]), ("c", ["z"], ["w"]), ("d", ["y", "w", "x"], ["o"])]
    return build(rows, {"x": 2, "y": 10, "z": 20, "w": 10, "o": 2})


def test_recompute_is_cheaper_than_a_spill_here():
    # without: reload x (2) + store and reload y (20); with: reload x + 0.005 * 1000 = 7
    g = recompute_graph()
    off, on = problem(g, 30), problem(g, 30, allow_recompute=True, recompute_weight=0.005)
    p, q = exact.solve(off), exact.solve(on)
    assert (p.solver.status, p.solver.objective) == ("optimal", 22) and brute_force(off) == 22
    assert (q.solver.status, q.solver.objective) == ("optimal", 7) and brute_force(on) == 7
    m = simulate(q, on.graph, on.target).metrics
    assert (m.noncompulsory_bytes, m.recomputed_ops) == (2, 1)
    # too dear a recompute (0.05 per FLOP = 50 B) is not taken
    dear = exact.solve(problem(g, 30, allow_recompute=True, recompute_weight=0.05))
    assert (dear.solver.status, dear.solver.objective) == ("optimal", 22)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pressured_dags(), st.integers(0, 2), st.sampled_from([0.0, 0.002, 0.02]))
def test_recompute_never_worse_and_truthful(graph, extra, weight):
    r, _, p_ = budgets(graph)
    off = problem(graph, min(r + extra, p_))
    on = problem(graph, off.capacity, allow_recompute=True, recompute_weight=weight)
    p, q = exact.solve(off, exact.Params(time_limit=30)), exact.solve(on, exact.Params(time_limit=30))
    m = simulate(q, on.graph, on.target).metrics  # the recomputing plan replays
    flops = sum(graph.op(s.op).flops for i, s in enumerate(q.steps) if s.kind == "compute"
                and any(t.kind == "compute" and t.op == s.op for t in q.steps[:i]))
    assert q.solver.objective == pytest.approx(m.noncompulsory_bytes + weight * flops)
    assert q.solver.objective <= p.solver.objective
    best = optimum(on, q.solver.objective)
    assert q.solver.bound <= best + 1e-9 <= q.solver.objective + 1e-9
    assert (q.solver.status == "optimal") == (q.solver.bound == q.solver.objective)


def test_a_read_input_may_stay_for_a_recompute():
    # found by hypothesis: op0 runs again for op3 from `in`, which op0-op2 have all read;
    # keeping `in` resident (4 B fit: in, t1, t2, u2 during op2) makes the plan free, so
    # the brute force must not free a tensor that a recomputed op reads
    g = build([("op0", ["in"], ["t0"]), ("op1", ["in", "t0"], ["t1"]), ("op2", ["in", "t1"], ["t2", "u2"]),
               ("op3", ["u2", "t0"], ["t3"])], {t: 1 for t in ("in", "t0", "t1", "t2", "u2", "t3")})
    on = problem(g, 4, allow_recompute=True, recompute_weight=0.0)
    q = exact.solve(on)
    assert simulate(q, on.graph, on.target).metrics.noncompulsory_bytes == q.solver.objective == 0
    assert brute_force(on) == brute_force(on, offsets=False) == 0
    off = problem(g, 4)  # without recompute, t0 leaves during op2: a store and a reload
    assert brute_force(off) == exact.solve(off).solver.objective == 2


def test_below_m_r_is_infeasible():
    with pytest.raises(Infeasible):
        exact.solve(problem(chain([4, 8, 2, 16]), 17))


@pytest.mark.parametrize("backend", ["highs", "cbc", "cpsat"])
def test_backends_agree(backend):
    pr = problem(skip(), 30)
    p = exact.solve(pr, exact.Params(backend=backend, time_limit=30, threads=1))
    assert (p.solver.status, noncompulsory(p, pr)) == ("optimal", 20)


SWITCHES = [f.name for f in fields(exact.Params) if f.type == "bool" or isinstance(f.default, bool)]


@pytest.mark.parametrize("off", SWITCHES)
def test_each_switch_off_keeps_the_optimum(off):
    rows = [("a", ["x"], ["y"]), ("b", ["y"], ["z"]), ("c", ["x"], ["u"]), ("d", ["u"], ["v"]),
            ("e", ["z", "v", "y"], ["o"])]
    g = build(rows, {"x": 8, "y": 8, "z": 8, "u": 8, "v": 8, "o": 8})
    pr = problem(g, 32)
    want = brute_force(pr)
    p = exact.solve(pr, exact.Params(**{off: False}, time_limit=30))
    assert p.solver.status == "optimal" and noncompulsory(p, pr) == p.solver.objective == want


def test_registered_and_in_auto():
    g = chain([4, 8, 2, 16])
    tgt = Target("t", 1 << 20, alignment=1, element_bytes=1)
    p = planner.plan(g, "M_R", target=tgt, solver="exact")
    assert p.solver.name == "exact" and p.solver.status == "optimal"
    assert "exact" in planner.registry.members("auto")
