"""The two simple baselines: the frequency prior and nearest-neighbour word transfer."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data

from image2vec.summary import Summary


def _words(words: Any, n_words: int) -> np.ndarray:
    if words is None:
        return np.asarray([f"w{v}" for v in range(n_words)])
    words = np.asarray([str(w) for w in words])
    if words.shape != (n_words,):
        raise ValueError(f"words has {words.size} entries but the targets have {n_words} columns")
    return words


class _WordScorer(BaseEstimator):
    """Shared read-out: summaries are the k highest word scores of ``decision_function``."""

    def summarize(self, F: Any, k: int = 3) -> Summary:
        """The k highest-scoring words of each image."""
        return Summary.top_k(self.decision_function(F), k, self.words_)


class FrequencyPrior(_WordScorer):
    """Every image gets the same word scores: the fraction of training images with the word.

    Its summary is the k most frequent training words, whatever the image: the floor that any
    system that looks at the image must clear.
    """

    def fit(self, X: Any, y: Any, words: Any = None) -> "FrequencyPrior":
        """X: features F (N x p, only checked); y: targets (N x V)."""
        _, y = validate_data(self, X, y, accept_sparse=False, multi_output=True)
        truth = sp.csr_matrix(y) > 0
        self.frequency_ = np.asarray(truth.mean(axis=0)).ravel()
        self.words_ = _words(words, truth.shape[1])
        return self

    def decision_function(self, F: Any) -> np.ndarray:
        check_is_fitted(self, "frequency_")
        F = validate_data(self, F, reset=False)
        return np.broadcast_to(self.frequency_, (F.shape[0], self.frequency_.size)).copy()


class NearestNeighborTransfer(_WordScorer):
    """Word scores = similarity-weighted votes of the K nearest training images.

    score_nv = sum_{j in N_K(n)} max(cos(f_n, f_j), 0) x_jv, with cosine similarity of the
    centred features. K is chosen from ``candidates`` by leave-one-out F1 at ``k`` on the
    training images unless ``n_neighbors`` is given.

    Parameters
    ----------
    n_neighbors : int, optional
        K; default chosen by validation.
    candidates : tuple of int
        The K values tried by validation.
    k : int
        Summary length used to validate K.
    """

    def __init__(self, n_neighbors: int | None = None, candidates: tuple = (1, 3, 5, 10, 20), k: int = 3):
        self.n_neighbors = n_neighbors
        self.candidates = candidates
        self.k = k

    def fit(self, X: Any, y: Any, words: Any = None) -> "NearestNeighborTransfer":
        F, y = validate_data(self, X, y, accept_sparse=False, multi_output=True, dtype=np.float64)
        self.targets_ = sp.csr_matrix(y, dtype=np.float64)
        self.words_ = _words(words, self.targets_.shape[1])
        self.feature_mean_ = F.mean(axis=0)
        self.train_features_ = self._unit(F)
        if self.n_neighbors is not None:
            self.n_neighbors_ = int(self.n_neighbors)
        else:
            self.n_neighbors_ = self._validate_k()
        return self

    def _unit(self, F: np.ndarray) -> np.ndarray:
        centred = np.asarray(F, dtype=np.float64) - self.feature_mean_
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        return centred / np.where(norms > 0, norms, 1)

    def _scores(self, similarity: np.ndarray, n_neighbors: int) -> np.ndarray:
        n_neighbors = min(n_neighbors, similarity.shape[1])
        nearest = np.argpartition(-similarity, n_neighbors - 1, axis=1)[:, :n_neighbors]
        weights = np.zeros_like(similarity)
        np.put_along_axis(weights, nearest, np.maximum(np.take_along_axis(similarity, nearest, 1), 0), 1)
        return np.asarray(sp.csr_matrix(weights) @ self.targets_.toarray())

    def _validate_k(self) -> int:
        from image2vec.evaluate import precision_recall_f1

        similarity = self.train_features_ @ self.train_features_.T
        np.fill_diagonal(similarity, -np.inf)  # leave each image out of its own neighbours
        truth = self.targets_ > 0
        best = max(
            (precision_recall_f1(Summary.top_k(self._scores(similarity, K), self.k, self.words_).indices, truth)[2], -K)
            for K in self.candidates if K < similarity.shape[0]
        )
        return -best[1]

    def decision_function(self, F: Any) -> np.ndarray:
        check_is_fitted(self, "train_features_")
        F = validate_data(self, F, reset=False, dtype=np.float64)
        return self._scores(self._unit(F) @ self.train_features_.T, self.n_neighbors_)
