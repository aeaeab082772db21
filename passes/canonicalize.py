"""Canonicalise: relabel einsum indices in order of first appearance and drop identity ops.

    einsum "xy,yz->xz" -> einsum "ab,bc->ac";   einsum "ab->ab"(x) -> x;
    reshape(reshape(x)) -> reshape(x);          reshape/cast to the operand's own type -> the operand
"""

from __future__ import annotations

from dataclasses import replace

from einfold.ir import Op, Program, rebuild
from einfold.passmanager import function_pass
from einfold.spec import LETTERS, EinsumSpec


def canonical_spec(spec: str) -> str:
    parsed = EinsumSpec.parse(spec)
    letters = {label: LETTERS[k] for k, label in enumerate(parsed.labels)}
    relabel = lambda term: "".join(letters[c] for c in term)  # noqa: E731
    return str(EinsumSpec(tuple(relabel(t) for t in parsed.inputs), relabel(parsed.output)))


@function_pass("canonicalize")
def canonicalize(program: Program, options: dict) -> Program:
    """Relabel einsum specs canonically; remove identity einsums, reshapes and casts."""
    ops: list[Op] = []
    mapping: dict[str, str] = {}
    defs: dict[str, Op] = {}
    for op in program.ops:
        operands = tuple(mapping.get(v, v) for v in op.operands)
        op = replace(op, operands=operands)
        if op.opcode == "einsum":
            op = op.with_attrs(spec=canonical_spec(op.attrs["spec"]))
            spec = EinsumSpec.parse(op.attrs["spec"])
            if len(spec.inputs) == 1 and spec.inputs[0] == spec.output:
                mapping[op.result] = operands[0]
                continue
        if op.opcode in ("reshape", "cast") and defs[operands[0]].type == op.type:
            mapping[op.result] = operands[0]
            continue
        if op.opcode == "reshape" and defs[operands[0]].opcode == "reshape":
            op = replace(op, operands=defs[operands[0]].operands)
        ops.append(op)
        defs[op.result] = op
    return rebuild(program, ops, mapping)
