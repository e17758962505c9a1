"""The sufficient statistics as a distributed reduction on Dask (DESIGN.md sections 3 and 4).

Every block of rows gives its partial statistics in a task of its own, and the partials are summed
by a tree of tasks; a fit (:func:`solvers.bcd`) then runs on the small summed statistics. Dask is
an optional dependency (``pip install image2vec[dist]``), imported only when called.
"""

from __future__ import annotations

import operator
from functools import reduce
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from solvers.backend import to_numpy
from solvers.objective import SufficientStats, check_rows, sufficient_stats

if TYPE_CHECKING:
    from types import ModuleType

    import dask.array


def sufficient_stats_dask(
    F: dask.array.Array,
    X: Any,
    *,
    scheduler: Any = None,
    split_every: int = 8,
    chunk_size: int = 4096,
) -> SufficientStats:
    r"""A = F^T F, B = F^T X, C = X^T X, N and the column sums, as a Dask tree reduction.

    With the rows cut into the blocks b of F's row chunks (F_b, X_b),

        A = sum_b F_b^T F_b,  B = sum_b F_b^T X_b,  C = sum_b X_b^T X_b,  N = sum_b N_b,
        f_sum = sum_b 1^T F_b,  x_sum = sum_b 1^T X_b.

    Each block's terms are one task (:func:`solvers.objective.sufficient_stats` on the block, in
    float64); the partial statistics are then added ``split_every`` at a time, level by level,
    until one is left. The result equals :func:`solvers.objective.sufficient_stats` on the same
    data up to rounding, and is what :func:`solvers.bcd` takes.

    Parameters
    ----------
    F : dask.array.Array of shape (N, p)
        Image features, chunked by rows only (one chunk across the columns). Row chunks may be
        uneven; their sizes must be known.
    X : scipy sparse matrix, numpy array or dask.array.Array of shape (N, V)
        Word targets. A sparse or numpy X is cut at F's row-chunk boundaries, each piece going
        into its block's task; a dask X is rechunked to F's row chunks.
    scheduler : str or callable, optional
        Passed to :func:`dask.compute`: ``"threads"``, ``"processes"``, ``"synchronous"``, a
        ``distributed.Client``'s ``get``... ``None`` takes Dask's default (a
        ``distributed.Client`` when one is active, otherwise threads).
    split_every : int
        How many partial statistics one task of the reduction tree adds (at least 2).
    chunk_size : int
        Rows densified at a time inside a block's task (bounds the memory of a dense X chunk).

    Returns
    -------
    SufficientStats
        numpy float64 arrays (``n`` an int), whatever the dtype of F.

    Raises
    ------
    ImportError
        Dask is not installed.
    TypeError
        F is not a dask array.
    ValueError
        F is chunked across its columns, has row chunks of unknown size, or F and X differ in
        their number of rows (the message of :func:`solvers.objective.check_rows`).
    """
    dask, da = _import_dask()
    if not isinstance(F, da.Array):
        raise TypeError(
            f"F must be a dask array, got {type(F).__name__}: wrap it with dask.array.from_array "
            "or use solvers.sufficient_stats"
        )
    if any(np.isnan(size) for size in F.chunks[0]):
        raise ValueError("F has row chunks of unknown size: call F.compute_chunk_sizes() first")
    check_rows(F, X)
    if len(F.chunks[1]) > 1:
        raise ValueError(
            f"F must be chunked by rows only, got {len(F.chunks[1])} chunks across its "
            f"{F.shape[1]} columns: use F.rechunk({{1: -1}})"
        )
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    block_stats = dask.delayed(_block_stats)
    blocks = zip(F.chunks[0], F.to_delayed()[:, 0], _row_blocks(da, X, F.chunks[0]))
    parts = [block_stats(f_block, x_block, chunk_size) for size, f_block, x_block in blocks if size > 0]
    while len(parts) > 1:
        parts = [
            dask.delayed(_sum_stats)(parts[start : start + split_every])
            for start in range(0, len(parts), split_every)
        ]
    (stats,) = dask.compute(parts[0], scheduler=scheduler)
    return stats


def _import_dask() -> tuple[ModuleType, ModuleType]:
    try:
        import dask
        import dask.array as da
    except ImportError as error:
        raise ImportError(
            "sufficient_stats_dask needs Dask (with dask.array): pip install image2vec[dist]"
        ) from error
    return dask, da


def _row_blocks(da: ModuleType, X: Any, row_chunks: tuple[int, ...]) -> list[Any]:
    """X cut into row blocks of the sizes ``row_chunks`` (dask Delayed blocks for a dask X)."""
    if isinstance(X, da.Array):
        return list(X.rechunk((row_chunks, -1)).to_delayed()[:, 0])
    if sp.issparse(X) and X.format != "csr":
        X = X.tocsr()  # row slices of a COO matrix are not supported
    ends = np.cumsum(row_chunks)
    return [X[end - size : end] for size, end in zip(row_chunks, ends)]


def _block_stats(f_block: Any, x_block: Any, chunk_size: int) -> SufficientStats:
    """One task: the float64 statistics of one row block, on the CPU."""
    if not sp.issparse(x_block):
        x_block = to_numpy(x_block)
    return sufficient_stats(to_numpy(f_block).astype(np.float64, copy=False), x_block, chunk_size=chunk_size)


def _sum_stats(parts: list[SufficientStats]) -> SufficientStats:
    """One task of the reduction tree: the statistics of the union of disjoint row blocks."""
    return reduce(operator.add, parts)
