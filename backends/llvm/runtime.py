"""Calling the generated code: a pointer table bound once (weights, arena) and filled per call (inputs,
outputs), then one ctypes call (which releases the GIL): `einfold_entry(bufs, 0, 1)` on one thread, or the native
worker pool's dispatch (pool.py) running `einfold_entry(bufs, t, threads)` for every share t; the error flag is read
back after the call."""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

from einfold.errors import RuntimeFailure
from einfold.ir import Program

from .elementwise import ERROR_MESSAGES
from .memory import ALIGN, MemoryPlan
from .pool import pool

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
            if self.threads == 1:
                self.entry(self.address, 0, 1)
            else:
                pool(self.threads).run(self.entry_address, self.address)  # looked up: a forked child has its own
            if self.error.value:
                code, self.error.value = self.error.value, 0
                raise RuntimeFailure(f"the compiled program failed: {ERROR_MESSAGES.get(code, f'error {code}')}")
        return outputs
