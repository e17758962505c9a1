"""The two simple baselines: the frequency prior and nearest-neighbour word transfer."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data

from image2vec.arrays import check_shapes, preprocess_features
from image2vec.summary import Summary, check_words

_BLOCK_ELEMENTS = 1 << 22  # similarities held at once (32 MiB of float64)
#: The vote weightings of :class:`NearestNeighborTransfer`.
WEIGHTINGS = ("cosine", "uniform", "exp")


class WordScorer(BaseEstimator):
    """Shared read-out: summaries are the k highest word scores of ``decision_function``."""

    def summarize(self, F: Any, k: int = 3) -> Summary:
        """The k highest-scoring words of each image."""
        return Summary.top_k(self.decision_function(F), k, self.words_)


class FrequencyPrior(WordScorer):
    """Every image gets the same word scores: the fraction of training images with the word.

    Its summary is the k most frequent training words, whatever the image: the floor that any
    system that looks at the image must clear.
    """

    def fit(self, X: Any, y: Any, words: Any = None) -> FrequencyPrior:
        """X: features F (N x p, only checked); y: targets (N x V)."""
        _, y = validate_data(self, X, y, accept_sparse=False, multi_output=True)
        truth = sp.csr_matrix(y) > 0
        self.frequency_ = np.asarray(truth.mean(axis=0)).ravel()
        self.words_ = check_words(words, truth.shape[1])
        return self

    def decision_function(self, F: Any) -> np.ndarray:
        """Word scores (N, V): the training frequency of every word, whatever the image."""
        check_is_fitted(self, "frequency_")
        F = validate_data(self, F, reset=False)
        return np.broadcast_to(self.frequency_, (F.shape[0], self.frequency_.size)).copy()

    def check_loaded(self) -> None:
        """Raise ValueError unless the fitted arrays of a loaded model fit together."""
        if self.words_.shape != self.frequency_.shape:
            raise ValueError(f"{self.words_.size} words for {self.frequency_.size} word frequencies")


class NearestNeighborTransfer(WordScorer):
    """Word scores = weighted votes of the K nearest training images.

    score_nv = sum_{j in N_K(n)} w(c_nj) x_jv, with c_nj = cos(f_n, f_j) the cosine similarity of
    the centred features, N_K(n) the K training images of highest c_nj, and the vote weight

    - ``"cosine"``: w(c) = max(c, 0);
    - ``"uniform"``: w(c) = 1 (every neighbour votes alike);
    - ``"exp"``: w(c) = exp((c - 1) / temperature), a sharpened vote: the nearest neighbours
      dominate as the temperature falls (the constant factor exp(-1 / temperature) keeps the
      weights in (0, 1] and changes no ranking; it tends to uniform as the temperature grows).

    K is chosen from ``candidates`` by leave-one-out F1 at ``k`` on the training images unless
    ``n_neighbors`` is given. Similarities are computed in blocks of rows, so memory stays
    O(block x N_train) however many images there are.

    Parameters
    ----------
    n_neighbors : int, optional
        K; default chosen by validation.
    weighting : {"cosine", "uniform", "exp"}, default "cosine"
        The vote weight w above.
    temperature : float, default 0.1
        The temperature of ``weighting="exp"`` (> 0; unused otherwise).
    candidates : tuple of int
        The K values tried by validation (those below the number of training images).
    k : int
        Summary length used to validate K.
    """

    def __init__(self, n_neighbors: int | None = None, weighting: str = "cosine", temperature: float = 0.1,
                 candidates: tuple = (1, 3, 5, 10, 20), k: int = 3):
        self.n_neighbors = n_neighbors
        self.weighting = weighting
        self.temperature = temperature
        self.candidates = candidates
        self.k = k

    def fit(self, X: Any, y: Any, words: Any = None) -> NearestNeighborTransfer:
        """X: features F (N x p); y: targets (N x V)."""
        for name in ("n_neighbors", "k"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_neighbors is None and not (
                len(self.candidates) and all(isinstance(K, (int, np.integer)) and K >= 1
                                             for K in self.candidates)):
            raise ValueError(f"candidates must be one or more positive integers, got {self.candidates!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if (isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float, np.number))
                or not np.isfinite(self.temperature) or self.temperature <= 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        F, y = validate_data(self, X, y, accept_sparse=False, multi_output=True, dtype=np.float64)
        self.targets_ = sp.csr_matrix(y, dtype=np.float64)
        self.words_ = check_words(words, self.targets_.shape[1])
        self.feature_mean_ = F.mean(axis=0)
        self.train_features_ = self._unit(F)
        self.frequency_ = np.asarray((self.targets_ > 0).mean(axis=0)).ravel()
        if self.n_neighbors is not None:
            self.n_neighbors_ = min(int(self.n_neighbors), F.shape[0])
        else:
            self.n_neighbors_ = self._validate_k()
        return self

    def _unit(self, F: np.ndarray) -> np.ndarray:
        return preprocess_features(F, self.feature_mean_)

    def _neighbours(self, unit: np.ndarray, n_neighbors: int, leave_one_out: bool = False):
        """Blocks of (the K nearest training images, their vote weights w(cos)), best first.

        ``leave_one_out``: ``unit`` are the training images themselves, each excluded from its
        own neighbours.
        """
        n_train = self.train_features_.shape[0]
        n_neighbors = min(n_neighbors, n_train - leave_one_out)
        block = max(1, _BLOCK_ELEMENTS // n_train)
        for start in range(0, len(unit), block):
            similarity = unit[start:start + block] @ self.train_features_.T
            if leave_one_out:
                rows = np.arange(len(similarity))
                similarity[rows, start + rows] = -np.inf
            nearest = np.argpartition(-similarity, n_neighbors - 1, axis=1)[:, :n_neighbors]
            weights = np.take_along_axis(similarity, nearest, axis=1)
            order = np.argsort(-weights, axis=1, kind="stable")
            yield (np.take_along_axis(nearest, order, axis=1),
                   self._vote_weights(np.take_along_axis(weights, order, axis=1)))

    def _vote_weights(self, cosine: np.ndarray) -> np.ndarray:
        """w(c) of ``weighting`` (see the class docstring), elementwise."""
        if self.weighting == "uniform":
            return np.ones_like(cosine)
        if self.weighting == "exp":
            return np.exp((cosine - 1) / self.temperature)
        return np.maximum(cosine, 0)

    def _votes(self, nearest: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """score_nv = sum_j w_nj x_jv over the given neighbours, dense (n x V).

        An image with no neighbour of positive similarity gets the training word frequencies
        (the frequency prior) instead of all-zero scores.
        """
        n, K = nearest.shape
        votes = sp.csr_matrix((weights.ravel(), nearest.ravel(), np.arange(0, n * K + 1, K)),
                              shape=(n, self.targets_.shape[0]))
        scores = (votes @ self.targets_).toarray()
        scores[~(weights > 0).any(axis=1)] = self.frequency_
        return scores

    def _validate_k(self) -> int:
        """The candidate K of best leave-one-out F1@k on the training images (ties: smaller K)."""
        from image2vec.evaluate import precision_recall_f1

        n_train = self.train_features_.shape[0]
        candidates = sorted({int(K) for K in self.candidates if K < n_train})
        if not candidates:  # too few images to leave one out with any candidate
            return max(1, min(min(int(K) for K in self.candidates), n_train - 1))
        chosen = {K: [] for K in candidates}
        for nearest, weights in self._neighbours(self.train_features_, max(candidates), leave_one_out=True):
            for K in candidates:
                votes = self._votes(nearest[:, :K], weights[:, :K])
                chosen[K].append(Summary.top_k(votes, self.k, self.words_).indices)
        truth = self.targets_ > 0
        best = max((precision_recall_f1(np.vstack(chosen[K]), truth)[2], -K) for K in candidates)
        return -best[1]

    def decision_function(self, F: Any) -> np.ndarray:
        """Word scores (N, V): the weighted votes of the K nearest training images."""
        check_is_fitted(self, "train_features_")
        F = validate_data(self, F, reset=False, dtype=np.float64)
        blocks = [self._votes(nearest, weights)
                  for nearest, weights in self._neighbours(self._unit(F), self.n_neighbors_)]
        return np.vstack(blocks) if blocks else np.zeros((0, self.targets_.shape[1]))

    def check_loaded(self) -> None:
        """Raise ValueError unless the fitted arrays of a loaded model fit together."""
        n_train, n_words = self.targets_.shape
        check_shapes(self, {"train_features_": (n_train, self.feature_mean_.shape[0]),
                            "words_": (n_words,), "frequency_": (n_words,)})
        if not 1 <= self.n_neighbors_ <= n_train:
            raise ValueError(f"n_neighbors_ = {self.n_neighbors_} for {n_train} training images")
