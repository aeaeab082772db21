"""The IR: builder type inference, the verifier, the text form and its exact round trip."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import pytest

import einfold
from einfold import dtypes as dt
from einfold.graph import to_dot, topological_ops
from einfold.ir import Op
from einfold.ops import TensorType
from einfold.reference import run_program


def test_builder_infers_types_and_flops(mlp):
    types = {op.result: str(op.type) for op in mlp.ops}
    assert types["x"] == "f32[4,8]"
    assert str(mlp.type_of(mlp.outputs[0])) == "f32[4,3]"
    first = next(op for op in mlp.ops if op.opcode == "einsum")
    assert mlp.op_flops(first) == 2 * 4 * 8 * 16
    assert mlp.params() == 8 * 16 + 16 + 16 * 3


def test_all_dtypes_have_names_and_storage():
    names = ["bool", "i8", "i16", "i32", "i64", "u8", "u32", "u64", "f16", "bf16", "f32", "f64", "c64", "c128"]
    for name in names:
        assert dt.dtype(name).name == name
        assert dt.dtype(dt.dtype(name).numpy) == dt.dtype(name)
    assert dt.dtype("bfloat16").numpy == np.dtype(ml_dtypes.bfloat16)
    q = dt.zq(97)
    assert str(q) == "zq(97)" and q.modulus == 97 and q.numpy == np.uint64
    assert dt.dtype("zq(97)") == q
    with pytest.raises(einfold.IRError, match="unknown dtype"):
        dt.dtype("f33")
    with pytest.raises(einfold.IRError, match="modulus"):
        dt.zq(1)


def test_print_is_stable_and_round_trips_exactly(mlp):
    text = str(mlp)
    assert text.splitlines()[0] == "program @mlp {"
    assert '%0 = einsum "bi,ih->bh" (%x, %w1) : f32[4,16]' in text
    assert 'const "w1" {sha="' in text and "float" not in text  # weights print by name and hash, not value
    parsed = einfold.parse_ir(text, weights=mlp.weights)
    assert str(parsed) == text
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_program(parsed, [x])[0], run_program(mlp, [x])[0])


def test_round_trip_of_every_op_and_attribute_kind():
    p = einfold.Program("kinds")
    x = p.input("x", (2, 3), "f64")
    z = p.input("z", (3,), "zq(65537)")
    c = p.literal(1.5e-300, "f64")
    j = p.literal(complex(1, -2), "c128")
    k = p.cast(p.map("poly", p.mul(x, c), coeffs=[0.1, -2, 3.25]), "c128")
    y = p.reshape(p.mul(k, j), (3, 2))
    t = p.einsum("ij->ji", y)
    w = p.neg(p.pow(x, x))
    sq = p.map("square", z)
    p.set_outputs(t, w, sq)
    text = str(p)
    assert str(einfold.parse_ir(text)) == text
    assert "literal 1.5e-300 : f64[]" in text and "literal [1.0, -2.0] : c128[]" in text


def test_parse_errors_have_file_line_and_column():
    bad = "program @p {\n  %x = input : f32[2]\n  %y = frobnicate (%x) : f32[2]\n  return %y\n}\n"
    with pytest.raises(einfold.SourceError) as info:
        einfold.parse_ir(bad, filename="bad.ir")
    assert info.value.line == 3 and "unknown opcode 'frobnicate'" in str(info.value)
    assert "bad.ir:3:" in str(info.value) and "frobnicate (%x)" in str(info.value)
    with pytest.raises(einfold.SourceError) as info:
        einfold.parse_ir("program @p {\n  %x = input : f32[2\n  return %x\n}\n")
    assert info.value.line == 3 and "syntax error" in str(info.value)


def test_parse_rejects_weight_whose_hash_differs(mlp):
    weights = dict(mlp.weights)
    weights["w1"] = weights["w1"] + 1
    with pytest.raises(einfold.SourceError, match="does not match the hash"):
        einfold.parse_ir(str(mlp), weights=weights)


def test_running_without_weight_data_is_a_clear_error(mlp):
    exe = einfold.compile(einfold.parse_ir(str(mlp)), passes=[])
    with pytest.raises(einfold.RuntimeFailure, match="weight 'w1' has no data"):
        exe(np.zeros((4, 8), np.float32))


def _program_with(op: Op) -> einfold.Program:
    p = einfold.Program("bad")
    p.input("a", (2, 3))
    p.input("b", (3, 4))
    p.ops.append(op)
    p._defs[op.result] = op
    p.outputs = [op.result]
    return p


@pytest.mark.parametrize("op, message", [
    (Op("einsum", "r", TensorType((2, 4), dt.float32), ("a", "b"), {"spec": "ij,jk->ik"}), None),
    (Op("einsum", "r", TensorType((2, 5), dt.float32), ("a", "b"), {"spec": "ij,jk->ik"}),
     "declared type f32\\[2,5\\]"),
    (Op("einsum", "r", TensorType((2, 4), dt.float32), ("a", "b"), {"spec": "ij,kk->ik"}), "index 'k' has size 4"),
    (Op("einsum", "r", TensorType((2, 4), dt.float32), ("a", "zz"), {"spec": "ij,jk->ik"}), "operand 1 \\(%zz\\)"),
    (Op("add", "r", TensorType((2, 3), dt.float32), ("a", "b"), {}), "do not broadcast"),
    (Op("map", "r", TensorType((2, 3), dt.float32), ("a",), {"fn": "frob"}), "unknown function 'frob'"),
    (Op("map", "r", TensorType((2, 3), dt.float32), ("a",), {"fn": "poly"}), "coeffs"),
    (Op("reshape", "r", TensorType((7,), dt.float32), ("a",), {}), "6 elements"),
    (Op("cast", "r", TensorType((3, 2), dt.float64), ("a",), {}), "use reshape"),
    (Op("einsum", "a", TensorType((2, 3), dt.float32), ("a",), {"spec": "ij->ij"}), "defined twice"),
    (Op("einsum", "r", TensorType((2,), dt.float32), ("a",), {"spec": "ij->k"}), "does not appear in any input"),
])
def test_verifier_names_the_op_and_operand(op, message):
    program = _program_with(op)
    if message is None:
        program.verify()
        return
    with pytest.raises(einfold.IRError, match=message) as info:
        program.verify()
    assert f"op 2 `%{op.result} = {op.opcode}" in str(info.value)


def test_verifier_rejects_missing_outputs_and_wrong_weights(mlp):
    empty = einfold.Program("empty")
    empty.input("x", (2,))
    with pytest.raises(einfold.IRError, match="returns nothing"):
        empty.verify()
    broken = mlp.copy()
    broken.weights["w1"] = np.zeros((3, 3), np.float32)
    with pytest.raises(einfold.IRError, match="weight 'w1' holds float32\\[3, 3\\]"):
        broken.verify()


def test_builder_rejects_bad_ops_with_the_op_named():
    p = einfold.Program()
    x = p.input("x", (2, 3))
    with pytest.raises(einfold.SpecError, match="index 'j' has size 2 in operand 1 but 3 elsewhere"):
        p.einsum("ij,jk", x, p.input("y", (2, 2)))
    with pytest.raises(einfold.IRError, match="map exp needs a float or complex operand, got i32"):
        p.map("exp", p.input("n", (2,), "i32"))
    with pytest.raises(einfold.IRError, match="values must lie in"):
        p.const("bad", np.array([5], np.uint64), "zq(5)")
    with pytest.raises(einfold.IRError, match="defined twice"):
        p.input("x", (1,))


def test_einsum_builder_promotes_dtypes_with_casts():
    p = einfold.Program()
    a = p.input("a", (2, 3), "i32")
    b = p.input("b", (3,), "f32")
    r = p.einsum("ij,j->i", a, b)
    assert str(p.type_of(r)) == str(TensorType((2,), dt.float64))
    assert [op.opcode for op in p.ops].count("cast") == 2


def test_graph_views(mlp):
    order = [op.result for op in topological_ops(mlp)]
    assert order == [op.result for op in mlp.ops]
    dot = to_dot(mlp)
    assert dot.startswith('digraph "mlp"') and '"x" -> "0"' in dot


def test_ops_are_frozen(mlp):
    with pytest.raises(dataclasses.FrozenInstanceError):
        mlp.ops[0].opcode = "add"  # type: ignore[misc]
