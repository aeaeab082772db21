"""Homomorphic-encryption kernels as einfold Programs: the negacyclic NTT/INTT over Z_q and RNS basis conversion.

NTT (bit-reversed output order):  y[b,i] = sum_j psi^((2 brv(i) + 1) j) x[b,j]  (mod q), i.e.
einsum "ij,bj->bi"(W, x) over zq(q); its three-step form is Y = T3 . (T2 * (T1 . X)) on the R x C view of x.
"""

from __future__ import annotations

import math

import numpy as np

from .dtypes import uint64, zq
from .errors import SpecError
from .ir import Program
from .ops import TensorType
from .spec import parse_subscripts

# The dense N x N twiddle matrix is built only up to this N (2^11: 32 MB of uint64); larger N use the factored form.
DENSE_MAX_N = 2**11
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


# ----- number theory -----------------------------------------------------------------------------------------------
def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (all 64-bit moduli)."""
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def ntt_primes(bits: int, n: int, count: int = 1) -> list[int]:
    """The `count` largest primes q < 2^bits with q = 1 (mod 2n), so Z_q has a primitive 2n-th root of unity."""
    if bits < 3 or bits > 62:
        raise SpecError(f"ntt_primes: bits must lie in [3, 62], got {bits}")
    step = 2 * n
    q = ((2**bits - 2) // step) * step + 1
    found: list[int] = []
    while len(found) < count and q > 2 ** (bits - 1):
        if is_prime(q):
            found.append(q)
        q -= step
    if len(found) < count:
        raise SpecError(f"ntt_primes: only {len(found)} primes of {bits} bits are 1 mod {step}, {count} requested")
    return found


def root_of_unity(q: int, order: int) -> int:
    """The smallest-base element of Z_q of exact multiplicative order `order` (a power of two dividing q - 1)."""
    if order & (order - 1) or (q - 1) % order:
        raise SpecError(f"no element of order {order} in Z_{q}: it needs {order} to be a power of two dividing q - 1")
    for g in range(2, 10_000):
        root = pow(g, (q - 1) // order, q)
        if order == 1 or pow(root, order // 2, q) != 1:
            return root
    raise SpecError(f"no root of unity of order {order} found modulo {q}; is {q} prime?")


def bit_reverse(n: int) -> np.ndarray:
    """The bit-reversal permutation of range(n) (n a power of two), an involution."""
    bits = n.bit_length() - 1
    index = np.arange(n, dtype=np.int64)
    reversed_index = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        reversed_index |= ((index >> b) & 1) << (bits - 1 - b)
    return reversed_index


def check_ntt_modulus(n: int, q: int) -> None:
    if n < 2 or n & (n - 1):
        raise SpecError(f"NTT length must be a power of two >= 2, got {n}")
    if not is_prime(q):
        raise SpecError(f"NTT modulus {q} is not prime")
    if (q - 1) % (2 * n):
        raise SpecError(f"NTT modulus {q} is not 1 mod 2n = {2 * n}: Z_q has no primitive {2 * n}-th root of unity")


def power_table(base: int, count: int, q: int) -> np.ndarray:
    """[base^0, base^1, ..., base^(count-1)] mod q as uint64."""
    table = [1] * count
    for e in range(1, count):
        table[e] = table[e - 1] * base % q
    return np.array(table, dtype=np.uint64)


def mulmod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """Exact elementwise a * b mod q for uint64 arrays of values below q (Python integers when q >= 2^32)."""
    if q < 2**32:
        return (a.astype(np.uint64) * b.astype(np.uint64)) % np.uint64(q)
    return (np.asarray(a, dtype=object) * np.asarray(b, dtype=object) % q).astype(np.uint64)


# ----- dense transform matrices (small N) --------------------------------------------------------------------------
def ntt_matrix(n: int, q: int, psi: int) -> np.ndarray:
    """W[i, j] = psi^((2 brv(i) + 1) j) mod q: the negacyclic NTT with output in bit-reversed order."""
    exponent = ((2 * bit_reverse(n)[:, None] + 1) * np.arange(n)[None, :]) % (2 * n)
    return power_table(psi, 2 * n, q)[exponent]


def intt_matrix(n: int, q: int, psi: int) -> np.ndarray:
    """V[j, i] = n^-1 psi^(-(2 brv(i) + 1) j) mod q: the inverse of `ntt_matrix` (bit-reversed input)."""
    exponent = ((2 * bit_reverse(n)[None, :] + 1) * np.arange(n)[:, None]) % (2 * n)
    inverse_powers = mulmod(power_table(pow(psi, -1, q), 2 * n, q), np.full(2 * n, pow(n, -1, q), np.uint64), q)
    return inverse_powers[exponent]


# ----- the three-step factors --------------------------------------------------------------------------------------
def three_step_factors(q: int, a: int, w: int, scale: int, rows: int, cols: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Factors of F[e, j] = scale a^j w^(e j) (w of order N = rows*cols) with j = C r + c and e = z + R n:
    T1[z, r] = scale w^(C z r) a^(C r) (R x R), T2[z, c] = w^(z c) a^c (R x C), T3[c, n] = w^(R n c) (C x C)."""
    n = rows * cols
    w_pow, a_pow = power_table(w, n, q), power_table(a, n, q)
    z, r = np.arange(rows)[:, None], np.arange(rows)[None, :]
    t1 = mulmod(w_pow[(cols * z * r) % n], a_pow[cols * r].repeat(rows, 0), q)
    t1 = mulmod(t1, np.full_like(t1, scale % q), q)
    zc, c = np.arange(rows)[:, None], np.arange(cols)[None, :]
    t2 = mulmod(w_pow[(zc * c) % n], a_pow[c].repeat(rows, 0), q)
    c3, n3 = np.arange(cols)[:, None], np.arange(cols)[None, :]
    t3 = w_pow[(rows * n3 * c3) % n]
    return t1, t2, t3


