"""Constant folding: evaluate ops whose operands are all weights or literals, at compile time.

    einsum "ab,bc->ac"(const W1, const W2) -> const W1W2,   when the result is no larger than its inputs
An op is folded only if its result has no more elements than its constant operands together, so folding
never grows the weights (W1 @ W2 of a low-rank pair stays unfolded).
"""

from __future__ import annotations

import numpy as np

from einfold.ir import Op, Program, rebuild, weight_hash
from einfold.passmanager import function_pass
from einfold.reference import evaluate_op, literal_array

CONSTANT = ("const", "literal")


@function_pass("constant-fold")
def constant_fold(program: Program, options: dict) -> Program:
    """Fold weight-only ops whose result is no larger than their inputs."""
    weights = dict(program.weights)
    defs: dict[str, Op] = {}
    ops: list[Op] = []
    for op in program.ops:
        operand_ops = [defs[v] for v in op.operands]
        foldable = (op.opcode not in ("input", *CONSTANT) and operand_ops
                    and all(o.opcode in CONSTANT for o in operand_ops)
                    and all(o.opcode == "literal" or o.attrs["name"] in weights for o in operand_ops)
                    and op.type.size <= sum(o.type.size for o in operand_ops))
        if foldable:
            args = [_value(o, weights) for o in operand_ops]
            result = np.asarray(evaluate_op(op, args, weights))
            if op.type.shape == () and not op.type.dtype.is_modular:
                value = result.item()
                stored = [value.real, value.imag] if isinstance(value, complex) else value
                op = Op("literal", op.result, op.type, (), {"value": stored})
            else:
                name = f"folded_{op.result}"
                weights[name] = result
                op = Op("const", op.result, op.type, (), {"name": name, "sha": weight_hash(result),
                                                          "folded": op.opcode})
        ops.append(op)
        defs[op.result] = op
    folded = rebuild(program, ops, {})
    folded.weights = {k: v for k, v in weights.items() if k in {o.attrs["name"] for o in folded.consts}}
    return folded


def _value(op: Op, weights: dict[str, np.ndarray]) -> np.ndarray:
    return literal_array(op) if op.opcode == "literal" else weights[op.attrs["name"]]

