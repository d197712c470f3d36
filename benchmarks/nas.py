"""Irregular networks (issues 6 and 12): schedules, traffic and proven gaps.

For NASNet-A mobile, AmoebaNet-A, PNASNet-5, DARTS V2, RandWire-WS, the transformer and
DenseNet-121 (int8, 224x224, epilogues fused, `cosma-int8`): the no-spill peak of file
order, reverse post-order and our scheduler (planner.schedule, labelled exact or upper
bound); then at each budget the non-compulsory bytes of COSMA's four baselines and of
`planner.plan` with the default solver (`auto`) and `--time-limit` seconds, as `planner
plan` runs it: which solver's plan won, its status, the best proven lower bound (and
what gave it) and the gap; optionally the exact solver alone (`--exact-limit`). Every
plan is replayed by the simulator. Writes benchmarks/results/nas.json and prints the
markdown tables.

    python benchmarks/nas.py [--models nasnet_a_mobile,...] [--budgets M_R,M_H] [--time-limit 60] [--exact-limit 0]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import gap_cell, planned, write  # noqa: E402
from benchmarks.cosma import lower  # noqa: E402
from planner import bounds as B, schedule as S  # noqa: E402
from planner.ir import get_target  # noqa: E402
from planner.problem import Problem  # noqa: E402
from planner.runtime.simulator import simulate  # noqa: E402
from planner.solvers import baselines, exact  # noqa: E402

MODELS = ("nasnet_a_mobile", "amoebanet_a", "pnasnet5", "darts_v2", "randwire_ws", "transformer", "densenet121")
BASELINES = (("file-belady", "file", "belady"), ("file-greedy", "file", "greedy"),
             ("minpeak-belady", "minpeak", "belady"), ("minpeak-greedy", "minpeak", "greedy"))


def schedules(pr: Problem, time_limit: float) -> dict:
    dag = S._Dag(pr)
    r = S.min_peak(pr, time_limit=time_limit)
    return {"file": max(dag.live(list(range(len(dag))))), "rpo": max(dag.live(S.reverse_post_order(dag))),
            "greedy": max(dag.live(S.greedy_order(dag))), "ours": r.peak, "ours_exact": r.exact,
            "ours_seconds": round(r.seconds, 2), "ours_method": r.method, "order": r.order}


def case(graph, pr: Problem, budget: str, order: list[str], time_limit: float, exact_limit: float) -> dict:
    row: dict = {}
    for label, o, rep in BASELINES:
        p = baselines.solve(pr, baselines.Params(replacement=rep, schedule=order if o == "minpeak" else None))
        row[label] = simulate(p, graph, pr.target).metrics.noncompulsory_bytes
    row.update(planned(graph, pr.capacity, time_limit), budget=budget)
    if exact_limit > 0:
        t0 = time.perf_counter()
        e = exact.solve(pr, exact.Params(time_limit=exact_limit, schedule=order))
        row.update(exact=simulate(e, graph, pr.target).metrics.noncompulsory_bytes, exact_status=e.solver.status,
                   exact_bound=e.solver.bound, exact_seconds=round(time.perf_counter() - t0, 2))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--budgets", default="M_R,M_H")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds for the schedule and for each plan")
    ap.add_argument("--exact-limit", type=float, default=0.0, help="exact solver alone, seconds (0: skip)")
    a = ap.parse_args()
    out = []
    for name in a.models.split(","):
        graph = lower(name)
        pr0 = Problem(graph, get_target("cosma-int8"))
        sch = schedules(pr0, a.time_limit)
        b = B.budgets(pr0, time_limit=a.time_limit)
        rec = {"model": name, "ops": len(graph.ops), "M_R": b.m_r, "M_H": b.m_h, "M_P": b.m_p,
               "schedules": {k: v for k, v in sch.items() if k != "order"}, "cases": {}}
        for budget in a.budgets.split(","):
            pr = Problem(graph, pr0.target.with_capacity(b.get(budget)))
            rec["cases"][budget] = c = case(graph, pr, budget, b.order, a.time_limit, a.exact_limit)
            best = min(c[k] for k, _, _ in BASELINES)
            print(f"{name} {budget}: best baseline {best:,}, plan {c['noncompulsory_bytes']:,} by {c['solver']} "
                  f"({c['seconds']} s), bound {c['bound']:,} ({c['bound_how']}), gap {gap_cell(c)}", flush=True)
        out.append(rec)
    path = write("nas", {"command": " ".join(sys.argv), "models": out})
    print(f"wrote {path}")
    print("\n| model | ops | file order | reverse post-order | ours | ours is | s |\n|---|---:|---:|---:|---:|---|---:|")
    for r in out:
        s = r["schedules"]
        print(f"| {r['model']} | {r['ops']} | {s['file']:,} | {s['rpo']:,} | {s['ours']:,} | "
              f"{'exact' if s['ours_exact'] else 'upper bound'} | {s['ours_seconds']} |")
    print("\n| model | budget | file-belady | file-greedy | minpeak-belady | minpeak-greedy | plan | by | bound | "
          "gap | s |\n|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in out:
        for budget, c in r["cases"].items():
            print(f"| {r['model']} | {budget} | " + " | ".join(f"{c[k]:,}" for k, _, _ in BASELINES)
                  + f" | {c['noncompulsory_bytes']:,} | {c['solver']} | {c['bound']:,} | {gap_cell(c)} | "
                  f"{c['seconds']} |")


if __name__ == "__main__":
    main()
