"""Slot layouts: which tensor element sits in which slot of which ciphertext, printable and packable.

A layout is a row-major list of power-of-two `Dim`s over einsum labels; the flat position J splits into
ciphertext `J // slots` and slot `J % slots`. A dim is an `axis` of the tensor, a `rep` (the value is
copied along it) or a `gap` (only digit 0 holds data; the rest is zero when the layout is clean, junk
otherwise). Example: `ct[i:2] slot[k:32@32 j*32@1]` is two ciphertexts over i, k at stride 32, j copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from einfold.errors import UnsupportedError


def pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class Dim:
    """One digit of the layout: `label` index += digit * scale, for digits in [0, padded)."""

    label: str
    size: int
    padded: int
    kind: str = "axis"  # 'axis' | 'rep' | 'gap'
    scale: int = 1

    def text(self, stride: int | None) -> str:
        mark = {"axis": "", "rep": "*", "gap": "~"}[self.kind]
        if self.scale != 1 or self.padded * self.scale < self.size:  # one part of a label split over ct/slots
            size = f"{self.size}[{self.padded}x{self.scale}]"
        else:
            size = f"{self.size}" if self.size == self.padded else f"{self.size}/{self.padded}"
        return f"{self.label}:{mark}{size}" + ("" if stride is None else f"@{stride}")


@dataclass(frozen=True)
class Layout:
    """Where the elements of a tensor with axes labelled `axes` live in `slots`-slot ciphertexts."""

    dims: tuple[Dim, ...]
    axes: str
    slots: int
    clean: bool = True

    def __post_init__(self) -> None:
        for label in self.axes:
            if not any(d.label == label and d.kind == "axis" for d in self.dims):
                raise UnsupportedError(f"layout {self}: tensor axis {label!r} has no dim")

    def __str__(self) -> str:
        strides = self.strides
        cts = [d.text(None) for d, s in zip(self.dims, strides) if s >= self.slots and d.padded > 1]
        slot = [d.text(s) for d, s in zip(self.dims, strides) if s < self.slots and d.padded > 1]
        text = (f"ct[{' '.join(cts)}] " if cts else "") + f"slot[{' '.join(slot)}]"
        return text + ("" if self.clean else " dirty")

    @cached_property
    def strides(self) -> tuple[int, ...]:
        out, stride = [], 1
        for d in reversed(self.dims):
            out.append(stride)
            stride *= d.padded
        return tuple(reversed(out))

    @property
    def span(self) -> int:
        return math.prod(d.padded for d in self.dims)

    @property
    def tiles(self) -> int:
        return max(1, -(-self.span // self.slots))

    @property
    def shape(self) -> tuple[int, ...]:
        sizes = {d.label: d.size for d in self.dims if d.kind == "axis"}
        return tuple(sizes[a] for a in self.axes)

    def with_kinds(self, kinds: dict[str, str], axes: str | None = None, clean: bool | None = None) -> Layout:
        dims = tuple(replace(d, kind=kinds.get(d.label, d.kind)) for d in self.dims)
        return Layout(dims, self.axes if axes is None else axes, self.slots,
                      self.clean if clean is None else clean)

    # ----- element maps ----------------------------------------------------------------------------
    def label_index(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """For flat positions J, each label's index (summing its dims' digits x scale)."""
        index: dict[str, np.ndarray] = {}
        for d, stride in zip(self.dims, self.strides):
            digit = (positions // stride) % d.padded
            index[d.label] = index.get(d.label, 0) + digit * d.scale
        return index

    @cached_property
    def element_map(self) -> np.ndarray:
        """(tiles, slots) array: the row-major flat element index held at each slot, or -1."""
        positions = np.arange(self.tiles * self.slots, dtype=np.int64)
        index = self.label_index(positions)
        valid = positions < self.span
        sizes: dict[str, int] = {}
        for d, stride in zip(self.dims, self.strides):
            sizes[d.label] = d.size
            if d.kind == "gap":
                valid &= ((positions // stride) % d.padded) == 0
        for label in set(d.label for d in self.dims if d.kind == "axis"):
            valid &= index[label] < sizes[label]
        shape = self.shape
        if shape:
            flat = np.ravel_multi_index(tuple(np.minimum(index[a], s - 1) for a, s in zip(self.axes, shape)),
                                        shape)
        else:
            flat = np.zeros_like(positions)
        return np.where(valid, flat, -1).reshape(self.tiles, self.slots)

    @cached_property
    def distinct_tiles(self) -> tuple[int, ...]:
        """For each tile, the first tile with the same contents (tiles along `rep` ct dims are shared)."""
        first: dict[bytes, int] = {}
        return tuple(first.setdefault(row.tobytes(), t) for t, row in enumerate(self.element_map))

    def pack(self, array: np.ndarray) -> list[np.ndarray]:
        """The slot vectors of `array` in this layout (zeros where no element sits), one per tile."""
        flat = np.asarray(array, dtype=np.float64).reshape(-1)
        emap = self.element_map
        return [np.where(row >= 0, flat[np.maximum(row, 0)] if flat.size else 0.0, 0.0) for row in emap]

    def unpack(self, vectors: list[np.ndarray]) -> np.ndarray:
        """The tensor read back from slot vectors (the first slot holding each element)."""
        shape = self.shape
        size = math.prod(shape)
        emap = self.element_map.reshape(-1)
        values = np.concatenate([np.real(np.asarray(v))[: self.slots] for v in vectors])
        order = np.flatnonzero(emap >= 0)
        elements, first = np.unique(emap[order], return_index=True)
        if elements.size != size:
            raise UnsupportedError(f"layout {self} does not hold every element of a {shape} tensor")
        return values[order[first]].reshape(shape)


def fit(dims: list[Dim], slots: int) -> tuple[Dim, ...]:
    """Split the dim that crosses the ciphertext boundary in two (hi digits in ct, lo digits in slots)."""
    out: list[Dim] = []
    inner = 1
    for d in reversed(dims):
        if inner < slots < inner * d.padded:
            lo = slots // inner
            out.append(replace(d, padded=lo, scale=d.scale))
            out.append(replace(d, padded=d.padded // lo, scale=d.scale * lo))
        else:
            out.append(d)
        inner *= d.padded
    return tuple(reversed(out))


def joint_layout(order: str, sizes: dict[str, int], axes: str, slots: int, summed: str = "") -> Layout:
    """The einsum joint-space layout over `order`: labels of `axes` are axes, the rest copies."""
    dims = [Dim(label, sizes[label], pow2(sizes[label]), "axis" if label in axes else "rep") for label in order]
    return Layout(fit(dims, slots), axes, slots, True)


def compact_layout(shape: tuple[int, ...], slots: int, axes: str | None = None) -> Layout:
    """EinHops' layout: row-major, each axis padded to a power of two."""
    from einfold.spec import LETTERS
    axes = axes or LETTERS[: len(shape)]
    dims = [Dim(a, s, pow2(s)) for a, s in zip(axes, shape)]
    return Layout(fit(dims, slots), axes, slots, True)
