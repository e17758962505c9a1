"""Summaries: the few words that describe each image, best first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def check_words(words: Sequence | None, n_words: int, default: Sequence | None = None) -> np.ndarray:
    """The vocabulary of a summarizer as a string array of length V = ``n_words``.

    ``words`` None: ``default`` (e.g. the labels of a 1-d fit) or "w0", "w1", ...

    Raises
    ------
    ValueError
        ``words`` does not have one entry per target column.
    """
    if words is None:
        words = default if default is not None else [f"w{v}" for v in range(n_words)]
    words = np.asarray([str(w) for w in words])
    if words.shape != (n_words,):
        raise ValueError(f"words has {words.size} entries but the targets have {n_words} columns")
    return words


@dataclass(frozen=True)
class Summary:
    """Summary words of N images, best first.

    Attributes
    ----------
    indices : ndarray of shape (N, k), int
        Word columns v; -1 where fewer than k words were found.
    scores : ndarray of shape (N, k)
        The words' coefficients or scores, decreasing along each row.
    words : list of list of str
        The words themselves.
    """

    indices: np.ndarray
    scores: np.ndarray
    words: list[list[str]]

    @classmethod
    def from_ranking(cls, indices: np.ndarray, scores: np.ndarray, vocabulary: np.ndarray) -> Summary:
        """Order each row's (index, score) pairs by decreasing score and name the words."""
        order = np.argsort(-scores, axis=1, kind="stable")
        indices = np.take_along_axis(indices, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        words = [[str(vocabulary[v]) for v in row if v >= 0] for row in indices]
        return cls(indices=indices, scores=scores, words=words)

    @classmethod
    def concatenate(cls, parts: Sequence[Summary]) -> Summary:
        """The summaries of consecutive chunks of images as one, in order."""
        return cls(indices=np.concatenate([part.indices for part in parts]),
                   scores=np.concatenate([part.scores for part in parts]),
                   words=[words for part in parts for words in part.words])

    @classmethod
    def top_k(cls, scores: np.ndarray, k: int, vocabulary: np.ndarray) -> Summary:
        """The k highest-scoring words of each row of a (N, V) score matrix."""
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        return cls.from_ranking(top, np.take_along_axis(scores, top, axis=1), vocabulary)
