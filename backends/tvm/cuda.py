"""The `cuda` target: einfold programs lowered to TVM TE (`lower_te.py`), scheduled for the GPU by our own rules
(`gpu_schedules.py`: thread-block tiled GEMM with shared-memory staging and register tiles, fused epilogues),
turned into CUDA C by TVM's CUDA codegen and into a `GpuProgram` (kernels, launches, buffers) that
`einfold.backends.cupy_runtime` runs with only numpy and CuPy on the GPU machine.

The launch plan is read from the host side TVM generates: each kernel call names its kernel, its buffer arguments
in order and its grid and block extents (the schedule's thread bindings); buffers TVM allocates between kernels
become temporaries. With `nvcc` on the PATH the kernels are shipped as PTX (`--ptx`, assembled here); otherwise,
or with the option `ship=cuda`, as CUDA C that CuPy compiles with NVRTC on the GPU machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from einfold.backend_api import Lowered
from einfold.errors import UnsupportedError
from einfold.ir import Program

from ..cupy_runtime import Buffer, GpuProgram, Launch

DESCRIPTION = "CUDA C through TVM's CUDA codegen with einfold's GPU schedules (tiled shared-memory GEMM, fused " \
              "epilogues); runs through CuPy"
ARCHES = ("sm_80", "sm_86", "sm_89", "sm_90")
SHIPPED = ("ptx", "cuda")  # what the GPU program carries: PTX (nvcc here) or CUDA C (NVRTC there)
ERROR_FLAG = "einfold_error"
THREAD_TAGS = ("blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z")
DYNAMIC_SHARED_TAG = "tirx.use_dyn_shared_memory"


def available() -> tuple[bool, str]:
    try:
        import tvm
        from tvm import s_tir, te  # noqa: F401
    except ImportError as error:
        return False, f"apache-tvm is not importable: {error}"
    if tvm.get_global_func("target.build.cuda", allow_missing=True) is None:
        return False, "this TVM build has no CUDA code generator (target.build.cuda)"
    return True, ""


def passes(options: dict) -> list[str]:
    return ["contraction-plan", "fuse-epilogue"]


def lower(program: Program, options: dict) -> Lowered:
    from ..llvm.ptx import gpu_lowered

    arch = str(options.get("arch", "sm_90"))
    if arch not in ARCHES:
        raise UnsupportedError(f"the cuda target generates code for {', '.join(ARCHES)}; got arch={arch!r}")
    ship = str(options.get("ship", "ptx" if nvcc_path() else "cuda"))
    if ship not in SHIPPED:
        raise UnsupportedError(f"the cuda target ships kernels as {' or '.join(SHIPPED)}; got ship={ship!r}")
    built = build(program, arch, ship)
    emits = {"cuda": lambda: built.cuda_source, "tir": lambda: built.tir}
    if built.gpu.source_kind == "ptx":
        emits["ptx"] = lambda: built.gpu.source
    stats = {"cuda_kernels": [f"{launch.kernel}: {launch.note}" for launch in built.gpu.launches],
             "cuda_shipped_as": built.gpu.source_kind, "tvm_stages": built.stage_count,
             "tvm_inlined": built.inlined}
    lowered = gpu_lowered(program, built.gpu, emits, stats, "cuda")
    lowered.stages["tvm-tir"] = built.tir
    return lowered


@dataclass(frozen=True)
class Built:
    """What `build` makes: the GPU program, the CUDA C it came from and the scheduled TIR."""

    gpu: GpuProgram
    cuda_source: str
    tir: str
    stage_count: int
    inlined: int


def build(program: Program, arch: str = "sm_90", ship: str = "ptx") -> Built:
    """Lower, schedule and generate CUDA for a program whose einsums are binary (after `contraction-plan`)."""
    import tvm
    from tvm import te

    from .gpu_schedules import gpu_tiling, schedule_graph
    from .gpu_tensorcore import apply_tensor_intrinsics, tensor_core_stages
    from .lower_te import lower_program
    from .schedules import Machine

    graph = lower_program(program, Machine("cuda", 16, 1), gpu_tiling)
    schedule = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func(graph.params)}))
    rules = schedule_graph(schedule, graph, graph.reachable(), tensor_core_stages(program, graph))
    module = apply_tensor_intrinsics(schedule.mod)
    host, device = _lower_to_host_and_device(module, arch)
    cuda_source = _self_contained(device) + _check_kernels(len(graph.checks))
    buffers, inputs, outputs, constants = _param_buffers(program, graph)
    launches = _launches(host, buffers, _kernel_notes(module["main"], rules))
    for index, (flag, _) in enumerate(graph.checks):
        launches.append(Launch(f"einfold_check{index}", (1, 1, 1), (1, 1, 1), (flag.op.name,), 0,
                               f"report the check %{flag.op.name} as error {index + 1}"))
    messages = {index + 1: message for index, (_, message) in enumerate(graph.checks)}
    shipped = compile_ptx(cuda_source, arch) if ship == "ptx" else cuda_source
    gpu = GpuProgram(name=program.name, source_kind=ship, source=shipped, buffers=tuple(buffers.values()),
                     launches=tuple(launches), inputs=inputs, outputs=outputs, constants=constants,
                     error_flag=ERROR_FLAG if graph.checks else None, error_messages=messages, arch=arch)
    return Built(gpu, cuda_source, module.script(), len(graph.stages), len(graph.inlined))


# ----- TVM: scheduled module -> host function + CUDA source ---------------------------------------------------

def _lower_to_host_and_device(mod: Any, arch: str) -> tuple[Any, str]:
    """Run TVM's TIR pipeline for CUDA (as `tvm.compile` does) and generate the device code; returns the host
    function that launches the kernels and the CUDA source. The host side is read, never compiled."""
    import tvm
    from tvm.tirx.build import codegen_build, split_host_device_mods

    target = tvm.target.Target({"kind": "cuda", "arch": arch})
    mod = tvm.tirx.transform.BindTarget(target.with_host(tvm.target.Target("llvm")))(mod)
    pipeline, _, finalize_device = tvm.tirx.get_default_tir_pipeline(target)
    try:
        mod = pipeline(mod)
    except RuntimeError as error:  # TVM's errors: a loop left unbound, shared memory over the limit, ...
        raise UnsupportedError(f"the cuda target could not lower this program: {str(error).splitlines()[-1]}") \
            from None
    host, devices = split_host_device_mods(mod)
    sources = [codegen_build(finalize_device()(device), target).inspect_source() for device in devices.values()]
    return host["main"], "\n".join(sources)


_PREAMBLE_END = re.compile(r"#ifdef _WIN32.*?#endif\n", re.S)


def _self_contained(source: str) -> str:
    """TVM's CUDA source with its NVRTC branch made header-free: fixed-width integer types declared directly
    (TVM includes libcu++ for them, which NVRTC does not always find)."""
    start = source.find("#ifdef __CUDACC_RTC__")
    end = source.find("#else", start)
    if start < 0 or end < 0:
        return source
    types = "\n".join(f"  typedef {c_type} {name};" for name, c_type in (
        ("int8_t", "signed char"), ("uint8_t", "unsigned char"), ("int16_t", "short"),
        ("uint16_t", "unsigned short"), ("int32_t", "int"), ("uint32_t", "unsigned int"),
        ("int64_t", "long long"), ("uint64_t", "unsigned long long")))
    return source[:start] + "#ifdef __CUDACC_RTC__\n" + types + "\n" + source[end:]


def _check_kernels(count: int) -> str:
    """A flag einfold's runtime reads after a call, and one single-thread kernel per runtime check (integer division
    by zero, negative integer powers) copying the check's result into it as the check's error code."""
    if not count:
        return ""
    lines = [f'\nextern "C" {{ __device__ int {ERROR_FLAG}; }}']
    for index in range(count):
        lines.append(f'extern "C" __global__ void einfold_check{index}(const int* __restrict__ flag) {{\n'
                     f"  if (flag[0] != 0 && {ERROR_FLAG} == 0) {ERROR_FLAG} = {index + 1};\n}}")
    return "\n".join(lines) + "\n"


def nvcc_path() -> str | None:
    return shutil.which("nvcc")


def compile_ptx(cuda_source: str, arch: str) -> str:
    """CUDA C -> PTX with nvcc (`-arch=<arch> --ptx -O3`); UnsupportedError with nvcc's message on failure."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise UnsupportedError("the cuda target needs nvcc to ship PTX (ship=ptx); put the CUDA toolkit on PATH "
                               "or compile with ship=cuda (NVRTC on the GPU machine)")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernels.cu"
        path.write_text(cuda_source)
        result = subprocess.run([nvcc, f"-arch={arch}", "--ptx", "-O3", "-std=c++17", str(path), "-o",
                                 str(path.with_suffix(".ptx"))], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise UnsupportedError(f"nvcc rejected the generated CUDA: {result.stderr.strip()[:2000]}")
        return path.with_suffix(".ptx").read_text()


# ----- the launch plan --------------------------------------------------------------------------------------

def _param_buffers(program: Program, graph: Any) -> tuple[dict[str, Buffer], tuple[str, ...], tuple[str, ...],
                                                          dict[str, Any]]:
    """A buffer for each parameter of the TVM function: inputs, weights, outputs (program order) and check flags."""
    from ..llvm.ptx import storage_dtype

    buffers: dict[str, Buffer] = {}
    constants: dict[str, Any] = {}
    for op, tensor in zip(program.inputs, graph.inputs):
        buffers[tensor.op.name] = _buffer(tensor.op.name, op.type, "input", storage_dtype)
    for op, tensor, data in zip(program.consts, graph.consts, graph.const_data):
        buffers[tensor.op.name] = _buffer(tensor.op.name, op.type, "const", storage_dtype)
        constants[tensor.op.name] = data
    for value, tensor in zip(program.outputs, graph.outputs):
        buffers[tensor.op.name] = _buffer(tensor.op.name, program.type_of(value), "output", storage_dtype)
    for flag, _ in graph.checks:
        buffers[flag.op.name] = Buffer(flag.op.name, (1,), "int32", "temp", "i32")
    inputs = tuple(t.op.name for t in graph.inputs)
    outputs = tuple(t.op.name for t in graph.outputs)
    return buffers, inputs, outputs, constants


def _buffer(name: str, value_type: Any, role: str, storage_dtype: Any) -> Buffer:
    return Buffer(name, tuple(value_type.shape), storage_dtype(value_type.dtype, name), role, str(value_type.dtype))


def _children(node: Any) -> list[Any]:
    """The statements directly inside a TIR statement (loops, blocks, sequences, branches)."""
    found = []
    for field in ("seq", "block", "init", "body", "then_case", "else_case"):
        child = getattr(node, field, None)
        if child is None or isinstance(child, (str, int)):
            continue
        found.extend(child if field == "seq" else [child])
    return found


def _kernel_notes(func: Any, rules: dict[str, str]) -> list[str]:
    """For each top-level loop nest of the scheduled function (one kernel each, in launch order), the stages it
    computes and the rules they got."""
    notes = []
    for nest in _children(func.body.block.body) if type(func.body.block.body).__name__ == "SeqStmt" \
            else [func.body.block.body]:
        names, pending = [], [nest]
        while pending:
            node = pending.pop()
            if type(node).__name__ == "SBlock":
                name = re.sub(r"_(update|init)$", "", node.name_hint)  # decompose_reduction's block names
                name = name[:-2] if name not in rules and name.endswith("_o") else name  # blockize's outer blocks
                if name in rules and name not in names:
                    names.append(name)
            pending.extend(reversed(_children(node)))
        notes.append("; ".join(f"{name}: {rules[name]}" for name in names if rules[name] != "inlined"))
    return notes


def _launches(host: Any, buffers: dict[str, Buffer], notes: list[str]) -> list[Launch]:
    """The kernel calls of the host function in order; buffers it allocates are added to `buffers` as temps.
    `notes` describe the kernels in order (used when there is one per launch)."""
    aliases: dict[str, str] = {}
    launches: list[Launch] = []

    def root(name: str) -> str:
        while name in aliases and aliases[name] != name:
            name = aliases[name]
        return name

    def visit(node: Any) -> None:
        kind = type(node).__name__
        if kind == "SeqStmt":
            for child in node.seq:
                visit(child)
            return
        if kind in ("DeclBuffer", "AllocBuffer"):
            buffer = node.buffer
            data = buffer.data
            if type(data).__name__ == "Call" and data.op.name == "tirx.buffer_data":
                aliases[buffer.name] = str(data.args[0].name)
            if kind == "AllocBuffer" and buffer.name not in buffers:
                size = 1
                for dim in buffer.shape:
                    size *= int(dim)
                buffers[buffer.name] = Buffer(buffer.name, (size,), str(buffer.dtype), "temp", str(buffer.dtype))
        if kind == "Evaluate" and type(node.value).__name__ == "Call" \
                and getattr(node.value.op, "name", "") == "tirx.call_ffi_kernel":
            launches.append(_launch(node.value, root, buffers))
        for field in ("body", "then_case", "else_case"):
            child = getattr(node, field, None)
            if child is not None:
                visit(child)

    visit(host.body)
    if len(notes) == len(launches):
        launches = [replace(launch, note=note or launch.note) for launch, note in zip(launches, notes)]
    return [launch for launch in launches if 0 not in launch.grid and 0 not in launch.block]  # empty stages


def _launch(call: Any, root: Any, buffers: dict[str, Buffer]) -> Launch:
    """One kernel call: name, buffer arguments, then one launch value per thread tag (and dynamic shared bytes)."""
    kernel = str(call.args[0].value)
    args, values = [], []
    for arg in call.args[1:]:
        if type(arg).__name__ == "Call" and arg.op.name == "tirx.buffer_data":
            name = root(str(arg.args[0].name))
            if name not in buffers:
                raise UnsupportedError(f"cuda target: kernel {kernel} reads buffer {name!r} that the launch plan "
                                       "does not know")
            args.append(name)
        elif type(arg).__name__ == "IntImm":
            values.append(int(arg.value))
        else:
            raise UnsupportedError(f"cuda target: kernel {kernel} takes an argument einfold cannot pass ({arg})")
    tags = [str(tag) for tag in call.attrs.launch_params]
    unknown = [tag for tag in tags if tag not in THREAD_TAGS and tag != DYNAMIC_SHARED_TAG]
    if unknown:
        raise UnsupportedError(f"cuda target: kernel {kernel} needs launch features einfold does not support: "
                               f"{unknown}")
    extents = dict(zip([tag for tag in tags if tag in THREAD_TAGS], values))
    shared = values[-1] if DYNAMIC_SHARED_TAG in tags else 0
    grid = tuple(extents.get(f"blockIdx.{axis}", 1) for axis in "xyz")
    block = tuple(extents.get(f"threadIdx.{axis}", 1) for axis in "xyz")
    return Launch(kernel, grid, block, tuple(args), shared, ", ".join(args))
