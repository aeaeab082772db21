"""The `llvm` target: the whole program becomes one LLVM module (generated with llvmlite, JIT-compiled at O3 for
the host CPU) whose entry function runs every op in order; `exe(...)` is one ctypes call, which runs the entry
on the caller and on native worker threads waiting in shared memory (runtime.py)."""

from __future__ import annotations

import platform
import time

import numpy as np

from einfold.backend_api import Lowered
from einfold.ir import Program

DESCRIPTION = "native CPU code through LLVM (llvmlite JIT): blocked FMA GEMM micro-kernels, vectorised loop nests"

# Programs estimated to run for less than this on one thread stay on it unless `threads` is given. A call on two
# threads costs ~5 us more than one when the workers are awake (they spin for a while after each call). Measured
# twice on the 2-vCPU VM, one thread vs two: i,i->i on 2x16384 f32 (estimated 17 us) 16-18 us vs 17-20 us; a 96^3
# GEMM (estimated 35 us) 31-37 us vs 22-30 us; bij,bjk->bik on 2x64^3 (estimated 23 us) 31 us vs 23-26 us.
# Waking workers that sleep (after ~1 ms idle) costs up to ~0.15 ms, which calls in a loop do not pay.
PARALLEL_MIN_SECONDS = 20e-6
SINGLE_THREAD_FLOPS_PER_SECOND = 70e9  # the 6x16 FMA kernel on one AVX2 core
SINGLE_THREAD_BYTES_PER_SECOND = 12e9  # streaming reads and writes on one core


def single_thread_seconds(program: Program) -> float:
    """A rough time on one thread: the FLOPs at the GEMM kernel's rate plus every value's bytes at memory rate."""
    nbytes = sum(op.type.size * np.dtype(op.type.dtype.numpy).itemsize for op in program.ops)
    return program.flops() / SINGLE_THREAD_FLOPS_PER_SECOND + nbytes / SINGLE_THREAD_BYTES_PER_SECOND


def available() -> tuple[bool, str]:
    try:
        import llvmlite.binding  # noqa: F401
    except ImportError as error:
        return False, f"llvmlite is not installed ({error})"
    if platform.machine() not in ("x86_64", "AMD64"):
        return False, f"the llvm target generates x86-64 code; this machine is {platform.machine()}"
    return True, ""


def passes(options: dict) -> list[str]:
    return ["contraction-plan", "fuse-epilogue"]


def lower(program: Program, options: dict) -> Lowered:
    from .codegen import ENTRY, ERROR_FLAG, ModuleBuilder
    from .jit import compile_module
    from .memory import find_chains, plan_memory
    from .runtime import Runner, default_threads
    from .scalars import scalar

    start = time.perf_counter()
    for op in program.ops:
        scalar(op.type.dtype, f"%{op.result}")
    chains = find_chains(program)
    plan = plan_memory(program, chains)
    threads = threads_built = int(options.get("threads") or default_threads())
    builder = ModuleBuilder(program, plan, chains, {**options, "threads": threads})
    module = builder.build()
    generated = time.perf_counter()
    jitted = compile_module(module)
    if not options.get("threads") and single_thread_seconds(program) < PARALLEL_MIN_SECONDS:
        threads = 1
    runner = Runner(program, plan, jitted.address(ENTRY), jitted.global_address(ERROR_FLAG), threads,
                    len(builder.steps) > 1, jitted)
    stats = {
        "llvm_kernels": len(builder.steps),
        "llvm_lowering": builder.notes,
        "llvm_threads": threads,
        "llvm_arena_bytes": plan.arena_bytes,
        "llvm_workspace_bytes": builder.workspace_bytes * threads_built,
        "llvm_codegen_seconds": generated - start,
        "llvm_jit_seconds": time.perf_counter() - generated,
    }
    return Lowered(run=runner, emits={"llvm": jitted.llvm_ir, "asm": jitted.asm},
                   stages={"llvm-unoptimized": jitted.unoptimized_ir}, stats=stats, source_kind="llvm")
