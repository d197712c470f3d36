"""How planning scales (issues 6 and 12): random layered DAGs and RandWire graphs of 500
to 10k ops, planned at M_R and M_H by `planner.plan` with the default solver (`auto`:
dnc on graphs this size) against the best of COSMA's four baselines, with the best proven
lower bound and the gap.

Layered DAGs: `layered_dag(n, seed)`, ops in layers of 4-12, each reading 1-3 tensors of
the previous three layers, tensors of 1-64 KiB (int8). RandWire: `randwire_onnx(n)` of
models/nas/randwire.py (three WS(N, 4, 0.75) stages, 16x28x28 tensors), lowered by the ONNX
frontend. Each plan gets `--time-limit` seconds, bounds included, as `planner plan` does
(`--big-time-limit` from 5,000 ops). Writes benchmarks/results/scaling.json and
scaling.png (seconds vs ops).

    python benchmarks/scaling.py [--sizes 500,1000,2000,5000] [--kinds layered,randwire] [--budgets M_R,M_H]
        [--time-limit 60] [--big-time-limit 120]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, gap_cell, planned, write  # noqa: E402
from planner.ir import Graph  # noqa: E402
from planner.solvers.baselines import NAMES  # noqa: E402
from tests.graphs import build  # noqa: E402


def layered_dag(n: int, seed: int = 0) -> Graph:
    """A random layered DAG of `n` ops: layers of 4-12 ops, each op reading 1-3 tensors
    of the previous three layers (the first layer reads the input) and writing one."""
    rng = random.Random(seed)
    rows, sizes, layers = [], {"x": 4096}, [["x"]]
    while len(rows) < n:
        layer = []
        for _ in range(min(rng.randint(4, 12), n - len(rows))):
            pool = [t for lay in layers[-3:] for t in lay]
            ins = sorted(set(rng.sample(pool, min(len(pool), rng.randint(1, 3)))))
            out = f"t{len(rows)}"
            sizes[out] = rng.randint(1, 64) * 1024
            rows.append((f"op{len(rows)}", ins, [out]))
            layer.append(out)
        layers.append(layer)
    return build(rows, sizes, name=f"layered_{n}")


def randwire(n: int) -> Graph:
    import onnx

    from planner.frontends.onnx import load_onnx
    from planner.models.nas.randwire import randwire_onnx

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"randwire_{n}.onnx"
        onnx.save(randwire_onnx(n), path)
        return load_onnx(path, name=f"randwire_{n}")


def case(graph: Graph, budget: str, time_limit: float) -> dict:
    row = {"graph": graph.name, "ops": len(graph.ops), **planned(graph, budget, time_limit)}
    base = row["baselines"] or {c["solver"]: c["noncompulsory_bytes"] for c in row["candidates"]
                                if c["solver"] in NAMES and "noncompulsory_bytes" in c}
    row["best_baseline"] = min(base.values()) if base else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,1000,2000,5000")
    ap.add_argument("--kinds", default="layered,randwire")
    ap.add_argument("--budgets", default="M_R,M_H")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per plan, bounds included")
    ap.add_argument("--big-time-limit", type=float, default=120.0, help="seconds per plan from 5,000 ops")
    a = ap.parse_args()
    makers = {"layered": layered_dag, "randwire": randwire}
    rows = []
    for n in (int(s) for s in a.sizes.split(",")):
        for kind in a.kinds.split(","):
            g = makers[kind](n)
            for budget in a.budgets.split(","):
                r = case(g, budget, a.big_time_limit if n >= 5000 else a.time_limit)
                rows.append(r)
                print(f"{r['graph']} {budget}: {r['ops']} ops, plan {r['noncompulsory_bytes']:,} by {r['solver']} in "
                      f"{r['seconds']} s, best baseline {r['best_baseline']:,}, bound {r['bound']:,} "
                      f"({r['bound_how']}), gap {gap_cell(r)}", flush=True)
    path = write("scaling", {"command": " ".join(sys.argv), "rows": rows})
    _plot(rows)
    print(f"wrote {path}")
    print("\n| graph | ops | budget | best baseline | plan | by | bound | gap | s |\n|---|---:|---|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['graph']} | {r['ops']} | {r['budget']} | {r['best_baseline']:,} | {r['noncompulsory_bytes']:,} | "
              f"{r['solver']} | {r['bound']:,} | {gap_cell(r)} | {r['seconds']} |")


def _plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in ("layered", "randwire"):
        for budget in sorted({r["budget"] for r in rows}):
            pts = sorted((r["ops"], r["seconds"]) for r in rows if r["graph"].startswith(kind) and r["budget"] == budget)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{kind}, {budget}")
    ax.set_xlabel("ops")
    ax.set_ylabel("seconds (planner.plan, bounds included)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=120)


if __name__ == "__main__":
    main()
