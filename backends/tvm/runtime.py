"""Build the scheduled TE graph with `tvm.compile` for the host (an LLVM target given as a dict) and run it:
one pre-bound packed function per program, numpy buffers passed straight through (zero-copy views at the
boundary: complex as (..., 2) real arrays, bf16 as uint16, bool as uint8); only outputs are allocated per call.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import te

from einfold import dtypes as dt
from einfold.errors import RuntimeFailure
from einfold.ir import Program

from . import scalar as sc
from .lower_te import TEGraph, lower_program
from .schedules import Machine, schedule_graph


def use_all_cores(cores: int) -> None:
    """TVM's thread pool counts only half the logical CPUs (it assumes SMT pairs), so a 2-vCPU machine would run
    parallel loops on one thread; ask for every core this process may use unless the user chose a number. The pool
    reads this when it starts, at the first parallel kernel."""
    os.environ.setdefault("TVM_NUM_THREADS", str(cores))


def host_machine() -> Machine:
    """The host CPU as LLVM names it, its vector width and the cores this process may use."""
    import llvmlite.binding as llvm

    cpu = llvm.get_host_cpu_name()
    features = llvm.get_host_cpu_features()
    vector_bytes = 64 if features.get("avx512f") else 32 if features.get("avx") else 16
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Machine(cpu if cpu and cpu != "generic" else "x86-64", vector_bytes, cores)


def target_of(machine: Machine) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": machine.cpu, "num-cores": machine.cores})


_PARAM_BUFFER = re.compile(r'T\.Buffer\((\([^)]*\)), "([a-z0-9]+)"\)')


def relax_alignment(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Declare parameter buffers aligned to their element size only (TE assumes 64 bytes), so numpy arrays at any
    address can be passed without a copy. TE offers no such option, so the signature is edited in TVMScript."""
    lines = func.script().splitlines()
    for k, line in enumerate(lines):
        if line.lstrip().startswith("def main("):
            lines[k] = _PARAM_BUFFER.sub(
                lambda m: f'T.Buffer({m.group(1)}, "{m.group(2)}", align={max(1, tvm.DataType(m.group(2)).bits // 8)})',
                line)
            break
    return tvm.script.from_source("\n".join(lines))


@dataclass(frozen=True)
class Boundary:
    """How one program value crosses into TVM: the numpy view dtype and shape the kernel expects."""

    dtype: dt.DType
    shape: tuple[int, ...]

    def to_tvm(self, array: np.ndarray) -> np.ndarray:
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array).reshape(self.shape)
        store = sc.STORAGE[self.dtype.name]
        if store.complex:
            array = array.reshape(-1).view(store.numpy_view).reshape((*self.shape, 2))
        elif array.dtype != store.numpy_view:
            array = array.view(store.numpy_view)
        if array.size == 0:  # numpy gives empty arrays arbitrary strides; TVM checks for the compact ones
            strides = np.cumprod((1, *array.shape[:0:-1]))[::-1] * array.itemsize
            array = np.lib.stride_tricks.as_strided(array, array.shape, tuple(int(s) for s in strides))
        return array


@dataclass
class Compiled:
    """A built program: the packed function, its argument plan and the texts it can emit."""

    function: Callable
    module: object
    scheduled: tvm.IRModule
    inputs: list[Boundary]
    consts: list[np.ndarray]
    outputs: list[Boundary]
    checks: list[tuple[np.ndarray, str]]
    graph: TEGraph
    machine: Machine
    stats: dict = field(default_factory=dict)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        args = [boundary.to_tvm(a) for boundary, a in zip(self.inputs, arrays)]
        results = [np.empty(b.shape, b.dtype.numpy) for b in self.outputs]
        out_views = [boundary.to_tvm(r) for boundary, r in zip(self.outputs, results)]
        self.function(*args, *self.consts, *out_views, *(flag for flag, _ in self.checks))
        for flag, message in self.checks:
            if flag[0]:
                raise RuntimeFailure(message)
        return results

    def emit(self, kind: str) -> str:
        if kind == "tir":
            return self.scheduled.script()
        return self.module.inspect_source({"llvm": "ll", "asm": "asm"}[kind])


def build(program: Program, machine: Machine | None = None) -> Compiled:
    """Lower, schedule and compile a program (already binary einsums) for the host CPU."""
    machine = machine or host_machine()
    use_all_cores(machine.cores)
    graph = lower_program(program, machine)
    func = relax_alignment(te.create_prim_func(graph.params))
    schedule = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
    schedule_graph(schedule, graph, machine, graph.reachable())
    executable = tvm.compile(schedule.mod, target=target_of(machine))
    consts = [Boundary(dt.dtype(data.dtype), data.shape).to_tvm(data) for data in graph.const_data]
    checks = [(np.zeros(1, np.int32), message) for _, message in graph.checks]
    inputs = [Boundary(op.type.dtype, op.type.shape) for op in program.inputs]
    outputs = [Boundary(program.type_of(name).dtype, program.type_of(name).shape) for name in program.outputs]
    stats = {"tvm_stages": len(graph.stages), "tvm_inlined": len(graph.inlined),
             "tvm_fused_epilogue_ops": graph.fused_epilogues,
             "tvm_gemm_tiles": [f"{s.op}: {s.tiling.mr}x{s.tiling.nr} nc={s.tiling.nc}"
                                for s in graph.stages if s.role == "gemm"]}
    return Compiled(executable["main"], executable.mod, schedule.mod, inputs, consts, outputs, checks, graph,
                    machine, stats)
