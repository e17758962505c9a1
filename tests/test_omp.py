"""Batched OMP against scikit-learn's orthogonal_mp, SciPy's nnls and planted sparse signals."""

import warnings

import numpy as np
import pytest
from scipy.optimize import nnls
from sklearn.linear_model import orthogonal_mp, orthogonal_mp_gram
from tolerance import assert_close

from solvers import omp
from solvers.backend import to_numpy


def unit_dictionary(rng, d, n_atoms, dtype=np.float64):
    atoms = rng.standard_normal((d, n_atoms))
    return (atoms / np.linalg.norm(atoms, axis=0)).astype(dtype)


def sklearn_codes(D, Y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # its "premature stop" warning
        return orthogonal_mp(D, Y.T, **kwargs).T.reshape(Y.shape[0], D.shape[1])


def sklearn_order(D, y, k):
    """The atoms sklearn's OMP path selects for one signal, in selection order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        path = orthogonal_mp(D, y, n_nonzero_coefs=k, return_path=True).reshape(D.shape[1], -1)
    chosen = np.flatnonzero((path != 0).any(axis=1))
    first_step = (path[chosen] != 0).argmax(axis=1)
    return chosen[np.argsort(first_step, kind="stable")]


@pytest.mark.parametrize(
    "d, n_atoms, n, k",
    [(16, 40, 25, 1), (20, 50, 30, 3), (64, 256, 120, 8), (32, 32, 20, 12)],
)
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-6), (np.float32, 1e-3)])
def test_matches_sklearn_fixed_k(xp, d, n_atoms, n, k, dtype, rtol):
    rng = np.random.default_rng(d * n_atoms + k)
    D = unit_dictionary(rng, d, n_atoms, dtype)
    Y = rng.standard_normal((n, d)).astype(dtype)
    code = omp(xp.asarray(D), xp.asarray(Y), k)
    ours, ref = to_numpy(code.toarray()), sklearn_codes(D, Y, n_nonzero_coefs=k)
    assert code.coefs.dtype == dtype
    np.testing.assert_array_equal(ours != 0, ref != 0)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    # Selection order: each step's atom is the one sklearn's path adds at that step.
    indices = to_numpy(code.indices)
    for row in range(n):
        np.testing.assert_array_equal(indices[row], sklearn_order(D, Y[row], k), err_msg=f"row {row}")


@pytest.mark.parametrize("tol", [0.2, 1.0, 5.0])
def test_matches_sklearn_with_tol(xp, tol):
    rng = np.random.default_rng(7)
    D = unit_dictionary(rng, 40, 120)
    Y = rng.standard_normal((60, 40))
    code = omp(xp.asarray(D), xp.asarray(Y), None, tol=tol)
    ours, ref = to_numpy(code.toarray()), sklearn_codes(D, Y, tol=tol)
    np.testing.assert_array_equal(ours != 0, ref != 0)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)
    residual = ((Y - ours @ D.T) ** 2).sum(axis=1)
    assert (residual <= tol + 1e-9).all()
    assert (to_numpy(code.coefs)[to_numpy(code.indices) < 0] == 0).all()  # stopped: zero padding
    assert len(set(to_numpy(code.n_nonzero).tolist())) > 1  # supports really differ in size


def test_tol_and_k_together_stop_at_whichever_comes_first(xp):
    rng = np.random.default_rng(8)
    D = unit_dictionary(rng, 30, 90)
    Y = rng.standard_normal((50, 30))
    by_tol = to_numpy(omp(xp.asarray(D), xp.asarray(Y), None, tol=2.0).n_nonzero)
    both = to_numpy(omp(xp.asarray(D), xp.asarray(Y), 6, tol=2.0).n_nonzero)
    np.testing.assert_array_equal(both, np.minimum(by_tol, 6))


def test_tol_above_the_signal_norm_still_selects_one_atom_like_sklearn(xp):
    """sklearn checks tol only after adding an atom: ||y||^2 <= tol still gets one atom."""
    from solvers import omp_gram

    rng = np.random.default_rng(17)
    tol = 1.0
    D = unit_dictionary(rng, 20, 50)
    Y = rng.standard_normal((40, 20))
    Y *= np.sqrt(rng.uniform(0.05, 3.0, 40) / (Y**2).sum(axis=1))[:, None]  # ||y||^2 in (0.05, 3)
    Y[0] = 0
    y_sq = (Y**2).sum(axis=1)
    below = (y_sq > 0) & (y_sq <= tol)
    assert 5 < below.sum() < 35  # a mix of signals below and above tol
    ref = sklearn_codes(D, Y, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the zero signal's "premature stop"
        ref_gram = orthogonal_mp_gram(D.T @ D, D.T @ Y.T, tol=tol, norms_squared=y_sq).T
    np.testing.assert_array_equal(ref != 0, ref_gram != 0)
    np.testing.assert_array_equal((ref != 0).sum(axis=1)[below], 1)
    codes = {
        "omp": omp(xp.asarray(D), xp.asarray(Y), None, tol=tol),
        "omp with gram": omp(xp.asarray(D), xp.asarray(Y), None, tol=tol, gram=xp.asarray(D.T @ D)),
        "omp_gram": omp_gram(xp.asarray(D.T @ D), xp.asarray(Y @ D), xp.asarray(y_sq), None, tol=tol),
    }
    for name, code in codes.items():
        ours = to_numpy(code.toarray())
        np.testing.assert_array_equal(ours != 0, ref != 0, err_msg=name)
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9, err_msg=name)
        assert (to_numpy(code.indices)[0] == -1).all(), name  # the zero signal stays empty


def test_recovers_planted_sparse_signals(xp):
    rng = np.random.default_rng(1)
    d, n_atoms, n, k = 128, 512, 200, 5
    D = unit_dictionary(rng, d, n_atoms)
    X = np.zeros((n, n_atoms))
    for row in X:
        row[rng.choice(n_atoms, k, replace=False)] = rng.uniform(1, 2, k) * rng.choice([-1, 1], k)
    code = omp(xp.asarray(D), xp.asarray(X @ D.T), k)
    np.testing.assert_allclose(to_numpy(code.toarray()), X, atol=1e-10)


@pytest.mark.parametrize("d, n_atoms, n, common", [(30, 100, 80, 0.0), (6, 20, 300, 1.0)])
def test_nonneg_matches_nnls_and_is_nonnegative(xp, d, n_atoms, n, common):
    """Atoms with a common component (common > 0) make least squares on the support go
    negative for some signals: those take the NNLS branch, the others the least-squares one."""
    rng = np.random.default_rng(2)
    atoms = rng.standard_normal((d, n_atoms)) + common * rng.standard_normal((d, 1))
    D = atoms / np.linalg.norm(atoms, axis=0)
    Y = rng.standard_normal((n, d))
    code = omp(xp.asarray(D), xp.asarray(Y), 6, nonneg=True)
    indices, coefs = to_numpy(code.indices), to_numpy(code.coefs)
    assert (coefs >= 0).all()
    if common:
        assert 10 < ((coefs == 0) & (indices >= 0)).any(axis=1).sum() < n / 2  # NNLS bounds active
    for row in range(Y.shape[0]):
        support = indices[row][indices[row] >= 0]
        if not support.size:  # scipy's nnls cannot take an empty matrix
            continue
        reference, _ = nnls(D[:, support], Y[row])
        np.testing.assert_allclose(coefs[row, : len(support)], reference, atol=1e-10)
    # Each chosen atom had the largest correlation with the residual when chosen, and it was
    # positive; the residual of step j is that of the NNLS fit on the first j atoms.
    for row in range(Y.shape[0]):
        for step, atom in enumerate(indices[row][indices[row] >= 0]):
            earlier = indices[row, :step]
            fit = nnls(D[:, earlier], Y[row])[0] if step else np.zeros(0)
            corr = D.T @ (Y[row] - D[:, earlier] @ fit)
            corr[earlier] = -np.inf
            assert corr[atom] > 0, (row, step)
            np.testing.assert_allclose(corr[atom], corr.max(), rtol=1e-9, err_msg=f"row {row} step {step}")


def test_nonneg_differs_from_plain_when_correlations_are_negative(xp):
    rng = np.random.default_rng(3)
    D = unit_dictionary(rng, 20, 60)
    Y = -D[:, :1].T * 3  # the best atom has a strongly negative correlation
    plain = to_numpy(omp(xp.asarray(D), xp.asarray(Y), 1).indices)
    positive = to_numpy(omp(xp.asarray(D), xp.asarray(Y), 1, nonneg=True).indices)
    assert plain[0, 0] == 0 and positive[0, 0] != 0


def test_nonneg_recovers_planted_nonnegative_signals(xp):
    rng = np.random.default_rng(4)
    d, n_atoms, n, k = 128, 400, 150, 4
    D = unit_dictionary(rng, d, n_atoms)
    X = np.zeros((n, n_atoms))
    for row in X:
        row[rng.choice(n_atoms, k, replace=False)] = rng.uniform(0.5, 2, k)
    code = omp(xp.asarray(D), xp.asarray(X @ D.T), k, nonneg=True)
    np.testing.assert_allclose(to_numpy(code.toarray()), X, atol=1e-10)


def test_non_unit_atoms_select_by_normalised_correlation(xp):
    rng = np.random.default_rng(5)
    D = unit_dictionary(rng, 25, 70)
    scales = rng.uniform(0.1, 10, 70)
    Y = rng.standard_normal((40, 25))
    scaled = to_numpy(omp(xp.asarray(D * scales), xp.asarray(Y), 4).toarray())
    unit = sklearn_codes(D, Y, n_nonzero_coefs=4)
    np.testing.assert_allclose(scaled * scales, unit, rtol=1e-9, atol=1e-12)


def test_precomputed_gram_gives_the_same_code(xp):
    rng = np.random.default_rng(6)
    D = unit_dictionary(rng, 25, 70)
    Y = rng.standard_normal((40, 25))
    direct = omp(xp.asarray(D), xp.asarray(Y), 4)
    with_gram = omp(xp.asarray(D), xp.asarray(Y), 4, gram=xp.asarray(D.T @ D))
    np.testing.assert_array_equal(to_numpy(direct.indices), to_numpy(with_gram.indices))
    np.testing.assert_allclose(to_numpy(direct.coefs), to_numpy(with_gram.coefs), rtol=1e-10, atol=1e-12)


def test_blocks_and_threads_do_not_change_the_result(xp):
    rng = np.random.default_rng(9)
    D = unit_dictionary(rng, 32, 128)
    Y = rng.standard_normal((101, 32))
    whole = omp(xp.asarray(D), xp.asarray(Y), 5)
    pieces = omp(xp.asarray(D), xp.asarray(Y), 5, batch_size=7, n_jobs=2)
    np.testing.assert_array_equal(to_numpy(whole.indices), to_numpy(pieces.indices))
    assert_close(to_numpy(whole.coefs), to_numpy(pieces.coefs), rtol=1e-12)


def test_k_larger_than_dimension_stops_at_an_exact_fit(xp):
    rng = np.random.default_rng(10)
    D = unit_dictionary(rng, 8, 30)
    Y = rng.standard_normal((12, 8))
    code = omp(xp.asarray(D), xp.asarray(Y), 20)
    dense = to_numpy(code.toarray())
    assert np.isfinite(dense).all()
    assert (to_numpy(code.n_nonzero) <= 8).all()
    np.testing.assert_allclose(dense @ D.T, Y, atol=1e-9)


def test_zero_signals_get_empty_codes(xp):
    rng = np.random.default_rng(11)
    D = unit_dictionary(rng, 10, 20)
    Y = np.vstack([np.zeros(10), rng.standard_normal(10)])
    code = omp(xp.asarray(D), xp.asarray(Y), 3)
    assert (to_numpy(code.indices)[0] == -1).all() and (to_numpy(code.coefs)[0] == 0).all()
    assert (to_numpy(code.indices)[1] >= 0).all()


def test_duplicate_atoms_stop_without_nan(xp):
    rng = np.random.default_rng(12)
    base = unit_dictionary(rng, 6, 4)
    D = np.hstack([base, base])  # every atom twice: rank 4
    Y = rng.standard_normal((10, 6))
    code = omp(xp.asarray(D), xp.asarray(Y), 8)
    indices = to_numpy(code.indices)
    assert np.isfinite(to_numpy(code.coefs)).all()
    for row in indices:
        chosen = row[row >= 0]
        assert len(chosen) <= 4 and len(set(chosen % 4)) == len(chosen)
    assert (to_numpy(code.coefs)[indices < 0] == 0).all()


def test_zero_atom_is_never_chosen(xp):
    rng = np.random.default_rng(13)
    D = unit_dictionary(rng, 10, 15)
    D[:, 3] = 0
    code = omp(xp.asarray(D), xp.asarray(rng.standard_normal((20, 10))), 10)
    assert not (to_numpy(code.indices) == 3).any()
    assert np.isfinite(to_numpy(code.coefs)).all()


@pytest.mark.parametrize(
    "D, Y, k, kwargs, message",
    [
        (np.ones((4, 6)), np.full((2, 4), np.nan), 2, {}, "Y contains NaN"),
        (np.full((4, 6), np.inf), np.ones((2, 4)), 2, {}, "D contains NaN or infinite"),
        (np.ones((4, 6)), np.ones((2, 5)), 2, {}, r"Y must have shape \(N, 4\)"),
        (np.ones(4), np.ones((2, 4)), 2, {}, "D must be 2-d"),
        (np.ones((4, 6)), np.ones((2, 4)), 0, {}, "n_nonzero_coefs must be >= 1"),
        (np.ones((4, 6)), np.ones((2, 4)), 2.5, {}, "must be an integer"),
        (np.ones((4, 6)), np.ones((2, 4)), None, {}, "give n_nonzero_coefs, tol"),
        (np.ones((4, 6)), np.ones((2, 4)), 2, {"tol": -1.0}, "tol must be >= 0"),
        (np.ones((4, 6)), np.ones((2, 4)), 2, {"gram": np.ones((5, 5))}, "gram must have shape"),
    ],
)
def test_bad_input_is_a_clear_value_error(xp, D, Y, k, kwargs, message):
    kwargs = {key: xp.asarray(v) if isinstance(v, np.ndarray) else v for key, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        omp(xp.asarray(D), xp.asarray(Y), k, **kwargs)


def test_single_signal_as_vector(xp):
    rng = np.random.default_rng(14)
    D = unit_dictionary(rng, 10, 20)
    y = rng.standard_normal(10)
    code = omp(xp.asarray(D), xp.asarray(y), 2)
    assert code.indices.shape == (1, 2)
    assert_close(to_numpy(code.toarray())[0], sklearn_codes(D, y[None], n_nonzero_coefs=2)[0], rtol=1e-7)


def test_nnls_gram_matches_scipy_nnls_with_active_bounds(xp):
    from solvers import nnls_gram

    rng = np.random.default_rng(15)
    atoms = rng.standard_normal((50, 12, 8)) + 1.5 * rng.standard_normal((50, 12, 1))  # correlated
    signals = rng.standard_normal((50, 12))
    gram = np.einsum("bdi,bdj->bij", atoms, atoms)
    target = np.einsum("bdi,bd->bi", atoms, signals)
    ours = to_numpy(nnls_gram(xp.asarray(gram), xp.asarray(target)))
    reference = np.array([nnls(a, y)[0] for a, y in zip(atoms, signals)])
    assert (reference == 0).sum() > 50  # many bounds are active: the active set really works
    np.testing.assert_allclose(ours, reference, atol=1e-9)
    warm = to_numpy(nnls_gram(xp.asarray(gram), xp.asarray(target), init=xp.asarray(np.abs(reference) + 0.1)))
    np.testing.assert_allclose(warm, reference, atol=1e-9)


def test_omp_gram_equals_omp_on_stacked_atoms(xp):
    """The regularised read-out: OMP over [d_v; sqrt(mu) e_v] from G + mu I and D^T y + mu x0."""
    from solvers import omp_gram

    rng = np.random.default_rng(16)
    D = unit_dictionary(rng, 20, 30) * rng.uniform(0.5, 2, 30)
    Y = rng.standard_normal((25, 20))
    prior, mu = rng.uniform(0, 1, 30), 0.3
    stacked = np.vstack([D, np.sqrt(mu) * np.eye(30)])
    signals = np.hstack([Y, np.sqrt(mu) * np.tile(prior, (25, 1))])
    direct = omp(xp.asarray(stacked), xp.asarray(signals), 4, nonneg=True)
    gram_form = omp_gram(xp.asarray(D.T @ D + mu * np.eye(30)), xp.asarray(Y @ D + mu * prior),
                         xp.asarray((signals**2).sum(axis=1)), 4, nonneg=True)
    np.testing.assert_array_equal(to_numpy(direct.indices), to_numpy(gram_form.indices))
    assert_close(to_numpy(direct.coefs), to_numpy(gram_form.coefs), rtol=1e-10)
    with pytest.raises(ValueError, match="omp_gram: need gram"):
        omp_gram(xp.asarray(D.T @ D), xp.asarray(Y @ D)[:, :5], xp.asarray(np.ones(25)), 2)
