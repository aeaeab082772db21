"""The `ptx` target: every op becomes a CUDA kernel written as LLVM IR (llvmlite) and compiled to PTX by LLVM's
NVPTX backend; the kernels and their launch plan form a `GpuProgram` that runs through `einfold.backends.cupy_runtime`.

GEMM-shaped einsums C[b,m,n] = sum_k A[b,m,k] * B[b,k,n] get a shared-memory tiled, register-blocked kernel (operand
tiles staged in shared memory, the next tile prefetched into registers, vectorised loads where strides allow);
operands whose label groups are not contiguous are first packed ("akj" -> "jka"); every other einsum is a loop
nest per output element, and elementwise ops one thread per element.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from einfold import dtypes as dt
from einfold.backend_api import Lowered
from einfold.errors import RuntimeFailure, UnsupportedError
from einfold.ir import Op, Program
from einfold.loopnest import GemmView, LoopNest, label_strides, row_major_strides
from einfold.reference import literal_array
from einfold.spec import EinsumSpec

from ..cupy_runtime import Buffer, GpuProgram, GpuRunner, GpuUnavailable, Launch

DESCRIPTION = "CUDA GPU code through LLVM's NVPTX backend (llvmlite): tiled shared-memory GEMM, loop-nest kernels; " \
              "runs through CuPy"
TRIPLE = "nvptx64-nvidia-cuda"
ARCHES = {"sm_80": "+ptx70", "sm_86": "+ptx71", "sm_89": "+ptx78", "sm_90": "+ptx80", "sm_90a": "+ptx80"}
BLOCK = 256  # threads per block of every kernel
SMS = 132  # streaming multiprocessors of an H100 SXM (H200: the same): the split-K heuristic fills them
PAD = 4  # extra elements per shared-memory row (bank-conflict-free transposed stores, 16-byte aligned rows)
ERROR_FLAG = "einfold_error"
# LLVM intrinsics the elementwise emitters use that NVPTX cannot select, and their libdevice functions.
LIBDEVICE = {f"llvm.{name}.{suffix}": f"__nv_{name}{'f' if suffix == 'f32' else ''}"
             for name in ("exp", "log", "tanh", "pow", "sin", "cos", "atan2") for suffix in ("f32", "f64")}


def available() -> tuple[bool, str]:
    try:
        import llvmlite.binding as llvm
    except ImportError as error:
        return False, f"llvmlite is not installed ({error})"
    llvm.initialize_all_targets()
    try:
        llvm.Target.from_triple(TRIPLE)
    except RuntimeError as error:
        return False, f"this llvmlite has no NVPTX backend ({error})"
    return True, ""


def passes(options: dict) -> list[str]:
    return ["contraction-plan"]


def lower(program: Program, options: dict) -> Lowered:
    arch = str(options.get("arch", "sm_90"))
    if arch not in ARCHES:
        raise UnsupportedError(f"the ptx target generates code for {', '.join(ARCHES)}; got arch={arch!r}")
    builder = PtxBuilder(program, arch)
    gpu = builder.build()
    return gpu_lowered(program, gpu, {"ptx": lambda: gpu.source, "llvm": lambda: builder.llvm_text},
                       {"ptx_kernels": builder.notes}, "ptx")


# ----- shared by the GPU targets ---------------------------------------------------------------------------------

def storage_dtype(element: dt.DType, where: str) -> str:
    """The numpy storage type of a GPU buffer of `element` (bf16 as uint16 bits, bool as uint8)."""
    if element.is_modular:
        raise UnsupportedError(f"the GPU targets do not support {element} (in {where})")
    if element.name == "bf16":
        return "uint16"
    if element.name == "bool":
        return "uint8"
    return element.numpy.name


def buffer_name(value: str) -> str:
    return "v_" + value.replace(".", "_")


def restore(array: np.ndarray, element: dt.DType) -> np.ndarray:
    """A storage-typed result as the einfold dtype's numpy array."""
    if element.name in ("bf16", "bool"):
        return array.view(element.numpy)
    return array


def gpu_lowered(program: Program, gpu: GpuProgram, emits: dict, stats: dict, source_kind: str) -> Lowered:
    """The Lowered artifact of a GPU target: runs through CuPy, or says clearly that no GPU is present."""
    runner = GpuRunner(gpu)
    output_types = [program.type_of(name).dtype for name in program.outputs]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        try:
            outputs = runner(inputs)
        except GpuUnavailable as error:
            raise RuntimeFailure(f"@{program.name} (target {source_kind}): {error}") from None
        except ArithmeticError as error:
            raise RuntimeFailure(f"@{program.name}: {error}") from None
        return [restore(out, element) for out, element in zip(outputs, output_types)]

    figures = {"gpu_launches": len(gpu.launches), **stats}
    return Lowered(run=run, emits=emits, stages={"gpu-launches": gpu.describe()}, stats=figures,
                   api={"gpu_program": lambda: gpu}, source_kind=source_kind)


@dataclass
class BufferPlan:
    """Where every value lives on the GPU, and the output copies to make at the end."""

    buffers: dict[str, Buffer]  # value name -> buffer
    constants: dict[str, np.ndarray]
    outputs: tuple[str, ...]  # buffer names
    copies: list[tuple[str, str]]  # (value, output buffer) copied after the last kernel


