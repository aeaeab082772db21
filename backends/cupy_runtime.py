"""The shared GPU runtime: a `GpuProgram` is plain data (kernel source or PTX, buffers, launches) that runs through
CuPy's `RawModule`, keeping every buffer on the GPU across the launches of one call; it saves to and loads from
JSON + npz, and imports nothing from einfold, so a machine with only numpy and CuPy can run a shipped bundle."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROLES = ("input", "output", "const", "temp")
SOURCE_KINDS = ("cuda", "ptx")


class GpuUnavailable(RuntimeError):
    """No CUDA GPU (or no CuPy) here. The einfold targets turn this into `einfold.RuntimeFailure`."""


@dataclass(frozen=True)
class Buffer:
    """One device array: `dtype` is the numpy storage type ('uint16' holds bf16 bits, 'uint8' holds bool);
    `logical` is the einfold dtype name; `alias` names the buffer whose memory this one views (a reshape)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str
    logical: str
    alias: str | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Launch:
    """One kernel launch: grid and block sizes, dynamic shared memory bytes, and its pointer arguments in order."""

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple[str, ...]
    shared_bytes: int = 0
    note: str = ""


@dataclass(frozen=True)
class GpuProgram:
    """A compiled GPU program. `inputs` and `outputs` name buffers in the einfold program's order; after a call
    the global `error_flag` (if any) holds 0 or a key of `error_messages`."""

    name: str
    source_kind: str
    source: str
    buffers: tuple[Buffer, ...]
    launches: tuple[Launch, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    constants: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    error_flag: str | None = None
    error_messages: dict[int, str] = field(default_factory=dict)
    arch: str = "sm_90"

    def buffer(self, name: str) -> Buffer:
        for buffer in self.buffers:
            if buffer.name == name:
                return buffer
        raise KeyError(f"GPU program {self.name!r} has no buffer {name!r}")

    def describe(self) -> str:
        """The launch plan, one line per launch (shown as an IR stage)."""
        lines = [f"gpu program @{self.name} ({self.source_kind}, {self.arch})"]
        for b in self.buffers:
            alias = f" = view of {b.alias}" if b.alias else ""
            lines.append(f"  buffer {b.name}: {b.logical}{list(b.shape)} {b.role}{alias}")
        for launch in self.launches:
            shared = f" shared={launch.shared_bytes}" if launch.shared_bytes else ""
            note = f"  // {launch.note}" if launch.note else ""
            lines.append(f"  launch {launch.kernel} grid={list(launch.grid)} block={list(launch.block)}{shared}"
                         f" ({', '.join(launch.args)}){note}")
        lines.append(f"  return {', '.join(self.outputs)}")
        return "\n".join(lines)

    # ----- serialisation ---------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write `<name>.json` (everything but the constants) and `<name>.npz` (the constants) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data.pop("constants")
        data["error_messages"] = {str(k): v for k, v in self.error_messages.items()}
        path = folder / f"{self.name}.json"
        path.write_text(json.dumps(data, indent=1))
        np.savez(folder / f"{self.name}.npz", **{k: _storage_view(v) for k, v in self.constants.items()})
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> GpuProgram:
        path = Path(path)
        data = json.loads(path.read_text())
        with np.load(path.with_suffix(".npz")) as arrays:
            constants = {k: arrays[k] for k in arrays.files}
        return GpuProgram(
            name=data["name"], source_kind=data["source_kind"], source=data["source"],
            buffers=tuple(Buffer(b["name"], tuple(b["shape"]), b["dtype"], b["role"], b["logical"], b["alias"])
                          for b in data["buffers"]),
            launches=tuple(Launch(x["kernel"], tuple(x["grid"]), tuple(x["block"]), tuple(x["args"]),
                                  x["shared_bytes"], x["note"]) for x in data["launches"]),
            inputs=tuple(data["inputs"]), outputs=tuple(data["outputs"]), constants=constants,
            error_flag=data["error_flag"], error_messages={int(k): v for k, v in data["error_messages"].items()},
            arch=data["arch"])


def _storage_view(array: np.ndarray) -> np.ndarray:
    """An array as its storage type: bfloat16 as uint16 bits, bool as uint8 (what the kernels read)."""
    array = np.asarray(array, order="C")
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if array.dtype.name == "bfloat16":
        return array.view(np.uint16)
    return array


def cupy_module() -> Any:
    """CuPy, once a usable GPU is known to be present; otherwise GpuUnavailable saying why not."""
    try:
        import cupy
    except ImportError as error:
        raise GpuUnavailable(f"no CUDA GPU present: CuPy is not installed ({error}); install einfold[gpu] "
                             "on a machine with an NVIDIA GPU") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError when there is no driver or device
        raise GpuUnavailable(f"no CUDA GPU present: {type(error).__name__}: {error}") from None
    if count == 0:
        raise GpuUnavailable("no CUDA GPU present: the CUDA runtime sees 0 devices")
    return cupy


def device_arch() -> str:
    """The compute capability of the current GPU, as 'sm_90'."""
    cupy = cupy_module()
    major = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["major"]
    minor = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["minor"]
    return f"sm_{major}{minor}"


class GpuRunner:
    """Runs a GpuProgram: the module is loaded and constants/temporaries allocated on the first call."""

    def __init__(self, program: GpuProgram):
        self.program = program
        self._kernels: dict[str, Any] | None = None
        self._arrays: dict[str, Any] = {}
        self._cupy: Any = None
        self._flag: Any = None
        self._aliases: list[tuple[str, str, tuple[int, ...]]] = []
        self._inputs: list[tuple[str, tuple[int, ...], str]] = []

    def _prepare(self) -> None:
        if self._kernels is not None:
            return
        cupy = cupy_module()
        program = self.program
        if program.source_kind == "ptx":
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as handle:
                handle.write(program.source)
            try:
                module = cupy.RawModule(path=handle.name)
                module.compile()
            finally:
                os.unlink(handle.name)
        elif program.source_kind == "cuda":
            module = cupy.RawModule(code=program.source, options=("--std=c++17",), backend="nvrtc")
        else:
            raise ValueError(f"unknown GPU source kind {program.source_kind!r}; expected one of {SOURCE_KINDS}")
        kernels = {}
        for launch in program.launches:
            if launch.kernel not in kernels:
                kernel = module.get_function(launch.kernel)
                if launch.shared_bytes > 48 * 1024:
                    kernel.max_dynamic_shared_size_bytes = launch.shared_bytes
                kernels[launch.kernel] = kernel
        for buffer in program.buffers:
            if buffer.alias is not None:
                continue
            if buffer.role == "const":
                self._arrays[buffer.name] = cupy.asarray(program.constants[buffer.name]).reshape(buffer.shape)
            elif buffer.role in ("temp", "output"):
                self._arrays[buffer.name] = cupy.empty(buffer.shape, dtype=buffer.dtype)
        self._module = module
        self._kernels = kernels
        self._cupy = cupy
        # the flag starts at 0 (its initializer) and is put back to 0 whenever a call finds it set
        self._flag = cupy.ndarray((1,), cupy.int32, module.get_global(program.error_flag)) \
            if program.error_flag else None
        self._aliases = [(b.name, b.alias, b.shape) for b in program.buffers if b.alias is not None]
        self._inputs = [(name, program.buffer(name).shape, program.buffer(name).dtype) for name in program.inputs]

    def run_device(self, inputs: list[Any]) -> list[Any]:
        """Run on device arrays (CuPy, storage dtypes, C-contiguous); returns the output device arrays."""
        self._prepare()
        program = self.program
        arrays = dict(self._arrays)
        if len(inputs) != len(program.inputs):
            raise ValueError(f"{program.name}: expected {len(program.inputs)} input(s), got {len(inputs)}")
        for (name, shape, dtype), value in zip(self._inputs, inputs):
            if tuple(value.shape) != shape or str(value.dtype) != dtype:
                raise ValueError(f"input {name}: expected {dtype}{list(shape)}, got {value.dtype}{list(value.shape)}")
            arrays[name] = self._cupy.ascontiguousarray(value)
        for name, alias, shape in self._aliases:
            arrays[name] = arrays[alias].reshape(shape)
        for launch in program.launches:
            self._kernels[launch.kernel](launch.grid, launch.block, tuple(arrays[a] for a in launch.args),
                                         shared_mem=launch.shared_bytes)
        if self._flag is not None:
            code = int(self._flag.get()[0])
            if code:
                self._flag.fill(0)
                raise ArithmeticError(program.error_messages.get(code, f"error code {code}"))
        return [arrays[name] for name in program.outputs]

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run on host arrays: copy in, run, copy the outputs back (outputs in their storage dtypes)."""
        self._prepare()
        device = [self._cupy.asarray(_storage_view(x)) for x in inputs]
        return [self._cupy.asnumpy(out) for out in self.run_device(device)]
