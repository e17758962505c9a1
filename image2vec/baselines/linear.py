r"""Two linear baselines: reduced-rank ridge regression (``ridge``) and mean-vector CCA (``cca``).

Both see the image features as the Image2Vec model does: centred with the training mean mu and
L2-normalised, f'_n = (f_n - mu) / ||f_n - mu|| (:func:`image2vec.arrays.preprocess_features`),
and both then centre f' with its training mean m.

**ridge** (:class:`ReducedRankRidge`), the rank-d reduced-rank regression of issue 12: a ridge
regression from f' to the word targets x_n (N x V),

    B = argmin_B ||(X - xbar) - (F' - m) B||_F^2 + alpha ||B||_F^2        (scikit-learn ``Ridge``),

whose training fitted values Yhat = (F' - m) B are truncated to rank d: with V_d the top-d right
singular vectors of Yhat (V x d), the word scores of an image are

    yhat_n = V_d V_d^T B^T (f'_n - m) + xbar.

It is a word-sum model of the project's kind: embedding r_n = V_d^T B^T (f'_n - m) in R^d, word
vectors = the rows of V_d, scores = V_d r_n (+ xbar).

**cca** (:class:`MeanVectorCCA`), Klein et al. 2015's "mean vector + CCA": the text of image n is
the mean GloVe vector of its words, t_n = sum_v x_nv g_v / sum_v x_nv over the vocabulary words
that have a GloVe vector g_v, and regularised CCA (:func:`regularized_cca`) finds projections A
(p x k) of the images and B (q x k) of the texts with maximal correlations s_1 >= ... >= s_k.
Canonical coordinates are weighted by s^power (Gong et al. 2014 weight the canonical dimensions
by a power of the correlations) and compared by cosine.

Vocabulary words are given GloVe vectors by :func:`~image2vec.baselines.imnet_glove.phrase_vector`:
a word GloVe knows has its own vector; a multi-word or hyphenated one the mean vector of its
known pieces; a word with no known piece has none (it adds nothing to a text and is never
a summary word).
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import Ridge
from sklearn.utils._param_validation import Interval, InvalidParameterError
from sklearn.utils.validation import check_is_fitted, validate_data

from image2vec.arrays import canonical_pairs, check_shapes, preprocess_features, unit_rows
from image2vec.baselines.imnet_glove import load_glove, phrase_vector
from image2vec.baselines.neighbors import WordScorer
from image2vec.summary import check_words

__all__ = ["MeanVectorCCA", "ReducedRankRidge", "regularized_cca"]


def regularized_cca(A: np.ndarray, B: np.ndarray, reg_a: float, reg_b: float,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Regularised canonical correlation analysis of two centred views, all canonical pairs.

    With the covariances C_aa = A^T A / N, C_bb = B^T B / N, C_ab = A^T B / N, each view's is
    regularised by a fraction of its mean eigenvalue, C~_aa = C_aa + reg_a tr(C_aa)/p I (and
    likewise for b), and whitened, K_a^T C~_aa K_a = I. The SVD of the whitened cross-covariance
    K_a^T C_ab K_b = U diag(s) V^T gives the projections W_a = K_a U, W_b = K_b V and the
    (regularised) canonical correlations s: A W_a and B W_b have unit variance per column (for
    reg -> 0) and corr(A w_a,i, B w_b,i) = s_i, in decreasing order.

    Parameters
    ----------
    A : ndarray of shape (N, p)
        First view, centred (zero column means).
    B : ndarray of shape (N, q)
        Second view, centred.
    reg_a, reg_b : float
        Ridge on each covariance, as a fraction of its mean eigenvalue tr(C)/dim (>= 0; with 0 a
        view's directions of no variance are dropped).

    Returns
    -------
    W_a : ndarray of shape (p, k)
    W_b : ndarray of shape (q, k)
    s : ndarray of shape (k,)
        k = min(r_a, r_b, N - 1) pairs, r = the number of directions each view keeps; pairs
        beyond the rank of the cross-covariance have s = 0.
    """
    n = A.shape[0]
    W_a, W_b, s = canonical_pairs(A.T @ A / n, B.T @ B / n, A.T @ B / n, reg_a, reg_b)
    k = min(len(s), n - 1)
    return W_a[:, :k], W_b[:, :k], s[:k]


