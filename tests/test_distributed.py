"""The Dask tree reduction of the sufficient statistics against the streaming numpy pass."""

import sys
import threading
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from tolerance import assert_close

import solvers.distributed
from solvers import (
    ObjectiveTerms,
    bcd,
    random_orthonormal_rows,
    sufficient_stats,
    sufficient_stats_dask,
)

# Uneven row chunks, an empty one included: 300 rows in 7 blocks.
ROW_CHUNKS = (37, 0, 100, 1, 90, 29, 43)
FIELDS = ("A", "B", "C", "f_sum", "x_sum")


@pytest.fixture
def da():
    return pytest.importorskip("dask.array")


def random_data(n=300, p=12, n_words=25, dtype=np.float64, seed=0):
    """F (n, p) of ``dtype`` with a non-zero mean, X a sparse CSR matrix of word weights."""
    rng = np.random.default_rng(seed)
    F = (rng.standard_normal((n, p)) + 0.5).astype(dtype)
    X = sp.random(n, n_words, density=0.2, random_state=seed + 1, format="csr")
    X.data[:] = rng.uniform(0.2, 1.0, X.nnz)
    return F, X


def assert_stats_close(got, expected, rtol):
    assert got.n == expected.n
    for name in FIELDS:
        value = getattr(got, name)
        assert isinstance(value, np.ndarray) and value.dtype == np.float64, name
        assert_close(value, getattr(expected, name), rtol=rtol, err_msg=name)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("x_kind", ["csr", "coo", "dense", "dask"])
def test_dask_reduction_equals_the_numpy_stream(da, dtype, rtol, x_kind):
    F, X = random_data(dtype=dtype)
    x_in = {
        "csr": X,
        "coo": X.tocoo(),
        "dense": X.toarray(),
        "dask": da.from_array(X.toarray(), chunks=(64, 10)),  # other row and column chunks than F's
    }[x_kind]
    stats = sufficient_stats_dask(da.from_array(F, chunks=(ROW_CHUNKS, -1)), x_in, split_every=2)
    assert_stats_close(stats, sufficient_stats(F, X, chunk_size=50), rtol)
    # The float32 features are accumulated in float64: as close as the float64 pass.
    assert_stats_close(stats, sufficient_stats(F.astype(np.float64), X), 1e-12)


@pytest.mark.parametrize("kind, lam", [("l2", 0.01), ("ip", 0.0)])
def test_bcd_from_the_dask_statistics_equals_bcd_from_numpy(da, kind, lam):
    F, X = random_data(n=500, p=20)
    W0 = random_orthonormal_rows(5, 20, 3)
    terms = ObjectiveTerms(kind, lam=lam)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reference = bcd(sufficient_stats(F, X), W0, terms, max_iter=40)
        stats = sufficient_stats_dask(da.from_array(F, chunks=(120, -1)), X)
        result = bcd(stats, W0, terms, max_iter=40)
    assert reference.trace[-1][2] < reference.trace[0][2]  # the fit moved away from W0
    assert result.n_iter == reference.n_iter
    np.testing.assert_allclose(result.W, reference.W, atol=1e-9)
    np.testing.assert_allclose(result.D, reference.D, atol=1e-9)
    assert result.objective == pytest.approx(reference.objective, rel=1e-10)


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_runs_on_the_scheduler_asked_for(da, monkeypatch, scheduler):
    F, X = random_data()
    threads = []
    block_stats = solvers.distributed._block_stats

    def recording(*args):
        threads.append(threading.get_ident())
        return block_stats(*args)

    monkeypatch.setattr(solvers.distributed, "_block_stats", recording)
    stats = sufficient_stats_dask(da.from_array(F, chunks=(ROW_CHUNKS, -1)), X, scheduler=scheduler)
    assert_stats_close(stats, sufficient_stats(F, X), 1e-12)
    assert len(threads) == sum(size > 0 for size in ROW_CHUNKS)
    in_main_thread = {ident == threading.main_thread().ident for ident in threads}
    assert in_main_thread == {scheduler == "synchronous"}


def test_nan_in_f_propagates_as_in_the_numpy_pass(da):
    # sufficient_stats does not refuse NaN; the Dask reduction matches it entry for entry.
    F, X = random_data()
    F[150, 3] = np.nan
    stats = sufficient_stats_dask(da.from_array(F, chunks=(ROW_CHUNKS, -1)), X)
    expected = sufficient_stats(F, X)
    for name in FIELDS:
        got, want = getattr(stats, name), getattr(expected, name)
        assert np.isnan(want).any() == (name in ("A", "B", "f_sum")), name  # C and x_sum need no F
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
        assert_close(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-12)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda da, F, X: (da.from_array(F, chunks=(ROW_CHUNKS, -1)), X[:-1]), ValueError,
         "F has 300 rows but X has 299"),
        (lambda da, F, X: (da.from_array(F, chunks=(100, -1)), da.from_array(X.toarray()[1:])), ValueError,
         "F has 300 rows but X has 299"),
        (lambda da, F, X: (da.from_array(F, chunks=(100, 5)), X), ValueError,
         r"chunked by rows only, got 3 chunks across its 12 columns: use F.rechunk\(\{1: -1\}\)"),
        (lambda da, F, X: (F, X), TypeError, "F must be a dask array, got ndarray"),
        (lambda da, F, X: (da.from_array(F[:, 0], chunks=100), X), ValueError, "must be 2-d"),
        (lambda da, F, X: (da.from_array(F[:0], chunks=(10, -1)), X[:0]), ValueError, "no rows"),
        (lambda da, F, X: (da.from_array(F)[da.from_array(F[:, 0] > 0)], X), ValueError,
         "unknown size: call F.compute_chunk_sizes"),
    ],
)
def test_bad_input_is_a_clear_error(da, make, error, message):
    F, X = random_data()
    with pytest.raises(error, match=message):
        sufficient_stats_dask(*make(da, F, X))


@pytest.mark.parametrize("setting, message", [({"split_every": 1}, "split_every must be at least 2, got 1"),
                                              ({"chunk_size": 0}, "chunk_size must be at least 1, got 0")])
def test_bad_settings_are_refused(da, setting, message):
    F, X = random_data()
    with pytest.raises(ValueError, match=message):
        sufficient_stats_dask(da.from_array(F, chunks=(100, -1)), X, **setting)


def test_missing_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    F, X = random_data()
    with pytest.raises(ImportError, match=r"pip install image2vec\[dist\]"):
        sufficient_stats_dask(F, X)
