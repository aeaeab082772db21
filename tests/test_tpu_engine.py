"""The tpu engine's parts: Barrett and BAT exactness, compile-time legality checks, the cycle model's formulas,
and ordinary float einsums (bf16 inputs, f32 accumulation) through the same backend."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import einfold
from einfold import he
from einfold.backends.tpu import barrett, bat
from einfold.backends.tpu.cycles import mxu_cycles
from einfold.backends.tpu.engine import DEFAULT_ENGINE

WIDTHS = (28, 30, 31, 32, 36, 45, 60, 62)


def exact_product(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    return (a.astype(object) * b.astype(object) % q).astype(np.uint64)


@pytest.mark.parametrize("bits", WIDTHS)
def test_barrett_mulmod_is_exact_including_the_extremes(bits):
    q = he.ntt_primes(bits, 16)[0] if bits < 62 else he.ntt_primes(62, 16)[0]
    rng = np.random.default_rng(bits)
    a = np.concatenate([rng.integers(0, q, 4000, dtype=np.uint64), np.array([0, 1, q - 1, q - 1], np.uint64)])
    b = np.concatenate([rng.integers(0, q, 4000, dtype=np.uint64), np.array([q - 1, q - 1, q - 1, 1], np.uint64)])
    params = barrett.barrett(q)
    assert params.s == 2 * params.c and params.m == 2**params.s // q
    assert np.array_equal(barrett.mulmod(a, b, params, np), exact_product(a, b, q))


@pytest.mark.parametrize("bits", [28, 30, 32, 36, 45, 60])
def test_bat_matmul_is_exact(bits):
    q = he.ntt_primes(bits, 64)[0]
    rng = np.random.default_rng(bits)
    a = rng.integers(0, q, (40, 96), dtype=np.uint64)
    a[0] = q - 1
    x = rng.integers(0, q, (3, 96, 5), dtype=np.uint64)
    x[0, :, 0] = q - 1
    k = bat.byte_count(q - 1)
    weights = bat.bat_weights([(q, a)], k)
    assert weights.matrix.dtype == np.int8 and weights.matrix.shape == (40 * weights.blocks[0].k_out, 96 * k)
    acc = np.matmul(weights.matrix.astype(np.int64), bat.data_bytes(x, k, np).astype(np.int64))
    assert np.abs(acc).max() < 2**31
    out = bat.combine(acc.astype(np.int32), weights.bias, weights.blocks[0], np)
    expected = (np.einsum("zj,ajc->azc", a.astype(object), x.astype(object)) % q).astype(np.uint64)
    assert np.array_equal(out, expected)


def test_bat_uses_k_squared_byte_macs():
    q = he.ntt_primes(30, 64)[0]
    weights = bat.bat_weights([(q, np.ones((8, 16), np.uint64))], 4)
    assert weights.macs_per_column == 4 * 4 * 8 * 16


def test_accumulator_overflow_is_a_compile_time_error():
    q = he.ntt_primes(60, 64)[0]
    with pytest.raises(einfold.UnsupportedError, match="overflows the int32 accumulator"):
        bat.bat_weights([(q, np.ones((2, 9000), np.uint64))], 8)


def test_barrett_precondition_is_a_compile_time_error():
    q = 7681  # 13 bits: a contraction of 64 x 2 bytes x 255 x q/2 reaches q^2
    with pytest.raises(einfold.UnsupportedError, match="Barrett precondition"):
        bat.bat_weights([(q, np.ones((2, 64), np.uint64))], 2)


def test_bf16_path_is_exact_when_legal_and_refused_when_not():
    n, q = 2**8, he.ntt_primes(30, 2**8)[0]
    x = np.random.default_rng(0).integers(0, q, (1, 1, n), dtype=np.uint64)
    exe = einfold.compile(he.ntt(n, [q], batch=(1,)), target="tpu", engine={"input_types": ["bf16"]})
    assert "bf16 (stationary)" in exe.source("tpu")
    assert np.array_equal(exe(x)[:, 0], he.reference_ntt(x[:, 0], q))
    big = he.ntt_primes(60, 2**12)[0]
    with pytest.raises(einfold.UnsupportedError, match="bf16 path .* is not exact"):
        einfold.compile(he.ntt(2**12, [big], batch=(1,), rows=256), target="tpu", engine={"input_types": ["bf16"]})


def test_unsupported_modular_einsums_are_clear_errors():
    q = he.ntt_primes(30, 16)[0]
    p = einfold.Program("dd")
    a, b = p.input("a", (4, 4), einfold.zq(q)), p.input("b", (4, 4), einfold.zq(q))
    p.set_outputs(p.einsum("ij,jk->ik", a, b))
    with pytest.raises(einfold.UnsupportedError, match="constant"):
        einfold.compile(p, target="tpu")
    p = einfold.Program("transposed")
    x = p.input("x", (3, 4), einfold.zq(q))
    w = p.const("w", np.ones((5, 4), np.uint64), einfold.zq(q))
    p.set_outputs(p.einsum("zj,bj->zb", w, x))
    with pytest.raises(einfold.UnsupportedError, match="transpose"):
        einfold.compile(p, target="tpu")
    with pytest.raises(einfold.UnsupportedError, match="unknown engine parameter"):
        einfold.compile("ij,jk->ik", shapes=[(2, 2), (2, 2)], target="tpu", engine={"cores": 2})


def test_cycle_model_formula_for_one_int8_gemm():
    engine = DEFAULT_ENGINE
    # 64 weight tiles on 4 arrays, 256 columns streamed at 2 per cycle behind 128-cycle weight loads,
    # then one fill and drain of the 128 x 128 pipeline (256 cycles, whatever the data type)
    assert mxu_cycles(engine, 64, 256, "i8") == 16 * 128 + 256
    assert mxu_cycles(engine, 64, 256, "bf16") == 16 * 256 + 256
    assert mxu_cycles(engine, 1, 10, "bf16") == 128 + 256  # short streams wait for the weight tile


def test_engine_parameters_change_the_model():
    q = he.ntt_primes(30, 2**14)[0]
    program = he.ntt(2**14, [q], batch=(1,))
    four = einfold.compile(program, target="tpu").stats()
    eight = einfold.compile(program, target="tpu", engine={"arrays": 8}).stats()
    assert eight["mxu_cycles"] < four["mxu_cycles"] and eight["vpu_cycles"] == four["vpu_cycles"]


def tiled_reference(spec: str, a: np.ndarray, b: np.ndarray, k_axis_a: int, tile: int = 128) -> np.ndarray:
    """bf16 inputs, exact K-tile sums rounded to f32, f32 accumulation over tiles (an independent re-statement)."""
    a16 = a.astype(ml_dtypes.bfloat16).astype(np.float64)
    b16 = b.astype(ml_dtypes.bfloat16).astype(np.float64)
    lhs, out = spec.split("->")
    a_term, b_term = lhs.split(",")
    label = a_term[k_axis_a]
    total = None
    for start in range(0, a.shape[k_axis_a], tile):
        sl_a = [slice(None)] * a.ndim
        sl_a[k_axis_a] = slice(start, start + tile)
        sl_b = [slice(None)] * b.ndim
        sl_b[b_term.index(label)] = slice(start, start + tile)
        part = np.einsum(spec, a16[tuple(sl_a)], b16[tuple(sl_b)]).astype(np.float32)
        total = part if total is None else total + part
    return total


def test_float_gemm_is_bit_exact_to_the_engine_rule_and_close_to_float32():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 300)).astype(np.float32), rng.standard_normal((300, 48)).astype(np.float32)
    exe = einfold.compile("ij,jk->ik", shapes=[a.shape, b.shape], target="tpu")
    out = exe(a, b)
    assert out.dtype == np.float32
    assert np.array_equal(out, tiled_reference("ij,jk->ik", a, b, 1))
    assert np.allclose(out, a @ b, rtol=2**-7 * math.sqrt(300), atol=2**-7 * math.sqrt(300))
    assert exe.stats()["mxu_cycles"] > 0


def test_attention_scores_through_the_engine():
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((2, 5, 8, 16)).astype(np.float32), rng.standard_normal((2, 5, 8, 16)).astype(np.float32)
    exe = einfold.compile("bthd,bThd->bhtT", shapes=[q.shape, k.shape], target="tpu")
    out = exe(q, k)
    assert np.array_equal(out, tiled_reference("bthd,bThd->bhtT", q, k, 3))
    assert np.allclose(out, np.einsum("bthd,bThd->bhtT", q, k), rtol=0.05, atol=0.05)
    pytest.importorskip("jax")
    assert np.allclose(exe.run_jax(q, k), out, rtol=1e-5, atol=1e-5)


def test_float_mlp_with_vector_epilogues(mlp):
    x = np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)
    exe = einfold.compile(mlp, target="tpu")
    reference = einfold.compile(mlp, target="numpy")(x)
    assert np.allclose(exe(x), reference, rtol=0.05, atol=0.05)
    assert exe.stats()["vpu_cycles"] > 0
    pytest.importorskip("jax")
    assert np.allclose(exe.run_jax(x), exe(x), rtol=1e-4, atol=1e-4)