def permutation_matrix(perm: np.ndarray) -> np.ndarray:
    """P[u, v] = 1 where v == perm[u]: P @ x gathers x[perm]."""
    matrix = np.zeros((len(perm), len(perm)), dtype=np.uint64)
    matrix[np.arange(len(perm)), perm] = 1
    return matrix


def _einsum(p: Program, subscripts: str, *operands: str, name: str, attrs: dict | None = None) -> str:
    """An einsum tagged ntt_factor=<role>, so `ntt-three-step` never factors a factor again."""
    shapes = [p.type_of(v).shape for v in operands]
    spec = parse_subscripts(subscripts, shapes).spec
    role = name.rsplit(".", 1)[-1]
    return p.append("einsum", operands, {"spec": str(spec), "ntt_factor": role, **(attrs or {})}, name=name)


def _reshape(p: Program, x: str, shape: tuple[int, ...], name: str) -> str:
    return p.append("reshape", (x,), type=TensorType(shape, p.type_of(x).dtype), name=name)


def emit_rows_first(p: Program, x: str, q: int, a: int, w: int, scale: int, rows: int, cols: int,
                    row_perm: np.ndarray, col_perm: np.ndarray, tag: str, attrs: dict | None = None) -> str:
    """Build y[.., z'C + n'] = F[row_perm[z'] + R col_perm[n']] (F = scale a^j w^(e j), e the output index) from
    x[.., N] in three steps, the output permutation as two permutation einsums (removed later by `mat-fold`).
    Values are named `{tag}.*`; `attrs` go on the first matmul."""
    t = p.type_of(x)
    batch, ring = t.shape[:-1], t.dtype
    t1, t2, t3 = three_step_factors(q, a, w, scale, rows, cols)
    view = _reshape(p, x, (*batch, rows, cols), f"{tag}.view")
    y1 = _einsum(p, "zr,...rc->...zc", p.const(f"{tag}.T1", t1, ring), view, name=f"{tag}.step1", attrs=attrs)
    y2 = p.elementwise("mul", y1, p.const(f"{tag}.T2", t2, ring), name=f"{tag}.step2")
    y3 = _einsum(p, "...zc,cn->...zn", y2, p.const(f"{tag}.T3", t3, ring), name=f"{tag}.step3")
    y4 = _einsum(p, "uz,...zn->...un", p.const(f"{tag}.Prow", permutation_matrix(row_perm), ring), y3,
                 name=f"{tag}.rowperm")
    y5 = _einsum(p, "...un,vn->...uv", y4, p.const(f"{tag}.Pcol", permutation_matrix(col_perm), ring),
                 name=f"{tag}.colperm")
    return _reshape(p, y5, (*batch, rows * cols), f"{tag}.out")


