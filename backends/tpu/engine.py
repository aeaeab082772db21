"""The parameterised matrix engine: systolic arrays, input and accumulator types, vector unit, memories, clock.

The default is a TPU v5e-like core: 4 arrays of 128 x 128, int8 at twice the bf16 rate, a 1024-lane 32-bit vector
unit, 128 MiB of on-chip memory, 819 GB/s of HBM bandwidth, 1.5 GHz. `engine_from_options` applies overrides given
as `compile(..., engine={"arrays": 8})`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from einfold.errors import UnsupportedError


@dataclass(frozen=True)
class Engine:
    arrays: int = 4
    array_rows: int = 128
    array_cols: int = 128
    input_types: tuple[str, ...] = ("i8", "u8", "bf16")
    accumulators: tuple[str, ...] = ("i32", "f32")
    int8_rate: int = 2
    vpu_lanes: int = 1024
    on_chip_bytes: int = 128 * 2**20
    hbm_bytes_per_second: float = 819e9
    clock_hz: float = 1.5e9

    def __str__(self) -> str:
        return (f"{self.arrays} x {self.array_rows}x{self.array_cols} MXU (inputs {'/'.join(self.input_types)}, "
                f"int8 x{self.int8_rate}; acc {'/'.join(self.accumulators)}), VPU {self.vpu_lanes} lanes x 32 bit, "
                f"{self.on_chip_bytes // 2**20} MiB on-chip, {self.hbm_bytes_per_second / 1e9:g} GB/s HBM, "
                f"{self.clock_hz / 1e9:g} GHz")

    @property
    def hbm_bytes_per_cycle(self) -> float:
        return self.hbm_bytes_per_second / self.clock_hz

    def rate(self, input_type: str) -> int:
        """Streamed rows per cycle per array: int8 runs at `int8_rate` times the bf16 rate."""
        return self.int8_rate if input_type in ("i8", "u8") else 1

    def require(self, input_type: str, accumulator: str, what: str) -> None:
        if input_type not in self.input_types or accumulator not in self.accumulators:
            raise UnsupportedError(f"tpu: {what} needs {input_type} inputs with {accumulator} accumulation; this "
                                   f"engine has inputs {self.input_types} and accumulators {self.accumulators}")


DEFAULT_ENGINE = Engine()


def engine_from_options(options: dict) -> Engine:
    """The default engine with the fields given in options['engine'] (a dict) replaced."""
    overrides = options.get("engine") or {}
    if isinstance(overrides, Engine):
        return overrides
    known = {f.name for f in fields(Engine)}
    unknown = set(overrides) - known
    if unknown:
        raise UnsupportedError(f"tpu: unknown engine parameter(s) {sorted(unknown)}; known: {sorted(known)}")
    engine = replace(DEFAULT_ENGINE, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()})
    if engine.arrays < 1 or engine.array_rows < 1 or engine.array_cols < 1 or engine.vpu_lanes < 1:
        raise UnsupportedError(f"tpu: engine sizes must be positive, got {engine}")
    return engine
