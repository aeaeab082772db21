"""Dense vs factorized `'bi,oi->bo'` at batch 64 with DFT-4096, Hadamard-4096, Kronecker and low-rank weights,
through a CPU target: medians of repeated runs, each result checked against numpy's dense product.

    python benchmarks/structured.py [--target llvm] [--n 4096] [--batch 64] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import einfold
from einfold import backends
from einfold.ir import Program
from einfold.passes import butterfly

PIPELINE = ["canonicalize", "constant-fold", "factorize", "cse", "dce"]
CHECK_TOL = 1e-6


def weights(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    side = int(round(n**0.5))
    return {
        f"DFT-{n} (c128)": butterfly.dft_matrix(n),
        f"Hadamard-{n}": butterfly.hadamard_matrix(n),
        f"Kronecker {side}x{side} (x) {side}x{side}": np.kron(rng.standard_normal((side, side)),
                                                          rng.standard_normal((side, side))),
        f"low-rank 32, {n}x{n}": rng.standard_normal((n, 32)) @ rng.standard_normal((32, n)) / 32,
    }


def program(weight: np.ndarray, batch: int) -> Program:
    p = Program("linear")
    x = p.input("x", (batch, weight.shape[1]), "c128" if np.iscomplexobj(weight) else "f64")
    p.set_outputs(p.einsum("bi,oi->bo", x, p.const("W", weight)))
    return p


def median_seconds(exe: einfold.Executable, x: np.ndarray, repeats: int) -> float:
    exe(x)  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        exe(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(target: str, n: int, batch: int, repeats: int, tol: float) -> str:
    rng = np.random.default_rng(0)
    rows = []
    for name, weight in weights(n, rng).items():
        x = rng.standard_normal((batch, n))
        if np.iscomplexobj(weight):
            x = x + 1j * rng.standard_normal((batch, n))
        reference = x @ weight.T
        dense = einfold.compile(program(weight, batch), target=target, passes=PIPELINE, factorize="none")
        start = time.perf_counter()
        factored = einfold.compile(program(weight, batch), target=target, passes=PIPELINE, factorize="auto", tol=tol)
        compile_seconds = time.perf_counter() - start
        record = next(op.attrs["factorization"] for op in factored.program.ops if "factorization" in op.attrs)
        errors = [float(np.abs(exe(x) - reference).max() / np.abs(reference).max()) for exe in (dense, factored)]
        t_dense, t_factored = median_seconds(dense, x, repeats), median_seconds(factored, x, repeats)
        kernels = sum(op.opcode == "einsum" for op in factored.program.ops)
        rows.append(f"| {name} | {record['chosen']} | {kernels} | {record['rel_error']:.1e} | "
                    f"{record['params_dense']:,} / {record['params']:,} | "
                    f"{record['flops_dense'] / 1e6:,.1f} / {record['flops'] / 1e6:,.1f} | {t_dense * 1e3:.2f} | "
                    f"{t_factored * 1e3:.2f} | {t_dense / t_factored:.1f}x | {errors[0]:.1e} / {errors[1]:.1e} | "
                    f"{'ok' if max(errors) <= CHECK_TOL else 'FAIL'} | {compile_seconds:.1f} |")
    header = ("| weight | chosen | einsums | rel_error | params dense / factored | MFLOP dense / factored | "
              "dense ms | factored ms | speedup | max rel err vs numpy (dense / factored) | check | compile s |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|")
    return header + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    target, note = args.target, ""
    try:
        ok, reason = backends.get(target).available()
    except (ImportError, einfold.Error) as error:
        ok, reason = False, str(error)
    if not ok:
        note = f"target {args.target!r} is not available ({reason}); ran the numpy target instead.\n\n"
        target = "numpy"
    title = (f"## `'bi,oi->bo'`, batch {args.batch}, n = {args.n}, target `{target}`, factorize auto, "
             f"tol {args.tol:g}, median of {args.repeats} runs\n\n")
    text = title + note + run(target, args.n, args.batch, args.repeats, args.tol)
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
