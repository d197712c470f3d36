"""The plan: the `planner-plan/1` JSON of DESIGN §4, field for field, and nothing more.

`steps` is the whole story. `metrics` is whatever the simulator's replay of the steps
gives; solvers leave it None and `planner.plan()` fills it, so a solver's own count is
never trusted. Reading a file of another format version fails.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import BadInput
from planner.ir import Bytes, Target
from planner.problem import Problem

FORMAT = "planner-plan/1"
STEP_KINDS = ("load", "store", "free", "compute")
STATUSES = ("optimal", "feasible", "heuristic")


@dataclass
class Step:
    kind: str  # one of STEP_KINDS
    tensor: str | None = None  # load / store / free
    offset: Bytes | None = None  # load: where the tensor goes
    op: str | None = None  # compute
    offsets: dict[str, Bytes] | None = None  # compute: where each tracked output goes

    def to_json(self) -> dict[str, Any]:
        if self.kind == "compute":
            return {"kind": "compute", "op": self.op, "offsets": dict(self.offsets or {})}
        if self.kind == "load":
            return {"kind": "load", "tensor": self.tensor, "offset": self.offset}
        return {"kind": self.kind, "tensor": self.tensor}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Step:
        if d.get("kind") not in STEP_KINDS:
            raise BadInput(f"plan step {d!r} has no valid kind; use one of {STEP_KINDS}")
        return Step(kind=d["kind"], tensor=d.get("tensor"), offset=d.get("offset"), op=d.get("op"),
                    offsets=d.get("offsets"))


@dataclass
class PlanTensor:
    name: str
    nbytes: Bytes  # in fast memory, after the target's dtype overrides
    kind: str
    producer: str | None
    consumers: list[str]


@dataclass
class PlanOp:
    name: str
    type: str
    inputs: list[str]
    outputs: list[str]
    flops: int


@dataclass
class Metrics:
    traffic_bytes: Bytes = 0  # all loads + all stores
    compulsory_bytes: Bytes = 0  # first load of used inputs/weights + one store per output
    noncompulsory_bytes: Bytes = 0  # traffic - compulsory: the headline number
    peak_bytes: Bytes = 0  # max over steps of resident bytes
    arena_bytes: Bytes = 0  # max over residencies of offset + nbytes
    recomputed_ops: int = 0  # compute steps beyond each op's first


@dataclass
class SolverInfo:
    name: str
    status: str  # one of STATUSES
    objective: float | None = None  # the solver's own objective (non-compulsory bytes, ...)
    bound: float | None = None  # proven lower bound on the objective, when sought
    gap: float | None = None  # (objective - bound) / objective; 0.0 when optimal
    seconds: float = 0.0

    @staticmethod
    def proven(name: str, objective: float, bound: float, seconds: float = 0.0) -> SolverInfo:
        """A solution of `objective` with a proven `bound` (capped at the objective):
        "optimal" when it meets it, else "feasible" with the gap (DESIGN §4)."""
        bound = min(bound, objective)
        return SolverInfo(name, "optimal" if objective <= bound else "feasible", objective, bound,
                          0.0 if objective == 0 else (objective - bound) / objective, seconds)


@dataclass
class Plan:
    model: str
    target: Target
    tensors: list[PlanTensor]
    ops: list[PlanOp]
    steps: list[Step]
    solver: SolverInfo
    metrics: Metrics | None = None  # filled by the simulator's replay
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (bounds, candidates)

    @staticmethod
    def build(problem: Problem, steps: list[Step], solver: SolverInfo) -> Plan:
        """A plan for `problem` from its steps; metrics are left to the simulator."""
        g = problem.graph
        tensors = [PlanTensor(n, problem.sizes[n], t.kind, t.producer, list(t.consumers))
                   for n, t in g.tensors.items() if n in problem.sizes]
        ops = [PlanOp(o.name, o.type, list(o.inputs), list(o.outputs), o.flops) for o in g.ops]
        return Plan(g.name, problem.target, tensors, ops, steps, solver)

    def schedule(self) -> list[str]:
        """Op names in compute order, recomputations included."""
        return [s.op for s in self.steps if s.kind == "compute"]  # type: ignore[misc]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "model": self.model,
            "target": self.target.to_json(),
            "tensors": [dataclasses.asdict(t) for t in self.tensors],
            "ops": [dataclasses.asdict(o) for o in self.ops],
            "steps": [s.to_json() for s in self.steps],
            "metrics": dataclasses.asdict(self.metrics) if self.metrics else None,
            "solver": dataclasses.asdict(self.solver),
        }
        if self.extra:
            d["extra"] = self.extra
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> Plan:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise BadInput(f"not a {FORMAT} plan (format is {got!r})")
        try:
            plan = Plan(
                model=d["model"],
                target=Target.from_json(d["target"]),
                tensors=[PlanTensor(**t) for t in d["tensors"]],
                ops=[PlanOp(**o) for o in d["ops"]],
                steps=[Step.from_json(s) for s in d["steps"]],
                solver=SolverInfo(**d["solver"]),
                metrics=Metrics(**d["metrics"]) if d.get("metrics") else None,
                extra=d.get("extra", {}),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise BadInput(f"plan JSON is missing or has a bad field: {e}") from None
        _check_types(plan)
        return plan

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @staticmethod
    def load(path: str | Path) -> Plan:
        try:
            return Plan.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8 at all
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]
            raise BadInput(f"cannot read plan {path}: {why}") from None


# Field types of a plan read from JSON. A plan is user input (edited, generated by other
# tools), and a string where bytes belong would otherwise surface as a TypeError deep in
# the simulator; each field is checked here so the error names it.
_INT, _NUM, _STR, _OPT_INT, _OPT_NUM, _OPT_STR = "int", "number", "str", "int or null", "number or null", "str or null"
_FIELDS: dict[type, dict[str, str]] = {
    Target: {"name": _STR, "capacity": _INT, "alignment": _INT, "element_bytes": _OPT_INT, "track_weights": "bool",
             "float_bytes": _OPT_INT, "kind": _STR, "flops_per_s": _NUM, "dma_bytes_per_s": _NUM},
    PlanTensor: {"name": _STR, "nbytes": _INT, "kind": _STR, "producer": _OPT_STR, "consumers": "list of str"},
    PlanOp: {"name": _STR, "type": _STR, "inputs": "list of str", "outputs": "list of str", "flops": _INT},
    Step: {"kind": _STR, "tensor": _OPT_STR, "offset": _OPT_INT, "op": _OPT_STR, "offsets": "str -> int or null"},
    SolverInfo: {"name": _STR, "status": _STR, "objective": _OPT_NUM, "bound": _OPT_NUM, "gap": _OPT_NUM,
                 "seconds": _NUM},
    Metrics: {f.name: _INT for f in dataclasses.fields(Metrics)},
}


def _is(value: Any, kind: str) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {
        _INT: isinstance(value, int) and not isinstance(value, bool),
        _NUM: number,
        _STR: isinstance(value, str),
        _OPT_INT: value is None or (isinstance(value, int) and not isinstance(value, bool)),
        _OPT_NUM: value is None or number,
        _OPT_STR: value is None or isinstance(value, str),
        "bool": isinstance(value, bool),
        "list of str": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "str -> int or null": value is None or (isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in value.items())),
    }[kind]


def _check_types(plan: Plan) -> None:
    """Raises BadInput naming the first field of the wrong type, or a target no replay can
    use (alignment below 1, capacity below 0). Odd but usable values (element_bytes 0) are
    left to `planner simulate`, which compares the block with the target the user names."""
    items: list[tuple[str, Any]] = [("target", plan.target), ("solver", plan.solver), ("metrics", plan.metrics)]
    items += [(f"tensors[{i}]", t) for i, t in enumerate(plan.tensors)]
    items += [(f"ops[{i}]", o) for i, o in enumerate(plan.ops)]
    items += [(f"steps[{i}]", s) for i, s in enumerate(plan.steps)]
    for where, obj in items:
        for name, kind in _FIELDS.get(type(obj), {}).items():
            value = getattr(obj, name)
            if not _is(value, kind):
                raise BadInput(f"plan field {where}.{name} is {value!r}; it must be a {kind}")
    t = plan.target
    if t.alignment < 1 or t.capacity < 0:
        raise BadInput(f"plan target has alignment {t.alignment} and capacity {t.capacity}: alignment must be "
                       f">= 1 and capacity >= 0")
