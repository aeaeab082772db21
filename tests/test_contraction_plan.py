"""The contraction-plan pass: n-ary einsums become binary ones along opt_einsum paths, with the same values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einfold
from einfold.driver import spec_program
from einfold.ir import Program
from einfold.passes import PASSES, get
from einfold.passes.contraction_plan import choose_optimizer
from einfold.reference import run_program
from einfold.spec import LETTERS, EinsumSpec


def plan(program: Program, **options: object) -> Program:
    for name in ("canonicalize", "contraction-plan"):
        program = get(name).apply(program, dict(options)).verify()
    return program


def einsums(program: Program) -> list[einfold.Op]:
    return [op for op in program.ops if op.opcode == "einsum"]


def random_inputs(shapes: list[tuple[int, ...]], dtype: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    storage = einfold.dtypes.dtype(dtype).numpy
    if dtype.startswith("c"):
        return [(rng.standard_normal(s) + 1j * rng.standard_normal(s)).astype(storage) for s in shapes]
    if dtype.startswith(("i", "u")):
        return [rng.integers(-3, 4, s).astype(storage) for s in shapes]
    return [rng.standard_normal(s).astype(storage) for s in shapes]


def assert_same_values(before: Program, after: Program, inputs: list[np.ndarray]) -> None:
    expected = run_program(before, inputs)
    got = run_program(after, inputs)
    for e, g in zip(expected, got):
        assert g.dtype == e.dtype and g.shape == e.shape
        if e.dtype.kind in "iub":
            np.testing.assert_array_equal(g, e)
        else:
            tol = 1e-4 if e.dtype in (np.float32, np.complex64) else 1e-11
            np.testing.assert_allclose(g, e, rtol=tol, atol=tol * max(1.0, float(np.abs(e).max())))


SUITE = [
    ("ij,jk,kl->il", [(8, 9), (9, 10), (10, 11)]),
    ("ij,jk,kl,lm->im", [(4, 30), (30, 30), (30, 30), (30, 4)]),
    ("ijk,jr,kr->ir", [(5, 6, 7), (6, 3), (7, 3)]),
    ("abc,ia,jb,kc->ijk", [(3, 4, 5), (6, 3), (7, 4), (8, 5)]),
    ("bn,anm,bm->ba", [(4, 5), (3, 5, 6), (4, 6)]),
    ("aab,bc,cd->ad", [(3, 3, 4), (4, 5), (5, 6)]),
    ("ab,bc,cd->", [(3, 4), (4, 5), (5, 3)]),
    ("i,j,k->ijk", [(2,), (3,), (4,)]),
    ("abcd,ce->ae", [(3, 4, 5, 6), (5, 7)]),
]


def test_registered() -> None:
    assert PASSES["contraction-plan"].name == "contraction-plan"


@pytest.mark.parametrize("spec,shapes", SUITE)
@pytest.mark.parametrize("dtype", ["f32", "f64", "i32", "i64", "c64", "c128"])
def test_values_are_unchanged_and_einsums_are_at_most_binary(spec: str, shapes: list, dtype: str) -> None:
    program = spec_program(spec, shapes, dtype)
    planned = plan(program)
    assert all(len(op.operands) <= 2 for op in einsums(planned))
    assert_same_values(program, planned, random_inputs(shapes, dtype))


def test_chain_of_three_is_two_cubic_matmuls_never_one_quartic_nest() -> None:
    n = 16
    planned = plan(spec_program("ij,jk,kl->il", [(n, n)] * 3))
    steps = einsums(planned)
    assert [op.attrs["spec"] for op in steps] == ["ab,bc->ac", "ac,cd->ad"]
    assert [planned.op_flops(op) for op in steps] == [2 * n**3, 2 * n**3]
    assert [op.result for op in steps] == ["0.c0", "0"]
    record = steps[-1].attrs["plan"]
    assert record == {"optimizer": "optimal", "path": [[0, 1], [0, 1]], "flops": 4 * n**3,
                      "flops_naive": 3 * n**4, "largest_intermediate": n * n, "from": "ab,bc,cd->ad"}
    assert planned.flops() == record["flops"]


def test_the_plan_keeps_the_name_and_type_and_round_trips_through_text() -> None:
    program = spec_program("abc,ia,jb,kc->ijk", [(3, 4, 5), (6, 3), (7, 4), (8, 5)])
    planned = plan(program)
    last = planned.defining_op(planned.outputs[0])
    assert last.result == program.outputs[0] and last.type == program.type_of(program.outputs[0])
    assert {"optimizer", "path", "flops", "flops_naive", "largest_intermediate", "from"} <= set(last.attrs["plan"])
    assert [op.result for op in einsums(planned)[:-1]] == ["0.c0", "0.c1"]
    text = str(planned)
    assert str(einfold.parse_ir(text)) == text


def test_the_path_follows_the_plan_and_the_cost_is_opt_einsums() -> None:
    import opt_einsum

    shapes = [(64, 512), (512, 512), (512, 512), (512, 64)]
    planned = plan(spec_program("ij,jk,kl,lm->im", shapes))
    record = planned.defining_op("0").attrs["plan"]
    path, info = opt_einsum.contract_path("ij,jk,kl,lm->im", *shapes, shapes=True, optimize="optimal")
    assert record["path"] == [list(group) for group in path]
    assert record["flops"] == info.opt_cost
    assert record["flops"] < record["flops_naive"] / 1000


@pytest.mark.parametrize("n,expected", [(3, "optimal"), (4, "optimal"), (5, "dp"), (16, "dp"), (17, "greedy"),
                                        (32, "greedy")])
def test_the_path_finder_is_chosen_by_operand_count(n: int, expected: str) -> None:
    assert choose_optimizer(n, {}) == expected
    terms = [LETTERS[k] + LETTERS[k + 1] for k in range(n)]
    shapes = [(3, 4)] + [(4, 4)] * (n - 2) + [(4, 3)]
    program = spec_program(",".join(terms) + "->" + LETTERS[0] + LETTERS[n], shapes, "f64")
    planned = plan(program)
    assert planned.defining_op(program.outputs[0]).attrs["plan"]["optimizer"] == expected
    assert len(einsums(planned)) == n - 1 and all(len(op.operands) == 2 for op in einsums(planned))
    assert_same_values(program, planned, random_inputs(shapes, "f64"))


def test_the_optimizer_option_overrides_the_choice() -> None:
    program = spec_program("ab,bc,cd->ad", [(2, 3), (3, 4), (4, 5)])
    planned = plan(program, contraction_optimizer="greedy")
    assert planned.defining_op("0").attrs["plan"]["optimizer"] == "greedy"


def test_an_unknown_optimizer_is_a_clear_error() -> None:
    with pytest.raises(einfold.UnsupportedError, match="unknown contraction_optimizer 'fastest'.*greedy"):
        plan(spec_program("ab,bc,cd->ad", [(2, 3), (3, 4), (4, 5)]), contraction_optimizer="fastest")


def test_cotengra_finds_paths_for_large_networks_when_installed() -> None:
    pytest.importorskip("cotengra")
    n = 20
    terms = [LETTERS[k] + LETTERS[k + 1] for k in range(n)]
    shapes = [(3, 4)] + [(4, 4)] * (n - 2) + [(4, 3)]
    program = spec_program(",".join(terms) + "->" + LETTERS[0] + LETTERS[n], shapes, "f64")
    planned = plan(program, contraction_optimizer="cotengra")
    record = planned.defining_op(program.outputs[0]).attrs["plan"]
    assert record["optimizer"] == "cotengra" and record["flops"] < record["flops_naive"]
    assert all(len(op.operands) == 2 for op in einsums(planned))
    assert_same_values(program, planned, random_inputs(shapes, "f64"))


def test_a_label_summed_in_one_operand_is_summed_first() -> None:
    program = spec_program("abcd,ce->ae", [(3, 4, 5, 6), (5, 7)], "f64")
    planned = plan(program)
    steps = einsums(planned)
    assert [op.attrs["spec"] for op in steps] == ["abcd->ac", "ac,ce->ae"]
    assert steps[-1].attrs["plan"]["flops"] == planned.flops() < program.flops()


def test_a_size_one_label_is_dropped_by_a_free_reshape() -> None:
    program = spec_program("ij,ij->ij", [(3, 1), (3, 4)], "f64")
    planned = plan(program)
    assert [op.opcode for op in planned.ops if op.opcode not in ("input",)] == ["reshape", "einsum"]
    assert planned.ops[2].type.shape == (3,)
    assert_same_values(program, planned, random_inputs([(3, 1), (3, 4)], "f64"))


def test_binary_and_unary_einsums_without_local_sums_stay_as_they_are() -> None:
    program = Program("p")
    x, y = program.input("x", (3, 4)), program.input("y", (4, 5))
    program.set_outputs(program.einsum("ab,bc->ac", x, y), program.einsum("ab->b", x))
    planned = plan(program)
    assert str(planned) == str(get("canonicalize").apply(program, {}))


def test_the_pass_is_idempotent() -> None:
    once = plan(spec_program("abc,ia,jb,kc->ijk", [(3, 4, 5), (6, 3), (7, 4), (8, 5)]))
    assert str(get("contraction-plan").apply(once, {})) == str(once)


def mlp_chain(batch: int, i: int, j: int, k: int, seed: int = 0) -> Program:
    rng = np.random.default_rng(seed)
    program = Program("mlp")
    x = program.input("x", (batch, i))
    w1 = program.const("w1", rng.standard_normal((i, j)).astype(np.float32))
    w2 = program.const("w2", rng.standard_normal((j, k)).astype(np.float32))
    program.set_outputs(program.einsum("bi,ij,jk->bk", x, w1, w2))
    return program


def test_weights_are_folded_when_that_lowers_the_run_time_flops() -> None:
    program = mlp_chain(batch=256, i=8, j=64, k=8)
    planned = plan(program)
    record = planned.defining_op("0").attrs["plan"]
    assert record["folded_weights"] == ["w1", "w2"]
    # Unfolded, the best run-time plan still multiplies W1 W2 on every call.
    assert record["flops"] == 2 * 256 * 8 * 8 < record["flops_unfolded"] == 2 * 8 * 64 * 8 + 2 * 256 * 8 * 8
    assert record["planned"] == "ab,bd->ad" and "fold_rejected" not in record
    folded = [op for op in planned.consts]
    assert len(folded) == 1 and folded[0].type.shape == (8, 8)  # w1 and w2 are no longer needed
    assert set(planned.weights) == {folded[0].attrs["name"]}
    np.testing.assert_allclose(planned.weights[folded[0].attrs["name"]],
                               program.weights["w1"] @ program.weights["w2"], rtol=1e-5, atol=1e-5)
    assert planned.flops() == record["flops"]
    assert_same_values(program, planned, random_inputs([(256, 8)], "f32"))


def test_folding_is_rejected_when_it_would_cost_more_at_run_time() -> None:
    program = mlp_chain(batch=2, i=64, j=4, k=64)  # W1 W2 is a 64x64 matrix: x W1 W2 is cheaper unfolded
    planned = plan(program)
    record = planned.defining_op("0").attrs["plan"]
    assert "folded_weights" not in record
    assert record["fold_rejected"] == {"weights": ["w1", "w2"], "flops_folded": 2 * 2 * 64 * 64}
    assert record["flops"] == 2 * 2 * 64 * 4 * 2
    assert {op.attrs["name"] for op in planned.consts} == {"w1", "w2"}
    assert_same_values(program, planned, random_inputs([(2, 64)], "f32"))


def test_folding_needs_the_weights_data() -> None:
    parsed = einfold.parse_ir(str(mlp_chain(batch=256, i=8, j=64, k=8)))
    planned = plan(parsed)
    record = planned.defining_op("0").attrs["plan"]
    assert "folded_weights" not in record and "no data for weight(s) w1, w2" in record["fold_rejected"]["reason"]


def test_only_the_weight_group_that_pays_is_folded() -> None:
    rng = np.random.default_rng(3)
    program = Program("three")
    x = program.input("x", (128, 8))
    w1 = program.const("w1", rng.standard_normal((8, 64)))
    w2 = program.const("w2", rng.standard_normal((64, 8)))
    w3 = program.const("w3", rng.standard_normal((8, 2)))
    program.set_outputs(program.einsum("bi,ij,jk,kl->bl", x, w1, w2, w3))
    planned = plan(program)
    record = planned.defining_op(program.outputs[0]).attrs["plan"]
    assert record["folded_weights"] == ["w1", "w2", "w3"]
    assert record["flops"] == 2 * 128 * 8 * 2
    assert_same_values(program, planned, random_inputs([(128, 8)], "f64"))


def test_plans_reach_the_driver_stats() -> None:
    exe = einfold.compile("ij,jk,kl->il", shapes=[(4, 5), (5, 6), (6, 7)], target="numpy",
                          passes=["canonicalize", "contraction-plan"])
    a, b, c = random_inputs([(4, 5), (5, 6), (6, 7)], "f32")
    np.testing.assert_allclose(exe(a, b, c), a @ b @ c, rtol=1e-5, atol=1e-5)
    assert "contraction-plan" in exe.stages
    assert max(len(op.operands) for op in einsums(exe.program)) == 2
    assert [plan["from"] for plan in exe.stats()["contractions"]] == ["ab,bc,cd->ad"]


@pytest.mark.parametrize("dtype", ["bool", "i8", "u8", "u32", "f16", "bf16", "zq(97)"])
def test_narrow_dtypes_keep_their_values(dtype: str) -> None:
    shapes = [(3, 4), (4, 5), (5, 2)]
    program = spec_program("ij,jk,kl->il", shapes, dtype)
    planned = plan(program)
    rng = np.random.default_rng(7)
    storage = einfold.dtypes.dtype(dtype).numpy
    inputs = [rng.integers(0, 3, s).astype(storage) for s in shapes]
    expected, got = run_program(program, inputs)[0], run_program(planned, inputs)[0]
    assert got.dtype == expected.dtype
    # Small integers stay exact in every dtype here (f16/bf16 round each intermediate, still exact at this size).
    np.testing.assert_array_equal(got.astype(np.float64), expected.astype(np.float64))


@st.composite
def networks(draw: st.DrawFn) -> tuple[str, list[tuple[int, ...]]]:
    """Random einsums of 3-6 operands over up to 6 labels of sizes 1-4 (diagonals and outer products too)."""
    labels = LETTERS[: draw(st.integers(2, 6))]
    sizes = {label: draw(st.integers(1, 4)) for label in labels}
    n = draw(st.integers(3, 6))
    terms = [draw(st.text(alphabet=labels, min_size=0, max_size=3)) for _ in range(n)]
    used = sorted(set("".join(terms)))
    output = "".join(draw(st.permutations(used))[: draw(st.integers(0, len(used)))])
    return ",".join(terms) + "->" + output, [tuple(sizes[label] for label in term) for term in terms]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks())
def test_random_networks_keep_their_values(network: tuple[str, list[tuple[int, ...]]]) -> None:
    spec, shapes = network
    program = spec_program(spec, shapes, "f64")
    planned = plan(program)
    assert all(len(op.operands) <= 2 for op in einsums(planned))
    for op in einsums(planned):
        EinsumSpec.parse(op.attrs["spec"])
    assert_same_values(program, planned, random_inputs(shapes, "f64", seed=len(spec)))