def emit_cols_first(p: Program, x: str, q: int, a: int, w: int, scale: int, rows: int, cols: int,
                    row_perm: np.ndarray, col_perm: np.ndarray, tag: str, attrs: dict | None = None) -> str:
    """Build y[.., j] = sum_e scale a^j w^(e j) x[.., pos(e)] where position z'C + n' holds
    e = row_perm[z'] + R col_perm[n']: the input permutation as two permutation einsums, then three steps."""
    t = p.type_of(x)
    batch, ring = t.shape[:-1], t.dtype
    t1, t2, t3 = three_step_factors(q, a, w, scale, rows, cols)
    view = _reshape(p, x, (*batch, rows, cols), f"{tag}.view")
    inverse_rows, inverse_cols = np.argsort(row_perm), np.argsort(col_perm)
    x1 = _einsum(p, "zu,...un->...zn", p.const(f"{tag}.Prow", permutation_matrix(inverse_rows), ring), view,
                 name=f"{tag}.rowperm")
    x2 = _einsum(p, "...zv,nv->...zn", x1, p.const(f"{tag}.Pcol", permutation_matrix(inverse_cols), ring),
                 name=f"{tag}.colperm")
    u1 = _einsum(p, "...zn,nc->...zc", x2, p.const(f"{tag}.T3", t3, ring), name=f"{tag}.step1", attrs=attrs)
    u2 = p.elementwise("mul", u1, p.const(f"{tag}.T2", t2, ring), name=f"{tag}.step2")
    y = _einsum(p, "rz,...zc->...rc", p.const(f"{tag}.T1t", np.ascontiguousarray(t1.T), ring), u2,
                name=f"{tag}.step3")
    return _reshape(p, y, (*batch, rows * cols), f"{tag}.out")


