"""The `llvm` target: the whole program becomes one LLVM module (generated with llvmlite, JIT-compiled at O3 for
the host CPU) whose entry function runs every op in order; `exe(...)` is one ctypes call per thread."""

from __future__ import annotations

import platform
import time

import numpy as np

from einfold.backend_api import Lowered
from einfold.ir import Program

DESCRIPTION = "native CPU code through LLVM (llvmlite JIT): blocked FMA GEMM micro-kernels, vectorised loop nests"

# Programs estimated to run for less than this on one thread stay on it unless `threads` is given. A worker that
# is awake (spinning after its last share, see pool.py) costs nothing to start; one asleep costs 0.1-0.3 ms on a
# 2-vCPU VM. Measured, f32 GEMM n^3, one thread / two (back-to-back calls; calls 5 ms apart): n = 128: 77 / 52 us,
# 243 / 287 us; n = 192 (estimate 0.24 ms): 193 / 123 us, 406 / 407 us; n = 256: 444 / 234 us, 721 / 648 us.
PARALLEL_MIN_SECONDS = 2e-4
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
    runner = Runner(program, plan, jitted.address(ENTRY), jitted.global_address(ERROR_FLAG), threads, jitted)
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
