"""Training under a byte budget: a torch.compile backend whose partition function decides which
forward values the backward keeps, recomputes or offloads to host memory.

    compiled = compile_train(gm, example_inputs, {"memory_budget": "6GiB", "mode": "train"})

aot_autograd traces the joint forward+backward graph and calls our `partition_fn` with it
(CONVENTIONS: save/recompute/offload decisions belong there). The partition function

1. lays the joint graph out on one timeline (the forward ops, then the backward ops, in the
   joint graph's order), sizes every storage from the FakeTensor values, measures every
   distinct call's kernel workspace on the device (`train_memory.annotate_workspaces`: oneDNN
   convolutions, for one, hold a second output-sized buffer), and builds the neutral
   `solvers.remat.RematProblem` with those transients in its per-step base (`_Timeline`);
2. resolves a named budget (M_R / M_H / M_P, see `compile_train`) and solves
   (`solvers.remat.solve`: a 0-1 programme with a greedy warm start; values of repeated
   blocks, found from `nn_module_stack` (`h.0`, `h.1`, ...), share a group, so one block is
   solved first and applied to all as the warm start), all solves within `time_limit`;
3. splits the joint graph with torch's `_extract_fwd_bwd_modules`, saving exactly the kept and
   offloaded values (and the inputs the backward reads), so the backward recomputes the rest,
   and reorders the backward with `reordering_to_mimic_autograd_engine`, which runs each
   recomputation just before its first reader (`split`);
4. on CUDA inserts the offload copies, torch's own `ao.offload` / `ao.reload` /
   `ao.wait_tensor` ops (one side stream, pinned host buffers; the reload is issued at the
   prefetch step the solver chose and waited on before the first reader). On CPU host and
   device are one memory, a host copy saves nothing, and offload is never chosen (`_offload`);
5. replays the two graphs it returns (`replay_peak`: storages allocated at their producer,
   freed after their last reader, saved ones carried from the forward into the backward,
   each call's workspace while it runs) and, if the replayed peak exceeds the budget,
   tightens the modelled budget by the excess and solves again;
6. below what the programme reaches, uses the graph's least-peak plan (`_Plans.least`): the
   best replayed of the programme's least-peak solve, torch's min-cut partitions and block
   checkpointing, cached per graph, so the minimum an Infeasible error names is reached when
   asked for.

The budget covers every byte the compiled forward and backward allocate: activations, the
values held for the backward, recomputed values, kernels' scratch and the gradients; not
parameters, inputs or the incoming gradient of the loss. It applies per captured graph (use
`fullgraph=True`) and per static shape: a graph dynamo captures with dynamic shapes (a new
batch size) is planned again for each shape it runs with, under the same budget (`Compiled`).
The replay agrees with the allocator's events of the step when the graphs run as they are
(`compiler="eager"`, whose boxed runner frees each saved value after its last reader);
Inductor's fused kernels allocate less. Random ops (dropout's mask, attention with dropout)
are never recomputed: their outputs are kept or offloaded; we do not replay RNG state
(aot_autograd's functionalized RNG is left off).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import operator
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx
from torch._functorch import partitioners as P
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.flop_counter import flop_registry

from planner.errors import BadInput, Infeasible, UnsupportedModel
from planner.frontends.train_memory import WORKSPACE, annotate_workspaces
from planner.ir import Bytes, Target, get_target
from planner.plan import SolverInfo
from planner.units import budget_name, parse_bytes

__all__ = ["TrainOptions", "TrainReport", "compile_train", "replay_peak"]

log = logging.getLogger(__name__)
MEMORY_BYTES_PER_S = 2e12  # device-memory bandwidth for the roofline of memory-bound ops (Target has none)
_WORKSPACES: dict[tuple, Bytes] = {}  # calibrated kernel workspaces by call signature (train_memory), per process
_TIGHTEN_ROUNDS = 4


@dataclass(frozen=True)
class TrainOptions:
    memory_budget: Bytes | str = "M_P"  # bytes, or "M_R" / "M_H" / "M_P" (see compile_train)
    solver: str = "milp"  # "milp" (exact on the model, greedy warm start) or "greedy"
    time_limit: float = 10.0  # seconds for the solves of one graph together (calibration and splits come on top)
    compiler: str = "inductor"  # "inductor", or "eager" (the fx graphs run as they are)
    strict: bool = False  # raise instead of warning and falling back when a graph cannot be planned
    target: str = "gpu-fp32"  # roofline (flops/s, host copy bytes/s) for the added-time objective
    offload: bool = True  # allow host offload (never on CPU, where host and device memory are one)
    recompute: bool = True  # allow recomputation

    @staticmethod
    def from_dict(options: dict[str, Any]) -> TrainOptions:
        """Reads the backend's options (never mutating them); unknown keys are an error.

        frontends.dynamo hands over its whole options dict: its "fold_bn" (inference only:
        training updates the batch norms) and torch's own keys are accepted and not used, and
        its default solver "auto" means "milp"."""
        opts = dict(options)
        if opts.pop("mode", "train") not in ("train", "auto"):  # "auto": frontends.dynamo saw a training graph
            raise BadInput("compile_train plans training graphs: mode must be 'train'")
        for key in ("fold_bn", "guard_filter_fn", "use_aoti"):
            opts.pop(key, None)
        names = {f.name for f in dataclasses.fields(TrainOptions)}
        unknown = sorted(set(opts) - names)
        if unknown:
            raise BadInput(f"unknown option(s) {unknown}; choose from {sorted(names | {'mode'})}")
        budget = opts.get("memory_budget")
        budget = "M_P" if budget is None else budget
        name = budget_name(budget.strip()) if isinstance(budget, str) else None
        opts["memory_budget"] = name or parse_bytes(budget)
        if opts["memory_budget"] == 0:
            raise BadInput("memory_budget must be positive")
        if opts.get("solver") in (None, "auto"):
            opts["solver"] = "milp"
        if opts["solver"] not in ("milp", "greedy"):
            raise BadInput(f"solver must be 'milp', 'greedy' or 'auto', not {opts['solver']!r}")
        if opts.get("compiler", "inductor") not in ("inductor", "eager"):
            raise BadInput(f"compiler must be 'inductor' or 'eager', not {opts['compiler']!r}")
        limit = opts.get("time_limit", 10.0)
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit < float("inf"):
            raise BadInput(f"time_limit={limit!r} must be a positive number of seconds")
        get_target(opts.get("target", "gpu-fp32"))
        return TrainOptions(**opts)


@dataclass
class TrainReport:
    """What the partition function decided for one graph; filled when the graph compiles."""

    budget: Bytes | str  # the budget asked for; bytes once the graph is planned
    requested: Bytes | str = ""  # as the options gave it (a name or bytes)
    choice: dict[str, str] = field(default_factory=dict)  # forward op -> keep / offload / recompute
    recomputed: list[str] = field(default_factory=list)  # forward ops the backward graph runs again
    offloaded: list[str] = field(default_factory=list)  # saved tensors copied to host
    modelled_peak: Bytes = 0  # the solver's model
    replayed_peak: Bytes = 0  # replay of the forward and backward graphs returned
    added_s: float = 0.0  # modelled added seconds
    solver: Any = None  # planner.plan.SolverInfo of the last solve
    rounds: int = 0  # solves (more than one when the replay tightened the budget)
    planning_s: float = 0.0
    least_peak: Bytes | None = None  # M_R: the least replayed peak planner reaches (when it was needed)
    keep_all_peak: Bytes | None = None  # M_P: the replayed peak keeping every saved value
    source: str = ""  # "planner", "least" (the cached least-peak plan) or "torch-min-cut@r"
    device: str = ""
    shape: tuple = ()  # the example inputs' shapes this graph was planned for
    fallback: str | None = None  # why the graph was not planned (non-strict fallback)


class Compiled:
    """The compiled training callable, with the report of its planning.

    A graph dynamo captured with dynamic shapes (after a new batch size, by default) cannot be
    planned: its sizes are symbols. It is compiled again for every static shape it is called
    with, under the same budget, and kept per shape (`reports` has one report each); `report`
    is the latest."""

    def __init__(self, fn: Callable | None, report: TrainReport,
                 per_shape: Callable[[list], tuple[Callable, TrainReport]] | None = None):
        self.fn, self.report, self._per_shape = fn, report, per_shape
        self.reports: dict[tuple, TrainReport] = {report.shape: report} if fn is not None else {}
        self._fns: dict[tuple, Callable] = {}
        self._boxed_call = getattr(fn, "_boxed_call", False) if fn is not None else False

    def __call__(self, *args: Any) -> Any:
        if self._per_shape is None:
            return self.fn(*args)
        key = _shape_key(list(args))
        if key not in self._fns:
            self._fns[key], self.report = self._per_shape(list(args))
            self.reports[key] = self.report
        return self._fns[key](*args)  # per-shape callables take the arguments unboxed


def _shape_key(args: list) -> tuple:
    """The static shape of a call: tensors' shapes, strides and dtypes, and the integers."""
    return tuple((tuple(a.shape), tuple(a.stride()), a.dtype) if isinstance(a, torch.Tensor) else
                 (a if isinstance(a, int) else type(a).__name__) for a in args)


