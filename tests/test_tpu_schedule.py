"""The tpu target's list schedule: valid on varied programs (no unit runs two steps at once, no step starts before
its inputs are ready, no idle unit while a step waits for it), overlapping limbs of an N = 2^16 NTT, one fill and
drain for back-to-back GEMMs, and the figures of exe.stats() / exe.cost_report() computed from it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import einfold
from einfold import he
from einfold.backends.tpu.cycles import program_costs
from einfold.backends.tpu.schedule import schedule_steps
from einfold.backends.tpu.tiling import FloatGemm, Gemm, View, step_inputs


def check_schedule(exe: einfold.Executable) -> dict:
    """Assert that the executable's schedule is valid and its figures follow from it; returns the cost report."""
    tiled, slots, report = exe.tiled_program(), exe.schedule(), exe.cost_report()
    steps, costs, engine = tiled.steps, program_costs(tiled, spills=report["spills"]), tiled.engine
    assert len(slots) == len(steps)
    previous_free = {"mxu": 0, "vpu": 0}
    order = sorted(range(len(steps)), key=lambda i: (slots[i].start, i))
    end_of = {step.out: slot.end for step, slot in zip(steps, slots)}
    loaded_at: dict[str, int] = {}
    external = {name: int(np.prod(shape)) * np.dtype(dtype).itemsize for name, shape, dtype in tiled.inputs}
    external.update({name: value.nbytes for name, value in tiled.consts.items()})
    ready_at = [0] * len(steps)
    for index, (step, slot, cost) in enumerate(zip(steps, slots, costs)):
        assert slot.unit == step.unit and slot.end - slot.start == cost.cycles
        for name in step_inputs(step):
            if name in end_of:
                ready_at[index] = max(ready_at[index], end_of[name])
            elif name in loaded_at and name not in cost.loads:  # a program input or constant an earlier step loads
                ready_at[index] = max(ready_at[index], loaded_at[name])
        loaded = sum(external[name] for name in set(cost.loads))  # loads come first, at the HBM bandwidth
        for name in cost.loads:
            loaded_at.setdefault(name, slot.start + math.ceil(loaded / engine.hbm_bytes_per_cycle))
        assert slot.start >= ready_at[index]
    for index in order:  # each unit runs one step at a time and starts it as soon as the step and the unit allow
        slot = slots[index]
        if slot.unit == "none":
            assert slot.start == ready_at[index]
            continue
        held = max(costs[index].stream, costs[index].hbm) if slot.unit == "mxu" else costs[index].cycles
        assert slot.free - slot.start == held
        assert slot.start == max(ready_at[index], previous_free[slot.unit])
        previous_free[slot.unit] = slot.free
    cycles = max((slot.end for slot in slots), default=0)
    sequential = sum(cost.cycles for cost in costs)
    assert report["cycles"] == exe.stats()["cycles"] == cycles
    assert report["sequential_cycles"] == sequential >= cycles
    for unit in ("mxu", "vpu"):
        assert report[f"{unit}_cycles"] == sum(s.free - s.start for s in slots if s.unit == unit) <= cycles
    gemms = [i for i, step in enumerate(steps) if isinstance(step, (Gemm, FloatGemm))]
    covered = np.zeros(cycles, dtype=bool)
    for i in gemms:
        covered[slots[i].start:slots[i].end] = True
    busy = [steps[i].macs / (engine.array_rows * engine.array_cols * engine.rate(steps[i].input_type)) for i in gemms]
    assert report["matmul_cycles"] == int(covered.sum())
    if gemms:
        assert report["matmul_utilization"] == pytest.approx(sum(busy) / (engine.arrays * covered.sum()), rel=1e-12)
        assert report["utilization"] == pytest.approx(sum(busy) / (engine.arrays * cycles), rel=1e-12)
        assert report["utilization"] <= report["matmul_utilization"] <= 1 + 1e-12
    assert report["vpu_share"] == pytest.approx(report["vpu_cycles"] / cycles if cycles else 0.0, rel=1e-12)
    return report


def attention(t: int = 24, heads: int = 2, d: int = 32) -> einfold.Program:
    p = einfold.Program("attention")
    q, k, v = (p.input(name, (t, heads, d)) for name in "qkv")
    weights = p.map("exp", p.einsum("thd,Thd->htT", q, k))
    p.set_outputs(p.einsum("htT,Thd->thd", weights, v))
    return p


@pytest.mark.parametrize("limbs, bits", [(1, (30,)), (2, (28, 45)), (3, (30, 36, 60))])
@pytest.mark.parametrize("inverse", [False, True])
def test_ntt_schedules_are_valid(limbs, bits, inverse):
    n = 2**10
    moduli = [he.ntt_primes(b, n, limbs)[i] for i, b in enumerate(bits)]
    report = check_schedule(einfold.compile(he.ntt(n, moduli, inverse=inverse, batch=(2,)), target="tpu"))
    if limbs > 1:
        assert report["cycles"] < report["sequential_cycles"]  # independent limbs overlap


