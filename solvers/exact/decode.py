"""From the 0-1 model to a plan and back: read a solution into residencies, place them,
write the steps; encode a plan (the baseline) as a warm start; cut off residency patterns
whose buffers do not fit.

A **run** is one residency of a tensor, [first, last] compute steps, inclusive. Runs of
one tensor never touch: a run that ends at step s - 1 and one that starts at s (a free
and a reload, possibly at a new offset) are two buffers. Between compute s - 1 and
compute s the steps are: stores and frees of s - 1, then the loads of s.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.plan import Step
from planner.problem import Problem
from planner.solvers.alloc import Buffer, fixed_conflict, greedy_by_size
from planner.solvers.exact.model import Formulation

FITS, NO_FIT, UNKNOWN = "fits", "no fit", "unknown"


@dataclass
class Solution:
    order: list[str]  # op at each compute step
    runs: dict[str, list[tuple[int, int]]]  # tensor -> its residencies, [first, last] steps
    stored: set[str]  # activations stored to slow memory right after their compute
    redone: set[tuple[str, int]]  # (tensor, step): a run that starts by recomputing its producer


def read(f: Formulation, problem: Problem, x: list[int]) -> Solution:
    order: list[str | None] = [None] * f.n
    for o, (lo, hi) in f.window.items():
        s = lo if lo == hi else next(s for s in range(lo, hi + 1) if x[f.X[o, s]] > 0)
        order[s] = o
    runs: dict[str, list[tuple[int, int]]] = {}
    for t, (lo, hi) in f.span.items():
        cur: list[tuple[int, int]] = []
        for s in range(lo, hi + 1):
            if not x[f.r[t, s]]:
                continue
            again = ((t, s) in f.l and x[f.l[t, s]]) or ((t, s) in f.rc and x[f.rc[t, s]])
            if cur and cur[-1][1] == s - 1 and not again:
                cur[-1] = (cur[-1][0], s)
            else:
                cur.append((s, s))
        runs[t] = cur
    stored = {t for t, i in f.st.items() if x[i]}
    redone = {(t, lo) for t, rs in runs.items() for lo, _ in rs if (t, lo) in f.rc and x[f.rc[t, lo]]}
    return Solution(order, runs, stored, redone)  # type: ignore[arg-type]


def encode(f: Formulation, problem: Problem, steps: list[Step]) -> list[int]:
    """The 0-1 vector of a plan, made canonical: each run trimmed to end at its last use
    and to start (when loaded) at its first use, runs without a use dropped. Trimming
    only frees room, so the vector is feasible whenever the plan is, at no more cost."""
    g = problem.graph
    order = [s.op for s in steps if s.kind == "compute"]
    pos = {o: i for i, o in enumerate(order)}
    raw: dict[str, list[list[int]]] = {t: [] for t in f.span}
    resident: set[str] = set()
    k = 0
    for s in steps:
        if s.kind == "load" and s.tensor in raw:
            raw[s.tensor].append([k, -1])
            resident.add(s.tensor)
        elif s.kind == "free" and s.tensor in raw and s.tensor in resident:
            raw[s.tensor][-1][1] = k - 1
            resident.discard(s.tensor)
        elif s.kind == "compute":
            for t in g.op(s.op).outputs:
                if t in raw:
                    raw[t].append([k, -1])
                    resident.add(t)
            k += 1
    for t in resident:
        raw[t][-1][1] = k - 1
    x = [0] * len(f.model.lb)
    for o in order:
        if (o, pos[o]) in f.X:
            x[f.X[o, pos[o]]] = 1
    for t, rs in raw.items():
        use = sorted(pos[o] for o in f.uses[t])
        loaded, n_runs = False, 0
        for a, b in rs:
            inside = [u for u in use if a <= u <= b]
            if not inside:
                continue
            made = g.tensors[t].producer is not None and pos[g.tensors[t].producer] == a
            a2 = a if made else inside[0]
            for s in range(a2, inside[-1] + 1):
                x[f.r[t, s]] = 1
            n_runs += 1
            if not made:
                x[f.l[t, a2]] = 1
                loaded = True
        if loaded and t in f.st:
            x[f.st[t]] = 1
        if t in f.z and (n_runs > 1 or (loaded and g.tensors[t].producer is not None)):
            x[f.z[t]] = 1
    return x


def buffers(problem: Problem, sol: Solution) -> list[Buffer]:
    a = problem.target.alignment
    return [Buffer(f"{t}@{lo}", lo, hi + 1, problem.sizes[t], a)
            for t, rs in sol.runs.items() for lo, hi in rs]


def pin(bufs: list[Buffer], n: int, first: dict[str, int], last: dict[str, int]) -> bool:
    """Fixes the offsets of the buffers open at the first step (tensors in `first`) and at
    the last of `n` steps (in `last`), in place: where a plan continues beyond a segment
    of it, the residencies crossing its ends already have their places. False when one
    buffer spans both ends with two different places (it cannot fit unsplit)."""
    for b in bufs:
        t = b.id.rsplit("@", 1)[0]
        at = {first[t]} if b.lower == 0 and t in first else set()
        at |= {last[t]} if b.upper == n and t in last else set()
        if len(at) > 1:
            return False
        if at:
            b.offset = at.pop()
    return True


def place(problem: Problem, bufs: list[Buffer], time_limit: float) -> tuple[str, list[int] | None]:
    """Offsets for the buffers: greedy by size first, then the exact search (FITS, NO_FIT
    when proven, UNKNOWN on its time-out or when no exact allocator is installed)."""
    cap, a = problem.capacity, problem.target.alignment
    if fixed_conflict(bufs, cap):  # two pinned residencies meet in bytes and in time
        return NO_FIT, None
    offsets = greedy_by_size(bufs, a)
    if max((o + b.size for o, b in zip(offsets, bufs)), default=0) <= cap:
        return FITS, offsets
    return exact_fit(bufs, cap, time_limit)


def exact_fit(bufs: list[Buffer], cap: int, time_limit: float) -> tuple[str, list[int] | None]:
    """The exact allocator (solvers.alloc.solve: greedy, then MiniMalloc-style search)."""
    from planner.solvers import alloc

    if not bufs:
        return FITS, []
    r = alloc.solve(bufs, cap, alloc.Params(time_limit=max(time_limit, 0.01)))
    return {"feasible": FITS, "optimal": FITS, "infeasible": NO_FIT}.get(r.status, UNKNOWN), r.offsets


def core(problem: Problem, bufs: list[Buffer], n: int, time_limit: float) -> tuple[int, int]:
    """A short window [lo, hi) of steps whose buffers, clipped to it, provably do not fit:
    the latest start, then the earliest end, by bisection (a longer window only adds
    buffers and lifetime, so "does not fit" is monotone). Returns (0, n) when no shorter
    window is proven."""
    def fails(lo: int, hi: int) -> bool:
        clip = [Buffer(b.id, max(b.lower, lo), min(b.upper, hi), b.size, b.alignment, b.offset)
                for b in bufs if b.lower < hi and lo < b.upper]
        return exact_fit(clip, problem.capacity, time_limit)[0] == NO_FIT

    a, b = 0, n - 1  # largest lo with fails(lo, n)
    while a < b:
        mid = (a + b + 1) // 2
        if fails(mid, n):
            a = mid
        else:
            b = mid - 1
    lo = a
    a, b = lo + 1, n  # smallest hi with fails(lo, hi)
    while a < b:
        mid = (a + b) // 2
        if fails(lo, mid):
            b = mid
        else:
            a = mid + 1
    return lo, a


def cut(f: Formulation, sol: Solution, lo: int, hi: int, name: str) -> None:
    """No-good: the runs of `sol` inside steps [lo, hi) may not all come back unsplit.
    Any solution keeping every one of those residencies and none of their reload points
    holds the same buffers or longer ones inside the window, which fit no better."""
    keep, split = [], []
    for t, rs in sol.runs.items():
        for a, b in rs:
            for s in range(max(a, lo), min(b, hi - 1) + 1):
                keep.append(f.r[t, s])
                if s > max(a, lo):
                    split += [v[t, s] for v in (f.l, f.rc) if (t, s) in v]
    f.model.row(name, {**{i: 1 for i in keep}, **{i: -1 for i in split}}, hi=len(keep) - 1)


def steps_of(problem: Problem, sol: Solution, offsets: dict[tuple[str, int], int]) -> list[Step]:
    """The plan's steps: per compute step, its loads, its recomputes (in graph order, so a
    recomputed input comes first), the compute, stores, then frees."""
    g = problem.graph
    rank = {o.name: i for i, o in enumerate(g.ops)}
    starts: dict[int, list[str]] = {}
    ends: dict[int, list[str]] = {}
    for t, rs in sol.runs.items():
        for lo, hi in rs:
            starts.setdefault(lo, []).append(t)
            ends.setdefault(hi, []).append(t)
    reloaded = {t for t, rs in sol.runs.items()
                if any(g.tensors[t].producer != sol.order[lo] and (t, lo) not in sol.redone for lo, _ in rs)}
    steps: list[Step] = []
    for s, o in enumerate(sol.order):
        op = g.op(o)
        outs = [t for t in op.outputs if t in problem.sizes]
        steps += [Step("load", tensor=t, offset=offsets[t, s]) for t in starts.get(s, [])
                  if t not in outs and (t, s) not in sol.redone]
        redo = sorted((t for t in starts.get(s, []) if (t, s) in sol.redone), key=lambda t: rank[g.tensors[t].producer])
        steps += [Step("compute", op=g.tensors[t].producer, offsets={t: offsets[t, s]}) for t in redo]
        steps.append(Step("compute", op=o, offsets={t: offsets[t, s] for t in outs}))
        for t in outs:
            if g.tensors[t].kind == "output" or (t in sol.stored and t in reloaded):
                steps.append(Step("store", tensor=t))
        steps += [Step("free", tensor=t) for t in ends.get(s, [])]
    return steps
