"""Butterfly factorization over the bits of the index, n = 2^L: with x viewed as (batch, 2, ..., 2), `'Zj,kj->Zk'`
becomes L sparse factors, step t turning input bit j_t into output bit k_{L-1-t} (t = L-1..0, so the output comes
out in natural order). Exact families: the DFT (either sign, any scale; radix-2 Cooley–Tukey), Walsh–Hadamard, and
the DCT-II/III through the 2N-point DFT (the real part of a complex chain); any other matrix gets a projection.

DFT factor t is G_t[j_t, k_0..k_{L-1-t}] = w^(2^t j_t (k mod 2^(L-t))); Hadamard factor t is H_2 on bit t. The DCT
X_k = sum_n x_n cos(pi (2n+1) k / 2N) = Re(e^{-i pi k/2N} sum_{n<N} x_n e^{-2 pi i n k/2N}) is the top-left N x N
block of the 2N-point DFT (its top input and output bits fixed to 0: the same factors with fewer k bits) with the
twiddle folded into the factor that touches every k bit. Merging factors (the `factorize` pass's e-graph) gives
radix-4 and the four-step FFT (order-2 Monarch).

The general butterfly step t is a 2x2 block on (j_t -> k_{L-1-t}) for every value of the other current bits:
B_t[k_0..k_{L-2-t}, k_{L-1-t}, j_{t-1}..j_0, j_t]. `fit` projects any W onto these products recursively: the
first step requires, for each k_0 and each j' = (j_{L-2}..j_0), the n/2 x 2 matrix W[(k_rest, k_0), (j_{L-1}, j')]
to have rank 1 (= B'_{k_0}[k_rest, j'] a[k_0, j_{L-1}, j']); its best rank-1 fit gives step L-1's blocks and two
half-size problems B'_{k_0}, solved the same way. The levels' residuals are orthogonal: their energies add up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from einfold.errors import IRError

from .structure import Factorization, fresh_letters, relative_error

EXACT_TOL = 1e-12
# The fit stops early only when its estimated error (from 2x2 Gram eigenvalues, whose rounding floor is about
# this) exceeds the tolerance; below it the error measured on the factors decides.
ESTIMATE_FLOOR = 1e-5


def log2_size(n: int) -> int | None:
    return n.bit_length() - 1 if n >= 4 and n & (n - 1) == 0 else None


def dft_matrix(n: int, sign: int = -1) -> np.ndarray:
    """F[k, j] = exp(sign 2 pi i j k / n), with j k reduced mod n first for accuracy."""
    return _dft_rows(n, sign, np.arange(n))


def hadamard_matrix(n: int) -> np.ndarray:
    """H[k, j] = (-1)^popcount(j & k) (Sylvester order)."""
    return _hadamard_rows(n, np.arange(n))


def dct_matrix(n: int, norm: str = "none") -> np.ndarray:
    """The DCT-II matrix C[k, j] = cos(pi (2j+1) k / 2n); with norm 'ortho', row k is scaled by sqrt((2 - [k=0]) / n)
    (an orthogonal matrix). The DCT-III is its transpose."""
    return _dct_row_scales(n, norm)[:, None] * _cosines(n, np.arange(n), np.arange(n))


def _hadamard_rows(n: int, rows: np.ndarray) -> np.ndarray:
    return 1.0 - 2.0 * (np.bitwise_count(np.bitwise_and.outer(rows, np.arange(n))) & 1)


def _dft_rows(n: int, sign: int, rows: np.ndarray) -> np.ndarray:
    roots = np.exp(sign * 2j * np.pi * np.arange(n) / n)
    return roots[np.outer(rows, np.arange(n)) % n]


def _cosines(n: int, k: np.ndarray, j: np.ndarray) -> np.ndarray:
    """cos(pi (2j+1) k / 2n) for k (rows) by j (columns), the angle reduced mod 2 pi exactly first."""
    return np.cos(2 * np.pi * (np.outer(k, 2 * j + 1) % (4 * n)) / (4 * n))


def _dct_row_scales(n: int, norm: str) -> np.ndarray:
    if norm == "none":
        return np.ones(n)
    if norm == "ortho":
        scales = np.full(n, math.sqrt(2 / n))
        scales[0] = math.sqrt(1 / n)
        return scales
    raise IRError(f"DCT norm must be 'none' or 'ortho', got {norm!r}")


def _dct_rows(n: int, kind: str, norm: str, rows: np.ndarray) -> np.ndarray:
    """Rows of the DCT-II (diag(s) C) or the DCT-III ((diag(s) C)^T) matrix."""
    scales = _dct_row_scales(n, norm)
    if kind == "dct2":
        return scales[rows, None] * _cosines(n, rows, np.arange(n))
    return _cosines(n, np.arange(n), rows).T * scales


def _labels(bits: int) -> tuple[str, str]:
    """Input bit labels j_{L-1}..j_0 and output bit labels k_{L-1}..k_0 (most significant first)."""
    letters = fresh_letters(2 * bits)
    j, k = letters[:bits], letters[bits:]
    return "".join(reversed(j)), "".join(reversed(k))


def _dft_block(bits: int, extra: int) -> tuple[str, str, list[str], list[np.ndarray]]:
    """The radix-2 network of the top-left 2^bits square block of the 2^(bits+extra)-point DFT, as labels and
    integer phases in units of 2 pi / 2^(bits+extra). In chain order t = bits-1..0, the factor of input bit t
    touches k_0..k_{w-1}, w = min(bits + extra - t, bits), with phase P_t[j_t, k] = 2^t j_t (k mod 2^w)."""
    x_labels, out_labels = _labels(bits)
    j, k = x_labels[::-1], out_labels[::-1]  # j[t] = label of bit t
    modulus = 2 ** (bits + extra)
    terms, phases = [], []
    for t in reversed(range(bits)):
        width = min(bits + extra - t, bits)
        phase = np.outer(np.arange(2), np.arange(2**width)) * 2**t % modulus  # k index order k_{w-1}..k_0
        phases.append(phase.reshape((2,) * (width + 1)))
        terms.append(j[t] + "".join(k[s] for s in reversed(range(width))))
    return x_labels, out_labels, terms, phases


def dft(n: int, sign: int = -1, scale: complex = 1.0) -> Factorization:
    """The exact radix-2 factorization of scale * F_n (sign -1: forward DFT)."""
    bits = log2_size(n)
    if bits is None:
        raise IRError(f"the butterfly DFT needs n = 2^L >= 4, got {n}")
    x_labels, out_labels, terms, phases = _dft_block(bits, 0)
    factors = [np.exp(sign * 2j * np.pi * phase / n) for phase in phases]
    factors[0] = factors[0] * scale
    return Factorization("butterfly", (2,) * bits, (2,) * bits, x_labels, out_labels, tuple(terms),
                         tuple(factors), 0.0, {"transform": "dft" if sign < 0 else "idft", "scale": _number(scale)})


def hadamard(n: int, scale: float = 1.0) -> Factorization:
    """The exact factorization of scale * H_n into L independent 2x2 factors."""
    bits = log2_size(n)
    if bits is None:
        raise IRError(f"the Walsh–Hadamard butterfly needs n = 2^L >= 4, got {n}")
    x_labels, out_labels = _labels(bits)
    h2 = np.array([[1.0, 1.0], [1.0, -1.0]])
    factors = tuple(h2 * scale if t == 0 else h2 for t in range(bits))
    terms = tuple(x_labels[t] + out_labels[t] for t in range(bits))
    return Factorization("butterfly", (2,) * bits, (2,) * bits, x_labels, out_labels, terms, factors, 0.0,
                         {"transform": "hadamard", "scale": _number(scale)}, commuting=False)


def dct(n: int, kind: str = "dct2", norm: str = "none", scale: float = 1.0) -> Factorization:
    """The exact factorization of scale * D, D = diag(s) C (kind 'dct2') or its transpose ('dct3'), as the real
    part of a complex chain: the top-left n x n block of the 2n-point DFT with the twiddle e^{-i pi k / 2n} s_k
    folded into its last factor (the one touching every k bit). The DCT-III runs the same network backwards."""
    bits = log2_size(n)
    if bits is None or kind not in ("dct2", "dct3"):
        raise IRError(f"the DCT butterfly needs kind 'dct2' or 'dct3' and n = 2^L >= 4, got {kind!r}, {n}")
    time_labels, frequency_labels, terms, phases = _dft_block(bits, 1)
    factors = [np.exp(-2j * np.pi * phase / (2 * n)) for phase in phases[:-1]]
    last = 2 * phases[-1] + np.arange(n).reshape(phases[-1].shape[1:])  # in units of 2 pi / 4n: twiddle added
    twiddled = np.exp(-2j * np.pi * (last % (4 * n)) / (4 * n))
    factors.append(twiddled * (scale * _dct_row_scales(n, norm)).reshape(phases[-1].shape[1:]))
    info = {"transform": kind, "norm": norm, "scale": float(scale), "real_part": True}
    if kind == "dct2":
        return Factorization("butterfly", (2,) * bits, (2,) * bits, time_labels, frequency_labels, tuple(terms),
                             tuple(factors), 0.0, info, real_part=True)
    return Factorization("butterfly", (2,) * bits, (2,) * bits, frequency_labels, time_labels, tuple(terms[::-1]),
                         tuple(factors[::-1]), 0.0, info, real_part=True)


def _number(value: complex) -> float | list[float]:
    value = complex(value)
    return value.real if abs(value.imag) <= 1e-15 * abs(value) else [value.real, value.imag]


@dataclass(frozen=True)
class Family:
    """A transform R known exactly up to a scale c: `rows(idx)` gives rows of R, `build(c)` the network of c R."""

    name: str
    rows: Callable[[np.ndarray], np.ndarray]
    build: Callable[[complex], Factorization]
    real_scale: bool  # the network is only built for a real c


def families(n: int, complex_weight: bool) -> list[Family]:
    """The exact families tried for an n x n weight: DFTs for complex W, Hadamard, and DCTs for real W."""
    found = []
    if complex_weight:
        found += [Family(name, lambda rows, s=sign: _dft_rows(n, s, rows), lambda c, s=sign: dft(n, s, c), False)
                  for name, sign in (("dft", -1), ("idft", 1))]
    found.append(Family("hadamard", lambda rows: _hadamard_rows(n, rows), lambda c: hadamard(n, c.real), True))
    if not complex_weight:
        found += [Family(f"{kind}-{norm}", lambda rows, k=kind, m=norm: _dct_rows(n, k, m, rows),
                         lambda c, k=kind, m=norm: dct(n, k, m, c.real), True)
                  for kind in ("dct2", "dct3") for norm in ("none", "ortho")]
    return found


def project_known(weight: np.ndarray, tol: float) -> Factorization | None:
    """The nearest scaled DFT, inverse DFT, Hadamard or DCT-II/III (plain or orthonormal) matrix within `tol`."""
    weight = np.asarray(weight)
    n = weight.shape[0]
    if weight.shape != (n, n) or log2_size(n) is None or not np.linalg.norm(weight):
        return None
    best: Factorization | None = None
    for family in families(n, np.iscomplexobj(weight)):  # screen on two rows before building the n x n reference
        probe = family.rows(np.arange(2))
        scale = np.vdot(probe, weight[:2]) / np.vdot(probe, probe)
        if np.linalg.norm(weight[:2] - scale * probe) > tol * np.linalg.norm(weight[:2]) + 1e-300:
            continue
        reference = family.rows(np.arange(n))
        scale = np.vdot(reference, weight) / np.vdot(reference, reference)
        error = relative_error(scale * reference, weight)
        if error > tol or (family.real_scale and abs(np.imag(scale)) > 0):
            continue
        found = family.build(complex(scale))
        factors = tuple(f.astype(weight.dtype) if np.iscomplexobj(weight) or not np.iscomplexobj(f) else f
                        for f in found.factors)
        found = Factorization(found.structure, found.in_dims, found.out_dims, found.x_labels, found.out_labels,
                              found.factor_labels, factors, error, found.params_info, real_part=found.real_part)
        if best is None or found.rel_error < best.rel_error:
            best = found
    return best


def _check_blocks(blocks: list[np.ndarray]) -> int:
    """L, after checking that the blocks of the L steps have their shapes (2^l, 2, 2^(L-1-l), 2), l = 0..L-1."""
    bits = len(blocks)
    expected = [(2**level, 2, 2 ** (bits - 1 - level), 2) for level in range(bits)]
    shapes = [np.shape(b) for b in blocks]
    if bits < 2 or shapes != expected:
        raise IRError(f"butterfly blocks of L >= 2 steps must have shapes (2^l, 2, 2^(L-1-l), 2), got {shapes}")
    return bits


def butterfly_network(blocks: list[np.ndarray], rel_error: float = 0.0) -> Factorization:
    """The general butterfly with step t's blocks `blocks[L-1-t]`, shaped (2^(L-1-t), 2, 2^t, 2) and indexed
    [k_0..k_{L-2-t}, k_{L-1-t}, j_{t-1}..j_0, j_t] (chain order: step L-1 first)."""
    bits = _check_blocks(blocks)
    x_labels, out_labels = _labels(bits)
    j, k = x_labels[::-1], out_labels[::-1]
    terms = tuple("".join(k[:level + 1]) + "".join(j[s] for s in reversed(range(bits - 1 - level))) +
                  j[bits - 1 - level] for level in range(bits))
    factors = tuple(b.reshape((2,) * (bits + 1)) for b in blocks)
    return Factorization("butterfly", (2,) * bits, (2,) * bits, x_labels, out_labels, terms, factors, rel_error,
                         {"transform": "fitted"})


def butterfly_dense(blocks: list[np.ndarray]) -> np.ndarray:
    """The matrix of `butterfly_network(blocks)`, built back level by level in O(n^2) (used to measure the fit)."""
    n = 2 ** _check_blocks(blocks)
    current = np.ones((n, 1, 1), dtype=np.result_type(*blocks))
    for block in reversed(blocks):  # current[(s, k_l), k_rest, j'] -> W_s[(k_rest, k_l), (j_t, j')]
        s, _, h, _ = block.shape
        pairs = np.einsum("skrj,skja->srkaj", current.reshape(s, 2, h, h), block)
        current = pairs.reshape(s, 2 * h, 2 * h)
    return current[0]


def fit(weight: np.ndarray, tol: float) -> Factorization | None:
    """The recursive butterfly projection of a square W (n = 2^L >= 8): at each level the best rank-1 fit of
    every (n/2^(l+1) x 2) column pair; kept when the error measured on the factors is within `tol`."""
    weight = np.asarray(weight)
    n = weight.shape[0]
    bits = log2_size(n)
    if weight.shape != (n, n) or bits is None or 2 * n * bits >= n * n:
        return None
    work = weight.astype(np.complex128 if np.iscomplexobj(weight) else np.float64)
    total = float(np.vdot(work, work).real)
    if not total or not math.isfinite(total):
        return None
    current, blocks, dropped = work.reshape(1, n, n), [], 0.0
    for _ in range(bits):
        s, h = current.shape[0], current.shape[1] // 2
        pairs = current.reshape(s, h, 2, 2, h)  # [s, k_rest, k_l, j_t, j']
        gram = np.einsum("srkaj,srkbj->skjab", pairs.conj(), pairs)
        values, vectors = np.linalg.eigh(gram)
        dropped += float(np.maximum(values[..., 0], 0.0).sum())
        if math.sqrt(dropped / total) > max(tol, ESTIMATE_FLOOR):
            return None
        top = vectors[..., 1]  # the top right singular vector v of each pair: pair ~ (pair v) v^H
        blocks.append(top.conj())
        current = np.einsum("srkaj,skja->skrj", pairs, top).reshape(2 * s, h, h)
    blocks[-1] = blocks[-1] * current.reshape(n // 2, 2, 1, 1)  # the last level's 1 x 1 remainders
    error = relative_error(butterfly_dense(blocks), weight)
    if error > tol:
        return None
    return butterfly_network([b.astype(weight.dtype) if np.iscomplexobj(weight) or not np.iscomplexobj(b) else b
                              for b in blocks], error)


def project(weight: np.ndarray, tol: float) -> Factorization | None:
    """A known transform within `tol` (fewest parameters), else the general butterfly fit within `tol`."""
    return project_known(weight, tol) or fit(weight, tol)


def detect(weight: np.ndarray) -> Factorization | None:
    """W is exactly (to rounding) a scaled DFT, inverse DFT, Hadamard or DCT matrix, or a general butterfly."""
    return project(weight, EXACT_TOL)
