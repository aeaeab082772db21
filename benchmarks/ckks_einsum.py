"""Benchmark the ckks target on EinHops' einsums and shapes with real desilofhe encryption (CPU).

    python benchmarks/ckks_einsum.py                      # all cases, EinHops' engine (max_level 17)
    python benchmarks/ckks_einsum.py --cases matvec,dot --runs 5 --params auto --json out.json

For each program: server latency (median of --runs calls of run_encrypted after one warm-up that encodes
the plaintexts), key generation time (reported apart), rotations, distinct rotation keys, ct x ct and
ct x pt multiplications, depth, ciphertexts, max |error| against numpy, and EinHops' published figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

import einfold
from einfold.backends.ckks.cases import ATTENTION, EINHOPS_CASES

# EinHops on desilofhe 1.7.0 CPU, 2 cores, power-of-two rotation keys, one run each: (seconds, depth)
EINHOPS = {"transpose": (76.8, 2), "sum": (3.5, 1), "column sum": (0.76, 1), "matrix-vector": (151, 3),
           "matrix-matrix": (37.8, 3), "dot product": (2.6, 2), "hadamard": (0.05, 2), "outer product": (65, 3),
           "batched matmul": (20.9, 3), "chained matmul": (121, 4), "bilinear": (231, 4),
           "4-d contraction": (139, 3)}


def mlp_program() -> tuple[einfold.Program, list[tuple[int, ...]]]:
    rng = np.random.default_rng(0)
    p = einfold.Program("mlp")
    x = p.input("x", (16, 64), "f64")
    h = p.add(p.einsum("bi,io->bo", x, p.const("w1", rng.standard_normal((64, 32)) / 8)),
              p.const("b1", rng.standard_normal(32) / 8))
    h = p.map("square", h)
    p.set_outputs(p.einsum("bo,oj->bj", h, p.const("w2", rng.standard_normal((32, 10)) / 8)))
    return p, [(16, 64)]


def programs(names: set[str] | None):
    cases = [(n, spec, shapes, None) for n, spec, shapes in EINHOPS_CASES + [ATTENTION]]
    cases.append(("mlp (square)", "bi,io->bo; square; bo,oj->bj", [(16, 64)], mlp_program()[0]))
    cases.append(("tiled matmul", "ik,kj->ij", [(64, 64), (64, 64)], None))
    for name, spec, shapes, program in cases:
        if names is None or name in names:
            yield name, spec, shapes, program


def measure(name: str, spec: str, shapes, program, params: str, runs: int, simulate: bool) -> dict:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s) for s in shapes]
    start = time.perf_counter()
    if program is None:
        exe = einfold.compile(spec, shapes=shapes, dtype="f64", target="ckks", params=params)
        expected = np.einsum(spec, *arrays)
    else:
        exe = einfold.compile(program, target="ckks", params=params)
        expected = einfold.compile(program, target="numpy")(*arrays)
    row = {"name": name, "spec": spec, "shapes": [list(s) for s in shapes], "compile_s": time.perf_counter() - start}
    row.update({k: exe.stats()[k] for k in ("rotations", "rotation_keys", "ct_ct_mults", "ct_pt_mults", "depth",
                                            "bootstraps", "ciphertexts", "slots", "est_latency_s")})
    if simulate:
        row["max_error"] = float(np.max(np.abs(np.asarray(exe.simulate(arrays)[0]) - expected)))
        return row
    start = time.perf_counter()
    keys = exe.keygen(progress=None)
    row["keygen_s"] = time.perf_counter() - start
    cts = [exe.encrypt(a, keys, n) for a, n in zip(arrays, exe.runtime.input_names)]
    start = time.perf_counter()
    exe.run_encrypted(*cts)
    row["first_run_s"] = time.perf_counter() - start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = exe.run_encrypted(*cts)
        times.append(time.perf_counter() - start)
    row["latency_s"] = statistics.median(times)
    row["max_error"] = float(np.max(np.abs(exe.decrypt(result, keys) - expected)))
    counts = exe.runtime.last_counts
    row["counts_confirmed"] = counts.get("rotate", 0) == row["rotations"] and counts.get("mul", 0) == row["ct_ct_mults"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="n16384-L17", help="parameter set (default: EinHops' max_level 17)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per program (median reported)")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    parser.add_argument("--simulate", action="store_true", help="counts and errors on the simulator only")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    names = set(args.cases.split(",")) if args.cases else None
    header = (f"{'program':<20} {'einsum':<18} {'latency s':>10} {'keygen s':>9} {'rot':>4} {'keys':>4} "
              f"{'ctxct':>5} {'ctxpt':>5} {'depth':>5} {'cts':>4} {'max err':>9} {'EinHops s':>9} {'speedup':>8}")
    print(f"# ckks target, params={args.params}, desilofhe CPU, median of {args.runs} runs", flush=True)
    print(header, flush=True)
    rows = []
    for name, spec, shapes, program in programs(names):
        row = measure(name, spec, shapes, program, args.params, args.runs, args.simulate)
        rows.append(row)
        theirs = EINHOPS.get(name, (None, None))[0]
        latency = row.get("latency_s")
        speedup = f"{theirs / latency:8.1f}x" if theirs and latency else f"{'-':>9}"
        print(f"{name:<20} {spec[:18]:<18} {latency if latency is not None else float('nan'):>10.4f} "
              f"{row.get('keygen_s', float('nan')):>9.2f} {row['rotations']:>4} {row['rotation_keys']:>4} "
              f"{row['ct_ct_mults']:>5} {row['ct_pt_mults']:>5} {row['depth']:>5} {row['ciphertexts']:>4} "
              f"{row['max_error']:>9.1e} {theirs if theirs else '-':>9} {speedup}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