def plan_buffers(program: Program) -> BufferPlan:
    """Inputs, weights and literals get their own buffers, reshapes view their operand's, every computed value a
    buffer of its own; an output that is an input, a weight, a view or a repeat is copied into a fresh buffer."""
    buffers: dict[str, Buffer] = {}
    constants: dict[str, np.ndarray] = {}
    computed_outputs = {name for name in program.outputs
                        if program.defining_op(name).opcode not in ("input", "const", "literal", "reshape")}
    for op in program.ops:
        where = f"{op.opcode} defining %{op.result}"
        storage = storage_dtype(op.type.dtype, where)
        name = buffer_name(op.result)
        logical = str(op.type.dtype)
        if op.opcode == "input":
            buffers[op.result] = Buffer(name, op.type.shape, storage, "input", logical)
        elif op.opcode in ("const", "literal"):
            data = program.weights[op.attrs["name"]] if op.opcode == "const" else literal_array(op)
            constants[name] = np.asarray(data)
            buffers[op.result] = Buffer(name, op.type.shape, storage, "const", logical)
        elif op.opcode == "reshape":
            root = buffers[op.operands[0]]
            buffers[op.result] = Buffer(name, op.type.shape, storage, "temp", logical, root.alias or root.name)
        else:
            role = "output" if op.result in computed_outputs else "temp"
            buffers[op.result] = Buffer(name, op.type.shape, storage, role, logical)
    outputs, copies, seen = [], [], set()
    for k, value in enumerate(program.outputs):
        if value in computed_outputs and value not in seen:
            outputs.append(buffers[value].name)
            seen.add(value)
            continue
        source = buffers[value]
        copy = Buffer(f"out{k}", source.shape, source.dtype, "output", source.logical)
        buffers[f"%out{k}"] = copy
        outputs.append(copy.name)
        copies.append((value, copy.name))
    return BufferPlan(buffers, constants, tuple(outputs), copies)


# ----- the NVPTX module ----------------------------------------------------------------------------------------

def _llvm() -> Any:
    import llvmlite.binding as llvm
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    return llvm


@functools.cache
def target_machine(arch: str) -> Any:
    llvm = _llvm()
    return llvm.Target.from_triple(TRIPLE).create_target_machine(cpu=arch, features=ARCHES[arch], opt=3)


