"""The verifier: SSA well-formedness, types and shapes of every op, weights and outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import IRError
from .ops import infer_type
from .printer import format_op

if TYPE_CHECKING:
    from .ir import Program


def verify(program: Program) -> None:
    """Raise IRError naming the first op (and operand) that is wrong."""
    defined: dict[str, object] = {}
    for index, op in enumerate(program.ops):
        where = f"op {index} `{format_op(op)}`"
        if op.result in defined:
            raise IRError(f"{where}: value %{op.result} is defined twice")
        for position, operand in enumerate(op.operands):
            if operand not in defined:
                raise IRError(f"{where}: operand {position} (%{operand}) is used before it is defined")
        try:
            expected = infer_type(op.opcode, [defined[v].type for v in op.operands], op.attrs, op.type)  # type: ignore[attr-defined]
        except IRError as error:
            raise IRError(f"{where}: {error}") from None
        if expected != op.type:
            raise IRError(f"{where}: declared type {op.type} but the operands give {expected}")
        if op.opcode == "const":
            data = program.weights.get(op.attrs["name"])
            if data is not None and (tuple(data.shape) != op.type.shape or data.dtype != op.type.dtype.numpy):
                raise IRError(f"{where}: weight {op.attrs['name']!r} holds {data.dtype}{list(data.shape)}, "
                              f"not {op.type}")
        defined[op.result] = op
    if not program.outputs:
        raise IRError(f"program @{program.name} returns nothing")
    for name in program.outputs:
        if name not in defined:
            raise IRError(f"program @{program.name} returns %{name}, which is not defined")
