"""einfold IR -> one LLVM module: a kernel per op (an einsum with its fused epilogue is one kernel step),
and `einfold_entry(bufs, thread, threads)` calling them in order with a barrier between steps, so one call per
thread runs the whole program. Kernels read their buffers from the pointer table `bufs` (see memory.py). Also the
dispatch module all programs share: the native worker loop that runs `einfold_entry` on the pool's threads."""

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
ENTRY = "einfold_entry"
ERROR_FLAG = "einfold_error"


class Kernel:
    """One generated function `void kernel(ptr bufs, i64 thread, i64 threads)` and its builder."""

    def __init__(self, module: ir.Module, name: str, error_flag: ir.GlobalVariable):
        self.function = ir.Function(module, ir.FunctionType(VOID, [PTR, I64, I64]), name)
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
        barrier = barrier_function(self.module)
        entry = ir.Function(self.module, ENTRY_FUNCTION, ENTRY)
        b = ir.IRBuilder(entry.append_basic_block("entry"))
        bufs, thread, threads = entry.args
        for k, step in enumerate(self.steps):
            b.call(step, [bufs, thread, threads])
            if k + 1 < len(self.steps):
                b.call(barrier, [threads])
        b.ret_void()

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


# ----- waiting between threads ------------------------------------------------------------------------------
# A waiting thread spins on `pause` for SPIN_NANOSECONDS (a call that follows soon finds it awake), then gives its
# CPU away with sched_yield until YIELD_NANOSECONDS, then sleeps in the kernel (a futex on the word it waits on)
# until the word changes, so idle threads cost nothing between calls. A waker changes the word with a sequentially
# consistent RMW and then makes the futex system call only if a sleeper has counted itself in (the waiter counts
# itself in before the kernel compares the word, so one of the two always sees the other).
SPIN_NANOSECONDS = 50_000
YIELD_NANOSECONDS = 1_000_000
SYS_FUTEX, FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 202, 128, 129  # x86-64 Linux
CLOCK_MONOTONIC = 1


def waiting_functions(module: ir.Module) -> tuple[ir.Function, ir.Function]:
    """`einfold_wait(ptr word, i32 seen, ptr sleepers)`: return once the i32 at `word` is no longer `seen`;
    `einfold_wake(ptr word, ptr sleepers)`: wake the sleepers of `word` (call after changing it)."""
    if "einfold_wait" in module.globals:
        return module.globals["einfold_wait"], module.globals["einfold_wake"]
    pause = ir.Function(module, ir.FunctionType(VOID, []), "llvm.x86.sse2.pause")
    sched_yield = ir.Function(module, ir.FunctionType(I32, []), "sched_yield")
    clock_gettime = ir.Function(module, ir.FunctionType(I32, [I32, PTR]), "clock_gettime")
    syscall = ir.Function(module, ir.FunctionType(I64, [I64], var_arg=True), "syscall")

    wake = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR]), "einfold_wake")
    wake.linkage = "internal"
    word, sleepers = wake.args
    b = ir.IRBuilder(wake.append_basic_block("entry"))
    with b.if_then(b.icmp_signed("!=", b.load_atomic(sleepers, "seq_cst", 4, typ=I32), ir.Constant(I32, 0))):
        b.call(syscall, [const(SYS_FUTEX), b.ptrtoint(word, I64), const(FUTEX_WAKE_PRIVATE), const(2**31 - 1),
                         const(0), const(0), const(0)])
    b.ret_void()

    wait = ir.Function(module, ir.FunctionType(VOID, [PTR, I32, PTR]), "einfold_wait")
    wait.linkage = "internal"
    word, seen, sleepers = wait.args
    b = ir.IRBuilder(wait.append_basic_block("entry"))
    clock = b.alloca(ir.ArrayType(I64, 2), name="timespec")

    def now() -> ir.Value:
        b.call(clock_gettime, [ir.Constant(I32, CLOCK_MONOTONIC), clock])
        seconds = b.load(b.gep(clock, [const(0), ir.Constant(I32, 0)], inbounds=True), typ=I64)
        nanoseconds = b.load(b.gep(clock, [const(0), ir.Constant(I32, 1)], inbounds=True), typ=I64)
        return b.add(b.mul(seconds, const(10**9)), nanoseconds)

    spins = b.alloca(I64, name="spins")
    b.store(const(0), spins)
    begin, check, spin, timed, give_away, sleep, done = (wait.append_basic_block(name) for name in (
        "begin", "check", "spin", "timed", "yield", "sleep", "done"))
    b.cbranch(b.icmp_signed("!=", b.load_atomic(word, "acquire", 4, typ=I32), seen), done, begin)
    b.position_at_end(begin)
    start = now()
    b.branch(check)
    b.position_at_end(check)
    b.cbranch(b.icmp_signed("!=", b.load_atomic(word, "acquire", 4, typ=I32), seen), done, spin)
    b.position_at_end(spin)
    b.call(pause, [])
    count = b.add(b.load(spins, typ=I64), const(1))
    b.store(count, spins)
    b.cbranch(b.icmp_signed("==", b.and_(count, const(63)), const(0)), timed, check)  # read the clock now and then
    b.position_at_end(timed)
    elapsed = b.sub(now(), start)
    with b.if_then(b.icmp_signed("<", elapsed, const(SPIN_NANOSECONDS))):
        b.branch(check)
    b.cbranch(b.icmp_signed("<", elapsed, const(YIELD_NANOSECONDS)), give_away, sleep)
    b.position_at_end(give_away)
    b.call(sched_yield, [])
    b.branch(check)
    b.position_at_end(sleep)
    b.atomic_rmw("add", sleepers, ir.Constant(I32, 1), "seq_cst")
    b.call(syscall, [const(SYS_FUTEX), b.ptrtoint(word, I64), const(FUTEX_WAIT_PRIVATE), b.zext(seen, I64),
                     const(0), const(0), const(0)])
    b.atomic_rmw("sub", sleepers, ir.Constant(I32, 1), "seq_cst")
    b.branch(check)
    b.position_at_end(done)
    b.ret_void()
    return wait, wake


