"""The FHE-level IR: an SSA list of ciphertext/plaintext instructions with the layout of every tensor.

    %c0 = encrypt x[tile 0] level 2          // x as ct[] slot[i:128@128 k*128@1]
    %c1 = mul_plain %c0, %p0                 // level 1
    %c2 = rotate %c1 by 64 ...
    decrypt y <- %c5 as slot[i:128@128 k~128@1] dirty
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .layout import Layout

# opcode -> levels it consumes (mul_scalar consumes one only for a non-integer scalar; see `level_cost`)
LEVEL_COST = {"mul": 1, "mul_plain": 1, "mul_scalar": 1}
CIPHERTEXT_OPS = ("encrypt", "zero", "add", "sub", "add_plain", "sub_plain", "add_scalar", "mul", "mul_plain",
                  "mul_scalar", "neg", "rotate", "bootstrap")


@dataclass(frozen=True)
class Instr:
    """`result = opcode(args) {attrs}`; `level` is the result's level once levels are assigned."""

    opcode: str
    result: str
    args: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    level: int | None = None

    def __str__(self) -> str:
        args = ", ".join(f"%{a}" for a in self.args)
        extra = " ".join(f"{k}={_fmt(v)}" for k, v in self.attrs.items() if k not in ("note",))
        text = f"%{self.result} = {self.opcode}" + (f" {args}" if args else "") + (f" {extra}" if extra else "")
        notes = [f"level {self.level}"] if self.level is not None else []
        if "note" in self.attrs:
            notes.append(self.attrs["note"])
        return f"{text:<48} // {'; '.join(notes)}" if notes else text


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def level_cost(instr: Instr) -> int:
    if instr.opcode == "mul_scalar":
        value = instr.attrs["value"]
        return 0 if float(value).is_integer() else 1
    return LEVEL_COST.get(instr.opcode, 0)


@dataclass(frozen=True)
class Packing:
    """A tensor crossing the client/server boundary: its name, layout and the value holding each tile."""

    name: str
    layout: Layout
    tiles: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.name}: {self.layout}  tiles ({', '.join('%' + t for t in self.tiles)})"


@dataclass
class FheProgram:
    """A lowered program: instructions, the packings of inputs/outputs, and the plaintext slot vectors."""

    slots: int
    instrs: list[Instr]
    inputs: list[Packing]
    outputs: list[Packing]
    plaintexts: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]          # encrypted weights (plaintext_weights=False): tensor data
    notes: list[str] = field(default_factory=list)
    params: str = ""

    def __str__(self) -> str:
        lines = [f"fhe program ({self.params}; {self.slots} slots per ciphertext)"]
        lines += [f"  // {note}" for note in self.notes]
        lines += [f"  input {p}" for p in self.inputs]
        lines += [f"  {instr}" for instr in self.instrs]
        lines += [f"  decrypt {p}" for p in self.outputs]
        return "\n".join(lines) + "\n"

    def rotation_amounts(self) -> list[int]:
        return sorted({int(i.attrs["by"]) for i in self.instrs if i.opcode == "rotate"})
