"""A solver-neutral 0-1 linear model and the three open-source back ends that solve it:
HiGHS (through highspy, the default), CBC (through PuLP) and OR-Tools CP-SAT.

The formulation (`solvers.exact.model`) writes rows once into `Model`; each back end
copies them into its own API, passes the warm start, honours the time limit and the
thread count, and answers with a `Result` whose status tells "proved optimal", "found a
solution in time", "found nothing in time" and "proved infeasible" apart, so a time-out
is never read as infeasibility. Every coefficient is an integer (bytes divided by a common
unit), which CP-SAT needs and which lets a bound be rounded up to the next integer.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OPTIMAL, FEASIBLE, NO_SOLUTION, INFEASIBLE = "optimal", "feasible", "no solution", "infeasible"


@dataclass
class Model:
    """min cost . x  subject to  lo <= A x <= hi,  x integer in [lb, ub] (binary unless set)."""

    lb: list[int] = field(default_factory=list)
    ub: list[int] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)  # whole bytes; recompute charges may be fractional
    names: list[str] = field(default_factory=list)
    row_names: list[str] = field(default_factory=list)
    row_idx: list[list[int]] = field(default_factory=list)
    row_val: list[list[int]] = field(default_factory=list)
    row_lo: list[float] = field(default_factory=list)
    row_hi: list[float] = field(default_factory=list)
    offset: int = 0  # constant added to the objective

    def var(self, name: str, lb: int = 0, ub: int = 1, cost: float = 0) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        self.cost.append(cost)
        self.names.append(name)
        return len(self.lb) - 1

    def row(self, name: str, terms: dict[int, int], lo: float = -math.inf, hi: float = math.inf) -> None:
        """Adds lo <= sum(c * x[i] for i, c in terms) <= hi; drops zero coefficients."""
        terms = {i: c for i, c in terms.items() if c}
        if not terms:
            assert lo <= 0 <= hi, f"constant row {name} is violated"
            return
        self.row_names.append(name)
        self.row_idx.append(list(terms))
        self.row_val.append(list(terms.values()))
        self.row_lo.append(lo)
        self.row_hi.append(hi)

    def integral(self) -> bool:
        """Whole-number costs: then objective values and bounds are whole too (bytes; a
        recompute charge, weight x FLOPs, may be fractional)."""
        return all(float(c).is_integer() for c in self.cost)

    def objective(self, x: list[float] | np.ndarray) -> float:
        value = float(np.dot(self.cost, x)) + self.offset
        return round(value) if abs(value - round(value)) < 1e-6 else value  # whole bytes stay ints

    def violated(self, x: list[float]) -> str | None:
        """The name of the first row or bound `x` breaks, or None (checks warm starts)."""
        for i, v in enumerate(x):
            if not self.lb[i] <= v <= self.ub[i]:
                return self.names[i]
        for k, (idx, val) in enumerate(zip(self.row_idx, self.row_val)):
            s = sum(c * x[i] for i, c in zip(idx, val))
            if not self.row_lo[k] - 1e-6 <= s <= self.row_hi[k] + 1e-6:
                return self.row_names[k]
        return None


@dataclass
class Result:
    status: str  # OPTIMAL, FEASIBLE, NO_SOLUTION or INFEASIBLE
    x: list[int] | None  # the incumbent, rounded
    objective: int | None  # of the incumbent, offset included
    bound: float  # proven lower bound on the objective (offset included)
    seconds: float


def solve(model: Model, backend: str, time_limit: float, threads: int, hint: list[int] | None,
          dump: str | None = None, bound_only: bool = False, isolate: bool = False,
          stop_at: float | None = None, relax: bool = False) -> Result:
    """Solves `model`; `bound_only` spends no effort on primal heuristics (HiGHS), for
    models solved for their bound; `stop_at` ends a HiGHS solve once its bound reaches it
    (a relaxation needs to prove no more than the best plan's cost); `isolate` runs the solve in a child process that is
    killed at the time limit (HiGHS's root cut loop can overrun its own limit by minutes);
    `relax` solves the LP relaxation (HiGHS) for its optimum, a bound, and no solution."""
    t0 = time.perf_counter()
    if backend not in ("highs", "cbc", "cpsat"):
        raise ValueError(f"unknown backend {backend!r}; choose highs, cbc or cpsat")
    if relax and backend != "highs":
        raise ValueError("only the highs backend solves relaxations")
    if not model.lb:  # nothing to decide (HiGHS reports no solution for an empty model)
        return Result(OPTIMAL, [], model.offset, model.offset, time.perf_counter() - t0)
    args = (backend, model, max(time_limit, 0.05), threads, hint, dump, bound_only, stop_at, relax)
    # OR-Tools and highspy each bundle HiGHS, and one process cannot load both: the one
    # that would clash runs in a fresh child process.
    clash = "ortools" if backend != "cpsat" else "highspy"
    if isolate or any(m == clash or m.startswith(clash + ".") for m in sys.modules if m != "ortools"):
        status, x, bound = _isolated(args, time_limit if isolate else None)
    else:
        status, x, bound = _run(*args)
    xi = [int(round(v)) for v in x] if x is not None else None
    obj = model.objective(xi) if xi is not None else None
    bound = max(bound, model.offset + min(0, sum(c for c in model.cost if c < 0)))
    if obj is not None and bound >= obj - 1e-6:
        status, bound = OPTIMAL, obj
    return Result(status, xi, obj, bound, time.perf_counter() - t0)


def _isolated(args: tuple, timeout: float | None):
    """`_run(*args)` in a fresh interpreter, killed after `timeout` seconds (then: no
    solution, no bound). The child gets 1.5 s less, for starting up.

    The child ignores SIGINT (a Ctrl-C reaches the whole foreground process group; the
    parent alone turns it into one line and exit 130, and kills the child on the way
    out) and, on Linux, is killed when its parent dies however that happens."""
    import pickle
    import subprocess
    import tempfile

    if timeout is not None:
        args = args[:2] + (max(timeout - 1.5, 0.05),) + args[3:]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.pkl", Path(tmp) / "out.pkl"
        src.write_bytes(pickle.dumps(args))
        code = f"from planner.solvers.exact.backends import _child; _child({str(src)!r}, {str(dst)!r})"
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                preexec_fn=child_setup)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return NO_SOLUTION, None, -math.inf
        finally:
            if proc.poll() is None:  # time limit, Ctrl-C or any other way out of the wait
                proc.kill()
                proc.wait()
        if proc.returncode != 0 or not dst.exists():
            raise RuntimeError(f"the {args[0]} child process failed with exit code {proc.returncode}")
        return pickle.loads(dst.read_bytes())


def child_setup() -> None:
    """Runs in the forked child before exec: ignore SIGINT (Python keeps an ignored SIGINT
    ignored at start-up) and ask Linux for SIGKILL when the parent dies (PR_SET_PDEATHSIG)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _child(src: str, dst: str) -> None:
    import pickle

    out = _run(*pickle.loads(Path(src).read_bytes()))
    Path(dst).write_bytes(pickle.dumps(out))


def _run(backend: str, model: Model, time_limit: float, threads: int, hint, dump, bound_only: bool,
         stop_at: float | None = None, relax: bool = False):
    if backend == "highs":
        return _highs(model, time_limit, threads, hint, dump, bound_only, stop_at, relax)
    return {"cbc": _cbc, "cpsat": _cpsat}[backend](model, time_limit, threads, hint, dump)


def _highs(model: Model, time_limit: float, threads: int, hint, dump, bound_only: bool = False,
           stop_at: float | None = None, relax: bool = False):
    import highspy

    h = _quiet_highs()
    h.setOptionValue("time_limit", float(time_limit))
    _interrupt_at(h, time.perf_counter() + time_limit, stop_at)
    h.setOptionValue("threads", int(threads))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.999 if model.integral() else 0.0)  # whole objectives: within 1 is proven
    h.setOptionValue("random_seed", 0)
    if bound_only:
        h.setOptionValue("mip_heuristic_effort", 0.0)
    lp = _highs_lp(model, integral=not relax)
    if dump:
        lp.col_names_, lp.row_names_ = list(model.names), list(model.row_names)
    h.passModel(lp)
    if dump:
        h.writeModel(dump)
    if hint is not None:
        sol = highspy.HighsSolution()
        sol.col_value = [float(v) for v in hint]
        sol.value_valid = True
        h.setSolution(sol)
    h.run()
    ms = h.getModelStatus()
    info = h.getInfo()
    has_x = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = list(h.getSolution().col_value) if has_x else None
    if ms == highspy.HighsModelStatus.kInfeasible:
        return INFEASIBLE, None, math.inf
    if relax:
        return NO_SOLUTION, None, info.objective_function_value if ms == highspy.HighsModelStatus.kOptimal else -math.inf
    if ms == highspy.HighsModelStatus.kOptimal and has_x:
        return OPTIMAL, x, info.objective_function_value
    bound = info.mip_dual_bound
    bound = bound if math.isfinite(bound) else -math.inf
    return (FEASIBLE if has_x else NO_SOLUTION), x, bound


def _cpsat(model: Model, time_limit: float, threads: int, hint, dump):
    from ortools.sat.python import cp_model

    m = cp_model.CpModel()
    xs = [m.new_int_var(lo, hi, name) for lo, hi, name in zip(model.lb, model.ub, model.names)]
    for idx, val, lo, hi in zip(model.row_idx, model.row_val, model.row_lo, model.row_hi):
        expr = sum(c * xs[i] for i, c in zip(idx, val))
        if lo > -math.inf:
            m.add(expr >= math.ceil(lo - 1e-9))
        if hi < math.inf:
            m.add(expr <= math.floor(hi + 1e-9))
    m.minimize(sum(c * x for c, x in zip(model.cost, xs) if c) + model.offset)
    if hint is not None:
        for x, v in zip(xs, hint):
            m.add_hint(x, int(v))
    if dump:
        m.export_to_file(dump)
    s = cp_model.CpSolver()
    s.parameters.max_time_in_seconds = float(time_limit)
    s.parameters.num_workers = max(1, int(threads))
    s.parameters.random_seed = 0
    st = s.solve(m)
    if st == cp_model.INFEASIBLE:
        return INFEASIBLE, None, math.inf
    if st in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        x = [s.value(v) for v in xs]
        return (OPTIMAL if st == cp_model.OPTIMAL else FEASIBLE), x, s.best_objective_bound
    return NO_SOLUTION, None, s.best_objective_bound if math.isfinite(s.best_objective_bound) else -math.inf


def _cbc(model: Model, time_limit: float, threads: int, hint, dump):
    import pulp

    p = pulp.LpProblem("exact", pulp.LpMinimize)
    xs = [pulp.LpVariable(f"x{i}", lo, hi, cat="Integer") for i, (lo, hi) in enumerate(zip(model.lb, model.ub))]
    p += pulp.lpSum(c * xs[i] for i, c in enumerate(model.cost) if c) + model.offset
    for k, (idx, val, lo, hi) in enumerate(zip(model.row_idx, model.row_val, model.row_lo, model.row_hi)):
        expr = pulp.lpSum(c * xs[i] for i, c in zip(idx, val))
        if lo == hi:
            p += expr == lo, f"r{k}"
        else:
            if lo > -math.inf:
                p += expr >= lo, f"r{k}l"
            if hi < math.inf:
                p += expr <= hi, f"r{k}h"
    if hint is not None:
        for x, v in zip(xs, hint):
            x.setInitialValue(int(v))
    if dump:
        p.writeLP(dump)
    cmd = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, int(0.8 * time_limit)), threads=max(1, int(threads)),
                            warmStart=hint is not None)
    status = p.solve(cmd)
    x = [v.value() for v in xs] if p.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible) else None
    if x is not None and any(v is None for v in x):
        x = None
    if status == pulp.LpStatusInfeasible:
        return INFEASIBLE, None, math.inf
    if p.sol_status == pulp.LpSolutionOptimal and x is not None:
        return OPTIMAL, x, model.objective([round(v) for v in x])
    # PuLP does not report CBC's dual bound: fall back to the LP relaxation, a valid bound.
    return (FEASIBLE if x is not None else NO_SOLUTION), x, _lp_bound(model, max(0.5, 0.2 * time_limit))


