"""The pass manager: runs named `Program -> Program` passes, verifying after each and timing each.

A pass is any object with a `name` and an `apply(program, options) -> Program` method; `function_pass`
makes one from a plain function. Passes register by name in `einfold.passes.PASSES`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TextIO

from .errors import IRError
from .ir import Program


class Pass(Protocol):
    name: str

    def apply(self, program: Program, options: dict) -> Program: ...


@dataclass(frozen=True)
class FunctionPass:
    name: str
    function: Callable[[Program, dict], Program]
    summary: str

    def apply(self, program: Program, options: dict) -> Program:
        return self.function(program, options)


def function_pass(name: str) -> Callable[[Callable[[Program, dict], Program]], FunctionPass]:
    """Decorator: `@function_pass("dce")` on `def dce(program, options) -> Program`."""
    def wrap(function: Callable[[Program, dict], Program]) -> FunctionPass:
        summary = (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else ""
        return FunctionPass(name, function, summary)
    return wrap


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: its name, time taken, and the IR text after it."""

    name: str
    seconds: float
    ir: str


class PassManager:
    def __init__(self, passes: Iterable[Pass], print_after: Iterable[str] | str | None = None,
                 stream: TextIO | None = None, verify_each: bool = True):
        self.passes = list(passes)
        if print_after == "all":
            self.print_after = {p.name for p in self.passes}
        else:
            self.print_after = set([print_after] if isinstance(print_after, str) else (print_after or ()))
        unknown = self.print_after - {p.name for p in self.passes}
        if unknown:
            raise IRError(f"--print-after names pass(es) not in the pipeline: {', '.join(sorted(unknown))}; "
                          f"the pipeline is: {', '.join(p.name for p in self.passes)}")
        self.stream = stream or sys.stdout
        self.verify_each = verify_each

    def run(self, program: Program, options: dict) -> tuple[Program, list[PassRecord]]:
        records = []
        for p in self.passes:
            start = time.perf_counter()
            result = p.apply(program, options)
            if self.verify_each:
                try:
                    result.verify()
                except IRError as error:
                    raise IRError(f"after pass {p.name!r}: {error}") from None
            seconds = time.perf_counter() - start
            text = str(result)
            records.append(PassRecord(p.name, seconds, text))
            if p.name in self.print_after:
                self.stream.write(f"// ----- IR after {p.name} ({seconds * 1e3:.2f} ms) -----\n{text}")
            program = result
        return program, records
