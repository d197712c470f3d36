"""Bad input, one corpus (issue 13): every case is a command line a user could type, and
each must end in ONE line on stderr starting with "planner: ", the documented exit code
(1 bad input or usage, 2 infeasible, 4 the plan breaks a rule), no traceback and no
output file. Files live in tests/data/bad_input/; edited plans are mutations of
tiny.plan.json (the plan `planner plan tiny.onnx --budget M_H` writes), listed below."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from planner.cli import main

DATA = Path(__file__).resolve().parent / "data" / "bad_input"
TINY, PLAN = DATA / "tiny.onnx", DATA / "tiny.plan.json"


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation that sets the field at a dotted path ("steps.0.offset") of a plan dict."""
    def apply(d: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            d = d[int(key)] if isinstance(d, list) else d[key]
        if isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return apply


def _zero_everything(d: dict) -> None:
    """Issue 13 item 11: capacity 0, element_bytes 0, every tensor 0 B, offsets 0."""
    d["target"].update(capacity=0, element_bytes=0)
    for t in d["tensors"]:
        t["nbytes"] = 0
    for s in d["steps"]:
        if s["kind"] == "load":
            s["offset"] = 0
        if s["kind"] == "compute":
            s["offsets"] = dict.fromkeys(s["offsets"], 0)
    d["metrics"] = None


# name: (mutation of tiny.plan.json, exit code, words the error must contain)
EDITED_PLANS = {
    "capacity is a string": (_set("target.capacity", "1MiB"), 1, "target.capacity"),
    "alignment 0": (_set("target.alignment", 0), 1, "alignment"),
    "offset is a string": (_set("steps.0.offset", "0"), 1, "steps[0].offset"),
    "nbytes is a float": (_set("tensors.0.nbytes", 6.5), 1, "tensors[0].nbytes"),
    "inputs is a string": (_set("ops.0.inputs", "x"), 1, "ops[0].inputs"),
    "offsets hold null": (_set("steps.1.offsets", {"h": None}), 1, "steps[1].offsets"),
    "seconds is a string": (_set("solver.seconds", "fast"), 1, "solver.seconds"),
    "everything zero": (_zero_everything, 4, "element_bytes"),
    "alignment 1": (_set("target.alignment", 1), 4, "alignment 1"),
    "tracks weights": (_set("target.track_weights", True), 4, "track_weights"),
}


@pytest.mark.parametrize("name", EDITED_PLANS)
def test_edited_plan(name, tmp_path, capsys):
    mutate, code, words = EDITED_PLANS[name]
    d = copy.deepcopy(json.loads(PLAN.read_text()))
    mutate(d)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(d))
    for argv in (["simulate", TINY, edited], ["show", edited, "-o", tmp_path / "p.png"],
                 ["export", edited, "-o", tmp_path / "t.json"]):
        if code == 4 and argv[0] != "simulate":
            continue  # without a model, show and export replay the plan as written
        got, line = _run(capsys, argv, tmp_path)
        assert got == code and words in line, (argv, line)


def test_capacity_other_than_budget_is_a_violation(tmp_path, capsys):
    """A plan whose capacity was multiplied by 4 replays fine on its own; `--budget` catches it."""
    d = json.loads(PLAN.read_text())
    d["target"]["capacity"] *= 4
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(d))
    for budget in ("128", "M_H"):
        code, line = _run(capsys, ["simulate", TINY, edited, "--budget", budget], tmp_path)
        assert code == 4 and "capacity 512 B" in line and "is 128 B" in line
    assert main(["simulate", str(TINY), str(PLAN), "--budget", "M_H"]) == 0  # the honest plan passes
    capsys.readouterr()


# name: (argv, exit code, words the error must contain); {tmp} is a fresh directory.
COMMANDS = {
    "plan -o under /proc": (["plan", TINY, "--budget", "M_H", "-o", "/proc/planner-test.json"], 1, "cannot write"),
    "plan -o under /sys": (["plan", TINY, "--budget", "M_H", "-o", "/sys/planner-test.json"], 1, "cannot write"),
    "show -o x.bmp": (["show", PLAN, "-o", "{tmp}/x.bmp"], 1, ".png"),
    "show -o x.txt": (["show", PLAN, "-o", "{tmp}/x.txt"], 1, ".svg"),
    "plan not UTF-8": (["simulate", TINY, DATA / "plan_not_utf8.json"], 1, "cannot read plan"),
    "plan is a list": (["show", DATA / "plan_list.json", "-o", "{tmp}/x.png"], 1, "not a planner-plan/1 plan"),
    "plan is an ONNX file": (["export", TINY, "-o", "{tmp}/t.json"], 1, "cannot read plan"),
    "alloc binary CSV": (["alloc", DATA / "binary.csv"], 1, "not a text CSV"),
    "alloc size 2^63": (["alloc", DATA / "huge.csv"], 1, "too large"),
    "alloc fixed offsets collide": (["alloc", DATA / "fixed_collide.csv"], 2, "f [0, 8) and g [4, 12)"),
    "time limit -5": (["plan", TINY, "--budget", "M_H", "--time-limit", "-5"], 1, "above 0"),
    "time limit nan": (["plan", TINY, "--budget", "M_H", "--time-limit", "nan"], 1, "finite"),
    "time limit inf": (["bounds", TINY, "--time-limit", "inf"], 1, "finite"),
    "alloc time limit 0": (["alloc", DATA / "fixed_collide.csv", "--time-limit", "0"], 1, "above 0"),
    "budget 2.001 B": (["plan", TINY, "--budget", "2.001B"], 1, "not a whole number"),
    "no broadcast": (["plan", DATA / "no_broadcast.onnx", "--budget", "1MiB"], 1, "[1,8,16,16] and [1,3,5,7]"),
    "budget below M_R": (["plan", TINY, "--budget", "127", "-o", "{tmp}/p.json"], 2, "M_R = 128 B, set by op 'first' (Relu;"),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_command(name, tmp_path, capsys):
    argv, code, words = COMMANDS[name]
    got, line = _run(capsys, argv, tmp_path)
    assert got == code and words in line, line


def _run(capsys, argv: list, tmp: Path) -> tuple[int, str]:
    """Runs the CLI; checks that the error is one line and that nothing was written;
    returns the exit code and the line."""
    before = set(tmp.iterdir())
    argv = [str(a).replace("{tmp}", str(tmp)) for a in argv]
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("planner: ") and "Traceback" not in err, err
    assert set(tmp.iterdir()) == before, "a failed command wrote a file"
    return code, lines[0]
