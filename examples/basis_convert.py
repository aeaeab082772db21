"""Fast RNS basis conversion Q -> P with einfold.he, compiled for the tpu engine as one int8 GEMM with a modulus
per output block, checked against Python integers.

    python examples/basis_convert.py
"""

from __future__ import annotations

import numpy as np

import einfold
from einfold import he


def main(n: int = 4096) -> None:
    source, target = he.ntt_primes(30, n, 3), he.ntt_primes(36, n, 2)
    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(0, q, (2, n), dtype=np.uint64) for q in source], axis=1)  # [batch, Lq, n]
    exe = einfold.compile(he.basis_convert(n, source, target, batch=(2,)), target="tpu")
    assert np.array_equal(exe(x), he.reference_basis_convert(x, source, target))
    print(exe.source("tpu"))
    print(f"{len(source)} -> {len(target)} limbs, n = {n}: bit-exact; stats {exe.stats()}")


if __name__ == "__main__":
    main()
