"""Polynomials on ciphertexts with minimal depth: monomial series, and Chebyshev fits of relu, gelu,
sigmoid, exp, tanh on a stated interval [a, b].

A monomial series of degree d takes ceil(log2(d+1)) levels (p = q * x^(2^m) + r, split at the top power
of two). A fit evaluates sum_k c_k T_k(t) with t = (2x - a - b) / (b - a): 1 level for t, ceil(log2 d)
for T_2..T_d (T_{a+b} = 2 T_a T_b - T_{|a-b|}), 1 for the coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.polynomial import chebyshev

from einfold.errors import UnsupportedError
from einfold.functions import lookup

APPROXIMABLE = ("relu", "gelu", "sigmoid", "exp", "tanh")


@dataclass(frozen=True)
class ChebyshevFit:
    """`fn` on [lo, hi] as sum_k coeffs[k] T_k(t), with its maximum error measured on a fine grid."""

    fn: str
    lo: float
    hi: float
    coeffs: tuple[float, ...]
    max_error: float

    def __str__(self) -> str:
        return (f"{self.fn} ~ Chebyshev degree {len(self.coeffs) - 1} on [{self.lo:g}, {self.hi:g}], "
                f"max error {self.max_error:.2e}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return chebyshev.chebval(self.to_unit(x), self.coeffs)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        return (2 * np.asarray(x, dtype=np.float64) - self.lo - self.hi) / (self.hi - self.lo)

    @property
    def depth(self) -> int:
        return 2 + math.ceil(math.log2(max(len(self.coeffs) - 1, 1)))


def fit(fn: str, interval: tuple[float, float] = (-4.0, 4.0), degree: int = 15, method: str = "interp") -> ChebyshevFit:
    """Chebyshev interpolation ('interp') or least squares on a dense grid ('lsq') of `fn` on `interval`."""
    if fn not in APPROXIMABLE:
        raise UnsupportedError(f"no polynomial approximation for {fn!r}; approximable: {', '.join(APPROXIMABLE)}")
    lo, hi = float(interval[0]), float(interval[1])
    if not lo < hi or degree < 1:
        raise UnsupportedError(f"approximation of {fn}: need lo < hi and degree >= 1, got [{lo}, {hi}], {degree}")
    reference: Callable[[np.ndarray], np.ndarray] = lookup(fn).reference
    scaled = lambda t: reference((t * (hi - lo) + lo + hi) / 2)  # noqa: E731
    if method == "interp":
        coeffs = chebyshev.chebinterpolate(scaled, degree)
    elif method == "lsq":
        t = np.cos(np.linspace(0, np.pi, 8 * (degree + 1)))
        coeffs = chebyshev.chebfit(t, scaled(t), degree)
    else:
        raise UnsupportedError(f"approximation method {method!r}: use 'interp' or 'lsq'")
    grid = np.linspace(lo, hi, 4001)
    error = float(np.max(np.abs(chebyshev.chebval((2 * grid - lo - hi) / (hi - lo), coeffs) - reference(grid))))
    return ChebyshevFit(fn, lo, hi, tuple(float(c) for c in coeffs), error)


def monomial_depth(degree: int) -> int:
    return math.ceil(math.log2(degree + 1)) if degree > 0 else 0


class PolyEvaluator:
    """Evaluates polynomials on one ciphertext through a builder's mul/mul_scalar/add/add_scalar."""

    def __init__(self, builder, x: str):
        self.b = builder
        self.x = x
        self.powers: dict[int, str] = {1: x}

    def power(self, k: int) -> str:
        """x^k for k a power of two, by repeated squaring."""
        if k not in self.powers:
            half = self.power(k // 2)
            self.powers[k] = self.b.mul(half, half)
        return self.powers[k]

    def monomial(self, coeffs: list[float]) -> str | float:
        """sum_k coeffs[k] x^k as a ciphertext (or a float when it is constant)."""
        while len(coeffs) > 1 and coeffs[-1] == 0:
            coeffs = coeffs[:-1]
        degree = len(coeffs) - 1
        if degree == 0:
            return float(coeffs[0])
        if degree == 1:
            return self._plus(self.b.mul_scalar(self.x, coeffs[1]), coeffs[0])
        top = 1 << (degree.bit_length() - 1)
        high = self.monomial(coeffs[top:])
        if isinstance(high, float):
            half = self.power(top // 2)
            term = self.b.mul(self.b.mul_scalar(half, high), half)
        else:
            term = self.b.mul(high, self.power(top))
        low = self.monomial(coeffs[:top])
        return self._plus(term, low)

    def chebyshev(self, coeffs: tuple[float, ...]) -> str:
        """sum_k coeffs[k] T_k(x) (x already mapped to [-1, 1])."""
        basis: dict[int, str] = {1: self.x}

        def t(k: int) -> str:
            if k not in basis:
                a = 1 << ((k - 1).bit_length() - 1)
                b = k - a
                product = self.b.mul_scalar(self.b.mul(t(a), t(b)), 2)
                basis[k] = (self.b.add_scalar(product, -1.0) if a == b
                            else self.b.emit("sub", (product, t(a - b))))
            return basis[k]

        terms = [self.b.mul_scalar(t(k), c) for k, c in enumerate(coeffs) if k >= 1 and c != 0]
        if not terms:
            raise UnsupportedError("the approximation is constant; nothing to evaluate on the ciphertext")
        return self.b.add_scalar(self.b.add_all(terms), coeffs[0])

    def _plus(self, ct: str, value: str | float) -> str:
        if isinstance(value, float):
            return self.b.add_scalar(ct, value)
        return self.b.add(ct, value)
