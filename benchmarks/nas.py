"""Issue 6 on the NAS zoo: schedules and traffic of irregular networks.

For NASNet-A mobile, AmoebaNet-A, PNASNet-5, DARTS V2 and RandWire-WS (int8, 224x224,
epilogues fused, `cosma-int8`): the no-spill peak of file order, reverse post-order and
our scheduler (planner.schedule, labelled exact or upper bound); then at M_R and M_H the
non-compulsory bytes of COSMA's four baselines, of dnc and of the exact solver (capped at
`--exact-limit` seconds; its status says whether it proved the optimum), with seconds.
Every plan is replayed by the simulator. Writes benchmarks/results/nas.json and prints
the markdown tables.

    python benchmarks/nas.py [--models nasnet_a_mobile,...] [--time-limit 60] [--exact-limit 600] [--workers 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import write  # noqa: E402
from benchmarks.cosma import lower  # noqa: E402
from planner import bounds as B, schedule as S  # noqa: E402
from planner.ir import get_target  # noqa: E402
from planner.problem import Problem  # noqa: E402
from planner.runtime.simulator import simulate  # noqa: E402
from planner.solvers import baselines, dnc, exact  # noqa: E402

NAS = ("nasnet_a_mobile", "amoebanet_a", "pnasnet5", "darts_v2", "randwire_ws")
BASELINES = (("file-belady", "file", "belady"), ("file-greedy", "file", "greedy"),
             ("minpeak-belady", "minpeak", "belady"), ("minpeak-greedy", "minpeak", "greedy"))


def schedules(pr: Problem, time_limit: float) -> dict:
    dag = S._Dag(pr)
    r = S.min_peak(pr, time_limit=time_limit)
    return {"file": max(dag.live(list(range(len(dag))))), "rpo": max(dag.live(S.reverse_post_order(dag))),
            "greedy": max(dag.live(S.greedy_order(dag))), "ours": r.peak, "ours_exact": r.exact,
            "ours_seconds": round(r.seconds, 2), "ours_method": r.method, "order": r.order}


def case(graph, pr: Problem, order: list[str], time_limit: float, exact_limit: float, workers: int) -> dict:
    row: dict = {"budget_bytes": pr.capacity}
    for label, o, rep in BASELINES:
        p = baselines.solve(pr, baselines.Params(replacement=rep, schedule=order if o == "minpeak" else None))
        row[label] = simulate(p, graph, pr.target).metrics.noncompulsory_bytes
    t0 = time.perf_counter()
    p = dnc.solve(pr, dnc.Params(time_limit=time_limit, schedule=order, workers=workers))
    row.update(dnc=simulate(p, graph, pr.target).metrics.noncompulsory_bytes, dnc_seconds=round(time.perf_counter() - t0, 2),
               dnc_found_by=p.extra.get("found_by"), dnc_log=p.extra.get("log"))
    if exact_limit > 0:
        t0 = time.perf_counter()
        e = exact.solve(pr, exact.Params(time_limit=exact_limit, schedule=order))
        row.update(exact=simulate(e, graph, pr.target).metrics.noncompulsory_bytes, exact_status=e.solver.status,
                   exact_bound=e.solver.bound, exact_seconds=round(time.perf_counter() - t0, 2))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(NAS))
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds for the schedule and for dnc, each")
    ap.add_argument("--exact-limit", type=float, default=600.0, help="exact solver seconds (0: skip)")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    out = []
    for name in a.models.split(","):
        graph = lower(name)
        pr0 = Problem(graph, get_target("cosma-int8"))
        sch = schedules(pr0, a.time_limit)
        b = B.budgets(pr0, time_limit=a.time_limit)
        rec = {"model": name, "ops": len(graph.ops), "M_R": b.m_r, "M_H": b.m_h, "M_P": b.m_p,
               "schedules": {k: v for k, v in sch.items() if k != "order"}, "cases": {}}
        for budget in ("M_R", "M_H"):
            pr = Problem(graph, pr0.target.with_capacity(b.get(budget)))
            rec["cases"][budget] = c = case(graph, pr, b.order, a.time_limit, a.exact_limit, a.workers)
            best = min(c[k] for k, _, _ in BASELINES)
            print(f"{name} {budget}: best baseline {best:,}, dnc {c['dnc']:,} ({c['dnc_seconds']} s), "
                  f"exact {c.get('exact', '-')} {c.get('exact_status', '')}", flush=True)
        out.append(rec)
    path = write("nas", {"command": " ".join(sys.argv), "models": out})
    print(f"wrote {path}")
    print("\n| model | ops | file order | reverse post-order | ours | ours is | s |\n|---|---:|---:|---:|---:|---|---:|")
    for r in out:
        s = r["schedules"]
        print(f"| {r['model']} | {r['ops']} | {s['file']:,} | {s['rpo']:,} | {s['ours']:,} | "
              f"{'exact' if s['ours_exact'] else 'upper bound'} | {s['ours_seconds']} |")
    print("\n| model | budget | file-belady | file-greedy | minpeak-belady | minpeak-greedy | dnc | dnc s | exact | "
          "exact status | exact s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in out:
        for budget, c in r["cases"].items():
            print(f"| {r['model']} | {budget} | " + " | ".join(f"{c[k]:,}" for k, _, _ in BASELINES)
                  + f" | {c['dnc']:,} | {c['dnc_seconds']} | {c.get('exact', '-')} | {c.get('exact_status', '-')} | "
                  f"{c.get('exact_seconds', '-')} |")


if __name__ == "__main__":
    main()
