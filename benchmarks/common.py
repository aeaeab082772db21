"""Timing helpers the benchmarks share: warm-up, self-sizing samples, medians, geometric means and markdown tables."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

MIN_REPEAT = 5


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median of `samples`, each the mean over `calls_per_sample` back-to-back calls."""

    median: float
    samples: tuple[float, ...]
    calls_per_sample: int

    @property
    def spread(self) -> float:
        """(max - min) / median of the samples: how noisy the measurement was."""
        return (max(self.samples) - min(self.samples)) / self.median if self.median else 0.0


def _timed(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def _calls_per_sample(fn: Callable[[], object], min_sample_seconds: float) -> int:
    """How many back-to-back calls make one sample last at least `min_sample_seconds`."""
    calls = 1
    elapsed = _timed(fn, calls)
    while elapsed < min_sample_seconds:
        calls = min(calls * 100, max(calls + 1, math.ceil(calls * 1.2 * min_sample_seconds / max(elapsed, 1e-9))))
        elapsed = _timed(fn, calls)
    return calls


QUIET_WINDOW_SECONDS = 0.01
QUIET_CPU_SHARE = 0.1  # of one core
MAX_SETTLE_SECONDS = 2.0


def settle(min_seconds: float) -> None:
    """Sleep at least `min_seconds`, then until this process's threads are quiet: less than QUIET_CPU_SHARE of a
    core used over a QUIET_WINDOW_SECONDS window (at most MAX_SETTLE_SECONDS in all). A library's worker threads
    may spin long after its call returns (OpenBLAS's for ~0.11 s here), and would steal a core from whatever is
    timed next."""
    start = time.perf_counter()
    time.sleep(min_seconds)
    while time.perf_counter() - start < MAX_SETTLE_SECONDS:
        used = time.process_time()
        time.sleep(QUIET_WINDOW_SECONDS)
        if time.process_time() - used < QUIET_CPU_SHARE * QUIET_WINDOW_SECONDS:
            return


def measure_interleaved(fns: dict[str, Callable[[], object]], repeat: int = 7, warmup: int = 2,
                        min_sample_seconds: float = 0.005, settle_seconds: float = 0.1) -> dict[str, Timing]:
    """Time each function after `warmup` calls: `repeat` (>= 5) samples each, taken round-robin (one sample of
    every function per round) so that a change in background load hits all alike. A sample lasts at least
    `min_sample_seconds` (fast calls are looped) so that the clock's resolution does not matter. Before each
    sample the machine settles (`settle`: at least `settle_seconds`, then until no thread of the process is busy) and
    the function runs once untimed: the worker threads of the library timed just before must not steal this one's
    cores."""
    if repeat < MIN_REPEAT:
        raise ValueError(f"repeat must be at least {MIN_REPEAT} for a meaningful median, got {repeat}")
    calls = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        calls[name] = _calls_per_sample(fn, min_sample_seconds)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            settle(settle_seconds)
            fn()
            samples[name].append(_timed(fn, calls[name]) / calls[name])
    return {name: Timing(statistics.median(s), tuple(s), calls[name]) for name, s in samples.items()}


def measure(fn: Callable[[], object], repeat: int = 7, warmup: int = 2, min_sample_seconds: float = 0.005) -> Timing:
    """Time one function (see `measure_interleaved`)."""
    return measure_interleaved({"fn": fn}, repeat, warmup, min_sample_seconds)["fn"]


def geometric_mean(values: Iterable[float]) -> float:
    values = list(values)
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"geometric mean needs positive values, got {values}")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def format_seconds(seconds: float) -> str:
    """A time with 3 significant digits in a fitting unit: '12.3 ms', '845 us', '1.20 s'."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale or unit == "us":
            return f"{seconds / scale:.3g} {unit}"
    raise AssertionError("unreachable")


def format_speedup(ratio: float) -> str:
    return f"{ratio:.3g}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right_align_from: int = 1) -> str:
    """A GitHub markdown table; columns from `right_align_from` on are right-aligned (numbers)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(headers))]

    def line(row: list[str]) -> str:
        padded = [c.rjust(w) if k >= right_align_from else c.ljust(w) for k, (c, w) in enumerate(zip(row, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if k >= right_align_from else "-" * w for k, w in enumerate(widths)]
    return "\n".join([line(cells[0]), "| " + " | ".join(rule) + " |", *(line(row) for row in cells[1:])])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for text in info:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary(extra: dict[str, str] | None = None) -> str:
    """One markdown line per fact about where the numbers were taken."""
    facts = {"cpu": f"{cpu_name()}, {os.cpu_count()} logical cores", "python": platform.python_version()}
    if hasattr(os, "getloadavg"):
        facts["load average (1 min) at the end"] = f"{os.getloadavg()[0]:.2f} (anything near the core count: noise)"
    facts.update(extra or {})
    return "\n".join(f"- {key}: {value}" for key, value in facts.items())
