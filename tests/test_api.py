"""planner.plan(): every light_* ONNX model plans at M_H; the API's inputs and failures."""
import json
import time
from pathlib import Path

import onnx
import pytest

import planner
from planner import registry
from planner.api import _relay
from planner.errors import BadInput, Infeasible
from planner.plan import Plan
from planner.runtime.simulator import simulate
from tests.graphs import build, chain

LIGHT = sorted((Path(onnx.__file__).parent / "backend" / "test" / "data" / "light").glob("light_*.onnx"))


@pytest.mark.parametrize("path", LIGHT, ids=lambda p: p.stem)
def test_every_light_model_plans_at_m_h(path):
    p = planner.plan(path, "M_H")
    b = p.extra["budgets"]
    assert b["M_R"] <= b["M_H"] == p.target.capacity <= b["M_P"]
    report = simulate(p)  # the plan alone (its own tables) and against the lowered graph
    assert report.metrics == p.metrics == simulate(p, planner.api.load_graph(path)).metrics
    assert p.metrics.arena_bytes <= p.target.capacity
    best = min(c["noncompulsory_bytes"] for c in p.extra["candidates"] if "skipped" not in c)
    assert p.metrics.noncompulsory_bytes == best  # the portfolio keeps its best candidate
    s = p.solver  # the best bound found, proven: optimal exactly when the plan meets it
    assert 0 <= s.bound <= s.objective == p.metrics.noncompulsory_bytes
    assert (s.status == "optimal") == (s.gap == 0.0) == (s.bound == s.objective)


def test_plan_json_round_trip(tmp_path):
    p = planner.plan(LIGHT[0], "M_P", solver="minpeak-greedy")
    p.save(tmp_path / "p.json")
    q = Plan.load(tmp_path / "p.json")
    assert q.to_json() == json.loads(json.dumps(p.to_json()))
    assert simulate(q).metrics == p.metrics


def test_graph_in_and_named_budgets():
    g = chain([4, 8, 2, 16])
    tgt = planner.Target("t", 1 << 20, alignment=1, element_bytes=1)
    assert planner.plan(g, "M_R", target=tgt).target.capacity == 18  # op3: 2 + 16
    assert planner.plan(g, 30, target=tgt).metrics.noncompulsory_bytes == 0
    with pytest.raises(Infeasible) as e:
        planner.plan(g, 17, target=tgt)
    assert (e.value.op, e.value.minimum) == ("op3", 18)


def test_bad_arguments_raise_bad_input():
    with pytest.raises(BadInput, match="unknown target"):
        planner.plan(LIGHT[0], "M_R", target="tpu")
    with pytest.raises(BadInput):
        planner.plan(LIGHT[0], "lots")
    with pytest.raises(BadInput, match="cannot plan"):
        planner.plan(12345, "M_R")


def test_a_baseline_that_meets_the_bound_is_reported_optimal():
    # x is live while b runs (read by a and c): below 1,920 B every plan reloads it once
    g = build([("a", ["x"], ["y"]), ("b", ["y"], ["z"]), ("c", ["x", "z"], ["w"])],
              {"x": 640, "y": 640, "z": 640, "w": 64})
    target = planner.Target("t", 1 << 20, alignment=64, element_bytes=1)
    p = planner.plan(g, 1344, target=target, solver="baseline")  # the proof can only be the lower bound's
    s = p.solver
    assert (s.status, s.objective, s.bound, s.gap) == ("optimal", 640, 640, 0.0)
    assert s.name in registry.PORTFOLIOS["baseline"] and p.extra["bound"]["how"].startswith("lower bound")
    p = planner.plan(g, 1344, target=target)  # auto: a baseline ties exact's optimum and carries a proof
    assert (p.solver.name in registry.PORTFOLIOS["baseline"], p.solver.status, p.solver.bound) == (True, "optimal", 640)


def test_solver_progress_reports_become_lines_with_the_gap():
    lines: list[str] = []
    beside = [0]  # the lower bound computed beside the solvers, as it grows
    report = _relay("dnc", lines.append, [(500.0, "exact")], lambda: beside[0], time.perf_counter())
    report({"noncompulsory_bytes": 1000})
    report({"noncompulsory_bytes": 800, "bound": 600})
    beside[0] = 700
    report({"noncompulsory_bytes": 750})
    report({"noncompulsory_bytes": 0})
    assert lines == ["dnc: 1,000 B non-compulsory (gap 50.0%), 0 s", "dnc: 800 B non-compulsory (gap 25.0%), 0 s",
                     "dnc: 750 B non-compulsory (gap 6.7%), 0 s", "dnc: 0 B non-compulsory, 0 s"]
