"""CPU einsum benchmark: einfold's `llvm` and `tvm` targets against numpy.einsum, opt_einsum and torch.einsum.

    python benchmarks/cpu_einsum.py [--quick] [--targets llvm,tvm] [--repeat 15] [--out results.md]
Every result is checked against numpy (float64 oracle) before it is timed; a wrong or failing einfold result
makes the run exit with status 1 after printing the table. Times are medians per call after warm-up; compile
time is reported apart. Speedup = best peer's time / einfold's time (> 1: einfold is faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import opt_einsum

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    Timing,
    format_seconds,
    format_speedup,
    geometric_mean,
    machine_summary,
    markdown_table,
    measure_interleaved,
)

import einfold  # noqa: E402
from einfold import backends  # noqa: E402

Shapes = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Case:
    """One benchmark einsum: full-size shapes (numpy takes ~1-50 ms on 2 cores) and small ones for --quick."""

    name: str
    spec: str
    shapes: Shapes
    quick_shapes: Shapes
    in_suite: bool = True  # False: reported on its own row, left out of the geometric mean


SUITE = [
    Case("GEMM", "ij,jk->ik", ((1024, 1024), (1024, 1024)), ((96, 80), (80, 112))),
    Case("batched matmul", "bij,bjk->bik", ((32, 256, 256), (32, 256, 256)), ((4, 24, 32), (4, 32, 40))),
    Case("attention scores", "bhqd,bhkd->bhqk", ((4, 8, 256, 64), (4, 8, 256, 64)), ((2, 2, 16, 8), (2, 2, 24, 8))),
    Case("4-d contraction", "abcd,cdef->abef", ((32, 32, 16, 16), (16, 16, 32, 32)), ((6, 5, 4, 3), (4, 3, 7, 8))),
    Case("MTTKRP", "ijk,jr,kr->ir", ((128, 128, 128), (128, 32), (128, 32)), ((12, 10, 9), (10, 4), (9, 4))),
    Case("TTM", "ijk,kl->ijl", ((128, 128, 128), (128, 64)), ((10, 12, 14), (14, 6))),
    Case("bilinear", "bn,anm,bm->ba", ((64, 128), (64, 128, 128), (64, 128)), ((5, 7), (6, 7, 9), (5, 9))),
    Case("4-matrix chain", "ij,jk,kl,lm->im", ((128, 512), (512, 512), (512, 512), (512, 128)),
         ((8, 20), (20, 24), (24, 16), (16, 6))),
    Case("Tucker", "abc,ia,jb,kc->ijk", ((32, 32, 32), (128, 32), (128, 32), (128, 32)),
         ((4, 5, 6), (10, 4), (11, 5), (12, 6))),
    Case("reduction", "ijk->j", ((256, 256, 128),), ((20, 30, 16),)),
    Case("empty call (dispatch)", "i,i->", ((16,), (16,)), ((16,), (16,)), in_suite=False),
]

PEERS = ["numpy", "opt_einsum", "torch"]
# Error allowed relative to einsum(|operands|): a wrong result is off by O(1), rounding by ~eps * sqrt(terms).
FLOAT_TOLERANCE = {np.float32: 1e-4, np.float64: 1e-11}


@dataclass
class Row:
    """What one case measured: per implementation a timing, or the reason it has none."""

    case: Case
    shapes: Shapes
    dtype: np.dtype
    gflop: float
    times: dict[str, Timing]
    compile_seconds: dict[str, float]
    missing: dict[str, str]
    failures: list[str]


def make_inputs(shapes: Shapes, dtype: np.dtype, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        return [rng.integers(-3, 4, size=shape).astype(dtype) for shape in shapes]
    return [rng.uniform(-1.0, 1.0, size=shape).astype(dtype) for shape in shapes]


@dataclass(frozen=True)
class Oracle:
    """numpy's answer for one case (float64 for float inputs) and, for floats, einsum(|operands|): the scale
    that rounding errors grow with."""

    expected: np.ndarray
    scale: np.ndarray | None

    @staticmethod
    def of(spec: str, inputs: list[np.ndarray]) -> Oracle:
        if np.issubdtype(inputs[0].dtype, np.integer):
            return Oracle(np.einsum(spec, *inputs, optimize=True), None)
        wide = [x.astype(np.float64) for x in inputs]
        return Oracle(np.einsum(spec, *wide, optimize=True),
                      np.einsum(spec, *(np.abs(x) for x in wide), optimize=True))

    def check(self, name: str, got: object, dtype: np.dtype) -> str | None:
        """None if `got` is numpy's answer within rounding, else what is wrong."""
        got = np.asarray(got)
        if got.shape != self.expected.shape:
            return f"{name}: shape {got.shape}, numpy gives {self.expected.shape}"
        if self.scale is None:
            return None if np.array_equal(got, self.expected) else f"{name}: integers differ from numpy.einsum"
        tolerance = FLOAT_TOLERANCE[dtype.type]
        error = np.abs(got.astype(np.float64) - self.expected)
        bound = tolerance * np.maximum(self.scale, np.finfo(np.float64).tiny)
        if not np.all(error <= bound):
            worst = float(np.max(error / bound)) * tolerance
            return f"{name}: result differs from numpy by {worst:.2e} relative to einsum(|x|)"
        return None


