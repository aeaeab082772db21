"""Calling the generated code: a pointer table bound once (weights, arena) and filled per call (inputs,
outputs), then one ctypes call (which releases the GIL): `einfold_entry(bufs, 0, 1)` on one thread, or
`einfold_dispatch` (codegen.dispatch_module), which hands the shares t = 1..threads-1 of `einfold_entry(bufs, t,
threads)` to native worker threads through shared memory and runs share 0 (and, in a program without barriers,
the shares no worker has taken in time) on the caller; the error flag is read after."""

from __future__ import annotations

import ctypes
import functools
import os
import threading

import numpy as np

from einfold.errors import RuntimeFailure
from einfold.ir import Program

from .codegen import DISPATCH, POOL_BYTES, WORKER, dispatch_module
from .elementwise import ERROR_MESSAGES
from .jit import Jitted, compile_module
from .memory import ALIGN, MemoryPlan

ENTRY_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
WORKER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
DISPATCH_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                 ctypes.c_int64)


def _array_data_offset() -> int | None:
    """Offset of the data pointer inside a numpy array object (right after the object header in numpy's
    PyArrayObject), checked on a live array; reading it there is ~10x faster than `array.ctypes.data`."""
    probe = np.arange(3.0)
    offset = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)  # ob_refcnt, ob_type
    if ctypes.c_void_p.from_address(id(probe) + offset).value == probe.ctypes.data:
        return offset
    return None


_DATA_OFFSET = _array_data_offset()


def data_pointer(array: np.ndarray) -> int:
    if _DATA_OFFSET is None:
        return array.ctypes.data
    return ctypes.c_void_p.from_address(id(array) + _DATA_OFFSET).value or 0


def default_threads() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


@functools.cache
def dispatcher() -> Jitted:
    """The JIT-compiled dispatch module, compiled once per process and never freed."""
    return compile_module(dispatch_module())


class WorkerPool:
    """`threads - 1` daemon threads, each inside one endless ctypes call of `einfold_worker` (no Python, no GIL
    while it waits; not pinned to CPUs: a worker is mostly running or asleep, rarely woken next to the caller).
    The state lives in memory from libc that is never freed, so the workers may keep waiting on it while the
    interpreter shuts down."""

    def __init__(self, threads: int):
        self.threads = threads
        self.lock = threading.Lock()  # one job at a time: the state holds a single job
        jitted = dispatcher()
        self.dispatch = DISPATCH_TYPE(jitted.address(DISPATCH))
        worker = WORKER_TYPE(jitted.address(WORKER))
        libc = ctypes.CDLL(None)
        libc.aligned_alloc.restype = ctypes.c_void_p
        libc.aligned_alloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        self.state = libc.aligned_alloc(ALIGN, POOL_BYTES)
        if not self.state:
            raise MemoryError("could not allocate the llvm worker pool's state")
        ctypes.memset(self.state, 0, POOL_BYTES)
        for thread in range(1, threads):
            threading.Thread(target=worker, args=(self.state,), daemon=True,
                             name=f"einfold-llvm-{thread}").start()

    def run(self, entry: int, bufs: int, steal: bool) -> None:
        """Run `entry(bufs, t, threads)` (function and table addresses) for every share t, t = 0 on the caller, and
        with `steal` (no barrier in `entry`) any share no worker has claimed once share 0 is done; return when all
        are done."""
        with self.lock:
            self.dispatch(self.state, entry, bufs, self.threads, steal)


_POOLS: dict[int, WorkerPool] = {}
_POOL_LOCK = threading.Lock()


def pool(threads: int) -> WorkerPool:
    """The process's pool for `threads` threads (made on first use; a forked child makes its own)."""
    found = _POOLS.get(threads)
    if found is not None:
        return found
    with _POOL_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = WorkerPool(threads)
        return _POOLS[threads]


os.register_at_fork(after_in_child=_POOLS.clear)  # a child process has none of the parent's threads


def aligned_empty(nbytes: int) -> np.ndarray:
    """A byte buffer starting on an ALIGN boundary."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + nbytes]


class Runner:
    """`run(inputs) -> outputs` for one compiled program; Python threads may call it at once (a lock serialises
    the calls: the table, the arena and the barrier are shared)."""

    def __init__(self, program: Program, plan: MemoryPlan, entry_address: int, error_address: int,
                 threads: int, barriers: bool, keep_alive: object):
        self.keep_alive = keep_alive
        self.entry_address = entry_address
        self.entry = ENTRY_TYPE(entry_address)
        self.error = ctypes.c_int32.from_address(error_address)
        self.table = (ctypes.c_void_p * max(plan.slots, 1))()
        self.arena = aligned_empty(max(plan.arena_bytes, 1))
        self.bound = dict(plan.bound)
        for slot, array in self.bound.items():
            self.table[slot] = array.ctypes.data
        for slot, (offset, _) in plan.arena.items():
            self.table[slot] = self.arena.ctypes.data + offset
        self.input_slots = plan.input_slots
        self.output_slots = plan.output_slots
        self.outputs = [(op.type.shape, op.type.dtype.numpy) for op in map(program.defining_op, program.outputs)]
        self.threads = threads
        self.steal = not barriers  # the caller may run the shares of late workers one after another
        self.lock = threading.Lock()  # the table, the arena and the barrier serve one call at a time
        self.address = ctypes.addressof(self.table)

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        inputs = [array if array.flags.c_contiguous else np.ascontiguousarray(array) for array in inputs]
        outputs = [np.empty(shape, dtype) for shape, dtype in self.outputs]
        with self.lock:
            table = self.table
            for slot, array in zip(self.input_slots, inputs):
                table[slot] = data_pointer(array)
            for slot, array in zip(self.output_slots, outputs):
                table[slot] = data_pointer(array)
            if self.threads == 1:
                self.entry(self.address, 0, 1)
            else:
                pool(self.threads).run(self.entry_address, self.address, self.steal)
            if self.error.value:
                code, self.error.value = self.error.value, 0
                raise RuntimeFailure(f"the compiled program failed: {ERROR_MESSAGES.get(code, f'error {code}')}")
        return outputs
