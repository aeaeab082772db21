"""Multi-threaded calls of the `llvm` target: results equal numpy on 1, 2 and 4 threads (multi-step programs cross
the barrier), calls that find the workers asleep, concurrent calls from Python threads, the error flag from a
worker thread, idle workers asleep, and processes that exit or fork after using the worker pool."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import einfold

THREADS = (1, 2, 4)


# Each builder returns a program and the least number of steps (kernels) it lowers to.
def gemm() -> tuple[einfold.Program, int]:
    p = einfold.Program("gemm")
    p.set_outputs(p.einsum("ij,jk->ik", p.input("a", (70, 90), "f32"), p.input("b", (90, 130), "f32")))
    return p, 1


def chain() -> tuple[einfold.Program, int]:
    p = einfold.Program("chain")
    a, b, c = (p.input(n, s, "f64") for n, s in (("a", (40, 50)), ("b", (50, 60)), ("c", (60, 30))))
    p.set_outputs(p.einsum("ij,jk,kl->il", a, b, c))
    return p, 2  # two GEMMs


def mlp() -> tuple[einfold.Program, int]:
    """Two GEMMs with a fused bias + relu between them, then a reduction to a scalar (thread 0 alone) and an
    elementwise output: at least four steps."""
    p = einfold.Program("mlp")
    x, w1, b1, w2 = (p.input(n, s, "f32") for n, s in (("x", (33, 24)), ("w1", (24, 40)), ("b1", (40,)),
                                                        ("w2", (40, 17))))
    y = p.einsum("bh,ho->bo", p.map("relu", p.add(p.einsum("bi,ih->bh", x, w1), b1)), w2)
    p.set_outputs(y, p.einsum("bo->", y), p.neg(y))
    return p, 4


def integer_reduction() -> tuple[einfold.Program, int]:
    p = einfold.Program("ints")
    x, y = p.input("x", (9, 31, 7), "i64"), p.input("y", (31,), "i64")
    p.set_outputs(p.add(p.einsum("ijk->j", x), y))
    return p, 2  # the reduction, then the add


def numpy_result(name: str, inputs: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
    """Each output in float64 (or exact integers) with the magnitude its rounding error scales with."""
    if name == "gemm":
        a, b = (v.astype(np.float64) for v in inputs)
        return [(a @ b, float((np.abs(a) @ np.abs(b)).max()))]
    if name == "chain":
        a, b, c = inputs
        return [(a @ b @ c, float((np.abs(a) @ np.abs(b) @ np.abs(c)).max()))]
    if name == "mlp":
        x, w1, b1, w2 = (v.astype(np.float64) for v in inputs)
        y = np.maximum(x @ w1 + b1, 0) @ w2
        scale = float(np.abs(y).max())
        return [(y, scale), (y.sum(), float(np.abs(y).sum())), (-y, scale)]
    x, y = inputs
    return [(x.sum(axis=(0, 2)) + y, 0.0)]


PROGRAMS = {"gemm": gemm, "chain": chain, "mlp": mlp, "ints": integer_reduction}


def random_inputs(program: einfold.Program, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = []
    for op in program.inputs:
        if op.type.dtype.is_int:
            inputs.append(rng.integers(-50, 50, size=op.type.shape).astype(op.type.dtype.numpy))
        else:
            inputs.append(rng.standard_normal(op.type.shape).astype(op.type.dtype.numpy))
    return inputs


def check(name: str, exe: einfold.Executable, seed: int) -> None:
    program = PROGRAMS[name]()[0]
    inputs = random_inputs(program, seed)
    got = exe(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    for output, g, (w, scale) in zip(program.outputs, got, numpy_result(name, inputs), strict=True):
        assert g.shape == np.shape(w), f"{name} %{output}"
        if np.issubdtype(g.dtype, np.integer):
            np.testing.assert_array_equal(g, w, err_msg=f"{name} %{output}")
        else:
            tolerance = 1e-6 if g.dtype == np.float32 else 1e-14
            np.testing.assert_allclose(g, w, rtol=0, atol=tolerance * scale, err_msg=f"{name} %{output}")


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_results_equal_numpy_on_any_number_of_threads(name, threads):
    program, steps = PROGRAMS[name]()
    exe = einfold.compile(program, target="llvm", threads=threads)
    assert exe.stats()["llvm_threads"] == threads
    assert exe.stats()["llvm_kernels"] >= steps  # steps - 1 barriers
    for seed in range(3):  # the pool's workers and the barrier are reused from call to call
        check(name, exe, seed)


@pytest.mark.parametrize("threads", (2, 4))
@pytest.mark.parametrize("name", ("gemm", "mlp"))
def test_calls_after_the_workers_fell_asleep(name, threads):
    """A call wakes the workers from their futex sleep (with 4 threads on fewer CPUs, none is pinned and the caller
    runs no share itself)."""
    exe = einfold.compile(PROGRAMS[name]()[0], target="llvm", threads=threads)
    for seed in range(3):
        time.sleep(0.01)
        check(name, exe, seed)


@pytest.mark.parametrize("threads", (2, 4))
def test_calls_from_python_threads_at_once(threads):
    """Two Python threads call one executable, and two more call two other programs that share its pool."""
    exes = {name: einfold.compile(PROGRAMS[name]()[0], target="llvm", threads=threads) for name in ("mlp", "chain")}
    callers = [("mlp", 0), ("mlp", 1), ("chain", 2), ("chain", 3)]
    start = threading.Barrier(len(callers))
    failures: list[BaseException] = []

    def call(name: str, seed: int) -> None:
        start.wait()
        try:
            for _ in range(25):
                check(name, exes[name], seed)
        except BaseException as error:  # noqa: BLE001 - reported by the test thread below
            failures.append(error)

    workers = [threading.Thread(target=call, args=caller) for caller in callers]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers), "a call did not return"
    assert not failures, failures[0]


@pytest.mark.parametrize("threads", (2, 4))
def test_error_flag_set_on_a_worker_thread_raises(threads):
    p = einfold.Program("div")
    x, y = p.input("x", (64,), "i32"), p.input("y", (64,), "i32")
    p.set_outputs(p.div(x, y))
    exe = einfold.compile(p, target="llvm", threads=threads)
    ones = np.ones(64, np.int32)
    divisor = np.ones(64, np.int32)
    divisor[60] = 0  # in the last thread's share of the rows
    with pytest.raises(einfold.RuntimeFailure, match="division by zero"):
        exe(ones, divisor)
    np.testing.assert_array_equal(exe(np.full(64, 6, np.int32), np.full(64, 3, np.int32)), np.full(64, 2))


def test_idle_workers_sleep():
    """Once a call is over and the short spin has passed, the pool's worker threads use no CPU time."""
    exe = einfold.compile(PROGRAMS["gemm"]()[0], target="llvm", threads=2)
    check("gemm", exe, 0)
    workers = [t for t in threading.enumerate() if t.name.startswith("einfold-llvm")]
    assert workers
    clocks = [time.pthread_getcpuclockid(t.ident) for t in workers]
    time.sleep(0.05)
    before = sum(map(time.clock_gettime, clocks))
    time.sleep(0.3)
    assert sum(map(time.clock_gettime, clocks)) - before < 0.01


