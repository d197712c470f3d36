"""Design-space sweeps (issue 14): what `planner sweep` saves over planning each point alone,
and the traffic-against-budget curves of the zoo's human-designed networks.

compare: a sweep of `--models` (default r2plus1d_18 and densenet121, whose M_R and M_P
differ, so 8 points are 8 budgets) at `--points` budgets each, against the same budgets
as separate `planner plan MODEL --budget BYTES` CLI calls (subprocesses, `--jobs` at a
time, as `xargs -P` would run them), side by side in one run, same solver and time limit.
The sweep lowers each model and computes its bounds once; every CLI call starts an
interpreter, imports torch, lowers the model and computes the bounds again, and its time
limit pays for that lowering too (a sweep point's is all solving, so a time-limited
solver such as dnc can find less traffic in the sweep). Writes
benchmarks/results/sweep.json (both wall times, their ratio, every point's non-compulsory
bytes both ways).

zoo: `planner sweep` over every human-designed zoo model (not the NAS cells), the rows in
benchmarks/results/sweep_zoo.json and the curves in sweep_zoo.png.

    python benchmarks/sweep.py [--part compare|zoo|all] [--models r2plus1d_18,densenet121]
        [--points 8] [--time-limit 10] [--jobs N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, write  # noqa: E402
from planner import models  # noqa: E402
from planner.sweep import plot, sweep, to_json  # noqa: E402


def plan_cli(model: str, budget: int, solver: str, time_limit: float) -> dict:
    """One point as a user without `sweep` gets it: a fresh `planner plan` process."""
    cmd = [sys.executable, "-m", "planner", "plan", model, "--budget", str(budget), "--solver", solver,
           "--time-limit", str(time_limit), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def compare(names: list[str], points: int, solver: str, time_limit: float, jobs: int) -> dict:
    t0 = time.perf_counter()
    rows = sweep(names, points=points, solver=solver, time_limit=time_limit, jobs=jobs)
    sweep_seconds = time.perf_counter() - t0
    print(f"sweep: {len(rows)} points in {sweep_seconds:.1f} s", flush=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        alone = list(pool.map(lambda r: plan_cli(r["model"], r["budget_bytes"], solver, time_limit), rows))
    cli_seconds = time.perf_counter() - t0
    print(f"{len(rows)} separate `planner plan` calls, {jobs} at a time: {cli_seconds:.1f} s", flush=True)
    cases = [{"model": r["model"], "budget_bytes": r["budget_bytes"], "sweep_noncompulsory_bytes": r.get(
              "noncompulsory_bytes"), "sweep_status": r["status"], "sweep_reused_from": r.get("reused_from"),
              "cli_noncompulsory_bytes": a["noncompulsory_bytes"], "cli_status": a["status"],
              "sweep_point_seconds": r["seconds"], "cli_call_seconds": a["seconds"]} for r, a in zip(rows, alone)]
    same = sum(c["sweep_noncompulsory_bytes"] == c["cli_noncompulsory_bytes"] for c in cases)
    better = [c for c in cases if c["sweep_noncompulsory_bytes"] is not None
              and c["sweep_noncompulsory_bytes"] < c["cli_noncompulsory_bytes"]]
    worse = sum(c["sweep_noncompulsory_bytes"] is None or c["sweep_noncompulsory_bytes"] > c["cli_noncompulsory_bytes"]
                for c in cases)
    reused = sum(c["sweep_reused_from"] is not None for c in better)
    ratio = sweep_seconds / cli_seconds
    # `planner plan`'s time limit also pays for its lowering; a sweep point's is all solving
    print(f"ratio sweep / separate calls: {ratio:.2f} ({cli_seconds / sweep_seconds:.1f}x faster); non-compulsory "
          f"bytes: same at {same} of {len(cases)} points, less at {len(better)} ({reused} by a reused plan), "
          f"more at {worse}")
    return {"models": names, "points": points, "solver": solver, "time_limit": time_limit, "jobs": jobs,
            "sweep_seconds": round(sweep_seconds, 2), "cli_seconds": round(cli_seconds, 2),
            "ratio": round(ratio, 3), "same_points": same, "better_points": len(better), "reused_points": reused,
            "worse_points": worse, "cases": cases}


def zoo(points: int, solver: str, time_limit: float, jobs: int) -> None:
    names = [name for name, e in models.ZOO.items() if e.task != "nas"]
    t0 = time.perf_counter()
    rows = sweep(names, points=points, solver=solver, time_limit=time_limit, jobs=jobs)
    seconds = time.perf_counter() - t0
    command = (f"python benchmarks/sweep.py --part zoo --points {points} --solver {solver} "
               f"--time-limit {time_limit:g} --jobs {jobs}")
    path = write("sweep_zoo", {"command": command, "seconds": round(seconds, 1), **to_json(rows)})
    plot(rows, RESULTS / "sweep_zoo.png", title=f"human-designed zoo models, cosma-int8, {solver} "
         f"({time_limit:g} s per point)")
    failed = sum(r["status"] == "failed" for r in rows)
    print(f"zoo: {len(rows)} points of {len(names)} models ({failed} failed) in {seconds:.1f} s; wrote {path} "
          f"and {RESULTS / 'sweep_zoo.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("compare", "zoo", "all"), default="all")
    ap.add_argument("--models", default="r2plus1d_18,densenet121", help="zoo models for the comparison")
    ap.add_argument("--points", type=int, default=8)
    ap.add_argument("--solver", default="auto")
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per point (default 10)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if args.part in ("compare", "all"):
        result = compare(args.models.split(","), args.points, args.solver, args.time_limit, args.jobs)
        command = (f"python benchmarks/sweep.py --part compare --models {args.models} --points {args.points} "
                   f"--solver {args.solver} --time-limit {args.time_limit:g} --jobs {args.jobs}")
        print(f"wrote {write('sweep', {'command': command, **result})}")
    if args.part in ("zoo", "all"):
        zoo(args.points, args.solver, args.time_limit, args.jobs)


if __name__ == "__main__":
    main()
