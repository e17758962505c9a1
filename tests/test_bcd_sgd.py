"""BCD, the closed forms and SGD against closed forms, SciPy/NumPy references and planted solutions."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from tolerance import assert_close

from solvers import (
    ObjectiveRecord,
    ObjectiveTerms,
    bcd,
    closed_form,
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
from solvers.tag_weights import TagWeightStep

L2 = ObjectiveTerms("l2")
IP = ObjectiveTerms("ip")


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


def values_of(result):
    return np.array([value for _, _, value in result.trace])


def two_words_an_image(n, n_words, seed):
    rng = np.random.default_rng(seed)
    cols = np.concatenate([rng.choice(n_words, 2, replace=False) for _ in range(n)])
    return sp.csr_matrix((rng.uniform(0.2, 1, 2 * n), cols, np.arange(0, 2 * n + 1, 2)), shape=(n, n_words))


@pytest.mark.parametrize("cooccurrence", ["dense", "sparse", "turns dense"])
def test_sufficient_stats_stream_equals_dense_products(cooccurrence):
    """Summed over chunks of 64 rows, whether X^T X is dense in every chunk, stays sparse, or is
    sparse in each chunk but fills up over them (a dense total updated at a part's non-zeros)."""
    F, X, _, _ = planted(n=301)  # 20 words, 3 an image: every chunk's X^T X is dense
    if cooccurrence == "sparse":  # 2 words an image among 400
        X = two_words_an_image(301, 400, 5)
        assert (X.T @ X).nnz < 0.25 * 400**2
    elif cooccurrence == "turns dense":  # 2 among 40: a chunk fills 10%, four 31%
        X = two_words_an_image(301, 40, 5)
        assert (X[:64].T @ X[:64]).nnz < 0.25 * 40**2 < (X[:256].T @ X[:256]).nnz
    else:
        assert (X[:64].T @ X[:64]).nnz > 0.25 * 20**2
    stats = sufficient_stats(F, X, chunk_size=64)
    assert all(type(m) is np.ndarray for m in (stats.A, stats.B, stats.C))  # no np.matrix
    dense = X.toarray()
    assert_close(stats.A, F.T @ F, rtol=1e-12)
    assert_close(stats.B, F.T @ dense, rtol=1e-12)
    assert_close(stats.C, dense.T @ dense, rtol=1e-12)
    assert stats.n == 301


def test_sufficient_stats_from_a_memmap(tmp_path):
    F, X, _, _ = planted(n=200)
    np.save(tmp_path / "F.npy", F)
    mapped = np.load(tmp_path / "F.npy", mmap_mode="r", allow_pickle=False)
    assert_close(sufficient_stats(mapped, X, chunk_size=50).B, F.T @ X.toarray(), rtol=1e-12)


def _resident_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set from /proc")
def test_a_pass_over_a_mapped_file_keeps_about_one_chunk_resident(tmp_path):
    """128 MB of memory-mapped features: the pass holds a chunk of them, not the whole file."""
    n, p = 32_768, 512
    mapped = np.lib.format.open_memmap(tmp_path / "F.npy", mode="w+", dtype=np.float64, shape=(n, p))
    mapped[:] = 1.0
    mapped.flush()
    del mapped
    F = np.load(tmp_path / "F.npy", mmap_mode="r", allow_pickle=False)
    X = sp.csr_matrix((n, 3))
    before = _resident_kb()
    stats = sufficient_stats(F, X, chunk_size=1024)
    grown_mb = (_resident_kb() - before) / 1024
    assert stats.f_sum[0] == n
    assert grown_mb < 32, f"the pass left {grown_mb:.0f} MB of the 128 MB file resident"


def test_a_pass_keeps_the_changes_of_a_copy_on_write_mapping(tmp_path):
    F, X, _, _ = planted(n=200)
    np.save(tmp_path / "F.npy", F)
    mapped = np.load(tmp_path / "F.npy", mmap_mode="c", allow_pickle=False)
    mapped[:] = 2 * F  # changes held by this process only: releasing its pages would lose them
    first = sufficient_stats(mapped, X, chunk_size=50)
    np.testing.assert_array_equal(mapped, 2 * F)
    assert_close(first.B, 2 * F.T @ X.toarray(), rtol=1e-12)
    # Dask tasks must not read such a mapping's rows back from its (unchanged) file.
    from solvers.distributed import as_row_chunks, sufficient_stats_dask

    tasks = sufficient_stats_dask(as_row_chunks(mapped, 50), X, scheduler="sync")
    assert_close(tasks.B, 2 * F.T @ X.toarray(), rtol=1e-12)


def test_float32_statistics_of_features_with_a_large_mean_stay_accurate():
    """float32 features whose mean is 100x their spread: the centred scatter is exact to float64."""
    rng = np.random.default_rng(0)
    F = (100.0 + rng.standard_normal((20_000, 8))).astype(np.float32)
    X = sp.random(20_000, 3, density=0.3, random_state=1, format="csr")
    centred = sufficient_stats(F, X, chunk_size=4096).centered()
    exact = F.astype(np.float64) - F.astype(np.float64).mean(axis=0)
    reference = exact.T @ exact
    assert centred.A.dtype == np.float64
    assert np.abs(centred.A - reference).max() / np.abs(reference).max() < 1e-10


def test_objective_from_stats_equals_direct_sum(xp):
    F, X, _, _ = planted(n=400, noise=0.3)
    rng = np.random.default_rng(3)
    D, W = rng.standard_normal((6, 20)), random_orthonormal_rows(6, 30, 4)
    stats = on(xp, sufficient_stats(F, X))
    direct = 0.5 * ((F @ W.T - X @ D.T) ** 2).sum() / 400 + 0.5 * 0.1 * (D**2).sum()
    terms = ObjectiveTerms("l2", lam=0.1)
    assert objective(stats, xp.asarray(D), xp.asarray(W), terms) == pytest.approx(direct, rel=1e-10)
    streamed = streaming_objective(F, X, xp.asarray(D), xp.asarray(W), terms, chunk_size=77)
    assert streamed == pytest.approx(direct, rel=1e-10)


def test_objective_record_reuses_only_what_a_step_left_unchanged(xp):
    """The record after D-, W- and sample-like steps equals the direct sum each time: a cached
    trace is used while its arrays are the same, and recomputed when D, W or C change."""
    F, X, _, _ = planted(n=400, noise=0.3)
    rng = np.random.default_rng(7)
    terms = ObjectiveTerms("l2", lam=0.1)
    record = ObjectiveRecord(terms)

    def direct(D, W, X):
        return 0.5 * ((F @ W.T - X @ D.T) ** 2).sum() / 400 + 0.5 * 0.1 * (D**2).sum()

    stats = on(xp, sufficient_stats(F, X))
    D, W = rng.standard_normal((6, 20)), random_orthonormal_rows(6, 30, 4)
    assert record(stats, xp.asarray(D), xp.asarray(W)) == pytest.approx(direct(D, W, X), rel=1e-10)
    W_xp = xp.asarray(W)
    D2 = rng.standard_normal((6, 20))  # a D-step: W kept, its product W B given
    value = record(stats, xp.asarray(D2), W_xp, W_B=W_xp @ stats.B)
    assert value == pytest.approx(direct(D2, W, X), rel=1e-10)
    D2_xp = xp.asarray(D2)
    W2 = random_orthonormal_rows(6, 30, 8)  # a W-step: D kept, D B^T given
    value = record(stats, D2_xp, xp.asarray(W2), D_Bt=D2_xp @ stats.B.T)
    assert value == pytest.approx(direct(D2, W2, X), rel=1e-10)
    reweighted = X.multiply(rng.uniform(0, 1, X.shape)).tocsr()  # a sample step: new B and C, same A
    new = on(xp, sufficient_stats(F, reweighted))
    new = type(new)(stats.A, new.B, new.C, new.n, new.f_sum, new.x_sum)
    assert record(new, D2_xp, xp.asarray(W2)) == pytest.approx(direct(D2, W2, reweighted), rel=1e-10)


def test_words_objective_is_the_decoding_residual(xp):
    """Under D D^T = I, J = (1/2N) sum ||x_n - D^T W f_n||^2 + (lam/2) ||W||^2, from the statistics."""
    F, X, _, _ = planted(n=400, noise=0.3)
    rng = np.random.default_rng(5)
    D, W = random_orthonormal_rows(6, 20, 6), rng.standard_normal((6, 30))
    terms = ObjectiveTerms("l2", "words", lam=0.2)
    direct = 0.5 * ((X.toarray() - F @ W.T @ D) ** 2).sum() / 400 + 0.5 * 0.2 * (W**2).sum()
    stats = on(xp, sufficient_stats(F, X))
    assert objective(stats, xp.asarray(D), xp.asarray(W), terms) == pytest.approx(direct, rel=1e-10)
    assert streaming_objective(F, X, xp.asarray(D), xp.asarray(W), terms) == pytest.approx(direct, rel=1e-10)


def test_l2_d_step_is_the_closed_form(xp):
    F, X, _, _ = planted(noise=0.2)
    stats = sufficient_stats(F, X)
    W = random_orthonormal_rows(6, 30, 5)
    lam = 0.05
    reference = scipy.linalg.solve(stats.C + stats.n * lam * np.eye(20), (W @ stats.B).T, assume_a="pos").T
    D = to_numpy(d_step(on(xp, stats), xp.asarray(W), ObjectiveTerms("l2", lam=lam)))
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
    D = to_numpy(d_step(on(xp, stats), xp.asarray(W), IP))
    target = W @ stats.B
    assert_close(D, target / np.linalg.norm(target, axis=0), rtol=1e-12)
    W_new = to_numpy(w_step(on(xp, stats), xp.asarray(D), xp.asarray(W), IP))
    reference = scipy.linalg.polar((D @ stats.B.T).T)[0].T  # Procrustes by SciPy's polar factor
    np.testing.assert_allclose(W_new, reference, atol=1e-10)
    np.testing.assert_allclose(W_new @ W_new.T, np.eye(6), atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 12), (6, 400)])
