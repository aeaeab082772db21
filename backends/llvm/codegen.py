"""einfold IR -> one LLVM module: a kernel per op (an einsum with its fused epilogue is one kernel step),
and `einfold_entry(bufs, thread, threads)` calling them in order with a barrier between steps, so one call per
thread runs the whole program. Kernels read their buffers from the pointer table `bufs` (see memory.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llvmlite import ir

from einfold.ir import Op, Program
from einfold.loopnest import row_major_strides
from einfold.reference import literal_array

from . import elementwise as ew
from .loops import const, for_range, thread_range
from .memory import Chain, MemoryPlan
from .scalars import I32, I64, PTR, Scalar, Value, constant, load, scalar, store

VOID = ir.VoidType()
ENTRY_FUNCTION = ir.FunctionType(VOID, [PTR, I64, I64])  # every kernel and the entry: (bufs, thread, threads)
ENTRY = "einfold_entry"
ERROR_FLAG = "einfold_error"


class Kernel:
    """One generated function `void kernel(ptr bufs, i64 thread, i64 threads)` and its builder."""

    def __init__(self, module: ir.Module, name: str, error_flag: ir.GlobalVariable):
        self.function = ir.Function(module, ENTRY_FUNCTION, name)
        self.function.linkage = "internal"
        self.bufs, self.thread, self.threads = self.function.args
        self.b = ir.IRBuilder(self.function.append_basic_block("entry"))
        self.error_flag = error_flag

    def pointer(self, slot: int) -> ir.Value:
        """The buffer in `slot` (emit these before any loop so that they dominate every use)."""
        address = self.b.gep(self.bufs, [const(slot)], inbounds=True, source_etype=PTR)
        return self.b.load(address, typ=PTR, name=f"buf{slot}")

    def emitter(self, float_flags: tuple[str, ...] = ()) -> ew.Emitter:
        return ew.Emitter(self.b, self.error_flag, float_flags)

    def only_thread_zero(self) -> None:
        """Let only thread 0 run the rest of the kernel."""
        rest = self.b.append_basic_block("thread0")
        done = self.b.append_basic_block("skip")
        self.b.cbranch(self.b.icmp_signed("==", self.thread, const(0)), rest, done)
        self.b.position_at_end(done)
        self.b.ret_void()
        self.b.position_at_end(rest)

    def finish(self) -> ir.Function:
        self.b.ret_void()
        return self.function


@dataclass(frozen=True)
class Read:
    """A tensor read by an elementwise nest: its value name, slot, type, and stride per loop dimension."""

    name: str
    slot: int
    sc: Scalar
    strides: tuple[int, ...]


def broadcast_strides(shape: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a row-major `shape` read at the indices of `target` (numpy broadcasting: 0 where the
    dimension is missing or of size 1)."""
    strides = row_major_strides(shape)
    padded = (0,) * (len(target) - len(shape)) + tuple(s if n != 1 else 0 for s, n in zip(strides, shape))
    return padded


