"""Barrett reduction and modular multiply on unsigned 64-bit words, written once for numpy and jax.numpy (`xp`).

r = z - floor(floor(z / 2^(c-1)) m / 2^(c+1)) q, then at most two conditional subtractions, with c = ceil(log2 q),
s = 2c, m = floor(2^s / q); valid for z < 2^s. Values wider than 64 bits travel as (hi, lo) word pairs.
The JAX emitter copies these functions' source into the emitted module, so both paths run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from einfold.errors import UnsupportedError

MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Barrett:
    """Constants of Barrett reduction modulo q: c = ceil(log2 q), s = 2c, m = floor(2^s / q)."""

    q: int
    c: int
    s: int
    m: int

    @property
    def wide(self) -> bool:
        """Whether reductions need (hi, lo) words: z1 * m no longer fits 64 bits when c > 31."""
        return self.c > 31


def barrett(q: int) -> Barrett:
    if not 2**8 <= q < 2**62:
        raise UnsupportedError(f"Barrett reduction on the tpu target needs 2^8 <= q < 2^62, got q = {q}")
    c = (q - 1).bit_length()
    return Barrett(q, c, 2 * c, 2 ** (2 * c) // q)


def mul_wide(a: Any, b: Any, xp: Any) -> tuple[Any, Any]:
    """Full 128-bit product of uint64 arrays as (hi, lo), from four 32 x 32 -> 64-bit products."""
    u32 = xp.uint64(32)
    mask = xp.uint64(MASK32)
    a0, a1, b0, b1 = a & mask, a >> u32, b & mask, b >> u32
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    middle = (p00 >> u32) + (p01 & mask) + (p10 & mask)
    lo = (p00 & mask) | ((middle & mask) << u32)
    hi = p11 + (p01 >> u32) + (p10 >> u32) + (middle >> u32)
    return hi, lo


def _finish(z_lo: Any, estimate: Any, q: int, xp: Any) -> Any:
    """z - estimate * q is in [0, 3q): two conditional subtractions (mod 2^64 arithmetic is exact here)."""
    q64 = xp.uint64(q)
    r = z_lo - estimate * q64
    r = xp.where(r >= q64, r - q64, r)
    return xp.where(r >= q64, r - q64, r)


def reduce_word(z: Any, params: Barrett, xp: Any) -> Any:
    """z mod q for uint64 z < 2^s when c <= 31 (z1 = z >> (c-1) and m are below 2^32, so z1 * m fits)."""
    z1 = z >> xp.uint64(params.c - 1)
    estimate = (z1 * xp.uint64(params.m)) >> xp.uint64(params.c + 1)
    return _finish(z, estimate, params.q, xp)


def reduce_wide(z_hi: Any, z_lo: Any, params: Barrett, xp: Any) -> Any:
    """z mod q for a 128-bit z = (hi, lo) < 2^s, c <= 62: the quotient estimate from a 64 x 64 -> 128 product."""
    c = params.c
    z1 = (z_hi << xp.uint64(65 - c)) | (z_lo >> xp.uint64(c - 1))
    p_hi, p_lo = mul_wide(z1, xp.full_like(z1, params.m), xp)
    shift = c + 1
    estimate = (p_hi << xp.uint64(64 - shift)) | (p_lo >> xp.uint64(shift)) if shift < 64 else p_hi
    return _finish(z_lo, estimate, params.q, xp)


def mulmod(a: Any, b: Any, params: Barrett, xp: Any) -> Any:
    """a * b mod q for uint64 arrays of values below q (broadcasting)."""
    if not params.wide:
        return reduce_word(a * b, params, xp)
    hi, lo = mul_wide(a, b, xp)
    return reduce_wide(hi, lo, params, xp)


def addmod(a: Any, b: Any, q: int, xp: Any) -> Any:
    """a + b mod q for values below q < 2^63."""
    total = a + b
    return xp.where(total >= xp.uint64(q), total - xp.uint64(q), total)


def submod(a: Any, b: Any, q: int, xp: Any) -> Any:
    """a - b mod q for values below q < 2^63."""
    return xp.where(a >= b, a - b, a + (xp.uint64(q) - b))