def split_rows(n: int, rows: int | None = None) -> tuple[int, int]:
    """R x C with R * C = n: R = rows if given, else the power of two nearest sqrt(n) from below."""
    rows = rows or 2 ** ((n.bit_length() - 1) // 2)
    if n % rows or rows & (rows - 1):
        raise SpecError(f"NTT rows R = {rows} must be a power of two dividing n = {n}")
    return rows, n // rows


# ----- Programs ----------------------------------------------------------------------------------------------------
def _limb_scaffold(p: Program, x: str, count: int, tag: str) -> tuple[list[str], list[np.ndarray]]:
    """Select each limb of x[.., L, n] (einsum with a one-hot vector: a strided view, no data motion)."""
    selectors = [np.eye(count, dtype=np.uint64)[k] for k in range(count)]
    limbs = [p.einsum("...ln,l->...n", x, p.const(f"{tag}{k}", selectors[k], uint64)) for k in range(count)]
    return limbs, selectors


def _assemble(p: Program, parts: list[str], tag: str) -> str:
    """Stack per-limb results y_l[.., n] into [.., L, n] (one-hot embeddings, summed)."""
    count = len(parts)
    total = None
    for k, part in enumerate(parts):
        placed = p.einsum("...n,l->...ln", part, p.const(f"{tag}{k}", np.eye(count, dtype=np.uint64)[k], uint64))
        total = placed if total is None else p.add(total, placed)
    assert total is not None
    return total


def ntt(n: int, moduli: list[int] | tuple[int, ...], inverse: bool = False, batch: tuple[int, ...] = (),
        form: str = "auto", rows: int | None = None) -> Program:
    """The negacyclic NTT (or INTT) of residues x: uint64[*batch, L, n], limb l modulo moduli[l].

    Forward output and inverse input are in bit-reversed order. form='dense' builds one N x N twiddle einsum per
    limb (n <= DENSE_MAX_N; the `ntt-three-step` pass factors it), 'factored' builds the three-step form directly
    (no N x N matrix is ever made), 'auto' picks dense up to 2^10 and factored above."""
    moduli = [int(q) for q in moduli]
    if not moduli:
        raise SpecError("ntt needs at least one modulus")
    if form not in ("auto", "dense", "factored"):
        raise SpecError(f"ntt form must be 'auto', 'dense' or 'factored', got {form!r}")
    for q in moduli:
        check_ntt_modulus(n, q)
    if form == "auto":
        form = "dense" if n <= 2**10 else "factored"
    if form == "dense" and n > DENSE_MAX_N:
        raise SpecError(f"a dense {n} x {n} twiddle matrix is too large (limit n = {DENSE_MAX_N}); use form='factored'")
    name = "intt" if inverse else "ntt"
    p = Program(f"{name}{n}")
    x = p.input("x", (*batch, len(moduli), n), uint64)
    limbs, _ = _limb_scaffold(p, x, len(moduli), "limb")
    results = []
    for k, (q, limb) in enumerate(zip(moduli, limbs)):
        psi = root_of_unity(q, 2 * n)
        xq = p.cast(limb, zq(q))
        if form == "dense":
            matrix = intt_matrix(n, q, psi) if inverse else ntt_matrix(n, q, psi)
            y = p.einsum("kj,...j->...k", p.const(f"{name}{k}.W", matrix, zq(q)), xq)
        else:
            r, c = split_rows(n, rows)
            row_perm, col_perm = bit_reverse(r), bit_reverse(c)
            if inverse:
                y = emit_cols_first(p, xq, q, pow(psi, -1, q), pow(psi, -2, q), pow(n, -1, q), r, c,
                                    row_perm, col_perm, f"{name}{k}")
            else:
                y = emit_rows_first(p, xq, q, psi, psi * psi % q, 1, r, c, row_perm, col_perm, f"{name}{k}")
        results.append(p.cast(y, uint64))
    p.set_outputs(_assemble(p, results, "place"))
    return p


def basis_convert_constants(from_moduli: list[int], to_moduli: list[int]) -> tuple[list[int], np.ndarray]:
    """q_hat_inv[i] = (Q/q_i)^-1 mod q_i and M[j, i] = (Q/q_i) mod p_j for the fast basis conversion Q -> P."""
    big_q = math.prod(from_moduli)
    q_hat = [big_q // q for q in from_moduli]
    q_hat_inv = [pow(h % q, -1, q) for h, q in zip(q_hat, from_moduli)]
    matrix = np.array([[h % p for h in q_hat] for p in to_moduli], dtype=np.uint64)
    return q_hat_inv, matrix


def basis_convert(n: int, from_moduli: list[int] | tuple[int, ...], to_moduli: list[int] | tuple[int, ...],
                  batch: tuple[int, ...] = ()) -> Program:
    """Fast RNS basis conversion x: uint64[*batch, Lq, n] (mod q_i) -> uint64[*batch, Lp, n] (mod p_j):
    y_j = sum_i [x_i (Q/q_i)^-1]_{q_i} (Q/q_i)  (mod p_j), i.e. x + u Q with 0 <= u < Lq (no correction of u)."""
    from_moduli, to_moduli = [int(q) for q in from_moduli], [int(p) for p in to_moduli]
    if not from_moduli or not to_moduli:
        raise SpecError("basis_convert needs at least one modulus on each side")
    for q in from_moduli + to_moduli:
        if not 2 <= q < 2**62:
            raise SpecError(f"basis_convert: modulus {q} must lie in [2, 2^62)")
    if len(set(from_moduli)) != len(from_moduli) or any(math.gcd(a, b) != 1 for i, a in enumerate(from_moduli)
                                                        for b in from_moduli[i + 1:]):
        raise SpecError(f"basis_convert: source moduli {from_moduli} must be pairwise coprime")
    q_hat_inv, matrix = basis_convert_constants(from_moduli, to_moduli)
    p = Program(f"basis_convert{n}")
    x = p.input("x", (*batch, len(from_moduli), n), uint64)
    limbs, _ = _limb_scaffold(p, x, len(from_moduli), "src")
    scaled = []
    for q, inv, limb in zip(from_moduli, q_hat_inv, limbs):
        scaled.append(p.cast(p.mul(p.cast(limb, zq(q)), p.literal(inv, zq(q))), uint64))
    stacked = _assemble(p, scaled, "stack")
    outputs = []
    for j, modulus in enumerate(to_moduli):
        weights = p.const(f"qhat_mod_p{j}", matrix[j], zq(modulus))
        outputs.append(p.cast(p.einsum("...in,i->...n", p.cast(stacked, zq(modulus)), weights), uint64))
    p.set_outputs(_assemble(p, outputs, "dest"))
    return p


# ----- Python-integer references -----------------------------------------------------------------------------------
def reference_ntt(x: np.ndarray, q: int, inverse: bool = False) -> np.ndarray:
    """Negacyclic NTT (bit-reversed output) / INTT (bit-reversed input) of x[.., n] by radix-2 butterflies
    over Python integers (exact for any q)."""
    n = x.shape[-1]
    check_ntt_modulus(n, q)
    psi = root_of_unity(q, 2 * n)
    data = np.asarray(x, dtype=object).reshape(-1, n) % q
    brv = bit_reverse(n)
    if not inverse:
        # Cooley-Tukey, natural in -> bit-reversed out, twiddles psi^brv(m) (the negacyclic merged form).
        powers = [pow(psi, int(brv[k]), q) for k in range(n)]
        span, m = n // 2, 1
        while m < n:
            blocks = data.reshape(-1, m, 2, span)
            top, bottom = blocks[:, :, 0, :], blocks[:, :, 1, :]
            twiddle = np.array(powers[m:2 * m], dtype=object)[None, :, None]
            product = bottom * twiddle % q
            blocks = np.stack([(top + product) % q, (top - product) % q], axis=2)
            data = blocks.reshape(-1, n)
            span, m = span // 2, m * 2
    else:
        # Gentleman-Sande, bit-reversed in -> natural out, twiddles psi^-brv(m), then scale by n^-1.
        inverse_powers = [pow(psi, -int(brv[k]), q) for k in range(n)]
        span, m = 1, n // 2
        while m >= 1:
            blocks = data.reshape(-1, m, 2, span)
            top, bottom = blocks[:, :, 0, :], blocks[:, :, 1, :]
            twiddle = np.array(inverse_powers[m:2 * m], dtype=object)[None, :, None]
            blocks = np.stack([(top + bottom) % q, (top - bottom) * twiddle % q], axis=2)
            data = blocks.reshape(-1, n)
            span, m = span * 2, m // 2
        data = data * pow(n, -1, q) % q
    return data.reshape(x.shape).astype(np.uint64)


def reference_ntt_direct(x: np.ndarray, q: int) -> np.ndarray:
    """The definition y[i] = sum_j x[j] psi^((2 brv(i) + 1) j) mod q over Python integers (O(n^2), small n)."""
    n = x.shape[-1]
    psi = root_of_unity(q, 2 * n)
    brv = bit_reverse(n)
    rows = np.asarray(x, dtype=object).reshape(-1, n)
    out = np.zeros(rows.shape, dtype=object)
    for i in range(n):
        root = pow(psi, 2 * int(brv[i]) + 1, q)
        powers = np.array([pow(root, j, q) for j in range(n)], dtype=object)
        out[:, i] = (rows * powers).sum(axis=1) % q
    return out.reshape(x.shape).astype(np.uint64)


def reference_basis_convert(x: np.ndarray, from_moduli: list[int], to_moduli: list[int]) -> np.ndarray:
    """The fast basis conversion over Python integers; x[.., Lq, n] -> [.., Lp, n]."""
    q_hat_inv, matrix = basis_convert_constants(from_moduli, to_moduli)
    data = np.asarray(x, dtype=object)
    scaled = np.stack([data[..., i, :] * q_hat_inv[i] % q for i, q in enumerate(from_moduli)], axis=-2)
    out = [(scaled * matrix[j].astype(object)[:, None]).sum(axis=-2) % p for j, p in enumerate(to_moduli)]
    return np.stack(out, axis=-2).astype(np.uint64)
