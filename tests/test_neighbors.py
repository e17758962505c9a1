"""Frequency prior and nearest-neighbour transfer on hand-checkable inputs."""

import math

import numpy as np
import pytest
from tolerance import assert_close

from image2vec import systems
from image2vec.baselines import neighbors
from image2vec.baselines.neighbors import FrequencyPrior, NearestNeighborTransfer
from image2vec.errors import Image2VecError

WORDS = ["dog", "cat", "car", "tree"]


def test_prior_gives_the_most_frequent_training_words_to_every_image():
    X = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [0.2, 1, 0, 0], [1, 0, 1, 1]])
    prior = FrequencyPrior().fit(np.zeros((4, 3)), X, words=WORDS)
    np.testing.assert_allclose(prior.frequency_, [1.0, 0.25, 0.5, 0.25])
    summary = prior.summarize(np.ones((2, 3)), k=2)
    assert summary.words == [["dog", "car"], ["dog", "car"]]


def test_knn_weights_votes_by_cosine():
    F = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    X = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    knn = NearestNeighborTransfer(n_neighbors=2).fit(F, X, words=WORDS)
    query = np.array([[1.0, 0.05]])
    unit = knn._unit(query)[0]
    similarity = knn.train_features_ @ unit
    nearest = np.argsort(-similarity)[:2]
    expected = sum(similarity[j] * X[j] for j in nearest)
    np.testing.assert_allclose(knn.decision_function(query)[0], expected)
    assert knn.summarize(query, k=1).words == [["dog"]]


@pytest.mark.parametrize("weighting, temperature, weight", [
    ("cosine", 0.1, lambda c, t: max(c, 0.0)),
    ("uniform", 0.1, lambda c, t: 1.0),
    ("exp", 0.05, lambda c, t: math.exp((c - 1) / t)),
    ("exp", 2.0, lambda c, t: math.exp((c - 1) / t)),
])
def test_knn_votes_equal_a_brute_force_count(weighting, temperature, weight):
    # Independent of the estimator: scikit-learn's cosine of the centred features, one image and
    # one neighbour at a time in plain Python.
    from sklearn.metrics.pairwise import cosine_similarity

    rng = np.random.default_rng(3)
    F, queries = rng.standard_normal((40, 5)), rng.standard_normal((7, 5))
    X = (rng.random((40, 4)) < 0.4) * rng.random((40, 4))
    K = 6
    knn = NearestNeighborTransfer(n_neighbors=K, weighting=weighting, temperature=temperature).fit(F, X)
    cosine = cosine_similarity(queries - F.mean(axis=0), F - F.mean(axis=0))
    expected = np.zeros((len(queries), 4))
    for n, row in enumerate(cosine):
        for j in sorted(range(len(row)), key=lambda j: -row[j])[:K]:
            expected[n] += weight(float(row[j]), temperature) * X[j]
    assert_close(knn.decision_function(queries), expected, rtol=1e-10)


def test_knn_exp_weighting_spans_uniform_and_nearest_only():
    # A high temperature votes like uniform; a low one like the single nearest neighbour.
    F, X, _ = clusters(3, 10, label_noise=0.3, seed=4)
    query = F[:5] + 0.01
    uniform = NearestNeighborTransfer(n_neighbors=8, weighting="uniform").fit(F, X)
    hot = NearestNeighborTransfer(n_neighbors=8, weighting="exp", temperature=1e4).fit(F, X)
    assert_close(hot.decision_function(query), uniform.decision_function(query), rtol=1e-3)
    cold = NearestNeighborTransfer(n_neighbors=8, weighting="exp", temperature=1e-3).fit(F, X)
    nearest = NearestNeighborTransfer(n_neighbors=1, weighting="uniform").fit(F, X)
    np.testing.assert_array_equal(cold.summarize(query, k=1).indices, nearest.summarize(query, k=1).indices)


