"""Lower einfold ops to FHE instructions over packed tensors: pack, move, multiply, rotate-and-sum.

An einsum `ik,k->i` with joint order `ik` becomes: pack W as `slot[i:128@128 k:128@1]` and x as
`slot[i*128@128 k:128@1]` (copied along i), one SIMD multiply, then rotate-and-sum over k
(rotations by 64, 32, ..., 1), leaving y valid where k = 0: `slot[i:128@128 k~128@1] dirty`.
Operands that already sit in another layout are moved with masked rotations (baby-step giant-step over
the distinct shifts) and copied along missing labels by rotate-and-add doubling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from einfold.errors import UnsupportedError
from einfold.spec import EinsumSpec

from .fhe_ir import FheProgram, Instr, Packing
from .layout import Layout, compact_layout, joint_layout


@dataclass(frozen=True)
class Packed:
    """A tensor held in FHE values: one value name per tile (tiles may share a value); `plain` if plaintext."""

    layout: Layout
    tiles: tuple[str, ...]
    plain: bool = False


@dataclass(frozen=True)
class Free:
    """An input or weight not packed yet: each use packs it in the layout that use wants."""

    name: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None  # the weight's values; None for a client input

    @property
    def is_weight(self) -> bool:
        return self.data is not None


@dataclass(frozen=True)
class Scalar:
    value: float


Value = Packed | Free | Scalar


class Builder:
    """Emits FHE instructions; tensor-level helpers pack, move, multiply and reduce packed tensors."""

    def __init__(self, slots: int, plaintext_weights: bool = True, io_layout: str = "free",
                 max_ciphertexts: int = 4096):
        self.slots = slots
        self.max_ciphertexts = max_ciphertexts
        self.plaintext_weights = plaintext_weights
        self.io_layout = io_layout
        self.instrs: list[Instr] = []
        self.plaintexts: dict[str, np.ndarray] = {}
        self.inputs: list[Packing] = []
        self.weights: dict[str, np.ndarray] = {}
        self.notes: list[str] = []
        self._plain_ids: dict[bytes, str] = {}
        self._memo: dict[tuple, str] = {}
        self._packed: dict[tuple, Packed] = {}
        self._count = 0

    def fork(self) -> Builder:
        """A copy to try a lowering on without touching this one."""
        other = Builder.__new__(Builder)
        other.__dict__.update({k: (v.copy() if isinstance(v, (list, dict)) else v) for k, v in self.__dict__.items()})
        return other

    def program(self, outputs: list[Packing], params: str) -> FheProgram:
        return FheProgram(self.slots, list(self.instrs), list(self.inputs), outputs, dict(self.plaintexts),
                          dict(self.weights), list(self.notes), params)

    # ----- ciphertext-level instructions ------------------------------------------------------------
    def emit(self, opcode: str, args: tuple[str, ...] = (), **attrs: object) -> str:
        key = (opcode, args, tuple(sorted((k, v) for k, v in attrs.items() if k != "note")))
        if key in self._memo and opcode not in ("encrypt", "zero"):
            return self._memo[key]
        name = f"c{self._count}"
        self._count += 1
        self.instrs.append(Instr(opcode, name, args, dict(attrs)))
        self._memo[key] = name
        return name

    def plaintext(self, vector: np.ndarray) -> str:
        vector = np.ascontiguousarray(vector, dtype=np.float64)
        key = vector.tobytes()
        if key not in self._plain_ids:
            name = f"p{len(self.plaintexts)}"
            self.plaintexts[name] = vector
            self._plain_ids[key] = name
        return self._plain_ids[key]

    def rotate(self, ct: str, amount: int) -> str:
        amount %= self.slots
        return ct if amount == 0 else self.emit("rotate", (ct,), by=amount)

    def add(self, a: str, b: str) -> str:
        return self.emit("add", tuple(sorted((a, b))))

    def add_all(self, names: list[str]) -> str:
        while len(names) > 1:
            names = [self.add(names[k], names[k + 1]) if k + 1 < len(names) else names[k]
                     for k in range(0, len(names), 2)]
        return names[0]

    def mul(self, a: str, b: str) -> str:
        return self.emit("mul", tuple(sorted((a, b))))

    def mul_plain(self, ct: str, vector: np.ndarray) -> str:
        return self.emit("mul_plain", (ct, self.plaintext(vector)))

    def mul_scalar(self, ct: str, value: float) -> str:
        return ct if value == 1 else self.emit("mul_scalar", (ct,), value=float(value))

    def add_scalar(self, ct: str, value: float) -> str:
        return ct if value == 0 else self.emit("add_scalar", (ct,), value=float(value))

    # ----- tensors ----------------------------------------------------------------------------------
    def materialize(self, value: Value, layout: Layout) -> Packed:
        """`value` packed in `layout` (packing a free tensor directly, or moving a packed one)."""
        if isinstance(value, Scalar):
            raise UnsupportedError("a scalar cannot be packed as a tensor here")
        self.check_fits(layout, "a tensor")
        if isinstance(value, Free):
            if self.io_layout == "row-major" and not value.is_weight:
                return self.move(self.pack_free(value, compact_layout(value.shape, self.slots)), layout)
            return self.pack_free(value, layout)
        return self.move(value, layout)

    def check_fits(self, layout: Layout, what: str) -> None:
        if layout.tiles > self.max_ciphertexts:
            raise UnsupportedError(f"{what} needs {layout.tiles} ciphertexts of {self.slots} slots for layout "
                                   f"{layout}, over the limit of {self.max_ciphertexts} (max_ciphertexts=)")

    def pack_free(self, value: Free, layout: Layout) -> Packed:
        key = (value.name, value.shape, layout)
        if key in self._packed:
            return self._packed[key]
        if value.is_weight and self.plaintext_weights:
            vectors = layout.pack(value.data.reshape(value.shape))
            packed = Packed(layout, tuple(self.plaintext(v) for v in vectors), plain=True)
        else:
            if value.is_weight:
                self.weights[value.name] = value.data
            names: dict[int, str] = {}
            for t in sorted(set(layout.distinct_tiles)):
                names[t] = self.emit("encrypt", (), tensor=value.name, tile=t)
            tiles = tuple(names[c] for c in layout.distinct_tiles)
            self.inputs.append(Packing(value.name, layout, tiles))
            self.notes.append(f"pack {value.name}{list(value.shape)} as {layout}")
            packed = Packed(layout, tiles)
        self._packed[key] = packed
        return packed

    def zero(self) -> str:
        return self.emit("zero")

    def move(self, src: Packed, target: Layout) -> Packed:
        """Bring `src` into `target` (same tensor, or its reshape: elements match by row-major index)."""
        if src.layout == target or (src.layout.dims == target.dims and src.layout.axes == target.axes
                                    and src.layout.clean >= target.clean):
            return Packed(target, src.tiles, src.plain)
        if src.plain:
            values = src.layout.unpack([self.plaintexts[t] for t in src.tiles]).reshape(target.shape)
            return Packed(target, tuple(self.plaintext(v) for v in target.pack(values)), plain=True)
        base = target.with_kinds({d.label: "gap" for d in target.dims if d.kind == "rep"}, clean=True)
        n = self.slots
        tmap, smap = base.element_map, src.layout.element_map
        if len(np.unique(tmap[tmap >= 0])) != math.prod(target.shape):
            raise UnsupportedError(f"cannot move into layout {target}: it does not hold every element")
        src_ids = [s for s in range(len(src.tiles)) if src.tiles.index(src.tiles[s]) == s]
        flat = smap.reshape(-1)
        held = np.flatnonzero(flat >= 0)
        elements, first = np.unique(flat[held], return_index=True)
        where = held[first]
        canonical = sorted(set(target.distinct_tiles))
        built: dict[int, str] = {}
        for t in canonical:
            need = tmap[t]
            wanted = need >= 0
            if not wanted.any():
                built[t] = self.zero()
                continue
            owner = np.full(n, -1)
            shift = np.zeros(n, dtype=np.int64)
            for s in src_ids:
                match = wanted & (owner < 0) & (smap[s] == need)
                owner[match] = s
            rest = np.flatnonzero(wanted & (owner < 0))
            if rest.size:
                idx = np.searchsorted(elements, need[rest])
                if np.any(idx >= elements.size) or np.any(elements[np.minimum(idx, elements.size - 1)] != need[rest]):
                    raise UnsupportedError(f"cannot move from {src.layout} to {target}: elements are missing")
                position = where[idx]
                owner[rest] = position // n
                shift[rest] = (position % n - rest) % n
            parts = []
            for s in np.unique(owner[owner >= 0]):
                mine = owner == s
                shifts = np.unique(shift[mine])
                if (len(shifts) == 1 and src.layout.clean
                        and np.array_equal(np.roll(smap[s], -int(shifts[0])), tmap[t])):
                    parts.append(self.rotate(src.tiles[s], int(shifts[0])))
                    continue
                masks = {int(k): (mine & (shift == k)).astype(np.float64) for k in shifts}
                parts.append(self.masked_rotations(src.tiles[s], masks))
            built[t] = self.add_all(parts)
        for d, stride in zip(target.dims, target.strides):
            if d.kind == "rep" and stride < n:
                for m in range(d.padded.bit_length() - 1):
                    for t in canonical:
                        built[t] = self.add(built[t], self.rotate(built[t], -(stride << m)))
        self.notes.append(f"move {src.layout} -> {target}")
        return Packed(replace(target, clean=True), tuple(built[c] for c in target.distinct_tiles))

    def masked_rotations(self, ct: str, masks: dict[int, np.ndarray]) -> str:
        """sum_k mask_k * rotate(ct, k), by baby-step giant-step: k = g*B + b shares the baby rotations."""
        shifts = np.array(sorted(masks))
        best = min((len(set((shifts % b).tolist()) - {0}) + len(set((shifts // b).tolist()) - {0}), b)
                   for b in [1 << e for e in range(self.slots.bit_length())])
        step = best[1]
        giants: dict[int, list[str]] = {}
        for k in shifts.tolist():
            g, b = divmod(k, step)
            mask = np.roll(masks[k], g * step)
            giants.setdefault(g, []).append(self.mul_plain(self.rotate(ct, b), mask))
        return self.add_all([self.rotate(self.add_all(terms), g * step) for g, terms in sorted(giants.items())])

    def tilewise(self, a: Packed, b: Packed, fn) -> Packed:
        return Packed(a.layout, tuple(fn(x, y) for x, y in zip(a.tiles, b.tiles)))

    # ----- einsum -------------------------------------------------------------------------------------
    def einsum(self, spec: EinsumSpec, operands: list[Value], shapes: list[tuple[int, ...]], order: str) -> Packed:
        sizes = spec.sizes(shapes)
        product_layout = joint_layout(order, sizes, order, self.slots)
        self.check_fits(product_layout, f"einsum '{spec}'")
        packed = [self.materialize(v, joint_layout(order, sizes, term, self.slots))
                  for v, term in zip(operands, spec.inputs)]
        ciphers = [p for p in packed if not p.plain]
        plains = [p for p in packed if p.plain]
        if not ciphers:
            raise UnsupportedError(f"einsum '{spec}' has only plaintext operands; constant-fold it first")
        tiles = []
        for t in range(product_layout.tiles):
            names = [p.tiles[t] for p in ciphers]
            while len(names) > 1:
                names = [self.mul(names[k], names[k + 1]) if k + 1 < len(names) else names[k]
                         for k in range(0, len(names), 2)]
            product = names[0]
            if plains:
                vector = np.prod([self.plaintexts[p.tiles[t]] for p in plains], axis=0)
                product = self.emit("mul_plain", (product, self.plaintext(vector)))
            tiles.append(product)
        clean = all(p.layout.clean for p in packed)
        return self.reduce(Packed(replace(product_layout, clean=clean), tuple(tiles)), spec.summed, spec.output)

    def reduce(self, product: Packed, summed: str, output: str) -> Packed:
        """Rotate-and-sum the summed labels held in slots; add tiles along summed labels held across tiles."""
        layout, n = product.layout, self.slots
        dims, strides = list(layout.dims), layout.strides
        ct_axes = [k for k, s in enumerate(strides) if s >= n]
        grid = np.array(product.tiles, dtype=object).reshape([dims[k].padded for k in ct_axes] or [1])
        clean = layout.clean
        kinds = []
        for d, stride in zip(dims, strides):
            if d.label not in summed or stride >= n:
                kinds.append(d)
                continue
            for m in range(d.padded.bit_length() - 1):
                grid = np.vectorize(lambda c, s=stride << m: self.add(c, self.rotate(c, s)), otypes=[object])(grid)
            full_cycle = stride * d.padded == n
            clean = clean and full_cycle
            kinds.append(replace(d, kind="rep" if full_cycle else "gap"))
        keep = [k for k in ct_axes if dims[k].label not in summed]
        for axis in reversed(range(len(ct_axes))):
            if dims[ct_axes[axis]].label in summed:
                grid = self._sum_axis(grid, axis)
        new_dims = tuple(d for k, d in enumerate(kinds) if k not in ct_axes or k in keep)
        result = Layout(new_dims, output, n, clean)
        return Packed(result, tuple(np.asarray(grid, dtype=object).reshape(-1).tolist()))

    def _sum_axis(self, grid: np.ndarray, axis: int) -> np.ndarray:
        moved = np.moveaxis(grid, axis, 0)
        out = np.empty(moved.shape[1:], dtype=object)
        for index in np.ndindex(out.shape):
            out[index] = self.add_all(list(moved[(slice(None), *index)]))
        return out
