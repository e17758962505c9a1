"""Numerical solvers of image2vec, array-agnostic: numpy arrays on the CPU, CuPy on a GPU.

- :func:`omp`: batched Orthogonal Matching Pursuit (Batch-OMP), optionally non-negative.
- :func:`bcd`: block coordinate descent on the sufficient statistics of DESIGN.md section 3;
  :func:`closed_form`: the exact minimiser where one exists (and BCD's start).
- :func:`sgd`: minibatch stochastic gradient on the same objectives, streaming rows.
- :func:`box_least_squares`: batched box-constrained least squares;
  :class:`TagWeightStep` and :func:`chunk_tag_weights`: the weak-tag A-step built on it.
- :func:`sufficient_stats_dask`: the sufficient statistics as a Dask tree reduction (``[dist]``).
"""

from solvers.bcd import (
    SolverResult,
    bcd,
    closed_form,
    d_step,
    polar,
    random_orthonormal_rows,
    w_step,
)
from solvers.boxls import box_least_squares
from solvers.distributed import sufficient_stats_dask
from solvers.objective import (
    ObjectiveRecord,
    ObjectiveTerms,
    SufficientStats,
    incoherence_weights,
    objective,
    sufficient_stats,
)
from solvers.omp import SparseCode, nnls_gram, omp, omp_gram
from solvers.sgd import sgd, streaming_objective
from solvers.tag_weights import TagWeightStep, chunk_tag_weights

__all__ = [
    "ObjectiveRecord",
    "ObjectiveTerms",
    "closed_form",
    "SolverResult",
    "SparseCode",
    "SufficientStats",
    "TagWeightStep",
    "bcd",
    "box_least_squares",
    "chunk_tag_weights",
    "d_step",
    "incoherence_weights",
    "nnls_gram",
    "objective",
    "omp",
    "omp_gram",
    "polar",
    "random_orthonormal_rows",
    "sgd",
    "streaming_objective",
    "sufficient_stats",
    "sufficient_stats_dask",
    "w_step",
]
