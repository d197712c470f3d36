"""Bounds and COSMA baseline traffic for every model in the onnx wheel's light/ folder.

For each model (int8, activations only, BN/ReLU fused): M_R, M_P, M_H, and at each of
those budgets the non-compulsory bytes of the four baselines, each plan replayed by the
simulator. Writes benchmarks/results/light.json and prints a markdown table.

    python benchmarks/light.py [--target cosma-int8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import write  # noqa: E402
from planner import bounds as B  # noqa: E402
from planner.api import load_graph, plan, resolve_target  # noqa: E402
from planner.problem import Problem  # noqa: E402
from planner.registry import PORTFOLIOS  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def run(target_name: str) -> dict:
    target = resolve_target(target_name)
    rows = []
    for path in sorted(LIGHT.glob("light_*.onnx")):
        t0 = time.perf_counter()
        graph = load_graph(path, target=target)
        lower_s = time.perf_counter() - t0
        b = B.budgets(Problem(graph, target))
        row = {"model": path.stem.removeprefix("light_"), "ops": len(graph.ops), "tensors": len(graph.tensors),
               "lower_seconds": round(lower_s, 3), "M_R": b.m_r, "M_P": b.m_p, "M_P_exact": b.m_p_exact, "M_H": b.m_h,
               "compulsory_bytes": b.compulsory, "cases": {}}
        for budget in ("M_R", "M_H", "M_P"):
            case = {}
            for name in PORTFOLIOS["baseline"]:
                p = plan(graph, budget, target=target, solver=name)  # replayed by the simulator inside
                case[name] = {"noncompulsory_bytes": p.metrics.noncompulsory_bytes, "arena_bytes": p.metrics.arena_bytes,
                              "seconds": round(p.solver.seconds, 4)}
            row["cases"][budget] = case
        rows.append(row)
        print(f"{row['model']}: done", file=sys.stderr)
    return {"target": target_name, "models": rows}


def table(result: dict) -> str:
    names = PORTFOLIOS["baseline"]
    out = ["| model | ops | M_R (B) | M_P (B) | M_H (B) | budget | " + " | ".join(names) + " |",
           "|---|---:|---:|---:|---:|---|" + "---:|" * len(names)]
    for r in result["models"]:
        mp = f"{r['M_P']:,}" + ("" if r["M_P_exact"] else " (ub)")
        for i, budget in enumerate(("M_R", "M_H", "M_P")):
            head = f"| {r['model']} | {r['ops']} | {r['M_R']:,} | {mp} | {r['M_H']:,} |" if i == 0 else "| | | | | |"
            cells = " | ".join(f"{r['cases'][budget][n]['noncompulsory_bytes']:,}" for n in names)
            out.append(f"{head} {budget} | {cells} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="cosma-int8")
    args = ap.parse_args()
    result = run(args.target)
    path = write("light", result)
    print(table(result))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
