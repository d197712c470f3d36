"""Offset allocation benchmark (issue 5): MiniMalloc's eleven challenging instances.

For each instance: the greedy heuristics, CP-SAT and the exact search deciding 1 MiB, then
the exact search minimising the capacity with its proven lower bound. `--ablation` also
runs the decision with each pruning switched off and records backtracks. Writes
benchmarks/results/alloc.json and prints markdown tables.

    python benchmarks/alloc.py [--minimize-time 60] [--cpsat-time 30] [--ablation] [--csv X.csv ...]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.solvers.alloc import (Params, best_fit, cpsat_solve, greedy_by_size, height, load,  # noqa: E402
                           minimize, read_csv, solve)
from planner.solvers.alloc_check import validate  # noqa: E402
from planner.solvers.alloc_search import _library  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "minimalloc" / "challenging"
MINIMALLOC_MS = {"A": 4910, "B": 3661, "C": 637, "D": 2674, "E": 3717, "F": 5358, "G": 1181, "H": 1808, "I": 3908,
                 "J": 883, "K": 628}  # upstream slides, p. 22
SWITCHES = ("canonical_only", "section_inference", "unallocated_floor", "monotonic_floor", "check_dominance",
            "dynamic_ordering", "decomposition", "symmetry_breaking", "hatless_pruning", "static_preordering",
            "restarts")


def greedy_row(buffers) -> dict:
    t = time.monotonic()
    heights = {"by_size_first_fit": height(buffers, greedy_by_size(buffers)),
               "best_fit_size": height(buffers, best_fit(buffers, "size")),
               "best_fit_lifetime": height(buffers, best_fit(buffers, "lifetime"))}
    return {"seconds": time.monotonic() - t, "heights": heights, "best": min(heights.values())}


def decide(buffers, capacity: int, params: Params) -> dict:
    r = solve(buffers, capacity, replace(params, greedy_first=False, cpsat_fallback=False))  # the search alone
    if r.offsets is not None:
        validate(buffers, r.offsets, capacity)
    return {"status": r.status, "seconds": r.seconds, "nodes": r.nodes, "backtracks": r.backtracks}


def instance_rows(name: str, buffers, capacity: int | None, args) -> dict:
    """Everything measured on one instance; capacity None skips the decision rows."""
    row = {"name": name, "buffers": len(buffers), "load": load(buffers), "greedy": greedy_row(buffers)}
    if capacity is not None:
        row["capacity"] = capacity
        row["exact"] = decide(buffers, capacity, Params(time_limit=args.decide_time))
        c = cpsat_solve(buffers, capacity, time_limit=args.cpsat_time)
        row["cpsat"] = {"status": c.status, "seconds": c.seconds}
        if args.ablation:
            row["ablation"] = {f: decide(buffers, capacity, Params(time_limit=args.ablation_time, **{f: False}))
                               for f in SWITCHES}
    m = minimize(buffers, Params(time_limit=args.minimize_time))
    validate(buffers, m.offsets, m.height)
    row["minimize"] = {"status": m.status, "height": m.height, "lower_bound": m.lower_bound, "seconds": m.seconds,
                       "nodes": m.nodes}
    print(f"{name}: {json.dumps({k: v for k, v in row.items() if k in ('exact', 'cpsat', 'minimize')})}",
          file=sys.stderr, flush=True)
    return row


def challenging(args) -> list[dict]:
    return [instance_rows(p.name[0], read_csv(p), 1 << 20, args) for p in sorted(DATA.glob("*.csv"))]


def csv_instances(paths: list[str], args) -> list[dict]:
    """Allocation instances written out from other plans (e.g. the zoo's exact plans):
    greedy and minimize only, since they carry no capacity of their own."""
    return [instance_rows(Path(p).stem, read_csv(p), None, args) for p in paths]


def tables(rows: list[dict]) -> str:
    out = ["| inst | buffers | LOAD | greedy / LOAD | CP-SAT 1 MiB | exact 1 MiB | MiniMalloc | minimize: capacity | "
           "lower bound | status | s |", "|" + "---|" * 11]
    for r in rows:
        ld = r["load"]
        cp = f"{r['cpsat']['status']} {r['cpsat']['seconds']:.2f} s" if "cpsat" in r else "-"
        ex = f"{r['exact']['status']} {r['exact']['seconds']:.3f} s" if "exact" in r else "-"
        mm = f"{MINIMALLOC_MS[r['name']] / 1000:.2f} s" if r["name"] in MINIMALLOC_MS and "exact" in r else "-"
        m = r["minimize"]
        out.append(f"| {r['name']} | {r['buffers']} | {ld:,} | {r['greedy']['best'] / ld:.3f} | {cp} | {ex} | {mm} | "
                   f"{m['height']:,} ({m['height'] / ld:.4f}x) | {m['lower_bound']:,} | {m['status']} | "
                   f"{m['seconds']:.2f} |")
    if any("ablation" in r for r in rows):
        out += ["", "Backtracks deciding 1 MiB with one technique off (T = time-out):", "",
                "| inst | all on | " + " | ".join(f"-{s}" for s in SWITCHES) + " |", "|" + "---|" * (len(SWITCHES) + 2)]
        for r in rows:
            if "ablation" in r:
                cells = [("T " if a["status"] == "timeout" else "") + f"{a['backtracks']:,}"
                         for a in r["ablation"].values()]
                out.append(f"| {r['name']} | {r['exact']['backtracks']:,} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decide-time", type=float, default=60.0, help="seconds per exact decision")
    ap.add_argument("--cpsat-time", type=float, default=30.0, help="seconds per CP-SAT decision")
    ap.add_argument("--minimize-time", type=float, default=60.0, help="seconds per exact minimisation")
    ap.add_argument("--ablation", action="store_true", help="also decide with each technique off")
    ap.add_argument("--ablation-time", type=float, default=10.0, help="seconds per ablation run")
    ap.add_argument("--csv", nargs="*", default=[], help="more instances (minimize only), e.g. from zoo plans")
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" / "alloc.json"))
    args = ap.parse_args(argv)
    engine = "C" if _library() is not None else "Python"  # compiles the C search before any timing
    rows = challenging(args) + csv_instances(args.csv, args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "search": engine, "settings": vars(args)}
    Path(args.output).write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    print(tables(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
