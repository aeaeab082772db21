"""The pass registry: every pass by the name the command line uses, and the default pipeline."""

from __future__ import annotations

from einfold.errors import IRError
from einfold.passmanager import Pass

from .canonicalize import canonicalize
from .constant_fold import constant_fold
from .cse import cse
from .dce import dce

PASSES: dict[str, Pass] = {p.name: p for p in [canonicalize, constant_fold, cse, dce]}

# Run on every program before the target's own passes.
DEFAULT_PIPELINE = ["canonicalize", "constant-fold", "cse", "dce"]


def register(p: Pass) -> Pass:
    PASSES[p.name] = p
    return p


def get(name: str) -> Pass:
    try:
        return PASSES[name]
    except KeyError:
        raise IRError(f"unknown pass {name!r}; known passes: {', '.join(sorted(PASSES))}") from None
