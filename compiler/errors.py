"""The einfold error hierarchy: every user-facing failure is one of these, with a message saying what and where."""

from __future__ import annotations


class Error(Exception):
    """Base class of every error einfold raises on purpose."""


class SpecError(Error, ValueError):
    """A malformed einsum spec, or operands that do not fit it."""


class IRError(Error, ValueError):
    """A malformed program: bad types, shapes, SSA names or attributes."""


class UnsupportedError(Error, NotImplementedError):
    """A valid program that the chosen backend or pass cannot handle."""


class SourceError(Error, SyntaxError):
    """An error in a `.ein` or IR text, reported as file:line:col with the source line."""

    def __init__(self, message: str, filename: str = "<string>", line: int = 0, column: int = 0,
                 source_line: str = ""):
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column
        self.source_line = source_line
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.filename}:{self.line}:{self.column}: " if self.line else f"{self.filename}: "
        text = where + self.message
        if self.source_line:
            text += "\n    " + self.source_line.rstrip("\n") + "\n    " + " " * max(self.column - 1, 0) + "^"
        return text

    def __str__(self) -> str:
        return self.render()


class RuntimeFailure(Error, RuntimeError):
    """A compiled program could not run: missing weights, wrong inputs, no device present."""
