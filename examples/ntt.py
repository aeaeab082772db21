"""Build the negacyclic NTT of einfold.he for two RNS limbs, compile it for the tpu matrix engine, check it
bit-exactly against Python integers, and print the tiled listing and the cycle model.

    python examples/ntt.py [log2 n]
"""

from __future__ import annotations

import sys

import numpy as np

import einfold
from einfold import he


def main(log_n: int = 12) -> None:
    n = 2**log_n
    moduli = [he.ntt_primes(30, n)[0], he.ntt_primes(60, n)[0]]
    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(0, q, (1, n), dtype=np.uint64) for q in moduli], axis=1)  # [batch, L, n]

    forward = einfold.compile(he.ntt(n, moduli, batch=(1,)), target="tpu")
    inverse = einfold.compile(he.ntt(n, moduli, inverse=True, batch=(1,)), target="tpu")
    y = forward(x)
    expected = np.stack([he.reference_ntt(x[:, k], q) for k, q in enumerate(moduli)], axis=1)
    assert np.array_equal(y, expected), "NTT differs from the Python-integer reference"
    assert np.array_equal(inverse(y), x), "INTT(NTT(x)) != x"

    print(forward.source("tpu"))
    report = forward.cost_report()
    print(f"n = {n}, moduli = {moduli}: bit-exact; NTT o INTT = identity")
    print(f"int8 MACs {report['int8_macs']:,}; matmul-step utilisation {report['matmul_utilization']:.3f}; "
          f"whole kernel {report['utilization']:.3f}; vector-unit share {report['vpu_share']:.2f}; "
          f"{report['cycles']:,} cycles = {report['seconds'] * 1e6:.1f} us at the modelled clock")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)
