"""COSMA's four baselines: exact traffic on hand-made graphs; on random DAGs and budgets
>= M_R every plan passes the simulator."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from planner import bounds
from planner.errors import Infeasible
from planner.ir import Target
from planner.problem import Problem
from planner.runtime.simulator import simulate
from planner.solvers import baselines
from tests.graphs import build, chain, random_dags

POLICIES = [(o, r) for o in ("file", "minpeak") for r in ("belady", "greedy")]


def run(g, capacity, order="file", replacement="belady", alignment=1):
    p = Problem(g, Target("t", capacity, alignment=alignment, element_bytes=1))
    plan = baselines.solve(p, baselines.Params(order=order, replacement=replacement))
    return plan, simulate(plan, g, p.target).metrics


def evict_choice():
    """x is read again soon (op3), a much later (op4); at 30 B something must go at op2."""
    return build([("op1", ["x"], ["a"]), ("op2", ["y"], ["b"]), ("op3", ["x", "b"], ["c"]), ("op4", ["a", "c"], ["z"])],
                 {t: 10 for t in "xyabcz"})


def test_belady_spills_the_furthest_use():
    plan, m = run(evict_choice(), 30, replacement="belady")
    assert m.noncompulsory_bytes == 20  # store a, reload a
    assert [(s.kind, s.tensor) for s in plan.steps if s.kind in ("store", "load") and s.tensor == "a"] == [
        ("store", "a"), ("load", "a")]


def test_greedy_drops_clean_tensors_first():
    _, m = run(evict_choice(), 30, replacement="greedy")
    assert m.noncompulsory_bytes == 30  # reload x, then store + reload a anyway


@pytest.mark.parametrize("order,replacement", POLICIES)
def test_no_spill_at_m_p(order, replacement):
    g = evict_choice()
    _, m = run(g, 40, order, replacement)
    assert (m.noncompulsory_bytes, m.compulsory_bytes) == (0, 20 + 10)
    assert m.peak_bytes <= 40


@pytest.mark.parametrize("order,replacement", POLICIES)
def test_chain_at_m_r_moves_only_compulsory_bytes(order, replacement):
    _, m = run(chain([5, 7, 3, 9]), 12, order, replacement)
    assert m.noncompulsory_bytes == 0 and m.arena_bytes <= 12


def test_below_m_r_is_infeasible():
    with pytest.raises(Infeasible, match="op3"):  # the first op of 30 B
        run(evict_choice(), 29)


def test_alignment_padding_fits_at_footprint():
    """Three 100-byte tensors at alignment 64 need 128 + 128 + 100 = 356 bytes."""
    g = build([("op", ["a", "b"], ["c"])], {"a": 100, "b": 100, "c": 100})
    plan, m = run(g, 356, alignment=64)
    assert m.arena_bytes == 356
    with pytest.raises(Infeasible):
        run(g, 355, alignment=64)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_dags(max_ops=14), st.floats(0, 1.3), st.sampled_from([1, 8, 64]), st.sampled_from(POLICIES))
def test_every_baseline_plan_passes_the_simulator(g, frac, alignment, policy):
    p0 = Problem(g, Target("t", 1, alignment=alignment, element_bytes=1))
    m_r, _ = bounds.m_r(p0)
    m_p = bounds.min_peak(p0).peak
    capacity = int(m_r + frac * max(m_p - m_r, 0))
    plan, m = run(g, capacity, *policy, alignment=alignment)  # the simulator raises on any broken rule
    assert m.arena_bytes <= capacity
    assert m.traffic_bytes == m.compulsory_bytes + m.noncompulsory_bytes
