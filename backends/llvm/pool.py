"""The llvm target's worker pool: one native thread per share of a parallel call, pinned one per CPU, each waiting
in JIT-compiled code (a short spin, then a futex) for its own wake-up word. The caller runs the share of the CPU it
is on itself and wakes only the others: a two-thread call is one ctypes call and one futex wake, no GIL hand-off.
Within a call, the barrier between steps (codegen.py) never sleeps: it spins, then yields the CPU."""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Callable

from llvmlite import ir

from .codegen import ENTRY_FUNCTION, VOID
from .jit import Jitted, compile_module
from .loops import const, for_range
from .memory import ALIGN
from .scalars import I32, I64, PTR

WORKER, DISPATCH = "einfold_pool_worker", "einfold_pool_dispatch"
WORKER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
DISPATCH_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)

# The pool's state (zeroed at first), each field group on its own cache line: the job (entry, bufs, threads), the
# count of shares still running (the futex word the caller sleeps on), then per worker t its wake-up generation
# (the futex word it sleeps on) and the CPU it is pinned to (-1: not pinned).
JOB_ENTRY, JOB_BUFS, JOB_THREADS = 0, 8, 16
PENDING = 64
WORKERS_AT, WORKER_BYTES, WORKER_CPU = 128, 64, 4
MAX_WORKERS = 64

# A waiting thread checks its word SPIN_CHECKS times, a `pause` apart (~26 ns each on Zen 3: ~0.26 ms), before it
# sleeps in the kernel: idle workers cost nothing, and calls that follow each other find them awake. Waking a
# sleeping worker costs 0.1-0.3 ms on a 2-vCPU VM (its idle vCPU must be rescheduled by the host): with a 26 us spin,
# back-to-back 256^3 GEMMs on two threads took 0.46-0.65 ms, with this one 0.25-0.26 ms (one thread: 0.44 ms).
SPIN_CHECKS = 10_000
SYS_FUTEX = 202  # x86-64 Linux (the llvm target generates x86-64 code only)
FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 128, 129


def pool_module() -> ir.Module:
    """`einfold_pool_worker(ptr state, i64 t)`: worker t's endless loop: wait for its generation to change, run share t
    of the job, count it done (waking the caller when it is the last). `einfold_pool_dispatch(ptr state, ptr entry,
    ptr bufs, i64 threads)`: publish the job, wake every worker but the one pinned to the caller's CPU, run that
    share on the caller, and return once every share is done."""
    module = ir.Module(name="einfold.pool")
    pause = ir.Function(module, ir.FunctionType(VOID, []), "llvm.x86.sse2.pause")
    syscall = ir.Function(module, ir.FunctionType(I64, [I64], var_arg=True), "syscall")
    sched_getcpu = ir.Function(module, ir.FunctionType(I32, []), "sched_getcpu")

    def field(b: ir.IRBuilder, state: ir.Value, offset: ir.Value | int) -> ir.Value:
        offset = const(offset) if isinstance(offset, int) else offset
        return b.gep(state, [offset], inbounds=True, source_etype=ir.IntType(8))

    def worker_field(b: ir.IRBuilder, state: ir.Value, t: ir.Value, offset: int) -> ir.Value:
        return field(b, state, b.add(const(WORKERS_AT + offset), b.mul(t, const(WORKER_BYTES))))

    def futex(b: ir.IRBuilder, word: ir.Value, op: int, value: ir.Value) -> None:
        b.call(syscall, [const(SYS_FUTEX), b.ptrtoint(word, I64), const(op), value, const(0), const(0), const(0)])

    wait = ir.Function(module, ir.FunctionType(VOID, [PTR, I32]), "einfold_pool_wait")
    wait.linkage = "internal"
    word, seen = wait.args
    b = ir.IRBuilder(wait.append_basic_block("entry"))
    checks = b.alloca(I64)
    b.store(const(0), checks)
    check, spin, sleep, done = (wait.append_basic_block(name) for name in ("check", "spin", "sleep", "done"))
    b.branch(check)
    b.position_at_end(check)
    b.cbranch(b.icmp_signed("!=", b.load_atomic(word, "acquire", 4, typ=I32), seen), done, spin)
    b.position_at_end(spin)
    count = b.add(b.load(checks, typ=I64), const(1))
    b.store(count, checks)
    b.call(pause, [])
    b.cbranch(b.icmp_signed("<", count, const(SPIN_CHECKS)), check, sleep)
    b.position_at_end(sleep)  # the kernel compares the word with `seen` before it sleeps: no wake-up is lost
    futex(b, word, FUTEX_WAIT_PRIVATE, b.zext(seen, I64))
    b.branch(check)
    b.position_at_end(done)
    b.ret_void()

    def run_share(b: ir.IRBuilder, state: ir.Value, share: ir.Value) -> None:
        entry = b.load(field(b, state, JOB_ENTRY), typ=ENTRY_FUNCTION.as_pointer())
        b.call(entry, [b.load(field(b, state, JOB_BUFS), typ=PTR), share,
                       b.load(field(b, state, JOB_THREADS), typ=I64)])

    worker = ir.Function(module, ir.FunctionType(VOID, [PTR, I64]), WORKER)
    state, t = worker.args
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    generation = worker_field(b, state, t, 0)
    pending = field(b, state, PENDING)
    seen = b.alloca(I32)
    b.store(ir.Constant(I32, 0), seen)  # the state is zeroed before any worker starts
    loop = worker.append_basic_block("loop")
    b.branch(loop)
    b.position_at_end(loop)
    b.call(wait, [generation, b.load(seen, typ=I32)])
    b.store(b.load_atomic(generation, "acquire", 4, typ=I32), seen)
    run_share(b, state, t)
    with b.if_then(b.icmp_signed("==", b.atomic_rmw("sub", pending, ir.Constant(I32, 1), "seq_cst"),
                                 ir.Constant(I32, 1))):
        futex(b, pending, FUTEX_WAKE_PRIVATE, const(1))
    b.branch(loop)

    dispatch = ir.Function(module, ir.FunctionType(VOID, [PTR, ENTRY_FUNCTION.as_pointer(), PTR, I64]), DISPATCH)
    state, entry, bufs, threads = dispatch.args
    b = ir.IRBuilder(dispatch.append_basic_block("entry"))
    b.store(entry, field(b, state, JOB_ENTRY))
    b.store(bufs, field(b, state, JOB_BUFS))
    b.store(threads, field(b, state, JOB_THREADS))
    here = b.sext(b.call(sched_getcpu, []), I64)
    mine = b.alloca(I64)
    b.store(const(-1), mine)
    with for_range(b, 0, threads, name="t") as t:
        cpu = b.sext(b.load(worker_field(b, state, t, WORKER_CPU), typ=I32), I64)
        with b.if_then(b.and_(b.icmp_signed("==", cpu, here), b.icmp_signed("<", b.load(mine, typ=I64), const(0)))):
            b.store(t, mine)
    own = b.load(mine, typ=I64)
    woken = b.select(b.icmp_signed(">=", own, const(0)), b.sub(threads, const(1)), threads)
    pending = field(b, state, PENDING)
    b.atomic_rmw("xchg", pending, b.trunc(woken, I32), "seq_cst")
    with for_range(b, 0, threads, name="t") as t:
        with b.if_then(b.icmp_signed("!=", t, own)):
            generation = worker_field(b, state, t, 0)
            b.atomic_rmw("add", generation, ir.Constant(I32, 1), "seq_cst")
            futex(b, generation, FUTEX_WAKE_PRIVATE, const(1))
    with b.if_then(b.icmp_signed(">=", own, const(0))):
        b.call(entry, [bufs, own, threads])
    check, sleep, finished = (dispatch.append_basic_block(name) for name in ("check", "sleep", "finished"))
    b.branch(check)
    b.position_at_end(check)
    left = b.load_atomic(pending, "acquire", 4, typ=I32)
    b.cbranch(b.icmp_signed("==", left, ir.Constant(I32, 0)), finished, sleep)
    b.position_at_end(sleep)
    b.call(wait, [pending, left])
    b.branch(check)
    b.position_at_end(finished)
    b.ret_void()
    return module


