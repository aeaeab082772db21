"""Three-step (four-step) NTT: a dense transform over Z_q whose constant is a permuted DFT is factored exactly.

    einsum "kj,...j->...k"(W, x), W[k, j] = s a^j w^(e_k j)  ->  R x R matmul (T1), twiddles (T2), C x C matmul (T3)
and permutation einsums for k <-> e_k (or, when the columns of W are the geometric ones, the transposed form with
an input permutation). The structure is checked on every entry of W; `mat-fold` then removes the permutations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from einfold import he
from einfold.errors import SpecError, UnsupportedError
from einfold.ir import Op, Program
from einfold.passmanager import function_pass
from einfold.spec import EinsumSpec

from .dce import dce


@dataclass(frozen=True)
class DftStructure:
    """W (or W^T when `transposed`) is [s a^j w^(e_k j)]_(k,j); position z'C + n' holds e = rows_perm[z'] + R
    cols_perm[n'] (R x C split)."""

    q: int
    a: int
    w: int
    scale: int
    rows: int
    cols: int
    row_perm: tuple[int, ...]
    col_perm: tuple[int, ...]
    transposed: bool

    def describe(self) -> str:
        form = "cols-first (input permuted)" if self.transposed else "rows-first (output permuted)"
        return f"R={self.rows} C={self.cols} a={self.a} w={self.w} s={self.scale} {form}"


def _geometric_rows(matrix: np.ndarray, q: int) -> tuple[int, np.ndarray] | None:
    """(s, g) with matrix[k, j] == s g_k^j for all k, j (checked exactly), or None."""
    first = matrix[:, 0]
    scale = int(first[0])
    if scale == 0 or np.any(first != first[0]):
        return None
    inverse = pow(scale, -1, q)
    ratio = he.mulmod(matrix[:, 1], np.full(len(first), inverse, np.uint64), q)
    power = first.copy()
    for j in range(1, matrix.shape[1]):
        power = he.mulmod(power, ratio, q)
        if not np.array_equal(power, matrix[:, j]):
            return None
    return scale, ratio


def _separable(exponents: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(row_perm, col_perm) with exponents[z'C + n'] == row_perm[z'] + R col_perm[n'], or None."""
    grid = exponents.reshape(rows, cols)
    row_perm, col_perm = grid[:, 0] % rows, grid[0, :] // rows
    if np.array_equal(grid, row_perm[:, None] + rows * col_perm[None, :]):
        return row_perm, col_perm
    return None


def find_dft_structure(matrix: np.ndarray, q: int, rows: int | None = None) -> DftStructure | str:
    """The exact DFT structure of a square matrix over Z_q (q prime), or the reason there is none."""
    n = matrix.shape[0]
    if matrix.ndim != 2 or matrix.shape[1] != n or n < 4 or n & (n - 1):
        return f"not a square power-of-two matrix ({matrix.shape})"
    if not he.is_prime(q) or (q - 1) % n:
        return f"Z_{q} has no roots of unity of order {n}"
    try:
        r, c = he.split_rows(n, rows)
    except SpecError as error:
        return str(error)
    for transposed, candidate in ((False, matrix), (True, matrix.T)):
        found = _geometric_rows(np.ascontiguousarray(candidate), q)
        if found is None:
            continue
        scale, nodes = found
        a = int(nodes[0])
        if a == 0:
            continue
        ratios = he.mulmod(nodes, np.full(n, pow(a, -1, q), np.uint64), q)
        # Try the generators that the bit-reversed and the natural orders put at positions N/2 and 1.
        for position in dict.fromkeys((n // 2, 1, c, r)):
            w = int(ratios[position])
            if pow(w, n // 2, q) == 1 or pow(w, n, q) != 1:
                continue
            logs = {int(v): e for e, v in enumerate(he.power_table(w, n, q))}
            exponents = np.array([logs.get(int(v), -1) for v in ratios])
            if np.any(exponents < 0) or len(set(exponents.tolist())) != n:
                continue
            perms = _separable(exponents, r, c)
            if perms is not None:
                return DftStructure(q, a, w, scale, r, c, tuple(perms[0].tolist()), tuple(perms[1].tolist()),
                                    transposed)
        return "rows are geometric but the node order is not separable over an R x C split"
    return "neither the rows nor the columns are geometric sequences s g^j"


def _dense_transform(op: Op, defs: dict[str, Op], weights: dict[str, np.ndarray]) -> tuple[str, np.ndarray] | None:
    """(data operand, M) when op is y[.., k] = sum_j M[k, j] x[.., j] with M a constant over zq, else None."""
    if op.opcode != "einsum" or len(op.operands) != 2 or not op.type.dtype.is_modular or "ntt_factor" in op.attrs:
        return None
    spec = EinsumSpec.parse(op.attrs["spec"])
    for k in (0, 1):
        const, data = defs[op.operands[k]], op.operands[1 - k]
        term, data_term = spec.inputs[k], spec.inputs[1 - k]
        if const.opcode != "const" or const.attrs["name"] not in weights or len(term) != 2:
            continue
        j = data_term[-1:]
        out_label = next((lab for lab in term if lab != j), "")
        if (len(set(term)) == 2 and j in term and data_term.count(j) == 1 and out_label not in data_term
                and spec.output == data_term[:-1] + out_label):
            matrix = weights[const.attrs["name"]]
            return data, (matrix if term[0] == out_label else matrix.T)
    return None


@function_pass("ntt-three-step")
def ntt_three_step(program: Program, options: dict) -> Program:
    """Factor dense Z_q transforms with exact DFT structure into the three-step form."""
    rows = options.get("ntt_rows")
    new = Program(program.name)
    new.weights = dict(program.weights)
    mapping: dict[str, str] = {}
    defs = {op.result: op for op in program.ops}
    for op in program.ops:
        op = replace(op, operands=tuple(mapping.get(v, v) for v in op.operands))
        found = _dense_transform(op, defs, program.weights)
        structure = find_dft_structure(found[1], op.type.dtype.modulus, rows) if found else None
        if found is None or isinstance(structure, str):
            if structure is not None and options.get("ntt_three_step") == "require":
                raise UnsupportedError(f"ntt-three-step: einsum %{op.result} is not a DFT over Z_q: {structure}")
            new.add_op(op)
            continue
        emit = he.emit_cols_first if structure.transposed else he.emit_rows_first
        attrs = {"three_step": structure.describe(), "from": op.result}
        mapping[op.result] = emit(new, found[0], structure.q, structure.a, structure.w, structure.scale,
                                  structure.rows, structure.cols, np.array(structure.row_perm),
                                  np.array(structure.col_perm), f"{op.result}.3s", attrs)
    return dce.apply(new.copy(new.ops, [mapping.get(name, name) for name in program.outputs]), options)
