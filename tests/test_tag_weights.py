"""The weak-tag A-step (solvers.tag_weights) against independent solves of the same box problems:
SciPy's lsq_linear for l2 (min ||e_n - D (a * x_n)||^2 over the box) and its linprog for ip
(max e_n . D (a * x_n) over the box)."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linprog, lsq_linear

from solvers import TagWeightStep, chunk_tag_weights
from solvers.backend import to_numpy
from solvers.tag_weights import ChunkLayout


def tagged_images(n=90, n_words=25, seed=0):
    """Images with 0 to 11 words (several padded groups; some images without words), values in
    (0.2, 1], embeddings and word vectors of dimension 10."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 12, n)
    counts[::9] = 0
    X = sp.csr_matrix((rng.uniform(0.2, 1, counts.sum()),
                       np.concatenate([rng.choice(n_words, c, replace=False) for c in counts]),
                       np.concatenate([[0], np.cumsum(counts)])), shape=(n, n_words))
    D = rng.standard_normal((10, n_words))
    # Embeddings near a sum of some of each image's words, so that weights fall inside the box too.
    E = (X.multiply(rng.uniform(-0.3, 1.3, X.shape)) @ D.T) + 0.3 * rng.standard_normal((n, 10))
    return X, D, np.asarray(E)


def reference(X, D, E, objective, bounds):
    """Each image's problem solved on its own by SciPy."""
    out = np.empty(X.nnz)
    for i in range(X.shape[0]):
        entries = slice(X.indptr[i], X.indptr[i + 1])
        if entries.start == entries.stop:
            continue
        atoms = D[:, X.indices[entries]] * X.data[entries]
        if objective == "l2":
            out[entries] = lsq_linear(atoms, E[i], bounds=bounds, tol=1e-13, method="bvls").x
        else:  # maximise (atoms^T e) . a: minimise its negative
            out[entries] = linprog(-(atoms.T @ E[i]), bounds=[bounds] * atoms.shape[1], method="highs").x
    return out


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (0.25, 1.0)])
@pytest.mark.parametrize("objective", ["l2", "ip"])
def test_chunk_weights_solve_every_images_box_problem(xp, objective, bounds):
    X, D, E = tagged_images()
    layout = ChunkLayout.of(X, slice(0, X.shape[0]), objective, xp)
    start = np.full(X.nnz, bounds[1])
    ours = chunk_tag_weights(layout, xp.asarray(D), xp.asarray(E), start, objective, bounds=bounds,
                             max_sweeps=5000, tol=1e-12)
    expected = reference(X, D, E, objective, bounds)
    if objective == "l2":
        inside = ((expected > bounds[0] + 1e-6) & (expected < bounds[1] - 1e-6)).mean()
        assert 0.1 < inside < 0.9  # both the bounds and the interior are exercised
    # The scale of a weight is 1: an absolute tolerance on it holds for any summation order.
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    assert ours.min() >= bounds[0] and ours.max() <= bounds[1]


@pytest.mark.parametrize("objective", ["l2", "ip"])
def test_step_over_chunks_equals_one_chunk_and_returns_consistent_statistics(xp, objective):
    """The step streams F in chunks (the middle one without words): its weights are those of one
    chunk; the statistics it returns are those of the re-weighted targets."""
    X, D, _ = tagged_images()
    X = sp.csr_matrix(X)
    rng = np.random.default_rng(1)
    F = rng.standard_normal((X.shape[0], 7))
    W = rng.standard_normal((10, 7))
    f_mean = F.mean(axis=0)
    one = TagWeightStep(F, X, lambda f: f, f_mean, objective, xp, chunk_rows=X.shape[0])
    chunked = TagWeightStep(F, X, lambda f: f, f_mean, objective, xp, chunk_rows=32)
    scatter = xp.asarray((F - f_mean).T @ (F - f_mean))
    one(xp.asarray(D), xp.asarray(W))
    stats = chunked(xp.asarray(D), xp.asarray(W), scatter=scatter)
    # Each padded group's coordinate descent stops once no weight moves by more than 1e-6, and
    # the groups differ with the chunking: the weights agree to that scale, not to rounding.
    np.testing.assert_allclose(chunked.weights, one.weights, atol=1e-5)
    weighted = chunked.weighted()
    centred_x = weighted.toarray() - weighted.toarray().mean(axis=0)
    scale = np.abs(F).max() * np.abs(centred_x).max() * len(F)
    np.testing.assert_allclose(to_numpy(stats.B), (F - f_mean).T @ centred_x, atol=1e-12 * scale)
    np.testing.assert_allclose(to_numpy(stats.C), centred_x.T @ centred_x, atol=1e-12 * len(F))
    assert stats.n == X.shape[0]


def test_bad_bounds_and_objective_are_clear_errors():
    X, D, E = tagged_images(n=5)
    layout = ChunkLayout.of(X, slice(0, 5), "l2")
    with pytest.raises(ValueError, match="0 <= lower <= upper"):
        chunk_tag_weights(layout, D, E, np.ones(X.nnz), "l2", bounds=(0.5, 0.2))
    with pytest.raises(ValueError, match="objective must be one of"):
        TagWeightStep(np.zeros((5, 3)), X, lambda f: f, np.zeros(3), "l1")
