"""The `factorize` pass: for every `x . W` einsum with a constant W, put dense W and every factorization that
passed its tolerance into one egglog e-graph, saturate exact rewrites (associativity of contraction and, for
Kronecker factors, the mixed-product exchange `(x.B).A = (x.A).B`), and extract the cheapest program under a
per-target cost model; `'Zi,oi->Zo'` may become e.g. `'Zkp,kqp->Zkq'` then `'Zkq,qsk->Zsq'` (Monarch).

A term is a binary contraction tree over a network's leaves (x's view and the factors); a subtree without x is
merged at compile time, so "pre-merged" forms (radix-4 butterflies, the four-step FFT, W itself) are just other
trees in the same e-class. Costs: see `TargetCosts`; extraction counts a shared subterm once (DAG cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from egglog import (
    EGraph,
    Expr,
    birewrite,
    get_callable_args,
    get_callable_fn,
    get_literal_value,
    i64Like,
    relation,
    rewrite,
    ruleset,
    union,
    vars_,
)

from einfold.errors import UnsupportedError
from einfold.ir import Program
from einfold.passmanager import function_pass
from einfold.spec import EinsumSpec

from . import block_diag, butterfly, kronecker, low_rank, monarch
from .structure import STRUCTURES, Factorization, Tree, WeightUse, find_weight_use, insert_chain, open_labels

PROJECTIONS = {"low_rank": low_rank.project, "kronecker": kronecker.project, "block_diag": block_diag.project,
               "monarch": monarch.project, "butterfly": butterfly.project}
GPU_TARGETS = ("cuda", "ptx", "tpu")  # `ckks` has its own costs; every other target is priced as a CPU
MAX_SATURATION_ITERATIONS = 60


@dataclass(frozen=True)
class TargetCosts:
    """Seconds per FLOP, per byte moved and per kernel (one einsum = one kernel). For CKKS the unit is a
    key-switching rotation: a kernel costs `per_level` (it consumes one multiplicative level) plus the
    baby-step giant-step rotations of its matrix, 2 sqrt(contracted + produced)."""

    kind: str
    per_flop: float = 0.0
    per_byte: float = 0.0
    per_kernel: float = 0.0
    per_level: float = 0.0

    def kernel(self, flops: float, moved_bytes: float, contracted: int, produced: int) -> float:
        if self.kind == "ckks":
            return self.per_level + 2.0 * math.sqrt(contracted + produced)
        return flops * self.per_flop + moved_bytes * self.per_byte + self.per_kernel


COSTS = {
    "cpu": TargetCosts("cpu", per_flop=1 / 2e10, per_byte=1 / 1e10, per_kernel=2e-5),
    "gpu": TargetCosts("gpu", per_flop=1 / 3e13, per_byte=1 / 2e12, per_kernel=5e-6),
    "ckks": TargetCosts("ckks", per_level=200.0),
}


def target_costs(target: str) -> TargetCosts:
    if target == "ckks":
        return COSTS["ckks"]
    return COSTS["gpu"] if target in GPU_TARGETS else COSTS["cpu"]


# ----- the e-graph language -----------------------------------------------------------------------------------
class Net(Expr):
    """A tensor network term: a leaf (x's view or a factor, by id) or the contraction of two terms."""

    def __init__(self, leaf: i64Like) -> None: ...

    def __mul__(self, other: Net) -> Net: ...

    def join(self, other: Net) -> Net: ...


commute = relation("commute", Net, Net)
_a, _b, _c = vars_("a b c", Net)
REWRITES = ruleset(
    birewrite((_a * _b) * _c).to(_a * (_b * _c)),  # associativity of contraction
    rewrite((_a * _b) * _c).to((_a * _c) * _b, commute(_b, _c)),  # factors on disjoint axes exchange
)


@dataclass(frozen=True)
class Leaf:
    """What a leaf id stands for: x (with its use's batch and transpose cost) or factor `position` of a network."""

    network: tuple | None  # key of the Factorization the factor belongs to; None for x
    position: int
    batch: int = 1
    cost: float = 0.0


@dataclass(frozen=True, eq=False)
class Cost:
    """A DAG cost: `parts` maps each distinct e-node in the term to its own cost, so sharing counts once."""

    parts: dict[tuple, float] = field(default_factory=dict)
    leaves: frozenset[int] = frozenset()
    literal: int | None = None

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def __post_init__(self) -> None:
        # Total first; the rest only breaks ties, so that the order is total and agrees with equality.
        literal = -1 if self.literal is None else self.literal
        key = (self.total, tuple(sorted(self.leaves)), literal, tuple(sorted(self.parts.items())))
        object.__setattr__(self, "key", key)

    def _key(self) -> tuple:
        return self.key  # type: ignore[attr-defined]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cost) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __lt__(self, other: Cost) -> bool:
        return self._key() < other._key()

    def __le__(self, other: Cost) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: Cost) -> bool:
        return self._key() > other._key()

    def __ge__(self, other: Cost) -> bool:
        return self._key() >= other._key()


