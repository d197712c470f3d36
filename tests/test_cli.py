"""The command line: summaries, plan files the simulator accepts, and one-line errors
with documented exit codes for every kind of bad input (issue 2)."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from planner.cli import main
from planner.errors import BadInput
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
    assert code == 2 and "M_R = 2408448 B" in line and "set by op 'n14' (Sum;" in line
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


# -- issue 13: a user's first hour ------------------------------------------------------

SLOW_SOLVE = '''
import random, sys
import planner.cli as cli
from planner.solvers.exact import backends

def slow(args):
    """A market-split MIP (4 rows, 30 binaries): HiGHS needs far more than a minute."""
    rng, model = random.Random(1), backends.Model()
    xs = [model.var(f"x{j}") for j in range(30)]
    for i in range(4):
        a = [rng.randint(0, 99) for _ in range(30)]
        model.row(f"r{i}", dict(zip(xs, a)), lo=sum(a) // 2, hi=sum(a) // 2)
    backends.solve(model, "highs", 120.0, 1, None, isolate=True)
    return 0

cli.cmd_solvers = slow  # `planner solvers` now runs the slow solve in the isolated child
sys.exit(cli.main(["solvers"]))
'''


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
@pytest.mark.parametrize("how", ["SIGINT to the parent", "Ctrl-C (SIGINT to the group)", "SIGKILL to the parent"])
def test_ctrl_c_one_line_130_and_the_isolated_child_dies_with_its_parent(how, tmp_path):
    import signal
    import time

    # TMPDIR: a parent killed by SIGKILL cannot remove the child's temporary directory.
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SOLVE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    deadline = time.monotonic() + 60
    while not (kids := _children(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert kids, "the isolated HiGHS child never started"
    time.sleep(1.0)  # let the child import highspy and start solving
    if how.startswith("SIGINT"):
        os.kill(proc.pid, signal.SIGINT)
    elif how.startswith("Ctrl-C"):
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    time.sleep(0.5)
    assert not any(_alive(k) for k in kids), f"the HiGHS child outlived its parent ({how})"
    if how.startswith("SIGKILL"):
        return
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and err.startswith("planner: interrupted after"), err


def test_json_is_clean_when_highs_runs():
    """Item 5: HiGHS prints its banner from C++ to fd 1 when the first solver object is
    built; a fresh process (the banner shows once per process) must still print JSON only."""
    r = subprocess.run([sys.executable, "-m", "planner", "plan", LIGHT / "light_shufflenet.onnx", "--budget", "M_R",
                        "--solver", "exact", "--time-limit", "20", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["solver"] == "exact" and "HiGHS" not in r.stdout + r.stderr


def test_broken_pipe_exits_quietly():
    """Item 13: `planner ... | head -1`: no 'internal error', no traceback, exit 141 (SIGPIPE)."""
    proc = subprocess.Popen([sys.executable, "-m", "planner", "solvers"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == "", err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_updating_line_on_a_terminal_only(capsys, monkeypatch, tmp_path):
    """Item 7: on a terminal, the solver's progress messages rewrite one stderr line that
    is erased before the summary; piped, or with --json, stderr stays empty."""
    from planner import api

    real_plan = api.plan

    def plan(*a, progress=None, **k):  # what helper `bounds` sends while the solve improves
        for msg in ("dnc: 1,234,560 B non-compulsory (gap 10.9%), 23 s", "exact: 0 B non-compulsory, 24 s"):
            progress(msg)
        return real_plan(*a, progress=progress, **k)

    monkeypatch.setattr(api, "plan", plan)
    argv = ["plan", RESNET, "--budget", "M_H"]
    code, out, err = cli(capsys, *argv)  # capsys: not a terminal
    assert code == 0 and err == "" and out.startswith("model ")
    tty_out, tty_err = _Terminal(), _Terminal()
    monkeypatch.setattr(sys, "stdout", tty_out)
    monkeypatch.setattr(sys, "stderr", tty_err)
    assert main([str(a) for a in argv]) == 0
    assert main([str(a) for a in argv + ["--json"]]) == 0
    shown = tty_err.getvalue()
    assert "\r" in shown and "\n" not in shown.rstrip("\n")  # one line, rewritten in place
    assert "dnc: 1,234,560 B non-compulsory (gap 10.9%), 23 s" in shown and "exact: 0 B" in shown
    assert shown.endswith("\r") or shown.endswith("\x1b[A")  # erased before the summary
    summary, json_line = tty_out.getvalue().rsplit("\n", 2)[0], tty_out.getvalue().splitlines()[-1]
    assert "model " in summary and json.loads(json_line)["budget_bytes"] > 0


def test_output_files_follow_the_umask(capsys, tmp_path):
    """Item 19: -o gave 0600 (mkstemp) where Plan.save gives 0644."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "p.json"
        assert cli(capsys, "plan", RESNET, "--budget", "M_H", "-o", out)[0] == 0
        assert cli(capsys, "export", out, "-o", tmp_path / "t.json")[0] == 0
        Plan.load(out).save(tmp_path / "saved.json")
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
        assert modes == {"p.json": 0o644, "t.json": 0o644, "saved.json": 0o644}
    finally:
        os.umask(old)


def test_op_types_in_names_and_one_tensor_count(capsys):
    """Items 8 and 10: 'Sum n14', not 'n14'; bounds and plan count the same tensors."""
    code, text, _ = cli(capsys, "bounds", RESNET, "--json")
    b = json.loads(text)
    code2, text, _ = cli(capsys, "plan", RESNET, "--budget", "M_H", "--json")
    p = json.loads(text)
    assert code == code2 == 0 and b["M_R_op"] == p["M_R_op"] == "n14" and b["M_R_op_type"] == p["M_R_op_type"] == "Sum"
    assert b["tensors"] == p["tensors"] == 90
    code, text, _ = cli(capsys, "bounds", RESNET)
    assert "set by Sum n14" in text and "90 tensors in fast memory" in text


def test_exact_decimal_sizes():
    """Item 15: floats made 2.01 GB fractional and rounded 10^30."""
    from planner.units import parse_bytes

    assert parse_bytes("2.01GB") == 2_010_000_000 and parse_bytes("0.1 KB") == 100
    assert parse_bytes("1" + "0" * 30) == 10**30 and parse_bytes("1.5KiB") == 1536
    with pytest.raises(BadInput, match="whole number"):
        parse_bytes("1.000000000000000001")  # a float reads it as exactly 1.0


@pytest.mark.slow  # a dozen fresh processes: about a minute
def test_readme_commands_run_as_written(tmp_path):
    """Item 9: every `planner ...` line of README's Use section runs as written, in order,
    from a directory that holds the repository's examples/ and benchmarks/ (files the
    commands write land there, not in the clone)."""
    readme = (ROOT / "README.md").read_text()
    use = readme.split("## Use", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("  #")[0].split() for line in use.splitlines() if line.startswith("planner ")]
    assert len(commands) >= 8
    for folder in ("examples", "benchmarks"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    for argv in commands:
        r = subprocess.run([sys.executable, "-m", "planner", *argv[1:]], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, (argv, r.stderr)
