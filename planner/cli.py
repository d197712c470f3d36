"""`planner` command line: each subcommand maps onto one API function.

Errors are one line on stderr with a documented exit code; tracebacks only with
PLANNER_DEBUG=1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from planner.errors import BadInput, PlannerError
from planner.units import format_bytes

EXIT_CODES = """exit codes:
  0  success
  1  bad input or usage (malformed model, unknown op, bad size or unit, unwritable path)
  2  infeasible budget (the message names the op that sets M_R and the smallest budget)
  3  time limit reached with no plan
  4  the plan breaks a rule (planner simulate)
  5  internal error (rerun with PLANNER_DEBUG=1 for the traceback)"""


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
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds for the whole solve (default 60)")
    p.add_argument("--fixed-order", action="store_true", help="keep the model's op order")
    p.add_argument("--allow-recompute", action="store_true", help="lost activations may be recomputed")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="skip the simulator replay")
    p.add_argument("-o", "--output", help="write the plan JSON here")
    p.set_defaults(run=cmd_plan)

    p = sub.add_parser("bounds", help="M_R, M_P, M_H and compulsory traffic of a model")
    _model_args(p)
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds for the M_P search (default 60)")
    p.set_defaults(run=cmd_bounds)

    p = sub.add_parser("simulate", help="replay a plan and check every rule", epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(p)
    p.add_argument("plan", help="plan JSON (planner-plan/1)")
    p.set_defaults(run=cmd_simulate)

    p = sub.add_parser("solvers", help="list solvers and target presets")
    p.set_defaults(run=cmd_solvers)

    zoo = sub.add_parser("zoo", help="the bundled model zoo").add_subparsers(dest="zoo", required=True,
                                                                              parser_class=_Parser)
    p = zoo.add_parser("list", help="every zoo model with its size and bounds")
    p.add_argument("names", nargs="*", help="only these models (default: all)")
    p.add_argument("--target", default="cosma-int8", help="target for the bounds (default cosma-int8)")
    p.add_argument("--time-limit", type=float, default=5.0, help="seconds for each model's M_P search (default 5)")
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
    p.add_argument("-o", "--output", required=True, help="image file (.png, .svg, .pdf)")
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
        return args.run(args)
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

def _progress(args: argparse.Namespace) -> Callable[[str], None] | None:
    """Progress lines on stderr when it is a terminal and the summary is not JSON."""
    if args.json or not sys.stderr.isatty():
        return None
    t0 = time.perf_counter()
    return lambda msg: print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr)


def _check_writable(path: str | None) -> None:
    """Fails before any work if `path` cannot be written (no partial files later)."""
    if path is None:
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise BadInput(f"output path {path} is a directory")
    if not parent.is_dir():
        raise BadInput(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise BadInput(f"cannot write {path}: permission denied")


def _write_atomic(path: str, text: str | bytes) -> None:
    """Writes via a temporary file in the same directory, so a failure leaves no partial file."""
    parent = Path(path).parent
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".planner-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _emit(args: argparse.Namespace, summary: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(summary))
    else:
        print("\n".join(lines))


def _b(n: int | None) -> str:
    return "-" if n is None else f"{n:,} B ({format_bytes(n)})"


# -- subcommands -----------------------------------------------------------------------

def cmd_plan(args: argparse.Namespace) -> int:
    from planner.api import plan

    _check_writable(args.output)
    t0 = time.perf_counter()
    p = plan(args.model, args.budget, target=args.target, solver=args.solver, time_limit=args.time_limit,
             shapes=dict(args.shape) or None, fuse=args.fuse, fixed_order=args.fixed_order,
             allow_recompute=args.allow_recompute, validate=args.validate, progress=_progress(args))
    seconds = time.perf_counter() - t0
    if args.output:
        _write_atomic(args.output, json.dumps(p.to_json(), indent=1))
    m, s, b = p.metrics, p.solver, p.extra["budgets"]
    assert m is not None
    summary = {"model": p.model, "target": p.target.name, "budget_bytes": p.target.capacity, "M_R": b["M_R"],
               "M_R_op": b["M_R_op"], "M_P": b["M_P"], "M_P_exact": b["M_P_exact"], "M_H": b["M_H"],
               **{k: getattr(m, k) for k in m.__dataclass_fields__}, "solver": s.name, "status": s.status,
               "gap": s.gap, "solver_seconds": round(s.seconds, 4), "seconds": round(seconds, 3),
               "ops": len(p.ops), "steps": len(p.steps), "output": args.output}
    mp_label = "exact" if b["M_P_exact"] else "upper bound"
    lines = [
        f"model           {p.model}: {len(p.ops)} ops, {len(p.tensors)} tensors, target {p.target.name}",
        f"budget          {_b(p.target.capacity)}",
        f"M_R / M_H / M_P {b['M_R']:,} / {b['M_H']:,} / {b['M_P']:,} B (M_R set by {b['M_R_op']}; M_P {mp_label})",
        f"traffic         {_b(m.traffic_bytes)}: compulsory {m.compulsory_bytes:,} B, "
        f"non-compulsory {m.noncompulsory_bytes:,} B",
        f"memory          peak {_b(m.peak_bytes)}, arena {_b(m.arena_bytes)}, recomputed ops {m.recomputed_ops}",
        f"solver          {s.name}: {s.status}, gap {'-' if s.gap is None else f'{s.gap:.2%}'}, "
        f"{s.seconds:.2f} s solving, {seconds:.2f} s in all",
    ]
    if args.output:
        lines.append(f"plan            written to {args.output} ({len(p.steps)} steps)")
    _emit(args, summary, lines)
    return 0


def cmd_bounds(args: argparse.Namespace) -> int:
    from planner.api import bounds

    t0 = time.perf_counter()
    g, b = bounds(args.model, target=args.target, shapes=dict(args.shape) or None, fuse=args.fuse,
                  time_limit=args.time_limit)
    seconds = time.perf_counter() - t0
    summary = {"model": g.name, "target": args.target, "ops": len(g.ops), "tensors": len(g.tensors), "M_R": b.m_r,
               "M_R_op": b.m_r_op, "M_P": b.m_p, "M_P_exact": b.m_p_exact, "M_H": b.m_h,
               "compulsory_bytes": b.compulsory, "seconds": round(seconds, 3)}
    lines = [
        f"model       {g.name}: {len(g.ops)} ops, {len(g.tensors)} tensors, target {args.target}",
        f"M_R         {_b(b.m_r)}, set by {b.m_r_op}",
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
    graph = load_graph(args.model, target=args.target, shapes=dict(args.shape) or None, fuse=args.fuse)
    try:
        report = simulate(p, graph, p.target)
    except PlanViolation as e:
        print(f"planner: plan rejected: {e}", file=sys.stderr)
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

    if not args.json:
        print(f"{'model':26s} {'task':14s} {'params':>11s} {'input':>16s} {'ops':>5s} {'M_R (B)':>12s} "
              f"{'M_P (B)':>12s}  M_P is")
    for name in args.names or models.ZOO:
        entry = models.get(name)
        g, b = bounds(name, target=args.target, time_limit=args.time_limit)
        params = sum(p.numel() for p in entry.build().parameters())
        shape = "x".join(map(str, entry.input_shape)) + (f" x{entry.num_inputs}" if entry.num_inputs > 1 else "")
        row = {"model": name, "task": entry.task, "params": params, "input": shape, "ops": len(g.ops),
               "M_R": b.m_r, "M_P": b.m_p, "M_P_exact": b.m_p_exact, "M_H": b.m_h}
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{name:26s} {entry.task:14s} {params:>11,} {shape:>16s} {len(g.ops):>5d} {b.m_r:>12,} "
                  f"{b.m_p:>12,}  {'exact' if b.m_p_exact else 'upper bound'}", flush=True)
    return 0


def cmd_zoo_export(args: argparse.Namespace) -> int:
    from planner import models

    _check_writable(args.output)
    models.get(args.name)  # an unknown name fails before the slow import of the exporter
    t0 = time.perf_counter()
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

    _check_writable(args.output)
    draw(Plan.load(args.plan), args.output)
    print(f"wrote {args.output}")
    return 0


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
