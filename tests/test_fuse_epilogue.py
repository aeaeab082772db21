"""The fuse-epilogue pass: which elementwise ops after an einsum are marked `epilogue_of`, and which are not."""

from __future__ import annotations

import numpy as np
import pytest

import einfold
from einfold.ir import Program
from einfold.passes import PASSES, get
from einfold.passes.fuse_epilogue import epilogue_chains
from einfold.reference import run_program


def fuse(program: Program) -> Program:
    return get("fuse-epilogue").apply(program, {}).verify()


def marks(program: Program) -> dict[str, str]:
    return {op.result: op.attrs["epilogue_of"] for op in program.ops if "epilogue_of" in op.attrs}


def dense_layer() -> tuple[Program, dict[str, str]]:
    """relu(cast(x @ w * 0.5 + bias)) with every value named."""
    rng = np.random.default_rng(0)
    p = Program("layer")
    names = {"x": p.input("x", (8, 16))}
    names["w"] = p.const("w", rng.standard_normal((16, 32)).astype(np.float32))
    names["bias"] = p.const("bias", rng.standard_normal(32).astype(np.float32))
    names["mm"] = p.einsum("bi,io->bo", names["x"], names["w"], name="mm")
    names["scaled"] = p.mul(names["mm"], p.literal(0.5, "f32"))
    names["biased"] = p.add(names["scaled"], names["bias"])
    names["relu"] = p.map("relu", names["biased"])
    names["wide"] = p.cast(names["relu"], "f64")
    p.set_outputs(names["wide"])
    return p, names


def test_registered() -> None:
    assert PASSES["fuse-epilogue"].name == "fuse-epilogue"


def test_bias_scale_relu_and_cast_join_the_einsum() -> None:
    program, n = dense_layer()
    fused = fuse(program)
    assert marks(fused) == {n["scaled"]: "mm", n["biased"]: "mm", n["relu"]: "mm", n["wide"]: "mm"}
    assert epilogue_chains(fused) == {"mm": [n["scaled"], n["biased"], n["relu"], n["wide"]]}
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    np.testing.assert_array_equal(run_program(fused, [x])[0], run_program(program, [x])[0])
    assert str(einfold.parse_ir(str(fused), weights=program.weights)) == str(fused)


def test_the_chain_stops_at_a_value_with_two_users() -> None:
    p = Program("two")
    x, w = p.input("x", (4, 4)), p.input("w", (4, 4))
    mm = p.einsum("ij,jk->ik", x, w, name="mm")
    biased = p.add(mm, p.input("b", (4,)))
    p.set_outputs(p.map("relu", biased), p.map("exp", biased))
    assert marks(fuse(p)) == {biased: "mm"}


def test_the_chain_stops_at_a_program_output() -> None:
    p = Program("out")
    x, w = p.input("x", (4, 4)), p.input("w", (4, 4))
    mm = p.einsum("ij,jk->ik", x, w, name="mm")
    neg = p.neg(mm)
    p.set_outputs(neg, p.map("tanh", neg))
    assert marks(fuse(p)) == {neg: "mm"}


def test_an_einsum_that_is_an_output_keeps_its_users_apart() -> None:
    p = Program("out")
    x, w = p.input("x", (4, 4)), p.input("w", (4, 4))
    mm = p.einsum("ij,jk->ik", x, w, name="mm")
    p.set_outputs(mm, p.map("relu", mm))
    assert marks(fuse(p)) == {}


def test_computed_side_operands_are_not_fused() -> None:
    p = Program("residual")
    x, w = p.input("x", (4, 4)), p.input("w", (4, 4))
    mm = p.einsum("ij,jk->ik", x, w, name="mm")
    other = p.map("exp", x)
    p.set_outputs(p.add(mm, other))
    assert marks(fuse(p)) == {}


def test_a_side_operand_that_widens_the_shape_is_not_fused() -> None:
    p = Program("widen")
    x, w = p.input("x", (4, 4)), p.input("w", (4, 1))
    mm = p.einsum("ij,jk->ik", x, w, name="mm")
    p.set_outputs(p.add(mm, p.input("b", (4, 3))))
    assert marks(fuse(p)) == {}


def test_the_chain_value_used_twice_by_one_op_is_not_fused() -> None:
    p = Program("square")
    x, w = p.input("x", (4, 4)), p.input("w", (4, 4))
    mm = p.einsum("ij,jk->ik", x, w, name="mm")
    p.set_outputs(p.mul(mm, mm))
    assert marks(fuse(p)) == {}


@pytest.mark.parametrize("breaker", ["reshape", "einsum"])
def test_non_elementwise_ops_end_the_chain(breaker: str) -> None:
    p = Program("stop")
    x, w = p.input("x", (4, 4)), p.input("w", (4, 4))
    mm = p.einsum("ij,jk->ik", x, w, name="mm")
    biased = p.sub(mm, p.literal(1.0, "f32"))
    cut = p.reshape(biased, (16,)) if breaker == "reshape" else p.einsum("ij->j", biased, name="sum")
    p.set_outputs(p.map("sigmoid", cut))
    fused = fuse(p)
    expected = {biased: "mm"} | ({} if breaker == "reshape" else {fused.outputs[0]: "sum"})
    assert marks(fused) == expected


def test_each_planned_einsum_anchors_its_own_chain() -> None:
    p = Program("planned")
    a, b, c = p.input("a", (4, 5)), p.input("b", (5, 6)), p.input("c", (6, 3))
    chain = p.einsum("ij,jk,kl->il", a, b, c, name="r")
    p.set_outputs(p.map("gelu", p.div(chain, p.literal(3.0, "f32"))))
    planned = get("contraction-plan").apply(p, {}).verify()
    fused = fuse(planned)
    assert set(marks(fused).values()) == {"r"} and len(marks(fused)) == 2
    inputs = [np.random.default_rng(k).standard_normal(s).astype(np.float32)
              for k, s in enumerate([(4, 5), (5, 6), (6, 3)])]
    np.testing.assert_allclose(run_program(fused, inputs)[0], run_program(p, inputs)[0], rtol=1e-5, atol=1e-6)


def test_stale_marks_are_recomputed() -> None:
    p = Program("stale")
    x, w = p.input("x", (4, 4)), p.input("w", (4, 4))
    mm = p.einsum("ij,jk->ik", x, w, name="mm")
    relu = p.append("map", (mm,), {"fn": "relu", "epilogue_of": "nothing"})
    p.set_outputs(relu, p.map("exp", relu))
    fused = fuse(p)
    assert marks(fused) == {relu: "mm"}
    assert str(fuse(fused)) == str(fused)
