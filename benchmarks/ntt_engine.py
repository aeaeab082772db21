"""NTT throughput: the tpu target's emitted JAX int8 (BAT/MAT) program vs a direct radix-2 integer NTT (numpy, JAX).

    python benchmarks/ntt_engine.py                          # CPU: build with einfold, emit, time, write artifacts
    python benchmarks/ntt_engine.py --sizes 12,16 --bits 30,60 --batch 8
    python benchmarks/ntt_engine.py --device gpu --artifacts benchmarks/results/ntt_engine   # no einfold needed
    python benchmarks/ntt_engine.py --model --sizes 16 --bits 30,60 --limbs 1,2,4,8   # the cycle model's table only

The CPU run writes, per (log2 n, bits), the emitted module `ntt_<n>_<bits>.py`, its constants `.npz` and
`_data.npz` (input, expected output from Python integers, twiddles) under --artifacts. The GPU run imports only
numpy, jax and those files: it checks the emitted kernel bit-exactly on the accelerator and times it against a
direct integer NTT written with the same Barrett helpers (taken from the emitted module).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DIR = Path(__file__).resolve().parent / "results" / "ntt_engine"


def timed(fn: Callable[[], Any], runs: int) -> float:
    """Median seconds of `runs` calls after one warm-up (results are blocked on for JAX)."""
    def block(value: Any) -> None:
        for array in value if isinstance(value, (list, tuple)) else [value]:
            if hasattr(array, "block_until_ready"):
                array.block_until_ready()

    block(fn())
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        block(fn())
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def load_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def direct_ntt(x: Any, twiddles: Any, params: Any, helpers: Any, xp: Any) -> Any:
    """Cooley-Tukey negacyclic NTT, natural in, bit-reversed out; twiddles[m + i] = psi^brv(m + i)."""
    n = x.shape[-1]
    m, span = 1, n // 2
    while m < n:
        blocks = x.reshape(-1, m, 2, span)
        top, bottom = blocks[:, :, 0, :], blocks[:, :, 1, :]
        product = helpers.mulmod(bottom, twiddles[m:2 * m][None, :, None], params, xp)
        x = xp.stack([helpers.addmod(top, product, params.q, xp), helpers.submod(top, product, params.q, xp)],
                     axis=2).reshape(-1, n)
        m, span = m * 2, span // 2
    return x


def build_artifacts(sizes: list[int], bits: list[int], batch: int, folder: Path) -> None:
    """Compile each NTT for the tpu target and write its JAX module, constants and check data."""
    import einfold
    from einfold import he
    folder.mkdir(parents=True, exist_ok=True)
    for log_n in sizes:
        n = 2**log_n
        for b in bits:
            q = he.ntt_primes(b, n)[0]
            exe = einfold.compile(he.ntt(n, [q], batch=(batch,)), target="tpu")
            stem = folder / f"ntt_{log_n}_{b}"
            exe.write_jax(stem)
            x = np.random.default_rng(log_n * 100 + b).integers(0, q, (batch, 1, n), dtype=np.uint64)
            psi = he.root_of_unity(q, 2 * n)
            brv = he.bit_reverse(n)
            twiddles = np.array([pow(psi, int(brv[k]), q) for k in range(n)], dtype=np.uint64)
            report = exe.cost_report()
            np.savez(f"{stem}_data.npz", x=x, expected=he.reference_ntt(x[:, 0], q)[:, None], twiddles=twiddles,
                     q=np.uint64(q), model_cycles=report["cycles"], model_utilization=report["utilization"],
                     model_matmul_utilization=report["matmul_utilization"])


def time_artifact(stem: Path, runs: int, with_numpy: bool) -> str:
    """One table row: the emitted kernel and the direct NTTs on the default JAX device, checked bit-exactly."""
    import jax
    import jax.numpy as jnp
    module = load_module(stem.with_suffix(".py"))
    data = np.load(f"{stem}_data.npz")
    x, expected, q = data["x"], data["expected"], int(data["q"])
    kernel = module.build(dict(np.load(stem.with_suffix(".npz"))))
    x_device = jnp.asarray(x)
    exact = bool(np.array_equal(np.asarray(kernel(x_device)[0]), expected))
    t_emitted = timed(lambda: kernel(x_device), runs)
    c = (q - 1).bit_length()
    params = module.Barrett(q=q, c=c, s=2 * c, m=2 ** (2 * c) // q)
    twiddles = jnp.asarray(data["twiddles"])
    direct = jax.jit(lambda v: direct_ntt(v.reshape(-1, v.shape[-1]), twiddles, params, module, jnp))
    exact = exact and bool(np.array_equal(np.asarray(direct(x_device)).reshape(expected.shape), expected))
    t_direct = timed(lambda: direct(x_device), runs)
    t_numpy = float("nan")
    if with_numpy:
        flat = x.reshape(-1, x.shape[-1])
        exact = exact and bool(np.array_equal(direct_ntt(flat, data["twiddles"], params, module, np)
                                              .reshape(expected.shape), expected))
        t_numpy = timed(lambda: direct_ntt(flat, data["twiddles"], params, module, np), max(1, runs // 3))
    log_n, bits = stem.name.split("_")[1:]
    return (f"| 2^{log_n} | {bits} | {x.shape[0]} | {t_emitted * 1e3:.2f} | {t_direct * 1e3:.2f} | "
            f"{t_numpy * 1e3:.2f} | {t_direct / t_emitted:.2f}x | {'yes' if exact else 'NO'} | "
            f"{int(data['model_cycles'])} ({float(data['model_utilization']):.2f}, "
            f"matmul {float(data['model_matmul_utilization']):.2f}) |")


def run_table(sizes: list[int], bits: list[int], folder: Path, runs: int, with_numpy: bool) -> list[str]:
    """Time every artifact on the default JAX device; returns markdown rows."""
    import jax
    jax.config.update("jax_enable_x64", True)
    device = jax.devices()[0]
    rows = [f"device: {device.platform} ({device.device_kind}), jax {jax.__version__}", "",
            "| n | q bits | batch | emitted int8 JAX (ms) | direct JAX NTT (ms) | direct numpy NTT (ms) | "
            "int8 speed-up vs direct JAX | bit-exact | model cycles (utilisation) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for log_n in sizes:
        for b in bits:
            rows.append(time_artifact(folder / f"ntt_{log_n}_{b}", runs, with_numpy))
            print(rows[-1], flush=True)
    return rows


def model_table(sizes: list[int], bits: list[int], limbs: list[int], batch: int) -> list[str]:
    """The scheduled cycle model's figures (compiled, not run) next to the sequential model's; markdown rows."""
    import einfold
    from einfold import he
    rows = ["| n | q bits | limbs | matmul-phase util. | whole-kernel util. | VPU share | cycles | on-chip peak "
            "| sequential cycles | sequential matmul util. | sequential whole util. |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for log_n in sizes:
        for b in bits:
            for count in limbs:
                moduli = he.ntt_primes(b, 2**log_n, count)
                r = einfold.compile(he.ntt(2**log_n, moduli, batch=(batch,)), target="tpu").cost_report()
                rows.append(f"| 2^{log_n} | {b} | {count} | {r['matmul_utilization']:.3f} | {r['utilization']:.3f} | "
                            f"{r['vpu_share']:.2f} | {r['cycles']:,} | {r['on_chip_peak_bytes'] / 2**20:.1f} MiB"
                            f"{' (spills)' if r['spills'] else ''} | {r['sequential_cycles']:,} | "
                            f"{r['sequential_matmul_utilization']:.3f} | {r['sequential_utilization']:.3f} |")
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--sizes", default="12,14,16", help="log2 n values")
    parser.add_argument("--bits", default="30,60", help="prime widths")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--no-build", action="store_true", help="reuse the artifacts already written")
    parser.add_argument("--model", action="store_true", help="print the cycle model's table (no timing)")
    parser.add_argument("--limbs", default="1,2,4,8", help="limb counts for --model")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    bits = [int(b) for b in args.bits.split(",")]
    if args.model:
        print("\n".join(model_table(sizes, bits, [int(c) for c in args.limbs.split(",")], args.batch)))
        return
    if args.device == "cpu" and not args.no_build:
        build_artifacts(sizes, bits, args.batch, args.artifacts)
    rows = run_table(sizes, bits, args.artifacts, args.runs, with_numpy=args.device == "cpu")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
