"""Small array helpers shared by the systems: feature preprocessing, unit rows, loaded shapes."""

from __future__ import annotations

from typing import Any

import numpy as np

from solvers.backend import get_array_module


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


def check_shapes(estimator: Any, expected: dict[str, tuple]) -> None:
    """Raise ValueError unless each fitted attribute named in ``expected`` has that shape.

    Used by ``check_loaded`` after a model is read from a file.
    """
    for name, shape in expected.items():
        actual = np.shape(getattr(estimator, name))
        if actual != tuple(shape):
            raise ValueError(f"{name} has shape {actual}, expected {tuple(shape)}")
