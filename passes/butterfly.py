"""Butterfly factorization of the transforms whose matrices factor over the bits of the index: the DFT
(either sign, any scale) and the Walsh–Hadamard transform, n = 2^L. With x viewed as (batch, 2, ..., 2),
`'Zj,kj->Zk'` becomes L sparse factors: DFT factor t is G_t[j_t, k_0..k_{L-1-t}] = w^(2^t j_t (k mod 2^(L-t))),
Hadamard factor t is H_2 on bit t. Applied in order t = L-1..0 this is the radix-2 Cooley–Tukey FFT;
merging factors (done by the `factorize` pass's e-graph) gives radix-4 and the four-step FFT (order-2 Monarch).

The projection is onto each family {c F_n, c conj(F_n), c H_n}: the best scale c, its error reported,
kept only within tolerance. A general (learned) butterfly fit is not attempted.
"""

from __future__ import annotations

import numpy as np

from .structure import Factorization, fresh_letters, relative_error

EXACT_TOL = 1e-12


def log2_size(n: int) -> int | None:
    return n.bit_length() - 1 if n >= 4 and n & (n - 1) == 0 else None


def dft_matrix(n: int, sign: int = -1) -> np.ndarray:
    """F[k, j] = exp(sign 2 pi i j k / n), with j k reduced mod n first for accuracy."""
    return _dft_rows(n, sign, np.arange(n))


def hadamard_matrix(n: int) -> np.ndarray:
    """H[k, j] = (-1)^popcount(j & k) (Sylvester order)."""
    return _hadamard_rows(n, np.arange(n))


def _hadamard_rows(n: int, rows: np.ndarray) -> np.ndarray:
    return 1.0 - 2.0 * (np.bitwise_count(np.bitwise_and.outer(rows, np.arange(n))) & 1)


def _dft_rows(n: int, sign: int, rows: np.ndarray) -> np.ndarray:
    roots = np.exp(sign * 2j * np.pi * np.arange(n) / n)
    return roots[np.outer(rows, np.arange(n)) % n]


def _labels(bits: int) -> tuple[str, str]:
    """Input bit labels j_{L-1}..j_0 and output bit labels k_{L-1}..k_0 (most significant first)."""
    letters = fresh_letters(2 * bits)
    j, k = letters[:bits], letters[bits:]
    return "".join(reversed(j)), "".join(reversed(k))


def dft(n: int, sign: int = -1, scale: complex = 1.0) -> Factorization:
    """The exact radix-2 factorization of scale * F_n (sign -1: forward DFT)."""
    bits = log2_size(n)
    if bits is None:
        raise ValueError(f"the butterfly DFT needs n = 2^L >= 4, got {n}")
    x_labels, out_labels = _labels(bits)
    j, k = x_labels[::-1], out_labels[::-1]  # j[t] = label of bit t
    factors, terms = [], []
    for t in reversed(range(bits)):
        width = bits - t  # G_t touches k_0 .. k_{width-1}
        kk = np.arange(2**width)  # k mod 2^width, index order k_{width-1}..k_0
        phase = np.outer(np.arange(2), kk) * 2**t % n
        g = np.exp(sign * 2j * np.pi * phase / n).reshape((2,) + (2,) * width)
        if t == bits - 1:
            g = g * scale
        factors.append(g)
        terms.append(j[t] + "".join(k[s] for s in reversed(range(width))))
    return Factorization("butterfly", (2,) * bits, (2,) * bits, x_labels, out_labels, tuple(terms),
                         tuple(factors), 0.0, {"transform": "dft" if sign < 0 else "idft", "scale": _number(scale)})


def hadamard(n: int, scale: float = 1.0) -> Factorization:
    """The exact factorization of scale * H_n into L independent 2x2 factors."""
    bits = log2_size(n)
    if bits is None:
        raise ValueError(f"the Walsh–Hadamard butterfly needs n = 2^L >= 4, got {n}")
    x_labels, out_labels = _labels(bits)
    h2 = np.array([[1.0, 1.0], [1.0, -1.0]])
    factors = tuple(h2 * scale if t == 0 else h2 for t in range(bits))
    terms = tuple(x_labels[t] + out_labels[t] for t in range(bits))
    return Factorization("butterfly", (2,) * bits, (2,) * bits, x_labels, out_labels, terms, factors, 0.0,
                         {"transform": "hadamard", "scale": _number(scale)}, commuting=False)


def _number(value: complex) -> float | list[float]:
    value = complex(value)
    return value.real if abs(value.imag) <= 1e-15 * abs(value) else [value.real, value.imag]


def project(weight: np.ndarray, tol: float) -> Factorization | None:
    """The nearest scaled DFT, inverse DFT or Hadamard matrix when within `tol`, as butterfly factors."""
    weight = np.asarray(weight)
    n = weight.shape[0]
    if weight.shape != (n, n) or log2_size(n) is None:
        return None
    norm = float(np.linalg.norm(weight))
    if norm == 0.0:
        return None
    candidates = []
    if np.iscomplexobj(weight):
        candidates += [("dft", -1), ("dft", 1)]
    candidates.append(("hadamard", 0))
    best: Factorization | None = None
    for kind, sign in candidates:  # screen on two rows before building the n x n reference
        rows = np.arange(2)
        probe = _dft_rows(n, sign, rows) if kind == "dft" else _hadamard_rows(n, rows)
        scale = np.vdot(probe, weight[:2]) / np.vdot(probe, probe)
        if np.linalg.norm(weight[:2] - scale * probe) > tol * np.linalg.norm(weight[:2]) + 1e-300:
            continue
        reference = dft_matrix(n, sign) if kind == "dft" else hadamard_matrix(n)
        scale = np.vdot(reference, weight) / n**2
        error = relative_error(scale * reference, weight)
        if error > tol:
            continue
        if kind == "dft":
            found = dft(n, sign, complex(scale))
        else:
            if np.iscomplexobj(weight) and abs(np.imag(scale)) > 0:
                continue
            found = hadamard(n, float(np.real(scale)))
        found = Factorization(found.structure, found.in_dims, found.out_dims, found.x_labels, found.out_labels,
                              found.factor_labels, tuple(f.astype(weight.dtype) if np.iscomplexobj(weight) or
                                                         not np.iscomplexobj(f) else f for f in found.factors),
                              error, found.params_info)
        if best is None or found.rel_error < best.rel_error:
            best = found
    return best


def detect(weight: np.ndarray) -> Factorization | None:
    """W is exactly a scaled DFT, inverse DFT or Hadamard matrix (to rounding)."""
    return project(weight, EXACT_TOL)