@functools.cache
def _compiled() -> Jitted:
    """The pool module, compiled once per process and never freed (workers run in it until the process ends)."""
    return compile_module(pool_module())


class WorkerPool:
    """`threads` daemon threads, each inside one endless ctypes call of the worker loop (no Python, no GIL while it
    waits), worker t pinned to the t-th allowed CPU when there are enough. The state is libc memory that is never
    freed, so the workers may keep waiting on it while the interpreter shuts down."""

    def __init__(self, threads: int):
        if not 1 < threads <= MAX_WORKERS:
            raise ValueError(f"a worker pool has 2..{MAX_WORKERS} threads, not {threads}")
        self.threads = threads
        self.lock = threading.Lock()  # the state holds one job at a time
        jitted = _compiled()
        self.dispatch = DISPATCH_TYPE(jitted.address(DISPATCH))
        worker = WORKER_TYPE(jitted.address(WORKER))
        size = WORKERS_AT + WORKER_BYTES * threads
        libc = ctypes.CDLL(None)
        libc.aligned_alloc.restype = ctypes.c_void_p
        libc.aligned_alloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        self.state = libc.aligned_alloc(ALIGN, size)
        if not self.state:
            raise MemoryError("could not allocate the llvm worker pool's state")
        ctypes.memset(self.state, 0, size)
        cpus = sorted(os.sched_getaffinity(0))
        pinned = threads <= len(cpus)
        for t in range(threads):
            ctypes.c_int32.from_address(self.state + WORKERS_AT + WORKER_BYTES * t + WORKER_CPU).value = (
                cpus[t] if pinned else -1)
            threading.Thread(target=self._work, args=(worker, t, cpus[t] if pinned else None), daemon=True,
                             name=f"einfold-llvm-{t}").start()

    def _work(self, worker: Callable[[int, int], None], t: int, cpu: int | None) -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        worker(self.state, t)

    def run(self, entry: int, bufs: int) -> None:
        """Run `entry(bufs, t, threads)` (a function and a pointer table, by address) for every share t; return
        when all are done."""
        with self.lock:
            self.dispatch(self.state, entry, bufs, self.threads)


_POOLS: dict[int, WorkerPool] = {}
_POOL_LOCK = threading.Lock()


def pool(threads: int) -> WorkerPool:
    """The process's pool of `threads` threads (made on first use; a forked child makes its own)."""
    found = _POOLS.get(threads)
    if found is not None:
        return found
    with _POOL_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = WorkerPool(threads)
        return _POOLS[threads]


os.register_at_fork(after_in_child=_POOLS.clear)  # a child process has none of the parent's threads
