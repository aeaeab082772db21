"""Common-subexpression elimination: ops with the same opcode, operands, attributes and type are one.

    %1 = einsum "ab->b"(%x); %2 = einsum "ab->b"(%x)  ->  %2 uses %1
"""

from __future__ import annotations

from dataclasses import replace

from einfold.ir import Op, Program, rebuild
from einfold.passmanager import function_pass
from einfold.printer import format_value


@function_pass("cse")
def cse(program: Program, options: dict) -> Program:
    """Merge duplicate ops (inputs are never merged)."""
    seen: dict[tuple, str] = {}
    mapping: dict[str, str] = {}
    ops: list[Op] = []
    for op in program.ops:
        op = replace(op, operands=tuple(mapping.get(v, v) for v in op.operands))
        if op.opcode != "input":
            key = (op.opcode, op.operands, str(op.type), format_value(op.attrs))
            if key in seen:
                mapping[op.result] = seen[key]
                continue
            seen[key] = op.result
        ops.append(op)
    return rebuild(program, ops, mapping)
