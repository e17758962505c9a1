"""One evaluation harness for Image2Vec models and the baselines.

A system is anything with ``summarize(F, k)`` (returning an object with ``indices``, shape (N, k),
-1 for no word) and ``decision_function(F)`` (word scores, shape (N, V)); ``retrieval_scores(F, Q)``
is used for word-to-image retrieval when present.

Metrics, against the truth T (N x V, t_nv = 1 when word v is among the vocabulary words of
image n's captions):

- precision / recall / F1 at k, micro-averaged: P = sum_n |S_n & T_n| / sum_n |S_n|,
  R = sum_n |S_n & T_n| / sum_n |T_n|, F1 = 2PR / (P + R), with S_n the k summary words;
- mAP over words: for each word with at least one positive and one negative image, the average
  precision of ranking the images by the word's score; the mean over those words;
- retrieval recall at 1, 5, 10: each image's held-out caption (its vocabulary words, as a
  query indicator q) ranks all images; recall@K is the fraction of queries whose own image is
  among the top K;
- cross-modal mAP@50 (systems with a common space, ``embed_images`` / ``embed_texts``, given
  category labels): each image queries the images' bags of caption words (``map@50 i2t``) and
  each bag of words queries the images (``map@50 t2i``) by cosine, relevance = sharing a
  category, among the images with at least one category (see
  :func:`image2vec.metrics.cross_modal_map_at_k`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import average_precision_score
from sklearn.model_selection import KFold

from image2vec.metrics import cross_modal_map_at_k

RECALL_AT = (1, 5, 10)


def precision_recall_f1(summary_indices: np.ndarray, truth: Any) -> tuple[float, float, float]:
    """Micro-averaged precision, recall and F1 of summary words against the truth matrix."""
    truth = sp.csr_matrix(truth)
    chosen = summary_indices >= 0
    rows = np.broadcast_to(np.arange(len(summary_indices))[:, None], summary_indices.shape)
    hits = float(np.asarray(truth[rows[chosen], summary_indices[chosen]] > 0).sum())
    n_chosen, n_true = int(chosen.sum()), int((truth > 0).sum())
    precision = hits / n_chosen if n_chosen else 0.0
    recall = hits / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def mean_average_precision(scores: np.ndarray, truth: Any) -> tuple[float, int]:
    """Mean over words of the average precision of ranking images by the word's score.

    Words with no positive or no negative image have no AP and are left out; returns
    (mAP, number of words scored).
    """
    truth = (sp.csr_matrix(truth) > 0).toarray()
    positives = truth.sum(axis=0)
    scored = np.flatnonzero((positives > 0) & (positives < len(truth)))
    if not scored.size:
        return float("nan"), 0
    aps = [average_precision_score(truth[:, v], scores[:, v]) for v in scored]
    return float(np.mean(aps)), int(scored.size)


def retrieval_recall(scores: np.ndarray, at: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """Recall@K when query i's relevant image is image i; ``scores`` is (n_queries, N).

    Ties count against the system: an image scored equal to the right one ranks above it, so a
    system that scores every image alike (the frequency prior) gets no credit.
    """
    own = scores[np.arange(len(scores)), np.arange(len(scores))]
    rank = (scores >= own[:, None]).sum(axis=1) - 1  # other images scored at least as high
    return {f"recall@{K}": float((rank < K).mean()) for K in at}


def query_scores(system: Any, F: np.ndarray, queries: Any) -> np.ndarray:
    """Scores (n_queries, N) of the images for each query indicator row of ``queries``.

    Uses ``system.retrieval_scores`` when it has one; otherwise the sum of the query words'
    scores, each word's scores standardised over the images.
    """
    Q = sp.csr_matrix(queries, dtype=np.float64)
    if hasattr(system, "retrieval_scores"):
        return system.retrieval_scores(F, Q)
    scores = system.decision_function(F)
    spread = scores.std(axis=0)
    standard = (scores - scores.mean(axis=0)) / np.where(spread > 0, spread, 1)
    return np.asarray(Q @ standard.T)


def cross_modal_map(system: Any, F: np.ndarray, texts: Any, labels: Any, k: int = 50) -> dict[str, float]:
    """mAP@k image -> text and text -> image of a common-space system, relevance = a shared label.

    Parameters
    ----------
    system : fitted model with ``embed_images(F)`` and ``embed_texts(X)``
    F : ndarray of shape (N, p)
    texts : {array, sparse matrix} of shape (N, V)
        Each image's bag of caption words.
    labels : {array, sparse matrix} of shape (N, C)
        Category labels; images without any are left out.
    k : int
        Depth of the ranking.

    Returns
    -------
    dict
        ``map@{k} i2t`` and ``map@{k} t2i``; NaN when no image has a label.
    """
    labels = sp.csr_matrix(labels)
    if labels.shape[0] != F.shape[0]:
        raise ValueError(f"labels have {labels.shape[0]} rows but there are {F.shape[0]} images")
    labelled = np.flatnonzero(labels.getnnz(axis=1) > 0)
    if not labelled.size:
        return {f"map@{k} i2t": float("nan"), f"map@{k} t2i": float("nan")}
    y = (labels[labelled] > 0).toarray()
    images = system.embed_images(F[labelled])
    words = system.embed_texts(sp.csr_matrix(texts)[labelled])
    return {f"map@{k} i2t": cross_modal_map_at_k(images, y, words, y, k),
            f"map@{k} t2i": cross_modal_map_at_k(words, y, images, y, k)}


def evaluate(system: Any, F: np.ndarray, truth: Any, *, k: int = 3, queries: Any = None,
             labels: Any = None) -> dict:
    """Score one fitted system on images F with truth T (and optional retrieval queries).

    Parameters
    ----------
    system : fitted model
        With ``summarize`` and ``decision_function`` (see the module docstring).
    F : ndarray of shape (N, p)
    truth : {array, sparse matrix} of shape (N, V)
    k : int
        Summary length.
    queries : {array, sparse matrix} of shape (N, V), optional
        Row n: the words of a held-out caption of image n.
    labels : {array, sparse matrix} of shape (N, C), optional
        Category labels (e.g. COCO instance categories), for the cross-modal mAP@50 of
        common-space systems.

    Returns
    -------
    dict
        ``k``, ``n_images``, ``precision``, ``recall``, ``f1``, ``map``, ``n_words_map``; with
        queries, ``recall@1``, ``recall@5``, ``recall@10``; with labels and a common-space
        system, ``map@50 i2t`` and ``map@50 t2i`` (the truth is the bag of words).
    """
    summary = system.summarize(F, k)
    precision, recall, f1 = precision_recall_f1(summary.indices, truth)
    mean_ap, n_words = mean_average_precision(system.decision_function(F), truth)
    result = {"k": k, "n_images": int(F.shape[0]), "precision": precision, "recall": recall,
              "f1": f1, "map": mean_ap, "n_words_map": n_words}
    if queries is not None:
        result.update(retrieval_recall(query_scores(system, F, queries)))
    if labels is not None and hasattr(system, "embed_texts"):
        result.update(cross_modal_map(system, F, truth, labels))
    return result


def cross_validate(
    make_system: Callable[[], Any],
    F: np.ndarray,
    targets: Any,
    truth: Any,
    *,
    queries: Any = None,
    k: int = 3,
    n_splits: int = 5,
    random_state: int = 0,
    fit_params: dict | None = None,
    row_params: dict | None = None,
) -> dict:
    """K-fold by image: fit ``make_system()`` on the other folds, :func:`evaluate` on each fold.

    ``fit_params`` go to every ``fit`` unchanged (e.g. ``words``); ``row_params`` hold one row
    per image (e.g. ``labels``, the COCO categories) and are cut to the training rows.
    Returns the mean of every metric over the folds, plus ``folds`` (the per-fold dicts).
    """
    folds = []
    splitter = KFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    targets, truth = sp.csr_matrix(targets), sp.csr_matrix(truth)
    queries = None if queries is None else sp.csr_matrix(queries)
    for train, test in splitter.split(F):
        per_fold = {name: rows[train] for name, rows in (row_params or {}).items()}
        system = make_system().fit(F[train], targets[train], **(fit_params or {}), **per_fold)
        folds.append(evaluate(system, F[test], truth[test], k=k,
                              queries=None if queries is None else queries[test]))
    mean = {key: float(np.nanmean([fold[key] for fold in folds])) for key in folds[0] if key != "k"}
    return {"k": k, **mean, "n_images": int(F.shape[0]), "folds": folds}
