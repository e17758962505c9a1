"""Backend helpers shared by the solvers, on numpy (and CuPy under ``-m gpu``)."""

import numpy as np

from solvers.backend import gather_rows, minus_outer, plus_identity, to_numpy


def test_gather_rows_fills_a_slice_of_a_preallocated_array(xp):
    rng = np.random.default_rng(0)
    source = rng.standard_normal((7, 5))
    indices = np.array([6, 0, 3, 3, 0])  # repeats, both ends of the range
    stacked = xp.full((3, len(indices), 5), np.nan)
    written = gather_rows(xp.asarray(source), xp.asarray(indices), out=stacked[1])
    assert written.base is stacked  # the buffer itself is returned, not a copy
    result = to_numpy(stacked)
    np.testing.assert_array_equal(result[1], source[indices])
    assert np.isnan(result[[0, 2]]).all()  # the neighbouring slices are untouched


def test_plus_identity_and_minus_outer_match_the_explicit_formulas(xp):
    rng = np.random.default_rng(1)
    M = rng.standard_normal((6, 6))
    transposed = xp.asarray(M).T  # not C-contiguous
    shifted = plus_identity(transposed, 0.5)
    np.testing.assert_allclose(to_numpy(shifted), M.T + 0.5 * np.eye(6), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(to_numpy(transposed), M.T)  # the input is left alone
    own = xp.asarray(M.copy())
    assert plus_identity(own, -2.0, in_place=True) is own
    np.testing.assert_allclose(to_numpy(own), M - 2 * np.eye(6), rtol=0, atol=1e-15)
    rect = rng.standard_normal((6, 4))
    u, v = rng.standard_normal(6), rng.standard_normal(4)
    result = minus_outer(xp.asarray(rect), xp.asarray(u), xp.asarray(v))
    np.testing.assert_allclose(to_numpy(result), rect - np.outer(u, v), rtol=0, atol=1e-15)
    # dtypes: an integer M gets a float ridge, float32 vectors do not lower a float64 M
    integer = plus_identity(xp.asarray(np.array([[3, 1], [1, 3]])), 0.5, in_place=True)
    assert integer.dtype == np.float64
    np.testing.assert_array_equal(to_numpy(integer), [[3.5, 1], [1, 3.5]])
    assert plus_identity(xp.asarray(M, dtype=np.float32), 0.5).dtype == np.float32
    mixed = minus_outer(xp.asarray(rect), xp.asarray(u, dtype=np.float32), xp.asarray(v, dtype=np.float32))
    assert mixed.dtype == np.float64
