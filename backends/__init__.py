"""Backends register here by name; each is a module loaded only when it is used.

A backend module provides:
  `DESCRIPTION: str`
  `available() -> tuple[bool, str]`: whether it can run here, and why not;
  `passes(options) -> list[str]`: target-specific passes to run after the generic pipeline;
  `lower(program, options) -> Lowered`: the compiled artifact (see einfold.backend_api.Lowered).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from einfold.errors import UnsupportedError

# target name -> module that implements it
BACKENDS: dict[str, str] = {
    "numpy": "einfold.backends.numpy_ref",
    "llvm": "einfold.backends.llvm",
    "tvm": "einfold.backends.tvm",
    "cuda": "einfold.backends.tvm.cuda",
    "ptx": "einfold.backends.llvm.ptx",
    "ckks": "einfold.backends.ckks",
    "tpu": "einfold.backends.tpu",
}


def register(name: str, module: str) -> None:
    BACKENDS[name] = module


def get(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise UnsupportedError(f"unknown target {name!r}; known targets: {', '.join(sorted(BACKENDS))} "
                               "(see `einfold targets`)")
    return importlib.import_module(BACKENDS[name])


def availability() -> dict[str, tuple[bool, str, str]]:
    """target -> (available, reason, description) for every registered target."""
    table = {}
    for name in sorted(BACKENDS):
        try:
            module = get(name)
            ok, reason = module.available()
            table[name] = (ok, reason, module.DESCRIPTION)
        except ImportError as error:
            table[name] = (False, f"not built: {error}", "")
        except Exception as error:  # a broken backend must not hide the others
            table[name] = (False, f"broken: {type(error).__name__}: {error}", "")
    return table
