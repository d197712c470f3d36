"""The command line: summaries, plan files the simulator accepts, and one-line errors
with documented exit codes for every kind of bad input (issue 2)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from planner.cli import main
from planner.plan import Plan

ROOT = Path(__file__).resolve().parent.parent
RESNET = ROOT / "examples" / "resnet50.onnx"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("planner: "), err
    assert "Traceback" not in err
    return lines[0]


def tiny_model(path, *, op_type="Relu", domain="", batch: int | str = 1):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])
    node = helper.make_node(op_type, ["x"], ["y"], name="the_node", domain=domain)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph([node], "tiny", [x], [y]), opset_imports=opsets)
    onnx.save(model, path)
    return path


def test_plan_writes_a_plan_the_simulator_accepts(capsys, tmp_path):
    out = tmp_path / "p.json"
    code, text, _ = cli(capsys, "plan", RESNET, "--budget", "M_H", "-o", out)
    assert code == 0 and "non-compulsory" in text and "M_R / M_H / M_P" in text
    plan = Plan.load(out)
    code, text, _ = cli(capsys, "simulate", RESNET, out, "--json")
    replay = json.loads(text)
    assert code == 0 and replay["valid"]
    for field in ("traffic_bytes", "compulsory_bytes", "noncompulsory_bytes", "peak_bytes", "arena_bytes"):
        assert replay[field] == getattr(plan.metrics, field)


def test_json_summary_is_one_object(capsys):
    code, text, _ = cli(capsys, "plan", RESNET, "--budget", "3MiB", "--json")
    d = json.loads(text)
    assert code == 0 and d["budget_bytes"] == 3 * 2**20
    assert d["traffic_bytes"] == d["compulsory_bytes"] + d["noncompulsory_bytes"]
    assert d["M_R"] <= d["M_H"] <= d["M_P"]


def test_bounds_and_solvers(capsys):
    code, text, _ = cli(capsys, "bounds", RESNET, "--json")
    d = json.loads(text)
    assert code == 0 and d["M_R"] == 3 * 56 * 56 * 256  # the residual Add at int8, BN and ReLU fused
    code, text, _ = cli(capsys, "solvers")
    assert code == 0 and "file-belady" in text and "cosma-int8-p" in text


def test_show_draws_a_png(capsys, tmp_path):
    plan = tmp_path / "p.json"
    assert cli(capsys, "plan", LIGHT / "light_densenet121.onnx", "--budget", "M_R", "-o", plan)[0] == 0
    code, _, _ = cli(capsys, "show", plan, "-o", tmp_path / "p.png")
    assert code == 0 and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_budget_below_m_r_exits_2_naming_op_and_minimum(capsys, tmp_path):
    out = tmp_path / "p.json"
    code, _, err = cli(capsys, "plan", RESNET, "--budget", "1MiB", "-o", out)
    line = one_line_error(err)
    assert code == 2 and "M_R = 2,408,448 B" in line and "set by op Sum n14" in line
    assert not out.exists()


@pytest.mark.parametrize("budget", ["3 parsecs", "2MiBs", "-5", "1.5B", "lots"])
def test_bad_budget_units_exit_1(capsys, budget):
    code, _, err = cli(capsys, "plan", RESNET, "--budget", budget)
    assert code == 1 and one_line_error(err)


def test_unwritable_output_fails_before_solving(capsys, tmp_path):
    code, _, err = cli(capsys, "plan", RESNET, "--budget", "M_R", "-o", tmp_path / "missing" / "p.json")
    assert code == 1 and "does not exist" in one_line_error(err)
    code, _, err = cli(capsys, "plan", RESNET, "--budget", "M_R", "-o", tmp_path)
    assert code == 1 and "directory" in one_line_error(err)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert cli(capsys, "plan", RESNET, "--budget", "M_R", "-o", ro / "p.json")[0] == 1


def test_truncated_and_garbage_onnx_exit_1(capsys, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(RESNET.read_bytes()[: RESNET.stat().st_size // 2])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a model" * 100)
    for path in (truncated, garbage, tmp_path / "missing.onnx"):
        code, _, err = cli(capsys, "plan", path, "--budget", "2MiB")
        assert code == 1 and path.name in one_line_error(err)


def test_unknown_op_is_named(capsys, tmp_path):
    path = tiny_model(tmp_path / "custom.onnx", op_type="FancyOp", domain="com.example")
    code, _, err = cli(capsys, "plan", path, "--budget", "1MiB")
    assert code == 1 and "FancyOp" in one_line_error(err)


def test_dynamic_shape_needs_a_value(capsys, tmp_path):
    path = tiny_model(tmp_path / "dynamic.onnx", batch="batch")
    code, _, err = cli(capsys, "plan", path, "--budget", "1MiB")
    line = one_line_error(err)
    assert code == 1 and "'x'" in line and "--shape" in line
    code, text, _ = cli(capsys, "plan", path, "--budget", "1MiB", "--shape", "x=2x4", "--json")
    assert code == 0 and json.loads(text)["compulsory_bytes"] == 2 * 4 * 2  # int8: x in, y out


def test_bad_shape_flag_and_unknown_target_and_solver(capsys):
    assert cli(capsys, "plan", RESNET, "--budget", "M_R", "--shape", "x=1xfoo")[0] == 1
    code, _, err = cli(capsys, "plan", RESNET, "--budget", "M_R", "--target", "tpu-v9")
    assert code == 1 and "cosma-int8" in one_line_error(err)
    code, _, err = cli(capsys, "plan", RESNET, "--budget", "M_R", "--solver", "magic")
    assert code == 1 and "file-belady" in one_line_error(err)


def test_simulate_rejects_a_broken_plan_with_exit_4(capsys, tmp_path):
    out = tmp_path / "p.json"
    assert cli(capsys, "plan", RESNET, "--budget", "M_H", "-o", out)[0] == 0
    d = json.loads(out.read_text())
    first_compute = next(s for s in d["steps"] if s["kind"] == "compute")
    d["steps"].remove(first_compute)
    out.write_text(json.dumps(d))
    code, _, err = cli(capsys, "simulate", RESNET, out)
    assert code == 4 and "not resident" in one_line_error(err)
    d["format"] = "planner-plan/99"
    out.write_text(json.dumps(d))
    code, _, err = cli(capsys, "simulate", RESNET, out)
    assert code == 1 and "planner-plan/1" in one_line_error(err)


def test_console_entry_point_exit_codes_and_no_traceback(tmp_path):
    """The real process: usage errors exit 1 (argparse's 2 would read as 'infeasible')."""
    run = lambda *a: subprocess.run([sys.executable, "-m", "planner", *map(str, a)], capture_output=True, text=True)
    r = run("plan", RESNET)  # --budget missing
    assert r.returncode == 1 and "--budget" in r.stderr
    r = run("plan", RESNET, "--budget", "100KiB")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run("--help")
    assert r.returncode == 0 and "exit codes" in r.stdout


def test_zoo_list_and_export(capsys, tmp_path):
    code, text, _ = cli(capsys, "zoo", "list", "mobilenet_v2", "--json")
    row = json.loads(text)
    assert code == 0 and row["params"] == 3_504_872 and row["M_R"] <= row["M_P"]
    assert row["M_R"] == 112 * 112 * 96 + 56 * 56 * 96  # the first stride-2 depthwise conv, int8
    code, _, err = cli(capsys, "zoo", "export", "no_such_net", "-o", tmp_path / "x.onnx")
    assert code == 1 and "resnet50" in one_line_error(err)
    code, _, err = cli(capsys, "zoo", "export", "mobilenet_v2", "-o", tmp_path / "x.onnx", "--batch", "0")
    assert code == 1 and "batch" in one_line_error(err) and not (tmp_path / "x.onnx").exists()
