"""A lower bound over all operator orders: the relative-order relaxation.

The time-indexed model (`model.py`) is exact for a fixed order, but when ops float over
wide windows its LP spreads each op over many steps and the capacity rows go slack. Here
time is replaced by "during op k": only which ops run before which matters.

    y[a, b] = 1 if op a runs before op b (a pair neither of which is the other's ancestor)
    R[t, k] = 1 if tensor t is resident while op k computes
    g[t, b] = 1 if t is reloaded just before its reader b (costs its size)
    z[t]    = 1 if t leaves fast memory while live at all (then some g[t, .] = 1)
    st[t]   = 1 if activation t is stored (before any reload; costs its size)

Tensor t is live during op k if a use that starts its life (its producer; for an input,
any reader) runs before k and a reader b after k. Live, not resident, and no other use
of t between k and b: t is reloaded before b, R[t, k] + g[t, b] >= before(a, k) +
before(k, b) - 1 - sum over uses u of [k before u before b] (each product at most
min(before(k, u), before(u, b)), exact for 0-1 values). The padded bytes resident during
each op fit the capacity. Every plan gives a solution of the same cost or less, so the
optimum is a lower bound. 3-cycles of y are cut lazily (`add_triangles`). DeepLab's three
atrous convolutions, each filling M_R alone, are the typical case: two of their outputs
must leave memory whatever the order, which the LP of the time-indexed model does not see.
"""
from __future__ import annotations

import math

from planner.problem import Problem, align_up
from planner.solvers.exact.backends import Model


def ancestors(problem: Problem) -> dict[str, int]:
    """Bitmask of each op's ancestors, bit i for the graph's i-th op."""
    g = problem.graph
    index = {o.name: i for i, o in enumerate(g.ops)}
    anc: dict[str, int] = {}
    for o in g.ops:
        a = 0
        for t in o.inputs:
            p = g.tensors[t].producer
            if p is not None:
                a |= anc[p] | (1 << index[p])
        anc[o.name] = a
    return anc