class CostModel:
    """egglog cost model: contraction cost from the labels of the two sides, compile-time merges free."""

    def __init__(self, leaves: list[Leaf], networks: dict[tuple, Factorization], costs: TargetCosts,
                 itemsize: dict[tuple, tuple[int, bool]], only: tuple | None = None):
        self.leaves, self.networks, self.costs, self.itemsize = leaves, networks, costs, itemsize
        # When set: price one alternative alone, leaves of other networks and merging all factors back into
        # one matrix (which is W again) priced out.
        self.only = only
        self._cache: dict[tuple, float] = {}

    def __call__(self, egraph: EGraph, expr: Any, children: list[Cost]) -> Cost:
        fn = get_callable_fn(expr)
        if fn is None:
            return Cost(literal=int(get_literal_value(expr)))
        if fn == Net:
            leaf_id = children[0].literal
            leaf = self.leaves[leaf_id]
            excluded = self.only is not None and leaf.network not in (None, self.only)
            return Cost({((leaf_id,), ()): math.inf if excluded else leaf.cost}, frozenset([leaf_id]))
        parts: dict[tuple, float] = {}
        for child in children:
            parts.update(child.parts)
        if fn == Net.join:
            return Cost(parts)
        left, right = children
        # An e-node is identified by its two children's leaf sets (an e-class here is one set of leaves).
        key = (tuple(sorted(left.leaves)), tuple(sorted(right.leaves)))
        if key not in self._cache:
            self._cache[key] = self.contraction(left.leaves, right.leaves)
        parts[key] = self._cache[key]
        return Cost(parts, left.leaves | right.leaves)

    def contraction(self, left: frozenset[int], right: frozenset[int]) -> float:
        both = left | right
        network = next(self.leaves[i].network for i in both if self.leaves[i].network is not None)
        has_x = [i for i in both if self.leaves[i].network is None]
        if not has_x:
            return 0.0  # a constant subtree: merged at compile time
        factorization = self.networks[network]
        x_side = left if has_x[0] in left else right
        if self.only is not None and len(factorization.terms) > 2 and len(x_side) == 1 and len(both) == len(
                factorization.terms):
            return math.inf
        sizes = factorization.sizes(self.leaves[has_x[0]].batch)
        terms, output = factorization.terms, factorization.output
        a = open_labels(terms, {self.leaves[i].position for i in left}, output)
        b = open_labels(terms, {self.leaves[i].position for i in right}, output)
        result = open_labels(terms, {self.leaves[i].position for i in both}, output)
        union_labels = set(a) | set(b)
        volume = math.prod(sizes[c] for c in union_labels)
        summed = union_labels - set(result)
        itemsize, is_complex = self.itemsize[network]
        flops = volume * (2 if summed else 1) * (4 if is_complex else 1)
        moved = sum(math.prod(sizes[c] for c in t) for t in (a, b, result)) * itemsize
        activation = a if any(self.leaves[i].network is None for i in left) else b
        contracted = math.prod(sizes[c] for c in summed)
        produced = math.prod(sizes[c] for c in set(result) - set(activation))
        cost = self.costs.kernel(flops, moved, contracted, produced)
        if factorization.real_part:  # a cast kernel to complex before x's first contraction, one back after the last
            batch, real_and_complex = self.leaves[has_x[0]].batch, itemsize * 3 // 2
            if len(x_side) == 1:
                cost += self.costs.kernel(0, batch * factorization.n_in * real_and_complex, 1, 1)
            if len(both) == len(factorization.terms):
                cost += self.costs.kernel(0, batch * factorization.n_out * real_and_complex, 1, 1)
        return cost


