"""MAT (memory-aligned transformation): fold permutation einsums into constant operands, so nothing is shuffled.

    einsum "uz,...zn->...un"(P, einsum "...zc,cn->...zn"(mul(einsum "zr,...rc->...zc"(T1, X), T2), T3))
      ->  einsum "...uc,cn->...un"(mul(einsum "ur,...rc->...uc"(P T1, X), P T2), T3)
A permutation of an index is pulled back through its producers (pass-through indices) until a constant carries
the index, or pushed forward through its users until a constant contracts it; the constant is permuted instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from einfold.ir import Op, Program, rebuild, weight_hash
from einfold.ops import TensorType
from einfold.passmanager import function_pass
from einfold.spec import EinsumSpec

from .dce import dce


@dataclass(frozen=True)
class PermutationOp:
    """`result[.., u, ..] = data[.., perm[u], ..]` along `axis` of `data`."""

    result: str
    data: str
    axis: int
    perm: tuple[int, ...]
    const: str


def as_permutation(op: Op, defs: dict[str, Op], weights: dict[str, np.ndarray]) -> PermutationOp | None:
    """Recognise an einsum that only permutes one index of its data operand by a constant 0/1 matrix."""
    if op.opcode != "einsum" or len(op.operands) != 2:
        return None
    spec = EinsumSpec.parse(op.attrs["spec"])
    for k in (0, 1):
        const, data_term, term = defs[op.operands[k]], spec.inputs[1 - k], spec.inputs[k]
        if const.opcode != "const" or const.attrs["name"] not in weights or len(term) != 2 or term[0] == term[1]:
            continue
        old = [lab for lab in term if lab in data_term]
        if len(old) != 1 or data_term.count(old[0]) != 1:
            continue
        new = term[1] if term[0] == old[0] else term[0]
        if spec.output != data_term.replace(old[0], new):
            continue
        matrix = weights[const.attrs["name"]]
        oriented = matrix if term[0] == new else matrix.T
        if not _is_permutation(oriented):
            continue
        perm = tuple(int(i) for i in np.argmax(oriented, axis=1))
        return PermutationOp(op.result, op.operands[1 - k], data_term.index(old[0]), perm, op.operands[k])
    return None


def _is_permutation(matrix: np.ndarray) -> bool:
    binary = (matrix == 0) | (matrix == 1)
    return bool(binary.all() and np.all(matrix.sum(axis=0) == 1) and np.all(matrix.sum(axis=1) == 1))


class _Fold:
    """One attempted fold: replacement ops by result name, new constants, and ops to insert before others."""

    def __init__(self, program: Program):
        self.program = program
        self.defs = {op.result: op for op in program.ops}
        self.users = program.users()
        self.outputs = set(program.outputs)
        self.replaced: dict[str, Op] = {}
        self.inserted: dict[str, list[Op]] = {}
        self.weights: dict[str, np.ndarray] = {}

    def current(self, name: str) -> Op:
        return self.replaced.get(name, self.defs[name])

    def permuted_const(self, const_name: str, axis: int, perm: np.ndarray, before: str, why: str) -> str:
        """A new const equal to `const` with index `axis` permuted (new[.., u, ..] = old[.., perm[u], ..])."""
        op = self.defs[const_name]
        data = np.ascontiguousarray(np.take(self.program.weights[op.attrs["name"]], perm, axis=axis))
        name = self.program.fresh_name(f"{const_name}.mat")
        while name in self.weights or any(name == o.result for ops in self.inserted.values() for o in ops):
            name += "_"
        self.weights[name] = data
        new = Op("const", name, TensorType(data.shape, op.type.dtype), (),
                 {"name": name, "sha": weight_hash(data), "mat": why})
        self.inserted.setdefault(before, []).append(new)
        return name

    def pull(self, value: str, axis: int, perm: np.ndarray, why: str) -> bool:
        """Redefine `value` (used once) as its own permutation along `axis`, permuting constants upstream."""
        if value in self.outputs or len(self.users.get(value, [])) != 1:
            return False
        op = self.current(value)
        if op.opcode == "cast" and self.defs[op.operands[0]].type.shape == op.type.shape:
            return self.pull(op.operands[0], axis, perm, why)
        operand_axes = self._operand_axes(op, axis)
        if operand_axes is None:
            return False
        operands = list(op.operands)
        for k, operand_axis in operand_axes:
            source = self.defs[operands[k]]
            if source.opcode == "const":
                operands[k] = self.permuted_const(operands[k], operand_axis, perm, op.result, why)
            elif not self.pull(operands[k], operand_axis, perm, why):
                return False
        self.replaced[op.result] = replace(op, operands=tuple(operands))
        return True

    def push(self, value: str, axis: int, perm: np.ndarray, why: str) -> bool:
        """Every user of `value` now reads its un-permuted version (value[perm] was what they read): contract the
        inverse permutation into the constants that carry the index, and push on where the index passes through."""
        if value in self.outputs:
            return False
        inverse = np.argsort(perm)
        for user in self.users.get(value, []):
            op = self.current(user.result)
            if op.opcode not in ("einsum", "mul", "add", "sub") or op.operands.count(value) != 1:
                return False
            k = op.operands.index(value)
            plan = self._label_plan(op, k, axis)
            if plan is None:
                return False
            carriers, out_axis = plan
            operands = list(op.operands)
            for j, operand_axis in carriers:
                if self.defs[operands[j]].opcode != "const":
                    return False
                operands[j] = self.permuted_const(operands[j], operand_axis, inverse, op.result, why)
            self.replaced[op.result] = replace(op, operands=tuple(operands))
            if out_axis is not None and not self.push(op.result, out_axis, perm, why):
                return False
        return True

    def _operand_axes(self, op: Op, axis: int) -> list[tuple[int, int]] | None:
        """For an output axis of `op`: the (operand, axis) pairs that carry it, or None if not foldable."""
        if op.opcode == "einsum":
            spec = EinsumSpec.parse(op.attrs["spec"])
            label = spec.output[axis]
            if any(term.count(label) > 1 for term in spec.inputs):
                return None
            return [(k, term.index(label)) for k, term in enumerate(spec.inputs) if label in term]
        if op.opcode in ("mul", "add", "sub"):
            pairs = []
            for k, operand in enumerate(op.operands):
                shape = self.defs[operand].type.shape
                local = axis - (len(op.type.shape) - len(shape))
                if local >= 0 and shape[local] != 1:
                    pairs.append((k, local))
            return pairs
        return None

    def _label_plan(self, op: Op, k: int, axis: int) -> tuple[list[tuple[int, int]], int | None] | None:
        """For operand k's axis: the other operands carrying the same index and the output axis it reaches."""
        if op.opcode == "einsum":
            spec = EinsumSpec.parse(op.attrs["spec"])
            label = spec.inputs[k][axis]
            if any(term.count(label) > 1 for term in spec.inputs):
                return None
            carriers = [(j, term.index(label)) for j, term in enumerate(spec.inputs) if j != k and label in term]
            return carriers, (spec.output.index(label) if label in spec.output else None)
        shape = self.defs[op.operands[k]].type.shape
        out_axis = axis + len(op.type.shape) - len(shape)
        carriers = [pair for pair in (self._operand_axes(op, out_axis) or []) if pair[0] != k]
        return carriers, out_axis


