"""The `llvm` target: the whole program becomes one LLVM module (generated with llvmlite, JIT-compiled at O3 for
the host CPU) whose entry function runs every op in order; `exe(...)` is one ctypes call per thread."""

from __future__ import annotations

import platform
import time

from einfold.backend_api import Lowered
from einfold.ir import Program

DESCRIPTION = "native CPU code through LLVM (llvmlite JIT): blocked FMA GEMM micro-kernels, vectorised loop nests"

# Programs below this many FLOPs run on one thread: waking the pool costs more than it saves.
PARALLEL_MIN_FLOPS = 1 << 22


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
    if program.flops() < PARALLEL_MIN_FLOPS:
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
