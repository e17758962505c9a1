"""BCD and SGD against closed forms, SciPy references and planted solutions."""

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp

from solvers import (
    bcd,
    d_step,
    incoherence_weights,
    objective,
    polar,
    random_orthonormal_rows,
    sgd,
    streaming_objective,
    sufficient_stats,
    w_step,
)
from solvers.backend import to_numpy


def planted(n=1500, p=30, d=6, n_words=20, noise=0.0, seed=0):
    """F, X with W* f_n = D* x_n (+ noise) for a W* with orthonormal rows."""
    rng = np.random.default_rng(seed)
    w_true = random_orthonormal_rows(d, p, seed + 1)
    d_true = rng.standard_normal((d, n_words))
    X = sp.random(n, n_words, density=0.15, random_state=seed + 2, format="csr")
    X.data[:] = rng.uniform(0.2, 1.0, X.nnz)
    complement = rng.standard_normal((n, p))
    F = (X @ d_true.T) @ w_true + complement - (complement @ w_true.T) @ w_true
    F = F + noise * rng.standard_normal((n, p))
    return F, X, w_true, d_true


def on(xp, stats):
    return stats.to(xp)


def test_sufficient_stats_stream_equals_dense_products():
    F, X, _, _ = planted(n=301)
    stats = sufficient_stats(F, X, chunk_size=64)
    dense = X.toarray()
    np.testing.assert_allclose(stats.A, F.T @ F, rtol=1e-12)
    np.testing.assert_allclose(stats.B, F.T @ dense, rtol=1e-12)
    np.testing.assert_allclose(stats.C, dense.T @ dense, rtol=1e-12)
    assert stats.n == 301


def test_sufficient_stats_from_a_memmap(tmp_path):
    F, X, _, _ = planted(n=200)
    np.save(tmp_path / "F.npy", F)
    mapped = np.load(tmp_path / "F.npy", mmap_mode="r", allow_pickle=False)
    np.testing.assert_allclose(sufficient_stats(mapped, X, chunk_size=50).B, F.T @ X.toarray())


def test_objective_from_stats_equals_direct_sum(xp):
    F, X, _, _ = planted(n=400, noise=0.3)
    rng = np.random.default_rng(3)
    D, W = rng.standard_normal((6, 20)), random_orthonormal_rows(6, 30, 4)
    stats = on(xp, sufficient_stats(F, X))
    direct = 0.5 * ((F @ W.T - X @ D.T) ** 2).sum() / 400 + 0.5 * 0.1 * (D**2).sum()
    value = objective(stats, xp.asarray(D), xp.asarray(W), kind="l2", lam=0.1)
    assert value == pytest.approx(direct, rel=1e-10)
    assert streaming_objective(F, X, xp.asarray(D), xp.asarray(W), lam=0.1, chunk_size=77) == pytest.approx(direct, rel=1e-10)


def test_l2_d_step_is_the_closed_form(xp):
    F, X, _, _ = planted(noise=0.2)
    stats = sufficient_stats(F, X)
    W = random_orthonormal_rows(6, 30, 5)
    lam = 0.05
    reference = scipy.linalg.solve(stats.C + stats.n * lam * np.eye(20), (W @ stats.B).T, assume_a="pos").T
    D = to_numpy(d_step(on(xp, stats), xp.asarray(W), lam=lam))
    np.testing.assert_allclose(D, reference, rtol=1e-9, atol=1e-12)


def test_l2_d_step_with_an_unused_word_and_no_ridge_stays_finite(xp):
    F, X, _, _ = planted()
    X = sp.hstack([X, sp.csr_matrix((X.shape[0], 1))]).tocsr()  # a word no image has
    D = to_numpy(d_step(on(xp, sufficient_stats(F, X)), xp.asarray(random_orthonormal_rows(6, 30, 1))))
    assert np.isfinite(D).all() and np.allclose(D[:, -1], 0)


def test_ip_steps_are_the_closed_forms(xp):
    F, X, _, _ = planted(noise=0.2)
    stats = sufficient_stats(F, X)
    W = random_orthonormal_rows(6, 30, 6)
    D = to_numpy(d_step(on(xp, stats), xp.asarray(W), objective_kind="ip"))
    target = W @ stats.B
    np.testing.assert_allclose(D, target / np.linalg.norm(target, axis=0), rtol=1e-12)
    W_new = to_numpy(w_step(on(xp, stats), xp.asarray(D), xp.asarray(W), objective_kind="ip"))
    reference = scipy.linalg.polar((D @ stats.B.T).T)[0].T  # Procrustes by SciPy's polar factor
    np.testing.assert_allclose(W_new, reference, atol=1e-10)
    np.testing.assert_allclose(W_new @ W_new.T, np.eye(6), atol=1e-12)


