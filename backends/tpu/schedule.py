"""List schedule of a tiled program on the engine's units (MXU, VPU), independent steps overlapping, and the program
figures of `exe.stats()` / `exe.cost_report()` taken from it (the formulas are in docs/tpu.md).

    start(s) = max(its unit is free, every buffer it reads is ready);  among ready steps the longest path to the end
    goes first (ties: program order).  MXU: busy for the stream, result ready array_rows + array_cols later.
    On chip: a buffer lives from the start of the step that writes (or first loads) it to the end of its last reader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from einfold.errors import IRError

from .cycles import StepCost, buffer_bytes, external_bytes, program_costs
from .tiling import FloatGemm, Gemm, TiledProgram, View, step_inputs

UNITS = ("mxu", "vpu")


@dataclass(frozen=True)
class Slot:
    """Where one step runs: its unit ('mxu', 'vpu' or 'none'), its start, when the unit takes its next step, and when
    its result is ready (for an MXU step, `free` is the end of its stream and `end` follows the fill and drain)."""

    unit: str
    start: int
    free: int
    end: int

    def __str__(self) -> str:
        stream = f" (stream to {self.free})" if self.unit == "mxu" and self.free != self.end else ""
        return f"t {self.start}-{self.end}{stream}"


def occupancy(unit: str, cost: StepCost) -> int:
    """Cycles the step holds its unit: the stream (or the HBM transfer, if longer) on the MXU, the whole step on
    the VPU, nothing for a view."""
    if unit == "mxu":
        return max(cost.stream, cost.hbm)
    return cost.cycles if unit == "vpu" else 0


def load_cycles(tiled: TiledProgram, cost: StepCost, sizes: dict[str, int]) -> int:
    """Cycles the step's loads of program inputs and constants (`sizes`: external_bytes) take at the HBM
    bandwidth (they come first)."""
    loaded = sum(sizes[name] for name in set(cost.loads))
    return math.ceil(loaded / tiled.engine.hbm_bytes_per_cycle)


def dependencies(tiled: TiledProgram, costs: list[StepCost]) -> list[dict[int, int]]:
    """For each step, {earlier step: lag}: it may start `lag` cycles after that step starts. It waits for the end
    of the writer of each buffer it reads, and for a program input or constant that an earlier step loads from HBM
    (this step does not load it itself), for that step's loads. Every buffer has one writer."""
    sizes = external_bytes(tiled)
    writer: dict[str, int] = {}
    loader: dict[str, int] = {}
    deps = []
    for index, (step, cost) in enumerate(zip(tiled.steps, costs)):
        lags: dict[int, int] = {}
        for name in step_inputs(step):
            if name in writer:
                pred, lag = writer[name], costs[writer[name]].cycles
            elif name not in sizes:
                raise IRError(f"tpu schedule: step {index} (%{step.out}) reads %{name}, which no earlier step writes")
            elif name in loader and name not in cost.loads:
                pred = loader[name]
                lag = load_cycles(tiled, costs[pred], sizes)
            else:
                continue
            lags[pred] = max(lags.get(pred, 0), lag)
        for name in cost.loads:
            loader.setdefault(name, index)
        if step.out in writer or step.out in sizes:
            raise IRError(f"tpu schedule: step {index} writes %{step.out}, which already has a value; every buffer "
                          "of a tiled program must be written once")
        writer[step.out] = index
        deps.append(lags)
    return deps


def schedule_steps(tiled: TiledProgram, costs: list[StepCost]) -> list[Slot]:
    """The list schedule: repeatedly take the unit that can start a step soonest, and start on it, at that time, the
    ready step with the longest path to the end of the program. Views run as soon as their inputs are ready."""
    steps, count = tiled.steps, len(tiled.steps)
    deps = dependencies(tiled, costs)
    users: list[dict[int, int]] = [{} for _ in range(count)]
    for index, lags in enumerate(deps):
        for pred, lag in lags.items():
            users[pred][index] = lag
    tail = [0] * count
    for index in reversed(range(count)):
        tail[index] = max([costs[index].cycles] + [lag + tail[user] for user, lag in users[index].items()])
    waiting = [len(lags) for lags in deps]
    ready_at = [0] * count
    slots: list[Slot | None] = [None] * count
    unit_free = dict.fromkeys(UNITS, 0)
    pools: dict[str, list[int]] = {unit: [] for unit in UNITS}
    released = [index for index in range(count) if not deps[index]]

    def place(index: int, unit: str, start: int) -> None:
        end = start + costs[index].cycles
        slots[index] = Slot(unit, start, start + occupancy(unit, costs[index]) if unit != "none" else end, end)
        for user, lag in users[index].items():
            ready_at[user] = max(ready_at[user], start + lag)
            waiting[user] -= 1
            if not waiting[user]:
                released.append(user)

    while True:
        while released:
            index = released.pop()
            if steps[index].unit == "none":
                place(index, "none", ready_at[index])
            else:
                pools[steps[index].unit].append(index)
        options = [(max(unit_free[unit], min(ready_at[i] for i in pool)), unit) for unit, pool in pools.items() if pool]
        if not options:
            break
        time, unit = min(options)
        pick = min((i for i in pools[unit] if ready_at[i] <= time), key=lambda i: (-tail[i], i))
        pools[unit].remove(pick)
        place(pick, unit, time)
        unit_free[unit] = slots[pick].free
    return [slot for slot in slots if slot is not None]