class _LinearBaseline(WordScorer):
    """What the two linear baselines share: parameter checks, targets, preprocessed features."""

    _parameter_constraints: dict = {}

    def check_params(self) -> None:
        """Validate the hyper-parameters (``fit`` does it first, before any work).

        Raises
        ------
        sklearn.utils._param_validation.InvalidParameterError
            (a ValueError) naming the parameter: wrong type (a bool counts as wrong), NaN or
            out of range.
        """
        self._validate_params()
        for name in self._parameter_constraints:
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)):
                raise InvalidParameterError(f"The {name!r} parameter of {type(self).__name__} "
                                            f"must be a number, not the bool {value!r}.")

    def _fit_inputs(self, X: Any, y: Any, words: Any) -> tuple[np.ndarray, sp.csr_matrix]:
        """Check the settings and the data; set ``words_`` and ``feature_mean_``; return the
        preprocessed features F' (N, p) and the targets (CSR, N x V)."""
        self.check_params()
        F, y = validate_data(self, X, y, accept_sparse=False, multi_output=True, dtype=np.float64)
        if y.ndim != 2:
            raise ValueError(f"y must be word targets of shape (N, V), got shape {y.shape}")
        targets = sp.csr_matrix(y, dtype=np.float64)
        if targets.nnz and targets.data.min() < 0:
            raise ValueError("word targets y must be >= 0 (x_nv: how strongly word v describes image n)")
        self.words_ = check_words(words, targets.shape[1])
        self.feature_mean_ = F.mean(axis=0)
        return preprocess_features(F, self.feature_mean_), targets

    def _centred(self, F: Any) -> np.ndarray:
        """f'_n - m for new images, (N, p)."""
        check_is_fitted(self, "preprocessed_mean_")
        F = validate_data(self, F, reset=False, dtype=np.float64)
        return preprocess_features(F, self.feature_mean_) - self.preprocessed_mean_

    def _capped(self, name: str, available: int, why: str) -> int:
        """The setting ``name``, lowered to ``available`` with a warning when it asks for more."""
        value = int(getattr(self, name))
        if value > available:
            warnings.warn(f"{name}={value} exceeds {why} = {available}; using {name}={available}",
                          UserWarning, stacklevel=3)
        return min(value, available)


class ReducedRankRidge(_LinearBaseline):
    r"""Rank-d reduced-rank ridge regression from image features to word targets (``ridge``).

    Ridge regression B from the preprocessed features to the centred targets, its training fitted
    values truncated to rank d (see the module docstring):
    yhat_n = V_d V_d^T B^T (f'_n - m) + xbar, with V_d the top-d right singular vectors of the
    training fitted values Yhat = (F' - m) B.

    Parameters
    ----------
    alpha : float, default 1.0
        Ridge weight (>= 0) on the unit-norm features.
    dim : int, default 256
        Rank d; lowered with a warning to min(N, p, V).

    Attributes
    ----------
    coef_ : ndarray of shape (p, d)
        B V_d: maps centred features to rank-d coordinates r_n = V_d^T (yhat_n - xbar).
    components_ : ndarray of shape (d, V)
        V_d^T, the word vectors as columns.
    target_mean_ : ndarray of shape (V,)
        xbar (the ridge intercept).
    feature_mean_ : ndarray of shape (p,)
        mu, the training mean of the raw features.
    preprocessed_mean_ : ndarray of shape (p,)
        m, the training mean of the preprocessed features.
    dim_ : int
        d after the cap.
    words_ : ndarray of shape (V,), str
    n_features_in_ : int
    """

    _parameter_constraints: dict = {"alpha": [Interval(Real, 0, None, closed="left")],
                                    "dim": [Interval(Integral, 1, None, closed="left")]}

    def __init__(self, alpha: float = 1.0, dim: int = 256):
        self.alpha = alpha
        self.dim = dim

    def fit(self, X: Any, y: Any, words: Any = None) -> ReducedRankRidge:
        """Fit the ridge map and its rank-d truncation.

        Parameters
        ----------
        X : array-like of shape (N, p)
            Image features F.
        y : {array-like, sparse matrix} of shape (N, V)
            Word targets x_nv >= 0.
        words : sequence of str of length V, optional
            Vocabulary (default ``w0, w1, ...``).
        """
        Fp, targets = self._fit_inputs(X, y, words)
        n, p = Fp.shape
        self.dim_ = self._capped("dim", min(n, p, targets.shape[1]), "min(n_samples, n_features, n_words)")
        self.preprocessed_mean_ = Fp.mean(axis=0)
        centred = Fp - self.preprocessed_mean_
        ridge = Ridge(alpha=self.alpha).fit(centred, targets.toarray())
        B = ridge.coef_.T  # (p, V)
        # Yhat = centred B = Q (R B) with Q orthonormal: Yhat's right singular vectors are R B's
        R = np.linalg.qr(centred, mode="r")
        _, _, Vt = np.linalg.svd(R @ B, full_matrices=False)
        self.components_ = Vt[:self.dim_]
        self.coef_ = B @ self.components_.T
        self.target_mean_ = ridge.intercept_
        return self

    def transform(self, F: Any) -> np.ndarray:
        """Rank-d coordinates r_n = V_d^T (yhat_n - xbar) = V_d^T B^T (f'_n - m), shape (N, d)."""
        return self._centred(F) @ self.coef_

    def decision_function(self, F: Any) -> np.ndarray:
        """Word scores yhat_n = V_d r_n + xbar, shape (N, V): the truncated ridge predictions."""
        return self.transform(F) @ self.components_ + self.target_mean_

    def retrieval_scores(self, F: Any, queries: Any) -> np.ndarray:
        r"""cos(r_n, V_d^T (q - xbar)) for every query q (rows of ``queries``, bags of words over
        the vocabulary, sparse or dense) and image n: shape (n_queries, N).

        Query and image are compared in the rank-d coordinates, the query by its deviation from
        the mean target, as the image's prediction is.
        """
        images = unit_rows(self.transform(F))
        Q = sp.csr_matrix(queries, dtype=np.float64)
        if Q.shape[1] != self.words_.size:
            raise ValueError(f"queries have {Q.shape[1]} word columns but the model has {self.words_.size} words")
        coordinates = np.asarray(Q @ self.components_.T) - self.target_mean_ @ self.components_.T
        return unit_rows(coordinates) @ images.T

    def check_loaded(self) -> None:
        """Raise ValueError unless the fitted arrays of a loaded model fit together."""
        p, (d, n_words) = self.feature_mean_.shape[0], self.components_.shape
        check_shapes(self, {"coef_": (p, d), "preprocessed_mean_": (p,), "target_mean_": (n_words,),
                            "words_": (n_words,)})
        if self.dim_ != d or self.n_features_in_ != p:
            raise ValueError(f"dim_ = {self.dim_} and n_features_in_ = {self.n_features_in_} "
                             f"for a rank-{d} map of {p} features")