# ----- the pass --------------------------------------------------------------------------------------------
def structures_from(options: dict) -> tuple[str, ...]:
    """The structures to try, from `options['factorize']` ('auto', 'none' or a list of names)."""
    chosen = options.get("factorize", "auto")
    if chosen in (None, "none", False):
        return ()
    if chosen == "auto":
        return tuple(PROJECTIONS)
    names = [chosen] if isinstance(chosen, str) else list(chosen)
    unknown = [n for n in names if n not in PROJECTIONS and n != "dense"]
    if unknown:
        raise UnsupportedError(f"factorize: unknown structure(s) {unknown}; choose from 'auto', 'none' or "
                               f"{list(STRUCTURES[1:])}")
    return tuple(n for n in names if n != "dense")


def tolerance_from(options: dict) -> float:
    tol = options.get("tol", 1e-6)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
        raise UnsupportedError(f"factorize: tol must be a number in [0, 1), got {tol!r}")
    return float(tol)


def dense_network(matrix: np.ndarray) -> Factorization:
    n_out, n_in = matrix.shape
    return Factorization("dense", (n_in,), (n_out,), "i", "o", ("oi",), (matrix,))


def candidates(matrix: np.ndarray, structures: tuple[str, ...], tol: float) -> list[Factorization]:
    """Dense W and every factorization of it within `tol` (non-finite weights get none)."""
    found = [dense_network(matrix)]
    if not np.all(np.isfinite(matrix)):
        return found
    for name in structures:
        result = PROJECTIONS[name](matrix, tol)
        if result is not None and result.rel_error <= tol:
            found.append(result)
    return found


@dataclass
class Plan:
    """What the e-graph decided for one weight use."""

    use: WeightUse
    network: Factorization
    tree: Tree
    alternatives: dict[str, float]


def _transpose_cost(use: WeightUse, program: Program, costs: TargetCosts) -> float:
    """The cost of laying x out batch-first (a copy kernel), when its indices are not already in that order."""
    x_term = EinsumSpec.parse(use.op.attrs["spec"]).inputs[use.op.operands.index(use.x)]
    if x_term == use.batch_labels + use.contracted:
        return 0.0
    t = program.type_of(use.x)
    return costs.kernel(0, 2 * t.nbytes, 1, 1)


def plan(program: Program, uses: list[WeightUse], networks_by_use: list[list[Factorization]],
         costs: TargetCosts) -> tuple[list[Plan], float]:
    """Build the e-graph of all alternatives of all uses, saturate, extract: one Plan per use, and the
    cost of the whole extracted program (shared subterms counted once)."""
    leaves: list[Leaf] = []
    leaf_ids: dict[tuple, int] = {}
    networks: dict[tuple, Factorization] = {}
    itemsize: dict[tuple, tuple[int, bool]] = {}
    egraph = EGraph()
    roots: list[Net] = []
    per_candidate: list[list[tuple[Factorization, tuple, Net]]] = []

    def leaf(key: tuple, info: Leaf) -> Net:
        if key not in leaf_ids:
            leaf_ids[key] = len(leaves)
            leaves.append(info)
        return Net(leaf_ids[key])

    for use, options in zip(uses, networks_by_use):
        x_key = ("x", use.x, use.batch_labels, use.contracted)
        x_leaf = leaf(x_key, Leaf(None, 0, use.batch, _transpose_cost(use, program, costs)))
        alternatives = []
        for network in options:
            key = (*use.view, network.structure)
            networks[key] = network
            complex_chain = use.op.type.dtype.is_complex or network.real_part
            itemsize[key] = (use.op.type.dtype.itemsize * (2 if network.real_part else 1), complex_chain)
            factor_leaves = [leaf((*key, k), Leaf(key, k)) for k in range(1, len(network.terms))]
            term = x_leaf
            for factor in factor_leaves:
                term = term * factor
            if network.commuting:
                for i, f in enumerate(factor_leaves):
                    for g in factor_leaves[i + 1:]:
                        egraph.register(commute(f, g), commute(g, f))
            egraph.register(term)
            alternatives.append((network, key, term))
        for _, _, term in alternatives[1:]:
            egraph.register(union(alternatives[0][2]).with_(term))
        roots.append(alternatives[0][2])
        per_candidate.append(alternatives)
    egraph.run(REWRITES * MAX_SATURATION_ITERATIONS)
    root = roots[0]
    for other in roots[1:]:
        root = root.join(other)
    model = CostModel(leaves, networks, costs, itemsize)
    chosen, total = egraph.extract(root, include_cost=True, cost_model=model)
    chosen_terms = _split_join(chosen, len(roots))
    plans = []
    for use, alternatives, term in zip(uses, per_candidate, chosen_terms):
        tree, leaf_set = _tree(term, leaves)
        network_key = next(leaves[i].network for i in leaf_set if leaves[i].network is not None)
        if isinstance(tree, tuple) and 0 in tree and len(leaf_set) > 2:
            network_key = alternatives[0][1]  # every factor merged back into one matrix: that is W itself
            tree = (0, 1)
        prices = {}
        for network, key, candidate in alternatives:
            only = CostModel(leaves, networks, costs, itemsize, only=key)
            _, cost = egraph.extract(candidate, include_cost=True, cost_model=only)
            prices[network.structure] = cost.total
        plans.append(Plan(use, networks[network_key], tree, prices))
    return plans, total.total