def test_polar_is_scipys_polar_factor(xp, shape):
    M = np.random.default_rng(7).standard_normal(shape)
    np.testing.assert_allclose(to_numpy(polar(xp.asarray(M))), scipy.linalg.polar(M.T)[0].T, atol=1e-12)


def test_polar_of_a_rank_deficient_matrix_still_has_orthonormal_rows():
    M = np.random.default_rng(8).standard_normal((4, 20))
    M[3] = M[2]  # singular: the Gram route cannot invert it, the SVD route takes over
    P = polar(M)
    np.testing.assert_allclose(P @ P.T, np.eye(4), atol=1e-12)


@pytest.mark.parametrize("terms", [L2, ObjectiveTerms("l2", lam=0.01), IP, ObjectiveTerms("l2", "words", lam=0.01)])
def test_bcd_trace_never_increases(xp, terms):
    F, X, _, _ = planted(noise=0.5)
    W0 = random_orthonormal_rows(6, 30, 8)
    if terms.words_orthonormal:
        W0 = W0 * 0.1  # any W is feasible; D D^T = I comes from the first D-step
    result = bcd(on(xp, sufficient_stats(F, X)), xp.asarray(W0), terms, max_iter=60, w_substeps=2)
    values = values_of(result)
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


def test_l2_closed_form_is_the_minimum_bcd_reaches(xp):
    """The residual-scatter eigenvectors give a J that BCD from random starts never beats."""
    F, X, _, _ = planted(n=800, p=12, d=3, n_words=8, noise=1.0)
    stats = on(xp, sufficient_stats(F, X).centered())
    terms = ObjectiveTerms("l2", lam=0.01)
    exact = closed_form(stats, 3, terms)
    assert exact.converged
    np.testing.assert_allclose(to_numpy(exact.W @ exact.W.T), np.eye(3), atol=1e-10)
    for seed in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            descent = bcd(stats, xp.asarray(random_orthonormal_rows(3, 12, seed)), terms, max_iter=3000, tol=1e-15)
        assert descent.objective >= exact.objective - 1e-9 * abs(exact.objective)
        assert descent.objective <= exact.objective + 1e-4 * abs(exact.objective)
    # Started at the minimiser, BCD stops after two sweeps that change nothing.
    again = bcd(stats, exact.W, terms, D=exact.D)
    assert again.converged and again.n_iter == 2
    assert again.objective == pytest.approx(exact.objective, rel=1e-10)


