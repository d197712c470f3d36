"""solvers.lower: the bound never exceeds the exact optimum (free and fixed orders, whole
graphs and graphs cut into several owned slices), is 0 where the no-spill peak fits, and
is positive where every order must spill; computed in a child process (`Beside`) it is
the same bound, and a child that fails says so."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from planner import bounds
from planner.ir import Target
from planner.problem import Problem
from planner.solvers import exact
from planner.solvers.lower import Beside, _covering, _Liveness, _segments, lower_bound
from tests.graphs import build, random_dags

T = Target("t", capacity=10**9, alignment=64, element_bytes=1)


def at(g, name: str, fixed_order: bool = False) -> tuple[Problem, bounds.Budgets]:
    b = bounds.budgets(Problem(g, T, fixed_order=fixed_order), time_limit=10)
    return Problem(g, T.with_capacity(b.get(name)), fixed_order=fixed_order), b


def optimum(pr: Problem, order: list[str]) -> int:
    """The exact solver's objective: the optimum when proven, an upper bound on it always."""
    return exact.solve(pr, exact.Params(schedule=order, time_limit=30)).solver.objective


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_dags(max_ops=9, alignment=64), st.sampled_from(["M_R", "M_H"]), st.integers(1, 4), st.booleans())
def test_never_above_the_optimum(g, budget, segment_ops, fixed):
    pr, b = at(g, budget, fixed)
    order = b.order if not fixed else [o.name for o in g.ops]
    best = optimum(pr, order)
    assert max(_covering(pr, 1e18, order)) <= best
    assert _segments(pr, order, segment_ops, 1e18) <= best  # several owned slices
    lb = lower_bound(pr, 5.0, order=order, segment_ops=segment_ops)
    assert 0 <= lb.bytes <= best and lb.how


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_dags(max_ops=8, alignment=64), st.data())
def test_least_live_bytes_is_the_fewest_over_every_ran_set(g, data):
    # `_Liveness.least` (a max flow over arrays) against every set I of ops already run
    # when op i computes: closed under predecessors, holding i's ancestors, none of its
    # descendants; a tensor is live when made (an input: read) in I and read outside it.
    pr = Problem(g, T)
    live = _Liveness(pr)
    n = len(live.ops)
    i = data.draw(st.integers(0, n - 1))
    maybe = live.made[i].copy()
    maybe[[live.row[t] for t in pr.tensors_of(live.ops[i]) if t in live.row]] = False
    preds = [{live.index[p] for t in o.inputs if (p := g.tensors[t].producer) is not None} for o in live.ops]
    best = None
    for bits in range(1 << n):
        ran = {j for j in range(n) if bits >> j & 1}
        if (i in ran or any(preds[j] - ran for j in ran) or any(live.anc[i] >> j & 1 and j not in ran for j in range(n))
                or any(live.desc[i] >> j & 1 for j in ran)):
            continue
        total = 0
        for k in range(len(live.tensors)):
            tt = g.tensors[live.tensors[k]]
            readers = {live.index[c] for c in tt.consumers}
            made = live.index[tt.producer] in ran if tt.producer is not None else bool(readers & ran)
            total += int(live.padded[k]) if maybe[k] and made and readers - ran else 0
        best = total if best is None else min(best, total)
    assert live.least(i, maybe) == best


def test_zero_where_the_no_spill_peak_fits():
    g = build([("a", ["x"], ["y"]), ("b", ["y"], ["z"]), ("c", ["x", "z"], ["w"])], {"x": 640, "y": 640, "z": 640, "w": 64})
    pr, b = at(g, "M_P")
    lb = lower_bound(pr, 5.0, peak=b.m_p, order=b.order)
    assert lb.bytes == 0 and "peak" in lb.how


def test_positive_where_every_order_must_spill():
    # x is read by a and c, so it is live while b runs: x, y, z (1,920 B) at b, but c needs
    # only x, z, w (1,344 B). Below 1,920 B x must leave and come back: one reload of 640 B.
    g = build([("a", ["x"], ["y"]), ("b", ["y"], ["z"]), ("c", ["x", "z"], ["w"])], {"x": 640, "y": 640, "z": 640, "w": 64})
    pr = Problem(g, T.with_capacity(1344))
    lb = lower_bound(pr, 5.0)
    assert lb.bytes == 640 == optimum(pr, ["a", "b", "c"])