def _split_join(term: Any, count: int) -> list[Any]:
    """The per-use terms of the extracted `u0.join(u1).join(u2)...`."""
    parts = []
    for _ in range(count - 1):
        term, last = get_callable_args(term)
        parts.append(last)
    parts.append(term)
    return parts[::-1]


def _tree(term: Any, leaves: list[Leaf]) -> tuple[Tree, set[int]]:
    """The contraction tree (over network positions) of an extracted term, and its leaf ids."""
    args = get_callable_args(term)
    if get_callable_fn(term) == Net:
        leaf_id = int(get_literal_value(args[0]))
        return leaves[leaf_id].position, {leaf_id}
    (left, left_ids), (right, right_ids) = _tree(args[0], leaves), _tree(args[1], leaves)
    return (left, right), left_ids | right_ids


def _record(plan: Plan, program: Program, new_ops_flops: int, new_params: int) -> dict[str, Any]:
    """The `factorization` attribute of a use's last op."""
    use = plan.use
    return {"weight": use.weight_name, "chosen": plan.network.structure,
            "rel_error": float(plan.network.rel_error), "params_dense": use.n_in * use.n_out,
            "params": new_params, "flops_dense": program.op_flops(use.op), "flops": new_ops_flops,
            "alternatives": {k: float(v) for k, v in plan.alternatives.items()},
            **({"info": plan.network.params_info} if plan.network.params_info else {})}


@function_pass("factorize")
def factorize(program: Program, options: dict) -> Program:
    """Replace weight contractions by cheaper factored chains where a structure fits within `tol`."""
    structures = structures_from(options)
    tol = tolerance_from(options)
    if options.get("factorize", "auto") in (None, "none", False):
        return program
    uses = [u for u in (find_weight_use(program, op) for op in program.ops) if u is not None]
    if not uses:
        return program
    found: dict[tuple, list[Factorization]] = {}
    networks_by_use = []
    for use in uses:
        if use.view not in found:
            wide = use.op.type.dtype.itemsize >= 4  # factors rounded to f16/bf16 would add error beyond tol
            found[use.view] = candidates(use.matrix(program.weights), structures if wide else (), tol)
        networks_by_use.append(found[use.view])
    plans, _ = plan(program, uses, networks_by_use, target_costs(options.get("target", "numpy")))
    return _rewrite(program, {p.use.op.result: p for p in plans})


def _rewrite(program: Program, plans: dict[str, Plan]) -> Program:
    """The program with each planned use replaced by its chain (or annotated, when dense stays)."""
    new = Program(program.name)
    new.weights = dict(program.weights)
    reserved = {op.result for op in program.ops}
    for op in program.ops:
        chosen = plans.get(op.result)
        if chosen is None:
            new.add_op(op)
            continue
        if chosen.network.structure == "dense":
            record = _record(chosen, program, program.op_flops(op), chosen.use.n_in * chosen.use.n_out)
            new.add_op(op.with_attrs(factorization=record))
            continue
        start = len(new.ops)
        placeholder = {"weight": chosen.use.weight_name}
        insert_chain(new, chosen.use, chosen.network, chosen.tree, placeholder, reserved)
        added = new.ops[start:]
        record = _record(chosen, program, sum(new.op_flops(o) for o in added),
                         sum(o.type.size for o in added if o.opcode == "const"))
        new.ops[-1] = added[-1].with_attrs(factorization=record)  # same type; `copy` below re-indexes
    new.set_outputs(*program.outputs)
    users = new.users()
    replaced = {p.use.weight_op.result for p in plans.values() if p.network.structure != "dense"}
    kept = [op for op in new.ops if op.result not in replaced or users[op.result] or op.result in new.outputs]
    return new.copy(kept)