def barrier_function(module: ir.Module) -> ir.Function:
    """`einfold_barrier(i64 threads)`: a sense-reversing barrier on module globals (an arrival count and a
    generation the last arrival bumps), the others waiting on the generation."""
    wait, wake = waiting_functions(module)
    count = ir.GlobalVariable(module, I64, "einfold_barrier_count")
    generation = ir.GlobalVariable(module, I32, "einfold_barrier_generation")
    sleepers = ir.GlobalVariable(module, I32, "einfold_barrier_sleepers")
    for variable in (count, generation, sleepers):
        variable.initializer = ir.Constant(variable.value_type, 0)
        variable.linkage = "internal"
    function = ir.Function(module, ir.FunctionType(VOID, [I64]), "einfold_barrier")
    function.linkage = "internal"
    (threads,) = function.args
    b = ir.IRBuilder(function.append_basic_block("entry"))
    with b.if_then(b.icmp_signed("<=", threads, const(1))):
        b.ret_void()
    seen = b.load_atomic(generation, "acquire", 4, typ=I32)
    arrived = b.atomic_rmw("add", count, const(1), "acq_rel")
    with b.if_else(b.icmp_signed("==", arrived, b.sub(threads, const(1)))) as (last, other):
        with last:
            b.store_atomic(const(0), count, "monotonic", 8)
            b.atomic_rmw("add", generation, ir.Constant(I32, 1), "seq_cst")
            b.call(wake, [generation, sleepers])
        with other:
            b.call(wait, [generation, seen, sleepers])
    b.ret_void()
    return function


# The state of a worker pool (POOL_BYTES, zeroed): byte offsets of its fields, the counters on their own cache
# lines. `generation` (i32) is bumped by the caller once the job (entry, bufs, threads, ticket) is written;
# `ticket` (i64) is the job's generation << 32 | the next unclaimed share (share 0 is the caller's); `done` (i32)
# counts the shares 1.. that finished; each waited-on word has the count of threads asleep on it beside it.
POOL_GENERATION, POOL_GENERATION_SLEEPERS = 0, 4
POOL_DONE, POOL_DONE_SLEEPERS = 64, 68
POOL_TICKET = 128
POOL_ENTRY, POOL_BUFS, POOL_THREADS = 192, 200, 208
POOL_BYTES = 256
ENTRY_FUNCTION = ir.FunctionType(VOID, [PTR, I64, I64])
WORKER, DISPATCH = "einfold_worker", "einfold_dispatch"


