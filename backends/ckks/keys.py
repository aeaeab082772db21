"""Keys: the client's secret key, and the public evaluation keys the server needs (public key,
relinearisation key, one rotation key per rotation amount the program uses, bootstrap keys if any),
with saving and loading of keys and ciphertexts as files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from einfold.errors import RuntimeFailure


@dataclass
class EvaluationKeys:
    """What the server holds: no secret key in here."""

    params: str
    public_key: Any
    relinearization_key: Any
    rotation_keys: dict[int, Any]
    bootstrap_keys: tuple[Any, Any, Any] | None = None  # conjugation, roll, small bootstrap

    def __repr__(self) -> str:
        return (f"<EvaluationKeys {self.params}: {len(self.rotation_keys)} rotation keys"
                f"{', bootstrap' if self.bootstrap_keys else ''}>")

    def save(self, engine: Any, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        engine.write_public_key(self.public_key, str(folder / "public.key"))
        engine.write_relinearization_key(self.relinearization_key, str(folder / "relin.key"))
        for amount, key in self.rotation_keys.items():
            engine.write_fixed_rotation_key(key, str(folder / f"rotate_{amount}.key"))
        if self.bootstrap_keys:
            conj, roll, small = self.bootstrap_keys
            engine.write_conjugation_key(conj, str(folder / "conjugation.key"))
            engine.write_roll_key(roll, str(folder / "roll.key"))
            engine.write_small_bootstrap_key(small, str(folder / "bootstrap.key"))
        meta = {"params": self.params, "rotations": sorted(self.rotation_keys),
                "bootstrap": bool(self.bootstrap_keys)}
        (folder / "keys.json").write_text(json.dumps(meta))
        return folder

    @staticmethod
    def load(engine: Any, folder: str | Path) -> EvaluationKeys:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "keys.json").read_text())
        except OSError as error:
            raise RuntimeFailure(f"no evaluation keys in {folder}: {error}") from None
        boot = None
        if meta["bootstrap"]:
            boot = (engine.read_conjugation_key(str(folder / "conjugation.key")),
                    engine.read_roll_key(str(folder / "roll.key")),
                    engine.read_small_bootstrap_key(str(folder / "bootstrap.key")))
        return EvaluationKeys(meta["params"], engine.read_public_key(str(folder / "public.key")),
                              engine.read_relinearization_key(str(folder / "relin.key")),
                              {int(k): engine.read_fixed_rotation_key(str(folder / f"rotate_{k}.key"))
                               for k in meta["rotations"]}, boot)


@dataclass
class KeySet:
    """The client's keys: the secret key stays here; `evaluation` is what goes to the server."""

    evaluation: EvaluationKeys
    _secret: Any = field(repr=False)

    def __repr__(self) -> str:
        return f"<KeySet {self.evaluation.params}: secret key held by the client, {self.evaluation!r}>"

    @property
    def secret_key(self) -> Any:
        return self._secret


def generate(engine: Any, params: Any, rotations: dict[int, int], relin_level: int,
             progress: TextIO | None = None) -> KeySet:
    """Secret, public, relinearisation, and one fixed rotation key per amount (made at the level it is used)."""
    def say(text: str) -> None:
        if progress is not None:
            progress.write(f"keygen: {text}\n")
            progress.flush()

    say(f"secret and public key ({params})")
    secret = engine.create_secret_key()
    public = engine.create_public_key(secret)
    say(f"relinearisation key (level {relin_level})")
    relin = engine.create_relinearization_key(secret, max(relin_level, 1)) if relin_level < params.max_level \
        and not params.bootstrap \
        else engine.create_relinearization_key(secret)
    keys: dict[int, Any] = {}
    for k, (amount, level) in enumerate(sorted(rotations.items()), 1):
        say(f"rotation key {k}/{len(rotations)} (by {amount}, level {level})")
        keys[amount] = engine.create_fixed_rotation_key(secret, amount, level)
    boot = None
    if params.bootstrap:
        say("bootstrap keys (conjugation, roll, small bootstrap key): this takes a while")
        boot = (engine.create_conjugation_key(secret), engine.create_roll_key(secret),
                engine.create_small_bootstrap_key(secret))
    say("done")
    return KeySet(EvaluationKeys(params.name, public, relin, keys, boot), secret)
