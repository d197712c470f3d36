"""`planner` command line: each subcommand maps onto one API function.

Errors are one line on stderr with a documented exit code; tracebacks only with
PLANNER_DEBUG=1. Slow commands show one updating progress line on stderr (tqdm) when
stdout is a terminal and the output is not JSON, so pipes and `--json` stay clean.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from planner.errors import BadInput, PlannerError
from planner.units import format_bytes, seconds_arg

EXIT_CODES = """exit codes:
  0  success
  1  bad input or usage (malformed model, unknown op, bad size or unit, unwritable path)
  2  infeasible budget (the message names the op that sets M_R and the smallest budget)
  3  time limit reached with no plan
  4  the plan breaks a rule (planner simulate)
  5  internal error (rerun with PLANNER_DEBUG=1 for the traceback)
  130 interrupted (Ctrl-C); nothing is written (planner sweep writes the points that finished)
  141 the reader of stdout went away (e.g. `| head -1`); stops quietly, as Unix tools do"""


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors; 2 means 'infeasible' here, so use 1."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(1, f"planner: error: {message}\n")


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not name or not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: write NAME=1x3x224x224")
    return name, shape


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX file or zoo model name")
    p.add_argument("--target", default="cosma-int8", help="target preset (default cosma-int8; see `planner solvers`)")
    p.add_argument("--shape", type=_shape, action="append", default=[], metavar="NAME=DIMS",
                   help="static shape for a dynamic input, e.g. x=1x3x224x224 (repeatable)")
    fuse = p.add_mutually_exclusive_group()
    fuse.add_argument("--no-fuse", dest="fuse", action="store_false", default=None,
                      help="keep BN/activation epilogues as separate ops")
    fuse.add_argument("--fuse", dest="fuse", action="store_true", help="fold epilogues (default on accelerator targets)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


SWEEP_EPILOG = """rows: model, budget_bytes, traffic_bytes, noncompulsory_bytes, peak_bytes, status, bound, gap,
solver, seconds, engine, machine; reused_from where a smaller budget's plan had less traffic
(a plan that fits a budget fits every larger one), error where a point failed.
Ctrl-C writes the rows that finished and exits 130."""


def _whole(least: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `least`, else a one-line usage error."""
    def read(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = least - 1
        if n < least:
            raise argparse.ArgumentTypeError(f"{text!r}: need a whole number of at least {least}{what}")
        return n

    return read


def _budget_list(text: str) -> list[int | str]:
    from planner.sweep import parse_budgets

    try:
        return parse_budgets(text)
    except BadInput as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="planner", description="Memory planning for DNNs: operator order, scratchpad offsets, "
                     "spill/reload and recompute under a byte budget.", epilog=EXIT_CODES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("plan", help="plan a model under a budget", epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(p)
    p.add_argument("--budget", required=True, help="bytes (2MiB, 1.5MB, 65536) or M_R, M_H, M_P")
    p.add_argument("--solver", default="auto", help="solver or portfolio name (see `planner solvers`)")
    p.add_argument("--time-limit", type=seconds_arg, default=60.0, help="seconds for the whole solve (default 60)")
    p.add_argument("--fixed-order", action="store_true", help="keep the model's op order")
    p.add_argument("--allow-recompute", action="store_true", help="lost activations may be recomputed")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="skip the simulator replay")
    p.add_argument("-o", "--output", help="write the plan JSON here")
    p.set_defaults(run=cmd_plan)

    p = sub.add_parser("sweep", help="traffic against budget: plan models at many budgets in parallel",
                       epilog=SWEEP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="+", help="ONNX files or zoo model names")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--points", type=_whole(2, " (M_R and M_P)"), default=8,
                       help="budgets evenly from M_R to M_P per model, both ends included (default 8)")
    where.add_argument("--budgets", type=_budget_list, metavar="LIST",
                       help="comma list of sizes and M_R, M_H, M_P, e.g. M_R,1.5MiB,M_P")
    p.add_argument("--solver", default="auto", help="solver or portfolio name (see `planner solvers`)")
    p.add_argument("--time-limit", type=seconds_arg, default=60.0,
                   help="seconds for each budget's solve (default 60); a model's lowering and bounds, done once, "
                   "are not part of it")
    p.add_argument("--target", default="cosma-int8", help="target preset (default cosma-int8)")
    p.add_argument("-o", "--output", required=True, help="write the rows here as JSON: {\"rows\": [...]}")
    p.add_argument("--csv", help="also write the rows as CSV")
    p.add_argument("--plot", help="draw traffic against budget (.png, .svg, .pdf, ...)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: processes here (default); ray: Ray tasks (pip install planner[ray])")
    p.add_argument("--address", help="with --engine ray: join the cluster there (e.g. auto, ray://head:10001); "
                   "default: start a local Ray instance")
    p.add_argument("--jobs", type=_whole(1, ""), help="budgets solved at once (default: the cores here, or the "
                   "Ray cluster's CPUs)")
    p.set_defaults(run=cmd_sweep)

    p = sub.add_parser("bounds", help="M_R, M_P, M_H and compulsory traffic of a model")
    _model_args(p)
    p.add_argument("--time-limit", type=seconds_arg, default=60.0, help="seconds for the M_P search (default 60)")
    p.set_defaults(run=cmd_bounds)

    p = sub.add_parser("simulate", help="replay a plan and check every rule", epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(p)
    p.add_argument("plan", help="plan JSON (planner-plan/1)")
    p.add_argument("--budget", help="the budget the plan must keep (bytes or M_R, M_H, M_P); default: the "
                   "plan's own capacity, checked only against the model's needs")
    p.set_defaults(run=cmd_simulate)

    p = sub.add_parser("solvers", help="list solvers and target presets")
    p.set_defaults(run=cmd_solvers)

    zoo = sub.add_parser("zoo", help="the bundled model zoo").add_subparsers(dest="zoo", required=True,
                                                                              parser_class=_Parser)
    p = zoo.add_parser("list", help="every zoo model with its size and bounds")
    p.add_argument("names", nargs="*", help="only these models (default: all)")
    p.add_argument("--target", default="cosma-int8", help="target for the bounds (default cosma-int8)")
    p.add_argument("--time-limit", type=seconds_arg, default=5.0,
                   help="seconds for each model's M_P search (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per model, one per line")
    p.set_defaults(run=cmd_zoo_list)
    p = zoo.add_parser("export", help="export a zoo model to ONNX")
    p.add_argument("name", help="zoo model name (see `planner zoo list`)")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--resolution", type=int, help="image side / frames' side / sequence length (default: published)")
    p.set_defaults(run=cmd_zoo_export)

    p = sub.add_parser("alloc", help="pack buffers with fixed lifetimes (MiniMalloc CSV) into the least memory")
    from planner.solvers.alloc import add_arguments as alloc_arguments  # the flags mirror solvers.alloc_search.Params

    alloc_arguments(p)
    p.set_defaults(run=cmd_alloc)

    p = sub.add_parser("show", help="draw a plan's allocation map and live bytes")
    p.add_argument("plan", help="plan JSON (planner-plan/1)")
    p.add_argument("-o", "--output", required=True, help="image file (.png, .svg, .pdf, .jpg, .eps, ...)")
    p.set_defaults(run=cmd_show)

    p = sub.add_parser("export", help="write a plan for an existing viewer (Perfetto, PyTorch memory_viz, Netron)")
    p.add_argument("plan", help="plan JSON (planner-plan/1)")
    p.add_argument("-o", "--output", required=True,
                   help="file to write; its suffix picks the format unless --format is given: .json a "
                        "Chrome/Perfetto trace, .pickle a PyTorch memory snapshot, .onnx an annotated model")
    p.add_argument("--format", choices=sorted(EXPORTS), help="trace, snapshot or onnx")
    p.add_argument("--model", help="the ONNX file the plan was made from (for --format onnx)")
    p.set_defaults(run=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage errors and --help: return the code instead of exiting
        return int(e.code or 0)
    t0 = time.perf_counter()
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:  # `planner ... | head -1`: stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the exit's own flush must not fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe
    except PlannerError as e:
        print(f"planner: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"planner: interrupted after {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for users; PLANNER_DEBUG for developers
        if os.environ.get("PLANNER_DEBUG"):
            raise
        print(f"planner: internal error: {type(e).__name__}: {e} (rerun with PLANNER_DEBUG=1)", file=sys.stderr)
        return 5


# -- helpers ---------------------------------------------------------------------------

class _Progress:
    """One progress line on stderr that rewrites itself (tqdm), for commands that can take
    more than a couple of seconds. Silent when stdout or stderr is not a terminal or with
    `--json`, so nothing but the result reaches a pipe. Called with a message (the
    `progress=` callback of `planner.api.plan`), it replaces the line's text; `step()`
    advances a counted bar (`total`). A timer thread keeps the elapsed time moving while
    the work itself is silent."""

    def __init__(self, args: argparse.Namespace, text: str, total: int | None = None):
        self.bar = None
        if getattr(args, "json", False) or not (sys.stdout.isatty() and sys.stderr.isatty()):
            return
        from tqdm import tqdm

        fmt = "{desc} [{elapsed}]" if total is None else "{desc} {n_fmt}/{total_fmt} {bar} [{elapsed}<{remaining}]"
        self.bar = tqdm(total=total, desc=text, file=sys.stderr, leave=False, bar_format=fmt, dynamic_ncols=True)
        self._stop = threading.Event()
        threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self.bar.refresh()

    def __call__(self, message: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(message)

    def count(self, done: int, total: int, message: str) -> None:
        """`done` of `total` (a total that can still change) with a message: a sweep's points."""
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)  # through update(), so tqdm's rate and ETA see it
            self.bar.set_description_str(message)  # and redraw now: a point is rare enough to show each

    def step(self) -> None:
        """One of `total` done."""
        if self.bar is not None:
            self.bar.update(1)

    def print(self, line: str) -> None:
        """Prints a result line to stdout above the progress line, which redraws below it."""
        if self.bar is None:
            print(line, flush=True)
        else:
            with self.bar.external_write_mode():
                print(line, flush=True)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self._stop.set()
            self.bar.close()  # leave=False: the line is erased before the summary prints


def _check_writable(path: str | None) -> None:
    """Fails before any work if `path` cannot be written (no partial files later): a
    temporary file is created and removed beside it, which also catches /proc and /sys,
    where permission bits say writable and creating a file fails."""
    if path is None:
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise BadInput(f"output path {path} is a directory")
    if not parent.is_dir():
        raise BadInput(f"cannot write {path}: directory {parent} does not exist")
    if p.exists() and not os.access(p, os.W_OK):
        raise BadInput(f"cannot write {path}: permission denied")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".planner-", suffix=".tmp")
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(tmp)


def _write_atomic(path: str, text: str | bytes) -> None:
    """Writes via a temporary file in the same directory, so a failure leaves no partial
    file. mkstemp makes the file 0600; it gets the mode open() would give (0666 less the
    user's umask), as `Plan.save` and every other tool do."""
    parent = Path(path).parent
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".planner-", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _op_type(ops: Any, name: str) -> str | None:
    return next((o.type for o in ops if o.name == name), None)


def _op_label(ops: Any, name: str) -> str:
    """'Add n14': an op's type before its name, so users can find it in their model."""
    kind = _op_type(ops, name)
    return name if kind is None else f"{kind} {name}"


def _emit(args: argparse.Namespace, summary: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(summary))
    else:
        print("\n".join(lines))


def _bound(n: float | None) -> str:
    return "-" if n is None else f"{int(n):,} B"


def _b(n: int | None) -> str:
    return "-" if n is None else f"{n:,} B ({format_bytes(n)})"


# -- subcommands -----------------------------------------------------------------------

def cmd_plan(args: argparse.Namespace) -> int:
    from planner.api import plan

    _check_writable(args.output)
    t0 = time.perf_counter()
    with _Progress(args, f"planning {args.model}") as progress:
        p = plan(args.model, args.budget, target=args.target, solver=args.solver, time_limit=args.time_limit,
                 shapes=dict(args.shape) or None, fuse=args.fuse, fixed_order=args.fixed_order,
                 allow_recompute=args.allow_recompute, validate=args.validate, progress=progress)
    seconds = time.perf_counter() - t0
    if args.output:
        _write_atomic(args.output, json.dumps(p.to_json(), indent=1))
    m, s, b = p.metrics, p.solver, p.extra["budgets"]
    assert m is not None
    m_r_op = _op_label(p.ops, b["M_R_op"])
    summary = {"model": p.model, "target": p.target.name, "budget_bytes": p.target.capacity, "M_R": b["M_R"],
               "M_R_op": b["M_R_op"], "M_R_op_type": _op_type(p.ops, b["M_R_op"]), "M_P": b["M_P"], "M_P_exact": b["M_P_exact"], "M_H": b["M_H"],
               **{k: getattr(m, k) for k in m.__dataclass_fields__}, "solver": s.name, "status": s.status,
               "bound": s.bound, "bound_how": p.extra.get("bound", {}).get("how"), "gap": s.gap,
               "solver_seconds": round(s.seconds, 4), "seconds": round(seconds, 3),
               "ops": len(p.ops), "tensors": len(p.tensors), "steps": len(p.steps), "output": args.output}
    mp_label = "exact" if b["M_P_exact"] else "upper bound"
    lines = [
        f"model           {p.model}: {len(p.ops)} ops, {len(p.tensors)} tensors in fast memory, target {p.target.name}",
        f"budget          {_b(p.target.capacity)}",
        f"M_R / M_H / M_P {b['M_R']:,} / {b['M_H']:,} / {b['M_P']:,} B (M_R set by {m_r_op}; M_P {mp_label})",
        f"traffic         {_b(m.traffic_bytes)}: compulsory {m.compulsory_bytes:,} B, "
        f"non-compulsory {m.noncompulsory_bytes:,} B",
        f"memory          peak {_b(m.peak_bytes)}, arena {_b(m.arena_bytes)}, recomputed ops {m.recomputed_ops}",
        f"solver          {s.name}: {s.status}, bound {_bound(s.bound)}, gap {'-' if s.gap is None else f'{s.gap:.2%}'}, "
        f"{s.seconds:.2f} s solving, {seconds:.2f} s in all",
    ]
    if args.output:
        lines.append(f"plan            written to {args.output} ({len(p.steps)} steps)")
    _emit(args, summary, lines)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from planner.sweep import SweepInterrupted, import_ray, plot, sweep, to_csv, to_json

    if args.address and args.engine != "ray":
        raise BadInput("--address needs --engine ray")
    if args.engine == "ray":
        import_ray()  # a one-line error before any work
    for path in (args.output, args.csv, args.plot):
        _check_writable(path)
    if args.plot:
        _check_image_suffix(args.plot)
    t0 = time.perf_counter()
    interrupted = False
    with _Progress(args, "sweep", total=len(args.model) * (len(args.budgets) if args.budgets else args.points)) as bar:
        try:
            rows = sweep(args.model, points=args.points, budgets=args.budgets, target=args.target,
                         solver=args.solver, time_limit=args.time_limit, engine=args.engine, address=args.address,
                         jobs=args.jobs, progress=bar.count)
        except SweepInterrupted as e:
            rows, interrupted = e.rows, True
    _write_atomic(args.output, json.dumps(to_json(rows, interrupted), indent=1))
    if args.csv:
        _write_atomic(args.csv, to_csv(rows))
    if args.plot:
        plot(rows, args.plot)
    written = ", ".join(p for p in (args.output, args.csv, args.plot) if p)
    if interrupted:
        print(f"planner: interrupted after {time.perf_counter() - t0:.1f} s; wrote the {len(rows)} finished "
              f"points to {written}", file=sys.stderr)
        return 130
    print(f"{'model':24s} {'budget':>12s} {'traffic':>12s} {'non-compulsory':>15s} {'status':10s} note")
    for r in rows:
        note = r.get("error") or (f"plan of {format_bytes(r['reused_from'])}" if r.get("reused_from") else "")
        traffic = "-" if r.get("traffic_bytes") is None else format_bytes(r["traffic_bytes"])
        extra = "-" if r.get("noncompulsory_bytes") is None else format_bytes(r["noncompulsory_bytes"])
        print(f"{r['model']:24s} {format_bytes(r['budget_bytes']):>12s} {traffic:>12s} {extra:>15s} "
              f"{r['status']:10s} {note}")
    failed = sum(r["status"] == "failed" for r in rows)
    print(f"{len(rows)} points ({failed} failed) in {time.perf_counter() - t0:.1f} s on engine {args.engine}; "
          f"wrote {written}")
    return 0


def cmd_bounds(args: argparse.Namespace) -> int:
    from planner.api import bounds, resolve_target

    t0 = time.perf_counter()
    with _Progress(args, f"bounds of {args.model}"):
        g, b = bounds(args.model, target=args.target, shapes=dict(args.shape) or None, fuse=args.fuse,
                      time_limit=args.time_limit)
    seconds = time.perf_counter() - t0
    target = resolve_target(args.target)
    tensors = sum(target.tracks(t) for t in g.tensors.values())  # what `plan` counts: the plan's tensors
    m_r_op = _op_label(g.ops, b.m_r_op)
    summary = {"model": g.name, "target": args.target, "ops": len(g.ops), "tensors": tensors, "M_R": b.m_r,
               "M_R_op": b.m_r_op, "M_R_op_type": _op_type(g.ops, b.m_r_op), "M_P": b.m_p, "M_P_exact": b.m_p_exact, "M_H": b.m_h,
               "compulsory_bytes": b.compulsory, "seconds": round(seconds, 3)}
    lines = [
        f"model       {g.name}: {len(g.ops)} ops, {tensors} tensors in fast memory, target {args.target}",
        f"M_R         {_b(b.m_r)}, set by {m_r_op}",
        f"M_P         {_b(b.m_p)} ({'exact' if b.m_p_exact else 'upper bound: best schedule found'})",
        f"M_H         {_b(b.m_h)}",
        f"compulsory  {_b(b.compulsory)}",
        f"seconds     {seconds:.2f}",
    ]
    _emit(args, summary, lines)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from planner.api import load_graph
    from planner.plan import Plan
    from planner.runtime.simulator import PlanViolation, simulate

    p = Plan.load(args.plan)
    with _Progress(args, f"replaying {args.plan}"):
        graph = load_graph(args.model, target=args.target, shapes=dict(args.shape) or None, fuse=args.fuse)
        try:
            target = _simulation_target(args, p, graph)
            report = simulate(p, graph, target)
        except PlanViolation as e:
            subject = _op_label(graph.ops, e.subject)
            where = "plan" if e.step is None else f"step {e.step}"
            print(f"planner: plan rejected: {where}: {e.rule}: {subject}: {e.detail}", file=sys.stderr)
            return 4
    m = report.metrics
    summary = {"valid": True, **{k: getattr(m, k) for k in m.__dataclass_fields__},
               "latency_seconds": report.latency.seconds, "steps": len(p.steps)}
    lines = [
        f"plan        {args.plan}: valid ({len(p.steps)} steps, every rule of docs/DESIGN.md §3 holds)",
        f"traffic     {_b(m.traffic_bytes)}: compulsory {m.compulsory_bytes:,} B, non-compulsory {m.noncompulsory_bytes:,} B",
        f"memory      peak {_b(m.peak_bytes)}, arena {_b(m.arena_bytes)}, recomputed ops {m.recomputed_ops}",
        f"latency     {report.latency.seconds * 1e3:.3f} ms (roofline estimate)",
    ]
    _emit(args, summary, lines)
    return 0


def _simulation_target(args: argparse.Namespace, p: Any, graph: Any) -> Any:
    """The target the replay uses: the one the user names, never the plan's own block, whose
    sizing fields must agree with it (a plan edited to alignment 1 or element_bytes 0 is a
    violation, not a valid plan); the capacity is `--budget` when given, which the plan's
    must equal, else the plan's. Tensor sizes then come from the model under this target."""
    from planner import bounds as _bounds
    from planner.api import resolve_budget, resolve_target
    from planner.problem import Problem
    from planner.runtime.simulator import PlanViolation

    named = resolve_target(args.target)
    for field in ("alignment", "element_bytes", "float_bytes", "track_weights"):
        mine, theirs = getattr(p.target, field), getattr(named, field)
        if mine != theirs:
            raise PlanViolation(None, "plan/graph mismatch", "target",
                                f"plan says {field} {mine!r}; target {named.name} has {theirs!r} "
                                f"(--target names the target the plan was made for)")
    capacity = p.target.capacity
    if args.budget is not None:
        problem = Problem(graph, named)
        capacity = resolve_budget(args.budget, problem, lambda: _bounds.budgets(problem))
        if p.target.capacity != capacity:
            raise PlanViolation(None, "plan/graph mismatch", "target",
                                f"plan says capacity {p.target.capacity:,} B; --budget {args.budget} is {capacity:,} B")
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity <= 0:
        raise PlanViolation(None, "plan/graph mismatch", "target", f"plan says capacity {capacity!r}; need bytes > 0")
    return named.with_capacity(capacity)


def cmd_solvers(args: argparse.Namespace) -> int:
    from planner.ir import TARGETS
    from planner.registry import PORTFOLIO_HELP, SOLVERS

    print("solvers:")
    for name, text in PORTFOLIO_HELP.items():
        print(f"  {name:16s} {text}")
    for name, (_, _, text) in SOLVERS.items():
        print(f"  {name:16s} {text}")
    print("targets:")
    for t in TARGETS.values():
        sizing = f"element {t.element_bytes} B" if t.element_bytes else (
            f"floats {t.float_bytes} B" if t.float_bytes else "model dtypes")
        print(f"  {t.name:16s} {t.kind}, {sizing}, alignment {t.alignment}, "
              f"{'weights tracked' if t.track_weights else 'activations only'}")
    return 0


def cmd_zoo_list(args: argparse.Namespace) -> int:
    from planner import models
    from planner.api import bounds

    names = args.names or list(models.ZOO)
    for name in names:
        models.get(name)  # an unknown name fails before the slow work
    if not args.json:
        print(f"{'model':26s} {'task':14s} {'params':>11s} {'input':>16s} {'ops':>5s} {'M_R (B)':>12s} "
              f"{'M_P (B)':>12s}  M_P is")
    with _Progress(args, "zoo", total=len(names)) as progress:
        for name in names:
            progress(name)
            entry = models.get(name)
            g, b = bounds(name, target=args.target, time_limit=args.time_limit)
            params = sum(p.numel() for p in entry.build().parameters())
            shape = "x".join(map(str, entry.input_shape)) + (f" x{entry.num_inputs}" if entry.num_inputs > 1 else "")
            row = {"model": name, "task": entry.task, "params": params, "input": shape, "ops": len(g.ops),
                   "M_R": b.m_r, "M_P": b.m_p, "M_P_exact": b.m_p_exact, "M_H": b.m_h}
            progress.print(json.dumps(row) if args.json else
                           f"{name:26s} {entry.task:14s} {params:>11,} {shape:>16s} {len(g.ops):>5d} {b.m_r:>12,} "
                           f"{b.m_p:>12,}  {'exact' if b.m_p_exact else 'upper bound'}")
            progress.step()
    return 0


def cmd_zoo_export(args: argparse.Namespace) -> int:
    from planner import models

    _check_writable(args.output)
    models.get(args.name)  # an unknown name fails before the slow import of the exporter
    t0 = time.perf_counter()
    with _Progress(args, f"exporting {args.name}"):
        models.export_onnx(args.name, args.output, batch=args.batch, resolution=args.resolution)
    print(f"wrote {args.output} ({Path(args.output).stat().st_size:,} B) in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_alloc(args: argparse.Namespace) -> int:
    from planner.solvers.alloc import run

    _check_writable(args.output)
    return run(args)


def cmd_show(args: argparse.Namespace) -> int:
    from planner.plan import Plan
    from planner.runtime.show import draw

    _check_image_suffix(args.output)
    _check_writable(args.output)
    with _Progress(args, f"drawing {args.plan}"):
        draw(Plan.load(args.plan), args.output)
    print(f"wrote {args.output}")
    return 0


def _check_image_suffix(path: str) -> None:
    """matplotlib picks the format from the suffix and fails late on one it lacks (.bmp, .txt)."""
    from matplotlib.figure import Figure

    kinds = Figure().canvas.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in kinds:
        raise BadInput(f"cannot draw {path}: its suffix picks the image format; use one of "
                       f"{', '.join('.' + k for k in sorted(kinds))}")


EXPORTS = {"trace": ".json", "snapshot": ".pickle", "onnx": ".onnx"}


def cmd_export(args: argparse.Namespace) -> int:
    import pickle

    from planner.plan import Plan
    from planner.runtime import export

    fmt = args.format or next((f for f, suffix in EXPORTS.items() if args.output.endswith(suffix)), None)
    if fmt is None:
        raise BadInput(f"cannot tell the format of {args.output}: give --format trace, snapshot or onnx")
    if fmt == "onnx" and not args.model:
        raise BadInput("--format onnx needs --model, the ONNX file the plan was made from")
    _check_writable(args.output)
    plan = Plan.load(args.plan)
    if fmt == "trace":
        data = json.dumps(export.chrome_trace(plan)).encode()
    elif fmt == "snapshot":
        data = pickle.dumps(export.memory_snapshot(plan), protocol=4)
    else:
        import onnx

        from planner.frontends.onnx import name_nodes

        try:
            model = onnx.load(args.model)
        except Exception as e:  # missing, truncated, not ONNX
            why = (str(e).strip() or type(e).__name__).splitlines()[0][:200]
            raise BadInput(f"{args.model}: cannot read it as ONNX ({why})") from None
        name_nodes(model)  # the names the ONNX frontend gave the plan's ops
        data = export.annotate_onnx(model, plan).SerializeToString()
    _write_atomic(args.output, data)
    print(f"wrote {args.output} ({fmt}, {len(data):,} B)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
