"""Interleaved wall-clock timing: ours, peer, ours, peer ... and medians.

On a shared machine the speed of the CPU drifts over seconds (other jobs, frequency, steal time); timing
every contestant once per round, in an order that rotates between rounds, exposes each to the same drift,
and the median of the rounds ignores the rounds a burst of load hit.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Timings:
    """Seconds per call for each contestant, one entry per round."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def rounds(self) -> int:
        return min((len(v) for v in self.seconds.values()), default=0)

    def spread(self, name: str) -> float:
        """(max - min) / median of one contestant's rounds: how noisy its measurement was."""
        v = self.seconds[name]
        return (max(v) - min(v)) / statistics.median(v) if v else float("nan")


def interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    warmup: dict[str, Callable[[], object]] | None = None,
    min_rounds: int = 1,
    max_rounds: int = 5,
    budget_s: float = 30.0,
    cheap_s: float = 10.0,
    cheap_rounds: int = 3,
) -> Timings:
    """Time each function in ``fns`` once per round, rotating the order each round.

    ``warmup`` (default: ``fns``) is called once per contestant first, untimed. Rounds continue until
    ``max_rounds`` are done, or the time spent (warm-up included) exceeds ``budget_s`` once ``min_rounds``
    are done. When the first round takes under ``cheap_s`` seconds, at least ``cheap_rounds`` are run
    whatever the budget: a median needs three.
    """
    start = time.perf_counter()
    for fn in (warmup or fns).values():
        fn()
    names = list(fns)
    first_round_s = None
    out = Timings({n: [] for n in names})
    for r in range(max_rounds):
        if r >= min_rounds and time.perf_counter() - start > budget_s:
            break
        order = names[r % len(names) :] + names[: r % len(names)]
        t_round = time.perf_counter()
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            out.seconds[n].append(time.perf_counter() - t0)
        if first_round_s is None:
            first_round_s = time.perf_counter() - t_round
            if first_round_s < cheap_s:
                min_rounds = max(min_rounds, min(cheap_rounds, max_rounds))
    return out
