"""The compile driver: source -> Program -> passes -> backend, keeping every stage for inspection.

    exe = einfold.compile("ij,jk->ik", shapes=[(64, 32), (32, 16)], target="numpy")
    exe(a, b); exe.stages; exe.ir("cse"); exe.source(); exe.stats()
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import dtypes as dt
from .backend_api import Lowered
from .errors import Error, RuntimeFailure, UnsupportedError
from .ir import Program
from .passmanager import PassManager


def to_program(source: Program | str | os.PathLike, shapes: Sequence[Sequence[int]] | None = None,
               dtype: object = "f32", dims: dict[str, int] | None = None) -> Program:
    """Any accepted source as a Program: a Program, IR text, a `.ein` path or text, or a spec + shapes."""
    if isinstance(source, Program):
        return source
    if shapes is not None:
        if not isinstance(source, str):
            raise Error("shapes= goes with an einsum spec string, e.g. compile('ij,jk->ik', shapes=[...])")
        return spec_program(source, shapes, dtype)
    if isinstance(source, str) and source.lstrip().startswith("program @"):
        from .textir import parse_ir
        return parse_ir(source)
    from .frontend.dsl import load_ein
    if isinstance(source, os.PathLike) or (isinstance(source, str) and source.endswith(".ein")
                                           and "\n" not in source):
        path = Path(source)
        if not path.exists():
            raise Error(f"no such file: {path}")
        return load_ein(path, dims=dims)
    if isinstance(source, str):
        return load_ein(source, dims=dims)
    raise Error(f"cannot compile a {type(source).__name__}: give a Program, a .ein path or text, "
                "IR text, or an einsum spec with shapes=")


def spec_program(subscripts: str, shapes: Sequence[Sequence[int]], dtype: object = "f32") -> Program:
    """One einsum over inputs named in0, in1, ... of the given shapes."""
    program = Program("einsum")
    names = [program.input(f"in{k}", shape, dtype) for k, shape in enumerate(shapes)]
    program.set_outputs(program.einsum(subscripts, *names))
    return program


class Executable:
    """A compiled program: call it on arrays; look at its stages, source and figures."""

    def __init__(self, program: Program, target: str, lowered: Lowered, stages: dict[str, str],
                 pass_seconds: dict[str, float], compile_seconds: float, input_program: Program):
        self.program = program
        self.target = target
        self._lowered = lowered
        self._stages = stages
        self._pass_seconds = pass_seconds
        self._compile_seconds = compile_seconds
        self._input_program = input_program

    def __repr__(self) -> str:
        return f"<einfold.Executable @{self.program.name} target={self.target}>"

    def __getattr__(self, name: str) -> Any:
        """Target-specific methods (e.g. `keygen`, `encrypt` of the ckks target)."""
        api = self.__dict__.get("_lowered").api if "_lowered" in self.__dict__ else {}
        if name in api:
            return api[name]
        raise AttributeError(f"{type(self).__name__} for target {self.__dict__.get('target')!r} has no "
                             f"attribute {name!r}")

    @property
    def stages(self) -> list[str]:
        return list(self._stages)

    def ir(self, stage: str | None = None) -> str:
        """IR text at a stage (default: the final einfold IR)."""
        if stage is None:
            return str(self.program)
        if stage not in self._stages:
            raise Error(f"no stage {stage!r}; stages: {', '.join(self._stages)}")
        return self._stages[stage]

    def source(self, emit: str | None = None) -> str:
        """The generated code (`emit` picks the kind: 'ir', 'dot', or what the target offers)."""
        kind = emit or self._lowered.source_kind or "ir"
        if kind == "ir":
            return str(self.program)
        if kind == "dot":
            from .graph import to_dot
            return to_dot(self.program)
        return self._lowered.emit(kind)

    @property
    def noise(self) -> float:
        """Absolute error this target may add beyond rounding (0 except for approximate targets like CKKS)."""
        return self._lowered.noise

    @property
    def emit_kinds(self) -> list[str]:
        return ["ir", "dot", *self._lowered.emits]

    def stats(self) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "flops": self.program.flops(),
            "flops_input": self._input_program.flops(),
            "params": self.program.params(),
            "ops": len(self.program.ops),
            "compile_seconds": self._compile_seconds,
            "pass_seconds": dict(self._pass_seconds),
        }
        plans = [op.attrs["plan"] for op in self.program.ops if "plan" in op.attrs]
        if plans:
            figures["contractions"] = plans
        choices = {op.attrs["factorization"]["weight"]: op.attrs["factorization"]
                   for op in self.program.ops if "factorization" in op.attrs}
        if choices:
            figures["factorization"] = choices
            figures["flops_dense"] = figures["flops"] + sum(c["flops_dense"] - c["flops"] for c in choices.values())
        else:
            figures["flops_dense"] = figures["flops"]
        figures.update(self._lowered.stats)
        return figures

    def check_inputs(self, arrays: Sequence[object]) -> list[np.ndarray]:
        """Inputs as arrays of the program's types, or a clear error naming the input at fault."""
        inputs = self.program.inputs
        if len(arrays) != len(inputs):
            names = ", ".join(f"%{op.result}: {op.type}" for op in inputs)
            raise RuntimeFailure(f"@{self.program.name} takes {len(inputs)} input(s) ({names}), "
                                 f"got {len(arrays)}")
        checked = []
        for op, array in zip(inputs, arrays):
            value = np.asarray(array)
            if value.shape != op.type.shape:
                raise RuntimeFailure(f"input %{op.result} must have shape {op.type.shape}, got {value.shape}")
            checked.append(_coerce(value, op.type.dtype, op.result))
        return checked

    def __call__(self, *arrays: object) -> np.ndarray | tuple[np.ndarray, ...]:
        outputs = self._lowered.run(self.check_inputs(arrays))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _coerce(value: np.ndarray, element: dt.DType, name: str) -> np.ndarray:
    if element.is_modular:
        if value.dtype.kind not in "iu" or (value.size and (value.min() < 0 or int(value.max()) >= element.modulus)):
            raise RuntimeFailure(f"input %{name} is {element}: give integers in [0, {element.modulus})")
        return value.astype(np.uint64)
    if value.dtype == element.numpy:
        return value
    if not np.can_cast(value.dtype, element.numpy, "same_kind"):
        raise RuntimeFailure(f"input %{name} is {element}; cannot safely cast {value.dtype} to it")
    return value.astype(element.numpy)


