"""Small array helpers shared by the systems: feature preprocessing, an RBF kernel and its Nystrom
basis, unit rows, canonical pairs, loaded shapes."""

from __future__ import annotations

from typing import Any

import numpy as np

from solvers.backend import get_array_module, plus_identity


def unit_rows(A: Any) -> Any:
    """The rows of A scaled to unit Euclidean norm; zero rows stay zero (numpy or CuPy)."""
    xp = get_array_module(A)
    norms = xp.linalg.norm(A, axis=1, keepdims=True)
    return A / xp.where(norms > 0, norms, 1)


def preprocess_features(F: Any, mean: np.ndarray, normalize: bool = True) -> Any:
    """f'_n = (f_n - mu) / ||f_n - mu||, as float64 (N, p): the features every linear system uses.

    Computed on F's device: a CuPy F gives a CuPy result (``mean`` is copied there).

    Parameters
    ----------
    F : array-like of shape (N, p)
        Raw image features.
    mean : ndarray of shape (p,)
        mu, the training mean of the raw features.
    normalize : bool, default True
        Divide by the norm (an image equal to the mean stays zero); False: only centre.
    """
    xp = get_array_module(F)
    centred = xp.asarray(F, dtype=xp.float64) - xp.asarray(mean)  # a new array: scaled in place
    if normalize:
        norms = xp.sqrt(xp.einsum("ij,ij->i", centred, centred))[:, None]
        centred /= xp.where(norms > 0, norms, 1)
    return centred


def rbf_kernel(A: Any, B: Any, gamma: float) -> Any:
    """k(a, b) = exp(-gamma ||a - b||^2) between the rows of A (n, p) and B (m, p): (n, m).

    Computed on A's device (B is copied there); squared distances are clipped at 0 against
    rounding.
    """
    xp = get_array_module(A)
    B = xp.asarray(B)
    squared = (A * A).sum(axis=1)[:, None] + (B * B).sum(axis=1)[None, :] - 2 * (A @ B.T)
    return xp.exp(-gamma * xp.maximum(squared, 0))


def nystrom_basis(landmarks: np.ndarray, gamma: float) -> np.ndarray:
    r"""T with phi(f) = k(f, L) T, the Nystrom feature map of the RBF kernel on landmarks L.

    With K_LL = U diag(s) U^T, T = U_+ diag(s_+)^{-1/2} over the eigenvalues above 1e-8 of the
    largest, so that phi(f) . phi(g) = k(f, L) K_LL^+ k(L, g) ~= k(f, g) (Williams and Seeger
    2001), exact on the landmarks.
    """
    values, vectors = np.linalg.eigh(rbf_kernel(landmarks, landmarks, gamma))
    keep = values > 1e-8 * values.max()
    return vectors[:, keep] / np.sqrt(values[keep])


def canonical_pairs(C_aa: np.ndarray, C_bb: np.ndarray, C_ab: np.ndarray, reg_a: float, reg_b: float,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Regularised canonical correlation analysis from the covariances of two views.

    Each view's covariance is regularised by a fraction of its mean eigenvalue,
    C~_aa = C_aa + reg_a tr(C_aa)/p I (likewise for b), and whitened, K_a^T C~_aa K_a = I on its
    directions of non-negligible variance. The SVD K_a^T C_ab K_b = U diag(s) V^T gives the
    projections W_a = K_a U, W_b = K_b V and the canonical correlations s, decreasing.

    Returns
    -------
    W_a : ndarray of shape (p, k)
    W_b : ndarray of shape (q, k)
    s : ndarray of shape (k,)
        k = min(r_a, r_b) pairs, r the directions each view keeps (all of them when reg > 0).
    """
    K_a, K_b = _whitener(C_aa, reg_a), _whitener(C_bb, reg_b)
    U, s, Vt = np.linalg.svd(K_a.T @ C_ab @ K_b, full_matrices=False)
    return K_a @ U, K_b @ Vt.T, s


def _whitener(C: np.ndarray, reg: float) -> np.ndarray:
    r"""K (p x r) with K^T (C + reg tr(C)/p I) K = I_r: the inverse square root of the regularised
    covariance on its r directions of non-negligible variance (all p when reg > 0)."""
    p = C.shape[0]
    values, vectors = np.linalg.eigh(plus_identity(C, reg * np.trace(C) / p))
    keep = values > max(values[-1], 0) * p * np.finfo(np.float64).eps
    return vectors[:, keep] / np.sqrt(values[keep])


def check_shapes(estimator: Any, expected: dict[str, tuple]) -> None:
    """Raise ValueError unless each fitted attribute named in ``expected`` has that shape.

    Used by ``check_loaded`` after a model is read from a file.
    """
    for name, shape in expected.items():
        if not hasattr(estimator, name):
            raise ValueError(f"{name} is missing")
        actual = np.shape(getattr(estimator, name))
        if actual != tuple(shape):
            raise ValueError(f"{name} has shape {actual}, expected {tuple(shape)}")
