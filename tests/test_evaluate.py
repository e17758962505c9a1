"""The evaluation harness on hand-checkable inputs."""

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from image2vec.evaluate import (
    cross_validate,
    evaluate,
    mean_average_precision,
    precision_recall_f1,
    query_scores,
    retrieval_recall,
)
from image2vec.model import Image2Vec


def test_precision_recall_f1_by_hand():
    truth = np.array([[1, 1, 0, 0], [0, 0, 1, 0]])
    summary = np.array([[0, 2], [2, -1]])  # image 0: one hit of two; image 1: one hit of one
    precision, recall, f1 = precision_recall_f1(summary, truth)
    assert precision == pytest.approx(2 / 3) and recall == pytest.approx(2 / 3)
    assert f1 == pytest.approx(2 / 3)


def test_mean_average_precision_by_hand():
    truth = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3], [0.0, 0.4]])
    # word 0: ranking 0 (pos), 1 (neg), 2 (pos), 3 -> AP = (1/1 + 2/3) / 2
    # word 1: ranking 3 (neg), 2 (pos), 1 (pos), 0 -> AP = (1/2 + 2/3) / 2
    value, n_words = mean_average_precision(scores, truth)
    assert n_words == 2
    assert value == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2)


def test_words_without_negatives_are_not_scored():
    value, n_words = mean_average_precision(np.zeros((3, 2)), np.array([[1, 0], [1, 1], [1, 0]]))
    assert n_words == 1


def test_retrieval_recall_by_hand():
    scores = np.array([[5, 1, 0], [9, 2, 8], [3, 4, 1]])
    # query 0: own image first; query 1: two images score higher; query 2: two higher
    assert retrieval_recall(scores, at=(1, 3)) == {"recall@1": pytest.approx(1 / 3), "recall@3": 1.0}


def test_evaluate_uses_summaries_and_scores_of_any_system():
    truth = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]]))
    system = SimpleNamespace(
        summarize=lambda F, k: SimpleNamespace(indices=np.array([[0, 1], [1, 2]])[:, :k]),
        decision_function=lambda F: np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.1]]),
    )
    result = evaluate(system, np.zeros((2, 4)), truth, k=2, queries=truth)
    assert result["precision"] == pytest.approx(2 / 4) and result["recall"] == pytest.approx(2 / 3)
    assert result["map"] == pytest.approx(1.0)
    assert result["recall@1"] == pytest.approx(1.0)


def test_image2vec_retrieval_scores_are_negative_squared_distances():
    rng = np.random.default_rng(0)
    F, X = rng.standard_normal((60, 10)), (rng.random((60, 6)) < 0.3).astype(float)
    model = Image2Vec(dim=4, metric="euclidean").fit(F, X)
    Q = np.eye(6)[:3]
    expected = -((model.transform(F)[None] - (Q @ model.dictionary_.T)[:, None]) ** 2).sum(axis=2)
    np.testing.assert_allclose(query_scores(model, F, Q), expected, atol=1e-10)


def test_cross_validation_scores_every_image_once():
    rng = np.random.default_rng(1)
    F, X = rng.standard_normal((50, 12)), (rng.random((50, 5)) < 0.4).astype(float)
    result = cross_validate(lambda: Image2Vec(dim=4), F, X, X, n_splits=5)
    assert sum(fold["n_images"] for fold in result["folds"]) == 50
    assert 0 <= result["f1"] <= 1 and 0 <= result["map"] <= 1


def test_row_params_are_cut_to_the_training_rows():
    seen = []

    class Recorder(Image2Vec):
        def fit(self, X, y, words=None, labels=None):
            seen.append((len(X), labels.shape[0]))
            return super().fit(X, y, words=words)

    rng = np.random.default_rng(2)
    F, X = rng.standard_normal((40, 12)), (rng.random((40, 5)) < 0.4).astype(float)
    cross_validate(lambda: Recorder(dim=4), F, X, X, n_splits=4, row_params={"labels": np.arange(40)[:, None]})
    assert seen == [(30, 30)] * 4


def test_ties_in_retrieval_count_against_the_system():
    assert retrieval_recall(np.ones((4, 4)), at=(1, 3)) == {"recall@1": 0.0, "recall@3": 0.0}


def test_weighted_metrics_equal_the_plain_ones_and_duplication():
    """score_metrics with unit weights equals scikit-learn's AP and precision_recall_f1; a
    weight of 2 equals the image (and its captions) drawn twice."""
    from image2vec.evaluate import ImageScores, image_scores, score_metrics

    rng = np.random.default_rng(2)
    F, X = rng.standard_normal((40, 10)), (rng.random((40, 7)) < 0.35).astype(float)
    X[0] = 0
    X[0, 0] = 1
    model = Image2Vec(dim=4).fit(F, X)
    captions = sp.csr_matrix(np.repeat(X, 2, axis=0))
    images = np.repeat(np.arange(40), 2)
    scores = image_scores(model, F, X, captions, images, ks=(3,))
    plain = score_metrics(scores)
    assert plain["P@3"][0] == pytest.approx(precision_recall_f1(model.summarize(F, 3).indices, X)[0])
    assert plain["mAP"][0] == pytest.approx(mean_average_precision(model.decision_function(F), X)[0])
    weights = np.ones((1, 40))
    weights[0, :5] = 2
    twice = np.r_[np.arange(40), np.arange(5)]
    duplicated = ImageScores(scores.hits[:, twice], scores.chosen[:, twice], scores.true[:, twice], (3,),
                             scores.word_scores[twice], scores.truth[twice],
                             np.r_[scores.search_ranks, scores.search_ranks[:10]],
                             np.r_[images, 40 + np.repeat(np.arange(5), 2)], scores.annotation_ranks[twice])
    weighted, copied = score_metrics(scores, weights), score_metrics(duplicated)
    for key in ("P@3", "R@3", "F1@3", "mAP", "search R@5", "annotation R@5"):
        assert weighted[key][0] == pytest.approx(copied[key][0])
