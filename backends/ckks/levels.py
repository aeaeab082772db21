"""Level management: encrypt each input at the level the program still needs, give every instruction its
level, and insert bootstraps where a ciphertext would run out of levels (parameter sets that bootstrap).

need(v) = most levels consumed on any path from v to an output; an input is encrypted at
min(need, max_level). Before an op that consumes a level, an operand that could not finish from
there and would fall below the bootstrap threshold is bootstrapped first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from einfold.errors import UnsupportedError

from .fhe_ir import FheProgram, Instr, level_cost
from .params import ParamSet


@dataclass(frozen=True)
class LevelPlan:
    program: FheProgram
    depth: int
    bootstraps: int


def is_cipher(name: str) -> bool:
    return name.startswith("c")


def needs(instrs: list[Instr], outputs: list[str]) -> dict[str, int]:
    need: dict[str, int] = {name: 0 for name in outputs}
    for instr in reversed(instrs):
        after = need.get(instr.result, 0) + level_cost(instr)
        for arg in instr.args:
            if is_cipher(arg):
                need[arg] = max(need.get(arg, 0), after)
    return need


def assign_levels(fhe: FheProgram, params: ParamSet) -> LevelPlan:
    outputs = [t for p in fhe.outputs for t in p.tiles]
    need = needs(fhe.instrs, outputs)
    depth = max((need.get(i.result, 0) for i in fhe.instrs if i.opcode in ("encrypt", "zero")), default=0)
    if depth > params.max_level and not params.bootstrap:
        raise UnsupportedError(
            f"the program needs multiplicative depth {depth}, more than parameter set {params.name} offers "
            f"(max level {params.max_level}) and it cannot bootstrap; choose params='auto' or 'n32768-boot'")
    if params.bootstrap and params.boot_out_level - params.boot_min_level < 1:
        raise UnsupportedError(f"parameter set {params.name}: bootstrapping leaves no level to compute with")
    level: dict[str, int] = {}
    refreshed: dict[str, str] = {}
    out: list[Instr] = []
    bootstraps = 0
    for instr in fhe.instrs:
        if instr.opcode in ("encrypt", "zero"):
            level[instr.result] = min(need.get(instr.result, 0), params.max_level)
            out.append(replace(instr, level=level[instr.result]))
            continue
        cost = level_cost(instr)
        args = list(instr.args)
        for k, arg in enumerate(args):
            if not is_cipher(arg):
                continue
            arg = refreshed.get(arg, arg)
            args[k] = arg
            if level[arg] - cost < need.get(instr.result, 0) and level[arg] - cost < params.boot_min_level:
                if not params.bootstrap:
                    raise UnsupportedError(f"%{instr.result} = {instr.opcode}: ran out of levels "
                                           f"(level {level[arg]}) in parameter set {params.name}")
                boot = f"{arg}.boot"
                if boot not in level:
                    out.append(Instr("bootstrap", boot, (arg,), {}, params.boot_out_level))
                    level[boot] = params.boot_out_level
                    bootstraps += 1
                refreshed[instr.args[k]] = boot
                args[k] = boot
        result_level = min(level[a] for a in args if is_cipher(a)) - cost
        if result_level < 0:
            raise UnsupportedError(f"%{instr.result} = {instr.opcode}: no level left (internal level plan error)")
        level[instr.result] = result_level
        out.append(replace(instr, args=tuple(args), level=result_level))
    outputs_fixed = [replace(p, tiles=tuple(refreshed.get(t, t) for t in p.tiles)) for p in fhe.outputs]
    return LevelPlan(replace(fhe, instrs=lazy_relinearization(out), outputs=outputs_fixed), depth, bootstraps)


def lazy_relinearization(instrs: list[Instr]) -> list[Instr]:
    """A ct x ct product that no instruction reads goes straight to the client, who decrypts the degree-2
    ciphertext as it is: its relinearisation (a key switch, about 2/3 of the multiply) is skipped (`relin=False`)."""
    read = {arg for instr in instrs for arg in instr.args}
    return [replace(i, attrs={**i.attrs, "relin": False}) if i.opcode == "mul" and i.result not in read else i
            for i in instrs]
