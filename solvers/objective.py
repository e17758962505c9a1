"""The Image2Vec objectives (DESIGN.md section 3) and their sufficient statistics.

Notation: F is N x p (rows are image features f_n), X is N x V (rows are word targets x_n),
D is d x V (columns are word vectors d_v), W is d x p (the image map, r_n = W f_n).

Two objectives, each under one of two constraints (:class:`ObjectiveTerms`):

- ``l2``, ``constraint="map"`` (W W^T = I, the seed's models):
  J(D, W) = (1/2N) sum_n ||W f_n - D x_n||^2 + (lam/2) ||D||_F^2
  + (gamma/2) sum_{u != v} K_uv (d_u . d_v)^2.
- ``l2``, ``constraint="words"`` (D D^T = I, the reduced-rank model):
  J(D, W) = (1/2N) sum_n ||x_n - D^T W f_n||^2 + (lam/2) ||W||_F^2. With D D^T = I,
  ||x - D^T r||^2 = ||r - D x||^2 + ||(I - D^T D) x||^2: the same word-sum fit r ~= D x, plus
  the part of x that D's rows do not span, so D must cover the words instead of shrinking them.
- ``ip``: J(D, W) = -(1/N) sum_n (W f_n) . (D x_n), minimised (the inner product is maximised),
  with W W^T = I and unit columns ||d_v|| = 1 (``"map"``), or W W^T = I and D D^T = I
  (``"words"``, partial least squares).

All depend on the data only through A = F^T F, B = F^T X, C = X^T X and N:
sum_n ||W f_n - D x_n||^2 = tr(W A W^T) - 2 tr(W B D^T) + tr(D C D^T), and under D D^T = I
sum_n ||x_n - D^T W f_n||^2 = tr(W A W^T) - 2 tr(W B D^T) + tr(C).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import scipy.sparse as sp

from solvers.backend import get_array_module, minus_outer, normalised_gram, release_mapped_pages, to_numpy

OBJECTIVES = ("l2", "ip")
CONSTRAINTS = ("map", "words")


@dataclass(frozen=True)
class ObjectiveTerms:
    """What J is made of: the objective, the constraint and the penalty weights.

    One small frozen value travels through :func:`objective`, :func:`solvers.bcd`,
    :func:`solvers.d_step`, :func:`solvers.sgd` and :func:`solvers.streaming_objective`.

    Parameters
    ----------
    kind : {"l2", "ip"}
    constraint : {"map", "words"}
        ``"map"``: W W^T = I (and unit word columns for ``ip``), ridge ``lam`` on D.
        ``"words"``: D D^T = I (and W W^T = I for ``ip``), ridge ``lam`` on W.
    lam : float
        Ridge weight (``l2`` only).
    gamma : float
        Co-occurrence incoherence weight (``l2`` with ``constraint="map"``); needs ``weights``.
    weights : array or sparse matrix of shape (V, V), optional
        K, symmetric with a zero diagonal (:func:`incoherence_weights`).

    Raises
    ------
    ValueError
        An unknown kind or constraint, a negative or non-finite weight, ``lam`` or ``gamma`` with
        ``ip``, ``gamma`` without ``weights`` or with ``constraint="words"``.
    """

    kind: str = "l2"
    constraint: str = "map"
    lam: float = 0.0
    gamma: float = 0.0
    weights: Any = None

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.kind!r}")
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {self.constraint!r}")
        for name in ("lam", "gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.number)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.kind == "ip" and (self.lam or self.gamma):
            raise ValueError("lam and gamma apply to the l2 objective only (ip has unit-norm words)")
        if self.gamma and self.constraint == "words":
            raise ValueError("gamma (incoherence) applies to constraint='map' only")
        if self.gamma and self.weights is None:
            raise ValueError("gamma > 0 needs the cooccurrence weights K")

    @property
    def words_orthonormal(self) -> bool:
        """Whether D has orthonormal rows (``"words"``); else W does and the ridge is on D."""
        return self.constraint == "words"


#: The default terms: l2 under W W^T = I, no penalty.
L2_TERMS = ObjectiveTerms()


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

    def __add__(self, other: SufficientStats) -> SufficientStats:
        """Statistics of the union of two disjoint sets of rows (a distributed reduction)."""
        return SufficientStats(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
        )

    def to(self, xp: Any, dtype: Any = None) -> SufficientStats:
        """The same statistics as arrays of module ``xp`` (numpy or cupy)."""

        def move(a):
            a = to_numpy(a) if xp is np else xp.asarray(a)
            return a.astype(dtype or a.dtype, copy=False)

        return SufficientStats(*(
            getattr(self, f.name) if f.name == "n" else move(getattr(self, f.name)) for f in fields(self)
        ))

    def centered(self) -> SufficientStats:
        """Statistics of the centred rows f_n - mean f and x_n - mean x.

        (F - 1 m^T)^T (X - 1 u^T) = F^T X - N m u^T with m, u the column means.
        """
        xp = get_array_module(self.A)
        f_mean, x_mean = self.f_sum / self.n, self.x_sum / self.n
        return SufficientStats(
            minus_outer(self.A, self.n * f_mean, f_mean),
            minus_outer(self.B, self.n * f_mean, x_mean),
            minus_outer(self.C, self.n * x_mean, x_mean),
            self.n,
            xp.zeros_like(self.f_sum),
            xp.zeros_like(self.x_sum),
        )

    def rotated(self, basis: Any) -> SufficientStats:
        """Statistics of the features in new coordinates, f -> basis^T f (basis is p x q)."""
        return SufficientStats(basis.T @ self.A @ basis, basis.T @ self.B, self.C, self.n,
                               self.f_sum @ basis, self.x_sum)


def iter_row_chunks(
    F: Any,
    X: Any,
    chunk_size: int,
    order: Any = None,
    xp: Any = None,
    f_offset: Any = None,
    transform: Callable[[Any], Any] | None = None,
    dtype: Any = None,
) -> Iterator[tuple[Any, Any]]:
    """Yield (F_chunk, X_chunk) row blocks: F dense float arrays of module ``xp``.

    F may be any array-like indexable by rows (a numpy memmap included); X a SciPy sparse matrix
    or a dense array. A sparse X stays sparse (CSR) on numpy, so a large vocabulary costs its
    non-zeros only; on another backend its chunks are made dense. ``order`` (a permutation of
    row indices) streams rows in that order, each chunk's rows sorted for sequential reads.
    ``xp`` defaults to F's array module. ``transform`` maps every F chunk (e.g. preprocessing
    into another coordinate system), then ``f_offset`` is subtracted from its rows. ``dtype`` is
    the F chunks' dtype (default F's float type) and that of dense X chunks. The pages of a
    read-only memory-mapped F are released after every chunk of a sequential pass
    (:func:`release_mapped_pages`; not in ``order``, where SGD's minibatches would read them back).
    """
    n = F.shape[0]
    xp = xp or get_array_module(F)
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n)) if order is None else np.sort(
            order[start : start + chunk_size]
        )
        f_chunk = xp.asarray(F[rows])
        if dtype is not None or f_chunk.dtype.kind != "f":
            f_chunk = f_chunk.astype(dtype or xp.float64)
        if transform is not None:
            f_chunk = transform(f_chunk)
        if f_offset is not None:
            f_chunk = f_chunk - f_offset
        x_chunk = X[rows]
        if sp.issparse(x_chunk) and xp is np:
            x_chunk = sp.csr_matrix(x_chunk, dtype=f_chunk.dtype)
        else:
            x_chunk = xp.asarray(x_chunk.toarray() if sp.issparse(x_chunk) else x_chunk, dtype=f_chunk.dtype)
        yield f_chunk, x_chunk
        if order is None:  # a sequential pass over a mapped F keeps one chunk resident, not the file
            release_mapped_pages(F)


def column_sums(M: Any) -> Any:
    """The column sums of a dense or SciPy sparse matrix, as a 1-d array."""
    total = M.sum(axis=0)
    return np.asarray(total).ravel() if sp.issparse(M) else total


def column_means(F: Any, X: Any, chunk_size: int = 4096, xp: Any = None,
                 transform: Callable[[Any], Any] | None = None) -> tuple[Any, Any]:
    """(mean of the rows of F, mean of the rows of X) in one streaming pass, in float64."""
    f_sum = x_sum = 0
    for f_chunk, x_chunk in iter_row_chunks(F, X, chunk_size, xp=xp, transform=transform,
                                            dtype=np.float64):
        f_sum = f_sum + f_chunk.sum(axis=0)
        x_sum = x_sum + column_sums(x_chunk)
    return f_sum / F.shape[0], x_sum / F.shape[0]


#: Fill of X^T X above which :func:`sufficient_stats` sums it as a dense V x V array.
DENSE_COOCCURRENCE = 0.25


def sufficient_stats(F: Any, X: Any, *, chunk_size: int = 4096,
                     transform: Callable[[Any], Any] | None = None) -> SufficientStats:
    """Accumulate A = F^T F, B = F^T X, C = X^T X and the sums in one streaming pass.

    Every chunk is converted to float64 before its products are formed, so float32 features
    with a large mean lose nothing in :meth:`SufficientStats.centered`. A sparse X enters by its
    non-zeros (B = (X^T F)^T, C = X^T X as sparse products); C is summed over the chunks as a
    sparse matrix until more than ``DENSE_COOCCURRENCE`` of its entries are non-zero, then as a
    dense one.

    Parameters
    ----------
    F : array-like of shape (N, p)
        Image features; a memory-mapped ``.npy`` streams chunk by chunk.
    X : sparse matrix or array of shape (N, V)
        Word targets.
    chunk_size : int
        Rows per chunk.
    transform : callable, optional
        Applied to every float64 chunk of F first (the statistics are those of transform(F)).

    Returns
    -------
    SufficientStats
        float64 arrays of F's array module.
    """
    check_rows(F, X)
    A = B = C = f_sum = x_sum = None
    n = 0
    for f_chunk, x_chunk in iter_row_chunks(F, X, chunk_size, transform=transform, dtype=np.float64):
        sparse = sp.issparse(x_chunk)
        products = (f_chunk.T @ f_chunk, (x_chunk.T @ f_chunk).T if sparse else f_chunk.T @ x_chunk,
                    f_chunk.sum(axis=0), column_sums(x_chunk))
        if A is None:
            A, B, f_sum, x_sum = products
        else:  # in place: a chunk's products are new arrays, no total is shared
            for total, value in zip((A, B, f_sum, x_sum), products):
                total += value
        C = _add_cooccurrences(C, x_chunk.T @ x_chunk)  # sparse X: the words' co-occurrences
        n += f_chunk.shape[0]
    return SufficientStats(A, B, C.toarray() if sp.issparse(C) else C, n, f_sum, x_sum)


def _add_cooccurrences(total: Any, part: Any) -> Any:
    """total + part for the X^T X of two sets of rows (``total`` None: the first part alone).

    A SciPy sparse part stays sparse while at most ``DENSE_COOCCURRENCE`` of its entries are
    non-zero, and so does the sum of two sparse ones; beyond, they are made dense. A dense total
    is updated in place (at a sparse part's non-zeros).
    """
    def filled(M):
        return sp.issparse(M) and M.nnz > DENSE_COOCCURRENCE * M.shape[0] * M.shape[1]

    part = part.toarray() if filled(part) else part
    if total is None:
        return part
    if sp.issparse(total) and sp.issparse(part):
        total = total + part
        return total.toarray() if filled(total) else total
    if sp.issparse(total):
        total = total.toarray()
    if sp.issparse(part):
        part = part.tocoo()
        part.sum_duplicates()  # one entry per (row, column): the indexed += below adds each once
        total[part.row, part.col] += part.data
    else:
        total += part
    return total


def check_rows(F: Any, X: Any) -> None:
    """Raise ValueError unless F and X are 2-d with the same number of rows."""
    if len(F.shape) != 2 or len(X.shape) != 2:
        raise ValueError(f"F and X must be 2-d, got shapes {F.shape} and {X.shape}")
    if F.shape[0] != X.shape[0]:
        raise ValueError(f"F has {F.shape[0]} rows but X has {X.shape[0]}: one row per image in both")
    if F.shape[0] == 0:
        raise ValueError("F and X have no rows")


def objective(stats: SufficientStats, D: Any, W: Any, terms: ObjectiveTerms) -> float:
    """J(D, W) of the module docstring from the sufficient statistics."""
    return ObjectiveRecord(terms)(stats, D, W)


class ObjectiveRecord:
    r"""J(D, W) evaluated again and again as a solver changes one block at a time.

    J is made of three traces: tr(W A W^T), tr(W B D^T) and tr(D C D^T) (``l2`` under ``map``;
    tr(C) under ``words``; ``ip`` has the cross term only). Each costs a d x p x p, d x p x V
    or d x V x V product. A block coordinate step changes D or W, not both, so the record keeps
    tr(W A W^T) while W and A are the same arrays and tr(D C D^T) while D and C are (by
    identity: the solver must not change them in place), and the cross term is read from the
    step's own product when it gives one: ``W_B`` = W B (a D-step's) or ``D_Bt`` = D B^T
    (a W-step's), tr(W B D^T) = sum(D o W B) = sum(W o D B^T).

    Parameters
    ----------
    terms : ObjectiveTerms
    """

    def __init__(self, terms: ObjectiveTerms) -> None:
        self.terms = terms
        self._map_trace: tuple[Any, Any, float] = (None, None, 0.0)  # (W, A, tr(W A W^T))
        self._words_trace: tuple[Any, Any, float] = (None, None, 0.0)  # (D, C, tr(D C D^T))

    def __call__(self, stats: SufficientStats, D: Any, W: Any, *, W_B: Any = None,
                 D_Bt: Any = None) -> float:
        """J(D, W) from ``stats``; ``W_B`` or ``D_Bt``, when given, must be those of this D and W."""
        if W_B is not None:
            cross = float((D * W_B).sum())
        else:
            cross = float((W * (D @ stats.B.T if D_Bt is None else D_Bt)).sum())
        if self.terms.kind == "ip":
            return -cross / stats.n
        data = self._trace_of_map(W, stats.A) - 2 * cross + self._trace_of_words(D, stats.C)
        return data / (2 * stats.n) + penalty(D, W, self.terms)

    def _trace_of_map(self, W: Any, A: Any) -> float:
        cached_W, cached_A, value = self._map_trace
        if cached_W is not W or cached_A is not A:
            value = float((W * (W @ A)).sum())
            self._map_trace = (W, A, value)
        return value

    def _trace_of_words(self, D: Any, C: Any) -> float:
        if self.terms.words_orthonormal:
            return float(C.trace())
        cached_D, cached_C, value = self._words_trace
        if cached_D is not D or cached_C is not C:
            value = float((D * (D @ C)).sum())
            self._words_trace = (D, C, value)
        return value


def penalty(D: Any, W: Any, terms: ObjectiveTerms) -> float:
    """The ridge (lam/2) ||D||_F^2 (or ||W||_F^2) plus (gamma/2) sum_{u != v} K_uv (d_u . d_v)^2."""
    ridged = W if terms.words_orthonormal else D
    value = 0.5 * terms.lam * float((ridged * ridged).sum())
    if terms.gamma:
        u, v, k, products = _coherences(D, terms.weights)
        value += 0.5 * terms.gamma * float((k * products * products).sum())
    return value


def incoherence_gradient(D: Any, terms: ObjectiveTerms) -> Any:
    """The gradient of the incoherence term, 2 gamma D (K o D^T D), from K's non-zeros only."""
    xp = get_array_module(D)
    u, v, k, products = _coherences(D, terms.weights)
    scaled = k * products  # K_uv (d_u . d_v) on the non-zeros of K
    grad = xp.zeros_like(D)
    if xp is np:
        np.add.at(grad.T, u, (scaled[:, None] * D[:, v].T))
    else:  # pragma: no cover - CuPy
        import cupyx

        cupyx.scatter_add(grad.T, u, scaled[:, None] * D[:, v].T)
    return 2 * terms.gamma * grad


def _coherences(D: Any, weights: Any) -> tuple[Any, Any, Any, Any]:
    """(u, v, K_uv, d_u . d_v) over the non-zeros of K (dense or SciPy sparse)."""
    xp = get_array_module(D)
    if sp.issparse(weights):
        coo = weights.tocoo()
        u, v, k = (xp.asarray(a) for a in (coo.row, coo.col, coo.data))
    else:
        u, v = xp.nonzero(weights)
        k = weights[u, v]
    products = (D[:, u] * D[:, v]).sum(axis=0)
    return u, v, k.astype(D.dtype, copy=False), products


def incoherence_weights(C: Any) -> Any:
    """K: co-occurrence counts normalised to [0, 1], K_uv = C_uv / sqrt(C_uu C_vv), zero diagonal.

    K_uv is the cosine between the indicator columns of words u and v: 1 for words that always
    appear together, 0 for words that never do. A SciPy sparse C (e.g. X^T X of sparse targets)
    gives a sparse K with C's pattern, so no dense V x V matrix is formed.
    """
    if sp.issparse(C):
        C = sp.csr_matrix(C, dtype=np.float64)
        scales = np.sqrt(np.maximum(C.diagonal(), 0))
        scales[scales == 0] = 1
        inverse = sp.diags(1 / scales)
        weights = (inverse @ C @ inverse).tolil()
        weights.setdiag(0)
        weights = weights.tocsr()
        weights.eliminate_zeros()
        return weights
    xp = get_array_module(C)
    weights, _ = normalised_gram(C)
    return weights - xp.diag(xp.diagonal(weights))