def build(problem: Problem, transitivity: bool = False, max_triples: int = 200_000) -> tuple[Model, int]:
    """The relaxation as a 0-1 model, and its objective unit in bytes."""
    g, size = problem.graph, problem.sizes
    a_ = problem.target.alignment
    ops = [o.name for o in g.ops]
    index = {o: i for i, o in enumerate(ops)}
    anc = ancestors(problem)
    m = Model()
    y: dict[tuple[str, str], int] = {}

    def before(a: str, b: str) -> tuple[dict[int, int], int]:
        if anc[b] >> index[a] & 1:
            return {}, 1
        if anc[a] >> index[b] & 1:
            return {}, 0
        if index[a] < index[b]:
            return {y[a, b]: 1}, 0
        return {y[b, a]: -1}, 1

    # y[a, b] = 1 if op a runs before op b, for every pair the DAG leaves open.
    for i, a in enumerate(ops):
        for b in ops[i + 1:]:
            if not (anc[b] >> i & 1):
                y[a, b] = m.var(f"y_{a}_{b}")
    m.y = y  # type: ignore[attr-defined]  # read by add_triangles
    # Order: no 3-cycles among open pairs (a before b before c implies a before c).
    if transitivity:
        free = {o: [b for b in ops if (o, b) in y or (b, o) in y] for o in ops}
        count = 0
        for a in ops:
            for b in free[a]:
                if index[b] <= index[a]:
                    continue
                for c in free[b]:
                    if index[c] <= index[b] or ((a, c) not in y):
                        continue
                    # y_ab + y_bc - y_ac <= 1 and its reverse
                    m.row(f"tri_{a}_{b}_{c}", {y[a, b]: 1, y[b, c]: 1, y[a, c]: -1}, hi=1)
                    m.row(f"tri_{c}_{b}_{a}", {y[a, b]: -1, y[b, c]: -1, y[a, c]: 1}, hi=0)
                    count += 1
                    if count >= max_triples:
                        break
    unit = 0
    for t in size:
        unit = math.gcd(unit, size[t])
    unit = unit or 1
    used = {t for t in size if g.tensors[t].consumers or g.tensors[t].producer}
    cap_used: dict[str, dict[int, int]] = {k: {} for k in ops}
    fixed_bytes = {k: sum(align_up(size[t], a_) for t in problem.tensors_of(g.op(k))) for k in ops}
    z: dict[str, int] = {}
    for t in sorted(used):
        tt = g.tensors[t]
        if not tt.consumers:
            continue
        starts = [tt.producer] if tt.producer else list(tt.consumers)
        uses = list(dict.fromkeys(starts + list(tt.consumers)))
        R: dict[str, int] = {}
        gap: dict[str, int] = {}
        for k in ops:
            if k in uses:
                continue
            for b in tt.consumers:
                tb, cb = before(k, b)
                if not tb and not cb:
                    continue
                # Another use u between k and b means the reload, if any, is u's: per u,
                # before(k, u) * before(u, b), linear where one factor is fixed.
                between: dict[str, tuple[dict[int, int], int]] = {}
                void = set()
                for u in uses:
                    if u == b:
                        continue
                    (t1, c1), (t2, c2) = before(k, u), before(u, b)
                    if (not t1 and not c1) or (not t2 and not c2):
                        continue
                    if not t1 and not t2:
                        void.add(u)
                    elif not t1 or not t2:  # one factor is the constant 1
                        between[u] = (t2, c2) if not t1 else (t1, c1)
                    else:  # w <= before(k, u) and w <= before(u, b): at most the product
                        w = m.var(f"w_{t}_{k}_{u}_{b}")
                        m.row(f"wk_{t}_{k}_{u}_{b}", {w: 1, **{i: -v for i, v in t1.items()}}, hi=c1)
                        m.row(f"wb_{t}_{k}_{u}_{b}", {w: 1, **{i: -v for i, v in t2.items()}}, hi=c2)
                        between[u] = ({w: 1}, 0)
                for a in starts:
                    if a == b or void - {a}:
                        continue
                    ta, ca = before(a, k)
                    if not ta and not ca:
                        continue
                    if k not in R:
                        R[k] = m.var(f"R_{t}_{k}")
                        cap_used[k][R[k]] = align_up(size[t], a_)
                    if b not in gap:
                        # gap[t, b] = 1 if t is reloaded just before its reader b.
                        gap[b] = m.var(f"g_{t}_{b}", cost=size[t] // unit)
                    # Live during k (a before k before b), no other use between k and b, not
                    # resident: reloaded before b. R + gap + between - before(a, k) - before(k, b) >= -1
                    terms = {R[k]: 1, gap[b]: 1}
                    bconst = 0
                    for u, (tu, cu) in between.items():
                        if u != a:
                            bconst += cu
                            for i, v in tu.items():
                                terms[i] = terms.get(i, 0) + v
                    for i, v in list(ta.items()) + list(tb.items()):
                        terms[i] = terms.get(i, 0) - v
                    m.row(f"live_{t}_{k}_{a}_{b}", terms, lo=ca + cb - 1 - bconst)
                    if bconst or any(u != a for u in between):
                        # z[t] = 1 if t leaves memory while live at all: R + z >= live.
                        if t not in z:
                            z[t] = m.var(f"z_{t}")
                        terms = {R[k]: 1, z[t]: 1}
                        for i, v in list(ta.items()) + list(tb.items()):
                            terms[i] = terms.get(i, 0) - v
                        m.row(f"spill_{t}_{k}_{a}_{b}", terms, lo=ca + cb - 1)
        if t in z:  # a spill costs at least one reload
            m.row(f"reload_{t}", {**{i: 1 for i in gap.values()}, z[t]: -1}, lo=0)
        if gap and tt.kind == "activation":
            # st[t] = 1 if activation t is stored: needed before any reload.
            st = m.var(f"st_{t}", cost=size[t] // unit)
            for b, i in gap.items():
                m.row(f"store_{t}_{b}", {st: 1, i: -1}, lo=0)
            if t in z:
                m.row(f"store_{t}", {st: 1, z[t]: -1}, lo=0)
    # DESIGN §3 capacity, aggregated per op, padded as in the time-indexed model.
    cap = align_up(problem.capacity, a_)
    for k in ops:
        m.row(f"capacity_{k}", cap_used[k], hi=cap - fixed_bytes[k])
    return m, unit


def add_triangles(m: Model, x: list[int], limit: int = 5000) -> int:
    """Adds the triangle rows that `x` breaks (a before b before c before a); returns how many."""
    y = m.y  # type: ignore[attr-defined]
    succ: dict[str, set[str]] = {}
    for (a, b), i in y.items():
        u, v = (a, b) if x[i] else (b, a)
        succ.setdefault(u, set()).add(v)
    added = 0
    for a, outs in succ.items():
        for b in outs:
            for c in succ.get(b, ()):
                if a in succ.get(c, ()) and min(a, b, c) == a:  # each cycle once
                    # a->b->c->a: rewrite as y over stored pairs; one of the three must flip
                    terms: dict[int, int] = {}
                    const = 0
                    for u, v in ((a, b), (b, c), (c, a)):
                        if (u, v) in y:
                            terms[y[u, v]] = 1
                        elif (v, u) in y:
                            terms[y[v, u]] = -1
                            const += 1
                        else:  # the DAG fixes this pair, so the cycle cannot close
                            terms = {}
                            break
                    if terms:
                        m.row(f"tri_{a}_{b}_{c}", terms, hi=2 - const)
                        added += 1
                        if added >= limit:
                            return added
    return added
