"""llvmlite binding: a target machine for the host CPU with all its features, the O3 pipeline of the new pass
manager (loop and SLP vectorisers on), MCJIT compilation, and the `--emit llvm` / `--emit asm` texts."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import llvmlite.binding as llvm
from llvmlite import ir

from einfold.errors import UnsupportedError


@functools.cache
def target_machine() -> llvm.TargetMachine:
    """The shared host target machine (for the optimiser and assembly text; never given to an engine)."""
    return new_target_machine()


def new_target_machine() -> llvm.TargetMachine:
    """A fresh host target machine; an MCJIT engine takes ownership of the one it is given."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=host_features(), opt=3,
                                        codemodel="jitdefault", jit=True)


@functools.cache
def host_features() -> str:
    return llvm.get_host_cpu_features().flatten()


def has_feature(name: str) -> bool:
    return f"+{name}" in host_features().split(",")


@dataclass
class Jitted:
    """A compiled module: the engine (kept alive), its optimised IR and the entry points' addresses."""

    engine: llvm.ExecutionEngine
    module: llvm.ModuleRef
    unoptimized_ir: str

    def address(self, function: str) -> int:
        return self.engine.get_function_address(function)

    def global_address(self, name: str) -> int:
        return self.engine.get_global_value_address(name)

    def llvm_ir(self) -> str:
        return str(self.module)

    def asm(self) -> str:
        return target_machine().emit_assembly(self.module)


def compile_module(module: ir.Module) -> Jitted:
    """Verify, optimise at O3 for the host and JIT-compile an llvmlite module."""
    tm = target_machine()
    module.triple = tm.triple
    module.data_layout = str(tm.target_data)
    text = str(module)
    try:
        parsed = llvm.parse_assembly(text)
        parsed.verify()
    except RuntimeError as error:
        raise UnsupportedError(f"the llvm target generated invalid IR (a bug in einfold): {error}") from None
    tuning = llvm.create_pipeline_tuning_options(speed_level=3)
    tuning.loop_vectorization = True
    tuning.slp_vectorization = True
    tuning.loop_unrolling = False  # the micro-kernels are unrolled by hand; unrolling the rest costs seconds
    builder = llvm.create_pass_builder(tm, tuning)
    builder.getModulePassManager().run(parsed, builder)
    engine = llvm.create_mcjit_compiler(parsed, new_target_machine())
    engine.finalize_object()
    return Jitted(engine, parsed, text)
