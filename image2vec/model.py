"""The Image2Vec estimator: images embedded as sums of visual word vectors.

Notation of DESIGN.md: F is N x p (image features f_n), X is N x V (word targets x_n), D is d x V
(word vectors d_v, its columns), W is d x p (the image map). Features are centred with the
training mean mu and L2-normalised, f'_n = (f_n - mu) / ||f_n - mu||, and the model has an
intercept (a mean-image term): it fits

    W (f'_n - m) ~= D (x_n - xbar)        m, xbar = training means of f' and x,

so the embedding r_n = W f'_n + (D xbar - W m) lives in word-sum space, r_n ~= D x_n, and its
words are read back by non-negative OMP over D.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from image2vec.errors import Image2VecError
from image2vec.summary import Summary, check_words
from solvers import (
    bcd,
    box_least_squares,
    incoherence_weights,
    omp_gram,
    sgd,
    sufficient_stats,
)
from solvers.backend import gpu_available, to_numpy

MODELS = ("simple", "learn-all", "weak-tag")
OBJECTIVES = ("l2", "ip")
SOLVERS = ("bcd", "sgd")
READOUTS = ("omp", "rank")


class Image2Vec(TransformerMixin, BaseEstimator):
    """Learn word vectors D and an image map so that an image's embedding is the sum of its words.

    Parameters
    ----------
    model : {"simple", "learn-all", "weak-tag"}, default "learn-all"
        ``simple``: W is a fixed Johnson-Lindenstrauss projection (entries N(0, 1/d), seeded by
        ``random_state``), only D is learned. ``learn-all``: D and W are learned, W W^T = I.
        ``weak-tag``: learn-all plus per-image tag weights a_n in [0, 1] on the image's own
        words, x_n -> a_n * x_n, for noisy tags.
    objective : {"l2", "ip"}, default "l2"
        ``l2``: minimise (1/2N) sum ||r_n - D x_n||^2 + (lam/2) ||D||_F^2
        (+ (gamma/2) sum_{u != v} K_uv (d_u . d_v)^2). ``ip``: maximise (1/N) sum r_n . D x_n
        with ||d_v|| = 1.
    solver : {"bcd", "sgd"}, default "bcd"
        Block coordinate descent on sufficient statistics, or minibatch SGD streaming rows.
    dim : int, default 256
        Embedding dimension d (at most the feature dimension p unless ``model="simple"``).
    lam : float, optional
        Ridge weight of the ``l2`` objective; default 1e-3 (``l2``) and 0 (``ip``, where it is
        refused).
    gamma : float, default 0
        Co-occurrence incoherence weight (``l2`` only).
    k : int, default 3
        Summary length of :meth:`predict`.
    readout : {"omp", "rank"}, default "omp"
        How summary words are read out of an embedding r: ``omp`` solves
        min_{x >= 0, ||x||_0 <= k} ||r - D x||^2 + prior_weight ||x - xbar||^2 greedily
        (non-negative OMP over the atoms [d_v; sqrt(prior_weight) e_v], words ordered by
        coefficient, the estimate of x_nv); ``rank`` takes the k highest scores D^T r.
    prior_weight : float, default 1.0
        mu above: pulls the sparse code towards the training mean xbar, a word-frequency
        prior; 0 gives plain non-negative OMP over D.
    normalize : bool, default True
        L2-normalise the centred features.
    whiten : bool, default False
        Learn W on whitened principal components of the features (needs dim <= the number of
        directions the training images span). This makes the l2 W-step exact Procrustes and
        removes the l2 objective's pull towards low-variance feature directions; on the
        80-image COCO subset it scored lower (the whitened noise directions), so it is off.
    max_iter : int, default 50
        BCD sweeps.
    tol : float, default 1e-6
        BCD relative stopping tolerance.
    n_epochs, batch_size, learning_rate
        SGD settings.
    random_state : int, Generator or None
        Seeds the JL projection and SGD's row order.
    device : {"cpu", "cuda"}, default "cpu"
        Where the solvers run (``cuda`` needs CuPy and a CUDA device).

    Attributes
    ----------
    dictionary_ : ndarray of shape (d, V)
        D, one word vector per column.
    image_map_ : ndarray of shape (d, p)
        W.
    feature_mean_ : ndarray of shape (p,)
        mu, the training mean of the raw features.
    offset_ : ndarray of shape (d,)
        D xbar - W m, the intercept of the embedding.
    target_mean_ : ndarray of shape (V,)
        xbar, the training mean of the (weighted) targets.
    words_ : ndarray of shape (V,), str
        The vocabulary.
    classes_ : ndarray
        The labels, when ``fit`` got a 1-d label vector (then :meth:`predict` returns labels).
    tag_weights_ : scipy.sparse.csr_matrix of shape (N, V)
        a_n on the training images' words (``weak-tag``).
    objective_trace_ : list of (iteration, block, value)
        The objective after every block (bcd) or epoch (sgd).
    """

    def __init__(
        self,
        model: str = "learn-all",
        objective: str = "l2",
        solver: str = "bcd",
        dim: int = 256,
        lam: float | None = None,
        gamma: float = 0.0,
        k: int = 3,
        readout: str = "omp",
        prior_weight: float = 1.0,
        normalize: bool = True,
        whiten: bool = False,
        max_iter: int = 50,
        tol: float = 1e-6,
        n_epochs: int = 30,
        batch_size: int = 256,
        learning_rate: float = 0.5,
        random_state: Any = None,
        device: str = "cpu",
    ):
        self.model = model
        self.objective = objective
        self.solver = solver
        self.dim = dim
        self.lam = lam
        self.gamma = gamma
        self.k = k
        self.readout = readout
        self.prior_weight = prior_weight
        self.normalize = normalize
        self.whiten = whiten
        self.max_iter = max_iter
        self.tol = tol
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.device = device

    # ------------------------------------------------------------------ fitting

    def fit(self, X: Any, y: Any, words: Any = None) -> "Image2Vec":
        """Learn D and W (and tag weights) from image features and word targets.

        scikit-learn names the arguments X and y; in the notation of DESIGN.md they are the
        features F and the targets X.

        Parameters
        ----------
        X : array-like of shape (N, p)
            Image features F (dense).
        y : {array-like, sparse matrix} of shape (N, V), or array-like of shape (N,)
            Word targets x_nv >= 0 (e.g. the fraction of an image's captions containing word v),
            or one label per image (each label becomes a word).
        words : sequence of str of length V, optional
            Vocabulary; default the labels, or "w0", "w1", ...

        Returns
        -------
        self
        """
        lam = self.check_params()
        F, X = validate_data(self, X, y, accept_sparse=False, dtype=[np.float64, np.float32],
                             multi_output=True, y_numeric=False)
        X = self._targets(X)
        self.words_ = check_words(words, X.shape[1], getattr(self, "classes_", None))
        if self.model != "simple" and self.dim > F.shape[1]:
            raise ValueError(
                f"dim={self.dim} exceeds n_features={F.shape[1]}: model={self.model!r} needs "
                "W W^T = I; lower dim or use model='simple'"
            )
        xp = self._array_module()
        self.feature_mean_ = F.mean(axis=0)
        Fp = self._preprocess(F)
        learn_w = self.model != "simple"
        # A learned W works in principal-axis coordinates (whitened with ``whiten``).
        basis = self._principal_basis(Fp) if learn_w else np.eye(Fp.shape[1])
        Fw = Fp @ basis
        W0 = self._initial_map(Fw.shape[1], xp)
        if self.solver == "bcd":  # sgd streams the rows and needs no statistics but X^T X
            stats = sufficient_stats(Fw, X).to(xp, np.float64)
            cooccurrence = stats.C
        else:
            cooccurrence = xp.asarray((X.T @ X).toarray()) if self.gamma else None
        weights = incoherence_weights(cooccurrence) if self.gamma else None
        terms = dict(objective_kind=self.objective, lam=lam, gamma=self.gamma, cooccurrence=weights)
        a_step = _TagWeights(Fw, X, self.objective, xp) if self.model == "weak-tag" else None
        if self.solver == "bcd":
            sample_step = None if a_step is None else (lambda D, W: a_step(D, W, stats_of=sufficient_stats).to(xp, np.float64).centered())
            result = bcd(stats.centered(), W0, learn_w=learn_w, sample_step=sample_step,
                         max_iter=self.max_iter, tol=self.tol, **terms)
        else:
            result = sgd(Fw, X, W0, learn_w=learn_w, center=True,
                         sample_step=None if a_step is None else a_step, n_epochs=self.n_epochs,
                         batch_size=self.batch_size, learning_rate=self.learning_rate,
                         random_state=self.random_state, xp=xp, **terms)
        targets = X if a_step is None else a_step.weighted()
        self.dictionary_ = to_numpy(result.D)
        self.image_map_ = to_numpy(result.W) @ basis.T  # back to the features' coordinates
        self.target_mean_ = np.asarray(targets.mean(axis=0)).ravel()
        self.offset_ = self.dictionary_ @ self.target_mean_ - self.image_map_ @ Fp.mean(axis=0)
        self.objective_trace_ = result.trace
        self.n_iter_ = result.n_iter
        if self.readout == "omp":
            self._readout_gram()  # cached here: predicting must not change the estimator
        if a_step is not None:
            self.tag_weights_ = a_step.weights_matrix()
        return self

    def check_params(self) -> float:
        """Validate the hyper-parameters (``fit`` does it first); returns the effective lam.

        Raises
        ------
        ValueError
            An unknown model, objective, solver or read-out, a non-positive size, or a
            combination that makes no sense (lam or gamma with ``objective="ip"``).
        """
        for name, value, allowed in (("model", self.model, MODELS), ("objective", self.objective, OBJECTIVES),
                                     ("solver", self.solver, SOLVERS), ("readout", self.readout, READOUTS),
                                     ("device", self.device, ("cpu", "cuda"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("dim", "k", "max_iter", "n_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.objective == "ip" and (self.lam or self.gamma):
            raise ValueError(
                "lam and gamma apply to objective='l2' only: with 'ip' every word has norm 1, "
                "so there is no norm to penalise"
            )
        lam = 1e-3 if self.lam is None and self.objective == "l2" else (self.lam or 0.0)
        if lam < 0 or self.gamma < 0 or self.prior_weight < 0:
            raise ValueError(f"lam, gamma and prior_weight must be >= 0, got lam={lam}, "
                             f"gamma={self.gamma}, prior_weight={self.prior_weight}")
        return float(lam)

    def _targets(self, X: Any) -> sp.csr_matrix:
        """X as CSR float64 (N x V); a 1-d label vector becomes one indicator column per label."""
        if not sp.issparse(X) and np.ndim(X) == 1:
            self.classes_, labels = np.unique(X, return_inverse=True)
            return sp.csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)),
                                 shape=(len(labels), len(self.classes_)))
        if hasattr(self, "classes_"):
            del self.classes_
        X = sp.csr_matrix(X, dtype=np.float64)
        if X.nnz and X.data.min() < 0:
            raise ValueError("word targets X must be >= 0 (x_nv: how strongly word v describes image n)")
        return X

    def _array_module(self):
        if self.device == "cpu":
            return np
        if not gpu_available():
            raise Image2VecError("device='cuda' needs CuPy (pip install image2vec[gpu]) and a CUDA device")
        import cupy

        return cupy

    def _preprocess(self, F: np.ndarray) -> np.ndarray:
        """f' = (f - mu) / ||f - mu|| (the division only with ``normalize``)."""
        centred = np.asarray(F, dtype=np.float64) - self.feature_mean_
        if self.normalize:
            norms = np.linalg.norm(centred, axis=1, keepdims=True)
            centred /= np.where(norms > 0, norms, 1)
        return centred

    def _principal_basis(self, Fp: np.ndarray) -> np.ndarray:
        r"""The coordinates a learned W works in: principal axes of the centred features.

        With the centred scatter A = U diag(s) U^T (s decreasing), the basis is U (p x p, a
        rotation: W's initial value, the identity rows, is then the top-d principal directions).
        With ``whiten`` it is U_q diag(s_q / N)^{-1/2} over the q directions of non-zero
        variance: the whitened features have scatter N I, so tr(W A_w W^T) = N d is constant on
        {W W^T = I} and the l2 W-step is exactly orthogonal Procrustes. Without whitening the l2
        objective can lower itself by turning W towards directions where the images barely vary
        (r_n ~= 0, D ~= 0 fit them well); a strong ridge ``lam`` makes that drift likely.
        """
        centred = Fp - Fp.mean(axis=0)
        values, vectors = np.linalg.eigh(centred.T @ centred)
        values, vectors = values[::-1], vectors[:, ::-1]
        if not self.whiten:
            return vectors
        rank = int((values > 1e-9 * max(values[0], 1e-300)).sum())
        if self.dim > rank:
            raise ValueError(
                f"dim={self.dim} exceeds the {rank} directions in which the {len(Fp)} training "
                "images vary, and whiten=True needs W W^T = I on them; lower dim or use more images"
            )
        return vectors[:, :rank] / np.sqrt(values[:rank] / len(Fp))

    def _initial_map(self, n_features: int, xp):
        """JL projection (simple) or the top-d principal axes (learned W, in principal coordinates)."""
        if self.model == "simple":
            rng = np.random.default_rng(self.random_state)
            return xp.asarray(rng.standard_normal((self.dim, n_features)) / np.sqrt(self.dim))
        return xp.eye(self.dim, n_features)

    # ------------------------------------------------------------------ using a model

    def transform(self, F: Any) -> np.ndarray:
        """Embeddings r_n = W f'_n + (D xbar - W m), shape (N, d)."""
        check_is_fitted(self, "dictionary_")
        F = validate_data(self, F, reset=False, dtype=[np.float64, np.float32])
        return self._preprocess(F) @ self.image_map_.T + self.offset_

    def decision_function(self, F: Any) -> np.ndarray:
        """Word scores D^T r_n, shape (N, V): a full ranking of the vocabulary per image."""
        return self.transform(F) @ self.dictionary_

    def summarize(self, F: Any, k: int | None = None) -> Summary:
        """The k words that best explain each image's embedding (see ``readout``).

        ``omp``: min_{x >= 0, ||x||_0 <= k} ||r_n - D x||^2 + mu ||x - xbar||^2 by non-negative
        OMP in Gram form (G = D^T D + mu I, correlations D^T r_n + mu xbar), words ordered by
        coefficient. ``rank``: the k largest scores D^T r_n.
        """
        k = self.k if k is None else k
        embedded = self.transform(F)
        if self.readout == "rank":
            return Summary.top_k(embedded @ self.dictionary_, k, self.words_)
        mu, gram = self._readout_gram()
        prior = self.target_mean_
        code = omp_gram(gram, embedded @ self.dictionary_ + mu * prior,
                        (embedded**2).sum(axis=1) + mu * prior @ prior, k, nonneg=True)
        return Summary.from_ranking(code.indices, code.coefs, self.words_)

    def _readout_gram(self) -> tuple[float, np.ndarray]:
        """mu and the read-out's Gram matrix G = D^T D + mu I, cached per dictionary and mu."""
        mu = float(self.prior_weight)
        cached = getattr(self, "_gram_cache", None)
        if cached is None or cached[0] != mu or cached[1] is not self.dictionary_:
            gram = self.dictionary_.T @ self.dictionary_ + mu * np.eye(self.dictionary_.shape[1])
            self._gram_cache = (mu, self.dictionary_, gram)
        return mu, self._gram_cache[2]

    def predict(self, F: Any) -> np.ndarray:
        """Indicator (N, V) of the k summary words; labels of shape (N,) after a 1-d fit."""
        summary = self.summarize(F)
        if hasattr(self, "classes_"):
            # After a label fit the centred targets make the columns of D linearly dependent
            # with positive weights, so non-negative OMP finds no word only when D^T r = 0:
            # every label ties, and the first one is returned.
            return self.classes_[np.maximum(summary.indices[:, 0], 0)]
        indicator = np.zeros((len(summary.indices), len(self.words_)), dtype=np.int64)
        rows, cols = np.nonzero(summary.indices >= 0)
        indicator[rows, summary.indices[rows, cols]] = 1
        return indicator

    def word_index(self, word: str) -> int:
        """Column of ``word``; an unknown word is a clear error."""
        check_is_fitted(self, "dictionary_")
        matches = np.flatnonzero(self.words_ == word)
        if not matches.size:
            raise Image2VecError(f"unknown word {word!r}: it is not in the model's vocabulary of {len(self.words_)} words")
        return int(matches[0])

    def similar(self, word: str, n: int = 5) -> list[tuple[str, float]]:
        """The n words whose vectors are nearest to ``word``'s by cosine: the visual similarity."""
        v = self.word_index(word)
        norms = np.linalg.norm(self.dictionary_, axis=0)
        cosine = self.dictionary_.T @ self.dictionary_[:, v] / np.maximum(norms * norms[v], 1e-300)
        cosine[v] = -np.inf
        order = np.argsort(-cosine, kind="stable")[:n]
        return [(str(self.words_[u]), float(cosine[u])) for u in order]

    def retrieve(self, words: list[str], F: Any, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rank images by ||r_n - D x_query|| with x_query the indicator of ``words``.

        Returns the indices of the n nearest images and their distances.
        """
        query = np.zeros((1, len(self.words_)))
        query[0, [self.word_index(w) for w in words]] = 1
        distances = np.sqrt(np.maximum(-self.retrieval_scores(F, query)[0], 0))
        order = np.argsort(distances, kind="stable")[:n]
        return order, distances[order]

    def retrieval_scores(self, F: Any, queries: Any) -> np.ndarray:
        """-||r_n - D q||^2 for every query indicator q (rows of ``queries``): shape (n_queries, N)."""
        embedded = self.transform(F)
        targets = np.asarray(sp.csr_matrix(queries) @ self.dictionary_.T)  # (n_queries, d): D q
        return -((embedded**2).sum(axis=1)[None, :] - 2 * targets @ embedded.T
                 + (targets**2).sum(axis=1)[:, None])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = False
        return tags

    def check_loaded(self) -> None:
        """Raise ValueError unless the fitted arrays of a loaded model fit together."""
        dim, n_words = self.dictionary_.shape
        expected = {"image_map_": (dim, self.n_features_in_), "feature_mean_": (self.n_features_in_,),
                    "offset_": (dim,), "target_mean_": (n_words,), "words_": (n_words,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")


class _TagWeights:
    """The weak-tag A-step: per-image weights a_n in [0, 1] on the image's own words.

    ``l2``: a_n = argmin_{0 <= a <= 1} ||r_n - D (a * x_n)||^2, a batched box-constrained least
    squares over the image's words, with r_n the current embedding in word-sum space.
    ``ip``: the maximiser of (r_n - c) . D (a * x_n) over the box, a_nv = 1 where
    d_v . (r_n - c) > 0, else 0, with c the intercept (the centred objective ignores it).
    """

    def __init__(self, Fp: np.ndarray, X: sp.csr_matrix, objective: str, xp):
        self.Fp, self.X, self.objective, self.xp = Fp, X.tocsr(), objective, xp
        self.weights = np.ones(self.X.nnz)
        counts = np.diff(self.X.indptr)
        self.slots = max(int(counts.max()), 1) if counts.size else 1
        self.rows = np.repeat(np.arange(self.X.shape[0]), counts)
        self.position = np.arange(self.X.nnz) - self.X.indptr[self.rows]

    def weighted(self) -> sp.csr_matrix:
        """X with each entry x_nv multiplied by a_nv."""
        return sp.csr_matrix((self.X.data * self.weights, self.X.indices, self.X.indptr), shape=self.X.shape)

    def weights_matrix(self) -> sp.csr_matrix:
        return sp.csr_matrix((self.weights, self.X.indices, self.X.indptr), shape=self.X.shape)

    def __call__(self, D, W, stats_of=None):
        """Update a; returns the re-weighted X, or its sufficient statistics via ``stats_of``."""
        xp = self.xp
        D, W = to_numpy(D), to_numpy(W)
        current = self.weighted()
        xbar = np.asarray(current.mean(axis=0)).ravel()
        # r_n - c with c the intercept D xbar: the l2 step fits a with c fixed (then c = D xbar is
        # refitted), while the centred ip objective does not depend on c at all.
        embedded = (self.Fp - self.Fp.mean(axis=0)) @ W.T
        if self.objective == "l2":
            embedded += D @ xbar
        n, slots = self.X.shape[0], self.slots
        # Padded per-image problems: atoms u = x_nv d_v on the image's words, zero padding.
        atoms = np.zeros((n, slots, D.shape[0]))
        atoms[self.rows, self.position] = self.X.data[:, None] * D[:, self.X.indices].T
        if self.objective == "ip":
            scores = np.einsum("nsd,nd->ns", atoms, embedded)
            new = (scores > 0).astype(float)
        else:
            Q = xp.asarray(np.einsum("nsd,ntd->nst", atoms, atoms))
            c = xp.asarray(np.einsum("nsd,nd->ns", atoms, embedded))
            init = np.zeros((n, slots))
            init[self.rows, self.position] = self.weights
            # Warm-started sweeps: each lowers the objective, the outer iterations finish the job.
            new = to_numpy(box_least_squares(Q, c, init=xp.asarray(init), max_sweeps=20, tol=1e-6))
        self.weights = new[self.rows, self.position]
        weighted = self.weighted()
        return weighted if stats_of is None else stats_of(self.Fp, weighted)
