"""einfold: a compiler for structured tensor programs written as einsums.

    import einfold, numpy as np
    exe = einfold.compile("bi,oi->bo", shapes=[(8, 64), (32, 64)], target="numpy")
    y = exe(x, w)
"""

from __future__ import annotations

from .driver import Executable, compile
from .dtypes import DType, zq
from .errors import Error, IRError, RuntimeFailure, SourceError, SpecError, UnsupportedError
from .ir import Op, Program
from .ops import TensorType
from .spec import EinsumSpec
from .textir import parse_ir

# Frontend names load on first use (the frontends import more than the core needs).
_FRONTEND = {
    "einsum": "einfold.frontend.numpy_api",
    "trace": "einfold.frontend.tracing", "relu": "einfold.frontend.tracing", "exp": "einfold.frontend.tracing",
    "tanh": "einfold.frontend.tracing", "gelu": "einfold.frontend.tracing",
    "sigmoid": "einfold.frontend.tracing", "square": "einfold.frontend.tracing",
    "poly": "einfold.frontend.tracing", "log": "einfold.frontend.tracing", "sqrt": "einfold.frontend.tracing",
    "function": "einfold.frontend.tracing",
    "load_ein": "einfold.frontend.dsl",
}


def __getattr__(name: str):
    if name in _FRONTEND:
        import importlib
        return getattr(importlib.import_module(_FRONTEND[name]), name)
    raise AttributeError(f"module 'einfold' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "DType", "zq", "Error", "IRError", "RuntimeFailure", "SourceError", "SpecError", "UnsupportedError",
    "Op", "Program", "TensorType", "EinsumSpec", "parse_ir", "Executable", "compile",
    "einsum", "trace", "relu", "exp", "tanh", "gelu", "sigmoid", "square", "poly", "log", "sqrt", "function",
    "load_ein",
]
