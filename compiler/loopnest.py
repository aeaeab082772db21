"""Einsums as loop nests: the index analysis every code generator shares.

A normalised einsum is a loop over every label (output labels outer, summed labels inner) with one
multiply-accumulate per iteration; an operand's element offset is sum(label index * stride), where a label
repeated inside one operand (a diagonal) adds its strides. A binary einsum is also viewed as a batched GEMM:
out[batch, m, n] = sum_k A[batch, m, k] * B[batch, k, n]  (labels grouped by where they occur).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .spec import EinsumSpec


def row_major_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def label_strides(term: str, shape: tuple[int, ...]) -> dict[str, int]:
    """Element stride of each label in a row-major operand; a repeated label (diagonal) sums its strides."""
    strides: dict[str, int] = {}
    for label, stride in zip(term, row_major_strides(shape)):
        strides[label] = strides.get(label, 0) + stride
    return strides


@dataclass(frozen=True)
class LoopNest:
    """The loops of an einsum: `loops` in nesting order (output labels, then summed ones), their sizes, and for
    each operand and the output the stride of every loop label (0 where the label does not index it)."""

    spec: EinsumSpec
    loops: tuple[str, ...]
    sizes: dict[str, int]
    operand_strides: tuple[dict[str, int], ...]
    output_strides: dict[str, int]

    @staticmethod
    def of(spec: EinsumSpec, shapes: list[tuple[int, ...]]) -> LoopNest:
        sizes = spec.sizes(shapes)
        loops = tuple(spec.output) + tuple(spec.summed)
        operand_strides = tuple(label_strides(t, s) for t, s in zip(spec.inputs, shapes))
        output_strides = label_strides(spec.output, tuple(sizes[label] for label in spec.output))
        return LoopNest(spec, loops, sizes, operand_strides, output_strides)

    @property
    def iterations(self) -> int:
        return math.prod(self.sizes[label] for label in self.loops)


@dataclass(frozen=True)
class GemmView:
    """A binary einsum grouped as a batched GEMM. Labels in only one operand and not in the output
    (`a_summed`, `b_summed`) are summed before the product; diagonals make `has_diagonal` true."""

    batch: str
    m: str
    n: str
    k: str
    a_summed: str
    b_summed: str
    has_diagonal: bool
    sizes: dict[str, int]

    @staticmethod
    def of(spec: EinsumSpec, shapes: list[tuple[int, ...]]) -> GemmView:
        if len(spec.inputs) != 2:
            raise ValueError(f"GemmView needs a binary einsum, got '{spec}'")
        a, b = spec.inputs
        out = spec.output
        sizes = spec.sizes(shapes)
        ordered = lambda labels: "".join(label for label in spec.labels if label in labels)  # noqa: E731
        return GemmView(
            batch=ordered(set(a) & set(b) & set(out)),
            m=ordered((set(a) - set(b)) & set(out)),
            n=ordered((set(b) - set(a)) & set(out)),
            k=ordered((set(a) & set(b)) - set(out)),
            a_summed=ordered(set(a) - set(b) - set(out)),
            b_summed=ordered(set(b) - set(a) - set(out)),
            has_diagonal=any(len(set(t)) != len(t) for t in (a, b)),
            sizes=sizes,
        )

    def extent(self, labels: str) -> int:
        return math.prod(self.sizes[label] for label in labels)

    @property
    def is_gemm(self) -> bool:
        """A true matrix product: something to multiply on both sides and something to contract."""
        return bool(self.m and self.n and self.k) and not (self.has_diagonal or self.a_summed or self.b_summed)
