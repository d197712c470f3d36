"""Named failures. Each maps to one CLI exit code (CONVENTIONS: 1 bad input, 2 infeasible,
3 time limit with no plan), and each message is one line a user can act on."""
from __future__ import annotations


class PlannerError(Exception):
    """Base class; `exit_code` is what the CLI returns for it."""

    exit_code = 1


class BadInput(PlannerError):
    """Malformed model, bad size or unit, unwritable path, dynamic shape without a value."""


class UnsupportedModel(BadInput):
    """The model uses something the frontend cannot lower (the message names it)."""


class Infeasible(PlannerError):
    """No plan fits the budget. Names the op that sets the minimum and that minimum."""

    exit_code = 2

    def __init__(self, message: str, *, op: str | None = None, minimum: int | None = None):
        super().__init__(message)
        self.op = op
        self.minimum = minimum


class SolverTimeout(PlannerError):
    """The time limit passed before any plan was found. Never means infeasible."""

    exit_code = 3
