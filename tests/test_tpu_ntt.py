"""The tpu target on HE kernels: NTT/INTT and basis conversion bit-exact against Python integers, no data shuffles
in the lowered NTT, the BAT MAC count, the modelled utilisation, and the emitted JAX program under XLA."""

from __future__ import annotations

import numpy as np
import pytest

import einfold
from einfold import he
from einfold.backends.tpu.tiling import Bytes, Combine, Gemm, ModElementwise, Reduce, View


def residues(moduli: list[int], batch: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, q, (batch, n), dtype=np.uint64) for q in moduli], axis=1)


def expected_ntt(x: np.ndarray, moduli: list[int], inverse: bool = False) -> np.ndarray:
    return np.stack([he.reference_ntt(x[:, k], q, inverse) for k, q in enumerate(moduli)], axis=1)


def check_ntt(n: int, moduli: list[int], batch: int, jax: bool = False) -> einfold.Executable:
    x = residues(moduli, batch, n)
    forward = einfold.compile(he.ntt(n, moduli, batch=(batch,)), target="tpu")
    y = forward(x)
    assert np.array_equal(y, expected_ntt(x, moduli))
    inverse = einfold.compile(he.ntt(n, moduli, inverse=True, batch=(batch,)), target="tpu")
    assert np.array_equal(inverse(y), x)
    if jax:
        assert np.array_equal(forward.run_jax(x), y)
        assert np.array_equal(inverse.run_jax(y), x)
    return forward


@pytest.mark.parametrize("n, bits, batch", [(2**12, (30, 60), 1), (2**13, (28, 45), 8), (2**12, (36,), 8)])
def test_ntt_and_intt_are_bit_exact(n, bits, batch):
    moduli = [he.ntt_primes(b, n)[0] for b in bits]
    check_ntt(n, moduli, batch)


@pytest.mark.slow
@pytest.mark.parametrize("log_n", [12, 13, 14, 15, 16])
@pytest.mark.parametrize("batch", [1, 8])
def test_ntt_sweep_all_sizes_and_prime_widths(log_n, batch):
    n = 2**log_n
    check_ntt(n, [he.ntt_primes(b, n)[0] for b in (28, 30, 36, 45, 60)], batch)


def test_emitted_jax_ntt_runs_under_xla_bit_exact():
    pytest.importorskip("jax")
    n = 2**12
    check_ntt(n, [he.ntt_primes(30, n)[0], he.ntt_primes(60, n)[0]], 2, jax=True)


def test_lowered_ntt_moves_no_data_and_counts_k2_n_r_plus_c_macs():
    n, moduli = 2**12, [he.ntt_primes(30, 2**12)[0], he.ntt_primes(45, 2**12)[0]]
    exe = einfold.compile(he.ntt(n, moduli, batch=(1,)), target="tpu")
    ir = exe.ir()
    assert "Prow" not in ir and "Pcol" not in ir and "mat=" in ir
    tiled = exe.tiled_program()
    kinds = {type(step) for step in tiled.steps}
    assert kinds <= {View, Reduce, Bytes, Gemm, Combine, ModElementwise}
    assert {step.how for step in tiled.steps if isinstance(step, View)} <= {"select", "reshape", "reinterpret",
                                                                              "embed", "assemble"}
    rows, cols = he.split_rows(n)
    for limb, q in enumerate(moduli):
        k = -(-(q - 1).bit_length() // 8)
        macs = sum(s.macs for s in tiled.steps if isinstance(s, Gemm) and s.out.startswith(f"ntt{limb}."))
        assert macs == k * k * n * (rows + cols)
    assert exe.cost_report()["int8_macs"] == sum(
        (-(-(q - 1).bit_length() // 8)) ** 2 * n * (rows + cols) for q in moduli)


def test_model_utilisation_of_a_2_to_16_ntt_on_4_arrays():
    n, q = 2**16, he.ntt_primes(30, 2**16)[0]
    exe = einfold.compile(he.ntt(n, [q], batch=(1,)), target="tpu")
    stats, report = exe.stats(), exe.cost_report()
    assert report["int8_macs"] == 16 * n * 512 == 536_870_912  # CROSS: 537M int8 MACs per limb
    assert report["matmul_utilization"] == pytest.approx(2048 / (2048 + 128 + 128), abs=1e-9)  # fill + drain
    assert 0 < stats["utilization"] < report["matmul_utilization"]
    assert stats["cycles"] >= stats["mxu_cycles"] and stats["vpu_cycles"] > stats["mxu_cycles"]
    assert 0.5 < report["vpu_share"] < 1


def test_basis_conversion_is_one_gemm_with_a_modulus_per_block():
    n, qs, ps = 256, he.ntt_primes(30, 256, 3), he.ntt_primes(36, 256, 2)
    x = residues(qs, 2, n)
    exe = einfold.compile(he.basis_convert(n, qs, ps, batch=(2,)), target="tpu")
    expected = he.reference_basis_convert(x, qs, ps)
    assert np.array_equal(exe(x), expected)
    gemms = [s for s in exe.tiled_program().steps if isinstance(s, Gemm)]
    combines = [s for s in exe.tiled_program().steps if isinstance(s, Combine)]
    assert len(gemms) == 1 and sorted(c.block.q for c in combines) == sorted(ps)
    pytest.importorskip("jax")
    assert np.array_equal(exe.run_jax(x), expected)


def test_inputs_above_the_modulus_are_reduced_like_the_reference():
    n, q = 2**10, he.ntt_primes(30, 2**10)[0]
    x = np.random.default_rng(1).integers(0, 2**64 - 1, (1, 1, n), dtype=np.uint64)
    exe = einfold.compile(he.ntt(n, [q], batch=(1,)), target="tpu")
    reference = einfold.compile(he.ntt(n, [q], batch=(1,)), target="numpy")
    assert np.array_equal(exe(x), reference(x))


def test_emit_kinds_and_stats_keys():
    q = he.ntt_primes(30, 2**10)[0]
    exe = einfold.compile(he.ntt(2**10, [q]), target="tpu")
    listing = exe.source("tpu")
    assert "engine: 4 x 128x128 MXU" in listing and "gemm" in listing and "combine" in listing
    assert "weight tile [128,128] i8" in listing
    assert "jax.lax.dot_general" in exe.source("jax") and "preferred_element_type=jnp.int32" in exe.source("jax")
    assert {"cycles", "utilization", "mxu_cycles", "vpu_cycles", "hbm_bytes"} <= set(exe.stats())
    assert "tpu" in exe.stages


def test_write_jax_gives_a_standalone_module(tmp_path):
    pytest.importorskip("jax")
    import importlib.util
    import sys
    n, q = 2**8, he.ntt_primes(36, 2**8)[0]
    exe = einfold.compile(he.ntt(n, [q], batch=(2,)), target="tpu")
    source, consts = exe.write_jax(tmp_path / "ntt256")
    assert "import einfold" not in source.read_text()
    spec = importlib.util.spec_from_file_location("ntt256_kernel", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ntt256_kernel"] = module
    spec.loader.exec_module(module)
    kernel = module.build(dict(np.load(consts)))
    x = residues([q], 2, n)
    assert np.array_equal(np.asarray(kernel(x)[0]), expected_ntt(x, [q]))
