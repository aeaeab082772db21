"""GPU schedule rules for the TE stages of `lower_te.py`, applied with `tvm.s_tir.Schedule` (thread bindings,
shared-memory staging, register tiles), and the GEMM thread-block tiling the `cuda` target lowers with.

Rules, by stage role:
- inlined stages (elementwise, read once by one consumer) are computed inside their consumer: `compute_inline`.
- gemm (Cp[b,mo,no,mi,ni] = sum_k Ap[b,mo,k,mi] * Bp[b,no,k,ni], mi/ni spanning one BM x BN thread-block tile):
  one thread block per tile (blockIdx.x over b, mo, no) of 256 threads, each owning a TM x TN register tile made of
  2 x 2 virtual-thread quarters half a tile apart (`vthread`), so that neighbouring threads read neighbouring
  shared-memory words. k is split by BK: each BK slice of the packed operands (contiguous, the pack stage lays them
  out [k][row-in-tile]) is staged in shared memory by all threads together with 16-byte loads (`cache_read`
  "shared", `compute_at`, `bind`, `vectorize`), and each thread reads its TM + TN operands of a k step into
  registers (`cache_read` "local", vectorised). The accumulators live in registers (`cache_write` "local",
  `decompose_reduction`); the stage reading the tiles (the output, with its fused epilogue) is folded into the
  register write-back (`reverse_compute_inline`), so each thread writes its finished outputs straight to the
  result. When TVM cannot fold it, the tiles go to global memory and that stage is a kernel of its own.
- gemm with f16/bf16 operands whose tile splits into 16 x 16 x 16 fragments: tensor cores (`gpu_tensorcore.py`).
- reduce/check: one thread per output element with the sums as loops; with few outputs and long sums, one block
  per output element and the sum spread over its 256 threads (a cross-thread reduction).
- pack and elementwise: one thread per element (loops fused, 256 threads a block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tvm import s_tir

from .schedules import GemmTiling, Machine

if TYPE_CHECKING:
    from .lower_te import Stage, TEGraph

THREADS = 256                     # threads per block of every kernel
SMS = 132                         # streaming multiprocessors of an H100 SXM (H200: the same)
CROSS_THREAD_MAX_OUTPUTS = 4096   # a reduction with fewer outputs than this ...
CROSS_THREAD_MIN_SUM = 512        # ... each summing at least this many terms spreads every sum over a block
SCHEDULE_ERRORS = (s_tir.ScheduleError, ValueError, RuntimeError)


@dataclass(frozen=True)
class BlockTile:
    """A GEMM thread-block tile: BM x BN outputs, BK deep per shared-memory stage; 16 x 16 threads, each owning
    (BM / 16) x (BN / 16) outputs as 2 x 2 virtual-thread quarters."""

    bm: int
    bn: int
    bk: int

    @property
    def tm(self) -> int:
        return self.bm // 16

    @property
    def tn(self) -> int:
        return self.bn // 16


def block_tile(compute: str, is_complex: bool, extent: dict[str, int]) -> BlockTile:
    """128 x 128 tiles when they give at least a wave of blocks; 64 x 64 otherwise and for 8-byte or complex
    elements (twice the registers per output)."""
    wide = compute in ("float64", "int64", "uint64") or is_complex
    blocks = extent["b"] * math.ceil(extent["m"] / 128) * math.ceil(extent["n"] / 128)
    if not wide and blocks >= SMS and min(extent["m"], extent["n"]) >= 96:
        return BlockTile(128, 128, 8)
    return BlockTile(64, 64, 8 if wide else 16)


def gpu_tiling(machine: Machine, compute: str, is_complex: bool, extent: dict[str, int]) -> GemmTiling:
    """The `tiling_rule` of `lower_te.lower_program` for GPUs: a pack tile is a whole thread-block tile (mr = BM,
    nr = BN; nc carries BK)."""
    tile = block_tile(compute, is_complex, extent)
    return GemmTiling(tile.bm, tile.bn, tile.bk, 1, is_complex)


def _extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int:
    return int(sch.get(loop).extent)


def _vector_lanes(dtype: str, extent: int) -> int:
    """Elements per 16-byte access of `dtype`, halved until they divide `extent` (1 when nothing does)."""
    bits = int("".join(ch for ch in dtype if ch.isdigit()) or 8)
    lanes = max(1, 128 // bits)
    while lanes > 1 and extent % lanes:
        lanes //= 2
    return lanes


def bind_flat(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> None:
    """One thread per iteration of the block's loops (fused): blockIdx.x x threadIdx.x."""
    loops = sch.get_loops(block)
    bind_flat_loops(sch, loops if loops else [sch.add_unit_loop(block)])


