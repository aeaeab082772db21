"""The compiled CKKS program at run time: the convenience path and the client/server split.

    keys = exe.keygen()                      # client: secret key + public evaluation keys
    ct = exe.encrypt(x, keys)                # client: packs x in the compiled layout, encrypts
    out = exe.run_encrypted(ct)              # server: public evaluation keys only
    y = exe.decrypt(out, keys)               # client
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, TextIO

import numpy as np

from einfold.errors import RuntimeFailure
from einfold.ir import Program

from .engine import EncryptedResult, EncryptedTensor, EngineExecutor, make_engine, pack_tensor, unpack_outputs
from .fhe_ir import level_cost
from .keys import EvaluationKeys, KeySet, generate
from .program import Plan
from .simulator import SimCiphertext, Simulator, interpret


class CkksRuntime:
    def __init__(self, program: Program, plan: Plan, options: dict):
        self.program = program
        self.plan = plan
        self.fhe = plan.fhe
        self.params = plan.params
        self.mode = options.get("mode", "cpu")
        self.simulate_default = bool(options.get("simulate", False))
        self.last_counts: Counter = Counter()
        self._keys: KeySet | None = None
        self._executors: dict[int, EngineExecutor] = {}

    @property
    def input_names(self) -> list[str]:
        return [op.result for op in self.program.inputs]

    @property
    def engine(self) -> Any:
        return make_engine(self.params, self.mode)

    # ----- convenience path ---------------------------------------------------------------------------
    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if self.simulate_default:
            return self.simulate(arrays)
        if self._keys is None:
            self._keys = self.keygen(progress=None)
        cts = [self.encrypt(a, self._keys, name) for a, name in zip(arrays, self.input_names)]
        result = self.run_encrypted(*cts)
        outputs = self.decrypt(result, self._keys)
        return list(outputs) if isinstance(outputs, tuple) else [outputs]

    def simulate(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Run the FHE program on the numpy slot simulator (same instructions, counts and levels)."""
        env: dict[str, Any] = {}
        tensors = dict(zip(self.input_names, arrays))
        tensors.update(self.fhe.weights)
        for name, array in tensors.items():
            for value, (vector, level) in pack_tensor(self.fhe, name, np.asarray(array)).items():
                env[value] = SimCiphertext(vector, level)
        self.last_counts = interpret(self.fhe, Simulator(self.fhe, self.params), env)
        return unpack_outputs(self.fhe.outputs, {t: env[t].slots for p in self.fhe.outputs for t in p.tiles})

    # ----- split path ---------------------------------------------------------------------------------
    def keygen(self, progress: TextIO | bool | None = True) -> KeySet:
        """Secret key (kept by the caller) and the evaluation keys this program needs, no more;
        progress lines go to stderr (or the given stream; None/False for silence)."""
        stream = sys.stderr if progress is True else (progress or None)
        rotations: dict[int, int] = {}
        relin_level = 1
        for instr in self.fhe.instrs:
            arg_level = int(instr.level or 0) + level_cost(instr)
            if instr.opcode == "rotate":
                amount = int(instr.attrs["by"])
                rotations[amount] = max(rotations.get(amount, 0), arg_level)
            elif instr.opcode == "mul":
                relin_level = max(relin_level, arg_level)
        return generate(self.engine, self.params, rotations, relin_level, stream)

    def encrypt(self, array: Any, keys: KeySet | EvaluationKeys, name: str | None = None) -> Any:
        """Pack and encrypt one input (by name, or the only one); a list of arrays encrypts every input."""
        evaluation = keys.evaluation if isinstance(keys, KeySet) else keys
        names = self.input_names
        if name is None and isinstance(array, (list, tuple)) and len(array) == len(names) > 1:
            return [self.encrypt(a, evaluation, n) for a, n in zip(array, names)]
        if name is None:
            if len(names) != 1:
                raise RuntimeFailure(f"@{self.program.name} has inputs {names}: say which with "
                                     "exe.encrypt(array, keys, name) or pass a list of all of them")
            name = names[0]
        if name not in names:
            raise RuntimeFailure(f"@{self.program.name} has no input {name!r}; its inputs are {names}")
        shape = self.program.type_of(name).shape
        value = np.asarray(array, dtype=np.float64)
        if value.shape != shape:
            raise RuntimeFailure(f"input %{name} must have shape {shape}, got {value.shape}")
        engine = self.engine
        cts = {v: engine.encrypt(vector, evaluation.public_key, level)
               for v, (vector, level) in pack_tensor(self.fhe, name, value).items()}
        return EncryptedTensor(name, shape, cts, evaluation, engine)

    def executor(self, keys: EvaluationKeys) -> EngineExecutor:
        if id(keys) not in self._executors:
            self._executors = {id(keys): EngineExecutor(self.engine, keys, self.fhe, self.params)}
            self._executors[id(keys)].prepare()
        return self._executors[id(keys)]

    def run_encrypted(self, *cts: EncryptedTensor) -> EncryptedResult:
        """The server side: evaluate on ciphertexts with the public evaluation keys they carry."""
        given = {ct.name: ct for ct in cts}
        missing = [n for n in self.input_names if n not in given]
        if missing or len(given) != len(cts):
            raise RuntimeFailure(f"run_encrypted needs one encrypted tensor per input {self.input_names}; "
                                 f"missing {missing}" if missing else "an input was given twice")
        keys = cts[0].keys
        if any(ct.keys is not keys for ct in cts):
            raise RuntimeFailure("the encrypted inputs were made with different keys")
        executor = self.executor(keys)
        env: dict[str, Any] = {}
        for ct in cts:
            env.update(ct.ciphertexts)
        for name, data in self.fhe.weights.items():
            for value, (vector, level) in pack_tensor(self.fhe, name, data).items():
                env[value] = self.engine.encrypt(vector, keys.public_key, level)
        self.last_counts = interpret(self.fhe, executor, env)
        return EncryptedResult({t: env[t] for p in self.fhe.outputs for t in p.tiles}, self.engine)

    def decrypt(self, result: EncryptedResult, keys: KeySet) -> np.ndarray | tuple[np.ndarray, ...]:
        if not isinstance(keys, KeySet):
            raise RuntimeFailure("decrypt needs the client's KeySet (with the secret key)")
        engine = self.engine
        plain = {v: np.real(engine.decrypt(ct, keys.secret_key)) for v, ct in result.ciphertexts.items()}
        outputs = [o.astype(self.program.type_of(name).dtype.numpy)
                   for o, name in zip(unpack_outputs(self.fhe.outputs, plain), self.program.outputs)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def load_keys(self, folder: str) -> EvaluationKeys:
        return EvaluationKeys.load(self.engine, folder)

    def load_ciphertext(self, folder: str, keys: EvaluationKeys) -> EncryptedTensor:
        return EncryptedTensor.load(folder, keys, self.engine)

    def load_result(self, folder: str) -> EncryptedResult:
        return EncryptedResult.load(folder, self.engine)
