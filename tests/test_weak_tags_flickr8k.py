"""experiments/weak_tags_flickr8k.py: tag relevance by neighbour voting and its per-photo AP."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from weak_tags_flickr8k import TagBenchmark, neighbour_voting, per_photo_ap  # noqa: E402


def clustered_photos(n_clusters=4, n_users=8, per_user=5, seed=0):
    """Photos in 4 visual clusters; each user shoots 5 photos of all clusters in turn. Each photo
    carries its cluster's tag (true, columns 0-3) and its user's tag (false, columns 4-11)."""
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    users = np.repeat(np.arange(n_users), per_user)
    clusters = np.arange(n) % n_clusters
    centres = 5 * rng.standard_normal((n_clusters, 16))
    features = centres[clusters] + rng.standard_normal((n, 16))
    rows = np.repeat(np.arange(n), 2)
    cols = np.column_stack([clusters, n_clusters + users]).ravel()
    X = sp.csr_matrix((np.ones(2 * n), (rows, cols)), shape=(n, n_clusters + n_users))
    truth = sp.csr_matrix(((cols < n_clusters).astype(float), (rows, cols)), shape=X.shape)
    bench = TagBenchmark([f"t{v}" for v in range(X.shape[1])], X, truth, users, sp.csr_matrix((1, X.shape[1])),
                         sp.csr_matrix((1, X.shape[1])))
    return SimpleNamespace(features=features.astype(np.float32)), bench


def test_neighbour_voting_counts_other_users_only():
    """A user's tag is on no other user's photo, so with one neighbour per other user it gets no
    vote at all: its relevance is -K prior; the cluster tag gets a vote from every neighbour of the
    same cluster."""
    train, bench = clustered_photos()
    relevance = neighbour_voting(train, bench, [1, 3])
    cols = bench.X.indices
    user_tag = cols >= 4
    prior = np.asarray(bench.X.mean(axis=0)).ravel()
    for k in (1, 3):
        np.testing.assert_allclose(relevance[k][user_tag], -k * prior[cols[user_tag]], atol=1e-12)
        # The nearest photos of other users are in the same cluster: K votes minus K prior.
        np.testing.assert_allclose(relevance[k][~user_tag], k - k * prior[cols[~user_tag]], atol=1e-12)
    ap = per_photo_ap(relevance[3], bench)
    np.testing.assert_allclose(ap, 1.0)


def test_per_photo_ap_is_the_average_precision_of_each_photos_tags():
    """Photo 0: tags ranked true, false, true: AP (1 + 2/3) / 2; photo 1: all true, no AP."""
    X = sp.csr_matrix(np.array([[1, 1, 1, 0], [0, 1, 0, 1.0]]))
    truth = sp.csr_matrix((np.array([1, 0, 1, 1, 1.0]), X.indices, X.indptr), shape=X.shape)
    bench = TagBenchmark(list("abcd"), X, truth, np.zeros(2, int), X, X)
    ap = per_photo_ap(np.array([0.9, 0.5, 0.1, 0.3, 0.2]), bench)
    np.testing.assert_allclose(ap[0], (1 + 2 / 3) / 2)
    assert np.isnan(ap[1])
