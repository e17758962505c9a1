"""Small array helpers shared by the systems: feature preprocessing, unit rows, loaded shapes."""

from __future__ import annotations

from typing import Any

import numpy as np


def unit_rows(A: np.ndarray) -> np.ndarray:
    """The rows of A scaled to unit Euclidean norm; zero rows stay zero."""
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    return A / np.where(norms > 0, norms, 1)


def preprocess_features(F: Any, mean: np.ndarray, normalize: bool = True) -> np.ndarray:
    """f'_n = (f_n - mu) / ||f_n - mu||, as float64 (N, p): the features every linear system uses.

    Parameters
    ----------
    F : array-like of shape (N, p)
        Raw image features.
    mean : ndarray of shape (p,)
        mu, the training mean of the raw features.
    normalize : bool, default True
        Divide by the norm (an image equal to the mean stays zero); False: only centre.
    """
    centred = np.asarray(F, dtype=np.float64) - mean
    return unit_rows(centred) if normalize else centred


def check_shapes(estimator: Any, expected: dict[str, tuple]) -> None:
    """Raise ValueError unless each fitted attribute named in ``expected`` has that shape.

    Used by ``check_loaded`` after a model is read from a file.
    """
    for name, shape in expected.items():
        actual = np.shape(getattr(estimator, name))
        if actual != tuple(shape):
            raise ValueError(f"{name} has shape {actual}, expected {tuple(shape)}")