def test_polar_is_scipys_polar_factor(xp):
    M = np.random.default_rng(7).standard_normal((5, 12))
    np.testing.assert_allclose(to_numpy(polar(xp.asarray(M))), scipy.linalg.polar(M.T)[0].T, atol=1e-12)


@pytest.mark.parametrize("kind, lam", [("l2", 0.0), ("l2", 0.01), ("ip", 0.0)])
def test_bcd_trace_never_increases(xp, kind, lam):
    F, X, _, _ = planted(noise=0.5)
    result = bcd(on(xp, sufficient_stats(F, X)), xp.asarray(random_orthonormal_rows(6, 30, 8)),
                 objective_kind=kind, lam=lam, max_iter=60)
    values = np.array([value for _, _, value in result.trace])
    assert len(values) > 4
    assert (np.diff(values) <= 1e-12 * np.abs(values[:-1]).max()).all()
    assert values[-1] < values[0]


def test_bcd_recovers_planted_w_and_d_up_to_rotation(xp):
    F, X, w_true, d_true = planted()
    result = bcd(on(xp, sufficient_stats(F, X)), xp.asarray(random_orthonormal_rows(6, 30, 9)),
                 max_iter=500, tol=1e-14)
    W, D = to_numpy(result.W), to_numpy(result.D)
    assert result.objective < 1e-10
    # Rotation-invariant comparisons: W^T W is the projection onto W's row space, D^T D the Gram.
    np.testing.assert_allclose(W.T @ W, w_true.T @ w_true, atol=1e-5)
    np.testing.assert_allclose(D.T @ D, d_true.T @ d_true, atol=1e-4)
    rotation = W @ w_true.T  # W = Q W* for an orthogonal Q
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(6), atol=1e-5)
    np.testing.assert_allclose(D, rotation @ d_true, atol=1e-4)


def test_fixed_w_is_one_exact_d_step(xp):
    F, X, _, _ = planted(noise=0.3)
    stats = sufficient_stats(F, X)
    projection = np.random.default_rng(3).standard_normal((6, 30)) / np.sqrt(6)
    result = bcd(on(xp, stats), xp.asarray(projection), learn_w=False, lam=0.01)
    assert result.converged and result.n_iter == 1
    np.testing.assert_array_equal(to_numpy(result.W), projection)
    np.testing.assert_allclose(to_numpy(result.D), to_numpy(d_step(stats, projection, lam=0.01)))


def test_incoherence_penalty_separates_cooccurring_words(xp):
    F, X, _, _ = planted(noise=0.5, n_words=12)
    X = X.tolil()
    X[:, 1] = X[:, 0]  # words 0 and 1 always appear together
    X = X.tocsr()
    stats = sufficient_stats(F, X)
    weights = incoherence_weights(stats.C)
    assert weights[0, 1] == pytest.approx(1.0) and weights[0, 0] == 0
    W = random_orthonormal_rows(6, 30, 2)
    plain = bcd(on(xp, stats), xp.asarray(W), lam=0.01, max_iter=20)
    penalised = bcd(on(xp, stats), xp.asarray(W), lam=0.01, gamma=1.0, cooccurrence=xp.asarray(weights), max_iter=20)
    values = np.array([value for _, _, value in penalised.trace])
    assert (np.diff(values) <= 1e-12 * np.abs(values).max()).all()

    def cosine(D):
        D = to_numpy(D)
        return abs(D[:, 0] @ D[:, 1]) / np.linalg.norm(D[:, 0]) / np.linalg.norm(D[:, 1])

    assert cosine(penalised.D) < cosine(plain.D) - 0.1


