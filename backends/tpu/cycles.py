"""Per-step unit costs of a tiled program on the engine (the formulas are in docs/tpu.md; schedule.py overlaps them).

    stream = ceil(tiles / arrays) * max(ceil(S / rate), array_rows);   mxu = stream + array_rows + array_cols
            (S = columns streamed past each weight tile; a weight tile loads in array_rows cycles behind the
            previous tile's stream; the pipeline fills and drains once per step, in array_rows + array_cols
            cycles whatever the data type; int8 streams at `int8_rate` values per cell per cycle)
    vpu   = ceil(32-bit ops / vpu_lanes);   hbm = bytes / (HBM bytes per cycle);   step = max(mxu, vpu, hbm)
with MXU busy = MACs / (array_rows x array_cols x rate): the array-cycles the MACs need at full occupancy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .engine import Engine
from .tiling import (
    Bytes,
    Combine,
    FloatGemm,
    Gemm,
    ModElementwise,
    Reduce,
    Step,
    TiledProgram,
    Vector,
    step_inputs,
)

# 32-bit vector-unit operations per element, by the number of 32-bit words of q (1: q < 2^31, 2: up to 2^62).
BARRETT_OPS = {1: 20, 2: 60}
PRODUCT_OPS = {1: 4, 2: 16}
ADD_OPS_PER_WORD = 4


def words(q: int) -> int:
    return 1 if (q - 1).bit_length() <= 31 else 2


@dataclass(frozen=True)
class StepCost:
    """Figures of one step: unit cycles (`stream` = the MXU's part before the fill and drain), HBM bytes, MACs, MXU
    busy array-cycles, vector ops, the program inputs and constants it loads from HBM, and the step's cycles."""

    mxu: int
    stream: int
    vpu: int
    hbm_bytes: int
    hbm: int
    macs: int
    busy: float
    vpu_ops: int
    loads: tuple[str, ...] = ()

    @property
    def cycles(self) -> int:
        return max(self.mxu, self.vpu, self.hbm)

    def summary(self) -> str:
        parts = [f"{self.cycles} cyc"]
        if self.mxu:
            parts.append(f"mxu {self.mxu}, {self.macs} MAC")
        if self.vpu:
            parts.append(f"vpu {self.vpu}")
        if self.hbm_bytes:
            parts.append(f"hbm {self.hbm_bytes} B")
        return "; ".join(parts)


def stream_cycles(engine: Engine, tiles: int, streamed: int, input_type: str) -> int:
    """Cycles the arrays stream: tiles / arrays rounds, each max(S / rate, the weight tile's load)."""
    per_tile = max(math.ceil(streamed / engine.rate(input_type)), engine.array_rows)
    return math.ceil(tiles / engine.arrays) * per_tile


def mxu_cycles(engine: Engine, tiles: int, streamed: int, input_type: str) -> int:
    """One GEMM step on its own: the stream, then one fill and drain of the pipeline."""
    return stream_cycles(engine, tiles, streamed, input_type) + engine.array_rows + engine.array_cols


def vpu_ops(step: Step) -> int:
    size = math.prod(step.shape)
    if isinstance(step, Reduce):
        return size * BARRETT_OPS[2]
    if isinstance(step, Bytes):
        return step.pre * step.j * step.post * 3 * step.k
    if isinstance(step, Combine):
        block = step.block
        if block.barrett.wide or block.k_out > 4:
            per = 4 * (block.k_out + 3 * block.k_out) + 4 + BARRETT_OPS[2]
        else:
            per = 2 * (block.k_out + 2 * (block.k_out - 1)) + 2 + BARRETT_OPS[1]
        return size * per
    if isinstance(step, ModElementwise):
        w = words(step.q)
        per = PRODUCT_OPS[w] + BARRETT_OPS[w] if step.op == "mul" else ADD_OPS_PER_WORD * w
        return size * per
    if isinstance(step, Vector):
        return size * step.ops_per_element
    return 0


def step_cost(step: Step, engine: Engine, hbm_bytes: int, loads: tuple[str, ...] = ()) -> StepCost:
    stream, macs, busy = 0, 0, 0.0
    if isinstance(step, Gemm):
        tiles = math.ceil(step.m / engine.array_rows) * math.ceil(step.kc / engine.array_cols)
        stream = stream_cycles(engine, tiles, step.pre * step.post, step.input_type)
        macs = step.macs
    elif isinstance(step, FloatGemm):
        tiles = step.batch * math.ceil(step.k / engine.array_rows) * math.ceil(step.n / engine.array_cols)
        stream = stream_cycles(engine, tiles, step.m, "bf16")
        macs = step.macs
    mxu = stream + engine.array_rows + engine.array_cols if stream else 0
    if macs:
        busy = macs / (engine.array_rows * engine.array_cols * engine.rate(step.input_type))
    ops = vpu_ops(step)
    return StepCost(mxu, stream, math.ceil(ops / engine.vpu_lanes), hbm_bytes,
                    math.ceil(hbm_bytes / engine.hbm_bytes_per_cycle), macs, busy, ops, loads)


def _nbytes(step: Step) -> int:
    return math.prod(step.shape) * np.dtype(step.dtype).itemsize


def external_bytes(tiled: TiledProgram) -> dict[str, int]:
    """Bytes of every program input and constant (what comes from HBM)."""
    sizes = {name: math.prod(shape) * np.dtype(dtype).itemsize for name, shape, dtype in tiled.inputs}
    sizes.update({name: value.nbytes for name, value in tiled.consts.items()})
    return sizes


def buffer_bytes(tiled: TiledProgram) -> dict[str, int]:
    """Bytes of every buffer: program inputs, constants and every step's result."""
    sizes = external_bytes(tiled)
    sizes.update({step.out: _nbytes(step) for step in tiled.steps})
    return sizes


def program_costs(tiled: TiledProgram, spills: bool = False) -> list[StepCost]:
    """Cost of every step. HBM traffic: program inputs, constants and outputs once each when the buffers fit on
    chip; every step's operands and result when they do not (`spills`: the schedule decides, schedule.plan)."""
    engine = tiled.engine
    sizes = buffer_bytes(tiled)
    external = {name for name, _, _ in tiled.inputs} | set(tiled.consts)
    seen: set[str] = set()
    costs = []
    for step in tiled.steps:
        traffic, loads = 0, []
        for name in step_inputs(step):
            if spills or (name in external and name not in seen):
                traffic += sizes[name]
                if name in external:
                    loads.append(name)
            seen.add(name)
        if spills or step.out in tiled.outputs:
            traffic += sizes[step.out]
        costs.append(step_cost(step, engine, traffic, tuple(loads)))
    return costs
