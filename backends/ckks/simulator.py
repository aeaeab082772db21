"""Run an FHE program: the shared instruction walk, and the numpy slot simulator (no encryption).

The simulator keeps each ciphertext as a slot vector and its level, applies the same level rules as
desilofhe (a multiply drops one level; operands at different levels meet at the lower one) and fails
loudly if the compiler's level plan would run out, so counts and levels are checked without keys.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from einfold.errors import RuntimeFailure

from .fhe_ir import FheProgram, level_cost
from .params import ParamSet

PLAIN_OPS = ("mul_plain", "add_plain", "sub_plain")


def interpret(fhe: FheProgram, executor: Any, env: dict[str, Any]) -> Counter:
    """Execute every instruction on `executor` (encrypted inputs are already in `env`); returns op counts."""
    counts: Counter = Counter()
    for instr in fhe.instrs:
        if instr.opcode == "encrypt":
            if instr.result not in env:
                raise RuntimeFailure(f"missing ciphertext %{instr.result} for input {instr.attrs['tensor']!r}")
            continue
        args = [env[a] for a in instr.args[:1]]
        if instr.opcode in PLAIN_OPS:
            args.append(executor.plaintext(instr.args[1], int(instr.level or 0) + level_cost(instr)))
        else:
            args += [env[a] for a in instr.args[1:]]
        env[instr.result] = getattr(executor, instr.opcode)(instr, *args)
        counts[instr.opcode] += 1
    return counts


@dataclass(frozen=True)
class SimCiphertext:
    slots: np.ndarray
    level: int


class Simulator:
    """Executes instructions on slot vectors, tracking levels exactly as the engine would."""

    def __init__(self, fhe: FheProgram, params: ParamSet):
        self.fhe = fhe
        self.params = params

    def encrypt(self, vector: np.ndarray, level: int) -> SimCiphertext:
        return SimCiphertext(np.asarray(vector, dtype=np.float64), level)

    def decrypt(self, ct: SimCiphertext) -> np.ndarray:
        return ct.slots

    def plaintext(self, name: str, level: int | None) -> np.ndarray:
        return self.fhe.plaintexts[name]

    def _level(self, instr, *cts: SimCiphertext) -> int:
        level = min(c.level for c in cts) - level_cost(instr)
        if level < 0:
            raise RuntimeFailure(f"%{instr.result} = {instr.opcode}: no level left (operands at "
                                 f"{[c.level for c in cts]})")
        return level

    def zero(self, instr) -> SimCiphertext:
        return SimCiphertext(np.zeros(self.fhe.slots), instr.level)

    def add(self, instr, a, b):
        return SimCiphertext(a.slots + b.slots, self._level(instr, a, b))

    def sub(self, instr, a, b):
        return SimCiphertext(a.slots - b.slots, self._level(instr, a, b))

    def mul(self, instr, a, b):
        return SimCiphertext(a.slots * b.slots, self._level(instr, a, b))

    def mul_plain(self, instr, a, p):
        return SimCiphertext(a.slots * p, self._level(instr, a))

    def add_plain(self, instr, a, p):
        return SimCiphertext(a.slots + p, self._level(instr, a))

    def sub_plain(self, instr, a, p):
        return SimCiphertext(a.slots - p, self._level(instr, a))

    def mul_scalar(self, instr, a):
        return SimCiphertext(a.slots * instr.attrs["value"], self._level(instr, a))

    def add_scalar(self, instr, a):
        return SimCiphertext(a.slots + instr.attrs["value"], self._level(instr, a))

    def neg(self, instr, a):
        return SimCiphertext(-a.slots, a.level)

    def rotate(self, instr, a):
        return SimCiphertext(np.roll(a.slots, -int(instr.attrs["by"])), a.level)

    def bootstrap(self, instr, a):
        if not self.params.bootstrap or a.level < self.params.boot_min_level:
            raise RuntimeFailure(f"%{instr.result}: cannot bootstrap at level {a.level} with {self.params.name}")
        return SimCiphertext(a.slots, self.params.boot_out_level)
