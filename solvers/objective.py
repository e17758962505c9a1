"""The Image2Vec objectives (DESIGN.md section 3) and their sufficient statistics.

Notation: F is N x p (rows are image features f_n), X is N x V (rows are word targets x_n),
D is d x V (columns are word vectors d_v), W is d x p (the image map, r_n = W f_n).

- ``l2``: J(D, W) = (1/2N) sum_n ||W f_n - D x_n||^2 + (lam/2) ||D||_F^2
  + (gamma/2) sum_{u != v} K_uv (d_u . d_v)^2, minimised.
- ``ip``: J(D, W) = -(1/N) sum_n (W f_n) . (D x_n) subject to ||d_v|| = 1, minimised (the inner
  product is maximised).

Both depend on the data only through A = F^T F, B = F^T X, C = X^T X and N:
sum_n ||W f_n - D x_n||^2 = tr(W A W^T) - 2 tr(W B D^T) + tr(D C D^T).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import scipy.sparse as sp

from solvers.backend import get_array_module, normalised_gram, to_numpy

OBJECTIVES = ("l2", "ip")


@dataclass(frozen=True)
class SufficientStats:
    """A = F^T F (p x p), B = F^T X (p x V), C = X^T X (V x V), N and the column sums of F and X.

    The sums make the statistics of centred data available (:meth:`centered`), which is how a
    model with an intercept, W (f_n - mean f) ~= D (x_n - mean x), is trained from them.
    """

    A: Any
    B: Any
    C: Any
    n: int
    f_sum: Any
    x_sum: Any

    def __add__(self, other: "SufficientStats") -> "SufficientStats":
        """Statistics of the union of two disjoint sets of rows (a distributed reduction)."""
        return SufficientStats(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
        )

    def to(self, xp: Any, dtype: Any = None) -> "SufficientStats":
        """The same statistics as arrays of module ``xp`` (numpy or cupy)."""

        def move(a):
            a = to_numpy(a) if xp is np else xp.asarray(a)
            return a.astype(dtype or a.dtype, copy=False)

        return SufficientStats(*(
            getattr(self, f.name) if f.name == "n" else move(getattr(self, f.name)) for f in fields(self)
        ))

    def centered(self) -> "SufficientStats":
        """Statistics of the centred rows f_n - mean f and x_n - mean x.

        (F - 1 m^T)^T (X - 1 u^T) = F^T X - N m u^T with m, u the column means.
        """
        xp = get_array_module(self.A)
        f_mean, x_mean = self.f_sum / self.n, self.x_sum / self.n
        return SufficientStats(
            self.A - self.n * xp.outer(f_mean, f_mean),
            self.B - self.n * xp.outer(f_mean, x_mean),
            self.C - self.n * xp.outer(x_mean, x_mean),
            self.n,
            xp.zeros_like(self.f_sum),
            xp.zeros_like(self.x_sum),
        )


def iter_row_chunks(
    F: Any, X: Any, chunk_size: int, order: Any = None, xp: Any = None, offsets: tuple | None = None
) -> Iterator[tuple[Any, Any]]:
    """Yield (F_chunk, X_chunk) row blocks as dense float arrays of module ``xp``.

    F may be any array-like indexable by rows (a numpy memmap included); X a SciPy sparse matrix
    or a dense array. ``order`` (a permutation of row indices) streams rows in that order, each
    chunk's rows sorted for sequential reads. ``xp`` defaults to F's array module. ``offsets``
    (f_mean, x_mean) are subtracted from every row (centred data without a dense copy of X).
    """
    n = F.shape[0]
    xp = xp or get_array_module(F)
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n)) if order is None else np.sort(
            order[start : start + chunk_size]
        )
        f_chunk = xp.asarray(F[rows])
        x_chunk = X[rows]
        x_chunk = x_chunk.toarray() if sp.issparse(x_chunk) else x_chunk
        x_chunk = xp.asarray(x_chunk, dtype=f_chunk.dtype)
        if offsets is not None:
            f_chunk, x_chunk = f_chunk - offsets[0], x_chunk - offsets[1]
        yield f_chunk, x_chunk


def column_means(F: Any, X: Any, chunk_size: int = 4096, xp: Any = None) -> tuple[Any, Any]:
    """(mean of the rows of F, mean of the rows of X) in one streaming pass."""
    f_sum = x_sum = 0
    for f_chunk, x_chunk in iter_row_chunks(F, X, chunk_size, xp=xp):
        f_sum = f_sum + f_chunk.sum(axis=0)
        x_sum = x_sum + x_chunk.sum(axis=0)
    return f_sum / F.shape[0], x_sum / F.shape[0]


def sufficient_stats(F: Any, X: Any, *, chunk_size: int = 4096) -> SufficientStats:
    """Accumulate A = F^T F, B = F^T X, C = X^T X and the sums in one streaming pass.

    Parameters
    ----------
    F : array-like of shape (N, p)
        Image features; a memory-mapped ``.npy`` streams chunk by chunk.
    X : sparse matrix or array of shape (N, V)
        Word targets.
    chunk_size : int
        Rows per chunk.
    """
    check_rows(F, X)
    stats = None
    for f_chunk, x_chunk in iter_row_chunks(F, X, chunk_size):
        part = SufficientStats(
            f_chunk.T @ f_chunk,
            f_chunk.T @ x_chunk,
            x_chunk.T @ x_chunk,
            f_chunk.shape[0],
            f_chunk.sum(axis=0),
            x_chunk.sum(axis=0),
        )
        stats = part if stats is None else stats + part
    return stats


def check_rows(F: Any, X: Any) -> None:
    """Raise ValueError unless F and X are 2-d with the same number of rows."""
    if len(F.shape) != 2 or len(X.shape) != 2:
        raise ValueError(f"F and X must be 2-d, got shapes {F.shape} and {X.shape}")
    if F.shape[0] != X.shape[0]:
        raise ValueError(f"F has {F.shape[0]} rows but X has {X.shape[0]}: one row per image in both")
    if F.shape[0] == 0:
        raise ValueError("F and X have no rows")


def objective(
    stats: SufficientStats,
    D: Any,
    W: Any,
    *,
    kind: str = "l2",
    lam: float = 0.0,
    gamma: float = 0.0,
    cooccurrence: Any = None,
) -> float:
    """J(D, W) of the module docstring from the sufficient statistics."""
    if kind == "ip":
        return -float((W * (D @ stats.B.T)).sum()) / stats.n
    data = (
        float((W * (W @ stats.A)).sum())
        - 2 * float((W * (D @ stats.B.T)).sum())
        + float((D * (D @ stats.C)).sum())
    )
    return data / (2 * stats.n) + penalty(D, lam=lam, gamma=gamma, cooccurrence=cooccurrence)


def penalty(D: Any, *, lam: float = 0.0, gamma: float = 0.0, cooccurrence: Any = None) -> float:
    """(lam/2) ||D||_F^2 + (gamma/2) sum_{u != v} K_uv (d_u . d_v)^2 (K has a zero diagonal)."""
    value = 0.5 * lam * float((D * D).sum())
    if gamma and cooccurrence is not None:
        gram = D.T @ D
        value += 0.5 * gamma * float((cooccurrence * gram * gram).sum())
    return value


def check_objective(kind: str) -> None:
    if kind not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {kind!r}")


def incoherence_weights(C: Any) -> Any:
    """K: co-occurrence counts normalised to [0, 1], K_uv = C_uv / sqrt(C_uu C_vv), zero diagonal.

    K_uv is the cosine between the indicator columns of words u and v: 1 for words that always
    appear together, 0 for words that never do.
    """
    xp = get_array_module(C)
    weights, _ = normalised_gram(C)
    return weights - xp.diag(xp.diagonal(weights))