def dispatch_module() -> ir.Module:
    """The module shared by all programs. `einfold_worker(ptr pool)` is a worker thread's endless loop:
    wait for a new generation, claim one share t of the job, run `entry(bufs, t, threads)`, count it done.
    `einfold_dispatch(ptr pool, ptr entry, ptr bufs, i64 threads, i64 steal)` publishes a job, runs share 0 on the
    caller, then (if `steal`: a program without barriers, whose shares may run one after another) runs the
    shares no worker has claimed yet itself, and returns when shares 1..threads-1 are done. A worker that is
    asleep or has no CPU thus costs a barrier-free program nothing beyond its single-thread time."""
    module = ir.Module(name="einfold.dispatch")
    wait, wake = waiting_functions(module)
    ticket_type = I64.as_pointer()  # a typed pointer for cmpxchg (llvmlite reads its pointee type)

    def field(b: ir.IRBuilder, pool: ir.Value, offset: int) -> ir.Value:
        return b.gep(pool, [const(offset)], inbounds=True, source_etype=ir.IntType(8))

    claim = ir.Function(module, ir.FunctionType(I64, [PTR, I32]), "einfold_claim")
    claim.linkage = "internal"
    pool, generation = claim.args
    b = ir.IRBuilder(claim.append_basic_block("entry"))
    ticket = b.bitcast(field(b, pool, POOL_TICKET), ticket_type)
    first = b.load_atomic(ticket, "acquire", 8, typ=I64)
    attempt, claimed, none = (claim.append_basic_block(name) for name in ("attempt", "claimed", "none"))
    start = b.block
    b.branch(attempt)
    b.position_at_end(attempt)
    current = b.phi(I64, name="ticket")
    current.add_incoming(first, start)
    share = b.and_(current, const(2**32 - 1))
    same_job = b.icmp_unsigned("==", b.lshr(current, const(32)), b.zext(generation, I64))
    # `threads` may belong to a later job when this one is fully claimed; the cmpxchg then fails and the next
    # attempt sees the later generation
    left = b.icmp_signed("<", share, b.load(field(b, pool, POOL_THREADS), typ=I64))
    with b.if_then(b.not_(b.and_(same_job, left))):
        b.branch(none)
    exchanged = b.cmpxchg(ticket, current, b.add(current, const(1)), "acq_rel", "acquire")
    current.add_incoming(b.extract_value(exchanged, 0), b.block)
    b.cbranch(b.extract_value(exchanged, 1), claimed, attempt)
    b.position_at_end(claimed)
    b.ret(share)
    b.position_at_end(none)
    b.ret(const(-1))

    def run_share(b: ir.IRBuilder, pool: ir.Value, share: ir.Value) -> None:
        """Run `share` of the job and count it done."""
        entry = b.load(field(b, pool, POOL_ENTRY), typ=ENTRY_FUNCTION.as_pointer())
        b.call(entry, [b.load(field(b, pool, POOL_BUFS), typ=PTR), share,
                       b.load(field(b, pool, POOL_THREADS), typ=I64)])
        b.atomic_rmw("add", field(b, pool, POOL_DONE), ir.Constant(I32, 1), "seq_cst")

    worker = ir.Function(module, ir.FunctionType(VOID, [PTR]), WORKER)
    (pool,) = worker.args
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    generation = field(b, pool, POOL_GENERATION)
    seen = b.alloca(I32, name="seen")
    b.store(ir.Constant(I32, 0), seen)  # the pool starts zeroed, before any worker runs
    loop = worker.append_basic_block("loop")
    b.branch(loop)
    b.position_at_end(loop)
    b.call(wait, [generation, b.load(seen, typ=I32), field(b, pool, POOL_GENERATION_SLEEPERS)])
    current = b.load_atomic(generation, "acquire", 4, typ=I32)
    b.store(current, seen)
    share = b.call(claim, [pool, current])
    with b.if_then(b.icmp_signed(">=", share, const(0))):
        run_share(b, pool, share)
        b.call(wake, [field(b, pool, POOL_DONE), field(b, pool, POOL_DONE_SLEEPERS)])
    b.branch(loop)

    dispatch = ir.Function(module, ir.FunctionType(VOID, [PTR, ENTRY_FUNCTION.as_pointer(), PTR, I64, I64]),
                           DISPATCH)
    pool, entry, bufs, threads, steal = dispatch.args
    b = ir.IRBuilder(dispatch.append_basic_block("entry"))
    generation, done = field(b, pool, POOL_GENERATION), field(b, pool, POOL_DONE)
    b.store(entry, field(b, pool, POOL_ENTRY))
    b.store(bufs, field(b, pool, POOL_BUFS))
    b.store(threads, field(b, pool, POOL_THREADS))
    b.atomic_rmw("xchg", done, ir.Constant(I32, 0), "monotonic")
    following = b.add(b.load_atomic(generation, "monotonic", 4, typ=I32), ir.Constant(I32, 1))
    b.store(b.or_(b.shl(b.zext(following, I64), const(32)), const(1)), field(b, pool, POOL_TICKET))
    b.atomic_rmw("add", generation, ir.Constant(I32, 1), "seq_cst")  # publishes the job
    b.call(wake, [generation, field(b, pool, POOL_GENERATION_SLEEPERS)])
    b.call(entry, [bufs, const(0), threads])
    stealing, check = dispatch.append_basic_block("stealing"), dispatch.append_basic_block("check")
    b.cbranch(b.icmp_signed("!=", steal, const(0)), stealing, check)
    b.position_at_end(stealing)
    share = b.call(claim, [pool, following])
    with b.if_then(b.icmp_signed(">=", share, const(0))):
        run_share(b, pool, share)
        b.branch(stealing)
    b.branch(check)
    b.position_at_end(check)
    workers = b.trunc(b.sub(threads, const(1)), I32)
    waiting, finished = dispatch.append_basic_block("waiting"), dispatch.append_basic_block("finished")
    count = b.load_atomic(done, "acquire", 4, typ=I32)
    b.cbranch(b.icmp_signed("==", count, workers), finished, waiting)
    b.position_at_end(waiting)
    b.call(wait, [done, count, field(b, pool, POOL_DONE_SLEEPERS)])
    b.branch(check)
    b.position_at_end(finished)
    b.ret_void()
    return module
