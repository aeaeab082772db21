"""Epilogue fusion: mark the elementwise chain that follows an einsum so a backend can run it in the same kernel.

    %r = einsum "bi,io->bo"(%x, %w); %1 = add(%r, %bias); %2 = map "relu"(%1)
        -> %1 and %2 get epilogue_of="r": one kernel computes relu(x @ w + bias) and stores only %2.
A chain op reads the previous chain value (used by it alone, not a program output) and otherwise only inputs,
consts or literals that broadcast to the einsum's output shape; its result keeps that shape.
"""

from __future__ import annotations

from dataclasses import replace

from einfold.errors import IRError
from einfold.ir import Op, Program
from einfold.ops import broadcast_shapes
from einfold.passmanager import function_pass

EPILOGUE_OPCODES = ("add", "sub", "mul", "div", "pow", "neg", "map", "cast")
SIDE_OPERAND_OPCODES = ("literal", "const", "input")


def _fusable(user: Op, chain: str, anchor: Op, defs: dict[str, Op]) -> bool:
    """Whether `user` can extend the chain ending at value `chain` of the einsum `anchor`."""
    if user.opcode not in EPILOGUE_OPCODES or user.type.shape != anchor.type.shape:
        return False
    if user.opcode != "cast" and user.type.dtype != defs[chain].type.dtype:
        return False
    sides = [v for v in user.operands if v != chain]
    if len(user.operands) - len(sides) != 1:
        return False
    for side in sides:
        side_op = defs[side]
        if side_op.opcode not in SIDE_OPERAND_OPCODES:
            return False
        try:
            if broadcast_shapes(side_op.type.shape, anchor.type.shape) != anchor.type.shape:
                return False
        except IRError:
            return False
    return True


def epilogue_chains(program: Program) -> dict[str, list[str]]:
    """For each einsum with a fusable chain: the chain's values in order (anchor result -> [chain values])."""
    defs = {op.result: op for op in program.ops}
    users = program.users()
    outputs = set(program.outputs)
    chains: dict[str, list[str]] = {}
    for op in program.ops:
        if op.opcode != "einsum":
            continue
        chain: list[str] = []
        value = op.result
        while value not in outputs and len(users[value]) == 1 and _fusable(users[value][0], value, op, defs):
            value = users[value][0].result
            chain.append(value)
        if chain:
            chains[op.result] = chain
    return chains


@function_pass("fuse-epilogue")
def fuse_epilogue(program: Program, options: dict) -> Program:
    """Mark elementwise ops after an einsum with epilogue_of="<einsum result>"."""
    cleared = program.copy([replace(op, attrs={k: v for k, v in op.attrs.items() if k != "epilogue_of"})
                            for op in program.ops])
    anchor_of = {value: anchor for anchor, chain in epilogue_chains(cleared).items() for value in chain}
    return cleared.copy([op.with_attrs(epilogue_of=anchor_of[op.result]) if op.result in anchor_of else op
                         for op in cleared.ops])
