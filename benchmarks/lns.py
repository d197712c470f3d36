"""Issue 12: dnc with reordering segments and the large-neighbourhood search, against
COSMA's four baselines and against an earlier run of dnc (the fixed-order version).

On the NAS zoo (int8, 224x224, `cosma-int8`) and the synthetic layered / RandWire DAGs
of `benchmarks/scaling.py`, at M_R and M_H: the best baseline's non-compulsory bytes and
dnc's (replayed by the simulator), its status, bound and seconds. The graph, its budgets
and the min-peak order are computed once per graph and cached (pickle, in `--cache`), so
two runs (before and after a change) plan the same problems. `--compare FILE` adds the
dnc column of an earlier result file to the table.

    python benchmarks/lns.py --label after [--graphs pnasnet5,layered_500] [--time-limit 60]
                             [--workers 1] [--compare benchmarks/results/lns_before.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import write  # noqa: E402
from planner import bounds as B  # noqa: E402
from planner.ir import Op, get_target  # noqa: E402
from planner.problem import Problem  # noqa: E402
from planner.runtime.simulator import simulate  # noqa: E402
from planner.solvers import baselines, dnc  # noqa: E402

GRAPHS = ("pnasnet5", "nasnet_a_mobile", "amoebanet_a", "darts_v2", "layered_500", "layered_1000", "randwire_500")


def setup(name: str, cache: Path) -> dict:
    """The graph, its target and budgets and the min-peak order (cached)."""
    path = cache / f"{name}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    if name.startswith("layered_"):
        from benchmarks.scaling import layered_dag
        graph = layered_dag(int(name.split("_")[1]), 0)
        target = get_target("cosma-int8").with_capacity(10**9)
    elif name.startswith("randwire_"):
        from benchmarks.scaling import randwire
        graph = randwire(int(name.split("_")[1]))
        target = get_target("cosma-int8")
    else:
        from benchmarks.cosma import lower
        graph = lower(name)
        target = get_target("cosma-int8")
    # ops without their torch callables, so the record pickles
    graph = dataclasses.replace(graph, ops=[Op(o.name, o.type, list(o.inputs), list(o.outputs), o.flops)
                                            for o in graph.ops])
    b = B.budgets(Problem(graph, target), time_limit=60)
    rec = {"graph": graph, "target": target, "M_R": b.m_r, "M_H": b.m_h, "M_P": b.m_p, "order": b.order}
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(rec))
    return rec


def case(rec: dict, budget: str, time_limit: float, workers: int) -> dict:
    graph = rec["graph"]
    pr = Problem(graph, rec["target"].with_capacity(rec[budget]))
    base = {}
    for sched in ("file", "minpeak"):
        for rep in ("belady", "greedy"):
            schedule = rec["order"] if sched == "minpeak" else None
            p = baselines.solve(pr, baselines.Params(replacement=rep, schedule=schedule))
            base[f"{sched}-{rep}"] = simulate(p, graph, pr.target).metrics.noncompulsory_bytes
    trace: list[dict] = []
    t0 = time.perf_counter()
    params = dnc.Params(time_limit=time_limit, schedule=rec["order"], workers=workers)
    if "progress" in dnc.Params.__dataclass_fields__:
        params.progress = trace.append  # type: ignore[attr-defined]
    p = dnc.solve(pr, params)
    seconds = time.perf_counter() - t0
    m = simulate(p, graph, pr.target).metrics
    assert m.noncompulsory_bytes == p.solver.objective, (m, p.solver)
    return {"budget_bytes": pr.capacity, "baselines": base, "best_baseline": min(base.values()),
            "dnc": m.noncompulsory_bytes, "status": p.solver.status, "bound": p.solver.bound,
            "seconds": round(seconds, 2), "found_by": p.extra.get("found_by"), "log": p.extra.get("log"),
            "trace": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in e.items()} for e in trace]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="results go to benchmarks/results/lns_<label>.json")
    ap.add_argument("--graphs", default=",".join(GRAPHS))
    ap.add_argument("--budgets", default="M_R,M_H")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/planner-lns-cache"))
    ap.add_argument("--compare", type=Path, help="an earlier lns_*.json whose dnc column to show")
    a = ap.parse_args()
    old = {}
    if a.compare:
        for r in json.loads(a.compare.read_text())["rows"]:
            old[r["graph"], r["budget"]] = r["dnc"]
    rows = []
    for name in a.graphs.split(","):
        rec = setup(name, a.cache)
        for budget in a.budgets.split(","):
            c = case(rec, budget, a.time_limit, a.workers)
            rows.append({"graph": name, "ops": len(rec["graph"].ops), "budget": budget, **c})
            print(f"{name} {budget}: best baseline {c['best_baseline']:,}, dnc {c['dnc']:,} {c['status']} "
                  f"({c['seconds']} s, found by {c['found_by']})", flush=True)
            write(f"lns_{a.label}", {"command": " ".join(sys.argv), "time_limit": a.time_limit, "rows": rows})
    print(f"\n| graph | ops | budget | best baseline | {'earlier dnc | ' if old else ''}dnc | status | s |")
    print(f"|---|---:|---|---:|{'---:|' if old else ''}---:|---|---:|")
    for r in rows:
        prev = old.get((r["graph"], r["budget"]))
        print(f"| {r['graph']} | {r['ops']} | {r['budget']} | {r['best_baseline']:,} | "
              + (f"{prev:,} | " if old and prev is not None else "- | " if old else "")
              + f"{r['dnc']:,} | {r['status']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
