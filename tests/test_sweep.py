"""Design-space sweeps (issue 14): budgets, monotone rows, the local and Ray engines giving
the same rows, failures costing one row, Ctrl-C keeping what finished, the CLI's files."""
from __future__ import annotations

import csv
import importlib
import io
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import onnx
import pytest

import planner
from planner.bounds import Budgets
from planner.cli import main
from planner.errors import BadInput
from planner.sweep import FIELDS, budget_points, monotone, parse_budgets, sweep, to_csv
from tests import sweep_faults
from tests.graphs import build

SWEEP = importlib.import_module("planner.sweep")  # the module (`planner.sweep` is the function)
SHUFFLENET = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_shufflenet.onnx"


def fork_graph():
    """Two branches from x that each hold a big tensor: M_R (320 B, op a) < M_P (384 B); sizes are
    multiples of the target's 64-byte alignment."""
    rows = [("a", ["x"], ["p"]), ("b", ["x"], ["q"]), ("c", ["p"], ["r"]), ("d", ["q"], ["s"]),
            ("e", ["r", "s"], ["y"])]
    return build(rows, {"x": 64, "p": 256, "q": 256, "r": 64, "s": 64, "y": 64}, name="fork")


def budgets(m_r: int, m_p: int) -> Budgets:
    return Budgets(m_r, "op", m_p, True, (m_r + m_p) // 2, 0, [])


def comparable(rows):
    """Rows without what depends on where and how fast they ran."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "engine", "machine")} for r in rows]


# -- budgets -----------------------------------------------------------------------------

def test_budget_list_parses_sizes_and_reference_names():
    assert parse_budgets("M_R, 1.5MiB ,m_p,4096,M-H") == ["M_R", 1572864, "M_P", 4096, "M_H"]
    for bad in ("M_R,,M_P", "2 parsecs", "M_X"):
        with pytest.raises(BadInput):
            parse_budgets(bad)


def test_points_run_from_m_r_to_m_p_both_included_and_merge_duplicates():
    assert budget_points(budgets(100, 200), points=5) == [100, 125, 150, 175, 200]
    assert budget_points(budgets(100, 107), points=8) == list(range(100, 108))
    assert budget_points(budgets(64, 64), points=8) == [64]  # M_R = M_P: one point
    assert budget_points(budgets(100, 200), budgets=["M_P", 120, "M_R", "M_H", 150]) == [100, 120, 150, 200]
    with pytest.raises(BadInput):
        budget_points(budgets(100, 200), points=1)


# -- monotone rows -----------------------------------------------------------------------

def row(budget: int, value: int | None, bound: int | None = None, status: str = "feasible") -> dict:
    if value is None:
        return {"model": "m", "budget_bytes": budget, "status": "failed", "error": "worker died"}
    return {"model": "m", "budget_bytes": budget, "noncompulsory_bytes": value, "traffic_bytes": 1000 + value,
            "peak_bytes": budget, "status": status, "bound": bound, "gap": None, "solver": f"s{budget}"}


def test_a_larger_budget_reuses_a_smaller_budgets_better_plan_and_says_so():
    rows = monotone([row(300, 0, 0, "optimal"), row(100, 50, 20), row(200, 80, 30), row(250, None)])
    by = {r["budget_bytes"]: r for r in rows}
    assert [r["budget_bytes"] for r in rows] == [100, 200, 250, 300]
    assert by[200]["noncompulsory_bytes"] == 50 and by[200]["traffic_bytes"] == 1050
    assert by[200]["reused_from"] == 100 and by[200]["solver"] == "s100" and by[200]["peak_bytes"] == 100
    assert by[200]["gap"] == pytest.approx((50 - 30) / 50) and by[200]["status"] == "feasible"
    # the bound at 200 B bounds 100 B too (optimal traffic never grows with the budget)
    assert by[100]["bound"] == 30 and by[100]["bound_from"] == 200 and "reused_from" not in by[100]
    assert by[250]["status"] == "failed" and "noncompulsory_bytes" not in by[250]  # a failed point stays failed
    assert "reused_from" not in by[300] and "bound_from" not in by[300]
    values = [r["traffic_bytes"] for r in rows if "traffic_bytes" in r]
    assert values == sorted(values, reverse=True)


def test_a_reused_plan_that_meets_the_bound_is_optimal():
    rows = monotone([row(100, 40, 40, "optimal"), row(200, 70, 40)])
    assert rows[1]["noncompulsory_bytes"] == 40 and rows[1]["status"] == "optimal" and rows[1]["gap"] == 0.0


# -- the sweep ---------------------------------------------------------------------------

def test_sweep_rows_equal_separate_plans_and_fall_with_the_budget():
    g = fork_graph()
    rows = planner.sweep([g], points=3, solver="exact", time_limit=20, jobs=2)
    assert [r["budget_bytes"] for r in rows] == [320, 352, 384]
    assert rows[0]["budget_names"] == ["M_R"] and rows[-1]["budget_names"] == ["M_P"]
    for r in rows:
        assert set(FIELDS) >= set(r) and r["model"] == "fork" and r["engine"] == "local" and r["machine"]
        p = planner.plan(g, r["budget_bytes"], solver="exact", time_limit=20)
        assert (r["noncompulsory_bytes"], r["traffic_bytes"], r["peak_bytes"]) == (
            p.metrics.noncompulsory_bytes, p.metrics.traffic_bytes, p.metrics.peak_bytes)
        assert r["status"] == "optimal" and r["bound"] == r["noncompulsory_bytes"] and r["gap"] == 0.0
        assert r["peak_bytes"] <= r["budget_bytes"]
    assert rows[0]["noncompulsory_bytes"] > 0 and rows[-1]["noncompulsory_bytes"] == 0  # M_P moves nothing extra
    traffic = [r["traffic_bytes"] for r in rows]
    assert traffic == sorted(traffic, reverse=True)


def test_a_budget_below_m_r_is_an_infeasible_row():
    rows = sweep([fork_graph()], budgets="64,M_P", solver="baseline", jobs=1)
    assert [r["status"] for r in rows] == ["infeasible", "optimal"]  # M_P: no spill is needed, the bound 0 proves it
    assert "below M_R = 320 B" in rows[0]["error"]


def test_local_and_ray_engines_give_the_same_rows():
    import ray  # in the test extra: a missing Ray fails here, it is not skipped
    g = fork_graph()
    local = sweep([g, SHUFFLENET], points=3, solver="exact", time_limit=20, jobs=2)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        remote = sweep([g, SHUFFLENET], points=3, solver="exact", time_limit=20, engine="ray")
    finally:
        ray.shutdown()
    assert {r["engine"] for r in remote} == {"ray"} and all(r["machine"] for r in remote)
    assert comparable(local) == comparable(remote) and len(local) == 6


@pytest.mark.parametrize("engine", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_worker_that_dies_hangs_or_raises_costs_only_its_row(monkeypatch, engine):
    monkeypatch.setattr(SWEEP, "solve_point", sweep_faults.point)
    t0 = time.perf_counter()
    rows = sweep([fork_graph()], budgets="M_R,321,M_H,M_P", solver="baseline", engine=engine, jobs=4, task_timeout=8)
    assert time.perf_counter() - t0 < 60
    by = {r["budget_bytes"]: r for r in rows}
    # a planned row as usual: the bound (its position rows) proves the baseline plan
    assert by[320]["status"] == "optimal" and by[320]["noncompulsory_bytes"] > 0
    assert by[321]["status"] == "failed" and by[321]["error"] == "RuntimeError: solver bug"
    died = "worker died (SIGKILL)" if engine == "local" else "worker died (WorkerCrashedError)"
    assert by[352]["status"] == "failed" and by[352]["error"].startswith(died)
    assert by[384]["status"] == "failed" and by[384]["error"] == "timed out after 8 s"
    assert all("traffic_bytes" not in by[b] for b in (321, 352, 384))


def test_the_ray_engine_without_ray_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(BadInput, match=r"pip install planner\[ray\]"):
        sweep([fork_graph()], engine="ray")
    code = main(["sweep", str(SHUFFLENET), "--engine", "ray", "-o", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == "planner: error: --engine ray needs Ray: pip install planner[ray]"
    assert not (tmp_path / "s.json").exists()


def test_an_unreachable_cluster_is_a_one_line_error_not_a_wait(capsys, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    code = main(["sweep", str(SHUFFLENET), "--engine", "ray", "--address", f"127.0.0.1:{port}", "-o",
                 str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"planner: error: cannot reach the Ray cluster at 127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 15


# -- the command line --------------------------------------------------------------------

def test_cli_writes_json_csv_and_plot(capsys, tmp_path):
    out, table, image = tmp_path / "s.json", tmp_path / "s.csv", tmp_path / "s.png"
    code = main(["sweep", str(SHUFFLENET), "--points", "3", "--solver", "baseline", "--jobs", "2", "-o", str(out),
                 "--csv", str(table), "--plot", str(image)])
    text, err = capsys.readouterr()
    assert code == 0 and err == ""  # no progress when stdout is not a terminal
    assert "3 points (0 failed)" in text and "shufflenet" in text
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 3 and all(list(r) == list(FIELDS) for r in rows)
    assert rows[0]["budget_bytes"] == rows[0]["M_R"] and rows[-1]["budget_bytes"] == rows[-1]["M_P"]
    lines = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [int(r["budget_bytes"]) for r in lines] == [r["budget_bytes"] for r in rows]
    assert [int(r["traffic_bytes"]) for r in lines] == [r["traffic_bytes"] for r in rows]
    assert table.read_text() == to_csv(rows)
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 10_000


def test_cli_shows_points_done_on_a_terminal(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code = main(["sweep", str(SHUFFLENET), "--budgets", "M_R,M_P", "--solver", "baseline", "-o",
                 str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert code == 0 and "2/2" in err


def test_ctrl_c_writes_the_points_that_finished(capsys, tmp_path, monkeypatch):
    out = tmp_path / "s.json"
    from planner import cli

    def ctrl_c_after_one(self, done, total, message):
        if done == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C, once one point is done
            time.sleep(1)

    monkeypatch.setattr(cli._Progress, "count", ctrl_c_after_one)
    # Python's own Ctrl-C handler, whatever this process inherited (a background job starts
    # with SIGINT ignored) or an earlier test left (ray.shutdown restores the default action).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = main(["sweep", str(SHUFFLENET), "--points", "6", "--solver", "baseline", "--jobs", "1", "-o", str(out)])
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    saved = json.loads(out.read_text())
    assert code == 130 and "interrupted" in err and "wrote the 1 finished points" in err
    assert saved["interrupted"] is True and len(saved["rows"]) == 1 and saved["rows"][0]["status"] == "optimal"


def test_cli_usage_errors_exit_1(capsys, tmp_path):
    out = str(tmp_path / "s.json")
    for argv in (["--points", "1"], ["--solver", "magic"], ["--budgets", "M_R,2 parsecs"], ["--address", "auto"],
                 ["--jobs", "0"], ["--plot", str(tmp_path / "s.bmp")], ["--points", "3", "--budgets", "M_R"]):
        code = main(["sweep", str(SHUFFLENET), "-o", out, *argv])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("planner: ") and "Traceback" not in err, (argv, err)
    assert not Path(out).exists()