def run_script(source: str) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - started < 20  # the interpreter, the import and one compile take ~2 s
    return done


SCRIPT_HEAD = """
    import os, sys, time
    import numpy as np
    import einfold
    a = np.arange(96 * 80, dtype=np.float32).reshape(96, 80) / 1000
    exe = einfold.compile("ij,jk->ik", shapes=[(96, 80), (80, 96)], dtype="float32", target="llvm", threads=2)
    ok = np.allclose(exe(a, a.T), a.astype(np.float64) @ a.T, rtol=1e-5)
"""


@pytest.mark.parametrize("pause", ("", "time.sleep(0.05)"))
def test_process_exits_after_using_the_pool(pause):
    """The script exits while the workers still spin (no pause) or once they sleep (a pause)."""
    script = SCRIPT_HEAD + f"""
    {pause}
    print(ok)
    """
    assert run_script(script).stdout.strip() == "True"


def test_forked_child_gets_its_own_workers():
    script = SCRIPT_HEAD + """
    child = os.fork()
    if child == 0:
        os._exit(0 if np.allclose(exe(a, a.T), a.astype(np.float64) @ a.T, rtol=1e-5) else 3)
    _, status = os.waitpid(child, 0)
    print(ok, os.waitstatus_to_exitcode(status))
    """
    assert run_script(script).stdout.strip() == "True 0"
