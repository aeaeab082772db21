"""Dead-code elimination: drop ops the outputs do not depend on (inputs always stay: they are the signature)."""

from __future__ import annotations

from einfold.graph import live_values
from einfold.ir import Program
from einfold.passmanager import function_pass


@function_pass("dce")
def dce(program: Program, options: dict) -> Program:
    """Remove ops whose values no output needs."""
    live = live_values(program)
    return program.copy([op for op in program.ops if op.result in live])
