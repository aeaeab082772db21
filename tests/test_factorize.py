"""The `factorize` pass: the e-graph's choice under each target's cost model, the rewritten IR against numpy,
the recorded attribute, options and errors."""

import numpy as np
import pytest

import einfold
from einfold.ir import Program
from einfold.passes import butterfly
from einfold.passes.factorize import candidates, plan, structures_from, target_costs
from einfold.passes.structure import find_weight_use

RNG = np.random.default_rng(11)
PIPELINE = ["canonicalize", "constant-fold", "factorize", "cse", "dce"]


def linear(weight: np.ndarray, batch: int, spec: str = "bi,oi->bo", x_shape: tuple | None = None) -> Program:
    p = Program("linear")
    dtype = "c128" if np.iscomplexobj(weight) else str(einfold.dtypes.dtype(weight.dtype))
    x = p.input("x", x_shape or (batch, weight.shape[1]), dtype)
    p.set_outputs(p.einsum(spec, x, p.const("W", weight)))
    return p


def compile_(program: Program, target: str = "numpy", **options) -> einfold.Executable:
    return einfold.compile(program, target=target, passes=PIPELINE, **{"factorize": "auto", "tol": 1e-6, **options})


def records(exe: einfold.Executable) -> list[dict]:
    return [op.attrs["factorization"] for op in exe.program.ops if "factorization" in op.attrs]


def random_input(shape: tuple, complex_: bool = False) -> np.ndarray:
    x = RNG.standard_normal(shape)
    return x + 1j * RNG.standard_normal(shape) if complex_ else x


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


KRON = np.kron(RNG.standard_normal((8, 8)), RNG.standard_normal((8, 8)))


def test_dense_wins_at_batch_1_for_a_small_matrix():
    exe = compile_(linear(KRON, 1))
    (record,) = records(exe)
    assert record["chosen"] == "dense"
    assert "kronecker" in record["alternatives"] and record["alternatives"]["dense"] <= min(
        record["alternatives"].values())
    assert [op.opcode for op in exe.program.ops].count("einsum") == 1
    x = random_input((1, 64))
    assert max_rel(exe(x), x @ KRON.T) < 1e-13


def test_structured_wins_at_large_batch_for_the_same_matrix():
    exe = compile_(linear(KRON, 4096))
    (record,) = records(exe)
    assert record["chosen"] == "kronecker"
    assert record["alternatives"]["kronecker"] < record["alternatives"]["dense"]
    assert record["flops"] < record["flops_dense"] and record["params"] == 128 and record["params_dense"] == 4096
    assert record["rel_error"] < 1e-12 and record["weight"] == "W"
    x = random_input((4096, 64))
    assert max_rel(exe(x), x @ KRON.T) < 1e-12
    assert "W" not in exe.program.weights  # the dense weight is gone


def test_dense_gaussian_is_not_rewritten_at_tol_1e_3():
    weight = RNG.standard_normal((256, 256))
    exe = compile_(linear(weight, 512), tol=1e-3)
    (record,) = records(exe)
    assert record["chosen"] == "dense" and set(record["alternatives"]) == {"dense"}
    x = random_input((512, 256))
    assert max_rel(exe(x), x @ weight.T) < 1e-13


def test_dft_1024_becomes_a_butterfly_chain_matching_the_fft():
    weight = butterfly.dft_matrix(1024)
    exe = compile_(linear(weight, 64))
    (record,) = records(exe)
    assert record["chosen"] == "butterfly" and record["rel_error"] <= 1e-12
    einsums = [op for op in exe.program.ops if op.opcode == "einsum"]
    assert 1 < len(einsums) < 10 and all(op.type.dtype.name == "c128" for op in einsums)
    x = random_input((64, 1024), complex_=True)
    assert max_rel(exe(x), np.fft.fft(x, axis=1)) <= 1e-12


