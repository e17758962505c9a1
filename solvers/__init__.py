"""Numerical solvers of image2vec, array-agnostic: numpy arrays on the CPU, CuPy on a GPU.

- :func:`omp`: batched Orthogonal Matching Pursuit (Batch-OMP), optionally non-negative.
- :func:`bcd`: block coordinate descent on the sufficient statistics of DESIGN.md section 3.
- :func:`sgd`: minibatch stochastic gradient on the same objectives, streaming rows.
"""

from solvers.omp import SparseCode, nnls_gram, omp

__all__ = ["SparseCode", "nnls_gram", "omp"]
