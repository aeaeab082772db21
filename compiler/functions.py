"""Named scalar functions for the `map` op: one table that every backend reads.

Each entry gives the numpy reference, the FLOPs per element, and whether it is a polynomial
(CKKS evaluates polynomials directly; other functions need an approximation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import IRError

_SQRT_2_OVER_PI = 0.7978845608028654


def _gelu(x: np.ndarray) -> np.ndarray:
    # The tanh form of GELU (Hendrycks & Gimpel), the one every backend implements.
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


def _poly(x: np.ndarray, coeffs: list[float]) -> np.ndarray:
    """sum_k coeffs[k] * x**k by Horner's rule."""
    result = np.zeros_like(x)
    for c in reversed(coeffs):
        result = result * x + np.asarray(c).astype(x.dtype)
    return result


@dataclass(frozen=True)
class ScalarFunction:
    name: str
    reference: Callable[..., np.ndarray]
    flops_per_element: int
    polynomial: bool = False
    float_only: bool = True


FUNCTIONS: dict[str, ScalarFunction] = {f.name: f for f in [
    ScalarFunction("relu", lambda x: np.maximum(x, np.zeros((), x.dtype)), 1, float_only=False),
    ScalarFunction("exp", np.exp, 1),
    ScalarFunction("log", np.log, 1),
    ScalarFunction("tanh", np.tanh, 1),
    ScalarFunction("sigmoid", lambda x: (1 / (1 + np.exp(-x))).astype(x.dtype), 4),
    ScalarFunction("gelu", lambda x: _gelu(x).astype(x.dtype), 8),
    ScalarFunction("sqrt", np.sqrt, 1),
    ScalarFunction("reciprocal", lambda x: (np.ones((), x.dtype) / x).astype(x.dtype), 1),
    ScalarFunction("abs", np.abs, 1, float_only=False),
    ScalarFunction("square", lambda x: x * x, 1, polynomial=True, float_only=False),
    ScalarFunction("poly", _poly, 2, polynomial=True, float_only=False),
]}


def lookup(name: str) -> ScalarFunction:
    try:
        return FUNCTIONS[name]
    except KeyError:
        raise IRError(f"unknown function {name!r}; known functions: {', '.join(sorted(FUNCTIONS))}") from None
