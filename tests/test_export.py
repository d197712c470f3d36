"""Plans in existing viewers: the Chrome/Perfetto trace, PyTorch's memory snapshot (read back
by torch's own memory_viz helpers) and the Netron-annotated ONNX copy; `planner export`."""
import json
import pickle
from pathlib import Path

import onnx
import pytest
from torch.cuda import _memory_viz

from planner.cli import main
from planner.ir import TARGETS
from planner.plan import Plan
from planner.problem import Problem
from planner.runtime.export import annotate_onnx, chrome_trace, memory_snapshot
from planner.runtime.simulator import simulate
from planner.solvers import baselines
from tests.graphs import build

RESNET = Path(__file__).resolve().parent.parent / "examples" / "resnet50.onnx"


@pytest.fixture(scope="module")
def spilling_plan() -> Plan:
    """A diamond whose long-lived branch must be spilled at this capacity."""
    g = build([("a", ["x"], ["p"]), ("b", ["p"], ["q"]), ("c", ["q"], ["r"]), ("d", ["r", "p"], ["y"])],
              {"x": 64, "p": 128, "q": 192, "r": 192, "y": 64})
    target = TARGETS["cosma-int8"].with_capacity(448)
    plan = baselines.solve(Problem(g, target), baselines.Params(order="file", replacement="belady"))
    plan.metrics = simulate(plan, g, target).metrics
    assert plan.metrics.noncompulsory_bytes > 0
    return plan


def test_trace_has_one_slice_per_residency_on_disjoint_tracks(spilling_plan):
    report = simulate(spilling_plan)
    events = chrome_trace(spilling_plan)["traceEvents"]
    slices = [e for e in events if e["ph"] == "X" and e["pid"] == 1]
    assert sorted((e["name"], e["ts"], e["args"]["offset"]) for e in slices) == sorted(
        (r.tensor, r.start, r.offset) for r in report.residencies)
    by_track: dict[int, list[tuple[int, int]]] = {}
    for e in slices:
        by_track.setdefault(e["tid"], []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_track.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    counters = [e["args"]["live"] for e in events if e["ph"] == "C"]
    assert counters == report.live_bytes
    dma = [e["name"] for e in events if e.get("tid") == 2 and e["ph"] == "X"]
    assert dma == [f"{s.kind} {s.tensor}" for s in spilling_plan.steps if s.kind in ("load", "store")]
    json.dumps(events)  # plain JSON


def test_snapshot_replays_to_the_live_bytes_in_torch_memory_viz(spilling_plan):
    snap = pickle.loads(pickle.dumps(memory_snapshot(spilling_plan), protocol=4))
    text = _memory_viz.trace(snap)  # torch's own reader of device_traces
    assert "cudaMalloc(0, " in text
    _memory_viz.segsum(snap)  # asserts that the blocks tile the segment
    live, peak = 0, 0
    for e in snap["device_traces"][0][1:]:
        live += e["size"] if e["action"] == "alloc" else -e["size"]
        peak = max(peak, live)
    assert peak == simulate(spilling_plan).metrics.peak_bytes


def test_annotated_onnx_carries_steps_and_offsets(tmp_path, capsys):
    plan_path = tmp_path / "p.json"
    assert main([ "plan", str(RESNET), "--budget", "M_R", "--solver", "baseline", "-o", str(plan_path)]) == 0
    out = tmp_path / "a.onnx"
    assert main(["export", str(plan_path), "-o", str(out), "--model", str(RESNET)]) == 0
    model = onnx.load(out)
    onnx.checker.check_model(model)
    plan = Plan.load(plan_path)
    steps = {s.op: i for i, s in enumerate(plan.steps) if s.kind == "compute"}
    annotated = {n.name: {p.key: p.value for p in n.metadata_props} for n in model.graph.node if n.metadata_props}
    assert {props["pkg.planner.op"] for props in annotated.values()} == set(steps)
    for props in annotated.values():
        assert props["pkg.planner.step"] == str(steps[props["pkg.planner.op"]])
    assert {p.key for p in model.metadata_props} >= {"pkg.planner.capacity", "pkg.planner.solver"}
    assert len(model.graph.initializer) == len(onnx.load(RESNET).graph.initializer)  # weights kept


def test_annotate_rejects_a_plan_of_another_model(spilling_plan):
    with pytest.raises(Exception, match="no node of the ONNX model matches"):
        annotate_onnx(onnx.load(RESNET), spilling_plan)


@pytest.mark.parametrize("argv, match", [
    (["-o", "{tmp}/x.txt"], "cannot tell the format"),
    (["-o", "{tmp}/x.onnx"], "needs --model"),
    (["-o", "/nonexistent/dir/t.json"], "does not exist"),
    (["-o", "{tmp}/x.onnx", "--model", "{tmp}/missing.onnx"], "cannot read it as ONNX"),
])
def test_export_bad_arguments(tmp_path, capsys, spilling_plan, argv, match):
    plan_path = tmp_path / "p.json"
    spilling_plan.save(plan_path)
    assert main(["export", str(plan_path), *(a.format(tmp=tmp_path) for a in argv)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob(".planner-*"))


def test_show_hatches_reloads_thickens_spills_and_keeps_the_legend_off_the_map(spilling_plan):
    """Issue 13 item 18: one PatchCollection dropped per-patch hatches; spill edges were
    0.4 pt; the legend sat over the boxes under the capacity line; the axis read bytes x 1e6."""
    from matplotlib.collections import PatchCollection

    from planner.runtime.show import SPILL_EDGE, figure

    report = simulate(spilling_plan)
    kinds = {t.name: t.kind for t in spilling_plan.tensors}
    reloads = [r for r in report.residencies if r.arrived == "load" and kinds[r.tensor] == "activation"]
    assert reloads  # the plan spills p and reloads it
    fig = figure(spilling_plan)
    top = fig.axes[0]
    collections = [c for c in top.collections if isinstance(c, PatchCollection)]
    hatched = [c for c in collections if c.get_hatch() == "//"]
    assert len(hatched) == 1 and len(hatched[0].get_paths()) == len(reloads)
    assert sum(len(c.get_paths()) for c in collections) == len(report.residencies)
    assert max(w for c in collections for w in c.get_linewidths()) == SPILL_EDGE
    fig.canvas.draw()
    legend = top.get_legend().get_window_extent()
    assert legend.x0 >= top.get_window_extent().x1  # beside the map, not on it
    assert top.get_ylabel() == "address (B)" and not top.yaxis.get_offset_text().get_text()
    plt_close(fig)


def test_show_axes_read_in_mib(spilling_plan):
    from planner.runtime.show import figure

    big = Plan.from_json({**spilling_plan.to_json(),
                          "target": {**spilling_plan.target.to_json(), "capacity": 3 * 2**20}, "metrics": None})
    fig = figure(big)
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert fig.axes[0].get_ylabel() == "address (MiB)" and "3" in labels
    assert not fig.axes[0].yaxis.get_offset_text().get_text()  # no "1e6" above the axis
    plt_close(fig)


def plt_close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
