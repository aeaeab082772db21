"""Real RNS-CKKS execution on desilofhe: the per-op table for the instruction walk, and the client's
encrypt/decrypt of packed tensors. desilofhe 2.0 `rotate(ct, key)` by k moves slot i+k to slot i."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from einfold.errors import RuntimeFailure

from .fhe_ir import FheProgram, Packing, level_cost
from .keys import EvaluationKeys
from .params import ParamSet

_ENGINES: dict[tuple, Any] = {}


def make_engine(params: ParamSet, mode: str = "cpu") -> Any:
    """One desilofhe Engine per (parameter set, mode) in this process (engines hold no secrets)."""
    key = (params.name, mode)
    if key not in _ENGINES:
        import desilofhe
        _ENGINES[key] = desilofhe.Engine(mode=mode, **params.engine_kwargs())
        if _ENGINES[key].slot_count != params.slots:
            raise RuntimeFailure(f"desilofhe gave {_ENGINES[key].slot_count} slots for {params.name}, "
                                 f"expected {params.slots}")
    return _ENGINES[key]


@dataclass
class EncryptedTensor:
    """An input tensor encrypted by the client: its ciphertexts (one per tile, per layout it is used in)."""

    name: str
    shape: tuple[int, ...]
    ciphertexts: dict[str, Any]     # FHE value name -> desilofhe Ciphertext
    keys: EvaluationKeys            # the public keys it was made with (the server computes with them)
    engine: Any

    def __repr__(self) -> str:
        return f"<EncryptedTensor {self.name}{list(self.shape)}: {len(self.ciphertexts)} ciphertext(s)>"

    def save(self, folder: str | Path) -> Path:
        header = f"{self.name}\n{','.join(map(str, self.shape))}\n"
        return write_ciphertexts(self.engine, folder, self.ciphertexts, "tensor.txt", header)

    @staticmethod
    def load(folder: str | Path, keys: EvaluationKeys, engine: Any) -> EncryptedTensor:
        folder = Path(folder)
        try:
            name, shape, *values = (folder / "tensor.txt").read_text().split("\n")
        except OSError as error:
            raise RuntimeFailure(f"no encrypted tensor in {folder}: {error}") from None
        dims = tuple(int(s) for s in shape.split(",") if s)
        return EncryptedTensor(name, dims, {v: engine.read_ciphertext(str(folder / f"{v}.ct")) for v in values},
                               keys, engine)


@dataclass
class EncryptedResult:
    """The server's output ciphertexts (FHE value name -> ciphertext) for every program output."""

    ciphertexts: dict[str, Any]
    engine: Any

    def __repr__(self) -> str:
        return f"<EncryptedResult: {len(self.ciphertexts)} ciphertext(s)>"

    def save(self, folder: str | Path) -> Path:
        return write_ciphertexts(self.engine, folder, self.ciphertexts, "result.txt")

    @staticmethod
    def load(folder: str | Path, engine: Any) -> EncryptedResult:
        try:
            values = (Path(folder) / "result.txt").read_text().split("\n")
        except OSError as error:
            raise RuntimeFailure(f"no encrypted result in {folder}: {error}") from None
        return EncryptedResult({v: engine.read_ciphertext(str(Path(folder) / f"{v}.ct")) for v in values}, engine)


def write_ciphertexts(engine: Any, folder: str | Path, ciphertexts: dict[str, Any], index: str,
                      header: str = "") -> Path:
    """Each ciphertext as `<value>.ct` in `folder`, and an index file listing them after `header`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for value, ct in ciphertexts.items():
        engine.write_ciphertext(ct, str(folder / f"{value}.ct"))
    (folder / index).write_text(header + "\n".join(ciphertexts))
    return folder


def pack_tensor(fhe: FheProgram, name: str, array: np.ndarray) -> dict[str, tuple[np.ndarray, int]]:
    """Slot vectors and levels of every ciphertext the program wants for tensor `name`."""
    levels = {i.result: int(i.level or 0) for i in fhe.instrs if i.opcode == "encrypt"}
    out: dict[str, tuple[np.ndarray, int]] = {}
    for packing in (p for p in fhe.inputs if p.name == name):
        for vector, value in zip(packing.layout.pack(array), packing.tiles):
            out.setdefault(value, (vector, levels[value]))
    return out


def unpack_outputs(outputs: list[Packing], decrypted: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [p.layout.unpack([decrypted[t] for t in p.tiles]) for p in outputs]


class EngineExecutor:
    """The instruction table on a desilofhe engine, holding public evaluation keys only."""

    def __init__(self, engine: Any, keys: EvaluationKeys, fhe: FheProgram, params: ParamSet):
        self.e = engine
        self.keys = keys
        self.fhe = fhe
        self.params = params
        self._plain: dict[tuple[str, int], Any] = {}

    def plaintext(self, name: str, level: int | None) -> Any:
        """The plaintext encoded at `level`, the level of the ciphertext it meets."""
        key = (name, min(int(level or 0), self.params.max_level))
        if key not in self._plain:
            self._plain[key] = self.e.encode(self.fhe.plaintexts[name], key[1])
        return self._plain[key]

    def prepare(self) -> None:
        """Encode every plaintext at the level it is used (server-side preprocessing, done once)."""
        for instr in self.fhe.instrs:
            if instr.opcode in ("mul_plain", "add_plain", "sub_plain"):
                self.plaintext(instr.args[1], int(instr.level or 0) + level_cost(instr))

    def zero(self, instr):
        return self.e.encrypt(np.zeros(self.fhe.slots), self.keys.public_key, int(instr.level))

    def add(self, instr, a, b):
        return self.e.add(a, b)

    def sub(self, instr, a, b):
        return self.e.subtract(a, b)

    def mul(self, instr, a, b):
        if instr.attrs.get("relin") is False:
            return self.e.multiply(a, b)
        return self.e.multiply(a, b, self.keys.relinearization_key)

    def mul_plain(self, instr, a, p):
        return self.e.multiply(a, p)

    def add_plain(self, instr, a, p):
        return self.e.add(a, p)

    def sub_plain(self, instr, a, p):
        return self.e.subtract(a, p)

    def mul_scalar(self, instr, a):
        value = instr.attrs["value"]
        return self.e.multiply(a, int(value) if float(value).is_integer() else float(value))

    def add_scalar(self, instr, a):
        return self.e.add(a, float(instr.attrs["value"]))

    def neg(self, instr, a):
        return self.e.negate(a)

    def rotate(self, instr, a):
        return self.e.rotate(a, self.keys.rotation_keys[int(instr.attrs["by"])])

    def bootstrap(self, instr, a):
        if self.keys.bootstrap_keys is None:
            raise RuntimeFailure("this program bootstraps but the keys hold no bootstrap keys")
        conj, roll, small = self.keys.bootstrap_keys
        if a.level > self.params.boot_min_level:
            a = self.e.level_down(a, self.params.boot_min_level)
        return self.e.bootstrap(a, self.keys.relinearization_key, conj, roll, small)