def peer_function(peer: str, spec: str, inputs: list[np.ndarray]) -> Callable[[], object]:
    if peer == "numpy":
        return lambda: np.einsum(spec, *inputs, optimize=True)
    if peer == "opt_einsum":
        expression = opt_einsum.contract_expression(spec, *(x.shape for x in inputs))
        return lambda: expression(*inputs)
    if peer == "torch":
        import torch
        tensors = [torch.from_numpy(x) for x in inputs]
        return lambda: torch.einsum(spec, *tensors)
    raise ValueError(peer)


def as_array(value: object) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def available_peers() -> dict[str, str]:
    """peer -> reason it is absent (empty when it can run)."""
    absent = {}
    try:
        import torch  # noqa: F401
    except ImportError:
        absent["torch"] = "torch is not installed (pip install -e '.[bench]')"
    return absent


def available_targets(targets: list[str]) -> dict[str, str]:
    """target -> reason it cannot run here (absent from the dict: it can)."""
    absent = {}
    for target in targets:
        try:
            ok, reason = backends.get(target).available()
        except ImportError as error:
            ok, reason = False, f"not built ({error})"
        except Exception as error:  # a backend module that does not load is reported, not fatal
            ok, reason = False, f"cannot load: {type(error).__name__}: {error}".splitlines()[0]
        if not ok:
            absent[target] = reason
    return absent


def run_case(case: Case, quick: bool, dtype: np.dtype, targets: list[str], peers: list[str],
             repeat: int, min_sample: float) -> Row:
    """Check every implementation's result, then time those that are right, round-robin."""
    shapes = case.quick_shapes if quick else case.shapes
    inputs = make_inputs(shapes, dtype)
    _, info = opt_einsum.contract_path(case.spec, *shapes, shapes=True, optimize="optimal")
    row = Row(case, shapes, dtype, float(info.opt_cost) / 1e9, {}, {}, {}, [])
    oracle = Oracle.of(case.spec, inputs)
    timed: dict[str, Callable[[], object]] = {}
    for peer in peers:
        try:
            fn = peer_function(peer, case.spec, inputs)
            problem = oracle.check(peer, as_array(fn()), dtype)
        except Exception as error:  # a peer without support for a dtype is reported, not fatal
            problem = f"{type(error).__name__}: {error}".splitlines()[0]
        if problem:
            row.missing[peer] = problem
        else:
            timed[peer] = fn
    if case.spec == "ij,jk->ik":
        a, b = inputs
        timed["openblas"] = lambda: a @ b
    einfold_dtype = einfold.dtypes.dtype(dtype).name
    for target in targets:
        try:
            start = time.perf_counter()
            exe = einfold.compile(case.spec, shapes=shapes, dtype=einfold_dtype, target=target)
            row.compile_seconds[target] = time.perf_counter() - start
            problem = oracle.check(target, exe(*inputs), dtype)
        except Exception as error:  # a compile or run failure is a failure of the run, reported with the table
            problem = f"{target}: {type(error).__name__}: {error}".splitlines()[0]
        if problem:
            row.failures.append(f"{case.name}: {problem}")
            row.missing[target] = "FAILED"
        else:
            timed[target] = lambda exe=exe: exe(*inputs)
    row.times = measure_interleaved(timed, repeat=repeat, min_sample_seconds=min_sample)
    return row


def summary_line(row: Row) -> str:
    """One progress line per case (printed as the run goes, so a crash later still leaves the numbers)."""
    times = ", ".join(f"{name} {format_seconds(t.median)}" for name, t in row.times.items())
    return f"    {times}" + (f"; FAILED: {'; '.join(row.failures)}" if row.failures else "")


def best_peer(row: Row, peers: list[str]) -> tuple[str, float] | None:
    timed = [(row.times[p].median, p) for p in peers if p in row.times]
    return (min(timed)[1], min(timed)[0]) if timed else None


