"""Loop construction on an llvmlite builder: counted loops with the index as a phi, and the split of a
parallel loop's range among threads. Nothing here is CPU specific (a GPU target swaps the thread split)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from llvmlite import ir

from .scalars import I64


def const(value: int) -> ir.Constant:
    return ir.Constant(I64, int(value))


@contextmanager
def for_range(b: ir.IRBuilder, start: ir.Value | int, stop: ir.Value | int, step: int = 1,
              name: str = "i") -> Iterator[ir.Value]:
    """`for (i = start; i < stop; i += step)`; the body is emitted inside the `with` block."""
    with loop_carry(b, start, stop, [], name, step) as (index, _, _):
        yield index


@contextmanager
def loop_carry(b: ir.IRBuilder, start: ir.Value | int, stop: ir.Value | int, initial: list[ir.Value],
               name: str = "r", step: int = 1) -> Iterator[tuple[ir.Value, list[ir.Value], list[ir.Value]]]:
    """A counted loop carrying values (accumulators): yields (index, current values, list to fill with the
    next values). After the block, `initial` is replaced in place by the values at loop exit."""
    start = const(start) if isinstance(start, int) else start
    stop = const(stop) if isinstance(stop, int) else stop
    pre = b.block
    header = b.append_basic_block(f"{name}.head")
    body = b.append_basic_block(f"{name}.body")
    done = b.append_basic_block(f"{name}.end")
    b.branch(header)
    b.position_at_end(header)
    index = b.phi(I64, name=name)
    index.add_incoming(start, pre)
    carried = []
    for value in initial:
        phi = b.phi(value.type)
        phi.add_incoming(value, pre)
        carried.append(phi)
    b.cbranch(b.icmp_signed("<", index, stop), body, done)
    b.position_at_end(body)
    following: list[ir.Value] = []
    yield index, carried, following
    if len(following) != len(carried):
        raise AssertionError("loop_carry: the body must give one next value per carried value")
    latch = b.block
    index.add_incoming(b.add(index, const(step), name=f"{name}.next", flags=("nsw",)), latch)
    for phi, value in zip(carried, following):
        phi.add_incoming(value, latch)
    b.branch(header)
    b.position_at_end(done)
    initial[:] = carried


def thread_range(b: ir.IRBuilder, extent: int, thread: ir.Value, threads: ir.Value,
                 grain: int = 1) -> tuple[ir.Value, ir.Value]:
    """This thread's share [lo, hi) of range(extent), in whole multiples of `grain` (the last share takes
    the rest); share t is extent * t / threads rounded to the grain."""
    chunks = const((extent + grain - 1) // grain)
    lo = b.mul(b.sdiv(b.mul(chunks, thread), threads), const(grain))
    hi = b.mul(b.sdiv(b.mul(chunks, b.add(thread, const(1))), threads), const(grain))
    hi = b.select(b.icmp_signed(">", hi, const(extent)), const(extent), hi)
    lo = b.select(b.icmp_signed(">", lo, const(extent)), const(extent), lo)
    return lo, hi
