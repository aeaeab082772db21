"""Contraction planning: split every n-ary einsum into binary einsums along an opt_einsum path.

    %r = einsum "ab,bc,cd->ad"(%x, %y, %z)  ->  %r.c0 = einsum "ab,bc->ac"(%x, %y); %r = einsum "ac,cd->ad"(%r.c0, %z)
A label summed inside one operand only is summed first ("abc,cd->ad" -> "abc->ac" then "ac,cd->ad"; a size-1
label is dropped by a free reshape), and a group of weight operands is contracted at compile time into one
const when that lowers the run-time FLOPs. The last op keeps the name %r and records the decisions in `plan`.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import opt_einsum

from einfold.errors import UnsupportedError
from einfold.ir import Op, Program, rebuild, weight_hash
from einfold.ops import TensorType
from einfold.passmanager import function_pass
from einfold.reference import evaluate_op, literal_array
from einfold.spec import EinsumSpec

# Operand counts up to which each opt_einsum path finder is used; greedy above, cotengra (if installed) for
# networks of more than COTENGRA_ABOVE operands.
OPTIMAL_UP_TO = 4
DP_UP_TO = 16
COTENGRA_ABOVE = 32
# Weight groups are searched exhaustively (all subsets of >= 2 weights) up to this many weight operands.
FOLD_SUBSETS_UP_TO = 4


@dataclass(frozen=True)
class Step:
    """One planned op over nodes (0..n-1 are the einsum's operands, each step appends one node):
    `einsum` of `inputs` giving `output` labels, or a free `reshape` that drops size-1 labels."""

    kind: str
    inputs: tuple[int, ...]
    spec: str

    @property
    def output(self) -> str:
        return self.spec.split("->")[1]


@dataclass(frozen=True)
class Plan:
    """Binary steps for one einsum network, the opt_einsum path they follow and their cost."""

    optimizer: str
    path: tuple[tuple[int, ...], ...]
    steps: tuple[Step, ...]
    flops: int
    largest_intermediate: int


def _ordered(labels: set[str], *terms: str) -> str:
    """The labels in order of first appearance in `terms`."""
    return "".join(label for label in dict.fromkeys("".join(terms)) if label in labels)


def _spec_flops(spec: str, sizes: dict[str, int]) -> int:
    return EinsumSpec.parse(spec).flops(sizes)


def choose_optimizer(n_operands: int, options: dict) -> str:
    """The path finder for an einsum of `n_operands` operands: `options['contraction_optimizer']` if given,
    else 'optimal' (<= 4 operands), 'dp' (<= 16), 'greedy', and 'cotengra' above 32 when it is installed."""
    chosen = options.get("contraction_optimizer")
    if chosen is not None:
        known = sorted(opt_einsum.paths._PATH_OPTIONS) + ["cotengra"]
        if chosen not in known:
            raise UnsupportedError(f"unknown contraction_optimizer {chosen!r}; use one of: {', '.join(known)}")
        return chosen
    if n_operands <= OPTIMAL_UP_TO:
        return "optimal"
    if n_operands <= DP_UP_TO:
        return "dp"
    return "cotengra" if n_operands > COTENGRA_ABOVE and _cotengra() is not None else "greedy"


def _cotengra() -> Any:
    try:
        import cotengra
    except ImportError:
        return None
    return cotengra


def _find_path(terms: list[str], output: str, sizes: dict[str, int], optimizer: str) -> list[tuple[int, ...]]:
    spec = ",".join(terms) + "->" + output
    shapes = [tuple(sizes[label] for label in term) for term in terms]
    if optimizer != "cotengra":
        path, _ = opt_einsum.contract_path(spec, *shapes, shapes=True, optimize=optimizer)
        return [tuple(int(i) for i in group) for group in path]
    cotengra = _cotengra()
    if cotengra is None:
        raise UnsupportedError("contraction_optimizer='cotengra' needs the cotengra package (pip install cotengra)")
    with warnings.catch_warnings():  # cotengra warns when its optional kahypar is missing
        warnings.simplefilter("ignore", UserWarning)
        finder = cotengra.HyperOptimizer(max_repeats=16, max_time=2.0, parallel=False, progbar=False)
        path, _ = opt_einsum.contract_path(spec, *shapes, shapes=True, optimize=finder)
    return [tuple(int(i) for i in group) for group in path]


def plan_network(terms: list[str], output: str, sizes: dict[str, int], optimizer: str) -> Plan:
    """Binary (and pre-reducing unary) steps computing `terms -> output` along the optimizer's path."""
    path = _find_path(terms, output, sizes, optimizer) if len(terms) > 2 else [tuple(range(len(terms)))]
    node_terms = list(terms)
    first_leaf = list(range(len(terms)))  # per node: the lowest operand position it contains
    live = list(range(len(terms)))
    steps: list[Step] = []

    def add(kind: str, inputs: tuple[int, ...], out: str) -> int:
        spec = ",".join(node_terms[i] for i in inputs) + "->" + out
        steps.append(Step(kind, inputs, spec))
        node_terms.append(out)
        first_leaf.append(min(first_leaf[i] for i in inputs))
        return len(node_terms) - 1

    for group in path:
        picked = sorted((live[i] for i in group), key=lambda node: first_leaf[node])
        for i in sorted(group, reverse=True):
            live.pop(i)
        needed_after = set(output).union(*(node_terms[i] for i in live))
        while picked:
            head, rest = picked[:2], picked[2:]
            needed = needed_after.union(*(node_terms[i] for i in rest))
            last = not live and not rest
            out = output if last else _ordered(needed, *(node_terms[i] for i in head))
            head = [_pre_reduce(i, head, out, node_terms, sizes, add) for i in head] if len(head) == 2 else head
            node = add("einsum", tuple(head), out)
            picked = [node] + rest if rest else []
        live.append(len(node_terms) - 1)
    flops = sum(_spec_flops(s.spec, sizes) for s in steps if s.kind == "einsum")
    largest = max(math.prod(sizes[label] for label in s.output) for s in steps)
    return Plan(optimizer if len(terms) > 2 else "binary", tuple(path), tuple(steps), flops, largest)


def _pre_reduce(node: int, pair: list[int], out: str, node_terms: list[str], sizes: dict[str, int], add: Any) -> int:
    """Sum the labels only `node` of a binary step has, first, when that lowers the FLOPs (or is a free reshape)."""
    term = node_terms[node]
    other = node_terms[pair[1] if pair[0] == node else pair[0]]
    local = set(term) - set(other) - set(out)
    if not local:
        return node
    reduced = _ordered(set(term) - local, term)
    if all(sizes[label] == 1 for label in local) and len(set(term)) == len(term):
        return add("reshape", (node,), reduced)
    binary_before = _spec_flops(f"{term},{other}->{out}", sizes)
    after = _spec_flops(f"{term}->{reduced}", sizes) + _spec_flops(f"{reduced},{other}->{out}", sizes)
    return add("einsum", (node,), reduced) if after < binary_before else node


@dataclass(frozen=True)
class Fold:
    """Weight operands (positions) contracted at compile time into one operand with labels `term`."""

    positions: tuple[int, ...]
    term: str
    plan: Plan


def best_fold(terms: list[str], output: str, sizes: dict[str, int], constant: list[int],
              optimizer: str) -> Fold | None:
    """The weight group whose compile-time contraction leaves the cheapest run-time plan (None if no group
    of >= 2 weights leaves a run-time operand). Ties go to the larger group."""
    if len(constant) > FOLD_SUBSETS_UP_TO:
        groups = [tuple(constant)]
    else:
        groups = [g for r in range(len(constant), 1, -1) for g in itertools.combinations(constant, r)]
    best: Fold | None = None
    for group in groups:
        if len(group) == len(terms):
            continue
        rest = [t for k, t in enumerate(terms) if k not in group]
        term = _ordered(set(output).union(*rest), *(terms[k] for k in group))
        plan = plan_network([*rest, term], output, sizes, optimizer)
        if best is None or plan.flops < best.plan.flops:
            best = Fold(group, term, plan)
    return best


class _Names:
    """Fresh value and weight names that do not clash with the program's."""

    def __init__(self, program: Program):
        self.values = {op.result for op in program.ops}
        self.weights = set(program.weights)

    def value(self, wanted: str) -> str:
        return self._fresh(wanted, self.values)

    def weight(self, wanted: str) -> str:
        return self._fresh(wanted, self.weights)

    @staticmethod
    def _fresh(wanted: str, taken: set[str]) -> str:
        name, k = wanted, 1
        while name in taken:
            name, k = f"{wanted}.{k}", k + 1
        taken.add(name)
        return name


def _needs_plan(op: Op) -> bool:
    if op.opcode != "einsum" or "plan" in op.attrs:
        return False
    spec = EinsumSpec.parse(op.attrs["spec"])
    if len(spec.inputs) > 2:
        return True
    if len(spec.inputs) == 2:
        a, b = spec.inputs
        return bool((set(a) ^ set(b)) - set(spec.output))
    return False


@function_pass("contraction-plan")
def contraction_plan(program: Program, options: dict) -> Program:
    """Split n-ary einsums into binary ones (opt_einsum paths), pre-reduce, fold weight groups when cheaper."""
    names = _Names(program)
    weights = dict(program.weights)
    defs = {op.result: op for op in program.ops}
    ops: list[Op] = []
    for op in program.ops:
        if _needs_plan(op):
            ops.extend(_plan_op(op, defs, weights, names, options))
        else:
            ops.append(op)
    planned = rebuild(program, _drop_unused_weights(ops, program), {})
    planned.weights = {k: v for k, v in weights.items() if k in {o.attrs["name"] for o in planned.consts}}
    return planned


def _drop_unused_weights(ops: list[Op], program: Program) -> list[Op]:
    """Remove consts that folding left without users (consts unused before the pass stay, as given)."""
    used_before = {v for op in program.ops for v in op.operands} | set(program.outputs)
    used_after = {v for op in ops for v in op.operands} | set(program.outputs)
    return [op for op in ops if not (op.opcode == "const" and op.result in used_before - used_after)]


def _plan_op(op: Op, defs: dict[str, Op], weights: dict[str, np.ndarray], names: _Names,
             options: dict) -> list[Op]:
    spec = EinsumSpec.parse(op.attrs["spec"])
    types = [defs[v].type for v in op.operands]
    sizes = spec.sizes([t.shape for t in types])
    terms, operands = list(spec.inputs), list(op.operands)
    optimizer = choose_optimizer(len(terms), options)
    plan = plan_network(terms, spec.output, sizes, optimizer)
    record: dict[str, Any] = {"from": str(spec), "flops_naive": spec.flops(sizes)}
    new_ops: list[Op] = []

    constant = [k for k, v in enumerate(operands) if defs[v].opcode in ("const", "literal")]
    fold = best_fold(terms, spec.output, sizes, constant, optimizer) if len(constant) >= 2 else None
    if fold is not None:
        folded_names = [_weight_label(defs[operands[k]]) for k in fold.positions]
        missing = [defs[operands[k]].attrs["name"] for k in fold.positions
                   if defs[operands[k]].opcode == "const" and defs[operands[k]].attrs["name"] not in weights]
        if fold.plan.flops >= plan.flops:
            record["fold_rejected"] = {"weights": folded_names, "flops_folded": fold.plan.flops}
        elif missing:
            record["fold_rejected"] = {"weights": folded_names, "flops_folded": fold.plan.flops,
                                       "reason": f"no data for weight(s) {', '.join(missing)}"}
        else:
            const_op = _fold_weights(op, fold, terms, operands, defs, weights, names)
            new_ops.append(const_op)
            record.update(folded_weights=folded_names, folded_spec=const_op.attrs["folded_spec"],
                          flops_unfolded=plan.flops)
            terms = [t for k, t in enumerate(terms) if k not in fold.positions] + [fold.term]
            operands = [v for k, v in enumerate(operands) if k not in fold.positions] + [const_op.result]
            plan = fold.plan
            record["planned"] = ",".join(terms) + "->" + spec.output
    record.update(optimizer=plan.optimizer, path=[list(group) for group in plan.path], flops=plan.flops,
                  largest_intermediate=plan.largest_intermediate)
    return new_ops + _materialise(op, plan, operands, sizes, names, record)


def _weight_label(op: Op) -> str:
    return op.attrs["name"] if op.opcode == "const" else f"literal {op.attrs['value']}"


def _fold_weights(op: Op, fold: Fold, terms: list[str], operands: list[str], defs: dict[str, Op],
                  weights: dict[str, np.ndarray], names: _Names) -> Op:
    """Evaluate the weight group's einsum now and return the const op holding the result."""
    group_ops = [defs[operands[k]] for k in fold.positions]
    group_spec = ",".join(terms[k] for k in fold.positions) + "->" + fold.term
    sizes = EinsumSpec.parse(group_spec).sizes([o.type.shape for o in group_ops])
    result_type = TensorType(tuple(sizes[label] for label in fold.term), op.type.dtype)
    args = [literal_array(o) if o.opcode == "literal" else weights[o.attrs["name"]] for o in group_ops]
    group = Op("einsum", op.result, result_type, tuple(o.result for o in group_ops), {"spec": group_spec})
    data = np.ascontiguousarray(evaluate_op(group, args, weights))
    weight = names.weight(f"folded_{op.result}")
    weights[weight] = data
    return Op("const", names.value(f"{op.result}.w"), result_type, (),
              {"name": weight, "sha": weight_hash(data), "folded": "einsum", "folded_spec": group_spec})


def _materialise(op: Op, plan: Plan, operands: list[str], sizes: dict[str, int], names: _Names,
                 record: dict[str, Any]) -> list[Op]:
    """The plan's steps as ops: intermediates %<r>.c0, %<r>.c1, ...; the last keeps %<r> and carries the plan."""
    values = list(operands)
    ops: list[Op] = []
    for k, step in enumerate(plan.steps):
        last = k == len(plan.steps) - 1
        shape = tuple(sizes[label] for label in step.output)
        result_type = op.type if last else TensorType(shape, op.type.dtype)
        result = op.result if last else names.value(f"{op.result}.c{k}")
        inputs = tuple(values[i] for i in step.inputs)
        attrs: dict[str, Any] = {"spec": step.spec} if step.kind == "einsum" else {}
        if last:
            attrs["plan"] = record
        ops.append(Op(step.kind, result, result_type, inputs, attrs))
        values.append(result)
    return ops
