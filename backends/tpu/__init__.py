"""The `tpu` target: a TPU-style matrix engine (systolic arrays + vector unit) with a cycle model, a bit-exact numpy
executor and a JAX emitter; modular matmuls by constants go through BAT (int8 GEMM + shift-add + Barrett).

    exe = einfold.compile(einfold.he.ntt(2**12, [q]), target="tpu"); exe(x); exe.source("tpu"); exe.stats()
Options: engine={...} (fields of `Engine`), ntt_rows=R (the three-step split), run="numpy" | "jax".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from einfold.backend_api import Lowered
from einfold.errors import UnsupportedError
from einfold.ir import Program

from .engine import engine_from_options
from .executor import execute
from .jax_emit import emit_jax, load_jax, write_jax
from .schedule import plan, report, summarize
from .tiling import listing, lower_program

DESCRIPTION = "TPU-style matrix engine model: tiled int8/bf16 GEMMs, BAT modular matmuls, cycle model, JAX emitter"


def available() -> tuple[bool, str]:
    return True, ""


def passes(options: dict) -> list[str]:
    return ["contraction-plan", "ntt-three-step", "mat-fold"]


def lower(program: Program, options: dict) -> Lowered:
    engine = engine_from_options(options)
    tiled = lower_program(program, engine)
    costs, slots, peak = plan(tiled)
    mode = options.get("run", "numpy")
    if mode not in ("numpy", "jax"):
        raise UnsupportedError(f"tpu: run= must be 'numpy' or 'jax', got {mode!r}")
    jax_runner: list[Any] = []

    def run_jax(inputs: list) -> list:
        if not jax_runner:
            jax_runner.append(load_jax(tiled))
        return jax_runner[0](inputs)

    def run(inputs: list) -> list:
        return execute(tiled, inputs) if mode == "numpy" else run_jax(inputs)

    def run_jax_api(*arrays: Any) -> Any:
        """The emitted JAX program on these inputs (run under XLA here), unpacked like `exe(...)`."""
        outputs = run_jax([np.asarray(a) for a in arrays])
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    return Lowered(
        run=run,
        emits={"tpu": lambda: listing(tiled, costs, slots), "jax": lambda: emit_jax(tiled)},
        stages={"tpu": listing(tiled, costs, slots)},
        stats=summarize(tiled, costs, slots),
        api={"tiled_program": lambda: tiled, "cost_report": lambda: report(tiled, costs, slots, peak),
             "schedule": lambda: slots,
             "run_jax": run_jax_api,
             "write_jax": lambda path: write_jax(tiled, path)},
        source_kind="tpu",
    )
