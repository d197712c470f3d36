"""What every benchmark records beside its numbers (the machine, the versions, the time), and
the one way they plan a case: as `planner plan` does."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    import highspy
    import ortools

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1) if mem else None,
            "python": platform.python_version(), "ortools": ortools.__version__,
            "highspy": getattr(highspy, "__version__", "?"), "date": time.strftime("%Y-%m-%d")}


def write(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=1))
    return path


def planned(graph, budget: int | str, time_limit: float) -> dict[str, Any]:
    """`planner.plan(graph, budget, time_limit=...)` with the default solver, as `planner
    plan` runs it: the plan's non-compulsory bytes, which solver won, its status, the best
    proven bound (and which argument gave it), the gap, seconds in all."""
    from planner.api import plan

    t0 = time.perf_counter()
    p = plan(graph, budget, time_limit=time_limit)
    s, how = p.solver, p.extra["bound"]
    return {"budget": budget, "budget_bytes": p.target.capacity, "noncompulsory_bytes": p.metrics.noncompulsory_bytes,
            "solver": s.name, "status": s.status, "bound": int(s.bound), "bound_how": how["how"],
            "lower_bound": how["lower_bound"], "lower_how": how["lower_how"], "lower_seconds": how["lower_seconds"],
            "gap": round(s.gap, 4), "seconds": round(time.perf_counter() - t0, 2), "auto": p.extra.get("auto"),
            "candidates": p.extra["candidates"], "baselines": p.extra.get("baselines")}


def gap_cell(row: dict[str, Any]) -> str:
    """The gap as a table cell: a percentage, "optimal", or "-" without a bound."""
    if row["status"] == "optimal":
        return "optimal"
    return f"{row['gap']:.1%}"