class MeanVectorCCA(_LinearBaseline):
    r"""Mean GloVe vector of the words against the image features by CCA (``cca``).

    Klein et al. 2015's "mean vector + CCA" (see the module docstring). Text of image n:
    t_n = sum_v x_nv g_v / sum_v x_nv over the words with a GloVe 6B 50d vector; images none of
    whose words has one are left out of the fit. Regularised CCA (:func:`regularized_cca`)
    between f'_n - m and t_n - tbar gives A (p x k), B (q x k) and correlations s. Canonical
    coordinates, weighted by s^power and scaled to unit norm:

        u_n = unit(diag(s)^power A^T (f'_n - m))        (images, :meth:`embed_images`)
        w(t) = unit(diag(s)^power B^T (t - tbar))         (texts, :meth:`embed_texts`)

    Word scores: cos(u_n, w(g_v)), each word as a one-word text, -1 for words without a GloVe
    vector. Retrieval: cos(u_n, w(t_q)) with t_q the mean vector of the query's words (a query
    with no such word scores 0 everywhere).

    Parameters
    ----------
    reg : float, default 0.1
        Image-side ridge on C_ff, a fraction of its mean eigenvalue (>= 0).
    text_reg : float, default 1e-3
        Text-side ridge on C_tt, likewise.
    n_components : int, default 50
        k, at most 50 (the GloVe dimension); lowered with a warning to the number of canonical
        pairs available (see :func:`regularized_cca`).
    power : float, default 1.0
        Canonical coordinates are multiplied by s^power (0: unweighted). On Flickr8k dev,
        power 1 against 0: image-search R@10 33.7 against 29.3.

    Attributes
    ----------
    image_weights_ : ndarray of shape (p, k)
        A.
    text_weights_ : ndarray of shape (q, k)
        B.
    correlations_ : ndarray of shape (k,)
        s, the regularised canonical correlations of the training data, decreasing.
    text_mean_ : ndarray of shape (q,)
        tbar.
    word_vectors_ : ndarray of shape (V, q)
        g_v, zero rows for words without a vector.
    has_vector_ : ndarray of shape (V,), bool
    feature_mean_, preprocessed_mean_ : ndarray of shape (p,)
        mu and m.
    n_components_ : int
        k after the cap.
    words_ : ndarray of shape (V,), str
    n_features_in_ : int
    """

    _parameter_constraints: dict = {"reg": [Interval(Real, 0, None, closed="left")],
                                    "text_reg": [Interval(Real, 0, None, closed="left")],
                                    "n_components": [Interval(Integral, 1, 50, closed="both")],
                                    "power": [Interval(Real, 0, None, closed="left")]}

    def __init__(self, reg: float = 0.1, text_reg: float = 1e-3, n_components: int = 50,
                 power: float = 1.0):
        self.reg = reg
        self.text_reg = text_reg
        self.n_components = n_components
        self.power = power

    def fit(self, X: Any, y: Any, words: Any = None) -> MeanVectorCCA:
        """Fit CCA between the images and the mean word vectors of their targets.

        Parameters
        ----------
        X : array-like of shape (N, p)
            Image features F.
        y : {array-like, sparse matrix} of shape (N, V)
            Word targets x_nv >= 0 (the weights of the mean).
        words : sequence of str of length V, optional
            Vocabulary (default ``w0, w1, ...``, which GloVe does not know: give the words).
        """
        Fp, targets = self._fit_inputs(X, y, words)
        glove = load_glove()
        vectors = [phrase_vector(glove, word) for word in self.words_]
        self.has_vector_ = np.array([v is not None for v in vectors], dtype=bool)
        self.word_vectors_ = np.zeros((self.words_.size, glove.dim))
        if self.has_vector_.any():
            self.word_vectors_[self.has_vector_] = np.vstack([v for v in vectors if v is not None])
        texts, known = self._mean_vectors(targets)
        if known.sum() < 2:
            raise ValueError(f"cca needs at least 2 images with a word that has a GloVe vector, "
                             f"got {int(known.sum())} ({int(self.has_vector_.sum())} of "
                             f"{self.words_.size} vocabulary words have one)")
        Fp, texts = Fp[known], texts[known]
        self.preprocessed_mean_ = Fp.mean(axis=0)
        self.text_mean_ = texts.mean(axis=0)
        A, B, s = regularized_cca(Fp - self.preprocessed_mean_, texts - self.text_mean_,
                                  self.reg, self.text_reg)
        self.n_components_ = self._capped("n_components", s.size, "the canonical pairs available")
        self.image_weights_ = A[:, :self.n_components_]
        self.text_weights_ = B[:, :self.n_components_]
        self.correlations_ = s[:self.n_components_]
        return self

    def _mean_vectors(self, bags: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """t_n = sum_v x_nv g_v / sum_v x_nv over the words with a vector, (N, q); and the mask
        (N,) of the rows that have such a word (the others are zero)."""
        known = bags @ sp.diags(self.has_vector_.astype(np.float64))
        mass = np.asarray(known.sum(axis=1)).ravel()
        texts = np.asarray(known @ self.word_vectors_) / np.where(mass > 0, mass, 1)[:, None]
        return texts, mass > 0

    def _weighted(self, coordinates: np.ndarray) -> np.ndarray:
        return unit_rows(coordinates * self.correlations_ ** self.power)

    def embed_images(self, F: Any) -> np.ndarray:
        """u_n = unit(diag(s)^power A^T (f'_n - m)), shape (N, k)."""
        return self._weighted(self._centred(F) @ self.image_weights_)

    def embed_texts(self, X: Any) -> np.ndarray:
        """w(t_n) = unit(diag(s)^power B^T (t_n - tbar)) for bags of words (N x V, weights
        x_nv >= 0), shape (N, k); a zero row for a bag without a word that has a GloVe vector."""
        check_is_fitted(self, "text_weights_")
        bags = sp.csr_matrix(X, dtype=np.float64)
        if bags.shape[1] != self.words_.size:
            raise ValueError(f"texts have {bags.shape[1]} word columns but the model has {self.words_.size} words")
        texts, known = self._mean_vectors(bags)
        return self._weighted((texts - self.text_mean_) @ self.text_weights_) * known[:, None]

    def decision_function(self, F: Any) -> np.ndarray:
        """Word scores cos(u_n, w(g_v)), shape (N, V); -1 for words without a GloVe vector."""
        scores = self.embed_images(F) @ self.embed_texts(sp.identity(self.words_.size)).T
        scores[:, ~self.has_vector_] = -1.0
        return scores

    def retrieval_scores(self, F: Any, queries: Any) -> np.ndarray:
        """cos(u_n, w(t_q)) for every query bag of words q (rows of ``queries``) and image n:
        shape (n_queries, N)."""
        return self.embed_texts(queries) @ self.embed_images(F).T

    def check_loaded(self) -> None:
        """Raise ValueError unless the fitted arrays of a loaded model fit together."""
        (p, k), (n_words, q) = self.image_weights_.shape, self.word_vectors_.shape
        check_shapes(self, {"text_weights_": (q, k), "correlations_": (k,), "text_mean_": (q,),
                            "has_vector_": (n_words,), "words_": (n_words,),
                            "feature_mean_": (p,), "preprocessed_mean_": (p,)})
        if self.n_components_ != k or self.n_features_in_ != p:
            raise ValueError(f"n_components_ = {self.n_components_} and n_features_in_ = "
                             f"{self.n_features_in_} for {k} components of {p} features")
