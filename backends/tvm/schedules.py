"""CPU schedule rules for the TE stages of `lower_te.py`, applied with `tvm.s_tir.Schedule`.

Rules, by stage role:
- inlined stages (elementwise, read once by one consumer) are computed inside their consumer: `compute_inline`.
- gemm (Cp[b,mo,no,mi,ni] = sum_k Ap[b,mo,k,mi] * Bp[b,no,k,ni]): a register tile of mr x nr accumulators
  (mr rows unrolled, nr columns = whole vectors) stays in registers over the full k loop (`cache_write` to a
  local tile, `decompose_reduction` so zeroing is vectorised too). Column tiles are grouped in blocks of nc
  columns so that one block of packed B (nc x K) stays in L2 while every row tile of packed A streams past it;
  the batch, column-block and row-tile loops are fused and run in parallel. k is not split: the accumulators
  never leave the registers, and nc (not a k block) bounds the cache working set. The output stage (with its
  fused epilogue) moves under the tile loop (`reverse_compute_at`), so each finished tile is written out while
  hot; when TVM cannot bound that stage per tile (several labels folded into m or n) it stays a separate pass.
- pack (Ap/Bp): parallel over tiles, vectorised over the row-in-tile axis (contiguous in the packed buffer).
- reduce (reductions, matrix-vector, diagonals): when the innermost reduction reads memory contiguously it is
  split by ACCUMULATORS vectors and reduced lane-wise (`rfactor`), so the hot loop is independent vector adds;
  if the other summed labels lie outside the kept ones in memory ('ijk->j') the loops follow memory order, with
  the kept indices cut into one chunk per core. Otherwise output loops are parallel and reductions inner.
- elementwise (outputs, copies, unfused ops): outer loops fused and parallel, innermost split by the vector
  width and vectorised.
Threads are used only when a stage does enough work to pay for waking the pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tvm import s_tir

if TYPE_CHECKING:
    from .lower_te import Stage, TEGraph

PARALLEL_MIN_WORK = 1 << 15   # elements (or multiply-adds) below which a stage runs on one thread
L2_BUDGET_BYTES = 256 << 10   # packed-B block kept in L2 (half of a 512 KiB L2)
ACCUMULATORS = 4              # independent vector partial sums in a contiguous reduction


@dataclass(frozen=True)
class Machine:
    """What the schedules need to know about the host CPU."""

    cpu: str
    vector_bytes: int
    cores: int


@dataclass(frozen=True)
class GemmTiling:
    """Register tile (mr x nr) and L2 column block (nc) of a GEMM stage; complex tiles hold re/im planes."""

    mr: int
    nr: int
    nc: int
    lanes: int
    complex: bool


def _itemsize(dtype: str) -> int:
    digits = "".join(ch for ch in dtype if ch.isdigit())
    return max(1, int(digits) // 8) if digits else 1


def choose_tiling(machine: Machine, compute: str, is_complex: bool, k_extent: int, n_extent: int) -> GemmTiling:
    """mr x nr accumulators use 12 of the 16 vector registers (AVX2): 6 x 2 vectors, or 3 x 2 x (re, im)."""
    lanes = max(1, machine.vector_bytes // _itemsize(compute))
    if is_complex:
        mr, nr = 3, 2 * lanes
    elif compute == "int64":
        mr, nr = 4, 2 * lanes  # no 64-bit vector multiply in AVX2: a smaller tile keeps the emulation cheap
    else:
        mr, nr = 6, 2 * lanes
    if n_extent <= lanes:
        nr = lanes
    column_bytes = max(1, k_extent) * _itemsize(compute) * (2 if is_complex else 1)
    nc = max(nr, (L2_BUDGET_BYTES // column_bytes) // nr * nr)
    return GemmTiling(mr, nr, nc, lanes, is_complex)


def _extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int:
    return int(sch.get(loop).extent)


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def _parallel(sch: s_tir.Schedule, loops: list, work: int, machine: Machine) -> None:
    if not loops or work < PARALLEL_MIN_WORK or machine.cores < 2:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if _extent(sch, fused) > 1:
        sch.parallel(fused)


def _vectorise_innermost(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> list:
    """Vectorise the innermost loop (split by `lanes` when longer); returns the loops left outside it."""
    loops = sch.get_loops(block)
    if not loops:
        return []
    inner = loops[-1]
    extent = _extent(sch, inner)
    if extent > lanes and extent % lanes == 0:
        outer, inner = sch.split(inner, [None, lanes])
        sch.vectorize(inner)
        return [*loops[:-1], outer]
    if extent <= lanes:
        if extent > 1:
            sch.vectorize(inner)
        return loops[:-1]
    return loops


def schedule_gemm(sch: s_tir.Schedule, stage: Stage, machine: Machine) -> set[str]:
    tiling = stage.tiling
    block = sch.get_sblock(stage.name)
    loops = sch.get_loops(block)
    if tiling.complex:
        b, mo, no, mi, part, ni, k = loops
    else:
        (b, mo, no, mi, ni, k), part = loops, None
    n_tiles = _extent(sch, no)
    block_tiles = _largest_divisor_at_most(n_tiles, max(1, tiling.nc // tiling.nr))
    no_outer, no_inner = sch.split(no, [None, block_tiles])
    inner = [mi, part, ni] if part is not None else [mi, ni]
    sch.reorder(b, no_outer, mo, no_inner, k, *inner)
    local = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(local, no_inner)
    sch.unroll(mi)
    if part is not None:
        sch.unroll(part)
    sch.vectorize(ni)
    write_back = sch.get_loops(local)
    sch.vectorize(write_back[-1])
    taken = _write_tiles_in_place(sch, local, no_inner, tiling.lanes)
    _parallel(sch, [b, no_outer, mo], stage.work, machine)
    init = sch.decompose_reduction(block, k)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    return taken


def _write_tiles_in_place(sch: s_tir.Schedule, local: s_tir.schedule.SBlockRV, tile_loop: s_tir.schedule.LoopRV,
                          lanes: int) -> set[str]:
    """Move the output stage (with its fused epilogue) under the tile loop, so each finished register tile is
    written to the output while it is hot and the tiled buffer shrinks to one tile. Returns the block taken over
    (none when TVM cannot bound the output stage's region per tile)."""
    consumers = sch.get_consumers(local)
    if len(consumers) != 1:
        return set()
    consumer = consumers[0]
    name = sch.get(consumer).name_hint
    trial = sch.copy()  # a failed primitive may leave the state half-changed: try it on a copy first
    try:
        trial.reverse_compute_at(consumer, tile_loop)
    except (s_tir.ScheduleError, ValueError, RuntimeError):
        return set()
    sch.reverse_compute_at(consumer, tile_loop)
    loops = sch.get_loops(consumer)
    if loops and _extent(sch, loops[-1]) % lanes == 0:
        _vectorise_innermost(sch, consumer, lanes)
    return {name}


def schedule_pack(sch: s_tir.Schedule, stage: Stage, machine: Machine) -> None:
    block = sch.get_sblock(stage.name)
    b, tile, k, *inner = sch.get_loops(block)
    if _extent(sch, inner[-1]) <= 64:
        sch.vectorize(inner[-1])
    _parallel(sch, [b, tile], stage.work, machine)


def schedule_reduce(sch: s_tir.Schedule, stage: Stage, machine: Machine, lanes: int) -> None:
    block = sch.get_sblock(stage.name)
    loops = sch.get_loops(block)
    n_spatial = len(sch.get(block).iter_vars) - sum(1 for iv in sch.get(block).iter_vars if iv.iter_type == 2)
    spatial = loops[:n_spatial]
    width = lanes * (ACCUMULATORS if stage.contiguous_reduce % (lanes * ACCUMULATORS) == 0 else 1)
    if n_spatial and stage.contiguous_reduce % width == 0 and stage.contiguous_reduce > width:
        # sum_k x[k] = sum_lane sum_{k'} x[k' * width + lane]: `width` partial sums (ACCUMULATORS vectors, so
        # consecutive vector adds do not wait on each other), then one short sum across the lanes.
        _, lane = sch.split(loops[-1], [None, width])
        partial = sch.rfactor(lane, factor_axis=n_spatial)
        partial_loops = sch.get_loops(partial)
        vectors, lane_loop = sch.split(partial_loops[-1], [None, lanes])
        sch.unroll(vectors)
        sch.vectorize(lane_loop)
        kept, sums = partial_loops[:n_spatial], partial_loops[n_spatial:-2]
        if stage.sums_outside and machine.cores > 1 and stage.work >= PARALLEL_MIN_WORK:
            # Walk memory in order (summed rows outside the kept ones): one chunk of kept indices per core.
            outer = sch.fuse(*kept) if len(kept) > 1 else kept[0]
            chunk, rest = sch.split(outer, [machine.cores, None])
            sch.reorder(chunk, *sums, rest)
            sch.parallel(chunk)
            sch.decompose_reduction(partial, sums[0])
        else:
            _parallel(sch, kept, stage.work, machine)
            sch.decompose_reduction(partial, sums[0] if sums else partial_loops[-2])
        return
    _parallel(sch, spatial, stage.work, machine)


def schedule_elementwise(sch: s_tir.Schedule, stage: Stage, machine: Machine, lanes: int) -> None:
    block = sch.get_sblock(stage.name)
    outer = _vectorise_innermost(sch, block, lanes)
    _parallel(sch, outer, stage.work, machine)


def schedule_graph(sch: s_tir.Schedule, graph: TEGraph, machine: Machine, present: set[str]) -> None:
    """Apply the rule of each stage (stages absent from the function, i.e. unreachable, are skipped)."""
    for stage in graph.stages:
        if stage.name in graph.inlined and stage.name in present:
            sch.compute_inline(sch.get_sblock(stage.name))
    taken: set[str] = set()
    for stage in graph.stages:
        if stage.role == "gemm" and stage.name in present:
            taken |= schedule_gemm(sch, stage, machine)
    for stage in graph.stages:
        if stage.name in graph.inlined or stage.name not in present or stage.name in taken:
            continue
        if stage.role == "gemm":
            continue
        elif stage.role == "pack":
            schedule_pack(sch, stage, machine)
        elif stage.role == "reduce":
            schedule_reduce(sch, stage, machine, _lanes(stage, machine))
        elif stage.role == "elementwise":
            schedule_elementwise(sch, stage, machine, _lanes(stage, machine))


def _lanes(stage: Stage, machine: Machine) -> int:
    return max(1, machine.vector_bytes // _itemsize(stage.dtype))
