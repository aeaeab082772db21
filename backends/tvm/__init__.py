"""The `tvm` target: einfold programs lowered to TVM TE, scheduled by our own CPU rules, built for the host with
LLVM and called as one pre-bound packed function per program."""

from __future__ import annotations

from einfold.backend_api import Lowered
from einfold.ir import Program

DESCRIPTION = "TVM TE/TensorIR with einfold's CPU schedules (blocked GEMM, fused epilogues), LLVM codegen"


def available() -> tuple[bool, str]:
    try:
        import tvm  # noqa: F401
        from tvm import s_tir, te  # noqa: F401
    except ImportError as error:
        return False, f"apache-tvm is not importable: {error}"
    return True, ""


def passes(options: dict) -> list[str]:
    return ["contraction-plan", "fuse-epilogue"]


def lower(program: Program, options: dict) -> Lowered:
    from .runtime import build

    compiled = build(program)
    emits = {kind: (lambda kind=kind: compiled.emit(kind)) for kind in ("tir", "llvm", "asm")}
    return Lowered(run=compiled.run, emits=emits, stages={"tvm-tir": compiled.emit("tir")}, stats=compiled.stats,
                   source_kind="tir")
