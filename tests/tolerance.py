"""Closeness of floating-point results that another summation order (BLAS threads, chunks, a
cluster's reduction) changes in the last bits: the absolute tolerance scales with the values."""

from __future__ import annotations

import numpy as np


def assert_close(actual, desired, rtol: float = 1e-10, *, err_msg: str = "") -> None:
    """``assert_allclose`` with ``atol = rtol * max|desired|``.

    An entry near zero carries the rounding error of the largest terms summed into it, so a
    relative tolerance alone fails on it by chance; scaled to the largest magnitude it holds for
    any summation order and still catches an error of that relative size anywhere.
    """
    desired = np.asarray(desired)
    scale = float(np.abs(desired).max()) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale, err_msg=err_msg)
