"""Einsum kernels: GEMM-shaped float contractions go to the blocked micro-kernel (gemm.py); every other einsum
becomes a loop nest over its labels. out[o] = sum_s prod_t in_t[o, s]: either the reduction is innermost with a
register accumulator (the fused epilogue is applied right at the store), or, when the innermost output label is
the unit-stride one, the reduction is hoisted above it: out[..., j] += prod_t in_t[..., s, j] with j innermost;
a one-operand reduction follows the operand's memory order: "ijk->j" runs i, j, k with out[j] += sum_k x[i, j, k]."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llvmlite import ir

from einfold import dtypes as dt
from einfold.ir import Op
from einfold.loopnest import GemmView, LoopNest
from einfold.spec import EinsumSpec

from . import elementwise as ew
from .loops import const, for_range, thread_range
from .memory import Chain
from .scalars import Scalar, Value, convert, load, scalar, store, zero

if TYPE_CHECKING:
    from .codegen import ModuleBuilder

REASSOCIATE = ("reassoc", "contract")


def accumulator(sc: Scalar) -> Scalar:
    """The type sums run in: f32 for f16/bf16 (as the reference), the dtype itself otherwise."""
    return scalar(dt.float32) if sc.dtype.name in ("f16", "bf16") else sc


def emit_einsum(mb: ModuleBuilder, op: Op, chain: Chain | None) -> None:
    spec = EinsumSpec.parse(op.attrs["spec"])
    shapes = [mb.program.type_of(v).shape for v in op.operands]
    sc = mb.scalar_of(op.result)
    from .gemm import gemm_plan
    if len(op.operands) == 2:
        plan = gemm_plan(GemmView.of(spec, shapes), sc)
        if plan is not None:
            from .gemm import emit_gemm
            mb.notes.append(f"%{op.result}: gemm {emit_gemm(mb, op, spec, shapes, plan)}")
            if chain is not None:
                mb.elementwise(list(chain.ops), op.type.shape, anchor=op.result)
            return
    emit_loop_nest(mb, op, spec, shapes, chain)


@dataclass(frozen=True)
class LoopOrder:
    """Loops in nesting order; loops from `register_depth` on sum into a register, added into (`accumulate`) or
    stored to the output after them; `parallel` is the output label whose range the threads split (or None)."""

    order: tuple[str, ...]
    register_depth: int
    accumulate: bool
    parallel: str | None


def choose_order(nest: LoopNest, may_accumulate: bool) -> LoopOrder:
    """Loop order, where the register sum starts and which loop the threads split.

    The innermost loop should be the label with unit stride in the most tensors (the vectorised one).
    Output labels stay outer in output order; summed labels go inside, the best-scoring one innermost; the
    reduction is hoisted above the innermost output label when that one has unit stride in more tensors. A
    reduction of one operand instead runs in that operand's memory order when it differs (see `_memory_order`).
    """
    spec = nest.spec
    tensors = [*nest.operand_strides, nest.output_strides]
    sizes = nest.sizes

    def score(label: str) -> tuple[int, int]:
        return sum(1 for t in tensors if t.get(label) == 1 and sizes[label] > 1), sizes[label]

    summed = sorted(spec.summed, key=lambda label: (score(label), -spec.summed.index(label)))
    output = list(spec.output)
    first_parallel = output[0] if output else None
    if summed and output and may_accumulate:
        streamed = _memory_order(nest)
        if streamed is not None:
            return streamed
        inner = output[-1]
        best_summed = summed[-1]
        if score(inner)[0] > score(best_summed)[0] and nest.output_strides.get(inner) == 1 and sizes[inner] > 1:
            order = (*output[:-1], *summed, inner)
            return LoopOrder(order, len(order), True, first_parallel if len(output) > 1 else None)
    return LoopOrder((*output, *summed), len(output), False, first_parallel)


def _memory_order(nest: LoopNest) -> LoopOrder | None:
    """For a one-operand reduction: loops in the operand's memory order (largest stride outermost), the trailing
    summed loops in a register, the rest accumulated into the zero-filled output. Used when it differs from the
    output-first order and the first output label comes first among the output labels (the threads split it)."""
    spec = nest.spec
    if len(spec.inputs) != 1 or len(set(spec.inputs[0])) != len(spec.inputs[0]):
        return None
    strides = nest.operand_strides[0]
    order = tuple(sorted(spec.inputs[0], key=lambda label: -strides[label]))
    outputs_in_order = [label for label in order if label in spec.output]
    if outputs_in_order[0] != spec.output[0] or order[:len(spec.output)] == tuple(spec.output):
        return None
    register_depth = len(order)
    while register_depth > 0 and order[register_depth - 1] in spec.summed:
        register_depth -= 1
    return LoopOrder(order, register_depth, True, spec.output[0])


def emit_loop_nest(mb: ModuleBuilder, op: Op, spec: EinsumSpec, shapes: list[tuple[int, ...]],
                   chain: Chain | None) -> None:
    nest = LoopNest.of(spec, shapes)
    sc = mb.scalar_of(op.result)
    acc_sc = accumulator(sc)
    loops = choose_order(nest, may_accumulate=acc_sc == sc)
    order, accumulate, parallel = loops.order, loops.accumulate, loops.parallel
    in_scalars = [mb.scalar_of(v) for v in op.operands]
    kernel = mb.kernel("einsum")
    b = kernel.b
    in_pointers = [kernel.pointer(mb.plan.value_slot[v]) for v in op.operands]
    out_slot = mb.plan.value_slot[op.result]
    out_pointer = kernel.pointer(out_slot)
    e = kernel.emitter(REASSOCIATE)
    sizes = nest.sizes
    fuse_inline = chain is not None and not accumulate
    mb.notes.append(f"%{op.result}: loop nest {''.join(order)}{' (summed into the output)' if accumulate else ''}"
                    f"{' + fused epilogue' if fuse_inline else ''}")

    # Epilogue leaves: read at the output index, broadcast like numpy.
    epilogue_reads, epilogue_constants, epilogue_out = [], {}, None
    if fuse_inline:
        defined = {c.result for c in chain.ops}
        leaves = [v for c in chain.ops for v in c.operands if v not in defined and v != op.result]
        epilogue_reads, epilogue_constants = mb.leaf_values(leaves, op.type.shape)
        last = chain.last
        epilogue_out = (kernel.pointer(mb.plan.value_slot[last.result]), mb.scalar_of(last.result))
    epilogue_pointers = [kernel.pointer(r.slot) for r in epilogue_reads]
    epilogue_strides = [dict(zip(spec.output, r.strides)) for r in epilogue_reads]

    strides = [*nest.operand_strides, nest.output_strides, *epilogue_strides]
    n_inputs = len(op.operands)
    if math.prod(sizes[label] for label in spec.output) == 0:
        mb.steps.append(kernel.finish())
        return

    if parallel is None:
        kernel.only_thread_zero()

    # Accumulating with no summed loop inside the innermost output loop: out[...] += term, no register sum.
    direct = accumulate and loops.register_depth == len(order)
    accumulator_cell = None if direct else [b.alloca(acc_sc.compute) for _ in range(acc_sc.lanes)]
    if accumulate and parallel is None:
        _zero_fill(b, out_pointer, sc, const(0), const(op.type.size))
    elif accumulate:
        lo, hi = thread_range(b, sizes[parallel], kernel.thread, kernel.threads)
        step = const(nest.output_strides[parallel])
        _zero_fill(b, out_pointer, sc, b.mul(lo, step), b.mul(hi, step))

    def product(offsets: list[ir.Value]) -> Value:
        values = [convert(b, load(b, p, s, off), s, acc_sc) if s != acc_sc else load(b, p, s, off)
                  for p, s, off in zip(in_pointers, in_scalars, offsets)]
        result = values[0]
        for value in values[1:]:
            result = ew.mul(e, acc_sc, result, value)
        return result

    def read_cell() -> Value:
        values = [b.load(cell, typ=acc_sc.compute) for cell in accumulator_cell]
        return tuple(values) if acc_sc.lanes == 2 else values[0]

    def write_cell(value: Value) -> None:
        for cell, part in zip(accumulator_cell, value if acc_sc.lanes == 2 else (value,)):
            b.store(part, cell)

    def level(depth: int, offsets: list[ir.Value]) -> None:
        if depth == loops.register_depth and not direct:
            write_cell(zero(acc_sc))
        if depth == len(order):
            term = product(offsets[:n_inputs])
            if direct:
                current = _load_acc(b, out_pointer, sc, acc_sc, offsets[n_inputs])
                _store_acc(b, ew.add(e, acc_sc, current, term), out_pointer, sc, acc_sc, offsets[n_inputs])
            else:
                write_cell(ew.add(e, acc_sc, read_cell(), term))
            return
        label = order[depth]
        if label == parallel:
            lo, hi = thread_range(b, sizes[label], kernel.thread, kernel.threads)
        else:
            lo, hi = const(0), const(sizes[label])
        with for_range(b, lo, hi, name=label) as index:
            inner = [b.add(off, b.mul(index, const(s[label]))) if s.get(label) else off
                     for s, off in zip(strides, offsets)]
            level(depth + 1, inner)
            if depth == loops.register_depth - 1 and not direct:
                finish(inner)

    def finish(offsets: list[ir.Value]) -> None:
        """After the register sum: add it into the output, or apply the epilogue and store."""
        total = read_cell()
        if accumulate:
            total = ew.add(e, acc_sc, _load_acc(b, out_pointer, sc, acc_sc, offsets[n_inputs]), total)
        if not fuse_inline:
            _store_acc(b, total, out_pointer, sc, acc_sc, offsets[n_inputs])
            return
        value = convert(b, total, acc_sc, sc) if acc_sc != sc else total
        env = {**epilogue_constants, op.result: value}
        for r, pointer, off in zip(epilogue_reads, epilogue_pointers, offsets[n_inputs + 1:]):
            env[r.name] = load(b, pointer, r.sc, off)
        for c in chain.ops:
            operand_scalars = [mb.scalar_of(v) for v in c.operands]
            env[c.result] = ew.apply(e, c, operand_scalars, mb.scalar_of(c.result), [env[v] for v in c.operands])
        pointer, out_sc = epilogue_out
        store(b, env[chain.last.result], pointer, out_sc, offsets[n_inputs])

    start = [const(0) for _ in strides]
    if not spec.output:
        # A scalar result: the whole nest is the reduction.
        level(0, start)
        finish(start)
    else:
        level(0, start)
    mb.steps.append(kernel.finish())
    if chain is not None and not fuse_inline:
        mb.elementwise(list(chain.ops), op.type.shape, anchor=op.result)


def _load_acc(b: ir.IRBuilder, pointer: ir.Value, sc: Scalar, acc_sc: Scalar, offset: ir.Value) -> Value:
    value = load(b, pointer, sc, offset)
    return convert(b, value, sc, acc_sc) if acc_sc != sc else value


def _store_acc(b: ir.IRBuilder, value: Value, pointer: ir.Value, sc: Scalar, acc_sc: Scalar,
               offset: ir.Value) -> None:
    store(b, convert(b, value, acc_sc, sc) if acc_sc != sc else value, pointer, sc, offset)


def _zero_fill(b: ir.IRBuilder, pointer: ir.Value, sc: Scalar, lo: ir.Value, hi: ir.Value) -> None:
    with for_range(b, lo, hi, name="zero") as index:
        store(b, zero(sc), pointer, sc, index)


