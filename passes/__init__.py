"""The pass registry: every pass by the name the command line uses, and the default pipeline."""

from __future__ import annotations

from einfold.errors import IRError
from einfold.passmanager import Pass

from .canonicalize import canonicalize
from .ckks_packing import ckks_packing
from .constant_fold import constant_fold
from .contraction_plan import contraction_plan
from .cse import cse
from .dce import dce
from .factorize import factorize
from .fuse_epilogue import fuse_epilogue
from .mat_fold import mat_fold
from .ntt_three_step import ntt_three_step

PASSES: dict[str, Pass] = {p.name: p for p in [canonicalize, constant_fold, cse, dce, contraction_plan, fuse_epilogue]}
PASSES.update({p.name: p for p in [ntt_three_step, mat_fold]})
PASSES[factorize.name] = factorize
PASSES[ckks_packing.name] = ckks_packing

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
