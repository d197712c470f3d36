"""Pictures of a plan: the allocation map (steps x address, one rectangle per residency)
over the live bytes per step against the capacity.

Residencies come from the simulator's replay, so the picture shows what the plan does,
not what a solver meant. Colours: inputs/weights blue, activations orange, outputs
green; a residency that ends in a spill (stored, then freed while still needed) has a
thick red edge, one that arrived by a reload of an activation is hatched. Addresses and
live bytes read in B, KiB or MiB (whichever suits the capacity), not in bytes x 1e6.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, MultipleLocator  # noqa: E402

from planner.plan import Plan  # noqa: E402
from planner.runtime.simulator import simulate  # noqa: E402

COLOURS = {"input": "#4c78a8", "weight": "#72b7b2", "activation": "#f58518", "output": "#54a24b"}
SPILL_EDGE = 2.0  # points: a spill must be visible on a map of thousands of residencies
HATCH = "//"


def _unit(nbytes: int) -> tuple[str, int]:
    """The binary unit the axes read in: the largest that keeps the capacity above 1."""
    for name, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return name, scale
    return "B", 1


def _tick_step(top: float, scale: int) -> float:
    """Bytes between ticks: 1, 2 or 5 x 10^k of the unit, about six ticks up to `top`."""
    step = 10 ** math.floor(math.log10(max(top / scale, 1) / 6))
    for k in (1, 2, 5, 10):
        if top / scale / (k * step) <= 8:
            return k * step * scale
    return 10 * step * scale


def figure(plan: Plan) -> Figure:
    """The allocation map and live-bytes plot of `plan` (see the module docstring)."""
    report = simulate(plan, check_metrics=plan.metrics is not None)
    kinds = {t.name: t.kind for t in plan.tensors}
    later_loads = {(s.tensor, i) for i, s in enumerate(plan.steps) if s.kind == "load"}
    n = len(plan.steps)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 7), sharex=True, height_ratios=(3, 1))
    # A PatchCollection draws one hatch for all its patches (per-patch hatches are dropped),
    # so the reloaded residencies get a collection of their own.
    groups: dict[bool, tuple[list, list, list, list]] = {False: ([], [], [], []), True: ([], [], [], [])}
    for r in report.residencies:
        reloaded = r.arrived == "load" and kinds.get(r.tensor) in ("activation", "output")
        spilled = r.stored and any(t == r.tensor and i > r.end for t, i in later_loads)
        rects, faces, edges, widths = groups[reloaded]
        rects.append(Rectangle((r.start, r.offset), max(r.end - r.start, 0.8), r.nbytes))
        faces.append(COLOURS.get(kinds.get(r.tensor, "activation"), "#999999"))
        edges.append("red" if spilled else "black")
        widths.append(SPILL_EDGE if spilled else 0.4)
    for reloaded, (rects, faces, edges, widths) in groups.items():
        if rects:
            top.add_collection(PatchCollection(rects, facecolors=faces, edgecolors=edges, linewidths=widths,
                                               hatch=HATCH if reloaded else None, match_original=False))
    cap = plan.target.capacity
    height = max(cap, report.metrics.arena_bytes)
    unit, scale = _unit(height)
    in_unit = FuncFormatter(lambda v, _pos: f"{v / scale:,.4g}")
    top.yaxis.set_major_locator(MultipleLocator(_tick_step(height, scale)))
    bottom.yaxis.set_major_locator(MultipleLocator(_tick_step(height, scale)))
    top.axhline(cap, color="red", linestyle="--", linewidth=1)
    top.set_xlim(0, max(n, 1))
    top.set_ylim(0, height * 1.05)
    top.yaxis.set_major_formatter(in_unit)
    top.set_ylabel(f"address ({unit})")
    m = report.metrics
    top.set_title(f"{plan.model} on {plan.target.name}: capacity {cap:,} B, "
                  f"non-compulsory {m.noncompulsory_bytes:,} B, solver {plan.solver.name} ({plan.solver.status})")
    handles = [Patch(facecolor=c, label=k) for k, c in COLOURS.items()]
    handles += [Patch(facecolor="white", edgecolor="red", linewidth=SPILL_EDGE, label="spilled"),
                Patch(facecolor="white", edgecolor="black", hatch=HATCH, label="reloaded")]
    # Outside the axes, right of them: inside, it hid the boxes just under the capacity line.
    top.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    bottom.step(range(n), report.live_bytes, where="post", linewidth=0.8)
    bottom.axhline(cap, color="red", linestyle="--", linewidth=1, label="capacity")
    bottom.yaxis.set_major_formatter(in_unit)
    bottom.set_ylabel(f"live ({unit})")
    bottom.set_xlabel("step")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    fig.tight_layout()
    return fig


def draw(plan: Plan, path: str) -> None:
    """Writes `figure(plan)` to `path`; the suffix picks the format (.png, .svg, .pdf, ...)."""
    fig = figure(plan)
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
