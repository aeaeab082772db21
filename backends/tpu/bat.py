"""BAT (basis-aligned transformation): a modular matmul by a constant as one int8 GEMM, a shift-add and a Barrett.

    y[z] = sum_j A[z,j] x[j] (mod q)  ->  acc[z,t] = sum_(j,p) D[(z,t),(j,p)] (x_p[j] - 128) + bias[z,t],
    y[z] = Barrett(sum_t acc[z,t] 2^(8t) + OFF)
with x_p the bytes of x, D[(z,t),(j,p)] the balanced base-256 digits (int8) of the signed residue of A[z,j] 2^(8p)
mod q, bias = 128 * (row sums of D) (it undoes the -128 that makes the data bytes int8) and OFF a multiple of q that
makes the sum non-negative. Row blocks may have different moduli (basis conversion: one GEMM, a modulus per block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from einfold.errors import UnsupportedError

from .barrett import Barrett, barrett, reduce_wide, reduce_word

INT32_MAX = 2**31 - 1


def byte_count(bound: int) -> int:
    """Bytes K that hold every integer up to `bound`: K = ceil(log2(bound + 1) / 8)."""
    return max(1, -(-int(bound).bit_length() // 8))


def digit_count(q: int) -> int:
    """Balanced base-256 digits that hold every signed residue in [-q/2, q/2]: usually ceil(log2 q / 8), one more
    when q lies within 0.4% of 2^(8K)."""
    count = byte_count(q - 1)
    return count if q // 2 <= 127 * (256**count - 1) // 255 else count + 1


def signed_digits(values: np.ndarray, count: int) -> np.ndarray:
    """Balanced base-256 digits in [-128, 127] of signed Python integers: v = sum_t d_t 256^t; shape (..., count)."""
    rest = np.asarray(values, dtype=object)
    digits = np.zeros((*rest.shape, count), dtype=np.int8)
    for t in range(count):
        digit = (rest + 128) % 256 - 128
        digits[..., t] = digit.astype(np.int64)
        rest = (rest - digit) // 256
    if np.any(rest != 0):
        raise UnsupportedError(f"BAT: a residue does not fit {count} balanced digits")
    return digits


@dataclass(frozen=True)
class BatBlock:
    """Rows of one modulus in a BAT GEMM: `rows` outputs, each `k_out` accumulator rows, reduced modulo `q`."""

    q: int
    rows: int
    k_out: int
    offset: int
    barrett: Barrett


@dataclass(frozen=True)
class BatWeights:
    """The int8 weight matrix (sum rows*k_out) x (J*k_in), the per-row int32 bias, and the row blocks."""

    matrix: np.ndarray
    bias: np.ndarray
    blocks: tuple[BatBlock, ...]
    contraction: int
    k_in: int

    @property
    def macs_per_column(self) -> int:
        return self.matrix.shape[0] * self.matrix.shape[1]


def bat_weights(constants: list[tuple[int, np.ndarray]], k_in: int) -> BatWeights:
    """BAT matrices for blocks (q, A) with A: uint64[rows, J] over Z_q, for data of k_in bytes per element.
    Checks at compile time: int32 accumulators cannot overflow, and the shifted sum meets Barrett's z < 2^s."""
    contraction = constants[0][1].shape[1]
    kc = contraction * k_in
    if kc * 128 * 255 > INT32_MAX:
        raise UnsupportedError(f"BAT: contraction length {contraction} x {k_in} bytes = {kc} overflows the int32 "
                               f"accumulator (needs {kc} x 128 x 255 <= 2^31 - 1, i.e. at most {INT32_MAX // 32640})")
    matrices, biases, blocks = [], [], []
    for q, a in constants:
        params = barrett(q)
        k_out = digit_count(q)
        shifted = np.asarray(a, dtype=object)[:, :, None] * np.array([pow(2, 8 * p, q) for p in range(k_in)],
                                                                     dtype=object) % q
        signed = np.where(shifted > q // 2, shifted - q, shifted)
        digits = signed_digits(signed, k_out)                      # [z, j, p, t]
        rows = a.shape[0]
        matrices.append(digits.transpose(0, 3, 1, 2).reshape(rows * k_out, kc))
        biases.append(128 * digits.astype(np.int64).sum(axis=(1, 2)).reshape(rows * k_out))
        offset = q * math.ceil(kc * 255 * (q // 2) / q)
        if 2 * offset >= 2**params.s:
            raise UnsupportedError(f"BAT: Barrett precondition fails for q = {q}: the shifted sum reaches "
                                   f"2^{(2 * offset).bit_length()} >= 2^s = 2^{params.s}; the contraction "
                                   f"({contraction}) is too long for this modulus (log2 q >= 8 + log2(J K))")
        blocks.append(BatBlock(q, rows, k_out, offset, params))
    return BatWeights(np.concatenate(matrices), np.concatenate(biases).astype(np.int32), tuple(blocks),
                      contraction, k_in)


def data_bytes(x: Any, k_in: int, xp: Any) -> Any:
    """x: uint64[pre, J, post] -> int8[pre, J*k_in, post]: byte p of x[j] minus 128 at row j*k_in + p."""
    pre, j, post = x.shape
    planes = [((x >> xp.uint64(8 * p)) & xp.uint64(255)).astype(xp.int16) - 128 for p in range(k_in)]
    return xp.stack(planes, axis=2).astype(xp.int8).reshape(pre, j * k_in, post)


def combine(acc: Any, bias: Any, block: BatBlock, xp: Any) -> Any:
    """acc: int32[pre, rows*k_out, post] of one block -> residues uint64[pre, rows, post] modulo block.q."""
    pre, _, post = acc.shape
    planes = (acc.astype(xp.int64) + bias.astype(xp.int64)[None, :, None]).reshape(pre, block.rows, block.k_out,
                                                                                     post)
    if block.k_out <= 4 and not block.barrett.wide:
        total = planes[:, :, 0, :]
        for t in range(1, block.k_out):
            total = total + (planes[:, :, t, :] << xp.int64(8 * t))
        return reduce_word((total + xp.int64(block.offset)).astype(xp.uint64), block.barrett, xp)
    lo = xp.zeros(planes[:, :, 0, :].shape, dtype=xp.uint64)
    hi = xp.zeros_like(lo)
    for t in range(block.k_out):
        value = planes[:, :, t, :]
        term_lo = value.astype(xp.uint64) << xp.uint64(8 * t)
        term_hi = (value >> xp.int64(64 - 8 * t if t else 63)).astype(xp.uint64)
        lo = lo + term_lo
        hi = hi + term_hi + (lo < term_lo).astype(xp.uint64)
    offset_lo, offset_hi = xp.uint64(block.offset & (2**64 - 1)), xp.uint64(block.offset >> 64)
    lo = lo + offset_lo
    hi = hi + offset_hi + (lo < offset_lo).astype(xp.uint64)
    return reduce_wide(hi, lo, block.barrett, xp)