def on_chip_peak(tiled: TiledProgram, slots: list[Slot]) -> int:
    """Most bytes live on chip at once under this schedule. A buffer lives from the start of the step that writes it
    (a program input or constant: of the first step that reads it) to the end of the last step that reads it (an
    output: to the end of the program); a view takes no memory and keeps its sources alive while it is read."""
    sizes = buffer_bytes(tiled)
    roots: dict[str, tuple[str, ...]] = {}
    born: dict[str, int] = {}
    dies: dict[str, int] = {}
    for step, slot in zip(tiled.steps, slots):
        for name in step_inputs(step):
            for root in roots.get(name, (name,)):
                born[root] = min(born.get(root, slot.start), slot.start)
                dies[root] = max(dies.get(root, slot.end), slot.end)
        if isinstance(step, View):
            roots[step.out] = tuple(dict.fromkeys(r for src in step.srcs for r in roots.get(src, (src,))))
        else:
            born[step.out] = slot.start
            dies[step.out] = max(dies.get(step.out, slot.end), slot.end)
    makespan = max((slot.end for slot in slots), default=0)
    for name in tiled.outputs:
        for root in roots.get(name, (name,)):
            dies[root] = makespan
    events = sorted([(born[name], sizes[name]) for name in born] + [(dies[name], -sizes[name]) for name in born])
    peak = live = 0
    for _, change in events:  # at equal times frees (negative) come first
        live += change
        peak = max(peak, live)
    return peak


def plan(tiled: TiledProgram) -> tuple[list[StepCost], list[Slot], int]:
    """Costs, schedule and on-chip peak: schedule as if every buffer stays on chip; if the peak then exceeds the
    on-chip memory, every step moves its operands and result through HBM instead, and is scheduled again."""
    costs = program_costs(tiled)
    slots = schedule_steps(tiled, costs)
    peak = on_chip_peak(tiled, slots)
    if peak > tiled.engine.on_chip_bytes:
        costs = program_costs(tiled, spills=True)
        slots = schedule_steps(tiled, costs)
    return costs, slots, peak


def _union(intervals: list[tuple[int, int]]) -> int:
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total, reach = total + end - start, end
        elif end > reach:
            total, reach = total + end - reach, end
    return total


def unit_cycles(slots: list[Slot], unit: str) -> int:
    """Cycles the unit is held (its steps never overlap on it)."""
    return sum(slot.free - slot.start for slot in slots if slot.unit == unit)


def summarize(tiled: TiledProgram, costs: list[StepCost], slots: list[Slot]) -> dict[str, object]:
    """The figures of `exe.stats()`: cycles (the makespan), utilization, mxu_cycles, vpu_cycles, hbm_bytes."""
    cycles = max((slot.end for slot in slots), default=0)
    busy = sum(c.busy for c in costs)
    return {
        "cycles": cycles,
        "utilization": busy / (tiled.engine.arrays * cycles) if cycles else 0.0,
        "mxu_cycles": unit_cycles(slots, "mxu"),
        "vpu_cycles": unit_cycles(slots, "vpu"),
        "hbm_bytes": sum(c.hbm_bytes for c in costs),
    }


def report(tiled: TiledProgram, costs: list[StepCost], slots: list[Slot], peak: int) -> dict[str, object]:
    """More figures: MACs, the utilisation while the MXU streams or drains a GEMM, the vector unit's share of the
    makespan, the on-chip peak (`peak`, from `plan`) and the sequential model's figures (steps one after another)
    for comparison."""
    arrays = tiled.engine.arrays
    stats = summarize(tiled, costs, slots)
    cycles = stats["cycles"]
    is_gemm = [isinstance(step, (Gemm, FloatGemm)) for step in tiled.steps]
    gemm_busy = sum(c.busy for c, gemm in zip(costs, is_gemm) if gemm)
    matmul_cycles = _union([(s.start, s.end) for s, gemm in zip(slots, is_gemm) if gemm])
    sequential = sum(c.cycles for c in costs)
    sequential_gemm = sum(c.cycles for c, gemm in zip(costs, is_gemm) if gemm)
    return {
        **stats,
        "macs": sum(c.macs for c in costs),
        "int8_macs": sum(c.macs for c, s in zip(costs, tiled.steps) if isinstance(s, Gemm)),
        "matmul_cycles": matmul_cycles,
        "matmul_utilization": gemm_busy / (arrays * matmul_cycles) if matmul_cycles else 0.0,
        "vpu_share": stats["vpu_cycles"] / cycles if cycles else 0.0,
        "seconds": cycles / tiled.engine.clock_hz,
        "on_chip_peak_bytes": peak,
        "spills": peak > tiled.engine.on_chip_bytes,
        "sequential_cycles": sequential,
        "sequential_utilization": sum(c.busy for c in costs) / (arrays * sequential) if sequential else 0.0,
        "sequential_matmul_utilization": gemm_busy / (arrays * sequential_gemm) if sequential_gemm else 0.0,
        "bat_digits": {name: [w.k_in, max(b.k_out for b in w.blocks)] for name, w in tiled.bat.items()},
    }
