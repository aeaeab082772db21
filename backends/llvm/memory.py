"""Where every value of a program lives at run time: a slot in the pointer table the generated entry function
reads. Inputs and outputs are bound per call, weights and literals once, intermediates in a preallocated arena
(regions reused once a value is dead); reshapes alias their operand and fused epilogue values get no buffer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from einfold.ir import Op, Program
from einfold.reference import literal_array

ALIGN = 64


@dataclass(frozen=True)
class Chain:
    """A fused epilogue: the anchor einsum, its chain ops in order, and the value the anchor writes."""

    anchor: Op
    ops: tuple[Op, ...]

    @property
    def last(self) -> Op:
        return self.ops[-1]


@dataclass
class MemoryPlan:
    """Slot of each value; per-call slots of inputs and outputs; bound arrays; arena regions."""

    value_slot: dict[str, int] = field(default_factory=dict)
    input_slots: list[int] = field(default_factory=list)
    output_slots: list[int] = field(default_factory=list)
    bound: dict[int, np.ndarray] = field(default_factory=dict)
    arena: dict[int, tuple[int, int]] = field(default_factory=dict)  # slot -> (offset, bytes)
    arena_bytes: int = 0
    copies: list[tuple[str, int]] = field(default_factory=list)  # (value, output slot) copied at the end
    slots: int = 0

    def new_slot(self) -> int:
        self.slots += 1
        return self.slots - 1

    def add_region(self, nbytes: int, slot: int) -> None:
        """A private arena region for `slot` (the workspace); intermediates go through `_Arena` for reuse."""
        offset = _round_up(self.arena_bytes)
        self.arena[slot] = (offset, nbytes)
        self.arena_bytes = offset + _round_up(nbytes)


def _round_up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def find_chains(program: Program) -> dict[str, Chain]:
    """Fused epilogues from the `epilogue_of` attributes (set by the fuse-epilogue pass), by anchor name."""
    members: dict[str, list[Op]] = {}
    for op in program.ops:
        anchor = op.attrs.get("epilogue_of")
        if anchor is not None:
            members.setdefault(anchor, []).append(op)
    return {name: Chain(program.defining_op(name), tuple(ops)) for name, ops in members.items()}


def plan_memory(program: Program, chains: dict[str, Chain]) -> MemoryPlan:
    plan = MemoryPlan()
    for op in program.inputs:
        slot = plan.new_slot()
        plan.value_slot[op.result] = slot
        plan.input_slots.append(slot)
    first_output: dict[str, int] = {}
    for name in program.outputs:
        slot = plan.new_slot()
        plan.output_slots.append(slot)
        first_output.setdefault(name, slot)

    in_chain = {op.result for chain in chains.values() for op in chain.ops}
    computed: set[str] = set()
    arena = _Arena(plan, program)

    def place(value: Op) -> int:
        if value.result in first_output:
            computed.add(value.result)
            return first_output[value.result]
        return arena.allocate(value.result, value.type.nbytes)

    for op in program.ops:
        name = op.result
        if op.opcode == "input" or name in in_chain:
            continue
        if op.opcode in ("const", "literal"):
            array = program.weights[op.attrs["name"]] if op.opcode == "const" else literal_array(op)
            slot = plan.new_slot()
            plan.bound[slot] = np.ascontiguousarray(array)
            plan.value_slot[name] = slot
            continue
        if op.opcode == "reshape" and name not in first_output:
            plan.value_slot[name] = plan.value_slot[op.operands[0]]
            arena.alias(name, op.operands[0])
            continue
        chain = chains.get(name)
        if chain is not None:
            # The chain runs right after its anchor: its last value is placed now; the anchor writes into it
            # when the dtypes agree (the chain then updates it in place).
            plan.value_slot[chain.last.result] = place(chain.last)
            same = chain.last.type.dtype == op.type.dtype
            plan.value_slot[name] = plan.value_slot[chain.last.result] if same else place(op)
        else:
            plan.value_slot[name] = place(op)
        arena.release_dead(op)
    for name, slot in zip(program.outputs, plan.output_slots):
        if name not in computed or slot != first_output[name]:
            plan.copies.append((name, slot))
    return plan


class _Arena:
    """Intermediates' arena regions, reused after a value's last reader (aliases keep their root alive)."""

    def __init__(self, plan: MemoryPlan, program: Program):
        self.plan = plan
        self.free: list[tuple[int, int]] = []  # (offset, bytes)
        self.region: dict[str, tuple[int, int]] = {}
        self.root: dict[str, str] = {}
        self.last_use: dict[str, int] = {}
        self.outputs = set(program.outputs)
        self.position = {op.result: k for k, op in enumerate(program.ops)}
        for k, op in enumerate(program.ops):
            for operand in op.operands:
                self.last_use[operand] = k

    def alias(self, name: str, target: str) -> None:
        root = self.root.get(target, target)
        self.root[name] = root
        self.last_use[root] = max(self.last_use.get(root, -1), self.last_use.get(name, -1))

    def allocate(self, name: str, nbytes: int) -> int:
        size = _round_up(max(nbytes, 1))
        slot = self.plan.new_slot()
        for k, (offset, free_bytes) in enumerate(self.free):
            if free_bytes >= size:
                self.free[k] = (offset + size, free_bytes - size)
                break
        else:
            offset = self.plan.arena_bytes
            self.plan.arena_bytes += size
        self.plan.arena[slot] = (offset, nbytes)
        self.region[name] = (offset, size)
        return slot

    def release_dead(self, op: Op) -> None:
        """Free the regions whose last reader is `op` (never an output's region)."""
        here = self.position[op.result]
        for operand in set(op.operands):
            root = self.root.get(operand, operand)
            if root in self.region and self.last_use.get(root, -1) <= here and root not in self.outputs:
                self.free.append(self.region.pop(root))
