"""planner.solvers.remat on small hand-made problems (issue 8): peaks, choices, random ops, infeasibility."""
from __future__ import annotations

import pytest

from planner.errors import Infeasible
import itertools

from planner.solvers.remat import KEEP, OFFLOAD, RECOMPUTE, Params, RematProblem, Value, evaluate, min_peak, solve


def chain(random_b: bool = False) -> RematProblem:
    """Forward a -> b -> c (steps 0-2), backward steps 3-5 read c, b, a in that order.

    Each value is 100 B and lives in the forward from its step to its reader's step; the base
    holds 100 B at every step (the forward's own tensors, the gradients) plus those lifetimes.
    """
    values = [
        Value("a", 100, born=0, fwd_last=1, bwd_first=5, bwd_last=5, inputs=[], recompute_s=1e-6, transfer_s=1e-3),
        Value("b", 100, born=1, fwd_last=2, bwd_first=4, bwd_last=4, inputs=["a"], recompute_s=1e-6,
              transfer_s=1e-3, recomputable=not random_b),
        Value("c", 100, born=2, fwd_last=2, bwd_first=3, bwd_last=3, inputs=["b"], recompute_s=5e-6, transfer_s=1e-3),
    ]
    base = [200, 300, 300, 100, 100, 100]
    return RematProblem("chain", values, base, step_s=[1e-6] * 6, n_forward=3, budget=10**6)


def test_keep_all_when_it_fits():
    p = chain()
    d = solve(p)
    assert d.choice == {"a": KEEP, "b": KEEP, "c": KEEP}
    # step 3: base 100 + a, b, c kept = 400
    assert d.peak == 400 and d.added_s == 0 and d.solver.status == "optimal"


@pytest.mark.parametrize("method", ["milp", "greedy"])
def test_tight_budget_recomputes_the_cheapest(method):
    p = chain()
    p.budget = 300
    d = solve(p, Params(method=method))
    assert evaluate(p, d.choice)[0] == d.peak <= 300
    # recomputing a or b costs 1 us, c 5 us, offloading 1 ms: one cheap recomputation
    assert sorted(d.choice.values()) == [KEEP, KEEP, RECOMPUTE]
    assert d.choice["c"] == KEEP and abs(d.added_s - 1e-6) < 1e-9


def test_offload_when_recompute_is_off():
    p = chain()
    p.budget = 300
    d = solve(p, Params(recompute=False))
    assert OFFLOAD in d.choice.values() and RECOMPUTE not in d.choice.values()
    assert d.peak <= 300 and d.prefetch and all(3 <= s <= 5 for s in d.prefetch.values())


def test_random_op_is_never_recomputed():
    p = chain(random_b=True)
    p.budget = 300
    d = solve(p, Params(offload=False))
    assert d.choice["b"] == KEEP and d.peak <= 300


def test_milp_never_worse_than_greedy():
    p = chain()
    p.budget = 300
    exact, greedy = solve(p), solve(p, Params(method="greedy"))
    assert exact.peak <= 300 and greedy.peak <= 300
    assert exact.added_s <= greedy.added_s + 1e-12 and exact.solver.status == "optimal"


def test_infeasible_names_the_least_peak():
    p = chain()
    p.budget = 150  # the base alone needs 300 in the forward
    with pytest.raises(Infeasible) as e:
        solve(p)
    assert e.value.minimum == 300


def test_a_recomputed_chain_pulls_its_inputs_to_its_first_need():
    """Recomputing a, b and c: the backward's first step (3) reads c, whose recomputation reads
    b, whose recomputation reads a, so all three are on the device at step 3: 100 base + 300."""
    p = chain()
    assert evaluate(p, {"a": RECOMPUTE, "b": RECOMPUTE, "c": RECOMPUTE}) == (400, pytest.approx(7e-6))
    # keeping a: b and c recomputed at step 3 from it, a held since step 2 (forward base 300 there)
    assert evaluate(p, {"a": KEEP, "b": RECOMPUTE, "c": RECOMPUTE})[0] == 400
    # keeping c instead: b and a are recomputed at step 4 (base 100 + 200); the forward's 300 is the peak
    assert evaluate(p, {"a": RECOMPUTE, "b": RECOMPUTE, "c": KEEP})[0] == 300


