"""The streaming passes over F as distributed reductions on Dask (DESIGN.md sections 3 and 4).

Every block of rows gives its partial result (the sufficient statistics, or column sums) in a
task of its own, and the partials are summed by a tree of tasks; a fit (:func:`solvers.bcd`)
then runs on the small summed statistics. :func:`as_row_chunks` makes the Dask array of a
memory-mapped F whose tasks read their rows from the file, so the graph carries a file name,
not the data. Dask is an optional dependency (``pip install image2vec[dist]``), imported only
when called.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from solvers.backend import read_only_mapping, to_numpy
from solvers.objective import SufficientStats, check_rows, column_sums, sufficient_stats

if TYPE_CHECKING:
    from types import ModuleType

    import dask.array


def sufficient_stats_dask(
    F: dask.array.Array,
    X: Any,
    *,
    transform: Callable[[Any], Any] | None = None,
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
    transform : callable, optional
        Applied to every float64 chunk of F inside the tasks, as in
        :func:`solvers.objective.sufficient_stats` (the statistics are those of transform(F)).
        It travels to the workers: a picklable callable (a function of a module, a bound method
        of a picklable object), not a lambda.
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
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return _tree_reduce(F, X, _block_stats, (chunk_size, transform), scheduler, split_every)


def column_means_dask(F: dask.array.Array, X: Any, *, scheduler: Any = None,
                      split_every: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(mean of the rows of F, mean of the rows of X) in float64, as a Dask tree reduction.

    The distributed counterpart of :func:`solvers.objective.column_means`: the column sums of
    every row block in a task, added ``split_every`` at a time. ``F``, ``X``, ``scheduler`` and
    ``split_every`` are as in :func:`sufficient_stats_dask`, and so are the errors.
    """
    sums = _tree_reduce(F, X, _block_sums, (), scheduler, split_every) / F.shape[0]
    return sums[: F.shape[1]], sums[F.shape[1] :]


def as_row_chunks(F: Any, chunk_size: int) -> dask.array.Array:
    """F (N x p) as a Dask array of row chunks of ``chunk_size`` rows, one chunk across.

    A read-only memory-mapped F (a ``numpy.memmap`` of mode ``"r"``, or a C-contiguous array
    that views one, such as ``np.asarray`` of ``np.load(path, mmap_mode="r")``) is read by each
    task from its file,
    which must then be readable by every worker and stay unchanged; any other F is cut into
    chunks that travel with the tasks.

    Raises
    ------
    ImportError
        Dask is not installed.
    """
    dask, da = _import_dask()
    source = _mapped_rows(F)
    if source is None:
        return da.from_array(np.asarray(F), chunks=(chunk_size, -1))
    return da.from_array(source, chunks=(chunk_size, -1), name=False,
                         meta=np.empty((0, 0), dtype=source.dtype))


@dataclass(frozen=True)
class _MappedRows:
    """Rows of an array stored in a file at ``offset`` (C order), read by memory-mapping it."""

    filename: str
    offset: int
    dtype: np.dtype
    shape: tuple[int, int]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        rows = np.memmap(self.filename, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)
        return np.array(rows[index])


def _mapped_rows(F: Any) -> _MappedRows | None:
    """The file location of F's data when F is a C-contiguous view of a read-only mapping (a
    writable or copy-on-write one may hold changes its file does not)."""
    root = read_only_mapping(F)
    if root is None or root.filename is None or not F.flags.c_contiguous:
        return None
    offset = root.offset + F.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return _MappedRows(root.filename, offset, F.dtype, F.shape)


def _tree_reduce(F: Any, X: Any, block_task: Callable, settings: tuple, scheduler: Any,
                 split_every: int) -> Any:
    """``block_task(F_b, X_b, *settings)`` for every non-empty row block, summed by a tree."""
    dask, da = _import_dask()
    if not isinstance(F, da.Array):
        raise TypeError(
            f"F must be a dask array, got {type(F).__name__}: wrap it with dask.array.from_array "
            "or solvers.distributed.as_row_chunks, or use solvers.sufficient_stats"
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
    task = dask.delayed(block_task)
    blocks = zip(F.chunks[0], F.to_delayed()[:, 0], _row_blocks(da, X, F.chunks[0]))
    parts = [task(f_block, x_block, *settings) for size, f_block, x_block in blocks if size > 0]
    while len(parts) > 1:
        parts = [
            dask.delayed(_sum_parts)(parts[start : start + split_every])
            for start in range(0, len(parts), split_every)
        ]
    (total,) = dask.compute(parts[0], scheduler=scheduler)
    return total


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


def _block_stats(f_block: Any, x_block: Any, chunk_size: int,
                 transform: Callable[[Any], Any] | None) -> SufficientStats:
    """One task: the float64 statistics of one row block, on the CPU."""
    if not sp.issparse(x_block):
        x_block = to_numpy(x_block)
    return sufficient_stats(to_numpy(f_block).astype(np.float64, copy=False), x_block, chunk_size=chunk_size,
                            transform=transform)


def _block_sums(f_block: Any, x_block: Any) -> np.ndarray:
    """One task: the float64 column sums of one row block, F's then X's, in one vector."""
    f_block, x_block = to_numpy(f_block), x_block if sp.issparse(x_block) else to_numpy(x_block)
    return np.concatenate([f_block.sum(axis=0, dtype=np.float64), column_sums(x_block).astype(np.float64)])


def _sum_parts(parts: list[Any]) -> Any:
    """One task of the reduction tree: the result of the union of disjoint row blocks."""
    return reduce(operator.add, parts)
