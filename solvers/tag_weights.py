r"""The weak-tag A-step: per-image weights a_n in a box on each image's own words, array-agnostic.

The weak-tag model (DESIGN.md section 3) replaces the targets x_n by a_n * x_n, with a weight
a_nv in [lower, upper] (default [0, 1]) on each word v of image n, so that a tag the picture does
not show can be turned down. With D and W fixed the weights of different images do not interact:

- ``l2``: a_n = argmin_{lower <= a <= upper} ||r_n - D (a * x_n)||^2, a box-constrained least
  squares over the image's words (r_n: the embedding in word-sum space);
- ``ip``: a_n = argmax_{lower <= a <= upper} (r_n - c) . D (a * x_n), a linear function on a box:
  a_nv = upper where x_nv d_v . (r_n - c) > 0, else lower (c: the intercept, which the centred
  objective ignores).

:func:`chunk_tag_weights` solves these problems for one chunk of images at once; its layout
(:class:`ChunkLayout`) depends on X only and is worked out once. :class:`TagWeightStep` is the
block that :func:`solvers.bcd` and :func:`solvers.sgd` call after each sweep or measurement: it
streams F in row chunks, computes the embeddings and the weights of each chunk on the arrays'
device (numpy or CuPy), and returns the re-weighted targets or their sufficient statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from solvers.backend import get_array_module, minus_outer, release_mapped_pages, to_numpy
from solvers.boxls import box_least_squares
from solvers.objective import SufficientStats

#: Weak-tag objectives.
TAG_OBJECTIVES = ("l2", "ip")
#: Coordinate-descent sweeps of one A-step's box problems (warm-started: each lowers the
#: objective, and the outer iterations finish the job) and their tolerance.
BOX_SWEEPS = 20
BOX_TOL = 1e-6


@dataclass(frozen=True)
class PaddedGroup:
    """Images of one chunk whose word counts differ by less than a factor 1.5, as padded problems.

    Image i of the group has slot s for its s-th word; padding slots have word 0 and value 0
    (so their rows and columns of Q and their c vanish, and they stay at their start).

    Attributes
    ----------
    entries : ndarray of shape (m,)
        The group's entries, positions among the chunk's entries (host).
    images : array of shape (g,)
        The images, rows of the chunk.
    words : array of shape (g, slots)
        The chunk-local word of each slot.
    values : array of shape (g, slots)
        x_ns.
    slots : tuple of two arrays of shape (m,)
        (image, slot) of each of the m entries.
    """

    entries: np.ndarray
    images: Any
    words: Any
    values: Any
    slots: tuple[Any, Any]


@dataclass(frozen=True)
class ChunkLayout:
    """What the A-step needs of one chunk of rows of X, computed once (X does not change).

    Attributes
    ----------
    rows : slice
        The chunk's rows of X.
    block : csr_matrix
        X[rows] (host).
    used : array
        The words that occur in the chunk.
    local : array
        Each entry's word among ``used``.
    entry_rows : array or None
        Each entry's row of the chunk (``ip``, else None).
    groups : list of PaddedGroup
        The padded problems (``l2``, else empty).
    """

    rows: slice
    block: sp.csr_matrix
    used: Any
    local: Any
    entry_rows: Any
    groups: list[PaddedGroup]

    @classmethod
    def of(cls, X: sp.csr_matrix, rows: slice, objective: str, xp: Any = np) -> ChunkLayout:
        """The layout of X[rows] for ``objective``, its arrays on ``xp``'s device."""
        block = X[rows]
        counts = np.diff(block.indptr)
        used, local = np.unique(block.indices, return_inverse=True)
        if objective == "ip":
            entry_rows = np.repeat(np.arange(block.shape[0]), counts)
            return cls(rows, block, xp.asarray(used), xp.asarray(local), xp.asarray(entry_rows), [])
        size_class = np.ceil(np.log(np.maximum(counts, 1)) / np.log(1.5))
        size_class[counts == 0] = -1  # images without words: nothing to weigh
        groups = []
        for size in np.unique(size_class[size_class >= 0]):
            images = np.flatnonzero(size_class == size)
            lengths = counts[images]
            starts = np.cumsum(lengths) - lengths  # each image's first entry in the group
            image = np.repeat(np.arange(len(images)), lengths)
            slot = np.arange(lengths.sum()) - starts[image]
            entries = block.indptr[images][image] + slot  # the CSR ranges of its images, in order
            words = np.zeros((len(images), int(lengths.max())), dtype=np.intp)
            values = np.zeros(words.shape)
            words[image, slot], values[image, slot] = local[entries], block.data[entries]
            groups.append(PaddedGroup(entries, xp.asarray(images), xp.asarray(words), xp.asarray(values),
                                      (xp.asarray(image), xp.asarray(slot))))
        return cls(rows, block, xp.asarray(used), xp.asarray(local), None, groups)


