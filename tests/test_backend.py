"""Backend helpers shared by the solvers, on numpy (and CuPy under ``-m gpu``)."""

import numpy as np

from solvers.backend import gather_rows, to_numpy


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