def test_bcd_from_an_exact_start_begins_each_sweep_with_the_sample_step(xp):
    """A weak-tag style run (the A-step of solvers.tag_weights as the sample block) started at the
    closed form: the sweeps are (sample, D, W), J never increases, the last D- and W-steps ran on (and J
    is measured with) the statistics of the last sample step, and J ends where the (D, W, sample) order from
    the same start ends."""
    F, X, _, _ = planted(n=400, noise=0.5)
    X = X.tocsr()
    F = F - F.mean(axis=0)
    stats = on(xp, sufficient_stats(F, X).centered())
    terms = ObjectiveTerms("l2", lam=0.01)
    exact = closed_form(stats, 6, terms)
    assert exact.converged

    def run(start_exact):
        step = TagWeightStep(F, X, xp.asarray, np.zeros(F.shape[1]), "l2", xp)
        seen = []

        def sample(D, W):
            seen.append(step(D, W, scatter=stats.A))
            return seen[-1]

        result = bcd(stats, exact.W, terms, D=exact.D, sample_step=sample, max_iter=200, tol=1e-12,
                     start_exact=start_exact)
        return result, seen[-1]

    result, last = run(True)
    blocks = [block for _, block, _ in result.trace]
    assert blocks[:4] == ["sample", "D", "W", "sample"] and blocks[-1] == "W"
    values = values_of(result)
    assert (np.diff(values) <= 1e-12 * np.abs(values).max()).all()
    assert values[0] < exact.objective  # the first A-step already lowers J
    assert objective(last, result.D, result.W, terms) == pytest.approx(result.objective, rel=1e-10)
    other, _ = run(False)
    assert [block for _, block, _ in other.trace][:3] == ["D", "W", "sample"]
    assert result.objective == pytest.approx(other.objective, rel=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_reduced_rank_closed_form_is_reduced_rank_ridge(lam):
    """D^T W equals the rank-d reduced-rank ridge solution built from NumPy's SVD of augmented data."""
    F, X, _, _ = planted(n=500, p=15, d=4, n_words=10, noise=0.5)
    Xd = X.toarray()
    n, p = F.shape
    stats = sufficient_stats(F, X)
    result = closed_form(stats, 4, ObjectiveTerms("l2", "words", lam=lam))
    # Mukherjee and Zhu 2011: B_ridge on augmented rows [F; sqrt(N lam) I], then project onto
    # the top right singular vectors of the augmented fitted values.
    augmented = np.vstack([F, np.sqrt(n * lam) * np.eye(p)])
    ridge = np.linalg.lstsq(augmented, np.vstack([Xd, np.zeros((p, 10))]), rcond=None)[0]
    _, _, vt = np.linalg.svd(augmented @ ridge, full_matrices=False)
    reference = ridge @ vt[:4].T @ vt[:4]
    D, W = result.D, result.W
    np.testing.assert_allclose(D @ D.T, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(W.T @ D, reference, atol=1e-8)
    assert result.converged
    # The minimum read from the singular values is J evaluated at (D, W).
    terms = ObjectiveTerms("l2", "words", lam=lam)
    assert result.objective == pytest.approx(objective(stats, D, W, terms), rel=1e-10)


def test_pls_closed_form_is_the_top_singular_pair_of_the_cross_covariance():
    F, X, _, _ = planted(n=500, p=15, d=4, n_words=10, noise=0.5)
    stats = sufficient_stats(F, X)
    result = closed_form(stats, 3, ObjectiveTerms("ip", "words"))
    u, s, vt = np.linalg.svd(stats.B)
    np.testing.assert_allclose(result.W.T @ result.W, u[:, :3] @ u[:, :3].T, atol=1e-9)
    np.testing.assert_allclose(result.D.T @ result.D, vt[:3].T @ vt[:3], atol=1e-9)
    assert result.objective == pytest.approx(-s[:3].sum() / stats.n, rel=1e-10)
    terms = ObjectiveTerms("ip", "words")
    assert result.objective == pytest.approx(objective(stats, result.D, result.W, terms), rel=1e-10)


def test_fixed_w_is_one_exact_d_step(xp):
    F, X, _, _ = planted(noise=0.3)
    stats = sufficient_stats(F, X)
    projection = np.random.default_rng(3).standard_normal((6, 30)) / np.sqrt(6)
    terms = ObjectiveTerms("l2", lam=0.01)
    result = bcd(on(xp, stats), xp.asarray(projection), terms, learn_w=False)
    assert result.converged and result.n_iter == 1
    np.testing.assert_array_equal(to_numpy(result.W), projection)
    assert_close(to_numpy(result.D), to_numpy(d_step(stats, projection, terms)), rtol=1e-7)


def test_bcd_that_runs_out_of_sweeps_says_so():
    F, X, _, _ = planted(noise=0.5)
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter=2"):
        result = bcd(sufficient_stats(F, X), random_orthonormal_rows(6, 30, 1), L2, max_iter=2)
    assert not result.converged and result.n_iter == 2


def test_incoherence_penalty_separates_cooccurring_words(xp):
    F, X, _, _ = planted(noise=0.5, n_words=12)
    X = X.tolil()
    X[:, 1] = X[:, 0]  # words 0 and 1 always appear together
    X = X.tocsr()
    stats = sufficient_stats(F, X)
    weights = incoherence_weights(stats.C)
    assert weights[0, 1] == pytest.approx(1.0) and weights[0, 0] == 0
    W = random_orthonormal_rows(6, 30, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = bcd(on(xp, stats), xp.asarray(W), ObjectiveTerms("l2", lam=0.01), max_iter=20)
        incoherent = ObjectiveTerms("l2", lam=0.01, gamma=1.0, weights=xp.asarray(weights))
        penalised = bcd(on(xp, stats), xp.asarray(W), incoherent, max_iter=20)
    values = values_of(penalised)
    assert (np.diff(values) <= 1e-12 * np.abs(values).max()).all()

    def cosine(D):
        D = to_numpy(D)
        return abs(D[:, 0] @ D[:, 1]) / np.linalg.norm(D[:, 0]) / np.linalg.norm(D[:, 1])

    assert cosine(penalised.D) < cosine(plain.D) - 0.1


def test_sparse_incoherence_weights_equal_the_dense_ones():
    _, X, _, _ = planted(n=300, n_words=12)
    cooccurrence = (X.T @ X).tocsr()
    np.testing.assert_allclose(incoherence_weights(cooccurrence).toarray(), incoherence_weights(cooccurrence.toarray()),
                               atol=1e-12)
    D = np.random.default_rng(1).standard_normal((4, 12))
    dense = ObjectiveTerms("l2", gamma=0.7, weights=incoherence_weights(cooccurrence.toarray()))
    sparse = ObjectiveTerms("l2", gamma=0.7, weights=incoherence_weights(cooccurrence))
    W = np.zeros((4, 30))
    from solvers.objective import incoherence_gradient, penalty
    assert penalty(D, W, sparse) == pytest.approx(penalty(D, W, dense), rel=1e-12)
    gram = D.T @ D
    np.testing.assert_allclose(incoherence_gradient(D, sparse), 2 * 0.7 * D @ (dense.weights * gram), atol=1e-12)


def test_incoherent_column_update_is_stationary():
    F, X, _, _ = planted(noise=0.5, n_words=8)
    stats = sufficient_stats(F, X)
    terms = ObjectiveTerms("l2", lam=0.01, gamma=2.0, weights=incoherence_weights(stats.C))
    W = random_orthonormal_rows(6, 30, 2)
    D = d_step(stats, W, terms)
    last = D.shape[1] - 1  # the last column was minimised with all others at their final values
    step = 1e-6
    for axis in range(D.shape[0]):
        bumped = [D.copy(), D.copy()]
        bumped[0][axis, last] += step
        bumped[1][axis, last] -= step
        up, down = (objective(stats, b, W, terms) for b in bumped)
        assert abs(up - down) / (2 * step) < 1e-6


def converged_bcd(F, X, terms, dim, xp=np):
    stats = on(xp, sufficient_stats(F, X))
    start = closed_form(stats, dim, terms)
    if start.converged:
        return start
    return bcd(stats, start.W, terms, D=start.D, max_iter=5000, tol=1e-13)


@pytest.mark.parametrize("n", [64, 1000, pytest.param(20_000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("terms", [ObjectiveTerms("l2", lam=1e-3), IP, ObjectiveTerms("l2", "words", lam=1e-3)],
                         ids=["l2-map", "ip-map", "l2-words"])
def test_sgd_at_its_defaults_ends_within_one_percent_of_converged_bcd(n, terms):
    F, X, _, _ = planted(n=n, p=30, d=6, n_words=20, noise=0.5)
    best = converged_bcd(F, X, terms, 6)
    W0 = random_orthonormal_rows(6, 30, 5)
    result = sgd(F, X, W0, terms, random_state=0)
    assert result.converged
    assert abs(result.objective - best.objective) <= 0.01 * abs(best.objective)
    W, D = to_numpy(result.W), to_numpy(result.D)
    if not terms.words_orthonormal or terms.kind == "ip":
        np.testing.assert_allclose(W @ W.T, np.eye(6), atol=1e-10)
    if terms.words_orthonormal:
        np.testing.assert_allclose(D @ D.T, np.eye(6), atol=1e-10)
    elif terms.kind == "ip":
        np.testing.assert_allclose(np.linalg.norm(D, axis=0), 1, rtol=1e-10)


def test_sgd_on_numpy_and_cupy_agree(xp):
    F, X, _, _ = planted(n=500, noise=0.5)
    W0 = random_orthonormal_rows(6, 30, 1)
    expected = sgd(F, X, W0, max_steps=40, random_state=3)
    got = sgd(F, X, xp.asarray(W0), max_steps=40, random_state=3, xp=xp)
    np.testing.assert_allclose(to_numpy(got.W), expected.W, atol=1e-8)


def test_sgd_does_no_vocabulary_squared_work(monkeypatch):
    """A vocabulary of 100,000 words: the step sizes come from b x b or p x p Gram matrices only."""
    rng = np.random.default_rng(0)
    n, n_words = 300, 100_000
    X = sp.random(n, n_words, density=5 / n_words, random_state=1, format="csr")
    F = rng.standard_normal((n, 20))
    seen = []
    original = np.linalg.eigvalsh
    monkeypatch.setattr(np.linalg, "eigvalsh", lambda a: seen.append(a.shape) or original(a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = sgd(F, X, random_orthonormal_rows(4, 20, 0), ObjectiveTerms("l2", lam=1e-3, gamma=0.1,
                     weights=incoherence_weights((X.T @ X).tocsr())), batch_size=64, max_steps=20, random_state=0)
    assert seen and max(max(shape) for shape in seen) <= 64
    assert result.D.shape == (4, n_words) and np.isfinite(result.D).all()


def test_sgd_streams_a_memmap_and_is_seeded(tmp_path):
    F, X, _, _ = planted(n=500)
    np.save(tmp_path / "F.npy", F)
    mapped = np.load(tmp_path / "F.npy", mmap_mode="r", allow_pickle=False)
    W0 = random_orthonormal_rows(6, 30, 1)
    first = sgd(mapped, X, W0, max_steps=5, random_state=4)
    again = sgd(F, X, W0, max_steps=5, random_state=4)
    other = sgd(F, X, W0, max_steps=5, random_state=5)
    np.testing.assert_array_equal(first.D, again.D)
    assert not np.array_equal(first.D, other.D)
    assert first.n_iter == 5


def test_sgd_caps_the_minibatch_at_the_number_of_images():
    F, X, _, _ = planted(n=40)
    result = sgd(F, X, random_orthonormal_rows(6, 30, 1), batch_size=256, max_steps=3, random_state=0)
    assert result.n_iter == 3 and [step for step, _, _ in result.trace] == [3]


def test_sgd_that_runs_out_of_steps_says_so():
    F, X, _, _ = planted(n=200, noise=0.5)
    with pytest.warns(ConvergenceWarning, match="max_steps=3"):
        result = sgd(F, X, random_orthonormal_rows(6, 30, 1), max_steps=3, random_state=0)
    assert not result.converged


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda F, X, W: sgd(F, X[:-1], W), "F has 200 rows but X has 199"),
        (lambda F, X, W: ObjectiveTerms("cosine"), "objective must be one of"),
        (lambda F, X, W: ObjectiveTerms("l2", "both"), "constraint must be one of"),
        (lambda F, X, W: ObjectiveTerms("ip", lam=0.1), "apply to the l2 objective only"),
        (lambda F, X, W: ObjectiveTerms("l2", gamma=1.0), "needs the cooccurrence"),
        (lambda F, X, W: ObjectiveTerms("l2", "words", gamma=1.0, weights=np.eye(2)), "constraint='map' only"),
        (lambda F, X, W: ObjectiveTerms("l2", lam=float("nan")), "lam must be a finite number"),
        (lambda F, X, W: ObjectiveTerms("l2", lam=-1.0), "lam must be a finite number"),
        (lambda F, X, W: ObjectiveTerms("l2", gamma=float("nan"), weights=np.eye(2)), "gamma must be"),
        (lambda F, X, W: sgd(F, X, W, learning_rate=-1), "learning_rate must be"),
        (lambda F, X, W: sgd(F, X, W, learning_rate=float("nan")), "learning_rate must be"),
        (lambda F, X, W: sgd(F, X, W, batch_size=0), "batch_size must be"),
        (lambda F, X, W: sgd(F, X, W, max_steps=0), "max_steps must be"),
        (lambda F, X, W: sgd(F, X, W, decay=1.0), "decay must be"),
        (lambda F, X, W: sgd(F, X, W, tol="small"), "tol must be"),
        (lambda F, X, W: sgd(F, X, W, n_iter_no_change=2.5), "n_iter_no_change must be"),
        (lambda F, X, W: bcd(sufficient_stats(F, X), W, max_iter=0), "max_iter must be"),
        (lambda F, X, W: bcd(sufficient_stats(F, X), W, tol=float("nan")), "tol must be"),
        (lambda F, X, W: bcd(sufficient_stats(F, X), W, start_exact=True), "start_exact needs"),
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
    terms = ObjectiveTerms("l2", lam=1e-3)
    best = closed_form(sufficient_stats(F, X).centered(), 6, terms)
    result = sgd(F, X, random_orthonormal_rows(6, 30, 5), terms, center=True, random_state=0)
    assert abs(result.objective - best.objective) <= 0.01 * abs(best.objective)