def chunk_tag_weights(
    layout: ChunkLayout,
    D: Any,
    embedded: Any,
    current: np.ndarray,
    objective: str = "l2",
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    max_sweeps: int = BOX_SWEEPS,
    tol: float = BOX_TOL,
) -> np.ndarray:
    r"""New weights a_nv on the entries of one chunk of images (the A-step's per-image problems).

    With U the chunk's words, S = E D_U the scores (E: the chunk's embeddings, minus the
    intercept) and G = D_U^T D_U their Gram matrix, image n with words v_n1, ..., v_nm and
    values x_ns solves, over lower <= a <= upper,

    - ``l2``: min_a (1/2) a^T Q_n a - c_n^T a with Q_nst = x_ns x_nt G_{v_ns v_nt} and
      c_ns = x_ns S_{n v_ns}, i.e. min_a ||e_n - D (a * x_n)||^2 expanded as
      ||e_n||^2 - 2 u^T D^T e_n + u^T (D^T D) u with u = a * x_n: no d-dimensional atom is
      formed. Images with similar word counts are solved together as padded problems
      (:class:`PaddedGroup`) by :func:`solvers.box_least_squares`, warm-started at ``current``;
    - ``ip``: max_a c_n^T a, whose maximiser is a_ns = upper where c_ns > 0, else lower
      (an explicitly stored x_ns = 0 gets ``lower``).

    Parameters
    ----------
    layout : ChunkLayout
        The chunk (its arrays on D's device).
    D : array of shape (d, V)
        Word vectors (numpy or CuPy).
    embedded : array of shape (n_rows, d)
        e_n, the chunk's embeddings less the intercept the problem keeps fixed (same device).
    current : ndarray of shape (nnz,)
        The weights of the chunk's entries now (host), the start of ``l2``.
    objective : {"l2", "ip"}
    bounds : (float, float)
        lower <= upper, the box.
    max_sweeps, tol
        Passed to :func:`solvers.box_least_squares` (``l2``).

    Returns
    -------
    ndarray of shape (nnz,)
        The new weights, in the order of ``layout.block``'s entries (host).
    """
    lower, upper = bounds
    if objective not in TAG_OBJECTIVES:
        raise ValueError(f"objective must be one of {TAG_OBJECTIVES}, got {objective!r}")
    if not 0 <= lower <= upper:
        raise ValueError(f"bounds must satisfy 0 <= lower <= upper, got {bounds!r}")
    columns = D[:, layout.used]
    scores = embedded @ columns
    if objective == "ip":  # x_nv S_nv > 0 (an explicitly stored x_nv = 0 gets the lower bound)
        positive = to_numpy(scores[layout.entry_rows, layout.local] > 0)
        return np.where(positive & (layout.block.data > 0), float(upper), float(lower))
    xp = get_array_module(D)
    gram = columns.T @ columns
    gram = (gram + gram.T) / 2  # exactly symmetric, as box_least_squares reads rows for columns
    new = np.empty(layout.block.nnz)
    for group in layout.groups:
        c = group.values * scores[group.images[:, None], group.words]
        Q = (group.values[:, :, None] * group.values[:, None, :]
             * gram[group.words[:, :, None], group.words[:, None, :]])
        init = xp.zeros(group.words.shape)
        init[group.slots] = xp.asarray(current[group.entries])
        fitted = box_least_squares(Q, c, lower=lower, upper=upper, init=init, max_sweeps=max_sweeps, tol=tol)
        new[group.entries] = to_numpy(fitted[group.slots])
    return new


