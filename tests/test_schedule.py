"""The hierarchical min-peak scheduler (planner.schedule): exact against brute force,
never above reverse post-order, the greedy order or file order, forced cuts."""
import random

from hypothesis import HealthCheck, given, settings

from planner import bounds, schedule
from planner.ir import Target
from planner.problem import Problem
from tests.graphs import brute_force_m_p, build, chain, random_dags

T = Target("t", capacity=10**6, alignment=1, element_bytes=1)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_dags(max_ops=8))
def test_windows_and_proof_match_brute_force(g):
    # window=2 sends every segment of 3+ ops through the windows, then the proof DP
    p = Problem(g, T)
    r = schedule.min_peak(p, window=2)
    assert r.peak == bounds.peak_bytes(p, r.order)
    assert sorted(r.order) == sorted(o.name for o in g.ops)
    best = brute_force_m_p(p)
    assert r.peak >= best
    if r.exact:
        assert r.peak == best


def random_layered(n: int, seed: int):
    rng = random.Random(seed)
    rows, sizes, avail = [], {"x": 8}, ["x"]
    for i in range(n):
        ins = sorted(set(rng.sample(avail[-12:], min(len(avail[-12:]), rng.randint(1, 3)))))
        sizes[f"t{i}"] = rng.randint(1, 100)
        rows.append((f"op{i}", ins, [f"t{i}"]))
        avail.append(f"t{i}")
    return build(rows, sizes)


def test_never_above_heuristic_orders():
    for seed in range(6):
        p = Problem(random_layered(120, seed), T)
        dag = schedule._Dag(p)
        r = schedule.min_peak(p, window=8, time_limit=20)
        for order in (list(range(len(dag))), schedule.reverse_post_order(dag), schedule.greedy_order(dag)):
            assert r.peak <= max(dag.live(order))
        assert r.peak == bounds.peak_bytes(p, r.order)


def test_heuristic_orders_are_topological():
    p = Problem(random_layered(80, 1), T)
    dag = schedule._Dag(p)
    for order in (schedule.reverse_post_order(dag), schedule.greedy_order(dag)):
        pos = {v: k for k, v in enumerate(order)}
        assert sorted(order) == list(range(len(dag)))
        assert all(pos[p_] < pos[v] for v in range(len(dag)) for p_ in dag.preds[v])


def test_chain_is_all_forced_cuts():
    p = Problem(chain([1, 2, 3, 4]), T)
    dag = schedule._Dag(p)
    assert schedule.forced_segments(dag, [0, 1, 2]) == [[0], [1], [2]]


def test_diamond_cuts_at_its_ends():
    g = build([("a", ["x"], ["y"]), ("b", ["y"], ["u"]), ("c", ["y"], ["v"]), ("d", ["u", "v"], ["z"])],
              {"x": 1, "y": 1, "u": 1, "v": 1, "z": 1})
    dag = schedule._Dag(Problem(g, T))
    assert schedule.forced_segments(dag, [0, 1, 2, 3]) == [[0], [1, 2], [3]]
