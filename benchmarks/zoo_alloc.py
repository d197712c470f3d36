"""Allocation instances from zoo plans, and how the exact allocator packs them (issue 5).

Each of COSMA's ten human-designed networks is planned at M_H (int8) by the exact joint
solver (issue 4; `--planner baseline` takes the best COSMA baseline instead); the
simulator's replay gives every residency's [start, end) steps and bytes, written as a
MiniMalloc CSV under benchmarks/results/zoo_alloc/. Each instance is then minimised by the
exact search: the capacity found against LOAD (the most bytes live at once) and the proven
lower bound (LOAD with alignment padding, `alloc.aligned_load`).

    python benchmarks/zoo_alloc.py [--time-limit 30] [--planner exact|baseline] [--plan-time-limit 60]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, write  # noqa: E402
from planner.api import plan  # noqa: E402
from planner.runtime.simulator import simulate  # noqa: E402
from planner.solvers import alloc  # noqa: E402

HUMAN = ("resnet50", "densenet121", "resnext50_32x4d", "r2plus1d_18", "s3d", "fcn_resnet50",
         "lraspp_mobilenet_v3_large", "deeplabv3_resnet50", "transformer", "vit_b_16")


def instance(name: str, folder: Path, solver: str, time_limit: float) -> tuple[Path, dict]:
    p = plan(name, "M_H", solver=solver, time_limit=time_limit)
    report = simulate(p)
    rows = [f"{r.tensor}@{r.start},{r.start},{max(r.end, r.start + 1)},{r.nbytes},{p.target.alignment}"
            for r in report.residencies]  # no offset column: read back, it would fix the offsets
    path = folder / f"{name}.csv"
    path.write_text("id,lower,upper,size,alignment\n" + "\n".join(rows) + "\n")
    return path, {"model": name, "planned_by": p.solver.name, "plan_status": p.solver.status,
                  "budget": p.target.capacity, "plan_arena": p.metrics.arena_bytes,
                  "plan_noncompulsory": p.metrics.noncompulsory_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-limit", type=float, default=30.0, help="seconds per minimisation")
    ap.add_argument("--planner", default="exact", help="solver that makes the plans (default exact)")
    ap.add_argument("--plan-time-limit", type=float, default=60.0, help="seconds per plan")
    args = ap.parse_args()
    folder = RESULTS / "zoo_alloc"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in HUMAN:
        path, row = instance(name, folder, args.planner, args.plan_time_limit)
        buffers = alloc.read_csv(path)
        t0 = time.perf_counter()
        r = alloc.minimize(buffers, alloc.Params(time_limit=args.time_limit))
        alloc.validate(buffers, r.offsets, r.height)
        row.update(buffers=len(buffers), load=r.load, capacity=r.height, lower_bound=r.lower_bound,
                   status=r.status, seconds=round(time.perf_counter() - t0, 3), csv=str(path.relative_to(RESULTS)))
        rows.append(row)
        print(f"{name}: {r.status} {r.height} / LOAD {r.load}", file=sys.stderr, flush=True)
    write("zoo_alloc", {"time_limit": args.time_limit, "planner": args.planner, "rows": rows})
    print("| model | plan (status) | buffers | LOAD (B) | lower bound (B) | capacity found (B) | capacity / LOAD | status "
          "| s | arena in the plan (B) |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['planned_by']} ({r['plan_status']}) | {r['buffers']} | {r['load']:,} | "
              f"{r['lower_bound']:,} | {r['capacity']:,} | {r['capacity'] / r['load']:.5f} | {r['status']} | "
              f"{r['seconds']} | {r['plan_arena']:,} |")


if __name__ == "__main__":
    main()
