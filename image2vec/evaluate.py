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
from dataclasses import dataclass
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


# --------------------------------------------------------------- benchmark scores with intervals

SUMMARY_LENGTHS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class ImageScores:
    """Everything a benchmark reports of one system, kept per image so it can be resampled.

    Attributes
    ----------
    hits, chosen, true : ndarray of shape (len(ks), N)
        Per image and summary length k: summary words in the truth, summary words, truth words.
    ks : tuple of int
        The summary lengths.
    word_scores : ndarray of shape (N, V)
        The system's word scores (for mAP over words).
    truth : ndarray of shape (N, V), bool
    search_ranks : ndarray of shape (M,)
        Image search: for each caption, how many other images score at least as high as its own
        image (0 = first); ties count against the system.
    caption_images : ndarray of shape (M,)
        The image of each caption.
    annotation_ranks : ndarray of shape (N,)
        Image annotation: for each image, how many captions of other images score at least as
        high as its best own caption.
    """

    hits: np.ndarray
    chosen: np.ndarray
    true: np.ndarray
    ks: tuple
    word_scores: np.ndarray
    truth: np.ndarray
    search_ranks: np.ndarray
    caption_images: np.ndarray
    annotation_ranks: np.ndarray


def image_scores(system: Any, F: np.ndarray, truth: Any, captions: Any, caption_images: np.ndarray,
                 ks: Sequence[int] = SUMMARY_LENGTHS) -> ImageScores:
    """Score one fitted system on N images with M captions (the standard sentence protocol).

    Summaries of each length k are compared with the truth; every caption (a bag of its
    vocabulary words) ranks the N images (image search) and every image ranks the M captions
    (image annotation), both through :func:`query_scores` (``retrieval_scores`` where the system
    has one, e.g. Image2Vec's cosine between r_n and D x_caption).
    """
    truth = (sp.csr_matrix(truth) > 0).toarray()
    counts = []
    for k in ks:
        indices = system.summarize(F, k).indices
        chosen = indices >= 0
        hit = np.zeros(indices.shape, dtype=bool)
        rows = np.broadcast_to(np.arange(len(indices))[:, None], indices.shape)
        hit[chosen] = truth[rows[chosen], indices[chosen]]
        counts.append((hit.sum(axis=1), chosen.sum(axis=1)))
    hits, chosen = (np.array(part, dtype=np.float64) for part in zip(*counts))
    scores = query_scores(system, F, captions)  # (M, N)
    caption_images = np.asarray(caption_images)
    own = scores[np.arange(len(scores)), caption_images]
    search = (scores >= own[:, None]).sum(axis=1) - 1
    annotation = np.empty(len(F), dtype=np.int64)
    for image in range(len(F)):
        mine = caption_images == image
        best = scores[mine, image].max()
        annotation[image] = int((scores[~mine, image] >= best).sum())
    return ImageScores(hits, chosen, np.broadcast_to(truth.sum(axis=1), hits.shape).astype(np.float64),
                       tuple(ks), system.decision_function(F), truth, search, caption_images, annotation)