def report(rows: list[Row], targets: list[str], peers: list[str], header: str) -> str:
    def cell(row: Row, name: str) -> str:
        if name in row.times:
            return format_seconds(row.times[name].median)
        return "FAILED" if row.missing.get(name) == "FAILED" else "n/a"

    headers = ["case", "spec", "GFLOP", *peers, "best peer", *targets, *(f"{t} speedup" for t in targets)]
    table_rows = []
    speedups: dict[str, list[float]] = {t: [] for t in targets}
    for row in rows:
        best = best_peer(row, peers)
        ratios = []
        for target in targets:
            if best and target in row.times:
                ratio = best[1] / row.times[target].median
                ratios.append(format_speedup(ratio))
                if row.case.in_suite:
                    speedups[target].append(ratio)
            else:
                ratios.append("n/a")
        table_rows.append([row.case.name, f"`{row.case.spec}`", f"{row.gflop:.3g}", *(cell(row, p) for p in peers),
                           best[0] if best else "n/a", *(cell(row, t) for t in targets), *ratios])
    suite_size = sum(row.case.in_suite for row in rows)
    geomeans = []
    for target in targets:
        values = speedups[target]
        if values and len(values) == suite_size:
            geomeans.append(f"- {target}: geometric-mean speedup over the best peer: "
                            f"**{format_speedup(geometric_mean(values))}** ({len(values)} suite cases)")
        else:
            geomeans.append(f"- {target}: no geometric mean ({len(values)} of {suite_size} suite cases ran)")
    lines = [header, "", markdown_table(headers, table_rows, right_align_from=2), "", *geomeans]

    gemm = next((row for row in rows if "openblas" in row.times), None)
    if gemm:
        blas = gemm.times["openblas"].median
        shape = "x".join(str(d) for d in (*gemm.shapes[0], gemm.shapes[1][1]))
        floats = np.issubdtype(gemm.dtype, np.floating)
        against = "OpenBLAS" if floats else "numpy's integer matmul (not BLAS)"
        lines += ["", f"Pure GEMM {shape} against {against} (`a @ b`, {format_seconds(blas)}):"]
        for target in targets:
            if target in gemm.times:
                t = gemm.times[target].median
                lines.append(f"- {target}: {format_seconds(t)}, {format_speedup(blas / t)} the speed of `a @ b` "
                             f"({gemm.gflop / t:.1f} GFLOP/s against {gemm.gflop / blas:.1f})")
    detail_rows = [[row.case.name, sizes_text(row.case.spec, row.shapes),
                    *(f"{row.compile_seconds[t]:.2f} s" if t in row.compile_seconds else "n/a" for t in targets)]
                   for row in rows]
    lines += ["", "Sizes, and compile time (once per case, apart from the run times above):", "",
              markdown_table(["case", "sizes", *(f"{t} compile" for t in targets)], detail_rows, right_align_from=2)]
    spreads = sorted(((timing.spread, f"{row.case.name} / {name}") for row in rows
                      for name, timing in row.times.items()), reverse=True)
    noisy = [f"{where} ({spread:.0%})" for spread, where in spreads if spread > 0.25]
    if noisy:
        lines += ["", f"{len(noisy)} of {len(spreads)} measurements are noisy (sample spread > 25% of the median); "
                      f"worst: {', '.join(noisy[:5])}"]
    notes = [f"- {row.case.name} / {name}: {why}" for row in rows for name, why in row.missing.items()
             if why != "FAILED"]
    if notes:
        lines += ["", "Not timed:", *notes]
    return "\n".join(lines) + "\n"


def sizes_text(spec: str, shapes: Shapes) -> str:
    sizes = einfold.EinsumSpec.parse(spec).sizes(list(shapes))
    return " ".join(f"{label}={size}" for label, size in sizes.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a fast smoke run of the harness")
    parser.add_argument("--targets", default="llvm,tvm", help="einfold targets, comma-separated (default llvm,tvm)")
    parser.add_argument("--repeat", type=int, default=15,
                        help="timed samples per measurement (>= 5; default 15: see benchmarks/README.md)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "int32", "int64"])
    parser.add_argument("--cases", default="", help="only the cases whose name contains one of these words")
    parser.add_argument("--out", type=Path, help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    # All libraries share the cores in one process: OpenMP threads (torch's) that spin after each call would steal
    # time from whatever is timed next, so they sleep at once unless the caller chose otherwise. (Set before torch
    # is first imported.)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.repeat < 5:
        parser.error("--repeat must be at least 5")

    wanted = [t for t in args.targets.split(",") if t]
    absent_targets = available_targets(wanted)
    targets = [t for t in wanted if t not in absent_targets]
    absent_peers = available_peers()
    peers = [p for p in PEERS if p not in absent_peers]
    words = [w.lower() for w in args.cases.split(",") if w]
    cases = [c for c in SUITE if not words or any(w in c.name.lower() for w in words)]
    dtype = np.dtype(args.dtype)

    rows = []
    for case in cases:
        print(f"... {case.name} ({case.spec})", file=sys.stderr, flush=True)
        rows.append(run_case(case, args.quick, dtype, targets, peers, args.repeat, 0.001 if args.quick else 0.005))
        print(summary_line(rows[-1]), file=sys.stderr, flush=True)

    versions = {"numpy": np.__version__, "opt_einsum": opt_einsum.__version__, "einfold": einfold.__version__}
    if "torch" in peers:
        import torch
        versions["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    facts = {
        "run": f"{'--quick (small sizes)' if args.quick else 'full sizes'}, {args.dtype}, "
               f"median of {args.repeat} samples after warm-up",
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }
    for name, why in {**absent_targets, **absent_peers}.items():
        facts[f"absent: {name}"] = why
    header = "# einfold CPU einsum benchmark\n\n" + machine_summary(facts)
    text = report(rows, targets, peers, header)
    print(text)
    if args.out:
        args.out.write_text(text)
    failures = [f for row in rows for f in row.failures]
    if failures:
        print("FAILURES (einfold results wrong or not produced):", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