def test_basis_conversion_float_gemm_mlp_and_attention_schedules_are_valid(mlp):
    n = 256
    check_schedule(einfold.compile(he.basis_convert(n, he.ntt_primes(30, n, 3), he.ntt_primes(36, n, 2),
                                                    batch=(2,)), target="tpu"))
    check_schedule(einfold.compile("ij,jk->ik", shapes=[(64, 300), (300, 48)], target="tpu"))
    check_schedule(einfold.compile(mlp, target="tpu"))
    check_schedule(einfold.compile(attention(), target="tpu"))


@st.composite
def float_programs(draw) -> einfold.Program:
    """A random DAG of square float matmuls, adds and maps over a few inputs and constants."""
    size = draw(st.sampled_from([16, 128, 200]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    p = einfold.Program("random")
    values = [p.input(f"x{i}", (size, size)) for i in range(draw(st.integers(1, 3)))]
    values.append(p.const("w", rng.standard_normal((size, size)).astype(np.float32)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["matmul", "matmul", "add", "map"]))
        a, b = (values[draw(st.integers(0, len(values) - 1))] for _ in range(2))
        if kind == "matmul":
            values.append(p.einsum("ij,jk->ik", a, b))
        elif kind == "add":
            values.append(p.add(a, b))
        else:
            values.append(p.map(draw(st.sampled_from(["relu", "exp", "gelu"])), a))
    p.set_outputs(*values[-draw(st.integers(1, 3)):])
    return p


@settings(max_examples=30, deadline=None)
@given(float_programs(), st.sampled_from([1, 2, 4, 8]), st.sampled_from([64, 1024]),
       st.sampled_from([2**16, 128 * 2**20]), st.sampled_from([819e9, 50e9]))
def test_random_programs_and_engines_have_valid_schedules(program, arrays, lanes, on_chip, bandwidth):
    engine = {"arrays": arrays, "vpu_lanes": lanes, "on_chip_bytes": on_chip, "hbm_bytes_per_second": bandwidth}
    check_schedule(einfold.compile(program, target="tpu", engine=engine))


def two_products(dependent: bool) -> einfold.Program:
    p = einfold.Program("two")
    a, b, c = (p.input(name, (512, 512)) for name in "abc")
    first = p.einsum("ij,jk->ik", a, b)
    second = p.einsum("ij,jk->ik", first if dependent else c, b)
    p.set_outputs(first, second)
    return p


def test_back_to_back_independent_gemms_pay_one_fill_and_drain_and_dependent_ones_two():
    fill_drain = 128 + 128
    stream = (512 // 128) ** 2 // 4 * 512  # 16 weight tiles on 4 arrays, 512 bf16 rows streamed past each
    fast_hbm = {"hbm_bytes_per_second": 1e15}  # 3 MiB in 5 cycles: both GEMMs are MXU-bound
    independent = einfold.compile(two_products(False), target="tpu", engine=fast_hbm)
    first, second = (s for s, step in zip(independent.schedule(), independent.tiled_program().steps)
                     if isinstance(step, FloatGemm))
    assert second.start == first.free == first.start + stream and second.end == second.free + fill_drain
    report = check_schedule(independent)
    assert report["matmul_cycles"] == 2 * stream + fill_drain
    assert report["matmul_utilization"] == pytest.approx(2 * stream / (2 * stream + fill_drain), rel=1e-12)
    dependent = einfold.compile(two_products(True), target="tpu", engine=fast_hbm)
    first, second = (s for s, step in zip(dependent.schedule(), dependent.tiled_program().steps)
                     if isinstance(step, FloatGemm))
    assert second.start == first.end == first.start + stream + fill_drain
    assert check_schedule(dependent)["matmul_cycles"] == 2 * (stream + fill_drain)


def test_one_limb_2_to_16_ntt_keeps_the_fill_and_drain_of_dependent_gemms():
    n = 2**16
    report = check_schedule(einfold.compile(he.ntt(n, [he.ntt_primes(30, n)[0]], batch=(1,)), target="tpu"))
    # the two GEMMs depend on each other through the vector unit: each streams 2048 cycles (64 int8 tiles on
    # 4 arrays, 256 columns at 2 per cycle behind 128-cycle weight loads) and drains 128 + 128
    assert report["matmul_utilization"] == pytest.approx(2048 / 2304, abs=1e-12)
    assert report["cycles"] == report["sequential_cycles"] == 18_818  # one chain of steps: nothing overlaps


def test_two_limb_2_to_16_ntt_streams_the_second_limbs_gemms_behind_the_first():
    n = 2**16
    exe = einfold.compile(he.ntt(n, he.ntt_primes(30, n, 2), batch=(1,)), target="tpu")
    report = check_schedule(exe)
    # Per limb (K = 4, R = C = 256): vector steps reduce 3840, bytes 768, combine 2688, mulmod 1536, bytes 768,
    # combine 2688 (12288 in all); two GEMMs of 2048 stream + 256 fill/drain cycles. x (1 MiB) loads in 1921.
    # VPU: reduce0 [1921, 5761), reduce1 [5761, 9601) (its path to the end is longer than bytes0's), bytes0
    # [9601, 10369), bytes1 [10369, 11137). GEMM0 streams [10369, 12417); GEMM1, ready at 11137, streams right
    # behind it [12417, 14465) and drains to 14721: the pair covers 2 x 2048 + 256 cycles. The third-step GEMMs
    # pair the same way (limb 1's bytes, 768 cycles, end before limb 0's 2048-cycle stream), and the two pairs are
    # apart. Matmul utilisation = 4 x 2048 / (2 x (2 x 2048 + 256)) = 16/17.
    assert report["matmul_utilization"] == pytest.approx(16 / 17, abs=1e-12)
    assert report["matmul_utilization"] > 2048 / 2304
    # Makespan: load x, the VPU's 2 x 12288 cycles, twice 1536 idle cycles (bytes1 ends 1536 cycles before GEMM0's
    # result), then the 1 MiB output store.
    assert report["cycles"] == 1921 + 2 * 12288 + 2 * 1536 + 1921 < report["sequential_cycles"]
    assert report["utilization"] == pytest.approx(4 * 2048 / report["cycles"], abs=1e-12)
    listing = exe.source("tpu")
    assert "[t 10369-12673 (stream to 12417): 2304 cyc; mxu 2304" in listing
    assert "[t 12417-14721 (stream to 14465): 2304 cyc; mxu 2304" in listing


def test_listing_shows_every_steps_start_and_end():
    exe = einfold.compile(attention(), target="tpu")
    listing = exe.source("tpu")
    for step, slot in zip(exe.tiled_program().steps, exe.schedule()):
        line = next(text for text in listing.splitlines() if f"%{step.out} = " in text)
        assert f"[t {slot.start}-{slot.end}" in line


def test_buffers_take_memory_only_while_live():
    """x -> relu -> relu -> relu -> relu on the VPU: each step frees its input as it ends, so two buffers are live."""
    p = einfold.Program("chain")
    value = p.input("x", (256, 256))
    for _ in range(4):
        value = p.map("relu", value)
    p.set_outputs(value)
    buffer = 256 * 256 * 4
    report = einfold.compile(p, target="tpu").cost_report()
    assert report["on_chip_peak_bytes"] == 2 * buffer and not report["spills"]
    spilled = einfold.compile(p, target="tpu", engine={"on_chip_bytes": 2 * buffer - 1}).cost_report()
    assert spilled["spills"] and spilled["hbm_bytes"] == 4 * 2 * buffer  # every step reads and writes through HBM


def test_the_on_chip_peak_bounds_and_decides_spilling():
    n = 2**10
    program = he.ntt(n, he.ntt_primes(30, n, 2), batch=(1,))
    exe = einfold.compile(program, target="tpu")
    tiled, peak = exe.tiled_program(), exe.cost_report()["on_chip_peak_bytes"]
    size = {name: int(np.prod(shape)) * np.dtype(dtype).itemsize for name, shape, dtype in tiled.inputs}
    size.update({name: value.nbytes for name, value in tiled.consts.items()})
    size.update({step.out: int(np.prod(step.shape)) * np.dtype(step.dtype).itemsize for step in tiled.steps})
    working_sets = [size[step.out] + sum(size[name] for name in step_inputs(step))
                    for step in tiled.steps if not isinstance(step, View) and
                    not any(isinstance(s, View) and s.out in step_inputs(step) for s in tiled.steps)]
    without_reuse = sum(size[name] for name in tiled.consts) + sum(size[name] for name, _, _ in tiled.inputs) + sum(
        size[step.out] for step in tiled.steps if not isinstance(step, View))
    assert max(working_sets) <= peak < without_reuse
    fits = einfold.compile(program, target="tpu", engine={"on_chip_bytes": peak}).cost_report()
    assert not fits["spills"] and fits["hbm_bytes"] == sum(size[name] for name in tiled.consts) + 2 * 2 * n * 8
    spills = einfold.compile(program, target="tpu", engine={"on_chip_bytes": peak - 1}).cost_report()
    assert spills["spills"] and spills["hbm_bytes"] > fits["hbm_bytes"]


def test_a_buffer_written_twice_or_read_before_written_is_an_error(mlp):
    tiled = einfold.compile(mlp, target="tpu").tiled_program()
    tiled.steps.append(tiled.steps[-1])
    with pytest.raises(einfold.IRError, match="written once"):
        schedule_steps(tiled, program_costs(tiled))
    tiled.steps[:] = tiled.steps[-2::-1]
    with pytest.raises(einfold.IRError, match="no earlier step writes"):
        schedule_steps(tiled, program_costs(tiled))


@pytest.mark.slow
def test_eight_60_bit_limbs_stay_on_chip_and_keep_the_matrix_units_busy():
    n = 2**16
    report = einfold.compile(he.ntt(n, he.ntt_primes(60, n, 8)), target="tpu").cost_report()
    assert not report["spills"] and report["on_chip_peak_bytes"] < 32 * 2**20
    assert report["matmul_utilization"] > 0.99