def clusters(n_clusters, size, label_noise, seed=0):
    """Tight feature clusters, one word each; a share of the images carry a wrong word."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, 6)) * 5
    labels = np.repeat(np.arange(n_clusters), size)
    F = centres[labels] + rng.standard_normal((len(labels), 6))
    noisy = rng.random(len(labels)) < label_noise
    tags = np.where(noisy, (labels + rng.integers(1, n_clusters, len(labels))) % n_clusters, labels)
    return F, np.eye(n_clusters)[tags], labels


def test_knn_chooses_many_neighbours_when_single_labels_are_noisy():
    F, X, labels = clusters(4, 30, label_noise=0.35)
    knn = NearestNeighborTransfer(candidates=(1, 3, 20), k=1).fit(F, X)
    assert knn.n_neighbors_ == 20  # the vote of 20 outweighs a neighbour's wrong word
    assert (knn.summarize(F, k=1).indices[:, 0] == labels).mean() > 0.95


def test_knn_chooses_one_neighbour_for_pairs():
    F, X, labels = clusters(20, 2, label_noise=0.0)
    knn = NearestNeighborTransfer(candidates=(1, 3, 20), k=1).fit(F, X)
    assert knn.n_neighbors_ == 1  # each image's only same-word image is its nearest neighbour


def test_knn_in_blocks_equals_all_at_once(monkeypatch):
    F, X, _ = clusters(5, 12, label_noise=0.3, seed=2)
    whole = NearestNeighborTransfer(k=2).fit(F[:50], X[:50])
    monkeypatch.setattr(neighbors, "_BLOCK_ELEMENTS", 7 * 50)  # blocks of 7 rows
    blocked = NearestNeighborTransfer(k=2).fit(F[:50], X[:50])
    assert blocked.n_neighbors_ == whole.n_neighbors_
    assert_close(blocked.decision_function(F[50:]), whole.decision_function(F[50:]), rtol=1e-7)


def test_knn_with_fewer_images_than_candidates():
    F, X, _ = clusters(2, 1, label_noise=0.0)
    knn = NearestNeighborTransfer(candidates=(3, 5)).fit(F, X)
    assert knn.n_neighbors_ == 1
    np.testing.assert_array_equal(knn.summarize(F, k=1).indices[:, 0], [0, 1])


@pytest.mark.parametrize("name", ["prior", "knn"])
def test_baselines_save_and_load(tmp_path, name):
    rng = np.random.default_rng(1)
    F, X = rng.standard_normal((30, 5)), (rng.random((30, 4)) < 0.4).astype(float)
    system = systems.make_system(name, dim=8).fit(F, X, words=WORDS)
    systems.save(system, tmp_path / "m.npz")
    loaded, _ = systems.load(tmp_path / "m.npz")
    assert type(loaded) is type(system)
    np.testing.assert_allclose(loaded.decision_function(F), system.decision_function(F))
    assert loaded.summarize(F).words == system.summarize(F).words


@pytest.mark.parametrize("name, attribute", [("prior", "frequency_"), ("knn", "words_")])
def test_a_tampered_baseline_file_is_refused(tmp_path, name, attribute):
    rng = np.random.default_rng(1)
    F, X = rng.standard_normal((30, 5)), (rng.random((30, 4)) < 0.4).astype(float)
    system = systems.make_system(name).fit(F, X, words=WORDS)
    setattr(system, attribute, getattr(system, attribute)[:3])
    systems.save(system, tmp_path / "m.npz")
    with pytest.raises(Image2VecError, match="inconsistent"):
        systems.load(tmp_path / "m.npz")


def test_unknown_system_name_is_refused():
    with pytest.raises(ValueError, match="unknown model 'cnn'"):
        systems.make_system("cnn")


def test_knn_without_a_similar_neighbour_falls_back_to_word_frequencies():
    # One training image: its centred feature is zero, so no query has a similar neighbour.
    knn = NearestNeighborTransfer().fit(np.array([[1.0, 2.0]]), np.array([[1.0, 0, 0, 1]]), words=WORDS)
    scores = knn.decision_function(np.array([[0.0, 1.0], [3.0, -1.0]]))
    np.testing.assert_allclose(scores, [[1, 0, 0, 1], [1, 0, 0, 1]])
    assert [sorted(words) for words in knn.summarize(np.array([[0.0, 1.0]]), k=2).words] == [["dog", "tree"]]


def test_knn_with_more_neighbours_than_images_saves_and_loads(tmp_path):
    F, X, _ = clusters(2, 3, label_noise=0.0)
    knn = NearestNeighborTransfer(n_neighbors=50).fit(F, X)
    assert knn.n_neighbors_ == 6
    systems.save(knn, tmp_path / "knn.npz")
    loaded, _ = systems.load(tmp_path / "knn.npz")
    np.testing.assert_allclose(loaded.decision_function(F), knn.decision_function(F))


@pytest.mark.parametrize("params, message", [
    ({"candidates": ()}, "candidates must be one or more positive integers"),
    ({"candidates": (0, 3)}, "candidates must be one or more positive integers"),
    ({"n_neighbors": 0}, "n_neighbors must be a positive integer"),
    ({"weighting": "distance"}, "weighting must be one of cosine, uniform, exp, got 'distance'"),
    ({"temperature": 0.0}, "temperature must be a positive number"),
    ({"temperature": float("nan")}, "temperature must be a positive number"),
    ({"temperature": True}, "temperature must be a positive number"),
])
def test_knn_refuses_bad_settings(params, message):
    F, X, _ = clusters(2, 3, label_noise=0.0)
    with pytest.raises(ValueError, match=message):
        NearestNeighborTransfer(**params).fit(F, X)