def bind_flat_loops(sch: s_tir.Schedule, loops: list) -> None:
    """One thread per iteration of these (adjacent, spatial) loops, fused: blockIdx.x x threadIdx.x."""
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if _extent(sch, fused) <= THREADS:
        sch.bind(fused, "threadIdx.x")
        return
    outer, inner = sch.split(fused, [None, THREADS])
    sch.bind(outer, "blockIdx.x")
    sch.bind(inner, "threadIdx.x")


def k_splits(blocks: int, k: int, bk: int) -> int:
    """Split-K: with fewer thread blocks than SMs and a long k, split k so that about two waves of blocks run (each
    split at least 8 BK slices; the count divides k / BK, so no split needs bounds checks); 1 otherwise."""
    if blocks >= SMS or k % bk:
        return 1
    slices = k // bk
    splits = max(1, min(math.ceil(2 * SMS / blocks), slices // 8))
    while slices % splits:
        splits -= 1
    return splits


def schedule_gemm(sch: s_tir.Schedule, stage: Stage) -> tuple[set[str], str, int]:
    """The tiled GEMM kernel; returns the name of the stage folded into its write-back (if any), the name of the
    GEMM block (the stage's, or its partials' with split k) and the split-K count. Split k: `rfactor` gives a GEMM
    block over [split, b, mo, no, mi, ni] partials (scheduled as below, the split joining the block index) and a
    block summing them in order, one thread per output."""
    tiling = stage.tiling
    tile = BlockTile(tiling.mr, tiling.nr, tiling.nc)
    block = sch.get_sblock(stage.name)
    loops = sch.get_loops(block)
    blocks = math.prod(_extent(sch, loop) for loop in loops[:3])
    splits = k_splits(blocks, _extent(sch, loops[-1]), tile.bk)
    gemm_name = stage.name
    if splits > 1:
        sums = block
        block = sch.rfactor(sch.split(loops[-1], [splits, None])[0], 0)
        gemm_name = sch.get(block).name_hint
        *head, split, k = sch.get_loops(block)
    else:
        head, split, k = loops[:-1], None, loops[-1]
    consumers = sch.get_consumers(block)
    if tiling.complex:
        b, mo, no, mi, part, ni = head
    else:
        (b, mo, no, mi, ni), part = head, None
    vy, ty, ti = sch.split(mi, [2, 16, tile.tm // 2])
    vx, tx, tj = sch.split(ni, [2, 16, tile.tn // 2])
    ko, ki = sch.split(k, [None, tile.bk])
    inner = [ti, part, tj] if part is not None else [ti, tj]
    outer = [split, b, mo, no] if split is not None else [b, mo, no]
    sch.reorder(*outer, vy, vx, ty, tx, ko, ki, *inner)
    sch.bind(sch.fuse(*outer), "blockIdx.x")
    sch.bind(vy, "vthread.y")
    sch.bind(vx, "vthread.x")
    threads = sch.fuse(ty, tx)
    sch.bind(threads, "threadIdx.x")
    depth = 5  # loops down to ko: blocks, vthread.y, vthread.x, threads, ko

    accumulators = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulators, threads)
    for index in (0, 1):
        shared = sch.cache_read(block, index, "shared")
        sch.compute_at(shared, ko)
        _cooperative_fetch(sch, shared, depth)
    for index in (0, 1):
        registers = sch.cache_read(block, index, "local")
        sch.compute_at(registers, ki)
        last = sch.get_loops(registers)[-1]
        if _extent(sch, last) in (2, 4):
            sch.vectorize(last)
    sch.unroll(ki)
    for loop in inner:
        sch.unroll(loop)
    sch.decompose_reduction(block, ko)
    if splits == 1:
        return _fold_consumer(sch, accumulators, consumers), gemm_name, 1
    bind_flat_loops(sch, sch.get_loops(sums)[:-1])  # the innermost loop runs over the splits
    return set(), gemm_name, splits


def _cooperative_fetch(sch: s_tir.Schedule, shared: s_tir.schedule.SBlockRV, depth: int) -> None:
    """All threads of the block copy the operand slice into shared memory, 16 bytes per thread and step."""
    copied = sch.get_loops(shared)[depth:]
    fused = sch.fuse(*copied) if len(copied) > 1 else copied[0]
    total = _extent(sch, fused)
    dtype = str(sch.get(shared).writes[0].source.dtype)
    lanes = _vector_lanes(dtype, total // THREADS) if total % THREADS == 0 else 1
    if lanes > 1:
        _, thread, vector = sch.split(fused, [None, THREADS, lanes])
        sch.vectorize(vector)
    else:
        _, thread = sch.split(fused, [None, THREADS])
    sch.bind(thread, "threadIdx.x")


def _fold_consumer(sch: s_tir.Schedule, accumulators: s_tir.schedule.SBlockRV, consumers: list) -> set[str]:
    """Fold the stage reading the tiles into the register write-back, tried on a copy first (a failed primitive
    may leave the schedule half-changed). Returns the folded stage's name, or nothing."""
    if len(consumers) != 1:
        return set()
    name = sch.get(consumers[0]).name_hint
    trial = sch.copy()
    try:
        trial.reverse_compute_inline(trial.get_sblock(name))
    except SCHEDULE_ERRORS:
        return set()
    sch.reverse_compute_inline(sch.get_sblock(name))
    return {name}


def schedule_reduce(sch: s_tir.Schedule, stage: Stage) -> None:
    """Few outputs with long sums: a block per output, its threads sharing the sum; else a thread per output."""
    block = sch.get_sblock(stage.name)
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    spatial = [loop for loop, kind in zip(loops, kinds) if kind == 0]
    summed = [loop for loop, kind in zip(loops, kinds) if kind != 0]
    if not summed:
        bind_flat(sch, block)
        return
    outputs = math.prod(_extent(sch, loop) for loop in spatial)
    length = math.prod(_extent(sch, loop) for loop in summed)
    if outputs < CROSS_THREAD_MAX_OUTPUTS and length >= CROSS_THREAD_MIN_SUM:
        sum_loop = sch.fuse(*summed) if len(summed) > 1 else summed[0]
        _, lane = sch.split(sum_loop, [None, THREADS])
        sch.bind(lane, "threadIdx.x")
        # a block index even for one output: the per-thread partial sums must live inside the kernel
        outputs_loop = (sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]) if spatial \
            else sch.add_unit_loop(sch.get_loops(block)[0])
        sch.bind(outputs_loop, "blockIdx.x")
        return
    bind_flat_loops(sch, spatial or [sch.add_unit_loop(block)])
    sch.decompose_reduction(block, summed[0])


def schedule_graph(sch: s_tir.Schedule, graph: TEGraph, present: set[str],
                   tensor_cores: dict[str, str] | None = None) -> dict[str, str]:
    """Apply each stage's rule (stages absent from the function, i.e. unreachable, are skipped). GEMM stages named in
    `tensor_cores` (-> operand type) get `gpu_tensorcore`'s schedule when it applies. Returns, for each stage, the
    rule it got (shown as the launch notes)."""
    from .gpu_tensorcore import schedule_tensor_core_gemm

    rules: dict[str, str] = {}
    for stage in graph.stages:
        if stage.name in graph.inlined and stage.name in present:
            sch.compute_inline(sch.get_sblock(stage.name))
            rules[stage.name] = "inlined"
    for stage in graph.stages:
        if stage.role == "gemm" and stage.name in present:
            tensorized = schedule_tensor_core_gemm(sch, stage, tensor_cores[stage.name]) \
                if stage.name in (tensor_cores or {}) else None
            if tensorized is not None:
                taken, rules[stage.name] = tensorized
                rules.update({name: f"written by {stage.name}" for name in taken})
                continue
            taken, gemm_block, splits = schedule_gemm(sch, stage)
            tile = stage.tiling
            rules[gemm_block] = (f"tiled GEMM {tile.mr}x{tile.nr}x{tile.nc}, shared-memory operand slices, "
                                 f"{tile.mr // 16}x{tile.nr // 16} register tile per thread"
                                 + (f", writes {', '.join(taken)} from registers" if taken else "")
                                 + (f", k split {splits} ways into partials" if splits > 1 else ""))
            if splits > 1:
                rules[stage.name] = f"sum of the {splits} split-K partials in order, one thread per output"
            for name in taken:
                rules[name] = f"written by {stage.name}"
    for stage in graph.stages:
        if stage.name not in present or stage.name in rules:
            continue
        block = sch.get_sblock(stage.name)
        if stage.role in ("reduce", "check"):
            schedule_reduce(sch, stage)
            rules[stage.name] = "reduction"
        else:
            bind_flat(sch, block)
            rules[stage.name] = "one thread per element"
    return rules