def _fold_one(program: Program, perm_op: PermutationOp) -> Program | None:
    perm = np.array(perm_op.perm)
    why = f"folds %{perm_op.result}"
    for direction in ("pull", "push"):
        fold = _Fold(program)
        ok = (fold.pull(perm_op.data, perm_op.axis, perm, why) if direction == "pull"
              else fold.push(perm_op.result, perm_op.axis, perm, why))
        if not ok:
            continue
        ops: list[Op] = []
        for op in program.ops:
            ops.extend(fold.inserted.get(op.result, []))
            if op.result != perm_op.result:
                ops.append(fold.replaced.get(op.result, op))
        base = program.copy()
        base.weights.update(fold.weights)
        return rebuild(base, ops, {perm_op.result: perm_op.data})
    return None


@function_pass("mat-fold")
def mat_fold(program: Program, options: dict) -> Program:
    """Fold constant permutation einsums into neighbouring constants (the MAT of CROSS)."""
    changed = True
    while changed:
        changed = False
        defs = {op.result: op for op in program.ops}
        for op in program.ops:
            perm_op = as_permutation(op, defs, program.weights)
            if perm_op is None:
                continue
            folded = _fold_one(program, perm_op)
            if folded is not None:
                program, changed = folded, True
                break
    return dce.apply(program, options)  # the replaced constants and permutation matrices