def collapse(shape: tuple[int, ...], strides: list[tuple[int, ...]]) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Merge adjacent loop dimensions wherever every tensor steps through them as through one dimension."""
    dims = [(n, [s[k] for s in strides]) for k, n in enumerate(shape) if n != 1]
    if not dims:
        return (), [() for _ in strides]
    merged = [dims[0]]
    for n, step in dims[1:]:
        outer_n, outer_step = merged[-1]
        if all(o == s * n for o, s in zip(outer_step, step)):
            merged[-1] = (outer_n * n, step)
        else:
            merged.append((n, step))
    new_shape = tuple(n for n, _ in merged)
    return new_shape, [tuple(step[t] for _, step in merged) for t in range(len(strides))]


class ModuleBuilder:
    """Builds the module for a program and its memory plan."""

    def __init__(self, program: Program, plan: MemoryPlan, chains: dict[str, Chain], options: dict[str, Any]):
        self.program = program
        self.plan = plan
        self.chains = chains
        self.options = options
        self.module = ir.Module(name=f"einfold.{program.name}")
        self.error_flag = ir.GlobalVariable(self.module, I32, ERROR_FLAG)
        self.error_flag.initializer = ir.Constant(I32, 0)
        self.steps: list[ir.Function] = []
        self.workspace_slot: int | None = None
        self.workspace_bytes = 0  # per thread, the largest any kernel needs (kernels run one after another)
        self.notes: list[str] = []  # how each einsum was lowered, for the stats

    def workspace(self, nbytes_per_thread: int) -> int:
        """The slot of the scratch buffer shared by all kernels (threads * the largest request)."""
        if self.workspace_slot is None:
            self.workspace_slot = self.plan.new_slot()
        self.workspace_bytes = max(self.workspace_bytes, nbytes_per_thread)
        return self.workspace_slot

    def kernel_prefix(self) -> str:
        return f"k{len(self.steps)}"

    def kernel(self, label: str) -> Kernel:
        return Kernel(self.module, f"k{len(self.steps)}.{label}", self.error_flag)

    def scalar_of(self, name: str) -> Scalar:
        return scalar(self.program.type_of(name).dtype, f"%{name}")

    # ----- the whole program -------------------------------------------------------------------------------
    def build(self) -> ir.Module:
        from .einsum import emit_einsum

        in_chain = {op.result for chain in self.chains.values() for op in chain.ops}
        for op in self.program.ops:
            if op.opcode in ("input", "const", "literal") or op.result in in_chain:
                continue
            if op.opcode == "einsum":
                emit_einsum(self, op, self.chains.get(op.result))
            elif op.opcode == "reshape":
                if self.plan.value_slot[op.result] != self.plan.value_slot[op.operands[0]]:
                    self.copy(op.operands[0], self.plan.value_slot[op.result])
            else:
                self.elementwise([op], op.type.shape)
        for name, slot in self.plan.copies:
            self.copy(name, slot)
        if self.workspace_slot is not None:
            self.plan.add_region(self.workspace_bytes * self.options["threads"], self.workspace_slot)
        self._entry()
        return self.module

    def _entry(self) -> None:
        barrier = self._barrier()
        entry = ir.Function(self.module, ENTRY_FUNCTION, ENTRY)
        b = ir.IRBuilder(entry.append_basic_block("entry"))
        bufs, thread, threads = entry.args
        for k, step in enumerate(self.steps):
            b.call(step, [bufs, thread, threads])
            if k + 1 < len(self.steps):
                b.call(barrier, [threads])
        b.ret_void()

    def _barrier(self) -> ir.Function:
        """A sense-reversing spin barrier on two globals (yielding the CPU after a while of spinning)."""
        module = self.module
        count = ir.GlobalVariable(module, I64, "einfold_barrier_count")
        generation = ir.GlobalVariable(module, I64, "einfold_barrier_generation")
        for variable in (count, generation):
            variable.initializer = ir.Constant(I64, 0)
            variable.linkage = "internal"
        pause = ir.Function(module, ir.FunctionType(VOID, []), "llvm.x86.sse2.pause")
        sched_yield = ir.Function(module, ir.FunctionType(I32, []), "sched_yield")
        function = ir.Function(module, ir.FunctionType(VOID, [I64]), "einfold_barrier")
        function.linkage = "internal"
        (threads,) = function.args
        b = ir.IRBuilder(function.append_basic_block("entry"))
        single = b.icmp_signed("<=", threads, const(1))
        with b.if_then(single):
            b.ret_void()
        seen = b.load_atomic(generation, "acquire", 8)
        arrived = b.atomic_rmw("add", count, const(1), "acq_rel")
        last = b.icmp_signed("==", arrived, b.sub(threads, const(1)))
        release = b.append_basic_block("release")
        wait = b.append_basic_block("wait")
        b.cbranch(last, release, wait)
        b.position_at_end(release)
        b.store_atomic(const(0), count, "monotonic", 8)
        b.store_atomic(b.add(seen, const(1)), generation, "release", 8)
        b.ret_void()
        b.position_at_end(wait)
        spin = b.append_basic_block("spin")
        b.branch(spin)
        b.position_at_end(spin)
        spins = b.phi(I64)
        spins.add_incoming(const(0), wait)
        current = b.load_atomic(generation, "acquire", 8)
        done = b.append_basic_block("done")
        again = b.append_basic_block("again")
        b.cbranch(b.icmp_signed("!=", current, seen), done, again)
        b.position_at_end(done)
        b.ret_void()
        b.position_at_end(again)
        b.call(pause, [])
        with b.if_then(b.icmp_signed(">", spins, const(4000))):
            b.call(sched_yield, [])
        spins.add_incoming(b.add(spins, const(1)), b.block)
        b.branch(spin)
        return function

    # ----- elementwise nests -------------------------------------------------------------------------------
    def leaf_values(self, names: list[str], shape: tuple[int, ...]) -> tuple[list[Read], dict[str, Value]]:
        """How an elementwise nest over `shape` reads each leaf: literals become constants, the rest loads."""
        reads, constants = [], {}
        for name in dict.fromkeys(names):
            op = self.program.defining_op(name)
            sc = self.scalar_of(name)
            if op.opcode == "literal":
                constants[name] = constant(sc, literal_array(op).item())
            else:
                reads.append(Read(name, self.plan.value_slot[name], sc, broadcast_strides(op.type.shape, shape)))
        return reads, constants

    def elementwise(self, ops: list[Op], shape: tuple[int, ...], anchor: str | None = None) -> None:
        """One kernel evaluating `ops` (an elementwise chain) at every index of `shape`, storing the last value."""
        defined = {op.result for op in ops}
        leaves = [v for op in ops for v in op.operands if v not in defined]
        scalars = {op.result: scalar(op.type.dtype, f"%{op.result}") for op in ops}
        for op in ops:
            ew.check(op, [self.scalar_of(v) for v in op.operands], scalars[op.result])
        reads, constants = self.leaf_values(leaves, shape)
        last = ops[-1]
        kernel = self.kernel(last.opcode if anchor is None else f"epilogue.{anchor}")

        def compute(e: ew.Emitter, loaded: dict[str, Value]) -> Value:
            env = {**constants, **loaded}
            for op in ops:
                operand_scalars = [self.scalar_of(v) for v in op.operands]
                env[op.result] = ew.apply(e, op, operand_scalars, scalars[op.result], [env[v] for v in op.operands])
            return env[last.result]

        out = Read(last.result, self.plan.value_slot[last.result], scalars[last.result],
                   row_major_strides(shape))
        self.nest(kernel, shape, reads, out, compute)

    def copy(self, name: str, slot: int) -> None:
        """Copy value `name` into the buffer of `slot` (an output that is an input, weight or repeated output)."""
        t = self.program.type_of(name)
        sc = self.scalar_of(name)
        kernel = self.kernel("copy")
        flat = (t.size,)
        self.nest(kernel, flat, [Read(name, self.plan.value_slot[name], sc, (1,))], Read(name, slot, sc, (1,)),
                  lambda e, loaded: loaded[name])

    def nest(self, kernel: Kernel, shape: tuple[int, ...], reads: list[Read], out: Read, compute: Any) -> None:
        """Loops over `shape` (dimensions merged where possible; the outer one split among threads); at each
        index load every read, compute, store to `out`."""
        new_shape, strides = collapse(shape, [r.strides for r in reads] + [out.strides])
        reads = [Read(r.name, r.slot, r.sc, s) for r, s in zip(reads, strides)]
        out = Read(out.name, out.slot, out.sc, strides[-1])
        b = kernel.b
        pointers = {r.slot: kernel.pointer(r.slot) for r in [*reads, out]}
        if math.prod(new_shape) == 0:
            self.steps.append(kernel.finish())
            return
        offsets = [const(0) for _ in [*reads, out]]
        tensors = [*reads, out]
        e = kernel.emitter()

        def level(depth: int, offsets: list[ir.Value]) -> None:
            if depth == len(new_shape):
                loaded = {r.name: load(b, pointers[r.slot], r.sc, off) for r, off in zip(reads, offsets)}
                store(b, compute(e, loaded), pointers[out.slot], out.sc, offsets[-1])
                return
            if depth == 0:
                lo, hi = thread_range(b, new_shape[0], kernel.thread, kernel.threads)
            else:
                lo, hi = const(0), const(new_shape[depth])
            with for_range(b, lo, hi, name=f"d{depth}") as index:
                inner = [b.add(off, b.mul(index, const(t.strides[depth]))) if t.strides[depth] else off
                         for t, off in zip(tensors, offsets)]
                level(depth + 1, inner)

        if not new_shape:
            kernel.only_thread_zero()
        level(0, offsets)
        self.steps.append(kernel.finish())
