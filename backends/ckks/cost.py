"""The cost model: op counts, rotation keys and an estimated latency, computed before anything runs.

Latencies are desilofhe 2.0 CPU figures measured on this project's 2-core machine (ms, at level l, for
16384 slots; other slot counts scale linearly): rotate 10 + 12.5 l, ct x ct multiply 15 + 15 l,
ct x pt multiply 2 + 3 l, add 0.05 + 0.08 l, bootstrap ~200 s; a ct x ct multiply whose
relinearisation is skipped (its product is only decrypted) 5 + 5 l.
"""

from __future__ import annotations

from collections import Counter

from .fhe_ir import FheProgram, Instr, level_cost

# opcode -> (ms at level 0, ms per extra level), at 16384 slots
MS = {
    "rotate": (10.0, 12.5),
    "mul": (15.0, 15.0),
    "mul without relinearisation": (5.0, 5.0),
    "mul_plain": (2.0, 3.0),
    "mul_scalar": (1.0, 1.0),
    "add": (0.05, 0.08), "sub": (0.05, 0.08), "add_plain": (0.5, 0.3), "sub_plain": (0.5, 0.3),
    "add_scalar": (0.05, 0.08), "neg": (0.05, 0.08),
    "bootstrap": (200_000.0, 0.0),
    "zero": (10.0, 5.0),
}


def instr_seconds(instr: Instr, slots: int, level: int) -> float:
    kind = "mul without relinearisation" if instr.opcode == "mul" and instr.attrs.get("relin") is False \
        else instr.opcode
    base, per_level = MS.get(kind, (0.0, 0.0))
    return (base + per_level * level) * (slots / 16384) / 1e3


def estimate(instrs: list[Instr], slots: int, level: int | None = None) -> float:
    """Seconds for the server to run `instrs` (at their assigned levels, or at `level` for all)."""
    return sum(instr_seconds(i, slots, i.level if i.level is not None else (level or 0)) for i in instrs)


def stats(fhe: FheProgram, depth: int) -> dict[str, object]:
    counts = Counter(i.opcode for i in fhe.instrs)
    scalar_levels = sum(1 for i in fhe.instrs if i.opcode == "mul_scalar" and level_cost(i))
    return {
        "rotations": counts["rotate"],
        "rotation_keys": len(fhe.rotation_amounts()),
        "ct_ct_mults": counts["mul"],
        "ct_pt_mults": counts["mul_plain"] + scalar_levels,
        "depth": depth,
        "bootstraps": counts["bootstrap"],
        "ciphertexts": counts["encrypt"],
        "slots": fhe.slots,
        "est_latency_s": round(estimate(fhe.instrs, fhe.slots), 4),
    }