def _lp_bound(model: Model, time_limit: float = 30.0) -> float:
    """The LP relaxation's optimum, by HiGHS: a valid (weak) lower bound."""
    import highspy

    h = _quiet_highs()
    h.setOptionValue("time_limit", time_limit)
    _interrupt_at(h, time.perf_counter() + time_limit)
    lp = _highs_lp(model, integral=False)
    h.passModel(lp)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return -math.inf
    return h.getInfo().objective_function_value - 1e-6


def _quiet_highs():
    """A silent `highspy.Highs`. The first one built in a process prints HiGHS's banner
    from C++ straight to file descriptor 1, before any option can turn output off, which
    breaks `--json` and clutters every summary; so it is built with fd 1 on /dev/null
    (C's stdout buffer flushed before fd 1 is put back)."""
    import ctypes

    import highspy

    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        h = highspy.Highs()
        ctypes.CDLL(None).fflush(None)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    h.setOptionValue("output_flag", False)
    return h


def _interrupt_at(h, deadline: float, stop_at: float | None = None) -> None:
    """HiGHS checks its time limit only between phases; a callback in the simplex, IPM and
    branch-and-bound loops stops a long root LP at the deadline too, and branch and bound
    once its dual bound reaches `stop_at`."""
    import highspy

    def stop(kind, _message, out, data_in, _user):
        if time.perf_counter() > deadline:
            data_in.user_interrupt = True
        elif (stop_at is not None and kind == highspy.cb.HighsCallbackType.kCallbackMipInterrupt
              and out.mip_dual_bound >= stop_at - 1e-6):
            data_in.user_interrupt = True

    h.setCallback(stop, None)
    for kind in ("kCallbackSimplexInterrupt", "kCallbackIpmInterrupt", "kCallbackMipInterrupt"):
        h.startCallback(getattr(highspy.cb.HighsCallbackType, kind))


def _highs_lp(model: Model, integral: bool):
    import highspy

    lp = highspy.HighsLp()
    n = len(model.lb)
    lp.num_col_, lp.num_row_ = n, len(model.row_lo)
    lp.col_cost_ = np.asarray(model.cost, dtype=float)
    lp.col_lower_ = np.asarray(model.lb, dtype=float)
    lp.col_upper_ = np.asarray(model.ub, dtype=float)
    inf = highspy.kHighsInf
    lp.row_lower_ = np.array([-inf if v == -math.inf else v for v in model.row_lo], dtype=float)
    lp.row_upper_ = np.array([inf if v == math.inf else v for v in model.row_hi], dtype=float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.cumsum([0] + [len(r) for r in model.row_idx]).astype(np.int32)
    lp.a_matrix_.index_ = np.fromiter((i for r in model.row_idx for i in r), dtype=np.int32)
    lp.a_matrix_.value_ = np.fromiter((v for r in model.row_val for v in r), dtype=float)
    lp.offset_ = float(model.offset)
    if integral:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * n
    return lp