def test_ckks_target_keeps_the_dense_matvec_cheap_in_depth():
    weight = butterfly.dft_matrix(256)
    exe = einfold.compile(linear(weight, 1), target="numpy", passes=["canonicalize", "factorize"])
    assert records(exe)[0]["chosen"] == "butterfly"  # cpu: structured
    program = linear(weight, 1)
    use = find_weight_use(program, program.ops[-1])
    options = candidates(use.matrix(program.weights), structures_from({"factorize": "auto"}), 1e-6)
    plans, _ = plan(program, [use], [options], target_costs("ckks"))
    assert plans[0].network.structure == "dense"
    assert plans[0].alternatives["dense"] < plans[0].alternatives["butterfly"]


def test_hadamard_weight_rewritten_exactly():
    weight = butterfly.hadamard_matrix(512)
    exe = compile_(linear(weight, 256))
    assert records(exe)[0]["chosen"] == "butterfly"
    x = random_input((256, 512))
    assert max_rel(exe(x), x @ weight.T) < 1e-13


def test_low_rank_weight_in_float32():
    weight = (RNG.standard_normal((512, 8)) @ RNG.standard_normal((8, 512))).astype(np.float32)
    exe = compile_(linear(weight, 256), factorize=["low_rank"])
    (record,) = records(exe)
    assert record["chosen"] == "low_rank" and set(record["alternatives"]) == {"dense", "low_rank"}
    assert all(w.dtype == np.float32 for w in exe.program.weights.values())
    x = random_input((256, 512)).astype(np.float32)
    assert max_rel(exe(x), x.astype(np.float64) @ weight.T.astype(np.float64)) < 1e-5


def test_transposed_and_higher_order_weight_uses():
    # x is (i, b): contracted labels first; W is (i1, o, i2) contracted over two labels with x (b, i1, i2).
    a, b = RNG.standard_normal((8, 8)), RNG.standard_normal((8, 8))
    kron = np.kron(a, b)
    program = linear(kron, 0, spec="ib,oi->bo", x_shape=(64, 2048))
    exe = compile_(program)
    x = random_input((64, 2048))
    assert records(exe)[0]["chosen"] == "kronecker"
    assert max_rel(exe(x), np.einsum("ib,oi->bo", x, kron)) < 1e-12

    w3 = kron.reshape(64, 8, 8).transpose(1, 0, 2)  # W3[i1, o, i2] = W[o, i1 * 8 + i2]
    p = Program("order3")
    xv = p.input("x", (2048, 8, 8), "f64")
    p.set_outputs(p.einsum("bjk,jok->ob", xv, p.const("W3", w3)))
    exe = compile_(p)
    x = random_input((2048, 8, 8))
    assert records(exe)[0]["chosen"] == "kronecker"
    assert max_rel(exe(x), np.einsum("bjk,jok->ob", x, w3)) < 1e-12


def test_two_layers_and_shared_transpose_are_costed_once():
    weight = np.kron(RNG.standard_normal((16, 16)), RNG.standard_normal((16, 16)))
    other = RNG.standard_normal((256, 256))
    p = Program("two")
    x = p.input("x", (256, 1024), "f64")
    y1 = p.einsum("ib,oi->bo", x, p.const("A", weight))
    y2 = p.einsum("ib,oi->bo", x, p.const("B", other))
    p.set_outputs(p.add(p.map("tanh", y1), y2))
    exe = compile_(p)
    chosen = {r["weight"]: r["chosen"] for r in records(exe)}
    assert chosen == {"A": "kronecker", "B": "dense"}
    xv = random_input((256, 1024))
    expected = np.tanh(np.einsum("ib,oi->bo", xv, weight)) + np.einsum("ib,oi->bo", xv, other)
    assert max_rel(exe(xv), expected) < 1e-12

    program = einfold.compile(p, passes=["canonicalize"]).program
    uses = [u for u in (find_weight_use(program, op) for op in program.ops) if u]
    options = [candidates(u.matrix(program.weights), ("kronecker",), 1e-6) for u in uses]
    costs = target_costs("llvm")
    plans, total = plan(program, uses, options, costs)
    per_use = sum(min(pl.alternatives.values()) for pl in plans)
    transpose = costs.kernel(0, 2 * program.type_of("x").nbytes, 1, 1)
    assert total == pytest.approx(per_use - transpose)  # x's transpose is shared, counted once


