"""Reference budgets of every zoo model at its published input size (issue 3).

For each model, lowered by the fx route with the target's defaults (int8, BN/ReLU fused,
attention decomposed): ops, tensors, M_R, M_P (exact, or the best schedule found when
the search hits its limit), M_H, and the seconds each took. Writes
benchmarks/results/bounds.json and prints a markdown table.

    python benchmarks/bounds.py [--time-limit 60] [models...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from planner import models  # noqa: E402
from benchmarks.common import write  # noqa: E402
from planner import bounds as B  # noqa: E402
from planner.api import load_graph, resolve_target  # noqa: E402
from planner.problem import Problem  # noqa: E402


def run(names: list[str], target_name: str, time_limit: float) -> dict:
    target = resolve_target(target_name)
    rows = []
    for name in names:
        entry = models.get(name)
        t0 = time.perf_counter()
        graph = load_graph(name, target=target)
        t1 = time.perf_counter()
        problem = Problem(graph, target)
        m_r, op = B.m_r(problem)
        mp = B.min_peak(problem, time_limit=time_limit)
        m_p = max(mp.peak, m_r)
        rows.append({"model": name, "task": entry.task, "input": list(entry.input_shape), "ops": len(graph.ops),
                     "tensors": len(graph.tensors), "M_R": m_r, "M_R_op": op, "M_P": m_p, "M_P_exact": mp.exact,
                     "M_H": (m_r + m_p) // 2, "M_P_states": mp.states, "lower_seconds": round(t1 - t0, 2),
                     "M_P_seconds": round(mp.seconds, 2)})
        print(f"{name}: done", file=sys.stderr, flush=True)
    return {"target": target_name, "time_limit": time_limit, "models": rows}


def table(result: dict) -> str:
    out = ["| model | input | ops | M_R (B) | M_P (B) | M_H (B) | M_P is | lower s | M_P s |",
           "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in result["models"]:
        how = "exact" if r["M_P_exact"] else "upper bound"
        out.append(f"| {r['model']} | {'x'.join(map(str, r['input']))} | {r['ops']} | {r['M_R']:,} | {r['M_P']:,} | "
                   f"{r['M_H']:,} | {how} | {r['lower_seconds']} | {r['M_P_seconds']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="zoo names (default: all)")
    ap.add_argument("--target", default="cosma-int8")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds for each M_P search")
    args = ap.parse_args()
    result = run(args.models or list(models.ZOO), args.target, args.time_limit)
    path = write("bounds", result)
    print(table(result))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
