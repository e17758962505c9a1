"""Timing shared by the benchmarks: every implementation in turn, round after round, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_times(runs: dict[str, Callable[[], object]], repeats: int, *, warm_up: bool = True,
                 sync: Callable[[], None] = lambda: None) -> tuple[dict[str, float], dict[str, object]]:
    """Median wall time of each callable over ``repeats`` rounds, and each one's last result.

    Every round calls every callable in turn (in the dict's order), so that a change in the
    machine's load during the run hits them alike; ``warm_up`` calls each once first, untimed;
    ``sync`` runs after every call (e.g. to wait for a GPU) and is timed with it.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, object] = {}
    if warm_up:
        for run in runs.values():
            run()
            sync()
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, results
