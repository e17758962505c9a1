"""Retrieval metrics on embeddings, plain numpy.

Cross-modal retrieval as scored in the common-vector-space literature (CVS, RVS, DCMH): every
item of one modality queries the items of another modality, ranked by cosine similarity, and an
item is relevant to a query when the two share at least one category label.
"""

from __future__ import annotations

import numpy as np

from image2vec.errors import Image2VecError

__all__ = ["check_matrix", "cross_modal_map_at_k"]


def check_matrix(name: str, a: np.ndarray) -> np.ndarray:
    """``a`` as a finite numeric 2-D array, or an Image2VecError naming ``name``."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise Image2VecError(f"{name} must be a 2-D array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
        raise Image2VecError(f"{name} must be numeric, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise Image2VecError(f"{name} contains NaN or infinite values")
    return a


def cross_modal_map_at_k(query_emb: np.ndarray, query_labels: np.ndarray,
                         gallery_emb: np.ndarray, gallery_labels: np.ndarray,
                         k: int = 50) -> float:
    r"""Mean average precision over the top ``k`` of a cosine ranking (mAP@k).

    For query q the gallery is sorted by decreasing cosine similarity (ties keep gallery order);
    item j is relevant when :math:`\langle y_q, y_j \rangle > 0` (the two share a label). With
    :math:`\mathrm{rel}(i) \in \{0, 1\}` the relevance of the item at rank i and
    :math:`P(i) = \frac{1}{i}\sum_{t \le i} \mathrm{rel}(t)`,

    .. math::
        \mathrm{AP@k}(q) = \frac{\sum_{i \le k} P(i)\,\mathrm{rel}(i)}
                                 {\sum_{i \le k} \mathrm{rel}(i)},

    0 when no relevant item reaches the top k (the normalisation by the relevant items retrieved
    is the convention of the cross-modal retrieval tables, e.g. DCMH and CVS). The result is the
    mean of AP@k over all queries.

    Parameters
    ----------
    query_emb : ndarray of shape (n_queries, d)
        Query embeddings (any norm; cosine similarity is used).
    query_labels : ndarray of shape (n_queries, n_classes)
        Binary (multi-)label indicators of the queries.
    gallery_emb : ndarray of shape (n_gallery, d)
        Gallery embeddings, same dimension d.
    gallery_labels : ndarray of shape (n_gallery, n_classes)
        Binary label indicators of the gallery items.
    k : int, default=50
        Depth of the ranking; a gallery smaller than k is ranked entirely.

    Returns
    -------
    float
        mAP@k in [0, 1].

    Raises
    ------
    Image2VecError
        On shape mismatches, non-finite values or k < 1.
    """
    q = check_matrix("query_emb", query_emb).astype(np.float64)
    g = check_matrix("gallery_emb", gallery_emb).astype(np.float64)
    yq = check_matrix("query_labels", query_labels) != 0
    yg = check_matrix("gallery_labels", gallery_labels) != 0
    if q.shape[1] != g.shape[1]:
        raise Image2VecError(f"query_emb has dimension {q.shape[1]} but gallery_emb has "
                             f"{g.shape[1]}")
    if yq.shape[0] != q.shape[0] or yg.shape[0] != g.shape[0]:
        raise Image2VecError(f"label rows ({yq.shape[0]}, {yg.shape[0]}) do not match embedding "
                             f"rows ({q.shape[0]}, {g.shape[0]})")
    if yq.shape[1] != yg.shape[1]:
        raise Image2VecError(f"query_labels has {yq.shape[1]} classes but gallery_labels has "
                             f"{yg.shape[1]}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise Image2VecError(f"k must be a positive integer, got {k!r}")
    if q.shape[0] == 0 or g.shape[0] == 0:
        raise Image2VecError("query_emb and gallery_emb must have at least one row each")
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    depth = min(int(k), g.shape[0])
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :depth]
    rel = (yq.astype(np.int64) @ yg.T.astype(np.int64) > 0)
    rel = np.take_along_axis(rel, order, axis=1).astype(np.float64)
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, depth + 1)
    n_rel = hits[:, -1]
    ap = np.divide((precision * rel).sum(axis=1), n_rel, out=np.zeros_like(n_rel),
                   where=n_rel > 0)
    return float(ap.mean())
