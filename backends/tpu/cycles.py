"""Cycle, utilisation and memory model of a tiled program on the engine (the formulas are in docs/tpu.md).

    mxu   = ceil(tiles / arrays) * max(ceil(S / rate), array_rows) + array_rows + array_cols
            (S = columns streamed past each weight tile; a weight tile loads in array_rows cycles behind the
            previous tile's stream; the pipeline fills and drains once per step, in array_rows + array_cols
            cycles whatever the data type; int8 streams at `int8_rate` values per cell per cycle)
    vpu   = ceil(32-bit ops / vpu_lanes);   hbm = bytes / (HBM bytes per cycle)
    step  = max(mxu, vpu, hbm);   cycles = sum of steps;   utilization = MXU busy / (arrays x cycles)
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
    """Figures of one step: unit cycles, HBM bytes, MACs, MXU busy array-cycles, and the step's cycles."""

    mxu: int
    vpu: int
    hbm_bytes: int
    hbm: int
    macs: int
    busy: float
    vpu_ops: int

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


def mxu_cycles(engine: Engine, tiles: int, streamed: int, input_type: str) -> int:
    rate = engine.rate(input_type)
    per_tile = max(math.ceil(streamed / rate), engine.array_rows)
    return math.ceil(tiles / engine.arrays) * per_tile + engine.array_rows + engine.array_cols


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


def step_cost(step: Step, engine: Engine, hbm_bytes: int) -> StepCost:
    mxu, macs, busy = 0, 0, 0.0
    if isinstance(step, Gemm):
        tiles = math.ceil(step.m / engine.array_rows) * math.ceil(step.kc / engine.array_cols)
        mxu = mxu_cycles(engine, tiles, step.pre * step.post, step.input_type)
        macs = step.macs
    elif isinstance(step, FloatGemm):
        tiles = step.batch * math.ceil(step.k / engine.array_rows) * math.ceil(step.n / engine.array_cols)
        mxu = mxu_cycles(engine, tiles, step.m, "bf16")
        macs = step.macs
    if macs:
        busy = macs / (engine.array_rows * engine.array_cols * engine.rate(step.input_type))
    ops = vpu_ops(step)
    return StepCost(mxu, math.ceil(ops / engine.vpu_lanes), hbm_bytes,
                    math.ceil(hbm_bytes / engine.hbm_bytes_per_cycle), macs, busy, ops)




def _nbytes(step: Step) -> int:
    return math.prod(step.shape) * np.dtype(step.dtype).itemsize


def program_costs(tiled: TiledProgram) -> list[StepCost]:
    """Cost of every step. HBM traffic: inputs, constants and outputs once each while everything fits on chip;
    every step's operands and result otherwise."""
    engine = tiled.engine
    sizes = {name: math.prod(shape) * np.dtype(dtype).itemsize for name, shape, dtype in tiled.inputs}
    sizes.update({name: value.nbytes for name, value in tiled.consts.items()})
    for step in tiled.steps:
        sizes[step.out] = _nbytes(step)
    spills = sum(sizes.values()) > engine.on_chip_bytes
    external = {name for name, _, _ in tiled.inputs} | set(tiled.consts)
    seen: set[str] = set()
    costs = []
    for step in tiled.steps:
        traffic = 0
        for name in step_inputs(step):
            if spills or (name in external and name not in seen):
                traffic += sizes.get(name, 0)
            seen.add(name)
        if spills or step.out in tiled.outputs:
            traffic += sizes[step.out]
        costs.append(step_cost(step, engine, traffic))
    return costs


def summarize(tiled: TiledProgram, costs: list[StepCost]) -> dict[str, object]:
    """The figures of `exe.stats()`: cycles, utilization, mxu_cycles, vpu_cycles, hbm_bytes."""
    cycles = sum(c.cycles for c in costs)
    busy = sum(c.busy for c in costs)
    return {
        "cycles": cycles,
        "utilization": busy / (tiled.engine.arrays * cycles) if cycles else 0.0,
        "mxu_cycles": sum(c.mxu for c in costs),
        "vpu_cycles": sum(c.vpu for c in costs),
        "hbm_bytes": sum(c.hbm_bytes for c in costs),
    }


def report(tiled: TiledProgram, costs: list[StepCost]) -> dict[str, object]:
    """More figures: MACs, the utilisation of the matmul steps alone, and the vector unit's share of the cycles."""
    gemm = [c for c, s in zip(costs, tiled.steps) if isinstance(s, (Gemm, FloatGemm))]
    gemm_cycles = sum(c.cycles for c in gemm)
    cycles = sum(c.cycles for c in costs)
    vpu_bound = sum(c.cycles for c in costs if c.vpu >= max(c.mxu, c.hbm) and c.vpu)
    return {
        **summarize(tiled, costs),
        "macs": sum(c.macs for c in costs),
        "int8_macs": sum(c.macs for c, s in zip(costs, tiled.steps) if isinstance(s, Gemm)),
        "matmul_cycles": gemm_cycles,
        "matmul_utilization": sum(c.busy for c in gemm) / (tiled.engine.arrays * gemm_cycles) if gemm_cycles else 0.0,
        "vpu_share": vpu_bound / cycles if cycles else 0.0,
        "seconds": cycles / tiled.engine.clock_hz,
        "bat_digits": {name: [w.k_in, max(b.k_out for b in w.blocks)] for name, w in tiled.bat.items()},
    }
