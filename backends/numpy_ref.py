"""The `numpy` target: runs the IR op by op with the reference evaluator (the oracle for every test)."""

from __future__ import annotations

from einfold.backend_api import Lowered
from einfold.ir import Program
from einfold.reference import run_program

DESCRIPTION = "reference interpreter in numpy (the oracle)"


def available() -> tuple[bool, str]:
    return True, ""


def passes(options: dict) -> list[str]:
    return []


def lower(program: Program, options: dict) -> Lowered:
    return Lowered(run=lambda inputs: run_program(program, inputs))
