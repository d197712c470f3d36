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
            return Plan(
                model=d["model"],
                target=Target.from_json(d["target"]),
                tensors=[PlanTensor(**t) for t in d["tensors"]],
                ops=[PlanOp(**o) for o in d["ops"]],
                steps=[Step.from_json(s) for s in d["steps"]],
                solver=SolverInfo(**d["solver"]),
                metrics=Metrics(**d["metrics"]) if d.get("metrics") else None,
                extra=d.get("extra", {}),
            )
        except (KeyError, TypeError) as e:
            raise BadInput(f"plan JSON is missing or has a bad field: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @staticmethod
    def load(path: str | Path) -> Plan:
        try:
            return Plan.from_json(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise BadInput(f"cannot read plan {path}: {e}") from None