def pipeline(default: list[str], target_passes: list[str], options: dict[str, Any]) -> list[str]:
    """The pass list: the default pipeline, `factorize` after constant folding when asked for, the target's own."""
    names = list(default)
    if options.get("factorize", "none") != "none":
        names.insert(names.index("constant-fold") + 1, "factorize")
    return names + [name for name in target_passes if name not in names]


def compile(source: Program | str | os.PathLike, target: str = "numpy", passes: Iterable[str] | None = None,
            print_after: Iterable[str] | str | None = None, shapes: Sequence[Sequence[int]] | None = None,
            dtype: object = "f32", dims: dict[str, int] | None = None, stream: TextIO | None = None,
            **options: Any) -> Executable:
    """Compile a program for `target`. `passes=None` runs the default pipeline plus the target's passes."""
    from . import backends
    from .passes import DEFAULT_PIPELINE
    from .passes import get as get_pass

    start = time.perf_counter()
    program = to_program(source, shapes, dtype, dims).verify()
    backend = backends.get(target)
    ok, reason = backend.available()
    if not ok:
        raise UnsupportedError(f"target {target!r} is not available here: {reason}")
    names = list(passes) if passes is not None else pipeline(DEFAULT_PIPELINE, backend.passes(options), options)
    manager = PassManager([get_pass(n) for n in names], print_after, stream or sys.stdout)
    stages = {"input": str(program)}
    final, records = manager.run(program, {**options, "target": target})
    for record in records:
        stage = record.name if record.name not in stages else f"{record.name}.{len(stages)}"
        stages[stage] = record.ir
    lowered = backend.lower(final, {**options, "target": target})
    stages.update(lowered.stages)
    return Executable(final, target, lowered, stages, {r.name: r.seconds for r in records},
                      time.perf_counter() - start, program)
