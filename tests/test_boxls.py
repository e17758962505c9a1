"""Batched box-constrained least squares against SciPy's lsq_linear."""

import numpy as np
import pytest
from scipy.optimize import lsq_linear

from solvers.backend import to_numpy
from solvers.boxls import box_least_squares


def test_matches_scipy_lsq_linear(xp):
    rng = np.random.default_rng(0)
    M = rng.standard_normal((40, 15, 6)) + rng.standard_normal((40, 15, 1))
    y = 2 * rng.standard_normal((40, 15))
    Q = np.einsum("bki,bkj->bij", M, M)
    c = np.einsum("bki,bk->bi", M, y)
    ours = to_numpy(box_least_squares(xp.asarray(Q), xp.asarray(c), tol=1e-13, max_sweeps=5000))
    reference = np.array([lsq_linear(m, t, bounds=(0, 1), tol=1e-12).x for m, t in zip(M, y)])
    at_bounds = ((reference < 1e-9) | (reference > 1 - 1e-9)).mean()
    assert 0.2 < at_bounds < 0.9  # both the bounds and the interior are exercised
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    assert ours.min() >= 0 and ours.max() <= 1


def test_zero_columns_keep_their_start():
    Q = np.zeros((1, 2, 2))
    Q[0, 0, 0] = 2.0
    c = np.array([[1.0, 0.0]])
    a = box_least_squares(Q, c, init=np.array([[0.0, 0.7]]))
    np.testing.assert_allclose(a, [[0.5, 0.7]])


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Q must be \(b, m, m\)"):
        box_least_squares(np.zeros((2, 3, 3)), np.zeros((2, 4)))


def test_no_coordinates_is_an_empty_answer():
    """Problems without coordinates (images without words in the weak-tag A-step)."""
    assert box_least_squares(np.zeros((3, 0, 0)), np.zeros((3, 0))).shape == (3, 0)
