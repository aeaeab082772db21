"""What a backend hands back to the compile driver: a `Lowered` artifact that runs and prints itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import UnsupportedError


@dataclass
class Lowered:
    """A compiled program.

    run: takes the input arrays (already checked against the program's types) and returns the outputs.
    emits: for each `--emit` kind the backend offers ('tir', 'llvm', 'asm', 'fhe', ...), a function
        returning that text; the driver adds 'ir' itself.
    stages: extra IR stages below the einfold IR (name -> text), shown by `exe.stages`/`einfold inspect`.
    stats: backend figures merged into `exe.stats()`.
    noise: absolute error the target may add beyond floating-point rounding (CKKS noise), used by `--check`.
    api: extra methods of the executable (`exe.keygen` is `api['keygen']`), for targets with a split workflow.
    source_kind: what `exe.source()` prints by default.
    """

    run: Callable[[list[np.ndarray]], list[np.ndarray]]
    emits: dict[str, Callable[[], str]] = field(default_factory=dict)
    stages: dict[str, str] = field(default_factory=dict)
    stats: dict[str, object] = field(default_factory=dict)
    noise: float = 0.0
    api: dict[str, Callable] = field(default_factory=dict)
    source_kind: str | None = None

    def emit(self, kind: str) -> str:
        if kind not in self.emits:
            raise UnsupportedError(f"this target cannot emit {kind!r}; it offers: "
                                   f"{', '.join(['ir', *self.emits]) }")
        return self.emits[kind]()