@pytest.mark.parametrize("offload", [True, False])
@pytest.mark.parametrize("method", ["milp", "greedy"])
def test_min_peak_is_the_least_over_all_choices(method, offload):
    """The least modelled peak, against every choice enumerated (a random b, never recomputed)."""
    p = chain(random_b=True)
    p.values[0].nbytes = 300  # a large a: recomputing or offloading it pays
    allowed = [KEEP, RECOMPUTE] + ([OFFLOAD] if offload else [])
    peaks = []
    for combo in itertools.product(allowed, repeat=3):
        choice = dict(zip("abc", combo))
        if choice["b"] != RECOMPUTE:
            peaks.append(evaluate(p, choice, Params(offload=offload))[0])
    d = min_peak(p, Params(method=method, offload=offload))
    assert d.choice["b"] != RECOMPUTE and d.peak == evaluate(p, d.choice)[0]
    if method == "milp":
        assert d.peak == min(peaks)
    else:
        assert min(peaks) <= d.peak <= max(peaks)
    p.budget = d.peak
    assert solve(p, Params(method=method, offload=offload)).peak <= d.peak


def two_blocks() -> RematProblem:
    """Two repeats of the block x -> y (x 100 B, y 200 B), forward steps 0-3, backward 4-7 reading
    y1, x1, y0, x0; each value in the group of its place in the block."""
    values = []
    for i in range(2):
        values.append(Value(f"x{i}", 100, born=2 * i, fwd_last=2 * i + 1, bwd_first=7 - 2 * i, bwd_last=7 - 2 * i,
                            inputs=[f"y{i - 1}"] if i else [], recompute_s=2e-6, transfer_s=1e-3, group="0:0"))
        values.append(Value(f"y{i}", 200, born=2 * i + 1, fwd_last=min(2 * i + 2, 3), bwd_first=6 - 2 * i,
                            bwd_last=6 - 2 * i, inputs=[f"x{i}"], recompute_s=1e-6, transfer_s=1e-3, group="0:1"))
    base = [100, 300, 300, 300, 100, 100, 100, 100]
    return RematProblem("two_blocks", values, base, step_s=[1e-6] * 8, n_forward=4, budget=10**6)


@pytest.mark.parametrize("budget", [500, 400])  # keeping all needs 700, the least is 400
def test_repeats_tied_first_reach_the_untied_optimum(budget):
    """Params.repeats solves the tied programme first and warm-starts the untied one with it:
    the answer is the untied optimum, within the budget."""
    p = two_blocks()
    p.budget = budget
    tied, untied = solve(p, Params(repeats=True)), solve(p, Params(repeats=False))
    assert tied.solver.status == untied.solver.status == "optimal"
    assert tied.added_s == pytest.approx(untied.added_s) and tied.peak <= budget and untied.peak <= budget
    assert min_peak(p, Params(repeats=True)).peak == min_peak(p, Params(repeats=False)).peak


def test_min_peak_starts_from_hints():
    """A choice found elsewhere (torch's min-cut partition, block checkpointing) warm-starts the
    least-peak search, which answers no worse; a hint the options forbid is left out."""
    p = chain()
    best = {"a": RECOMPUTE, "b": RECOMPUTE, "c": KEEP}  # 300: the forward's own peak
    worst = {"a": KEEP, "b": KEEP, "c": KEEP}
    greedy = min_peak(p, Params(method="greedy"), hints=[worst])
    assert min_peak(p, Params(method="greedy"), hints=[best]).peak == evaluate(p, best)[0] <= greedy.peak
    forbidden = {"a": OFFLOAD, "b": RECOMPUTE, "c": KEEP}
    assert min_peak(p, Params(method="greedy", offload=False), hints=[forbidden]).choice != forbidden
