"""CKKS packing: choose the parameter set and, for each einsum, the joint slot order in which its operands
are packed (`ckks_order`), recording the result's layout (`ckks_layout`) so the decision shows in the IR.

    einsum "ab,b->a" (%w, %x)
      -> einsum "ab,b->a" (%w, %x) {ckks_layout="slot[a:128@128 b:~128@1] dirty", ckks_order="ab"}
"""

from __future__ import annotations

from einfold.ir import Program
from einfold.passmanager import function_pass


@function_pass("ckks-packing")
def ckks_packing(program: Program, options: dict) -> Program:
    """Pick CKKS parameters and every einsum's slot layout by the cost model; record them as attributes."""
    from einfold.backends.ckks.program import plan_program

    plan = plan_program(program, options)
    ops = []
    for op in program.ops:
        if op.opcode == "einsum":
            op = op.with_attrs(ckks_order=plan.orders[op.result], ckks_layout=plan.layouts.get(op.result, ""))
        elif op.opcode == "input":
            op = op.with_attrs(ckks_params=plan.params.name)
        ops.append(op)
    return program.copy(ops)
