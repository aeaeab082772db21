"""Plain data shared by the factorization passes: a weight use `y = x . W` found in a Program, a `Factorization`
of W as a small tensor network (`'bi,oi->bo'` becomes e.g. `'Zi,ri,or->Zo'`), and the rewrite inserting its chain.

Label `Z` always stands for the batch (all of x's indices that W does not touch, flattened); x is viewed as
`(batch, *in_dims)`, the result as `(batch, *out_dims)`, both row-major. A real W may also be the real part of a
complex network (`real_part`, e.g. the DCT through the DFT): the chain casts x to complex and keeps the real part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from einfold import dtypes
from einfold.errors import IRError
from einfold.ir import Op, Program, weight_hash
from einfold.ops import TensorType
from einfold.spec import LETTERS, EinsumSpec, parse_subscripts

BATCH = "Z"
FACTOR_LETTERS = LETTERS.replace(BATCH, "")
STRUCTURES = ("dense", "low_rank", "kronecker", "block_diag", "monarch", "butterfly")


@dataclass(frozen=True)
class Factorization:
    """W (n_out x n_in) as the contraction of x's view `Z+x_labels` with `factors` (labelled `factor_labels`)
    into `Z+out_labels`. `order` is the order in which the chain applies the factors to x. With `real_part`, W is
    the real part of the (complex) network: the chain casts a real x to complex first and keeps the real part of
    its result, i.e. W x = Re(N x) for real x."""

    structure: str
    in_dims: tuple[int, ...]
    out_dims: tuple[int, ...]
    x_labels: str
    out_labels: str
    factor_labels: tuple[str, ...]
    factors: tuple[np.ndarray, ...] = field(repr=False, compare=False)
    rel_error: float = 0.0
    params_info: dict[str, Any] = field(default_factory=dict, compare=False)
    commuting: bool = False  # every order of applying the factors is cheap to consider (few factors)
    real_part: bool = False

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise IRError(f"unknown structure {self.structure!r}; known: {', '.join(STRUCTURES)}")
        if len(self.x_labels) != len(self.in_dims) or len(self.out_labels) != len(self.out_dims):
            raise IRError(f"{self.structure}: labels {self.x_labels!r}/{self.out_labels!r} do not match dims "
                          f"{self.in_dims}/{self.out_dims}")
        if len(self.factors) != len(self.factor_labels):
            raise IRError(f"{self.structure}: {len(self.factors)} factors but {len(self.factor_labels)} label sets")
        terms = (BATCH + self.x_labels, *self.factor_labels)
        shapes = [(1, *self.in_dims), *(f.shape for f in self.factors)]
        try:
            sizes = EinsumSpec(terms, BATCH + self.out_labels).sizes(shapes)
        except Exception as error:
            raise IRError(f"{self.structure}: factor shapes do not fit their labels: {error}") from None
        if tuple(sizes[c] for c in self.out_labels) != self.out_dims:
            raise IRError(f"{self.structure}: output labels {self.out_labels!r} do not have sizes {self.out_dims}")

    @property
    def n_in(self) -> int:
        return math.prod(self.in_dims)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_dims)

    @property
    def terms(self) -> tuple[str, ...]:
        """Index strings of the network: x's view first, then each factor."""
        return (BATCH + self.x_labels, *self.factor_labels)

    @property
    def output(self) -> str:
        return BATCH + self.out_labels

    def sizes(self, batch: int = 1) -> dict[str, int]:
        sizes = {BATCH: batch}
        for term, array in zip(self.factor_labels, self.factors):
            sizes.update(zip(term, array.shape))
        sizes.update(zip(self.x_labels, self.in_dims))
        return sizes

    @property
    def params(self) -> int:
        return sum(f.size for f in self.factors)

    def chain(self) -> tuple[str, ...]:
        """The einsum specs applying the factors one after another (x first), as a plain left-deep chain."""
        specs = []
        inside = {0}
        current = self.terms[0]
        for k in range(1, len(self.terms)):
            inside.add(k)
            result = self.output if k == len(self.terms) - 1 else open_labels(self.terms, inside, self.output)
            specs.append(f"{current},{self.terms[k]}->{result}")
            current = result
        return tuple(specs)

    def flops(self, batch: int) -> int:
        """FLOPs of the plain chain for `batch` rows (einsum counting: 2 per multiply-add)."""
        sizes = self.sizes(batch)
        return sum(EinsumSpec.parse(s).flops(sizes) for s in self.chain())

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The chain on a (batch, n_in) array in numpy, giving (batch, n_out)."""
        value = x.reshape(x.shape[0], *self.in_dims)
        if self.real_part:
            value = value.astype(np.result_type(value, *self.factors))
        for spec, factor in zip(self.chain(), self.factors):
            value = np.einsum(spec, value, factor)
        return (value.real if self.real_part else value).reshape(x.shape[0], self.n_out)

    def dense(self) -> np.ndarray:
        """The (n_out, n_in) matrix the network represents (the chain applied to the identity)."""
        dtype = np.result_type(*self.factors)
        return self.apply(np.eye(self.n_in, dtype=dtype)).T


def open_labels(terms: tuple[str, ...], inside: set[int], output: str) -> str:
    """Labels of the partial contraction of `terms[inside]`: those still needed outside it or in the output.
    The batch label comes first, then the rest in order of first appearance."""
    here = "".join(dict.fromkeys("".join(terms[k] for k in sorted(inside))))
    needed = set(output) | set("".join(t for k, t in enumerate(terms) if k not in inside))
    labels = [c for c in here if c in needed]
    return "".join(sorted(labels, key=lambda c: c != BATCH))


def frobenius(array: np.ndarray) -> float:
    flat = np.ravel(array)
    return float(np.sqrt(np.vdot(flat, flat).real))


def relative_error(approx: np.ndarray, weight: np.ndarray) -> float:
    """||approx - W||_F / ||W||_F."""
    norm = frobenius(weight)
    return frobenius(approx - weight) / norm if norm else frobenius(approx)


def fresh_letters(count: int) -> list[str]:
    if count > len(FACTOR_LETTERS):
        raise IRError(f"a factorization needing {count} indices exceeds the {len(FACTOR_LETTERS)} einsum letters")
    return list(FACTOR_LETTERS[:count])


@dataclass(frozen=True)
class WeightUse:
    """An einsum contracting a const weight with one other operand over one index group."""

    op: Op
    x: str
    weight_op: Op
    batch_labels: str  # x's labels W does not touch, in x's order
    contracted: str  # labels shared by x and W, in x's order
    free: str  # W's labels kept in the output, in the output's order
    sizes: dict[str, int] = field(compare=False)

    @property
    def weight_name(self) -> str:
        return self.weight_op.attrs["name"]

    @property
    def batch(self) -> int:
        return math.prod(self.sizes[c] for c in self.batch_labels)

    @property
    def n_in(self) -> int:
        return math.prod(self.sizes[c] for c in self.contracted)

    @property
    def n_out(self) -> int:
        return math.prod(self.sizes[c] for c in self.free)

    @property
    def view(self) -> tuple:
        """Identifies the matrix `matrix()` returns: the weight, its axis order and how many axes are free."""
        w_term = EinsumSpec.parse(self.op.attrs["spec"]).inputs[self.op.operands.index(self.weight_op.result)]
        return self.weight_name, tuple(w_term.index(c) for c in self.free + self.contracted), len(self.free)

    def matrix(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        """W as an (n_out, n_in) matrix: free labels (output order) by contracted labels (x's order)."""
        _, order, _ = self.view
        return np.transpose(weights[self.weight_name], order).reshape(self.n_out, self.n_in)


def find_weight_use(program: Program, op: Op) -> WeightUse | None:
    """The weight use `op` is, or None when it is not a plain `x . W` contraction (see the module docstring)."""
    if op.opcode != "einsum" or len(op.operands) != 2 or op.operands[0] == op.operands[1]:
        return None
    spec = EinsumSpec.parse(op.attrs["spec"])
    defs = [program.defining_op(v) for v in op.operands]
    consts = [k for k, d in enumerate(defs) if d.opcode == "const"]
    if len(consts) != 1:
        return None
    w_pos = consts[0]
    x_term, w_term = spec.inputs[1 - w_pos], spec.inputs[w_pos]
    if len(set(x_term)) != len(x_term) or len(set(w_term)) != len(w_term):
        return None
    shared = set(x_term) & set(w_term)
    out = set(spec.output)
    batch = "".join(c for c in x_term if c not in shared)
    contracted = "".join(c for c in x_term if c in shared)
    free = "".join(c for c in spec.output if c in w_term)
    if (shared & out or set(batch) - out or set(w_term) - shared - out or not contracted or not free
            or not (op.type.dtype.is_float or op.type.dtype.is_complex)):
        return None
    sizes = spec.sizes([program.type_of(v).shape for v in op.operands])
    use = WeightUse(op, op.operands[1 - w_pos], defs[w_pos], batch, contracted, free, sizes)
    return use if use.n_in > 1 and use.n_out > 1 else None


class Namer:
    """Fresh value names `<base>.<k>` that clash neither with `program` nor with the names in `reserved`."""

    def __init__(self, program: Program, base: str, reserved: set[str]):
        self.program, self.base, self.reserved, self.count = program, base, reserved, 0

    def __call__(self) -> str:
        while True:
            name = f"{self.base}.{self.count}"
            self.count += 1
            if name not in self.reserved and not self._defined(name):
                return name

    def _defined(self, name: str) -> bool:
        try:
            self.program.defining_op(name)
        except IRError:
            return False
        return True


def reshape(program: Program, value: str, shape: tuple[int, ...], name: str) -> str:
    return program.append("reshape", (value,), type=TensorType(shape, program.type_of(value).dtype), name=name)


def chain_dtype(use: WeightUse, factorization: Factorization) -> dtypes.DType:
    """The dtype the chain computes in: W's, or its complex counterpart when W is a network's real part."""
    weight = use.weight_op.type.dtype
    return dtypes.result_type(weight, dtypes.complex64) if factorization.real_part else weight


def leaf_value(program: Program, use: WeightUse, factorization: Factorization, fresh: Namer) -> str:
    """x viewed as `(batch, *in_dims)`: a reshape, after a transpose when x is not laid out batch-first, and
    a cast to complex when the chain takes a real part at its end."""
    x_term = EinsumSpec.parse(use.op.attrs["spec"]).inputs[use.op.operands.index(use.x)]
    x = use.x
    if x_term != use.batch_labels + use.contracted:
        x = program.einsum(f"{x_term}->{use.batch_labels + use.contracted}", x, name=fresh())
    shape = (use.batch, *factorization.in_dims)
    x = x if program.type_of(x).shape == shape else reshape(program, x, shape, fresh())
    return program.append("cast", (x,), type=TensorType(shape, chain_dtype(use, factorization)),
                          name=fresh()) if factorization.real_part else x


def contract_constants(factorization: Factorization, positions: set[int], dtype: np.dtype) -> np.ndarray:
    """A merged factor: the contraction of the factors at `positions` (>= 1), done at compile time."""
    terms = factorization.terms
    spec = ",".join(terms[k] for k in sorted(positions)) + "->" + open_labels(terms, positions, factorization.output)
    arrays = [factorization.factors[k - 1] for k in sorted(positions)]
    return np.asarray(np.einsum(spec, *arrays, optimize=True)).astype(dtype)


Tree = int | tuple["Tree", "Tree"]


def tree_leaves(tree: Tree) -> set[int]:
    return {tree} if isinstance(tree, int) else tree_leaves(tree[0]) | tree_leaves(tree[1])


def insert_chain(program: Program, use: WeightUse, factorization: Factorization, tree: Tree,
                 attrs: dict[str, Any], reserved: set[str]) -> str:
    """Append to `program` the ops computing `use` through `factorization` contracted in the order `tree`
    (a binary tree over network positions, 0 = x); constant subtrees are merged at compile time. The last op
    takes `use.op`'s result name and gets `attrs`; new values avoid the names in `reserved`. Returns that name.
    A `real_part` chain ends with a cast of its complex result to W's dtype (numpy's astype: the real part)."""
    fresh = Namer(program, use.op.result, reserved)
    factor_type = chain_dtype(use, factorization)
    dtype = factor_type.numpy
    weight = use.weight_name
    consts: dict[frozenset[int], str] = {}

    def constant(positions: set[int]) -> str:
        key = frozenset(positions)
        if key not in consts:
            if len(positions) == 1:
                (k,) = positions
                array = np.asarray(factorization.factors[k - 1]).astype(dtype)
                name = f"{weight}.{factorization.structure}{k - 1}"
            else:
                array = contract_constants(factorization, positions, dtype)
                name = f"{weight}.{factorization.structure}" + "_".join(str(k - 1) for k in sorted(positions))
            base, n = name, 1
            while name in program.weights:
                name, n = f"{base}.{n}", n + 1
            program.weights[name] = array
            consts[key] = program.append("const", attrs={"name": name, "sha": weight_hash(array)},
                                         type=TensorType(array.shape, factor_type), name=fresh())
        return consts[key]

    out_term = EinsumSpec.parse(use.op.attrs["spec"]).output
    grouped = use.batch_labels + use.free
    shape = tuple(use.sizes[c] for c in grouped)
    is_grouped = out_term == grouped and shape == (use.batch, *factorization.out_dims)
    chain_is_last = is_grouped and not factorization.real_part
    everything = set(range(len(factorization.terms)))

    def emit(node: Tree) -> tuple[str, str]:
        positions = tree_leaves(node)
        if 0 not in positions:
            return constant(positions), open_labels(factorization.terms, positions, factorization.output)
        if node == 0:
            return leaf_value(program, use, factorization, fresh), factorization.terms[0]
        assert isinstance(node, tuple)
        (a, a_labels), (b, b_labels) = emit(node[0]), emit(node[1])
        if positions != everything:
            result = open_labels(factorization.terms, positions, factorization.output)
            return program.einsum(f"{a_labels},{b_labels}->{result}", a, b, name=fresh()), result
        spec = f"{a_labels},{b_labels}->{factorization.output}"
        if not chain_is_last:
            return program.einsum(spec, a, b, name=fresh()), factorization.output
        shapes = [program.type_of(a).shape, program.type_of(b).shape]
        normal = str(parse_subscripts(spec, shapes).spec)
        return program.append("einsum", (a, b), {"spec": normal, "factorization": attrs}, name=use.op.result), ""

    value, _ = emit(tree)
    if chain_is_last:
        return value
    if factorization.real_part:
        real = TensorType(program.type_of(value).shape, use.op.type.dtype)
        if is_grouped:
            return program.append("cast", (value,), {"factorization": attrs}, real, name=use.op.result)
        value = program.append("cast", (value,), type=real, name=fresh())
    if out_term == grouped:
        return program.append("reshape", (value,), {"factorization": attrs}, TensorType(shape, use.op.type.dtype),
                              name=use.op.result)
    value = reshape(program, value, shape, fresh())
    return program.append("einsum", (value,), {"spec": f"{grouped}->{out_term}", "factorization": attrs},
                          name=use.op.result)
