"""CKKS parameter sets (desilofhe engines), chosen by the depth a program needs and its slot count.

desilofhe derives the ring degree N and the modulus chain from `max_level`; every set below is one of its
standard 128-bit-secure configurations (slots = N/2). Ciphertexts are encrypted at the level the program
needs from that point on, not at `max_level`, so deeper sets cost key generation time, not op time.
"""

from __future__ import annotations

from dataclasses import dataclass

from einfold.errors import UnsupportedError


@dataclass(frozen=True)
class ParamSet:
    """One engine configuration: `Engine(max_level=...)`, or the bootstrappable `Engine(bootstrap=True)`."""

    name: str
    max_level: int
    slots: int
    bootstrap: bool = False
    boot_min_level: int = 3   # a bootstrap needs its input at this level or above
    boot_out_level: int = 17  # ... and returns a ciphertext at this level

    def __str__(self) -> str:
        boot = f", bootstrapping {self.boot_min_level}->{self.boot_out_level}" if self.bootstrap else ""
        log_n = (2 * self.slots).bit_length() - 1
        return f"{self.name} (N=2^{log_n}, {self.slots} slots, max level {self.max_level}{boot})"

    def engine_kwargs(self) -> dict:
        return {"bootstrap": True} if self.bootstrap else {"max_level": self.max_level}


PARAM_SETS: dict[str, ParamSet] = {p.name: p for p in [
    ParamSet("n8192-L7", 7, 8192),
    ParamSet("n16384-L9", 9, 16384),
    ParamSet("n16384-L17", 17, 16384),   # EinHops' engine: Engine(max_level=17)
    ParamSet("n32768-L24", 24, 32768),
    ParamSet("n32768-boot", 17, 32768, bootstrap=True),
]}

# Candidates for params='auto', smallest first; the cost model picks among those deep enough.
AUTO_CANDIDATES = ["n8192-L7", "n16384-L9", "n16384-L17", "n32768-L24"]


def get_params(name: str) -> ParamSet:
    if isinstance(name, ParamSet):
        return name
    if name not in PARAM_SETS:
        raise UnsupportedError(f"unknown CKKS parameter set {name!r}; choose 'auto' or one of: "
                               f"{', '.join(PARAM_SETS)}")
    return PARAM_SETS[name]