class TagWeightStep:
    """The weak-tag A-step as a solver block: ``step(D, W)`` updates a on every image.

    Images are processed in chunks of ``chunk_rows`` rows of F, read through ``transform`` (the
    model's preprocessing and basis) and kept between calls only while they take at most
    ``cache_bytes`` (N x q float64; else the step holds one chunk of features at a time); each
    chunk is on ``xp``'s device, where its embeddings and weights are computed by
    :func:`chunk_tag_weights` (only the chunk's new weights come back).

    ``l2`` fits a with the intercept c = D xbar fixed (the D- and W-steps then refit it); the
    centred ``ip`` objective does not depend on c.

    Parameters
    ----------
    F : array of shape (N, p)
        Raw features (a memmap is read in row chunks).
    X : sparse matrix of shape (N, V)
        Targets x_nv >= 0.
    transform : callable
        Raw feature rows (an ``xp`` array) -> the map's coordinates (N x q).
    f_mean : ndarray of shape (q,)
        m, the mean of transform(F).
    objective : {"l2", "ip"}
    xp : module
        numpy or cupy.
    bounds : (float, float)
        The box of the weights (default [0, 1]).
    chunk_rows : int
        Rows of F per chunk.
    cache_bytes : int
        Largest size of the transformed features kept between calls.

    Attributes
    ----------
    weights : ndarray of shape (nnz,)
        a on X's stored entries (CSR order), starting at ``bounds[1]``.
    """

    def __init__(self, F: Any, X: sp.spmatrix, transform: Any, f_mean: np.ndarray, objective: str, xp: Any = np,
                 *, bounds: tuple[float, float] = (0.0, 1.0), chunk_rows: int = 4096,
                 cache_bytes: int = 256 * 2**20):
        if objective not in TAG_OBJECTIVES:
            raise ValueError(f"objective must be one of {TAG_OBJECTIVES}, got {objective!r}")
        self.F, self.X, self.transform, self.objective, self.xp = F, sp.csr_matrix(X), transform, objective, xp
        self.f_mean, self.bounds, self.cache_bytes = f_mean, (float(bounds[0]), float(bounds[1])), cache_bytes
        self.weights = np.full(self.X.nnz, self.bounds[1])
        n = self.X.shape[0]
        self.layouts = [ChunkLayout.of(self.X, slice(start, min(start + chunk_rows, n)), objective, xp)
                        for start in range(0, n, chunk_rows)]
        self._cache = None  # the transformed chunks of F, when small (see _centred_chunks)

    def weighted(self) -> sp.csr_matrix:
        """X with each entry x_nv multiplied by a_nv."""
        return sp.csr_matrix((self.X.data * self.weights, self.X.indices, self.X.indptr), shape=self.X.shape)

    def weights_matrix(self) -> sp.csr_matrix:
        """a as a sparse matrix of X's shape and pattern."""
        return sp.csr_matrix((self.weights, self.X.indices, self.X.indptr), shape=self.X.shape)

    def __call__(self, D: Any, W: Any, scatter: Any = None) -> Any:
        """Update a; returns the re-weighted X_a, or the centred statistics of (F, X_a).

        ``scatter``: the centred A of the features in the map's coordinates. The step does not
        change the features, so A is reused; the cross term sum_n (f_n - m) (x_n^a)^T (equal to
        the centred B, the f_n - m summing to zero) is accumulated in the same pass over F that
        computes the weights, and C from X_a alone.
        """
        xp = self.xp
        D, W = xp.asarray(D), xp.asarray(W)
        xbar = xp.asarray(np.asarray(self.weighted().mean(axis=0)).ravel())  # a (1, V) np.matrix first
        shift = D @ xbar if self.objective == "l2" else 0
        new = np.empty_like(self.weights)
        cross = 0
        for layout, centred in zip(self.layouts, self._centred_chunks(), strict=True):  # X stays on the host
            entries = slice(self.X.indptr[layout.rows.start], self.X.indptr[layout.rows.stop])
            new[entries] = chunk_tag_weights(layout, D, centred @ W.T + shift, self.weights[entries], self.objective,
                                       bounds=self.bounds)
            if scatter is not None:
                block = layout.block
                block = sp.csr_matrix((block.data * new[entries], block.indices, block.indptr), shape=block.shape)
                cross = cross + ((block.T @ centred).T if xp is np  # sparse on the host, dense on a device
                                 else centred.T @ xp.asarray(block.toarray()))
        self.weights = new
        weighted = self.weighted()
        if scatter is None:
            return weighted
        n, x_mean = self.X.shape[0], np.asarray(weighted.mean(axis=0)).ravel()
        words = minus_outer((weighted.T @ weighted).toarray(), n * x_mean, x_mean)
        return SufficientStats(scatter, cross, xp.asarray(words), n, xp.zeros(len(self.f_mean)),
                               xp.zeros(len(x_mean)))

    def _centred_chunks(self):
        """transform(F[rows]) - m for the row chunks of F, as ``xp`` arrays.

        Read from F on the first call; kept for the later ones when all of them take at most
        ``cache_bytes`` (N x q float64), else read again every call (streaming).
        """
        if self._cache is not None:
            yield from self._cache
            return
        n, f_mean = self.X.shape[0], self.xp.asarray(self.f_mean)
        kept = [] if n * len(self.f_mean) * 8 <= self.cache_bytes else None
        for layout in self.layouts:
            centred = self.transform(self.xp.asarray(self.F[layout.rows])) - f_mean
            release_mapped_pages(self.F)
            if kept is not None:
                kept.append(centred)
            yield centred
        self._cache = kept
