"""planner: joint operator order, scratchpad offsets and spill/recompute planning."""
from planner.errors import BadInput, Infeasible, PlannerError, SolverTimeout, UnsupportedModel
from planner.ir import TARGETS, Graph, Op, Target, Tensor, get_target
from planner.plan import Metrics, Plan, SolverInfo, Step
from planner.problem import Problem
# The function, bound over the submodule of the same name (as `plan` is): import the
# submodule's names with `from planner.sweep import ...`.
from planner.sweep import sweep

__all__ = ["BadInput", "Infeasible", "PlannerError", "SolverTimeout", "UnsupportedModel", "TARGETS", "Graph",
           "Op", "Target", "Tensor", "get_target", "Metrics", "Plan", "SolverInfo", "Step", "Problem", "plan", "sweep"]


def plan(*args, **kwargs):  # noqa: D103 - documented in planner.api.plan
    from planner.api import plan as _plan

    return _plan(*args, **kwargs)


plan.__doc__ = "Plans a model under a byte budget; see planner.api.plan."