def test_positions_see_what_no_op_sees():
    # u1 and u2 both read x and make y1, y2, which v reads. No op has more than 1,344 B of
    # its own and certainly live tensors, but after the first op (u1 or u2) x, the made y
    # and the next op's y are live: 1,920 B. One of x (a reload, 640 B) or the made y (a
    # store and a reload, 1,280 B) is in slow memory then; the optimum stores and reloads
    # the y, since the next op reads x. The spine relaxation (u1 -> v, u2 in its one gap)
    # proves that optimum.
    g = build([("u1", ["x"], ["y1"]), ("u2", ["x"], ["y2"]), ("v", ["y1", "y2"], ["z"])],
              {"x": 640, "y1": 640, "y2": 640, "z": 64})
    pr = Problem(g, T.with_capacity(1344))
    assert (max(_covering(pr, 1e18)), optimum(pr, ["u1", "u2", "v"])) == (640, 1280)
    lb = lower_bound(pr, 5.0)
    assert (lb.bytes, lb.how) == (1280, "the spine relaxation")


def test_slices_add_up():
    # two copies of the pattern above side by side, one per slice: each reloads its input
    rows, sizes = [], {}
    for k in range(2):
        rows += [(f"a{k}", [f"x{k}"], [f"y{k}"]), (f"b{k}", [f"y{k}"], [f"z{k}"]), (f"c{k}", [f"x{k}", f"z{k}"], [f"w{k}"])]
        sizes.update({f"x{k}": 640, f"y{k}": 640, f"z{k}": 640, f"w{k}": 64})
    pr = Problem(build(rows, sizes), T.with_capacity(1344))
    order = [o.name for o in pr.graph.ops]
    assert _segments(pr, order, 3, 1e18) == optimum(pr, order) == 1280


def test_exact_stops_at_a_bound_it_is_given():
    g = build([("a", ["x"], ["y"]), ("b", ["y"], ["z"]), ("c", ["x", "z"], ["w"])], {"x": 640, "y": 640, "z": 640, "w": 64})
    pr = Problem(g, T.with_capacity(1344))
    p = exact.solve(pr, exact.Params(lower_bound=lower_bound(pr, 5.0).bytes))
    assert (p.solver.status, p.solver.objective, p.solver.bound) == ("optimal", 640, 640)
    assert p.extra["found_by"].startswith("baseline")  # no model was needed


def test_free_recomputes_lower_the_bound():
    # as above, but x is made by p from a small input that stays resident: dropped after a
    # and recomputed at no charge before c, x costs nothing, where a store and a reload
    # would cost 1,280 B
    g = build([("p", ["i"], ["x"]), ("a", ["x"], ["y"]), ("b", ["y"], ["z"]), ("c", ["x", "z"], ["w"])],
              {"i": 64, "x": 640, "y": 640, "z": 640, "w": 64})
    pr = Problem(g, T.with_capacity(1408), allow_recompute=True, recompute_weight=0.0)
    assert lower_bound(pr, 5.0).bytes == 0 == exact.solve(pr, exact.Params(time_limit=30)).solver.objective
    assert lower_bound(Problem(g, pr.target), 5.0).bytes == 1280  # without recompute


def test_beside_finds_the_same_bound_in_a_child_process():
    g = build([("u1", ["x"], ["y1"]), ("u2", ["x"], ["y2"]), ("v", ["y1", "y2"], ["z"])],
              {"x": 640, "y1": 640, "y2": 640, "z": 64})
    pr = Problem(g, T.with_capacity(1344))
    here = lower_bound(pr, 5.0)
    there = Beside(pr, 5.0).finish(60.0)
    assert (there.bytes, there.how) == (here.bytes, here.how) == (1280, "the spine relaxation")
    # stops once the bound is enough: the covering's 640 B, or the spine's if it came first
    assert Beside(pr, 5.0).finish(60.0, enough=1).bytes in (640, 1280)


def test_beside_reports_a_failed_child():
    g = build([("a", ["x"], ["y"])], {"x": 640, "y": 640})
    with pytest.raises(RuntimeError, match="lower-bound process failed.*TypeError"):
        Beside(Problem(g, T.with_capacity(1280)), 5.0, peak="not a number").finish(60.0)  # type: ignore[arg-type]
