"""How divide and conquer scales (issue 6): random layered DAGs and RandWire graphs of 500
to 10k ops, planned by dnc at M_H against the best of COSMA's four baselines, and by the
exact solver where it finishes within its limit.

Layered DAGs: `layered_dag(n, seed)`, ops in layers of 4-12, each reading 1-3 tensors of
the previous three layers, tensors of 1-64 KiB (int8). RandWire: `randwire_onnx(n)` of
models/nas/randwire.py (three WS(N, 4, 0.75) stages, 16x28x28 tensors), lowered by the ONNX
frontend. Writes benchmarks/results/scaling.json and scaling.png (dnc seconds vs ops).

    python benchmarks/scaling.py [--sizes 500,1000,2000,5000,10000] [--time-limit 300]
        [--exact-limit 120] [--exact-max-ops 1000] [--workers 2]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, write  # noqa: E402
from planner import bounds as B  # noqa: E402
from planner.ir import Graph, get_target  # noqa: E402
from planner.problem import Problem  # noqa: E402
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


def case(graph: Graph, time_limit: float, exact_limit: float, exact_max_ops: int, workers: int) -> dict:
    from planner.runtime.simulator import simulate
    from planner.solvers import dnc, exact

    target = get_target("cosma-int8")
    t0 = time.perf_counter()
    b = B.budgets(Problem(graph, target), time_limit=min(60.0, time_limit / 4))
    bounds_s = time.perf_counter() - t0
    pr = Problem(graph, target.with_capacity(b.m_h))
    t0 = time.perf_counter()
    # the bounds' seconds come out of the graph's time limit, as in `planner plan`
    p = dnc.solve(pr, dnc.Params(time_limit=max(1.0, time_limit - bounds_s), schedule=b.order, workers=workers))
    seconds = time.perf_counter() - t0
    m = simulate(p, graph, pr.target).metrics
    base = p.extra["baselines"]  # the four baselines dnc ran (graphs here exceed one segment)
    row = {"graph": graph.name, "ops": len(graph.ops), "M_R": b.m_r, "M_P": b.m_p, "M_P_exact": b.m_p_exact,
           "M_H": b.m_h, "bounds_seconds": round(bounds_s, 2), "dnc": m.noncompulsory_bytes,
           "dnc_status": p.solver.status, "dnc_seconds": round(seconds, 2),
           "total_seconds": round(bounds_s + seconds, 2), "baselines": base,
           "best_baseline": min(base.values()), "log": p.extra.get("log")}
    if len(graph.ops) <= exact_max_ops:
        t0 = time.perf_counter()
        e = exact.solve(pr, exact.Params(time_limit=exact_limit, schedule=b.order))
        row.update(exact=simulate(e, graph, pr.target).metrics.noncompulsory_bytes, exact_status=e.solver.status,
                   exact_bound=e.solver.bound, exact_seconds=round(time.perf_counter() - t0, 2))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,1000,2000,5000,10000")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds per graph: bounds, then dnc")
    ap.add_argument("--exact-limit", type=float, default=120.0, help="exact solver seconds per graph")
    ap.add_argument("--exact-max-ops", type=int, default=1000, help="run exact only up to this many ops")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    rows = []
    for n in (int(s) for s in a.sizes.split(",")):
        for make in (layered_dag, randwire):
            g = make(n)
            r = case(g, a.time_limit, a.exact_limit, a.exact_max_ops, a.workers)
            rows.append(r)
            print(f"{r['graph']}: {r['ops']} ops, dnc {r['dnc']:,} in {r['dnc_seconds']} s, best baseline "
                  f"{r['best_baseline']:,}, exact {r.get('exact', '-')}", flush=True)
    path = write("scaling", {"command": " ".join(sys.argv), "rows": rows})
    _plot(rows)
    print(f"wrote {path}")


def _plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in ("layered", "randwire"):
        pts = sorted((r["ops"], r["dnc_seconds"]) for r in rows if r["graph"].startswith(kind))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"dnc, {kind}")
    ax.set_xlabel("ops")
    ax.set_ylabel("seconds (dnc, M_H)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=120)


if __name__ == "__main__":
    main()
