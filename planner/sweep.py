"""Design-space sweeps: traffic against budget for one or more models (issue 14).

A sweep plans every model at many budgets: `points` budgets evenly from M_R to M_P (both
ends), or a list of sizes and reference names. Each model is lowered and its reference
budgets computed ONCE, here, and shipped to one task per distinct (model, budget); the
tasks run in parallel on an engine:

- `local`: one fresh interpreter per task, at most `jobs` at a time. A process per task
  is what lets a task that crashes or runs past its time cost only its own row.
- `ray`: the same function as a Ray remote task, each model's graph put in the object
  store once; a local Ray instance, or the cluster at `address`. Ray is an optional
  extra (`pip install planner[ray]`).

Rows are made monotone afterwards: a plan that fits a budget fits every larger one, so no
row may show more traffic than a row of the same model at a smaller budget; where a
solve did worse than a smaller budget's plan, the row takes that plan and says so in
`reused_from`. Likewise a lower bound at a budget bounds every smaller budget
(`bound_from`).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import pickle
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from planner import bounds as _bounds
from planner import registry
from planner.errors import BadInput, Infeasible, PlannerError
from planner.ir import Graph, Target
from planner.units import BUDGET_NAMES, budget_name, format_bytes, parse_bytes

ENGINES = ("local", "ray")
RAY_MISSING = "--engine ray needs Ray: pip install planner[ray]"
# Row fields in CSV column order; JSON rows carry the same keys.
FIELDS = ("model", "budget_bytes", "budget_names", "noncompulsory_bytes", "traffic_bytes", "compulsory_bytes",
          "peak_bytes", "status", "bound", "gap", "solver", "seconds", "engine", "machine", "reused_from",
          "bound_from", "M_R", "M_P", "error")


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep, carrying the rows that finished before it (monotone), so the
    CLI can write them; still a KeyboardInterrupt for callers that do not care."""

    def __init__(self, rows: list[dict[str, Any]]):
        super().__init__()
        self.rows = rows


@dataclass(frozen=True)
class Task:
    """One (model, budget) solve: everything a worker needs besides the shipped graph."""

    model: str
    budget_bytes: int
    budget_names: tuple[str, ...]  # the reference budgets equal to budget_bytes
    target: Target
    solver: str
    time_limit: float
    engine: str


