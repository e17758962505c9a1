"""Frequency prior and nearest-neighbour transfer on hand-checkable inputs."""

import numpy as np
import pytest

from image2vec import systems
from image2vec.baselines.neighbors import FrequencyPrior, NearestNeighborTransfer

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


def test_knn_chooses_k_by_leave_one_out():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 6)) * 5
    labels = np.repeat(np.arange(4), 10)
    F = centres[labels] + rng.standard_normal((40, 6))
    X = np.eye(4)[labels]
    knn = NearestNeighborTransfer(candidates=(1, 3, 5), k=1).fit(F, X)
    assert knn.n_neighbors_ in (1, 3, 5)
    assert (knn.summarize(F, k=1).indices[:, 0] == labels).mean() > 0.95


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


def test_unknown_system_name_is_refused():
    with pytest.raises(ValueError, match="unknown model 'cnn'"):
        systems.make_system("cnn")
