"""The textual IR: one op per line, stable and exactly parseable by `einfold.parse_ir`.

    program @mlp {
      %x = input : f32[8,64]
      %w1 = const "w1" {sha="1f0c...."} : f32[64,128]
      %0 = einsum "bi,io->bo" (%x, %w1) : f32[8,128]
      %1 = map "relu" (%0) : f32[8,128]
      return %1
    }
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ir import Op, Program

# The attribute printed right after the opcode, without its key.
PRIMARY_ATTR = {"einsum": "spec", "map": "fn", "const": "name", "literal": "value"}


def format_value(value: Any) -> str:
    """An attribute value as JSON (floats print with repr, so they parse back exactly)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {format_value(v)}" for k, v in sorted(value.items())) + "}"
    return json.dumps(value)


def format_op(op: Op) -> str:
    parts = [f"%{op.result} = {op.opcode}"]
    primary = PRIMARY_ATTR.get(op.opcode)
    if primary is not None and primary in op.attrs:
        parts.append(format_value(op.attrs[primary]))
    if op.operands:
        parts.append("(" + ", ".join(f"%{v}" for v in op.operands) + ")")
    rest = {k: v for k, v in op.attrs.items() if k != primary}
    if rest:
        parts.append("{" + ", ".join(f"{k}={format_value(v)}" for k, v in sorted(rest.items())) + "}")
    return " ".join(parts) + f" : {op.type}"


def format_program(program: Program) -> str:
    lines = [f"program @{program.name} {{"]
    lines += [f"  {format_op(op)}" for op in program.ops]
    lines.append("  return " + ", ".join(f"%{v}" for v in program.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
