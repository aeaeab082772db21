"""Calling the generated code: a pointer table bound once (weights, arena) and filled per call (inputs,
outputs), one ctypes call per thread of `einfold_entry(bufs, thread, threads)` (ctypes releases the GIL) on a small
pool of Python threads pinned one per CPU (the caller waits), and the error flag read back after the call."""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Callable

import numpy as np

from einfold.errors import RuntimeFailure
from einfold.ir import Program

from .elementwise import ERROR_MESSAGES
from .memory import ALIGN, MemoryPlan

ENTRY_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


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


class ThreadPool:
    """Worker threads that each run one job at a time from their own queue, worker t pinned to the t-th allowed
    CPU when there are enough (left free, the scheduler often wakes a worker on the caller's CPU, where the two
    then take turns); `run` gives job t to worker t and waits for all."""

    def __init__(self, workers: int):
        self.jobs: list[queue.SimpleQueue] = []
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        cpus = sorted(os.sched_getaffinity(0))
        for worker in range(workers):
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            cpu = cpus[worker] if workers <= len(cpus) else None
            threading.Thread(target=self._work, args=(jobs, cpu), daemon=True, name="einfold-llvm").start()
            self.jobs.append(jobs)

    def _work(self, jobs: queue.SimpleQueue, cpu: int | None) -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        while True:
            job = jobs.get()
            try:
                job()
            finally:
                self.done.put(None)

    def run(self, jobs: list[Callable[[], None]]) -> None:
        for worker, job in zip(self.jobs, jobs):
            worker.put(job)
        for _ in jobs:
            self.done.get()


_POOLS: dict[int, ThreadPool] = {}
_POOL_LOCK = threading.Lock()


def pool(workers: int) -> ThreadPool:
    with _POOL_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPool(workers)
        return _POOLS[workers]


def aligned_empty(nbytes: int) -> np.ndarray:
    """A byte buffer starting on an ALIGN boundary."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + nbytes]


class Runner:
    """`run(inputs) -> outputs` for one compiled program; Python threads may call it at once (a lock serialises
    the calls: the pointer table, the arena and the barrier are shared)."""

    def __init__(self, program: Program, plan: MemoryPlan, entry_address: int, error_address: int,
                 threads: int, keep_alive: object):
        self.keep_alive = keep_alive
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
        self.pool = pool(threads) if threads > 1 else None
        self.lock = threading.Lock()
        self.address = ctypes.addressof(self.table)

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        table = self.table
        held = [array if array.flags.c_contiguous else np.ascontiguousarray(array) for array in inputs]
        outputs = [np.empty(shape, dtype) for shape, dtype in self.outputs]
        with self.lock:  # the table is shared: fill it only while no other Python thread runs this program
            for slot, array in zip(self.input_slots, held):
                table[slot] = data_pointer(array)
            for slot, array in zip(self.output_slots, outputs):
                table[slot] = data_pointer(array)
            if self.pool is None:
                self.entry(self.address, 0, 1)
            else:
                n = self.threads
                self.pool.run([lambda t=t: self.entry(self.address, t, n) for t in range(n)])
            if self.error.value:
                code, self.error.value = self.error.value, 0
                raise RuntimeFailure(f"the compiled program failed: {ERROR_MESSAGES.get(code, f'error {code}')}")
        return outputs