def _is_dynamic(example_inputs: list) -> bool:
    return any(isinstance(a, torch.SymInt) or (isinstance(a, torch.Tensor) and any(
        isinstance(s, torch.SymInt) for s in (*a.shape, *a.stride()))) for a in example_inputs)


def _specialize(gm: fx.GraphModule, args: list) -> tuple[fx.GraphModule, list]:
    """A copy of a dynamic-shape graph with its size arguments (the integers dynamo passes for
    its symbols) replaced by the call's values, and the tensor arguments left: a static graph
    aot_autograd traces at these shapes. The copy carries no dynamo metadata (its arguments no
    longer match dynamo's sources)."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    g.output(g.graph_copy(gm.graph, env))
    placeholders = [env[n] for n in gm.graph.nodes if n.op == "placeholder"]
    tensors = []
    for ph, a in zip(placeholders, args):
        if isinstance(a, torch.Tensor):
            tensors.append(a)
            continue
        for user in list(ph.users):
            user.args, user.kwargs = fx.node.map_aggregate((user.args, user.kwargs), lambda x: a if x is ph else x)
        g.erase_node(ph)
    static = fx.GraphModule(gm, g)
    static.meta = {}
    return static, tensors


def compile_train(gm: fx.GraphModule, example_inputs: list, options: dict[str, Any] | None = None) -> Compiled:
    """Compiles `gm` for training under `options["memory_budget"]`.

    The budget counts every byte the compiled forward and backward allocate on the device
    (see the module docstring), kernels' scratch included. It is bytes, a size ("200MB",
    "6GiB"), or a name, resolved per graph from its replayed peaks:

    - "M_P" (the default, also for None): keep every value the backward reads, the least
      memory with no recomputation and no transfers (the training analogue of DESIGN's M_P,
      the least peak with no spill traffic, for the graph's own order);
    - "M_R": the least peak planner reaches with recomputation, and offload where it saves
      device memory (never on CPU); below it no plan fits, as no plan fits below DESIGN's
      M_R. It is the best replayed of the 0-1 programme's least-peak solve, torch's min-cut
      partitions (activation_memory_budget 0 and 1) and block checkpointing (every repeated
      block's outputs kept, the rest recomputed), cached per graph, so the minimum an
      Infeasible error names is reached when asked for;
    - "M_H": (M_R + M_P) / 2.

    Parameters
    ----------
    gm, example_inputs : what torch.compile hands a backend; a graph with dynamic shapes is
        planned again for each static shape it is called with (see `Compiled`).
    options : TrainOptions fields as a dict, plus "mode": "train"; not modified.

    Returns
    -------
    Compiled : call it as the graph; `.report` says what was kept, recomputed and offloaded.

    Raises
    ------
    BadInput : bad options. Infeasible : the budget is below the least peak we can reach
        (`minimum` says it; asking for that budget succeeds).
    """
    opts = TrainOptions.from_dict(options or {})
    if _is_dynamic(example_inputs):
        log.info("planner train: dynamic shapes; planning each static shape under the same budget")

        def per_shape(args: list) -> tuple[Callable, TrainReport]:
            static, tensors = _specialize(gm, args)
            fn, report = _compile_static(static, tensors, opts)
            kept = [k for k, a in enumerate(args) if not isinstance(a, (int, torch.SymInt))]

            def call(*values: Any) -> Any:  # the graph's arguments less the sizes now baked in
                return fn(*[values[k] for k in kept])
            return call, report
        return Compiled(None, TrainReport(opts.memory_budget, opts.memory_budget), per_shape)
    fn, report = _compile_static(gm, example_inputs, opts)
    return Compiled(fn, report)


def _compile_static(gm: fx.GraphModule, example_inputs: list, opts: TrainOptions) -> tuple[Callable, TrainReport]:
    """aot_autograd with our partition function, for one static shape."""
    from torch._dynamo.backends.common import aot_autograd

    report = TrainReport(opts.memory_budget, opts.memory_budget,
                         shape=_shape_key([a for a in example_inputs if isinstance(a, (torch.Tensor, int))]))
    fw_compiler, bw_compiler = _compilers(opts.compiler)
    extra = {}
    if opts.compiler == "inductor":
        from torch._inductor.decomposition import select_decomp_table
        extra["decompositions"] = select_decomp_table()
    backend = aot_autograd(fw_compiler=fw_compiler, bw_compiler=bw_compiler,
                           partition_fn=functools.partial(_partition, opts=opts, report=report), **extra)
    return backend(gm, example_inputs), report


def _compilers(name: str) -> tuple[Callable, Callable]:
    if name == "eager":
        def eager(gm: fx.GraphModule, _inputs: list) -> Callable:
            # boxed: the graph takes its argument list and empties it, so each saved value is
            # freed after its last reader (as the replay counts), not when the backward returns
            gm.graph.set_codegen(fx.graph._BoxedCodeGen())
            gm.recompile()

            def run(args: list) -> Any:
                return gm(args)
            run._boxed_call = True
            return run
        return eager, eager
    from torch._inductor.compile_fx import compile_fx_inner
    return (functools.partial(compile_fx_inner, is_backward=False),
            functools.partial(compile_fx_inner, is_backward=True))


def _partition(joint: fx.GraphModule, joint_inputs: Any, *, opts: TrainOptions, report: TrainReport,
               num_fwd_outputs: int, **kwargs: Any) -> tuple[fx.GraphModule, fx.GraphModule]:
    """aot_autograd's partition_fn: plan, split, offload, replay, tighten; below what the
    programme reaches, the cached least-peak plan; below that, Infeasible."""
    t0 = time.perf_counter()
    try:
        timeline = _Timeline(joint, num_fwd_outputs, get_target(opts.target), opts)
    except UnsupportedModel as e:
        if opts.strict:
            raise
        # never silent: the budget is not applied to this graph
        warnings.warn(f"planner: cannot plan this training graph ({e}); the memory budget is NOT applied to it "
                      "(torch's min-cut partition is used); pass strict=True to raise instead", stacklevel=2)
        report.fallback = str(e)
        return P.min_cut_rematerialization_partition(joint, joint_inputs, num_fwd_outputs=num_fwd_outputs, **kwargs)
    from planner.solvers import remat

    params = remat.Params(time_limit=opts.time_limit, method=opts.solver, recompute=opts.recompute,
                          offload=opts.offload and timeline.device != "cpu")  # on CPU a host copy saves nothing
    plans = _Plans(timeline, params, kwargs.get("static_lifetime_input_indices"))
    report.device = timeline.device
    report.keep_all_peak = plans.keep_all()[2]
    deadline = time.perf_counter() + opts.time_limit  # the solves' time; the calibration above is not in it
    name = budget_name(opts.memory_budget)
    if name is not None:
        report.least_peak = None if name == "M_P" else plans.least(deadline).peak
        budget = {"M_P": report.keep_all_peak, "M_R": report.least_peak,
                  "M_H": ((report.least_peak or 0) + report.keep_all_peak) // 2}[name]
    else:
        budget = opts.memory_budget
    report.budget = budget
    found = None
    if name == "M_R":  # the least-peak plan itself: nothing else reaches it
        least = plans.least(deadline)
        fw, bw, recomputed = timeline.split(least.decision.choice, least.decision.prefetch)
        found = (fw, bw, least.peak, recomputed, least.decision)
        report.solver, report.source = least.decision.solver, least.source
    elif budget >= report.keep_all_peak:
        found = plans.keep_all()
        report.solver = SolverInfo("keep-all", "optimal", 0, 0, 0.0, 0.0)
        report.source, report.rounds = "planner", 0
    # the model holds a recomputation's inputs to their last possible need, so it overestimates
    # some choices: the programme gets the budget plus the least overestimate the candidates
    # show (their modelled minus replayed peak); the replay decides, and tightens when over
    over = [d.peak - p for p, d, _ in plans.candidates() if d.peak > p] if found is None else []
    modelled, tried = budget + min(over, default=0), []
    for rounds in range(1, _TIGHTEN_ROUNDS + 1):
        if found is not None or time.perf_counter() > deadline:
            break
        try:
            left = max(1.0, (deadline - time.perf_counter()) / 2)  # the rest: the least-peak fallback
            decision = remat.solve(timeline.problem(modelled), dataclasses.replace(params, time_limit=left),
                                   hints=[d.choice for _, d, _ in plans.candidates()])
        except Infeasible as e:
            plans.least(deadline, programme=getattr(e, "least", None))
            break
        fw, bw, recomputed = timeline.split(decision.choice, decision.prefetch)
        peak = replay_peak(fw, bw)
        log.info("planner train: round %d, modelled budget %d: modelled %d, replayed %d (%s %s)", rounds, modelled,
                 decision.peak, peak, decision.solver.name, decision.solver.status)
        tried.append(peak)
        report.rounds = rounds
        if peak <= budget:
            found = (fw, bw, peak, recomputed, decision)
            report.solver, report.source = decision.solver, "planner"
            break
        modelled = min(modelled, decision.peak) - (peak - budget)  # strictly below the choice that missed
    if found is None:  # the cheapest plan found elsewhere that fits, else the least-peak plan (cached per graph)
        fitting = [(d.added_s, p, d, s) for p, d, s in plans.candidates() if p <= budget]
        if not fitting:
            least = plans.least(deadline)
            report.least_peak = least.peak
            if least.peak > budget:
                raise Infeasible(f"no plan fits {budget:,} B; the least peak planner reaches is {least.peak:,} B "
                                 f"(replayed; {least.source}); ask for at least that", op=least.op,
                                 minimum=least.peak)
            fitting = [(least.decision.added_s, least.peak, least.decision, least.source)]
        _, peak, decision, source = min(fitting, key=lambda c: c[0])
        fw, bw, recomputed = timeline.split(decision.choice, decision.prefetch)
        found = (fw, bw, peak, recomputed, decision)
        report.solver, report.source = decision.solver, source
    fw, bw, peak, recomputed, decision = found
    report.choice, report.recomputed = decision.choice, recomputed
    report.offloaded = [n for n, c in decision.choice.items() if c == remat.OFFLOAD]
    report.modelled_peak, report.replayed_peak, report.added_s = decision.peak, peak, decision.added_s
    report.planning_s = time.perf_counter() - t0
    log.info("planner train: budget %d, peak %d (model %d), recomputed %d ops, offloaded %d, %s %s, %.2f s",
             budget, peak, decision.peak, len(recomputed), len(report.offloaded),
             report.solver.name, report.solver.status, report.planning_s)
    return fw, bw


@dataclass
class _Least:
    """The least-peak plan of one graph: its decision, replayed peak and where it came from."""

    decision: Any  # solvers.remat.Decision
    peak: Bytes
    source: str
    op: str | None


_LEAST: dict[tuple, _Least] = {}  # graph fingerprint and options -> least-peak plan (per process)
_CANDIDATES: dict[tuple, list] = {}  # graph fingerprint and options -> _Plans.candidates() (per process)


class _Plans:
    """The plans of one graph that do not depend on the budget: keeping everything, and the
    least peak (cached per graph across compiles, so a minimum once reported is reached)."""

    def __init__(self, timeline: _Timeline, params: Any, static_lifetime: list[int] | None):
        self.timeline, self.params, self.static_lifetime = timeline, params, static_lifetime
        self._keep_all: tuple | None = None

    def keep_all(self) -> tuple:
        """(fw, bw, replayed peak, recomputed, decision) keeping every value the backward reads."""
        if self._keep_all is None:
            from planner.solvers import remat

            problem = self.timeline.problem(0)
            choice = {v.name: remat.KEEP for v in problem.values if v.bwd_first is not None}
            fw, bw, recomputed = self.timeline.split(choice, {})
            peak, added = remat.evaluate(problem, choice, self.params)
            self._keep_all = (fw, bw, replay_peak(fw, bw), recomputed,
                              remat.Decision(choice, {}, peak, added, None))
        return self._keep_all

    def least(self, deadline: float, programme: Any = None) -> _Least:
        """The least replayed peak among the programme's least-peak solve (warm-started from
        them) and `candidates()`: the model's approximations (a value held to its last possible
        need) cost a few percent that torch's cuts or block checkpointing sometimes avoid.
        `programme`: the least-peak decision a failed solve already found (the same programme),
        so it is not solved twice."""
        from planner.solvers import remat

        key = (self.timeline.fingerprint(), self.params.offload, self.params.recompute, self.params.method)
        if key in _LEAST:
            return _LEAST[key]
        problem = self.timeline.problem(0)
        candidates = list(self.candidates())
        if programme is None:
            left = max(1.0, deadline - time.perf_counter())
            programme = remat.min_peak(problem, dataclasses.replace(self.params, time_limit=left),
                                       hints=[d.choice for _, d, _ in candidates])
        fw, bw, _ = self.timeline.split(programme.choice, programme.prefetch)
        candidates.append((replay_peak(fw, bw), programme, f"programme, {programme.solver.name} "
                           f"{programme.solver.status}"))
        log.info("planner train: least-peak candidates %s", [(p, s) for p, _, s in candidates])
        peak, decision, source = min(candidates, key=lambda c: (c[0], c[1].added_s))  # ties: the cheaper
        best = _Least(decision, peak, source, None)
        best.op = self.timeline.steps[min(remat.peak_step(problem, best.decision.choice, self.params),
                                          len(self.timeline.steps) - 1)].name
        _LEAST[key] = best
        return best

    def candidates(self) -> list[tuple[Bytes, Any, str]]:
        """(replayed peak, decision, source) of the plans found without our programme: torch's
        min-cut partitions at activation_memory_budget 0 and 1 (its dp solver) and block
        checkpointing, each as our choice, split and replayed by us; cached per graph. They
        warm-start the programme and are candidates for the least peak."""
        from planner.solvers import remat

        key = (self.timeline.fingerprint(), self.params.offload, self.params.recompute)
        if key in _CANDIDATES:
            return _CANDIDATES[key]
        problem = self.timeline.problem(0)
        found = []
        choices = [(self._torch_choice(r), f"torch min-cut partition, activation_memory_budget {r}",
                    f"torch-min-cut@{r}") for r in ((0.0, 1.0) if self.params.recompute else ())]
        if self.params.recompute:
            choices.append((self._checkpoint_choice(problem), "every repeated block's outputs kept, the rest "
                            "recomputed (full checkpointing)", "block-checkpoint"))
        for choice, source, name in choices:
            if choice is None:
                continue
            fw, bw, _ = self.timeline.split(choice, {})
            modelled, added = remat.evaluate(problem, choice, self.params)
            info = SolverInfo(name, "heuristic", None, None, None, 0.0)
            found.append((replay_peak(fw, bw), remat.Decision(choice, {}, modelled, added, info), source))
        _CANDIDATES[key] = found
        return found

    def _checkpoint_choice(self, problem: Any) -> dict[str, str] | None:
        """Full activation checkpointing as a choice: in every instance of a numbered module
        (`h.0`, `layer1.2`, ... in `nn_module_stack`), keep the values read outside it (its
        outputs) and recompute the others; keep what lies outside such blocks. None when the
        graph has no numbered blocks. Its backward recomputes each block where its gradients
        start, as torch.utils.checkpoint does, and it is sometimes below the programme's
        least (whose model holds a recomputation's inputs to their last possible need)."""
        from planner.solvers import remat

        tl = self.timeline
        block: dict[str, str | None] = {}
        for n in tl.fwd:  # calls without a module stack (views, decompositions) follow their first input
            block[n.name] = _block_of(n) if n.meta.get("nn_module_stack") else next(
                (block[a.name] for a in n.all_input_nodes if a.name in block), None)
        if not any(block.values()):
            return None
        by_name = {n.name: n for n in tl.fwd}
        choice = {}
        for v in problem.values:
            b = block.get(v.name)
            n = by_name[v.name] if b else None
            readers = {tl.steps[r].name for k in (tl.keys[n] if n is not None else []) for r in tl.readers[k]
                       if r < tl.n_forward}
            inner = b is not None and all(block.get(r) == b for r in readers)
            choice[v.name] = remat.RECOMPUTE if inner and v.recomputable else remat.KEEP
        return choice

    def _torch_choice(self, ratio: float) -> dict[str, str] | None:
        """The values torch's min-cut partition saves at `activation_memory_budget` = ratio, as
        our choice (saved: keep; the rest: recompute), partitioning a copy of the joint graph
        (torch's CSE and tag clean-up rewrite the graph they are given)."""
        from torch._functorch import config

        from planner.solvers import remat

        tl = self.timeline
        g = fx.Graph()
        g.output(g.graph_copy(tl.joint.graph, {}))
        copy = fx.GraphModule(tl.joint, g)
        try:
            with config.patch(activation_memory_budget=ratio, activation_memory_budget_solver="dp"):
                fw, _ = P.min_cut_rematerialization_partition(
                    copy, None, num_fwd_outputs=tl.num_fwd_outputs,
                    static_lifetime_input_indices=self.static_lifetime)
        except Exception as e:  # torch's partitioner fails on some graphs: one candidate fewer
            log.info("planner: torch's min-cut partition at %s failed (%s)", ratio, e)
            return None
        out = next(n for n in reversed(fw.graph.nodes) if n.op == "output")
        by_name = {n.name: n for n in tl.joint.graph.nodes}
        saved = set()
        for a in list(out.args[0])[tl.num_fwd_outputs:]:
            n = by_name.get(getattr(a, "name", None))
            for k in tl.keys.get(n, []) if n is not None else []:
                if tl.owner[k] is not None:
                    saved.add(tl.owner[k].name)
        problem = tl.problem(0)
        return {v.name: remat.KEEP if v.name in saved or not v.recomputable else remat.RECOMPUTE
                for v in problem.values}


# -- 1. the timeline and the problem ----------------------------------------------------------

def _block_of(n: fx.Node) -> str | None:
    """The instance of a numbered module (`...h.0`, `...layer1.2`) a node belongs to, from its
    `nn_module_stack` (the first number on the path); None outside such modules."""
    stack = n.meta.get("nn_module_stack")
    path = list(stack.values())[-1][0] if stack else ""
    m = re.search(r"\.(\d+)(?=\.|$)", path)
    return path[:m.end()] if m else None


def _tensors(val: Any) -> list[torch.Tensor]:
    if isinstance(val, torch.Tensor):
        return [val]
    if isinstance(val, (list, tuple)):
        return [t for t in val if isinstance(t, torch.Tensor)]
    return []


def _key(t: torch.Tensor) -> StorageWeakRef:
    return StorageWeakRef(t.untyped_storage())


def _is_random(n: fx.Node) -> bool:
    """Draws from the RNG: tagged nondeterministic_seeded, unless a `dropout_p` argument is 0
    (attention without dropout, e.g. GPT-2 at dropout 0, is deterministic and may be
    recomputed, as torch.utils.checkpoint recomputes it)."""
    if not (isinstance(n.target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in n.target.tags):
        return False
    for i, arg in enumerate(n.target._schema.arguments):
        if arg.name == "dropout_p":
            p = n.args[i] if i < len(n.args) else n.kwargs.get("dropout_p", arg.default_value)
            return not (isinstance(p, (int, float)) and p == 0)
    return True


def _is_mutating(n: fx.Node) -> bool:
    schema = getattr(n.target, "_schema", None)
    return schema is not None and schema.is_mutable


class _Timeline:
    """The joint graph laid out as forward steps then backward steps, with its storages."""

    def __init__(self, joint: fx.GraphModule, num_fwd_outputs: int, target: Target, opts: TrainOptions):
        joint.graph.eliminate_dead_code()
        joint.recompile()
        self.joint, self.num_fwd_outputs, self.target, self.opts = joint, num_fwd_outputs, target, opts
        self.info = P.classify_nodes(joint, [], num_fwd_outputs)
        nodes = list(joint.graph.nodes)
        for n in nodes:
            if n.op not in ("placeholder", "output", "call_function"):
                raise UnsupportedModel(f"node {n.name} is a {n.op}; the joint graph should hold calls only")
            if n.op != "output" and "val" not in n.meta:
                raise UnsupportedModel(f"node {n.name} has no FakeTensor value")
            if any(isinstance(s, torch.SymInt) for t in _tensors(n.meta.get("val")) for s in t.shape):
                raise UnsupportedModel("dynamic shapes; compile with dynamic=False")
        calls = [n for n in nodes if n.op == "call_function"]
        # forward: what does not depend on the incoming gradients (torch's "required" forward
        # nodes and the unclaimed ones, e.g. attention's logsumexp, which only the backward reads)
        self.fwd = [n for n in calls if n not in self.info.required_bw_nodes]
        self.is_fwd = set(self.fwd)
        self.steps = self.fwd + [n for n in calls if n not in self.is_fwd]
        self.index = {n: k for k, n in enumerate(self.steps)}
        self.n_forward = len(self.fwd)
        self._storages(nodes)
        self._uses(nodes)
        annotate_workspaces(joint, _WORKSPACES)
        devices = {t.device.type for n in nodes if n.op == "placeholder" for t in _tensors(n.meta.get("val"))}
        self.device = "cuda" if "cuda" in devices else "cpu" if devices <= {"cpu"} else devices.pop()

    def fingerprint(self) -> tuple:
        """What identifies the graph across compiles: its code, its inputs' shapes, strides and
        dtypes, and the device (the least-peak cache's key)."""
        import hashlib

        shapes = [(n.name, tuple(t.shape), tuple(t.stride()), str(t.dtype), str(t.device))
                  for n in self.joint.graph.nodes if n.op == "placeholder" for t in _tensors(n.meta.get("val"))]
        text = self.joint.code + repr(shapes) + repr(self.num_fwd_outputs)
        return (hashlib.sha256(text.encode()).hexdigest(),)

    def _storages(self, nodes: list[fx.Node]) -> None:
        """keys[n]: the storages n's value lives in; owner[s]: the call that allocated s
        (None for inputs, weights and tangents); nbytes[s]."""
        self.keys: dict[fx.Node, list[StorageWeakRef]] = {}
        self.owner: dict[StorageWeakRef, fx.Node | None] = {}
        self.nbytes: dict[StorageWeakRef, int] = {}
        for n in nodes:
            if n.op == "output":
                continue
            ks = []
            for t in _tensors(n.meta["val"]):
                k = _key(t)
                if k not in self.owner:
                    self.owner[k] = n if n.op == "call_function" else None
                    self.nbytes[k] = t.untyped_storage().nbytes()
                ks.append(k)
            self.keys[n] = ks

    def _uses(self, nodes: list[fx.Node]) -> None:
        """readers[s]: steps reading storage s (getitems excluded: they only pick from a tuple)."""
        self.readers: dict[StorageWeakRef, list[int]] = {k: [] for k in self.owner}
        for n in self.steps:
            if n.target is operator.getitem:
                continue
            for a in n.all_input_nodes:
                for k in self.keys[a]:
                    self.readers[k].append(self.index[n])
        out = next(n for n in reversed(nodes) if n.op == "output")
        flat = list(out.args[0])
        self.fwd_out = {k for a in flat[:self.num_fwd_outputs] if isinstance(a, fx.Node) for k in self.keys[a]}
        self.bwd_out = {k for a in flat[self.num_fwd_outputs:] if isinstance(a, fx.Node) for k in self.keys[a]}

    def problem(self, budget: Bytes) -> Any:
        from planner.solvers.remat import RematProblem, Value

        end, nf = len(self.steps), self.n_forward
        base = [0] * (end + 1)
        for k, owner in self.owner.items():
            if owner is None:
                continue
            born, reads = self.index[owner], self.readers[k]
            if born < nf:
                last = nf - 1 if k in self.fwd_out else max([born] + [r for r in reads if r < nf])
            else:
                last = end - 1 if k in self.bwd_out else max([born] + reads)
            base[born] += self.nbytes[k]
            base[last + 1] -= self.nbytes[k]
        for t in range(1, end + 1):
            base[t] += base[t - 1]
        for t, n in enumerate(self.steps):  # a kernel's scratch, live while it runs
            base[t] += n.meta.get(WORKSPACE, 0)
        values = []
        for n in self.fwd:
            owned = [k for k in self.keys[n] if self.owner[k] is n and self.readers[k]]
            if not owned:
                continue
            reads = sorted(r for k in owned for r in self.readers[k])
            bwd = [r for r in reads if r >= nf]
            inputs = {self.owner[k].name for a in n.all_input_nodes for k in self.keys[a]
                      if self.owner[k] is not None and self.owner[k] is not n}
            nbytes = sum(self.nbytes[k] for k in owned)
            values.append(Value(
                n.name, nbytes, self.index[n], max([self.index[n]] + [r for r in reads if r < nf]),
                bwd[0] if bwd else None, bwd[-1] if bwd else None, sorted(inputs), self._seconds(n),
                nbytes / self.target.dma_bytes_per_s,
                recomputable=not (_is_random(n) or _is_mutating(n) or P._must_be_in_forward(n)
                                  or any(k in self.fwd_out for k in owned)),
                offloadable=not any(k in self.fwd_out for k in owned)))
        known = {v.name for v in values}
        groups = self._groups([n for n in self.fwd if n.name in known], {v.name: v.nbytes for v in values})
        for v in values:
            v.inputs = [u for u in v.inputs if u in known]
            v.group = groups.get(v.name)
        step_s = [self._seconds(n) for n in self.steps]
        return RematProblem(self.joint.__class__.__name__, values, base[:end], step_s, nf, budget)

    @staticmethod
    def _groups(nodes: list[fx.Node], nbytes: dict[str, int]) -> dict[str, str]:
        """Values of repeated blocks: the instances of a numbered module (`h.0`, `h.1`, ... in
        `nn_module_stack`) whose values form the same sequence of (module path with the number
        starred, op, bytes) are repeats; the value at place i of each gets the group "sig:i"."""
        instances: dict[str, list[tuple[str, tuple]]] = {}
        for n in nodes:
            stack = n.meta.get("nn_module_stack")
            path = list(stack.values())[-1][0] if stack else ""
            m = re.search(r"\.(\d+)(?=\.|$)", path)
            if m:
                key = (path[:m.start()] + ".*" + path[m.end():], str(n.target), nbytes[n.name])
                instances.setdefault(path[:m.end()], []).append((n.name, key))
        by_sig: dict[tuple, list[list[str]]] = {}
        for members in instances.values():
            by_sig.setdefault(tuple(k for _, k in members), []).append([name for name, _ in members])
        groups = {}
        for s, (sig, repeats) in enumerate(by_sig.items()):
            if len(repeats) > 1:
                for names in repeats:
                    groups.update({name: f"{s}:{i}" for i, name in enumerate(names)})
        return groups

    def _seconds(self, n: fx.Node) -> float:
        """Roofline time of one call: flops at the target's rate, or bytes at device bandwidth."""
        moved = sum(t.numel() * t.element_size() for a in n.all_input_nodes for t in _tensors(a.meta["val"]))
        moved += sum(t.numel() * t.element_size() for t in _tensors(n.meta["val"]))
        count = flop_registry.get(getattr(n.target, "overloadpacket", None))
        flops = 0
        if count is not None:
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: a.meta["val"])
            flops = count(*args, **kwargs, out_val=n.meta["val"])
        return max(flops / self.target.flops_per_s, moved / MEMORY_BYTES_PER_S)

    # -- 3. the split ---------------------------------------------------------------------

    def split(self, choice: dict[str, str], prefetch: dict[str, int]) -> tuple[fx.GraphModule, fx.GraphModule,
                                                                                    list[str]]:
        """Forward and backward modules saving the kept and offloaded values; the backward
        recomputes the recomputed ones. Returns them and the recomputed op names."""
        saved = self._saved(choice)
        fw, bw = P._extract_fwd_bwd_modules(self.joint, saved, saved_sym_nodes=[],
                                            num_fwd_outputs=self.num_fwd_outputs,
                                            static_lifetime_input_nodes=self.info.static_lifetime_input_nodes)
        bw = P.reordering_to_mimic_autograd_engine(bw)
        fwd_names = {n.name for n in self.fwd}
        again = [n.name for n in bw.graph.nodes if n.op == "call_function" and n.name in fwd_names]
        by_name = {n.name: n for n in self.fwd}
        bad = [r for r in again if _is_random(by_name[r])]
        recomputed = [r for r in again if self.owns(by_name[r])]  # views and getitems cost nothing
        if bad:
            raise AssertionError(f"random ops {bad} would be recomputed; their outputs must be saved")
        offloaded = [n.name for n in saved if choice.get(self._value_of(n)) == "offload"]
        _offload(fw, bw, offloaded, {n.name: prefetch.get(self._value_of(n), 0) for n in saved},
                 {n.name: k for n, k in self.index.items()}, self.num_fwd_outputs)
        return fw, bw, recomputed

    def owns(self, n: fx.Node) -> bool:
        """n allocates a storage (it is not a view or a getitem)."""
        return any(self.owner[k] is n for k in self.keys.get(n, []))

    def _value_of(self, n: fx.Node) -> str | None:
        """The value (forward op) whose storage tensor node n holds, when n owns it."""
        ks = self.keys.get(n, [])
        if len(ks) != 1 or self.owner[ks[0]] is None:
            return None
        owner = self.owner[ks[0]]
        alias = n is not owner and not (n.target is operator.getitem and n.args[0] is owner)
        return None if alias else owner.name

    def _saved(self, choice: dict[str, str]) -> list[fx.Node]:
        """Walks back from every backward step: a node whose value is kept or offloaded (or an
        input) is saved; views and recomputed ops are crossed to their inputs."""
        saved: dict[fx.Node, None] = {}
        seen: set[fx.Node] = set()
        stack = [a for n in self.steps[self.n_forward:] for a in n.all_input_nodes]
        stack += [a for a in P._extract_fwd_bwd_outputs(self.joint, num_fwd_outputs=self.num_fwd_outputs)[1]
                  if isinstance(a, fx.Node)]
        while stack:
            n = stack.pop()
            if n in seen or (n.op == "call_function" and n not in self.is_fwd):
                continue
            seen.add(n)
            if n.op == "placeholder":
                if P._is_primal(n):
                    saved[n] = None
                continue
            value = self._value_of(n)
            c = choice.get(value) if value is not None else None
            if c in ("keep", "offload"):
                saved[n] = None
            elif value is not None and c is None and n.op == "call_function" and n.target is not \
                    operator.getitem:
                raise AssertionError(f"{n.name} is needed by the backward but neither held nor recomputed")
            else:  # a view, a tuple, a getitem of a recomputed op, or a recomputed op
                stack.extend(n.all_input_nodes)
        order = {n: k for k, n in enumerate(self.joint.graph.nodes)}
        return sorted(saved, key=order.__getitem__)


# -- 4. offload copies ------------------------------------------------------------------------

def _offload(fw: fx.GraphModule, bw: fx.GraphModule, names: list[str], prefetch: dict[str, int],
             step_of: dict[str, int], num_fwd_outputs: int) -> None:
    """Replaces each offloaded saved tensor by its host copy in the forward's outputs, and
    reloads it in the backward at its prefetch step (never after its first reader)."""
    if not names:
        return
    out = next(n for n in reversed(fw.graph.nodes) if n.op == "output")
    outs = list(out.args[0])
    nodes = {n.name: n for n in fw.graph.nodes}
    for name in names:
        node = nodes[name]
        with fw.graph.inserting_after(node):
            host = _copy_to_host(fw.graph, node)
        k = next(i for i, a in enumerate(outs) if a is node and i >= num_fwd_outputs)
        outs[k] = host
    out.args = (tuple(outs),)
    fw.recompile()
    order = list(bw.graph.nodes)
    position = {n: k for k, n in enumerate(order)}
    placeholders = {n.name: n for n in order if n.op == "placeholder"}
    for name in names:
        ph = placeholders[name]
        ph.meta["planner_host"] = True
        first = min(ph.users, key=position.__getitem__)
        due = [n for n in order if step_of.get(n.name, -1) >= prefetch[name] and n.op == "call_function"]
        at = min([first] + due[:1], key=position.__getitem__)
        dev = _copy_to_device(bw.graph, ph, at, first)
        for user in list(ph.users):
            if not user.meta.get("planner_copy"):
                user.replace_input_with(ph, dev)
    bw.graph.lint()
    bw.recompile()


def _copy_to_host(g: fx.Graph, node: fx.Node) -> fx.Node:
    val = node.meta["val"]  # on a CUDA device: offload is never chosen on CPU
    importlib.import_module("torch._functorch._activation_offloading.offload_ops")  # registers torch.ops.ao
    start = g.call_function(torch.ops.ao.offload.default, (node,))
    copy = g.call_function(torch.ops.ao.wait_tensor.default, (start, node))
    start.meta.update(val=val.to("cpu"), planner_host=True, planner_copy=True)
    with _fake_mode(val):
        copy.meta.update(val=torch.empty_like(val, device="cpu"), planner_host=True, planner_copy=True)
    return copy


def _copy_to_device(g: fx.Graph, ph: fx.Node, at: fx.Node, first: fx.Node) -> fx.Node:
    """Issues the reload before `at` (the prefetch step) and, on CUDA, waits for it before `first`."""
    val = ph.meta["val"]
    importlib.import_module("torch._functorch._activation_offloading.offload_ops")
    with g.inserting_before(at):
        start = g.call_function(torch.ops.ao.reload.default, (ph, val.device, list(val.shape), list(val.stride())))
    with g.inserting_before(first):
        copy = g.call_function(torch.ops.ao.wait_tensor.default, (start, ph))
    start.meta.update(val=val, planner_copy=True)
    # the reload holds the storage the backward's views of it share; the host copy another one
    with _fake_mode(val):
        ph.meta["val"] = torch.empty_like(val, device="cpu")
    copy.meta.update(val=val, planner_copy=True)
    return copy


def _fake_mode(val: torch.Tensor) -> Any:
    import contextlib

    return torch._guards.detect_fake_mode([val]) or contextlib.nullcontext()


# -- 5. the replay ------------------------------------------------------------------------------

def replay_peak(fw: fx.GraphModule, bw: fx.GraphModule) -> Bytes:
    """Peak device bytes of running `fw` then `bw`, independent of the solver's model.

    Each call allocates the storages of its value that are new (views allocate nothing); a
    storage is freed after the last node reading it, unless a graph output holds it; the forward's
    saved outputs are the backward's placeholders, live from its start. Inputs, weights, tangents
    and host copies are not device bytes of the step. A call's measured workspace
    (`node.meta[WORKSPACE]`, set by `train_memory.annotate_workspaces`) is live while it runs.
    """
    peak_f, _ = _replay(fw, initial=False)
    peak_b, _ = _replay(bw, initial=True)
    return max(peak_f, peak_b)


def _replay(gm: fx.GraphModule, initial: bool) -> tuple[Bytes, Bytes]:
    nodes = list(gm.graph.nodes)
    keys: dict[fx.Node, list[StorageWeakRef]] = {}
    size: dict[StorageWeakRef, int] = {}
    external: set[StorageWeakRef] = set()
    for n in nodes:
        if n.op == "output":
            continue
        keys[n] = [_key(t) for t in _tensors(n.meta.get("val"))]
        for t in _tensors(n.meta.get("val")):
            size.setdefault(_key(t), t.untyped_storage().nbytes())
        if n.meta.get("planner_host") or (n.op == "placeholder" and (
                not initial or n.name.startswith(("primals", "tangents")))):
            external.update(keys[n])
    last: dict[StorageWeakRef, int] = {}
    for i, n in enumerate(nodes):
        for a in n.all_input_nodes:
            for k in keys[a]:
                last[k] = len(nodes) if n.op == "output" else i
    live: dict[StorageWeakRef, int] = {}
    peak = 0
    for i, n in enumerate(nodes):
        if n.op == "output":
            break
        for k in keys[n]:
            if k not in external and k not in live:
                live[k] = size[k]
        peak = max(peak, sum(live.values()) + n.meta.get(WORKSPACE, 0))
        for k in [k for k in live if last.get(k, i) <= i]:
            del live[k]
    return peak, sum(live.values())
