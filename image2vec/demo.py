"""The main job of ``make demo``.

Until the models land it demonstrates the numerical core: 5-word sums are planted in a random
256 x 2048 word dictionary with noise, and batched OMP reads the words back out.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from solvers import omp


def run_demo(out: str | Path, random_state: int = 0, n_signals: int = 4096, noise: float = 0.05) -> dict:
    """Plant k = 5 word sums y = D x + noise, recover x by OMP, print and return the accuracy."""
    rng = np.random.default_rng(random_state)
    dim, n_words, k = 256, 2048, 5
    D = rng.standard_normal((dim, n_words))
    D /= np.linalg.norm(D, axis=0)
    words = np.array([rng.choice(n_words, k, replace=False) for _ in range(n_signals)])
    weights = rng.uniform(0.5, 1.5, (n_signals, k))
    Y = np.einsum("nk,dnk->nd", weights, D[:, words]) + noise * rng.standard_normal((n_signals, dim))
    start = time.perf_counter()
    code = omp(D, Y, k, nonneg=True, n_jobs=2)
    seconds = time.perf_counter() - start
    found = np.sort(code.indices, axis=1)
    word_recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, np.sort(words, axis=1))]))
    exact = float((found == np.sort(words, axis=1)).all(axis=1).mean())
    summary = {"signals": n_signals, "dim": dim, "words": n_words, "k": k, "noise": noise,
               "word_recall": word_recall, "exact_sets": exact, "seconds": seconds}
    print(f"Planted {k}-word sums in a {dim} x {n_words} dictionary, noise sigma {noise}, {n_signals} signals")
    print(f"non-negative batched OMP: words recovered {word_recall:.2%}, whole sets exact {exact:.2%}, "
          f"{seconds:.2f} s ({n_signals / seconds:,.0f} signals/s)")
    Path(out).mkdir(parents=True, exist_ok=True)
    return summary
