"""Pictures of a plan: the allocation map (steps x address, one rectangle per residency)
over the live bytes per step against the capacity.

Residencies come from the simulator's replay, so the picture shows what the plan does,
not what a solver meant. Colours: inputs/weights blue, activations orange, outputs
green; a residency that ends in a spill (stored, then freed while still needed) has a
red edge, one that arrived by a reload of an activation is hatched.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from planner.plan import Plan  # noqa: E402
from planner.runtime.simulator import simulate  # noqa: E402

COLOURS = {"input": "#4c78a8", "weight": "#72b7b2", "activation": "#f58518", "output": "#54a24b"}


def draw(plan: Plan, path: str) -> None:
    """Writes the allocation map and live-bytes plot of `plan` to `path` (.png/.svg/.pdf)."""
    report = simulate(plan, check_metrics=plan.metrics is not None)
    kinds = {t.name: t.kind for t in plan.tensors}
    later_loads = {(s.tensor, i) for i, s in enumerate(plan.steps) if s.kind == "load"}
    n = len(plan.steps)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True, height_ratios=(3, 1))
    rects, faces, edges, hatches = [], [], [], []
    for r in report.residencies:
        reloaded = r.arrived == "load" and kinds.get(r.tensor) in ("activation", "output")
        spilled = r.stored and any(t == r.tensor and i > r.end for t, i in later_loads)
        rects.append(Rectangle((r.start, r.offset), max(r.end - r.start, 0.8), r.nbytes))
        faces.append(COLOURS.get(kinds.get(r.tensor, "activation"), "#999999"))
        edges.append("red" if spilled else "black")
        hatches.append("//" if reloaded else "")
    for rect, hatch in zip(rects, hatches):
        rect.set_hatch(hatch)
    top.add_collection(PatchCollection(rects, facecolors=faces, edgecolors=edges, linewidths=0.4, match_original=False))
    top.axhline(plan.target.capacity, color="red", linestyle="--", linewidth=1)
    top.set_xlim(0, max(n, 1))
    top.set_ylim(0, max(plan.target.capacity, report.metrics.arena_bytes) * 1.05)
    top.set_ylabel("address (bytes)")
    m = report.metrics
    top.set_title(f"{plan.model} on {plan.target.name}: capacity {plan.target.capacity:,} B, "
                  f"non-compulsory {m.noncompulsory_bytes:,} B, solver {plan.solver.name} ({plan.solver.status})")
    handles = [Patch(facecolor=c, label=k) for k, c in COLOURS.items()]
    handles += [Patch(facecolor="white", edgecolor="red", label="spilled"),
                Patch(facecolor="white", edgecolor="black", hatch="//", label="reloaded")]
    top.legend(handles=handles, loc="upper right", fontsize=7, ncol=3)
    bottom.step(range(n), report.live_bytes, where="post", linewidth=0.8)
    bottom.axhline(plan.target.capacity, color="red", linestyle="--", linewidth=1, label="capacity")
    bottom.set_ylabel("live bytes")
    bottom.set_xlabel("step")
    bottom.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