def score_metrics(scores: ImageScores, weights: np.ndarray | None = None, *,
                  map_weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The benchmark metrics, for each row of ``weights`` (multiplicities of the images).

    ``weights`` (B, N) counts how often each image is drawn (None: once each, B = 1), so the
    same code gives the figures and their bootstrap replicates. ``map_weights`` (default
    ``weights``) may be a smaller set of rows for the costlier mAP over words.

    Returns
    -------
    dict of str to ndarray of shape (B,)
        ``P@k``, ``R@k``, ``F1@k`` for every k, ``mAP``, ``search R@1/5/10``, ``search medr``,
        ``annotation R@1/5/10``, ``annotation medr`` (median ranks 1-based).
    """
    n = len(scores.annotation_ranks)
    weights = np.ones((1, n)) if weights is None else np.atleast_2d(weights).astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for i, k in enumerate(scores.ks):
        hits, chosen, true = (weights @ part[i] for part in (scores.hits, scores.chosen, scores.true))
        precision = np.divide(hits, chosen, out=np.zeros_like(hits), where=chosen > 0)
        recall = np.divide(hits, true, out=np.zeros_like(hits), where=true > 0)
        total = precision + recall
        out[f"P@{k}"], out[f"R@{k}"] = precision, recall
        out[f"F1@{k}"] = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    out["mAP"] = _weighted_map(scores.word_scores, scores.truth, weights if map_weights is None
                               else np.atleast_2d(map_weights).astype(np.float64))
    query_weights = weights[:, scores.caption_images]
    for name, ranks, w in (("search", scores.search_ranks, query_weights),
                           ("annotation", scores.annotation_ranks, weights)):
        for K in RECALL_AT:
            out[f"{name} R@{K}"] = 100 * (w @ (ranks < K)) / w.sum(axis=1)
        out[f"{name} medr"] = _weighted_median(ranks + 1, w)
    return out


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The lower weighted median of ``values`` for each row of ``weights``."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[:, order], axis=1)
    position = (cumulative < cumulative[:, -1:] / 2).sum(axis=1)
    return values[order][np.minimum(position, len(values) - 1)].astype(np.float64)


def _weighted_map(word_scores: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean over words of the average precision of ranking the images by the word's score.

    Images count with their multiplicity in each row of ``weights``; tied scores form one
    threshold (as scikit-learn's ``average_precision_score``). Words without a positive or
    without a negative image in a replicate are left out of its mean.
    """
    total = np.zeros(len(weights))
    counted = np.zeros(len(weights))
    for v in range(truth.shape[1]):
        relevant = truth[:, v]
        if not relevant.any() or relevant.all():
            continue
        order = np.argsort(-word_scores[:, v], kind="stable")
        sorted_scores, rel = word_scores[order, v], relevant[order]
        ends = np.searchsorted(-sorted_scores, -sorted_scores, side="right") - 1  # end of each tie
        w = weights[:, order]
        cum_w = np.cumsum(w, axis=1)[:, ends]
        cum_rel = np.cumsum(w * rel, axis=1)[:, ends]
        positives = (w * rel).sum(axis=1)
        negatives = (w * ~rel).sum(axis=1)
        precision = np.divide(cum_rel, cum_w, out=np.zeros_like(cum_rel), where=cum_w > 0)
        ap = np.divide((w * rel * precision).sum(axis=1), positives, out=np.zeros_like(positives),
                       where=positives > 0)
        usable = (positives > 0) & (negatives > 0)
        total += np.where(usable, ap, 0)
        counted += usable
    return np.divide(total, counted, out=np.full_like(total, np.nan), where=counted > 0)


def bootstrap_weights(n: int, n_boot: int = 1000, random_state: int = 0) -> np.ndarray:
    """(n_boot, n) multiplicities of n images drawn with replacement, n times per replicate."""
    rng = np.random.default_rng(random_state)
    return rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(np.float64)


def with_intervals(estimates: dict[str, np.ndarray], replicates: dict[str, np.ndarray],
                   level: float = 0.95, corrected: Sequence[str] = ("mAP",)) -> dict[str, tuple[float, float, float]]:
    """(estimate, low, high): the percentile bootstrap interval of every metric.

    Resampling images with replacement biases mAP upwards (a relevant image drawn twice raises
    the precision at its rank), so for the ``corrected`` metrics the replicates are first shifted
    by their bias, mean(replicates) - estimate (bias-corrected percentile interval). Precision,
    recall and retrieval recall are ratios of sums over images and need no correction.
    """
    tail = 100 * (1 - level) / 2
    out = {}
    for name, estimate in estimates.items():
        value = float(estimate[0])
        draws = replicates[name]
        if name in corrected:
            draws = draws - (np.nanmean(draws) - value)
        out[name] = (value, *map(float, np.nanpercentile(draws, [tail, 100 - tail])))
    return out
