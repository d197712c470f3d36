"""M_R, M_P, compulsory bytes on hand-computed graphs; the DP against brute force."""

import pytest
from hypothesis import HealthCheck, given, settings

from planner import bounds
from planner.errors import Infeasible
from planner.ir import Target
from planner.problem import Problem
from tests.graphs import brute_force_m_p, build, chain, random_dags

T = Target("t", capacity=10**6, alignment=1, element_bytes=1)


def diamond():
    """a -> (b -> e, c) -> d, where b's output is big: best to finish b's branch early."""
    return build([("a", ["x"], ["y"]), ("b", ["y"], ["big"]), ("c", ["y"], ["small"]),
                  ("e", ["big"], ["big2"]), ("d", ["big2", "small"], ["z"])],
                 {"x": 1, "y": 10, "big": 100, "small": 5, "big2": 1, "z": 1})


def test_chain_live_bytes_and_bounds():
    p = Problem(chain([1, 2, 4]), T)
    assert bounds.live_bytes(p, ["op1", "op2"]) == [3, 6]
    assert bounds.m_r(p) == (6, "op2")
    mp = bounds.min_peak(p)
    assert (mp.peak, mp.order, mp.exact) == (6, ["op1", "op2"], True)
    assert p.compulsory_bytes() == 1 + 4


def test_diamond_min_peak_beats_file_order():
    p = Problem(diamond(), T)
    assert bounds.peak_bytes(p, [o.name for o in p.graph.ops]) == 115  # y + big + small at c
    mp = bounds.min_peak(p)
    assert (mp.peak, mp.order, mp.exact) == (111, ["a", "b", "e", "c", "d"], True)
    b = bounds.budgets(p)
    assert (b.m_r, b.m_p, b.m_h) == (110, 111, 110)


def test_footprint_pads_all_but_one_tensor():
    g = build([("op", ["a", "b"], ["c"])], {"a": 100, "b": 100, "c": 100})
    p = Problem(g, Target("t", 10**6, alignment=64, element_bytes=1))
    assert p.footprint(g.ops[0]) == 128 + 128 + 100


def test_weights_count_only_when_tracked():
    g = build([("op", ["x", "w"], ["y"])], {"x": 4, "w": 16, "y": 8}, weights=("w",))
    assert bounds.m_r(Problem(g, T)) == (12, "op")
    tracked = Problem(g, Target("t", 10**6, alignment=1, element_bytes=1, track_weights=True))
    assert bounds.m_r(tracked) == (28, "op")
    assert tracked.compulsory_bytes() == 4 + 16 + 8


def test_budget_below_m_r_names_op_and_minimum():
    g = chain([1, 2, 4])
    with pytest.raises(Infeasible, match=r"M_R = 6 B, set by op 'op2'") as e:
        bounds.check_budget(Problem(g, T.with_capacity(5)))
    assert (e.value.op, e.value.minimum) == ("op2", 6)
    bounds.check_budget(Problem(g, T.with_capacity(6)))


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_dags(max_ops=8))
def test_dp_equals_brute_force(g):
    p = Problem(g, T)
    mp = bounds.min_peak(p)
    assert mp.exact
    assert mp.peak == brute_force_m_p(p) == bounds.peak_bytes(p, mp.order)
    assert sorted(mp.order) == sorted(o.name for o in g.ops)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_dags(max_ops=10))
def test_narrow_beam_is_labelled_upper_bound(g):
    p = Problem(g, T)
    exact, narrow = bounds.min_peak(p), bounds.min_peak(p, beam=1)
    assert narrow.peak >= exact.peak
    assert narrow.peak == bounds.peak_bytes(p, narrow.order)
    if not narrow.exact:
        assert narrow.states >= 1


def test_m_p_is_never_below_padded_m_r():
    """zfnet512's shape of problem: the peak op's tensors are not multiples of the alignment."""
    g = build([("op", ["a", "b"], ["c"])], {"a": 100, "b": 100, "c": 100})
    b = bounds.budgets(Problem(g, Target("t", 10**6, alignment=64, element_bytes=1)))
    assert bounds.min_peak(Problem(g, T)).peak == 300
    assert (b.m_r, b.m_p, b.m_h) == (356, 356, 356)