def parse_budgets(text: str) -> list[int | str]:
    """'M_R,1.5MiB,M_P' -> ['M_R', 1572864, 'M_P']: sizes as bytes, reference names as
    names (resolved per model, once its bounds are known). Raises BadInput at once on a
    bad item, before any model is lowered."""
    items: list[int | str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise BadInput(f"cannot read budgets {text!r}: an empty item; write e.g. M_R,2MiB,M_P")
        items.append(budget_name(item) or parse_bytes(item))
    return items


def budget_points(b: _bounds.Budgets, points: int | None = None,
                  budgets: Sequence[int | str] | None = None) -> list[int]:
    """The distinct budgets, ascending, for a model with reference budgets `b`: `points`
    evenly from M_R to M_P (both ends included), or `budgets` with names resolved."""
    if budgets is not None:
        return sorted({b.get(x) if isinstance(x, str) else x for x in budgets})
    if points is None or points < 2:
        raise BadInput("a sweep needs at least 2 points (M_R and M_P), or a list of budgets")
    return sorted({b.m_r + (b.m_p - b.m_r) * i // (points - 1) for i in range(points)})


def portable(graph: Graph) -> Graph:
    """The graph without its ops' `fn` (torch callables, only the executor needs them):
    what ships to a worker process or a Ray node."""
    return dataclasses.replace(graph, ops=[dataclasses.replace(o, fn=None) for o in graph.ops])


def solve_point(task: Task, shipped: tuple[Graph, _bounds.Budgets]) -> dict[str, Any]:
    """Plans one budget of a sweep and returns its row. Runs in a worker: the engines
    look it up by name when they start a task. A planning error (an infeasible budget, a
    time limit with no plan) is this row's status; anything else propagates and the
    engine marks the row failed."""
    from planner.api import plan_problem

    graph, b = shipped
    t0 = time.perf_counter()
    row: dict[str, Any] = {"model": task.model, "budget_bytes": task.budget_bytes,
                           "budget_names": list(task.budget_names), "engine": task.engine,
                           "machine": socket.gethostname(), "M_R": b.m_r, "M_P": b.m_p}
    try:
        p = plan_problem(graph, task.target, task.budget_bytes, b, solver=task.solver, time_limit=task.time_limit)
    except PlannerError as e:
        status = "infeasible" if isinstance(e, Infeasible) else "failed"
        return {**row, "status": status, "error": str(e), "seconds": round(time.perf_counter() - t0, 3)}
    m, s = p.metrics, p.solver
    assert m is not None
    return {**row, "noncompulsory_bytes": m.noncompulsory_bytes, "traffic_bytes": m.traffic_bytes,
            "compulsory_bytes": m.compulsory_bytes, "peak_bytes": m.peak_bytes, "status": s.status,
            "bound": None if s.bound is None or not math.isfinite(s.bound) else int(math.ceil(s.bound - 1e-6)),
            "gap": s.gap, "solver": s.name, "seconds": round(time.perf_counter() - t0, 3)}


def failed_row(task: Task, b: _bounds.Budgets, reason: str, seconds: float, machine: str | None = None
               ) -> dict[str, Any]:
    """The row of a task whose worker died, timed out or raised: the reason, no metrics;
    `machine` where the engine knows it (Ray does not say where a lost task ran)."""
    return {"model": task.model, "budget_bytes": task.budget_bytes, "budget_names": list(task.budget_names),
            "engine": task.engine, "machine": machine, "M_R": b.m_r, "M_P": b.m_p,
            "status": "failed", "error": reason, "seconds": round(seconds, 3)}


# -- engines -----------------------------------------------------------------------------
# Both take tasks with `submit` and hand back finished (task, row) pairs from `poll`; each
# runs at most `jobs` tasks at once and counts a task's `timeout` from its start.

def worker_main(job: str) -> None:
    """A local worker's whole life: reads (fn, task) from `job`/in.pkl and the model's
    shipped graph from the file it names, runs fn, writes ('ok', row) or ('error', reason)
    to `job`/out.pkl. Runs in a fresh interpreter (see LocalEngine)."""
    folder = Path(job)
    fn, task, shipped = pickle.loads((folder / "in.pkl").read_bytes())
    try:
        result = ("ok", fn(task, pickle.loads(Path(shipped).read_bytes())))
    except Exception as e:  # noqa: BLE001 - any failure is this row's reason
        result = ("error", f"{type(e).__name__}: {e}".splitlines()[0])
    (folder / "out.pkl.tmp").write_bytes(pickle.dumps(result))
    os.replace(folder / "out.pkl.tmp", folder / "out.pkl")  # whole or absent, whatever kills us


def _worker_setup() -> None:
    """Runs in a local worker before exec: ignore SIGINT (Ctrl-C reaches the whole process
    group; the parent alone decides, writes what finished and kills the workers) and, on
    Linux, die with the parent however it dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: close() still kills workers on the way out
        pass


def _died(code: int | None, stderr: Path) -> str:
    """Why a worker ended without a result: its signal or exit code, and its last words."""
    why = f"exit code {code}"
    if code is not None and code < 0:
        try:
            why = signal.Signals(-code).name
        except ValueError:
            pass
    try:
        last = next((line for line in reversed(stderr.read_text(errors="replace").splitlines()) if line.strip()), "")
    except OSError:
        last = ""
    return f"worker died ({why})" + (f": {last.strip()[:200]}" if last else "")


class LocalEngine:
    """Processes on this machine, one fresh interpreter per task, at most `jobs` at a time.

    A process per task is what lets a task that crashes, or runs past its time and is
    killed, cost only its own row. A fresh interpreter (0.3-0.5 s to import the solvers)
    rather than a fork: the parent has torch loaded and threads running, and unlike
    multiprocessing's spawn and forkserver it does not re-import the caller's main module,
    so scripts need no `if __name__ == "__main__"` guard. Each model's graph is pickled
    to a file once; every task of the model reads that file."""

    name = "local"

    def __init__(self, jobs: int, timeout: float):
        import tempfile

        self.jobs, self.timeout = jobs, timeout
        self.folder = tempfile.TemporaryDirectory(prefix="planner-sweep-")
        self.queue: deque[tuple[Task, _bounds.Budgets]] = deque()
        self.running: list[tuple[Task, Any, float, _bounds.Budgets, Path]] = []  # (task, proc, start, b, job)
        self.shipped: dict[str, Path] = {}
        self.count = 0
        self.host = socket.gethostname()
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the caller's modules too

    def ship(self, model: str, graph: Graph, b: _bounds.Budgets) -> None:
        """Pickles a model's graph and bounds once, to a file every task of the model reads."""
        path = Path(self.folder.name) / f"model{len(self.shipped)}.pkl"
        path.write_bytes(pickle.dumps((portable(graph), b)))
        self.shipped[model] = path

    def submit(self, task: Task, b: _bounds.Budgets) -> None:
        self.queue.append((task, b))

    def _start(self) -> None:
        import subprocess

        fn = solve_point  # looked up now, by name, so the worker runs what this module holds
        while self.queue and len(self.running) < self.jobs:
            task, b = self.queue.popleft()
            self.count += 1
            job = Path(self.folder.name) / f"task{self.count}"
            job.mkdir()
            (job / "in.pkl").write_bytes(pickle.dumps((fn, task, str(self.shipped[task.model]))))
            with open(job / "stderr", "wb") as err:
                proc = subprocess.Popen([sys.executable, "-c", f"from planner.sweep import worker_main; "
                                         f"worker_main({str(job)!r})"], env=self.env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_worker_setup)
            self.running.append((task, proc, time.monotonic(), b, job))

    def poll(self, timeout: float) -> list[tuple[Task, dict[str, Any]]]:
        """Waits up to `timeout` seconds for tasks to end; returns those that did."""
        end = time.monotonic() + timeout
        while True:
            self._start()
            done, still = [], []
            for task, proc, start, b, job in self.running:
                elapsed = time.monotonic() - start
                code = proc.poll()
                if code is None and elapsed < self.timeout:
                    still.append((task, proc, start, b, job))
                    continue
                if code is None:
                    proc.kill()
                    proc.wait()
                    row = failed_row(task, b, f"timed out after {self.timeout:g} s", elapsed, self.host)
                elif (job / "out.pkl").exists():
                    kind, value = pickle.loads((job / "out.pkl").read_bytes())
                    row = value if kind == "ok" else failed_row(task, b, value, elapsed, self.host)
                else:
                    row = failed_row(task, b, _died(code, job / "stderr"), elapsed, self.host)
                done.append((task, row))
            self.running = still
            if done or not (self.running or self.queue) or time.monotonic() >= end:
                self._start()
                return done
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def close(self) -> None:
        """Kills what still runs (Ctrl-C, an error in the parent) and removes the files."""
        for _, proc, _, _, _ in self.running:
            proc.kill()
            proc.wait()
        self.running.clear()
        self.queue.clear()
        self.folder.cleanup()


def _ray_task(fn: Callable[..., dict[str, Any]], task: Task, shipped: tuple[Graph, _bounds.Budgets]) -> dict[str, Any]:
    """What a Ray worker runs: `fn` on the shipped graph, which Ray fetched from its object store."""
    return fn(task, shipped)


def import_ray() -> Any:
    """The ray module, or BadInput saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BadInput(RAY_MISSING) from None
    return ray


def _check_reachable(address: str) -> None:
    """Fails at once, with BadInput, when nothing listens at a cluster's host:port: Ray
    itself keeps retrying an unreachable address for minutes. 'auto' (the cluster this
    machine belongs to) is left to Ray."""
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise BadInput(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


class RayEngine:
    """Ray remote tasks: a local Ray instance (`address` None) or the cluster at `address`."""

    name = "ray"

    def __init__(self, jobs: int | None, timeout: float, address: str | None):
        self.ray = ray = import_ray()
        self.started = not ray.is_initialized()
        if self.started:
            if address:
                _check_reachable(address)
                try:
                    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
                except ConnectionError as e:
                    raise BadInput(f"cannot join the Ray cluster at {address}: {str(e).splitlines()[0]} (on a "
                                   f"cluster with token authentication, also set RAY_AUTH_MODE=token here)") from None
            else:
                ray.init(num_cpus=jobs or os.cpu_count(), include_dashboard=False, logging_level="WARNING",
                         log_to_driver=False)
        self.jobs = jobs or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.timeout = timeout
        self.remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        self.refs: dict[str, Any] = {}
        self.queue: deque[tuple[Task, _bounds.Budgets]] = deque()
        self.running: dict[Any, tuple[Task, float, _bounds.Budgets]] = {}  # ref -> (task, start, b)

    def ship(self, model: str, graph: Graph, b: _bounds.Budgets) -> None:
        """Puts a model's graph and bounds in the object store once; tasks get a reference."""
        self.refs[model] = self.ray.put((portable(graph), b))

    def submit(self, task: Task, b: _bounds.Budgets) -> None:
        self.queue.append((task, b))

    def _start(self) -> None:
        # no more than `jobs` submitted, so that a task's time counts from its start, not its queueing
        while self.queue and len(self.running) < self.jobs:
            task, b = self.queue.popleft()
            ref = self.remote.remote(solve_point, task, self.refs[task.model])
            self.running[ref] = (task, time.monotonic(), b)

    def poll(self, timeout: float) -> list[tuple[Task, dict[str, Any]]]:
        """Waits up to `timeout` seconds for tasks to end; returns those that did."""
        ray = self.ray
        self._start()
        if not self.running:
            return []
        now = time.monotonic()
        first_deadline = min(start + self.timeout for _, start, _ in self.running.values())
        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=max(0.0, min(timeout, first_deadline - now)))
        ready, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0) if ready else ([], None)
        done = []
        for ref, (task, start, b) in list(self.running.items()):
            elapsed = time.monotonic() - start
            if ref in ready:
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    row = failed_row(task, b, f"{type(cause).__name__}: {cause}".splitlines()[0], elapsed)
                except ray.exceptions.RayError as e:  # the worker or its node died
                    row = failed_row(task, b, f"worker died ({type(e).__name__})", elapsed)
            elif elapsed >= self.timeout:
                ray.cancel(ref, force=True)
                row = failed_row(task, b, f"timed out after {self.timeout:g} s", elapsed)
            else:
                continue
            del self.running[ref]
            done.append((task, row))
        self._start()
        return done

    def close(self) -> None:
        """Cancels what still runs; shuts down the Ray instance this engine started."""
        for ref in self.running:
            self.ray.cancel(ref, force=True)
        self.running.clear()
        self.queue.clear()
        if self.started:
            self.ray.shutdown()


# -- the sweep ---------------------------------------------------------------------------

def sweep(models: Sequence[Any], *, points: int | None = 8, budgets: Sequence[int | str] | str | None = None,
          target: str | Target = "cosma-int8", solver: str = "auto", time_limit: float = 60.0,
          engine: str = "local", address: str | None = None, jobs: int | None = None,
          task_timeout: float | None = None,
          progress: Callable[[int, int, str], None] | None = None) -> list[dict[str, Any]]:
    """Plans each of `models` at many budgets and returns one row per (model, budget).

    Parameters
    ----------
    models : ONNX paths, zoo names, ModelProtos or Graphs (what `planner.plan` takes
        without example inputs).
    points : budgets evenly from M_R to M_P per model, both ends included (default 8).
    budgets : instead of `points`: sizes and M_R / M_H / M_P, a list or a comma string.
        Budgets that coincide for a model (M_R equal to M_P, say) are solved once.
    solver, time_limit, target : as for `planner.plan`, per budget; unlike `plan`'s, the
        time limit does not pay for lowering the model, which happens once per model.
    engine : "local" (processes here) or "ray" (`address` None: a local Ray instance;
        else the cluster there, e.g. "auto" or "ray://head:10001").
    jobs : tasks at once; default: this machine's cores (local), the cluster's CPUs (ray).
    task_timeout : seconds after which a task's worker is killed and its row marked
        failed; default 1.5 x time_limit + 30 (validation and start-up on top of solving).
    progress : called as (done, total, message) after each lowering and each finished point.

    Returns
    -------
    Rows sorted by model (in the given order) and budget, with the keys of `FIELDS`;
    `status` is the solver's, or "infeasible" (a budget below M_R) or "failed" (with
    `error`: the worker died, timed out, or raised).

    Raises
    ------
    BadInput : a bad argument, or engine "ray" without Ray installed.
    SweepInterrupted : Ctrl-C; carries the rows that finished.
    """
    from planner.api import bounds, resolve_target

    if engine not in ENGINES:
        raise BadInput(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if address and engine != "ray":
        raise BadInput("an address is for --engine ray")
    if isinstance(budgets, str):
        budgets = parse_budgets(budgets)
    if budgets is None and (points is None or points < 2):
        raise BadInput("a sweep needs at least 2 points (M_R and M_P), or a list of budgets")
    if jobs is not None and jobs < 1:
        raise BadInput(f"jobs must be at least 1, got {jobs}")
    registry.members(solver)  # an unknown solver fails here, not once per row
    if engine == "ray":
        import_ray()  # fail before the slow lowering
    tgt = resolve_target(target)
    say = progress or (lambda _done, _total, _msg: None)
    timeout = task_timeout if task_timeout is not None else 1.5 * time_limit + 30
    run = (RayEngine(jobs, timeout, address) if engine == "ray" else LocalEngine(jobs or os.cpu_count() or 1, timeout))
    per_model = len(budgets) if budgets is not None else points
    total = per_model * len(models)  # an estimate until each model's budgets are known (duplicates merge)
    rows: list[dict[str, Any]] = []
    order: dict[str, int] = {}
    try:
        for model in models:
            say(len(rows), total, f"lowering {model if isinstance(model, (str, os.PathLike)) else 'a model'}")
            graph, b = bounds(model, target=tgt, time_limit=max(1.0, time_limit / 3))  # as planner.plan
            label = graph.name
            order.setdefault(label, len(order))
            sizes = budget_points(b, points, budgets)
            total -= per_model - len(sizes)
            run.ship(label, graph, b)
            for size in sizes:
                names = tuple(n for n in BUDGET_NAMES if b.get(n) == size)
                run.submit(Task(label, size, names, tgt, solver, time_limit, run.name), b)
            rows += [row for _, row in run.poll(0)]
            say(len(rows), total, f"lowered {label}")
        while run.running or run.queue:
            for task, row in run.poll(1.0):
                rows.append(row)
                say(len(rows), total, f"{task.model} at {format_bytes(task.budget_bytes)}: {row['status']}")
    except KeyboardInterrupt:
        raise SweepInterrupted(monotone(rows, order)) from None
    finally:
        run.close()
    return monotone(rows, order)


def monotone(rows: Iterable[dict[str, Any]], order: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Rows sorted by model (`order`, else by name) and budget, with every solved row's
    traffic at most that of any smaller budget's of the same model (that plan fits here:
    `reused_from` names its budget) and its bound at least any larger budget's (optimal
    traffic never grows as the budget shrinks: `bound_from`). Gap and status follow."""
    out = sorted((dict(r) for r in rows),
                 key=lambda r: ((order or {}).get(r["model"], 0), r["model"], r["budget_bytes"]))
    solved = [r for r in out if "noncompulsory_bytes" in r]
    for model in dict.fromkeys(r["model"] for r in solved):
        mine = [r for r in solved if r["model"] == model]
        best: dict[str, Any] | None = None
        for r in mine:  # ascending budget: carry the least traffic forward
            if best is not None and best["noncompulsory_bytes"] < r["noncompulsory_bytes"]:
                for key in ("noncompulsory_bytes", "traffic_bytes", "peak_bytes", "solver"):
                    r[key] = best[key]
                r["reused_from"] = best["budget_bytes"]
            else:
                best = r
        strongest: dict[str, Any] | None = None
        for r in reversed(mine):  # descending budget: carry the greatest bound back
            if strongest is not None and (r["bound"] is None or strongest["bound"] > r["bound"]):
                r["bound"] = strongest["bound"]
                r["bound_from"] = strongest["budget_bytes"]
            elif r["bound"] is not None:
                strongest = r
        for r in mine:
            if "reused_from" in r or "bound_from" in r:
                _restate(r)
    return out


def _restate(r: dict[str, Any]) -> None:
    """Gap and status of a row whose plan or bound came from another budget."""
    value, bound = r["noncompulsory_bytes"], r["bound"]
    if value == 0:  # no traffic beyond the compulsory: nothing can do better
        r["gap"], r["status"] = 0.0, "optimal"
        return
    if bound is None:
        r["gap"], r["status"] = None, "heuristic"
        return
    r["gap"] = 0.0 if value <= bound else (value - bound) / value
    r["status"] = "optimal" if value <= bound else "feasible"


# -- output ------------------------------------------------------------------------------

def to_json(rows: list[dict[str, Any]], interrupted: bool = False) -> dict[str, Any]:
    """The sweep file: {"rows": [...]}, plus "interrupted": true when Ctrl-C cut it short."""
    return {"rows": [{k: r.get(k) for k in FIELDS} for r in rows], **({"interrupted": True} if interrupted else {})}


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV text (the caller writes it, atomically): the columns of FIELDS,
    lists joined by '/', None left empty."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(FIELDS)
    for r in rows:
        w.writerow(["/".join(v) if isinstance(v, list) else "" if v is None else v for v in (r.get(k) for k in FIELDS)])
    return out.getvalue()


def plot(rows: list[dict[str, Any]], path: str | Path, title: str | None = None) -> None:
    """Traffic against budget, one line per model, its lower bound (compulsory bytes plus
    the solver's bound on the rest) dashed where known, M_R and M_P marked; both axes in
    KiB or MiB, logarithmic (base 2) when the values span more than a factor of 10, as
    they do across a zoo."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.add_subplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    colors = matplotlib.colormaps["tab20" if len(models) > 10 else "tab10"]
    solved = [r for r in rows if r.get("traffic_bytes") is not None]
    xunit = _unit([r["budget_bytes"] for r in solved])
    yunit = _unit([r["traffic_bytes"] for r in solved])
    for i, model in enumerate(models):
        mine = [r for r in solved if r["model"] == model]
        if not mine:
            continue
        color = colors(i % colors.N)
        x, y = [r["budget_bytes"] / xunit[1] for r in mine], [r["traffic_bytes"] / yunit[1] for r in mine]
        ax.plot(x, y, "o-", color=color, ms=3.5, lw=1.4, label=model)
        known = [r for r in mine if r.get("bound") is not None]
        if known:
            ax.plot([r["budget_bytes"] / xunit[1] for r in known],
                    [(r["compulsory_bytes"] + r["bound"]) / yunit[1] for r in known], "--", color=color, lw=1.0)
        for key, marker in (("M_R", "v"), ("M_P", "s")):
            at = [r for r in mine if r["budget_bytes"] == r[key]]
            if at:
                ax.plot([at[0]["budget_bytes"] / xunit[1]], [at[0]["traffic_bytes"] / yunit[1]], marker, color=color,
                        ms=8, mfc="none", mew=1.5)
    for axis, unit, values in ((ax.xaxis, xunit, [r["budget_bytes"] for r in solved]),
                               (ax.yaxis, yunit, [r["traffic_bytes"] for r in solved])):
        if values and max(values) > 10 * max(1, min(values)):  # powers of two in the unit: 256 KiB, 1 MiB, 4 MiB
            (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log", base=2)
            axis.set_major_locator(LogLocator(base=2))
            axis.set_minor_formatter(NullFormatter())
        axis.set_major_formatter(FuncFormatter(lambda v, _pos, u=unit[0]: f"{v:g} {u}"))
    ax.set_xlabel("fast-memory budget")
    ax.set_ylabel("off-chip traffic (loads + stores)")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title or "traffic against budget")
    keys = [Line2D([], [], color="k", marker="v", ls="none", mfc="none", label="M_R"),
            Line2D([], [], color="k", marker="s", ls="none", mfc="none", label="M_P")]
    if any(r.get("bound") is not None for r in solved):
        keys.append(Line2D([], [], color="k", ls="--", label="lower bound"))
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + keys, fontsize=7, ncol=2 if len(handles) > 8 else 1, loc="best")
    fig.savefig(path, dpi=130)


def _unit(values: list[int]) -> tuple[str, int]:
    """The binary unit an axis of these byte counts reads best in: their median's."""
    mid = sorted(values)[len(values) // 2] if values else 0
    return next(((u, s) for u, s in (("MiB", 2**20), ("KiB", 2**10)) if mid >= s), ("B", 1))
