"""Batched box-constrained least squares (the weak-tag A-step), array-agnostic."""

from __future__ import annotations

from typing import Any

import numpy as np

from solvers.backend import get_array_module


def box_least_squares(
    Q: Any,
    c: Any,
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    init: Any = None,
    max_sweeps: int = 500,
    tol: float = 1e-10,
) -> Any:
    r"""Solve min_{lower <= a <= upper} (1/2) a^T Q a - c^T a for a stack of problems.

    With Q = M^T M and c = M^T y this is min ||M a - y||^2 over the box. Cyclic coordinate
    descent, vectorised over the problems: a_i <- clip(a_i + (c - Q a)_i / Q_ii, lower, upper),
    which converges to the minimiser of this convex problem (Luo & Tseng 1992).

    Parameters
    ----------
    Q : array of shape (b, m, m)
        Symmetric positive semi-definite matrices. A coordinate with Q_ii = 0 stays at its start.
    c : array of shape (b, m)
    lower, upper : float
        The box.
    init : array of shape (b, m), optional
        Starting point (clipped into the box); default the box's lower corner.
    max_sweeps : int
        Maximum passes over the coordinates.
    tol : float
        Stop once no coordinate moved by more than ``tol`` in a sweep.

    Returns
    -------
    array of shape (b, m)
    """
    xp = get_array_module(Q, c)
    if Q.ndim != 3 or Q.shape[1] != Q.shape[2] or c.shape != Q.shape[:2]:
        raise ValueError(f"box_least_squares: Q must be (b, m, m) and c (b, m), got {Q.shape} and {c.shape}")
    if init is None:
        a = xp.full(c.shape, lower, dtype=c.dtype)
    else:  # clip makes a new array, changed in place below
        a = xp.clip(init, lower, upper).astype(c.dtype, copy=False)
    if a.size == 0:
        return a
    diag = xp.diagonal(Q, axis1=1, axis2=2)
    usable = diag > np.finfo(c.dtype).eps * (xp.abs(diag).max() + 1)
    step = xp.where(usable, 1 / xp.where(usable, diag, 1), 0)  # 1 / Q_ii; 0 keeps a_i where it is
    grad = c - (Q @ a[..., None])[..., 0]  # c - Q a, kept current
    for _ in range(max_sweeps):
        before = a.copy()
        for i in range(c.shape[1]):
            delta = xp.clip(a[:, i] + grad[:, i] * step[:, i], lower, upper) - a[:, i]
            a[:, i] += delta
            grad -= delta[:, None] * Q[:, i]  # row i: column i of the symmetric Q, contiguous
        if float(xp.abs(a - before).max()) <= tol:
            break
    return a