def test_factorize_none_leaves_the_program_alone():
    exe = compile_(linear(KRON, 4096), factorize="none")
    assert records(exe) == [] and "W" in exe.program.weights


def test_the_attribute_prints_and_parses_back():
    exe = compile_(linear(KRON, 4096))
    text = exe.ir()
    assert '"chosen": "kronecker"' in text
    again = einfold.parse_ir(text, weights=exe.program.weights)
    assert str(again) == text


def test_bad_options_are_clear_errors():
    with pytest.raises(einfold.UnsupportedError, match="unknown structure"):
        compile_(linear(KRON, 4), factorize=["sparse"])
    with pytest.raises(einfold.UnsupportedError, match="tol"):
        compile_(linear(KRON, 4), tol=2.0)


def test_non_finite_weights_stay_dense():
    weight = KRON.copy()
    weight[0, 0] = np.nan
    (record,) = records(compile_(linear(weight, 4096)))
    assert record["chosen"] == "dense"


def test_one_weight_used_in_both_orientations():
    p = Program("both")
    x = p.input("x", (4096, 64), "f64")
    w = p.const("W", KRON)
    y = p.einsum("bi,oi->bo", x, w)
    p.set_outputs(p.einsum("bo,oi->bi", y, w))  # W^T applied after W
    exe = compile_(p)
    assert [r["chosen"] for r in records(exe)] == ["kronecker", "kronecker"]
    xv = random_input((4096, 64))
    assert max_rel(exe(xv), xv @ KRON.T @ KRON) < 1e-12


def test_half_precision_weights_stay_dense():
    weight = KRON.astype(np.float16)
    (record,) = records(compile_(linear(weight, 4096)))
    assert record["chosen"] == "dense" and set(record["alternatives"]) == {"dense"}


def test_gpu_costs_pick_the_four_step_fft_among_merged_butterflies():
    # Only the left-deep radix-2 chain enters the e-graph; associativity finds the merged forms.
    program = linear(butterfly.dft_matrix(1024), 64)
    use = find_weight_use(program, program.ops[-1])
    options = candidates(use.matrix(program.weights), ("butterfly",), 1e-6)
    (gpu,), _ = plan(program, [use], [options], target_costs("cuda"))
    (cpu,), _ = plan(program, [use], [options], target_costs("llvm"))
    four_step = (0, ((((1, 2), 3), 4), 5)), ((((6, 7), 8), 9), 10)
    assert gpu.tree == four_step  # two 32-point stages: the order-2 Monarch (four-step) FFT
    assert cpu.tree != four_step and cpu.network.structure == "butterfly"


@pytest.mark.parametrize("target", ["llvm"])
def test_complex_dft_chain_end_to_end_on_a_cpu_backend(target):
    weight = butterfly.dft_matrix(256)
    exe = compile_(linear(weight, 16), target=target)
    assert records(exe)[0]["chosen"] == "butterfly"
    x = random_input((16, 256), complex_=True)
    assert max_rel(exe(x), np.fft.fft(x, axis=1)) <= 1e-12


def test_monarch_and_block_diagonal_weights_through_the_pass():
    right, left = RNG.standard_normal((16, 16, 16)), RNG.standard_normal((16, 16, 16))
    monarch_weight = np.einsum("qsk,kqp->sqkp", left, right).reshape(256, 256)
    exe = compile_(linear(monarch_weight, 1024))
    (record,) = records(exe)
    assert record["chosen"] == "monarch" and record["info"] == {"blocks": [16, 16]}
    assert einfold.parse_ir(exe.ir(), weights=exe.program.weights).ops[-1].attrs == exe.program.ops[-1].attrs
    x = random_input((1024, 256))
    assert max_rel(exe(x), x @ monarch_weight.T) < 1e-12

    blocks = np.zeros((256, 128))
    for g in range(8):
        blocks[32 * g:32 * (g + 1), 16 * g:16 * (g + 1)] = RNG.standard_normal((32, 16))
    exe = compile_(linear(blocks, 1024))
    assert records(exe)[0]["chosen"] == "block_diag"
    x = random_input((1024, 128))
    assert max_rel(exe(x), x @ blocks.T) < 1e-13