def test_incoherent_column_update_is_stationary():
    F, X, _, _ = planted(noise=0.5, n_words=8)
    stats = sufficient_stats(F, X)
    weights = incoherence_weights(stats.C)
    W = random_orthonormal_rows(6, 30, 2)
    D = d_step(stats, W, lam=0.01, gamma=2.0, cooccurrence=weights)
    last = D.shape[1] - 1  # the last column was minimised with all others at their final values
    step = 1e-6
    for axis in range(D.shape[0]):
        bumped = [D.copy(), D.copy()]
        bumped[0][axis, last] += step
        bumped[1][axis, last] -= step
        up, down = (objective(stats, b, W, lam=0.01, gamma=2.0, cooccurrence=weights) for b in bumped)
        assert abs(up - down) / (2 * step) < 1e-6


@pytest.mark.parametrize("kind, lam", [("l2", 1e-3), ("ip", 0.0)])
def test_sgd_ends_within_one_percent_of_bcd(xp, kind, lam):
    F, X, _, _ = planted(n=3000, p=40, d=8, n_words=30, noise=0.5)
    W0 = random_orthonormal_rows(8, 40, 5)
    best = bcd(on(xp, sufficient_stats(F, X)), xp.asarray(W0), objective_kind=kind, lam=lam, max_iter=2000, tol=1e-13)
    result = sgd(F, X, xp.asarray(W0), objective_kind=kind, lam=lam, n_epochs=60, decay=10 * 3000 / 128,
                 batch_size=128, random_state=0, xp=xp)
    assert abs(result.objective - best.objective) <= 0.01 * abs(best.objective)
    W = to_numpy(result.W)
    np.testing.assert_allclose(W @ W.T, np.eye(8), atol=1e-10)
    if kind == "ip":
        np.testing.assert_allclose(np.linalg.norm(to_numpy(result.D), axis=0), 1, rtol=1e-10)


def test_sgd_streams_a_memmap_and_is_seeded(tmp_path):
    F, X, _, _ = planted(n=500)
    np.save(tmp_path / "F.npy", F)
    mapped = np.load(tmp_path / "F.npy", mmap_mode="r", allow_pickle=False)
    W0 = random_orthonormal_rows(6, 30, 1)
    first = sgd(mapped, X, W0, n_epochs=3, random_state=4)
    again = sgd(F, X, W0, n_epochs=3, random_state=4)
    other = sgd(F, X, W0, n_epochs=3, random_state=5)
    np.testing.assert_array_equal(first.D, again.D)
    assert not np.array_equal(first.D, other.D)
    assert [epoch for epoch, _, _ in first.trace] == [1, 2, 3]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda F, X, W: sgd(F, X[:-1], W), "F has 200 rows but X has 199"),
        (lambda F, X, W: sgd(F, X, W, objective_kind="cosine"), "objective must be one of"),
        (lambda F, X, W: bcd(sufficient_stats(F, X), W, objective_kind="ip", lam=0.1), "apply to the l2 objective only"),
        (lambda F, X, W: bcd(sufficient_stats(F, X), W, gamma=1.0), "needs the cooccurrence matrix"),
        (lambda F, X, W: random_orthonormal_rows(40, 30), "cannot exceed the feature dimension"),
    ],
)
def test_bad_arguments_are_clear_value_errors(call, message):
    F, X, _, _ = planted(n=200)
    with pytest.raises(ValueError, match=message):
        call(F, X, random_orthonormal_rows(6, 30, 0))


def test_centered_stats_equal_stats_of_centered_data():
    F, X, _, _ = planted(n=250, noise=0.3)
    centred_f = F - F.mean(axis=0)
    centred_x = X.toarray() - X.toarray().mean(axis=0)
    parts = sufficient_stats(F[:100], X[:100]) + sufficient_stats(F[100:], X[100:])
    expected = sufficient_stats(centred_f, centred_x)
    got = parts.centered()
    for name in ("A", "B", "C"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), atol=1e-9)
    assert got.n == 250 and np.allclose(got.f_sum, 0)


def test_centred_sgd_approaches_bcd_on_centred_statistics():
    F, X, _, _ = planted(n=2000, noise=0.5)
    F = F + 3.0  # a large mean that only an intercept model can ignore
    W0 = random_orthonormal_rows(6, 30, 5)
    best = bcd(sufficient_stats(F, X).centered(), W0, lam=1e-3, max_iter=2000, tol=1e-13)
    result = sgd(F, X, W0, lam=1e-3, center=True, n_epochs=60, decay=10 * 2000 / 128, batch_size=128, random_state=0)
    assert abs(result.objective - best.objective) <= 0.01 * abs(best.objective)