def libdevice_path() -> Path | None:
    """CUDA's libdevice bitcode (the math library NVPTX code calls for exp, log, tanh, ...), if installed."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parent.parent))
    for root in filter(None, roots):
        candidate = Path(root) / "nvvm" / "libdevice" / "libdevice.10.bc"
        if candidate.exists():
            return candidate
    return None


def compile_ptx(llvm_text: str, arch: str, needs_libdevice: list[str]) -> str:
    """NVVM IR text -> PTX: parse, link libdevice when a math function needs it, O3, emit assembly."""
    llvm = _llvm()
    machine = target_machine(arch)
    module = llvm.parse_assembly(llvm_text)
    module.verify()
    if needs_libdevice:
        path = libdevice_path()
        if path is None:
            raise UnsupportedError(f"the ptx target needs CUDA's libdevice for {', '.join(needs_libdevice)}; "
                                   "set CUDA_HOME to a CUDA toolkit")
        module.link_in(llvm.parse_bitcode(path.read_bytes()))
        for function in module.functions:
            if function.name.startswith("__nv_") and not function.is_declaration:
                function.linkage = llvm.Linkage.internal
    builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    builder.getModulePassManager().run(module, builder)
    return machine.emit_assembly(module)


class PtxBuilder:
    """Builds the LLVM module and the launch plan of one program."""

    def __init__(self, program: Program, arch: str):
        from llvmlite import ir

        from .scalars import I32
        self.ir = ir
        self.program = program
        self.arch = arch
        self.module = ir.Module(name=f"einfold.{program.name}")
        self.module.triple = TRIPLE
        self.module.data_layout = str(target_machine(arch).target_data)
        self.error_flag = ir.GlobalVariable(self.module, I32, ERROR_FLAG, addrspace=1)
        self.error_flag.initializer = ir.Constant(I32, 0)
        self.plan = plan_buffers(program)
        self.extra_buffers: list[Buffer] = []
        self.launches: list[Launch] = []
        self.notes: list[str] = []
        self.llvm_text = ""

    def build(self) -> GpuProgram:
        from .elementwise import ERROR_MESSAGES
        for op in self.program.ops:
            if op.opcode in ("input", "const", "literal", "reshape"):
                continue
            if op.opcode == "einsum":
                self.einsum(op)
            else:
                self.elementwise(op)
        for value, out in self.plan.copies:
            source = self.plan.buffers[value]
            sc = self.scalar_of(value)
            self.pointwise("copy", (source.size,), [(source.name, sc, (1,))], (out, sc), lambda e, v: v[0])
        self.llvm_text = str(self.module)
        needs = sorted({name for name in LIBDEVICE if f'@"{name}"' in self.llvm_text})
        text = self.llvm_text
        for name in needs:
            text = text.replace(f'@"{name}"', f'@"{LIBDEVICE[name]}"')
        ptx = compile_ptx(text, self.arch, needs)
        # the flag costs the runtime a fill and a read-back per call: only programs with a kernel that sets it have it
        sets_errors = text.count(f'@"{ERROR_FLAG}"') > 1
        buffers = tuple(self.plan.buffers.values()) + tuple(self.extra_buffers)
        return GpuProgram(name=self.program.name, source_kind="ptx", source=ptx, buffers=buffers,
                          launches=tuple(self.launches),
                          inputs=tuple(self.plan.buffers[op.result].name for op in self.program.inputs),
                          outputs=self.plan.outputs, constants=self.plan.constants,
                          error_flag=ERROR_FLAG if sets_errors else None,
                          error_messages=dict(ERROR_MESSAGES) if sets_errors else {}, arch=self.arch)

    # ----- helpers ---------------------------------------------------------------------------------------------
    def scalar_of(self, value: str) -> Any:
        from .scalars import scalar
        return scalar(self.program.type_of(value).dtype, f"%{value}")

    def buffer(self, value: str) -> Buffer:
        return self.plan.buffers[value]

    def temp(self, hint: str, shape: tuple[int, ...], element: dt.DType) -> str:
        name = f"t{len(self.extra_buffers)}_{hint}"
        self.extra_buffers.append(Buffer(name, shape, storage_dtype(element, hint), "temp", str(element)))
        return name

    def kernel(self, label: str, args: list[str]) -> GpuKernel:
        name = f"k{len(self.launches)}_{label}".replace(".", "_")
        return GpuKernel(self, name, args)

    def launch(self, kernel: GpuKernel, grid: tuple[int, int, int], note: str) -> None:
        kernel.finish()
        self.launches.append(Launch(kernel.name, grid, (BLOCK, 1, 1), tuple(kernel.arg_names), 0, note))
        self.notes.append(f"{kernel.name}: {note}")

    # ----- elementwise ops -------------------------------------------------------------------------------------
    def pointwise(self, label: str, shape: tuple[int, ...], reads: list[tuple[str, Any, tuple[int, ...]]],
                  out: tuple[str, Any], compute: Any, note: str = "") -> None:
        """out[i] = compute(reads at i) over every index i of `shape`, one thread per element. A read is
        (buffer, scalar, element stride per dimension); the output is row-major."""
        from .codegen import collapse
        from .scalars import load, store
        size = math.prod(shape)
        if size == 0:
            return
        new_shape, strides = collapse(shape, [r[2] for r in reads] + [row_major_strides(shape)])
        names = list(dict.fromkeys([r[0] for r in reads] + [out[0]]))
        k = self.kernel(label, names)
        b = k.b
        index = k.global_index()
        with b.if_then(b.icmp_signed("<", index, k.const(size))):
            offsets = k.offsets(index, new_shape, strides)
            values = [load(b, k.pointer(name), sc, off) for (name, sc, _), off in zip(reads, offsets)]
            store(b, compute(k.emitter(), values), k.pointer(out[0]), out[1], offsets[-1])
        self.launch(k, (math.ceil(size / BLOCK), 1, 1), note or f"{label} over {list(shape)}")

    def elementwise(self, op: Op) -> None:
        from . import elementwise as ew
        from .codegen import broadcast_strides
        operand_scalars = [self.scalar_of(v) for v in op.operands]
        result = self.scalar_of(op.result)
        ew.check(op, operand_scalars, result)
        reads = [(self.buffer(v).name, sc, broadcast_strides(self.program.type_of(v).shape, op.type.shape))
                 for v, sc in zip(op.operands, operand_scalars)]
        self.pointwise(op.opcode, op.type.shape, reads, (self.buffer(op.result).name, result),
                       lambda e, values: ew.apply(e, op, operand_scalars, result, values),
                       f"%{op.result} = {op.opcode}{' ' + op.attrs['fn'] if op.opcode == 'map' else ''}")

    # ----- einsums ---------------------------------------------------------------------------------------------
    def einsum(self, op: Op) -> None:
        spec = EinsumSpec.parse(op.attrs["spec"])
        shapes = [self.program.type_of(v).shape for v in op.operands]
        if len(op.operands) == 2 and gemm_dtype(self.scalar_of(op.result)):
            view = GemmView.of(spec, shapes)
            if view.is_gemm and view.extent(view.batch) <= 65535:
                self.gemm(op, spec, shapes, view)
                return
        self.loop_nest(op, spec, shapes)

    def loop_nest(self, op: Op, spec: EinsumSpec, shapes: list[tuple[int, ...]]) -> None:
        """One thread per output element; the summed labels are loops around a register accumulator."""
        from . import elementwise as ew
        from .einsum import REASSOCIATE, accumulator
        from .loops import for_range
        from .scalars import convert, load, store, zero
        nest = LoopNest.of(spec, shapes)
        sc = self.scalar_of(op.result)
        acc_sc = accumulator(sc)
        in_scalars = [self.scalar_of(v) for v in op.operands]
        size = op.type.size
        if size == 0:
            return
        names = list(dict.fromkeys([self.buffer(v).name for v in op.operands] + [self.buffer(op.result).name]))
        k = self.kernel("einsum", names)
        b = k.b
        index = k.global_index()
        out_shape = tuple(nest.sizes[label] for label in spec.output)
        tensors = [*nest.operand_strides, nest.output_strides]
        with b.if_then(b.icmp_signed("<", index, k.const(size))):
            per_dim = [tuple(t.get(label, 0) for label in spec.output) for t in tensors]
            offsets = k.offsets(index, out_shape, per_dim) if out_shape else [k.const(0) for _ in tensors]
            e = k.emitter(REASSOCIATE)
            cells = [b.alloca(acc_sc.compute) for _ in range(acc_sc.lanes)]
            for cell, part in zip(cells, _parts(zero(acc_sc), acc_sc)):
                b.store(part, cell)

            def level(depth: int, offs: list[Any]) -> None:
                if depth == len(spec.summed):
                    values = [load(b, k.pointer(self.buffer(v).name), s, off)
                              for v, s, off in zip(op.operands, in_scalars, offs)]
                    values = [convert(b, v, s, acc_sc) if s != acc_sc else v for v, s in zip(values, in_scalars)]
                    term = values[0]
                    for value in values[1:]:
                        term = ew.mul(e, acc_sc, term, value)
                    current = _join([b.load(cell, typ=acc_sc.compute) for cell in cells], acc_sc)
                    for cell, part in zip(cells, _parts(ew.add(e, acc_sc, current, term), acc_sc)):
                        b.store(part, cell)
                    return
                label = spec.summed[depth]
                with for_range(b, 0, nest.sizes[label], name=label) as i:
                    level(depth + 1, [b.add(o, b.mul(i, k.const(s[label]))) if s.get(label) else o
                                      for s, o in zip(nest.operand_strides, offs)])

            level(0, offsets[:-1])
            total = _join([b.load(cell, typ=acc_sc.compute) for cell in cells], acc_sc)
            store(b, convert(b, total, acc_sc, sc) if acc_sc != sc else total,
                  k.pointer(self.buffer(op.result).name), sc, offsets[-1])
        self.launch(k, (math.ceil(size / BLOCK), 1, 1), f"%{op.result} = einsum '{spec}' loop nest "
                                                        f"(summing {spec.summed or 'nothing'} per thread)")

    def gemm(self, op: Op, spec: EinsumSpec, shapes: list[tuple[int, ...]], view: GemmView) -> None:
        """Tiled GEMM over the groups of `view`, packing operands (and the result) whose groups are not
        contiguous into [batch, m, k] / [batch, k, n] / [batch, m, n] order."""
        from .ptx_mma import tensor_core_gemm, uses_tensor_cores
        a, b_ = op.operands
        sizes = view.sizes
        batch, m, n = (_in_order(spec.output, g) for g in (view.batch, view.m, view.n))
        k = _in_order(spec.inputs[0], view.k)
        order_c = batch + m + n
        operands = []
        for value, term, groups in ((a, spec.inputs[0], (batch, m, k)), (b_, spec.inputs[1], (batch, k, n))):
            order = "".join(groups)
            name = self.buffer(value).name
            group_strides = _group_strides(groups, label_strides(term, self.program.type_of(value).shape), sizes)
            if group_strides is None:
                name = self.pack(value, term, order, sizes)
                packed = label_strides(order, tuple(sizes[label] for label in order))
                group_strides = _group_strides(groups, packed, sizes)
            operands.append((name, group_strides))
        out_strides = label_strides(spec.output, op.type.shape)
        out_groups = _group_strides((batch, m, n), out_strides, sizes)
        out_buffer = self.buffer(op.result).name
        target = out_buffer
        if out_groups is None:
            target = self.temp("gemm", tuple(sizes[label] for label in order_c), op.type.dtype)
            out_groups = _group_strides((batch, m, n), label_strides(
                order_c, tuple(sizes[label] for label in order_c)), sizes)
        extents = tuple(math.prod(sizes[label] for label in g) for g in (batch, m, n, k))
        if uses_tensor_cores(self.scalar_of(a), self.scalar_of(b_)):
            tensor_core_gemm(self, f"%{op.result} = einsum '{spec}'", extents, operands, (target, out_groups),
                             self.scalar_of(a), self.scalar_of(op.result))
        else:
            config = GemmConfig.choose(extents, self.scalar_of(a), self.scalar_of(op.result),
                                       operands[0][1], operands[1][1], out_groups)
            final = target
            if config.splits > 1:
                target = self.temp("partial", (extents[0] * config.splits, extents[1], extents[2]),
                                   dt.dtype(config.out_dtype))
            kernel = self.kernel("gemm", list(dict.fromkeys([operands[0][0], operands[1][0], target])))
            emit_gemm(kernel, config, operands[0][0], operands[1][0], target)
            self.launch(kernel, config.grid, f"%{op.result} = einsum '{spec}' as GEMM {config.describe()}")
            if config.splits > 1:
                self.sum_splits(target, final, config, out_groups, self.scalar_of(op.result))
                target = final
        if target != out_buffer:
            sc = self.scalar_of(op.result)
            # the temp is [batch, m, n]; read it at the output's indices
            temp_strides = label_strides(order_c, tuple(sizes[label] for label in order_c))
            self.pointwise("unpack", op.type.shape, [(target, sc, tuple(temp_strides[label] for label in spec.output))],
                           (out_buffer, sc), lambda e, v: v[0], f"%{op.result}: [{order_c}] -> [{spec.output}]")

    def sum_splits(self, partial: str, target: str, cfg: GemmConfig, out_strides: tuple[int, ...], sc: Any) -> None:
        """target[b, m, n] = sum_s partial[b * splits + s, m, n] (in order: the result does not depend on timing)."""
        from .loops import for_range
        from .scalars import convert, load, scalar, store
        acc_sc = scalar(dt.dtype(cfg.out_dtype))
        shape = (cfg.batch, cfg.m, cfg.n)
        k = self.kernel("sum_splits", [partial, target])
        b = k.b
        index = k.global_index()
        size = math.prod(shape)
        with b.if_then(b.icmp_signed("<", index, k.const(size))):
            plane = cfg.m * cfg.n
            first, out = k.offsets(index, shape, [(cfg.splits * plane, cfg.n, 1), out_strides])
            cell = b.alloca(acc_sc.compute)
            b.store(ir_zero(acc_sc), cell)
            with for_range(b, 0, cfg.splits, name="split") as s:
                value = load(b, k.pointer(partial), acc_sc, b.add(first, b.mul(s, k.const(plane))))
                b.store(b.fadd(b.load(cell, typ=acc_sc.compute), value), cell)
            total = b.load(cell, typ=acc_sc.compute)
            store(b, convert(b, total, acc_sc, sc) if acc_sc != sc else total, k.pointer(target), sc, out)
        self.launch(k, (math.ceil(size / BLOCK), 1, 1), f"sum {cfg.splits} split-K partials")

    def pack(self, value: str, term: str, order: str, sizes: dict[str, int]) -> str:
        """Copy `value` (labels `term`) into a new buffer with labels in `order`: packed[order] = value[term]."""
        sc = self.scalar_of(value)
        shape = tuple(sizes[label] for label in order)
        strides = label_strides(term, self.program.type_of(value).shape)
        target = self.temp("pack", shape, self.program.type_of(value).dtype)
        self.pointwise("pack", shape, [(self.buffer(value).name, sc, tuple(strides.get(lb, 0) for lb in order))],
                       (target, sc), lambda e, v: v[0], f"pack %{value} [{term}] -> [{order}]")
        return target


def ir_zero(sc: Any) -> Any:
    from .scalars import zero
    return zero(sc)


def _parts(value: Any, sc: Any) -> tuple:
    return tuple(value) if sc.lanes == 2 else (value,)


def _join(parts: list, sc: Any) -> Any:
    return tuple(parts) if sc.lanes == 2 else parts[0]


def _in_order(term: str, group: str) -> str:
    return "".join(label for label in term if label in group)


def _group_strides(groups: tuple[str, ...], strides: dict[str, int],
                   sizes: dict[str, int]) -> tuple[int, ...] | None:
    """One element stride per label group when each group steps through memory like one dimension, else None."""
    result = []
    for group in groups:
        live = [label for label in group if sizes[label] > 1]
        if not live:
            result.append(0)
            continue
        for outer, inner in zip(live, live[1:]):
            if strides.get(outer, 0) != strides.get(inner, 0) * sizes[inner]:
                return None
        result.append(strides.get(live[-1], 0))
    return tuple(result)


def gemm_dtype(sc: Any) -> bool:
    return sc.dtype.name in ("f16", "bf16", "f32", "f64")


class GpuKernel:
    """One `ptx_kernel` function taking a pointer per buffer, and the index helpers kernels share."""

    def __init__(self, owner: PtxBuilder, name: str, arg_names: list[str]):
        ir = owner.ir
        from .scalars import PTR
        self.owner = owner
        self.name = name
        self.arg_names = arg_names
        self.function = ir.Function(owner.module, ir.FunctionType(ir.VoidType(), [PTR] * len(arg_names)), name)
        self.function.calling_convention = "ptx_kernel"
        for arg in self.function.args:
            arg.add_attribute("noalias")
        self.b = ir.IRBuilder(self.function.append_basic_block("entry"))

    def const(self, value: int) -> Any:
        from .loops import const
        return const(value)

    def pointer(self, buffer: str) -> Any:
        return self.function.args[self.arg_names.index(buffer)]

    def special(self, register: str) -> Any:
        """A PTX special register (tid.x, ctaid.y, ...) as i64."""
        ir = self.owner.ir
        from .scalars import I32, I64
        name = f"llvm.nvvm.read.ptx.sreg.{register}"
        module = self.owner.module
        function = module.globals.get(name) or ir.Function(module, ir.FunctionType(I32, []), name)
        return self.b.zext(self.b.call(function, []), I64)

    def global_index(self) -> Any:
        b = self.b
        return b.add(b.mul(self.special("ctaid.x"), self.const(BLOCK)), self.special("tid.x"))

    def offsets(self, index: Any, shape: tuple[int, ...], strides: list[tuple[int, ...]]) -> list[Any]:
        """Element offsets of each tensor at the row-major flat `index` of `shape`."""
        b = self.b
        offsets = [self.const(0) for _ in strides]
        rest = index
        for dim in reversed(range(len(shape))):
            coordinate = b.urem(rest, self.const(shape[dim])) if dim else rest
            if dim:
                rest = b.udiv(rest, self.const(shape[dim]))
            offsets = [b.add(off, b.mul(coordinate, self.const(s[dim]))) if s[dim] else off
                       for off, s in zip(offsets, strides)]
        return offsets

    def emitter(self, flags: tuple[str, ...] = ()) -> Any:
        from .elementwise import Emitter
        return Emitter(self.b, self.owner.error_flag, flags)

    def barrier(self) -> None:
        ir = self.owner.ir
        module = self.owner.module
        name = "llvm.nvvm.barrier0"
        function = module.globals.get(name) or ir.Function(module, ir.FunctionType(ir.VoidType(), []), name)
        self.b.call(function, [])

    def finish(self) -> None:
        if not self.b.block.is_terminated:
            self.b.ret_void()


# ----- the tiled GEMM kernel -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GemmConfig:
    """C[b, m, n] = sum_k A[b, m, k] B[b, k, n] with element strides per group; a BM x BN block tile per thread
    block, BK deep, each thread a TM x TN register tile (two TM/2 x TN/2 quarters half a tile apart). With
    `stages` = 2 each operand has two shared-memory buffers: the next k-tile is stored into one while the other is
    read, one barrier per k-tile; with 1, the tile is stored, read and waited for (two barriers)."""

    batch: int
    m: int
    n: int
    k: int
    a_strides: tuple[int, int, int]  # batch, m, k
    b_strides: tuple[int, int, int]  # batch, k, n
    c_strides: tuple[int, int, int]  # batch, m, n
    in_dtype: str
    out_dtype: str
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    splits: int = 1  # split-K: this many blocks share one output tile, each summing a slice of k into a partial
    stages: int = 1
    min_blocks: int = 0  # launch bounds: blocks per SM ptxas must leave registers for (2: 128 a thread; 0: none)
    warp_rows: int = 2  # a warp's threads form warp_rows x (32 / warp_rows) thread tiles of the block tile

    def __post_init__(self) -> None:
        threads = (self.bm // self.tm) * (self.bn // self.tn)
        if threads != BLOCK or self.bm % self.tm or self.bn % self.tn or self.tm % 2 or self.tn % 2:
            raise ValueError(f"GEMM tile {self.bm}x{self.bn} in {self.tm}x{self.tn} thread tiles needs {BLOCK} "
                             f"threads, not {threads}")
        if 32 % self.warp_rows or (self.bn // self.tn) % (32 // self.warp_rows):
            raise ValueError(f"GEMM warps of {self.warp_rows} thread rows do not tile {self.bn // self.tn} columns")
        if self.stages not in (1, 2):
            raise ValueError(f"GEMM stages must be 1 or 2, not {self.stages}")
        if self.shared_bytes > 48 * 1024:
            raise ValueError(f"GEMM tiles {self.describe()} need {self.shared_bytes} bytes of shared memory "
                             "(48 KiB at most)")

    @staticmethod
    def choose(extents: tuple[int, int, int, int], in_sc: Any, out_sc: Any, a: tuple, b: tuple,
               c: tuple) -> GemmConfig:
        """The tile rule (from tile sweeps on an H100). f64: 64x64x8. f32: 128x128x16 tiles (8x8
        a thread, warps of 4x8 threads) once they alone fill the SMs, under launch bounds of 2 blocks per SM (128
        registers); a narrow side (n or m at most 64, the other over 64) gets 128x64 (64x128) tiles,
        double-buffered, 3 blocks per SM; otherwise 64x64x16. Few blocks and a long k: split k (two waves)."""
        batch, m, n, k = extents
        extra: dict[str, int] = {}
        if in_sc.dtype.name == "f64":
            tile = (64, 64, 8, 4, 4)
        elif batch * math.ceil(m / 128) * math.ceil(n / 128) >= SMS and min(m, n) >= 96:
            tile, extra = (128, 128, 16, 8, 8), {"min_blocks": 2, "warp_rows": 4}
        elif n <= 64 < m:
            tile, extra = (128, 64, 16, 8, 4), {"stages": 2, "min_blocks": 3}
        elif m <= 64 < n:
            tile, extra = (64, 128, 16, 4, 8), {"stages": 2, "min_blocks": 3}
        else:
            tile = (64, 64, 16, 4, 4)
        blocks = batch * math.ceil(m / tile[0]) * math.ceil(n / tile[1])
        tiles = math.ceil(k / tile[2])
        # Too few blocks to fill the GPU and a long k: split k so that about two waves of blocks run.
        splits = max(1, min(math.ceil(2 * SMS / blocks), tiles // 8, 65535 // batch)) if blocks < SMS else 1
        if splits > 1:
            c = (m * n, n, 1)  # each split writes its own [m, n] partial
        out_dtype = out_sc.dtype.name if splits == 1 else acc_dtype(in_sc.dtype.name)
        return GemmConfig(batch, m, n, k, a, b, c, in_sc.dtype.name, out_dtype, *tile, splits, **extra)

    @property
    def grid(self) -> tuple[int, int, int]:
        return math.ceil(self.n / self.bn), math.ceil(self.m / self.bm), self.batch * self.splits

    @property
    def shared_bytes(self) -> int:
        """Static shared memory of the operand tiles (rows padded by PAD elements)."""
        size = 8 if self.in_dtype == "f64" else 4
        return self.stages * self.bk * (self.bm + self.bn + 2 * PAD) * size

    @property
    def store_width(self) -> int:
        """Output elements each store writes: up to 16 bytes of a thread's TN/2 adjacent columns at once when C is
        f32/f64 with unit column stride and every such vector starts aligned, else 1."""
        size = {"f32": 4, "f64": 8}.get(self.out_dtype)
        if size is None or self.c_strides[2] != 1:
            return 1
        width = min(self.tn // 2, 16 // size)
        aligned = self.n % width == 0 and all(s % width == 0 for s in self.c_strides[:2])
        return width if aligned and (self.tn // 2) % width == 0 else 1

    def describe(self) -> str:
        split = f", k split {self.splits} ways" if self.splits > 1 else ""
        return (f"{self.batch}x{self.m}x{self.n}x{self.k} {self.in_dtype}, block tile {self.bm}x{self.bn}x{self.bk}, "
                f"thread tile {self.tm}x{self.tn}, {self.stages} stage{'s' if self.stages > 1 else ''}{split}")


def acc_dtype(in_dtype: str) -> str:
    return "f64" if in_dtype == "f64" else "f32"


def emit_gemm(kernel: GpuKernel, cfg: GemmConfig, a_name: str, b_name: str, c_name: str) -> None:
    """The body of the tiled GEMM kernel (block = BLOCK threads; grid = (n tiles, m tiles, batch))."""
    from llvmlite import ir

    from .loops import loop_carry
    from .scalars import F32, F64, intrinsic, scalar

    b = kernel.b
    c64 = kernel.const
    acc_type = F64 if cfg.in_dtype == "f64" else F32
    in_sc = scalar(dt.dtype(cfg.in_dtype))
    threads_x = cfg.bn // cfg.tn
    half_m, half_n = cfg.tm // 2, cfg.tn // 2
    module = kernel.owner.module
    if cfg.min_blocks:  # launch bounds: BLOCK threads, min_blocks resident per SM cap the registers ptxas may use
        i32 = ir.IntType(32)
        module.add_named_metadata("nvvm.annotations", [kernel.function, "maxntidx", i32(BLOCK)])
        module.add_named_metadata("nvvm.annotations", [kernel.function, "minctasm", i32(cfg.min_blocks)])

    def shared(label: str, size: int) -> ir.GlobalVariable:
        array = ir.ArrayType(acc_type, size)
        variable = ir.GlobalVariable(module, array, f"{kernel.name}_{label}", addrspace=3)
        variable.linkage = "internal"
        variable.initializer = ir.Constant(array, ir.Undefined)
        variable.align = 16
        return variable

    pitch_a, pitch_b = cfg.bm + PAD, cfg.bn + PAD
    buffer_a, buffer_b = cfg.bk * pitch_a, cfg.bk * pitch_b  # elements of one stage of each operand
    tile_a, tile_b = shared("a", cfg.stages * buffer_a), shared("b", cfg.stages * buffer_b)
    tid = kernel.special("tid.x")
    col_block = b.mul(kernel.special("ctaid.x"), c64(cfg.bn))
    row_block = b.mul(kernel.special("ctaid.y"), c64(cfg.bm))
    z = kernel.special("ctaid.z")
    batch, split = (b.udiv(z, c64(cfg.splits)), b.urem(z, c64(cfg.splits))) if cfg.splits > 1 else (z, c64(0))
    a_base = b.mul(batch, c64(cfg.a_strides[0]))
    b_base = b.mul(batch, c64(cfg.b_strides[0]))
    c_base = b.mul(z, c64(cfg.c_strides[0]))

    tiles = math.ceil(cfg.k / cfg.bk)
    per_split = math.ceil(tiles / cfg.splits)
    # a split's last tiles may lie past k (when tiles do not divide evenly among the splits)
    check_k = cfg.k % cfg.bk != 0 or per_split * cfg.splits != tiles
    loaders = [
        _TileLoader(kernel, kernel.pointer(a_name), in_sc, (a_base, cfg.a_strides[0]), row_block,
                    (cfg.m, cfg.bm, cfg.a_strides[1]), (cfg.k, cfg.bk, cfg.a_strides[2]), (tile_a, pitch_a), tid,
                    check_k),
        _TileLoader(kernel, kernel.pointer(b_name), in_sc, (b_base, cfg.b_strides[0]), col_block,
                    (cfg.n, cfg.bn, cfg.b_strides[2]), (cfg.k, cfg.bk, cfg.b_strides[1]), (tile_b, pitch_b), tid,
                    check_k),
    ]
    fma = intrinsic(module, "llvm.fma", acc_type, 3)
    # thread (ty, tx) of the block's grid of thread tiles; warp w covers rows and columns of it as warp_rows x cols
    warp_cols = 32 // cfg.warp_rows
    warp, lane = b.udiv(tid, c64(32)), b.urem(tid, c64(32))
    warps_x = threads_x // warp_cols
    ty = b.add(b.mul(b.udiv(warp, c64(warps_x)), c64(cfg.warp_rows)), b.udiv(lane, c64(warp_cols)))
    tx = b.add(b.mul(b.urem(warp, c64(warps_x)), c64(warp_cols)), b.urem(lane, c64(warp_cols)))
    row_starts = [b.mul(ty, c64(half_m)), b.add(b.mul(ty, c64(half_m)), c64(cfg.bm // 2))]
    col_starts = [b.mul(tx, c64(half_n)), b.add(b.mul(tx, c64(half_n)), c64(cfg.bn // 2))]
    first_tile = b.mul(split, c64(per_split))
    split_a = len(loaders[0].slots)

    def store_tiles(values: list[Any], stage: Any) -> None:
        loaders[0].store(values[:split_a], b.mul(stage, c64(buffer_a)))
        loaders[1].store(values[split_a:], b.mul(stage, c64(buffer_b)))

    def load_following(t: Any) -> list[Any]:
        """The registers of k-tile t + 1 of this split (past its last tile: its first again, in bounds, unused)."""
        following = b.add(t, c64(1))
        tile = b.add(first_tile, b.select(b.icmp_signed("<", following, c64(per_split)), following, c64(0)))
        return [value for loader in loaders for value in loader.load(b.mul(tile, c64(cfg.bk)))]

    def multiply(acc: list[Any], stage: Any) -> list[Any]:
        acc = list(acc)
        a_stage, b_stage = b.mul(stage, c64(buffer_a)), b.mul(stage, c64(buffer_b))
        for kk in range(cfg.bk):
            a_values = _shared_vectors(b, tile_a, b.add(a_stage, c64(kk * pitch_a)), row_starts, half_m, acc_type)
            b_values = _shared_vectors(b, tile_b, b.add(b_stage, c64(kk * pitch_b)), col_starts, half_n, acc_type)
            for i, x in enumerate(a_values):
                for j, y in enumerate(b_values):
                    acc[i * cfg.tn + j] = b.call(fma, [x, y, acc[i * cfg.tn + j]])
        return acc

    prefetched = [value for loader in loaders for value in loader.load(b.mul(first_tile, c64(cfg.bk)))]
    zero_acc = ir.Constant(acc_type, 0.0)
    if cfg.stages == 2:
        store_tiles(prefetched, c64(0))
        kernel.barrier()
        state = [zero_acc] * (cfg.tm * cfg.tn)
        with loop_carry(b, 0, per_split, state, name="ktile") as (t, accumulators, following):
            stage = b.and_(t, c64(1))
            fetched = load_following(t)
            acc = multiply(accumulators, stage)
            store_tiles(fetched, b.xor(stage, c64(1)))
            kernel.barrier()
            following.extend(acc)
    else:
        state = [zero_acc] * (cfg.tm * cfg.tn) + prefetched
        with loop_carry(b, 0, per_split, state, name="ktile") as (t, carried, following):
            store_tiles(carried[cfg.tm * cfg.tn:], c64(0))
            kernel.barrier()
            fetched = load_following(t)
            acc = multiply(carried[:cfg.tm * cfg.tn], c64(0))
            kernel.barrier()
            following.extend(acc + fetched)
    _store_c(kernel, cfg, kernel.pointer(c_name), state[:cfg.tm * cfg.tn], (c_base, row_block, col_block),
             row_starts, col_starts)


def _store_c(kernel: GpuKernel, cfg: GemmConfig, pointer: Any, accumulators: list[Any], bases: tuple[Any, Any, Any],
             row_starts: list[Any], col_starts: list[Any]) -> None:
    """Each thread writes its TM x TN accumulators, `cfg.store_width` adjacent columns per store."""
    from llvmlite import ir

    from .ptx_mma import inside_tile
    from .scalars import I32, convert, scalar, store
    b, c64 = kernel.b, kernel.const
    c_base, row_block, col_block = bases
    acc_sc = scalar(dt.float64 if cfg.in_dtype == "f64" else dt.float32)
    out_sc = scalar(dt.dtype(cfg.out_dtype))
    half_m, half_n = cfg.tm // 2, cfg.tn // 2
    width = cfg.store_width
    for i in range(cfg.tm):
        row = b.add(row_block, b.add(row_starts[i // half_m], c64(i % half_m)))
        row_offset = b.add(c_base, b.mul(row, c64(cfg.c_strides[1])))
        for j in range(0, cfg.tn, width):
            col = b.add(col_block, b.add(col_starts[j // half_n], c64(j % half_n)))
            values = [accumulators[i * cfg.tn + j + lane] for lane in range(width)]
            values = [convert(b, v, acc_sc, out_sc) if acc_sc != out_sc else v for v in values]
            offset = b.add(row_offset, b.mul(col, c64(cfg.c_strides[2])))
            inside = inside_tile(b, c64, cfg, row, col)  # with n % width == 0 the whole vector is in or out
            with b.if_then(inside) if inside is not None else contextlib.nullcontext():
                if width == 1:
                    store(b, values[0], pointer, out_sc, offset)
                else:
                    vector = ir.Constant(ir.VectorType(out_sc.element, width), None)
                    for lane, value in enumerate(values):
                        vector = b.insert_element(vector, value, ir.Constant(I32, lane))
                    address = b.gep(pointer, [offset], inbounds=True, source_etype=out_sc.element)
                    b.store(vector, address, align=width * (8 if cfg.out_dtype == "f64" else 4))


def _shared_vectors(b: Any, tile: Any, row_offset: Any, starts: list[Any], width: int, acc_type: Any) -> list[Any]:
    """The `width` consecutive shared-memory values at each start + `row_offset` (vector loads), as scalars."""
    from llvmlite import ir

    from .scalars import I32
    vector = ir.VectorType(acc_type, width)
    values = []
    for start in starts:
        index = b.trunc(b.add(start, row_offset), I32)
        address = b.bitcast(b.gep(tile, [ir.Constant(I32, 0), index], inbounds=True), vector.as_pointer(3))
        loaded = b.load(address, align=width * (8 if str(acc_type) == "double" else 4))
        values.extend(b.extract_element(loaded, ir.Constant(I32, lane)) for lane in range(width))
    return values


class _TileLoader:
    """Moves one operand tile (BK deep along k, `block` wide along x = m or n) from global memory into registers
    (`load`) and from there into shared memory laid out [k][x] (`store`). Threads walk the dimension of unit stride
    so that a warp reads consecutive addresses; f32 operands read 4 (or 2) elements at once where alignment and the
    tile's split among the threads allow."""

    def __init__(self, kernel: GpuKernel, pointer: Any, sc: Any, base: tuple[Any, int], x_block: Any,
                 x: tuple[int, int, int], k: tuple[int, int, int], tile: tuple[Any, int], tid: Any, check_k: bool):
        """base: (this block's batch offset, the batch stride); x and k: (extent, tile size, element stride)."""
        self.kernel, self.pointer, self.sc = kernel, pointer, sc
        (self.base, batch_stride), self.x_block = base, x_block
        self.x_extent, self.block, self.x_stride = x
        self.k_extent, self.depth, self.k_stride = k
        self.tile, self.pitch = tile
        self.check_k = check_k
        x_stride, k_stride = self.x_stride, self.k_stride
        self.fast = "x" if x_stride == 1 or (k_stride != 1 and abs(x_stride) <= abs(k_stride)) else "k"
        fast_stride, fast_extent, slow_stride = ((x_stride, self.x_extent, k_stride) if self.fast == "x"
                                                 else (k_stride, self.k_extent, x_stride))
        block, depth = self.block, self.depth
        fast_block = block if self.fast == "x" else depth
        widths = [width for width in (4, 2) if sc.dtype.name == "f32" and fast_stride == 1
                  and all(extent % width == 0 for extent in (fast_extent, slow_stride, batch_stride, fast_block))
                  and (block * depth) % (width * BLOCK) == 0]
        self.width = widths[0] if widths else 1
        if (block * depth) % (self.width * BLOCK):
            raise ValueError(f"a {block}x{depth} GEMM tile does not split into loads of {BLOCK} threads")
        per_row = fast_block // self.width
        b, c64 = kernel.b, kernel.const
        self.slots = []  # per load: (x, kk) of its first element, thread-dependent
        for r in range(block * depth // (self.width * BLOCK)):
            element = b.add(tid, c64(r * BLOCK))
            fast_index = b.mul(b.urem(element, c64(per_row)), c64(self.width))
            slow_index = b.udiv(element, c64(per_row))
            self.slots.append((fast_index, slow_index) if self.fast == "x" else (slow_index, fast_index))

    def load(self, k_start: Any) -> list[Any]:
        from llvmlite import ir

        from .scalars import load
        b, c64 = self.kernel.b, self.kernel.const
        values = []
        for x, kk in self.slots:
            gx, gk = b.add(self.x_block, x), b.add(k_start, kk)
            offset = b.add(self.base, b.add(b.mul(gx, c64(self.x_stride)), b.mul(gk, c64(self.k_stride))))
            inside = None
            if self.x_extent % self.block:
                inside = b.icmp_signed("<", gx, c64(self.x_extent))
            if self.check_k:
                in_k = b.icmp_signed("<", gk, c64(self.k_extent))
                inside = in_k if inside is None else b.and_(inside, in_k)
            if inside is not None:
                offset = b.select(inside, offset, c64(0))
            if self.width > 1:
                vector = ir.VectorType(self.sc.compute, self.width)
                address = b.gep(self.pointer, [offset], inbounds=True, source_etype=self.sc.element)
                value = b.load(address, typ=vector, align=4 * self.width)
                zero = ir.Constant(vector, None)
            else:
                value = load(b, self.pointer, self.sc, offset)
                zero = ir.Constant(self.sc.compute, 0.0)
            values.append(b.select(inside, value, zero) if inside is not None else value)
        return values

    def store(self, values: list[Any], stage_offset: Any) -> None:
        """Write the loaded registers into the shared tile starting `stage_offset` elements in."""
        from llvmlite import ir

        from .scalars import I32
        b, c64 = self.kernel.b, self.kernel.const
        zero32 = ir.Constant(I32, 0)
        for (x, kk), value in zip(self.slots, values):
            lanes = [b.extract_element(value, ir.Constant(I32, i)) for i in range(self.width)] \
                if self.width > 1 else [value]
            for lane, part in enumerate(lanes):
                lx, lk = (b.add(x, c64(lane)), kk) if self.fast == "x" else (x, b.add(kk, c64(lane)))
                index = b.trunc(b.add(stage_offset, b.add(b.mul(lk, c64(self.pitch)), lx)), I32)
                b.store(part, b.gep(self.tile, [zero32, index], inbounds=True))

