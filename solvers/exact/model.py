"""The time-indexed formulation of DESIGN §3: operator order and replacement in one
0-1 programme, with fast memory aggregated into one capacity row per step.

Time is the sequence of compute steps 0..n-1; op o may only run in its window
[asap(o), alap(o)] (ancestors before it, descendants after it). Residency is read at
compute steps: what step s needs is resident while it runs; between two computes the
plan frees, then loads. For the chain x -a-> y -b-> z -c-> w at capacity |y| + |z|:

    step            0 (a)   1 (b)   2 (c)
    r[y, s]         1       1       0        y lives [0, 2): one buffer
    r[z, s]         .       1       1        z lives [1, 3)
    l[x, 0]         1                         x: the compulsory first load

Offsets are not in this model: its capacity row says that the padded bytes resident at a
step fit, a relaxation (`solvers.exact` places the buffers afterwards and adds a no-good
cut when they do not fit), so its optimum is a lower bound on the true one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.problem import Problem, align_up
from planner.solvers.exact.backends import Model


@dataclass
class Flags:
    windows: bool = True  # ops only in their ASAP/ALAP window (off: any step)
    jit_loads: bool = True  # loads only at a step that uses the tensor
    early_evict: bool = True  # a residency ends at a use: never kept past its last use in it
    strong_precedence: bool = True  # precedence per step on cumulative sums (off: on positions)
    liveness_cuts: bool = True  # a live tensor is resident unless spilled (z), and spilling costs


@dataclass
class Formulation:
    model: Model
    n: int  # compute steps
    window: dict[str, tuple[int, int]]  # op -> [asap, alap]
    uses: dict[str, list[str]]  # tracked tensor -> ops that need it resident (producer first)
    span: dict[str, tuple[int, int]]  # tensor -> [first, last] step it may be resident
    X: dict[tuple[str, int], int] = field(default_factory=dict)  # (op, step) -> column
    r: dict[tuple[str, int], int] = field(default_factory=dict)  # (tensor, step) -> column
    l: dict[tuple[str, int], int] = field(default_factory=dict)
    st: dict[str, int] = field(default_factory=dict)
    z: dict[str, int] = field(default_factory=dict)  # tensor -> column
    rc: dict[tuple[str, int], int] = field(default_factory=dict)  # (tensor, step) -> column
    cap_unit: int = 1  # bytes per capacity-row unit
    obj_unit: int = 1  # bytes per objective unit

    def at(self, o: str, s: int) -> tuple[dict[int, int], int]:
        """x[o, s] as (terms, constant)."""
        lo, hi = self.window[o]
        if not lo <= s <= hi:
            return {}, 0
        if lo == hi:
            return {}, 1
        return {self.X[o, s]: 1}, 0

    def done(self, o: str, s: int) -> tuple[dict[int, int], int]:
        """1 if o has run at or before step s, as (terms, constant)."""
        lo, hi = self.window[o]
        if s < lo:
            return {}, 0
        if s >= hi:
            return {}, 1
        return {self.X[o, k]: 1 for k in range(lo, s + 1)}, 0


def windows(problem: Problem, enabled: bool, order: list[str] | None = None) -> dict[str, tuple[int, int]]:
    """[asap, alap] per op: its ancestors run before it, its descendants after it; one
    step per op when the order is fixed (`order`, or the graph's under fixed_order)."""
    ops = problem.graph.ops
    n = len(ops)
    if order is not None:
        return {o: (i, i) for i, o in enumerate(order)}
    if problem.fixed_order:
        return {o.name: (i, i) for i, o in enumerate(ops)}
    if not enabled:
        return {o.name: (0, n - 1) for o in ops}
    anc, desc = closures(problem)
    return {o.name: (anc[i].bit_count(), n - 1 - desc[i].bit_count()) for i, o in enumerate(ops)}


def closures(problem: Problem) -> tuple[list[int], list[int]]:
    """Per op, in graph order, the bitsets of its ancestors and of its descendants (bit i:
    the graph's i-th op). The graph order is topological, so one sweep forwards and one
    backwards build them."""
    ops = problem.graph.ops
    n = len(ops)
    index = {o.name: i for i, o in enumerate(ops)}
    preds = [{index[p] for t in o.inputs if (p := problem.graph.tensors[t].producer) is not None} for o in ops]
    anc, desc = [0] * n, [0] * n
    for i in range(n):
        for p in preds[i]:
            anc[i] |= anc[p] | (1 << p)
    for i in reversed(range(n)):
        for p in preds[i]:
            desc[p] |= desc[i] | (1 << i)
    return anc, desc


def columns(problem: Problem, win: dict[str, tuple[int, int]] | None = None) -> int:
    """The joint model's size, estimated without building it: one column per op and step
    of its window (where it has a choice), one per tensor and step it may be resident.
    Loads, stores and liveness columns add a fraction of that; rows grow with it."""
    win = win or windows(problem, True)
    g = problem.graph
    total = sum(hi - lo + 1 for lo, hi in win.values() if hi > lo)
    for t in problem.sizes:
        tt = g.tensors[t]
        uses = ([tt.producer] if tt.producer else []) + list(tt.consumers)
        if uses:
            total += max(win[o][1] for o in uses) - min(win[o][0] for o in uses) + 1
    return total


def build(problem: Problem, flags: Flags, order: list[str] | None = None,
          window: dict[str, tuple[int, int]] | None = None, recompute: str = "") -> Formulation:
    """Variables, then the constraints rule by rule, then the objective (non-compulsory
    bytes). With `order`, the ops run in that order (the replacement problem alone); with
    `window`, each op runs inside its given [first, last] steps (a neighbourhood).

    `recompute` (fixed orders only; objective in bytes): "plan" lets an activation come
    back by re-running its producer just before a step that reads it, its producer's
    inputs resident at that step (a restriction: they could leave before the step's own
    compute), at problem.recompute_weight per FLOP; "relax" drops that condition and
    rounds the charge down, so its optimum is a lower bound on every plan of the order."""
    g, size = problem.graph, problem.sizes
    a = problem.target.alignment
    n = len(g.ops)
    win = window or windows(problem, flags.windows, order)
    uses: dict[str, list[str]] = {}
    for t in size:
        tt = g.tensors[t]
        u = ([tt.producer] if tt.producer else []) + list(tt.consumers)
        if tt.consumers or tt.producer:
            uses[t] = u
    span = {t: (min(win[o][0] for o in u), max(win[o][1] for o in u)) for t, u in uses.items()}
    redo = _recomputable(problem, win, uses, recompute == "relax") if recompute else {}
    if recompute == "plan":  # the producer's inputs may be needed where t is recomputed
        for t, steps in redo.items():
            for i in problem.tensors_of(g.op(g.tensors[t].producer)):
                if i != t and i in span:
                    span[i] = (min(span[i][0], min(steps)), max(span[i][1], max(steps)))
    f = Formulation(Model(), n, win, uses, span)
    m = f.model
    f.obj_unit = 1 if recompute else _gcd(size[t] for t in uses) or 1
    f.cap_unit = _gcd([align_up(size[t], a) for t in uses] + [align_up(problem.capacity, a)]) or 1
    kind = {t: g.tensors[t].kind for t in uses}

    # x[o, s] = 1 if op o computes at step s (only where its window is wider than one step).
    for o, (lo, hi) in win.items():
        if lo < hi:
            for s in range(lo, hi + 1):
                f.X[o, s] = m.var(f"x_{o}_{s}")
    # r[t, s] = 1 if tensor t is resident in fast memory while step s computes.
    for t, (lo, hi) in span.items():
        fixed = {win[o][0] for o in uses[t] if win[o][0] == win[o][1]}
        for s in range(lo, hi + 1):
            f.r[t, s] = m.var(f"r_{t}_{s}", lb=1 if s in fixed else 0)
    # l[t, s] = 1 if t is loaded from slow memory just before step s (a new residency).
    for t, (lo, hi) in span.items():
        if kind[t] in ("input", "weight"):
            steps = _use_steps(f, g.tensors[t].consumers) if flags.jit_loads else range(lo, hi + 1)
        else:
            p_lo = win[g.tensors[t].producer][0]
            steps = _use_steps(f, g.tensors[t].consumers) if flags.jit_loads else range(p_lo + 1, hi + 1)
            steps = [s for s in steps if s > p_lo]
        for s in steps:
            f.l[t, s] = m.var(f"l_{t}_{s}", cost=size[t] // f.obj_unit)
    # st[t] = 1 if activation t is stored to slow memory (right after it is computed).
    for t in uses:
        if kind[t] == "activation" and any((t, s) in f.l for s in range(span[t][0], span[t][1] + 1)):
            f.st[t] = m.var(f"st_{t}", cost=size[t] // f.obj_unit)
    # rc[t, s] = 1 if activation t is recomputed (its producer run again) just before step s.
    for t, steps in redo.items():
        w = problem.recompute_weight * g.op(g.tensors[t].producer).flops
        for s in steps:
            # The exact charge (rounding 0.4 B to 0 made recomputes free, and plans cost more
            # than the model said); floored in the relaxation, so its bound stays a bound.
            f.rc[t, s] = m.var(f"rc_{t}_{s}", cost=math.floor(w) if recompute == "relax" else w)
    # The first load of every used input and weight is compulsory (DESIGN §3).
    m.offset = -sum(size[t] for t in uses if kind[t] in ("input", "weight") and g.tensors[t].consumers) // f.obj_unit

    # Cut: every used input and weight is loaded at least once (the compulsory load).
    loads_of: dict[str, dict[int, int]] = {}
    for (t, s), i in f.l.items():
        loads_of.setdefault(t, {})[i] = 1
    for t in uses:
        if kind[t] in ("input", "weight") and g.tensors[t].consumers:
            m.row(f"firstload_{t}", loads_of.get(t, {}), lo=1)
    # Order: every op runs once, every step runs one op.
    for o, (lo, hi) in win.items():
        if lo < hi:
            m.row(f"once_{o}", {f.X[o, s]: 1 for s in range(lo, hi + 1)}, 1, 1)
    at_step: dict[int, list[str]] = {}
    for o, (lo, hi) in win.items():
        for s in range(lo, hi + 1):
            at_step.setdefault(s, []).append(o)
    for s, os_ in at_step.items():
        if any(win[o][0] < win[o][1] for o in os_):
            terms, const = _sum(f.at(o, s) for o in os_)
            m.row(f"step_{s}", terms, 1 - const, 1 - const)
    # Order: a producer runs before each consumer.
    edges = {(g.tensors[t].producer, c) for t in uses for c in g.tensors[t].consumers if g.tensors[t].producer}
    for u, v in sorted(edges):
        if win[u][0] == win[u][1] and win[v][0] == win[v][1]:
            continue
        if flags.strong_precedence:
            for s in range(win[v][0], win[u][1] + 1):  # done(v, s) <= done(u, s - 1)
                (tv, cv), (tu, cu) = f.done(v, s), f.done(u, s - 1)
                m.row(f"prec_{u}_{v}_{s}", _lin((1, tv), (-1, tu)), hi=cu - cv)
        else:  # pos(v) >= pos(u) + 1
            (tv, cv), (tu, cu) = _pos(f, v), _pos(f, u)
            m.row(f"prec_{u}_{v}", _lin((1, tv), (-1, tu)), lo=1 + cu - cv)

    # DESIGN §3 compute rule: inputs and outputs of op o resident at its step.
    for o in g.ops:
        lo, hi = win[o.name]
        if lo < hi:
            for t in problem.tensors_of(o):
                for s in range(lo, hi + 1):
                    m.row(f"compute_{o.name}_{t}_{s}", {f.r[t, s]: 1, f.X[o.name, s]: -1}, lo=0)
    # A residency begins with a load or with the compute of the tensor's producer.
    for t, (lo, hi) in span.items():
        p = g.tensors[t].producer
        for s in range(lo, hi + 1):  # r[t, s] <= r[t, s - 1] + l[t, s] + x[p, s]
            tp, cp = f.at(p, s) if p is not None else ({}, 0)
            prev = {f.r[t, s - 1]: 1} if s > lo else {}
            load = {f.l[t, s]: 1} if (t, s) in f.l else {}
            if (t, s) in f.rc:
                load[f.rc[t, s]] = 1
            m.row(f"arrive_{t}_{s}", _lin((1, {f.r[t, s]: 1}), (-1, prev), (-1, load), (-1, tp)), hi=cp)
    # DESIGN §3 compute rule, for a recompute: the producer's inputs resident ("plan" only).
    if recompute == "plan":
        for (t, s), k in f.rc.items():
            for i in problem.tensors_of(g.op(g.tensors[t].producer)):
                if i != t:
                    m.row(f"redo_{t}_{s}_{i}", {k: 1, f.r[i, s]: -1}, hi=0)
    # DESIGN §3 load rule: an activation is loaded only after it was computed and stored.
    for t in uses:
        p = g.tensors[t].producer
        if p is None:
            continue
        for s in range(span[t][0], span[t][1] + 1):
            td, cd = f.done(p, s)
            if cd == 0:  # not produced for certain by s
                m.row(f"made_{t}_{s}", _lin((1, {f.r[t, s]: 1}), (-1, td)), hi=cd)
            if (t, s) in f.l:
                td, cd = f.done(p, s - 1)
                if cd == 0:
                    m.row(f"loadafter_{t}_{s}", _lin((1, {f.l[t, s]: 1}), (-1, td)), hi=cd)
                if t in f.st:
                    m.row(f"stored_{t}_{s}", {f.l[t, s]: 1, f.st[t]: -1}, hi=0)
    # Pruning: a residency ends at a step that uses the tensor (keeping it longer only costs room).
    if flags.early_evict:
        feeds: dict[tuple[str, int], dict[int, int]] = {}  # a recompute at s reads the tensor too
        for (t, s), k in f.rc.items():
            for i in problem.tensors_of(g.op(g.tensors[t].producer)):
                feeds.setdefault((i, s), {})[k] = 1
        for t, (lo, hi) in span.items():
            for s in range(lo, hi + 1):
                tu, cu = _sum([f.at(o, s) for o in uses[t]] + [(feeds.get((t, s), {}), 0)])
                if cu >= 1:
                    continue
                nxt = {f.r[t, s + 1]: -1} if s < hi else {}
                m.row(f"evict_{t}_{s}", _lin((1, {f.r[t, s]: 1}), (1, nxt), (-1, tu)), hi=0)
    # Cut: a tensor is live from its producer (or first reader) to its last reader; while live
    # it is resident unless spilled, and a spill costs a reload (and a store for activations).
    if flags.liveness_cuts:
        _liveness(f, problem)
    # DESIGN §3 capacity, aggregated: the padded bytes resident at a step fit in the capacity
    # rounded up to the alignment (each residency claims [offset, offset + padded size)).
    cap = align_up(problem.capacity, a) // f.cap_unit
    for s in range(n):
        terms = {f.r[t, s]: align_up(size[t], a) // f.cap_unit for t in uses if (t, s) in f.r}
        m.row(f"capacity_{s}", terms, hi=cap)
    if problem.capacity % a:
        for s in range(n):
            terms = {f.r[t, s]: size[t] for t in uses if (t, s) in f.r}
            m.row(f"capacity_bytes_{s}", terms, hi=problem.capacity)
    return f


def _liveness(f: Formulation, problem: Problem, max_pairs: int = 64) -> None:
    """z[t] = 1 if t may leave fast memory while live; r[t, s] + z[t] >= done(a, s) -
    done(b, s - 1) for a use a that starts the live range and a reader b that ends it."""
    g, m = problem.graph, f.model
    for t, u in f.uses.items():
        tt = g.tensors[t]
        first = [tt.producer] if tt.producer else list(tt.consumers)
        pairs = [(a, b) for a in first for b in tt.consumers if a != b][:max_pairs]
        rows = []
        for a, b in pairs:
            for s in range(max(f.window[a][0], f.span[t][0]), min(f.window[b][1], f.span[t][1]) + 1):
                (ta, ca), (tb, cb) = f.done(a, s), f.done(b, s - 1)
                if ca - cb <= 0 and not ta:
                    continue
                rows.append((a, b, s, ta, ca, tb, cb))
        if not rows:
            continue
        z = f.z[t] = m.var(f"z_{t}")
        for a, b, s, ta, ca, tb, cb in rows:  # r + z - done(a, s) + done(b, s - 1) >= 0
            m.row(f"live_{t}_{a}_{b}_{s}", _lin((1, {f.r[t, s]: 1, z: 1}), (-1, ta), (1, tb)), lo=ca - cb)
        back = {f.l[t, s]: 1 for s in range(f.span[t][0], f.span[t][1] + 1) if (t, s) in f.l}
        back.update({f.rc[t, s]: 1 for s in range(f.span[t][0], f.span[t][1] + 1) if (t, s) in f.rc})
        m.row(f"spillload_{t}", {**back, z: -1}, lo=0)
        if t in f.st and not any((t, s) in f.rc for s in range(f.span[t][0], f.span[t][1] + 1)):
            m.row(f"spillstore_{t}", {f.st[t]: 1, z: -1}, lo=0)


def _recomputable(problem: Problem, win: dict[str, tuple[int, int]], uses: dict[str, list[str]],
                  relax: bool) -> dict[str, list[int]]:
    """Per tensor that may be recomputed, the steps before which: those of its readers after
    its producer's (fixed orders only). Plans recompute activations of single-output ops;
    the relaxation lets every produced tensor come back so, or its bound would not hold."""
    g = problem.graph
    if any(lo != hi for lo, hi in win.values()):
        raise ValueError("recompute is modelled for fixed orders only")
    out = {}
    for t in uses:
        tt = g.tensors[t]
        if tt.producer and (relax or (tt.kind == "activation" and len(g.op(tt.producer).outputs) == 1)):
            made = win[tt.producer][0]
            steps = sorted({win[o][0] for o in tt.consumers if win[o][0] > made})
            if steps:
                out[t] = steps
    return out


def _use_steps(f: Formulation, ops: list[str]) -> list[int]:
    return sorted({s for o in ops for s in range(f.window[o][0], f.window[o][1] + 1)})


def _pos(f: Formulation, o: str) -> tuple[dict[int, int], int]:
    lo, hi = f.window[o]
    if lo == hi:
        return {}, lo
    return {f.X[o, s]: s for s in range(lo, hi + 1)}, 0


def _lin(*pairs: tuple[int, dict[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for c, terms in pairs:
        for i, v in terms.items():
            out[i] = out.get(i, 0) + c * v
    return out


def _sum(exprs) -> tuple[dict[int, int], int]:
    terms: dict[int, int] = {}
    const = 0
    for t, c in exprs:
        const += c
        for i, v in t.items():
            terms[i] = terms.get(i, 0) + v
    return terms, const


def _gcd(values) -> int:
    out = 0
    for v in values:
        out = math.gcd(out, v)
    return out
