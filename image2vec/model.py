"""The Image2Vec estimator: images embedded as sums of visual word vectors.

Notation of DESIGN.md: F is N x p (image features f_n), X is N x V (word targets x_n), D is d x V
(word vectors d_v, its columns), W is d x p (the image map). Features are centred with the
training mean mu and L2-normalised, f'_n = (f_n - mu) / ||f_n - mu||, and the model has an
intercept (a mean-image term): it fits

    W (f'_n - m) ~= D (x_n - xbar)        m, xbar = training means of f' and x,

so the embedding r_n = W f'_n + (D xbar - W m) lives in word-sum space, r_n ~= D x_n, and its
words are read back by non-negative OMP over D.

The fit streams the features in row chunks (a memory-mapped feature store works): one pass for
mu, one for the sufficient statistics of the preprocessed features; what is kept is
O(p^2 + pV + V^2), never a dense N x p copy.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from image2vec.arrays import (
    canonical_pairs,
    check_shapes,
    nystrom_basis,
    preprocess_features,
    rbf_kernel,
    unit_rows,
)
from image2vec.cluster import active_scheduler
from image2vec.errors import Image2VecError
from image2vec.names import (
    DEFAULT_MODEL,
    DEFAULT_OBJECTIVE,
    DEFAULT_SOLVER,
    MODELS,
    OBJECTIVES,
    ORTHONORMAL_WORD_MODELS,
    SOLVERS,
    default_settings,
)
from image2vec.summary import Summary, check_words
from solvers import (
    ObjectiveTerms,
    bcd,
    closed_form,
    incoherence_weights,
    omp_gram,
    sgd,
    sufficient_stats,
)
from solvers.backend import (
    as_generator,
    get_array_module,
    gpu_available,
    plus_identity,
    to_numpy,
)
from solvers.distributed import as_row_chunks, column_means_dask, sufficient_stats_dask
from solvers.objective import column_means
from solvers.tag_weights import TagWeightStep

READOUTS = ("omp", "rank")
#: The largest ``lam`` and ``gamma``: the features have unit norm, so a larger penalty leaves D zero
#: to a millionth of its scale (and 1e308 overflows the fit).
MAX_PENALTY = 1e6
#: Default ``tol`` per solver.
DEFAULT_TOL = {"bcd": 1e-6, "sgd": 1e-4}
#: weak-tag's default ``tol`` per solver: each of its bcd sweeps is a pass over the images, and
#: on the noisy-tag benchmark (experiments/weak_tags_flickr8k.py) dev quality does not move from
#: 1e-2 to 1e-5 (2 to 8 sweeps; 3e-4 takes 2 there, and on planted noise tags 6 where 1e-2 stops
#: at 2 with less of the noise turned down).
WEAK_TAG_TOL = {"bcd": 3e-4, "sgd": 1e-4}
#: weak-tag's default lower bound on its tag weights (a_nv in [min_tag_weight, 1]).
DEFAULT_MIN_TAG_WEIGHT = 0.0
#: Rows of F read at a time.
CHUNK_ROWS = 4096
#: The weak-tag A-step keeps the training features in the map's coordinates (N x q float64)
#: in memory between its sweeps up to this size; larger data is read from F every sweep.
TRANSFORM_CACHE_BYTES = 256 * 2**20


class Image2Vec(TransformerMixin, BaseEstimator):
    """Learn word vectors D and an image map W so that an image's embedding is the sum of its words.

    Parameters
    ----------
    model : {"reduced-rank", "learn-all", "weak-tag", "simple", "kernel"}, default "reduced-rank"
        ``reduced-rank``: D D^T = I (orthonormal rows) and a ridge on W; with ``l2`` this is
        reduced-rank ridge regression of the words on the features, solved exactly.
        ``learn-all``: W W^T = I on the (whitened) principal components of the features, D free.
        ``weak-tag``: learn-all plus per-image tag weights a_n in [0, 1] on the image's own
        words, x_n -> a_n * x_n, for noisy tags. ``simple``: W is a fixed Johnson-Lindenstrauss
        projection (entries N(0, 1/d), seeded by ``random_state``), only D is learned.
        ``kernel``: reduced-rank on a Nystrom map of an RBF kernel, r_n = W phi(f'_n) with
        phi(f) = k(f, L) T, k(f, g) = exp(-kernel_gamma ||f - g||^2), L = ``n_landmarks``
        training images drawn by ``random_state`` and T = K_LL^{-1/2}
        (:func:`image2vec.arrays.nystrom_basis`): an embedding that is not linear in the image,
        read out by the same sums of word vectors and the same OMP. W is stored folded with T
        (``image_map_`` is d x m, acting on k(f, L)).
    objective : {"l2", "ip"}, default "l2"
        ``l2``: minimise (1/2N) sum ||r_n - D x_n||^2 + (lam/2) ||D||_F^2
        (+ (gamma/2) sum_{u != v} K_uv (d_u . d_v)^2); for ``reduced-rank``
        (1/2N) sum ||x_n - D^T r_n||^2 + (lam/2) ||W||_F^2, the same fit plus the part of x_n
        outside D's row space. ``ip``: maximise (1/N) sum r_n . D x_n with ||d_v|| = 1
        (``reduced-rank``: D D^T = I and W W^T = I, partial least squares).
        See :mod:`solvers.objective`.
    solver : {"bcd", "sgd"}, default "bcd"
        Block coordinate descent on sufficient statistics, started from the exact minimiser
        where one exists (:func:`solvers.closed_form`), or minibatch SGD streaming rows.
    dim : int, optional
        Embedding dimension d. Lowered, with a warning, to what the data allows: the number of
        feature directions the map can use and, for ``reduced-rank``, the number of words.

        ``dim``, ``lam``, ``readout``, ``prior_weight``, ``whiten`` and ``n_components`` left
        None take the defaults of the model x objective, the settings chosen on the Flickr8k
        dev split (:func:`image2vec.names.default_settings`, the table
        :data:`image2vec.names.CHOSEN_SETTINGS`), resolved by ``fit`` and recorded in the
        fitted attributes ``dim_``, ``lam_``, ``readout_``, ``prior_weight_``, ``whiten_`` and
        ``n_components_``; a value given here wins. So do ``n_landmarks`` and ``kernel_gamma``.
    lam : float, optional
        Ridge weight of the ``l2`` objective (on D, or on W for ``reduced-rank``), at most
        :data:`MAX_PENALTY`. Refused with ``ip``.
    gamma : float, default 0
        Co-occurrence incoherence weight (``l2`` with learn-all, weak-tag or simple), at most
        :data:`MAX_PENALTY`.
    min_tag_weight : float, default 0
        ``weak-tag``: the lower bound of its tag weights, a_nv in [min_tag_weight, 1]; 0 lets a
        tag be switched off entirely, 1 is learn-all. Ignored by the other models.
    k : int, default 3
        Summary length of :meth:`predict`.
    readout : {"omp", "rank"}, optional
        How summary words are read out of an embedding r: ``omp`` solves
        min_{x >= 0, ||x||_0 <= k} ||r - D x||^2 + prior_weight ||x - xbar||^2 greedily
        (non-negative OMP over the atoms [d_v; sqrt(prior_weight) e_v], words ordered by
        coefficient, the estimate of x_nv); ``rank`` takes the k highest scores D^T r.
    prior_weight : float, optional
        mu above: pulls the sparse code towards the training mean xbar, a word-frequency
        prior; 0 gives plain non-negative OMP over D. ``readout`` and ``prior_weight`` can be
        changed after the fit (``set_params``) without refitting; left None, they are the
        fit's ``readout_`` and ``prior_weight_``.
    normalize : bool, default True
        L2-normalise the centred features.
    whiten : bool, optional
        ``learn-all`` and ``weak-tag``: learn W on the whitened top ``n_components`` principal
        components. Under W W^T = I the unwhitened l2 objective is minimised by the feature
        directions of least residual variance (see :func:`solvers.closed_form`), the ones
        where the images barely vary, and the word vectors collapse; whitening makes
        tr(W A W^T) constant and the fit a canonical correlation analysis with a ridge on D.
    n_components : int, optional
        Principal components the learned map of ``learn-all`` and ``weak-tag`` works on
        (capped at the directions in which the training images vary).
    metric : {"correlation", "cosine", "euclidean"}, default "correlation"
        Retrieval. ``cosine``: rank images by the cosine between the centred embedding
        r_n - D xbar and the centred query D (q - xbar). ``correlation``: the same cosine after
        a canonical correlation analysis of the two in the d-dimensional space (their training
        covariances whitened, each canonical pair weighted by its correlation squared, as CCA
        retrieval weights canonical dimensions: Gong et al. 2014); it does not depend on how
        the d coordinates are rotated. ``euclidean``: -||r_n - D q||.
    max_iter : int, default 300
        BCD sweeps.
    tol : float, optional
        BCD stops when a sweep lowers J by at most tol |J| (default 1e-6; 3e-4 for
        ``weak-tag``, whose sweeps each re-weight every image's words, a pass over the images:
        on the Flickr8k noisy-tag benchmark its dev P@3 and tag relevance do not move from 1e-2
        to 1e-5, ``experiments/results/weak_tags_flickr8k``). SGD counts a stall when a measurement does not
        lower J by tol |J| (default 1e-4: SGD's measurements are 50 steps or an epoch apart,
        and noisy).
    max_steps : int, default 20000
        SGD's budget of minibatch steps.
    batch_size : int, default 256
        SGD minibatch (capped at N).
    learning_rate : float, default 0.5
        SGD step relative to the Lipschitz estimate.
    decay : float, default 5
        SGD divides its step by ``decay`` when J stalls.
    n_iter_no_change : int, default 2
        SGD stalls in a row before the step decays (at the smallest step: before it stops).
    random_state : int, RandomState, Generator or None
        Seeds the JL projection and SGD's row order (see :func:`solvers.backend.as_generator`).
        A generator object is not saved with the model (the file records None).
    device : {"cpu", "cuda"}, default "cpu"
        Where the solvers run (``cuda`` needs CuPy and a CUDA device).

    Attributes
    ----------
    dictionary_ : ndarray of shape (d, V)
        D, one word vector per column.
    image_map_ : ndarray of shape (d, p)
        W, in the coordinates of the preprocessed features.
    feature_mean_ : ndarray of shape (p,)
        mu, the training mean of the raw features.
    offset_ : ndarray of shape (d,)
        D xbar - W m, the intercept of the embedding.
    target_mean_ : ndarray of shape (V,)
        xbar, the training mean of the (weighted) targets.
    words_ : ndarray of shape (V,), str
        The vocabulary.
    dim_ : int
        The embedding dimension used (``dim`` or its default, or less).
    lam_ : float
        The ridge weight used (0 with ``ip``).
    readout_ : str
        The read-out ``readout`` or its default.
    prior_weight_ : float
        The read-out's prior weight ``prior_weight`` or its default.
    whiten_ : bool
        ``whiten`` or its default (used by ``learn-all`` and ``weak-tag``).
    n_components_ : int
        The principal components used (``learn-all`` and ``weak-tag``: ``n_components`` or its
        default, capped at the directions in which the training images vary).
    classes_ : ndarray
        The labels, when ``fit`` got a 1-d label vector (then :meth:`predict` returns labels).
    tag_weights_ : scipy.sparse.csr_matrix of shape (N, V)
        a_n on the training images' words (``weak-tag``).
    objective_trace_ : list of (iteration, block, value)
        The objective after every block (bcd) or measurement (sgd).
    landmarks_ : ndarray of shape (m, p)
        L, the preprocessed training images of the kernel map (``kernel``).
    kernel_gamma_ : float
        The RBF kernel's gamma used (``kernel``).
    similarity_map_ : ndarray of shape (d, d)
        Sigma^{1/2}, the square root of the training embeddings' covariance (see :meth:`similar`).
    retrieval_maps_ : ndarray of shape (2, d, d)
        The canonical maps of ``metric="correlation"`` (images, word sums).
    solver_seconds_ : list of float
        The solver's wall time at each entry of ``objective_trace_``.
    n_iter_ : int
        BCD sweeps or SGD steps run.
    converged_ : bool
        Whether the solver met its tolerance (else a ConvergenceWarning was issued).
    fit_seconds_ : float
        Wall time of the fit.
    """

    _parameter_constraints: dict = {
        "model": [StrOptions(set(MODELS))],
        "objective": [StrOptions(set(OBJECTIVES))],
        "solver": [StrOptions(set(SOLVERS))],
        "dim": [None, Interval(Integral, 1, None, closed="left")],
        "lam": [None, Interval(Real, 0, MAX_PENALTY, closed="both")],
        "gamma": [Interval(Real, 0, MAX_PENALTY, closed="both")],
        "min_tag_weight": [Interval(Real, 0, 1, closed="both")],
        "k": [Interval(Integral, 1, None, closed="left")],
        "readout": [None, StrOptions(set(READOUTS))],
        "prior_weight": [None, Interval(Real, 0, None, closed="left")],
        "normalize": ["boolean"],
        "whiten": [None, "boolean"],
        "n_components": [None, Interval(Integral, 1, None, closed="left")],
        "n_landmarks": [None, Interval(Integral, 1, None, closed="left")],
        "kernel_gamma": [None, Interval(Real, 0, None, closed="neither")],
        "metric": [StrOptions({"correlation", "cosine", "euclidean"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [None, Interval(Real, 0, None, closed="left")],
        "max_steps": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "decay": [Interval(Real, 1, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state", np.random.Generator],
        "device": [StrOptions({"cpu", "cuda"})],
    }

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        objective: str = DEFAULT_OBJECTIVE,
        solver: str = DEFAULT_SOLVER,
        dim: int | None = None,
        lam: float | None = None,
        gamma: float = 0.0,
        min_tag_weight: float = DEFAULT_MIN_TAG_WEIGHT,
        k: int = 3,
        readout: str | None = None,
        prior_weight: float | None = None,
        normalize: bool = True,
        whiten: bool | None = None,
        n_components: int | None = None,
        n_landmarks: int | None = None,
        kernel_gamma: float | None = None,
        metric: str = "correlation",
        max_iter: int = 300,
        tol: float | None = None,
        max_steps: int = 20_000,
        batch_size: int = 256,
        learning_rate: float = 0.5,
        decay: float = 5.0,
        n_iter_no_change: int = 2,
        random_state: Any = None,
        device: str = "cpu",
    ):
        self.model = model
        self.objective = objective
        self.solver = solver
        self.dim = dim
        self.lam = lam
        self.gamma = gamma
        self.min_tag_weight = min_tag_weight
        self.k = k
        self.readout = readout
        self.prior_weight = prior_weight
        self.normalize = normalize
        self.whiten = whiten
        self.n_components = n_components
        self.n_landmarks = n_landmarks
        self.kernel_gamma = kernel_gamma
        self.metric = metric
        self.max_iter = max_iter
        self.tol = tol
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.decay = decay
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.device = device

    # ------------------------------------------------------------------ fitting

    def check_params(self) -> None:
        """Validate the hyper-parameters before any work (``fit`` does it first).

        Every parameter is checked against :attr:`_parameter_constraints` (type, range, NaN),
        then the combinations that make no sense are refused.

        Raises
        ------
        ValueError
            Naming the parameter: an unknown option, a value out of range or of the wrong type,
            ``lam``/``gamma`` with ``objective="ip"``, ``gamma`` with ``reduced-rank``.
        """
        self._validate_params()
        if self.objective == "ip" and (self.lam or self.gamma):
            raise ValueError("lam and gamma apply to objective='l2' only: with 'ip' every word has "
                             "norm 1, so there is no norm to penalise")
        if self.gamma and self.model in ORTHONORMAL_WORD_MODELS:
            raise ValueError("gamma (co-occurrence incoherence) applies to the learn-all, weak-tag "
                             "and simple models, not to reduced-rank (orthonormal word rows)")

    def fit(self, X: Any, y: Any, words: Any = None) -> Image2Vec:
        """Learn D and W (and tag weights) from image features and word targets.

        scikit-learn names the arguments X and y; in the notation of DESIGN.md they are the
        features F and the targets X.

        Parameters
        ----------
        X : array-like of shape (N, p)
            Image features F (dense; a numpy memmap is read in row chunks).
        y : {array-like, sparse matrix} of shape (N, V), or array-like of shape (N,)
            Word targets x_nv >= 0 (e.g. the fraction of an image's captions containing word v),
            or one label per image (each label becomes a word).
        words : sequence of str of length V, optional
            Vocabulary; default the labels, or "w0", "w1", ...

        Returns
        -------
        self
        """
        start = time.perf_counter()
        problem = self._prepare(X, y, words)
        result, a_step = self._solve(problem)
        targets = problem.targets if a_step is None else a_step.weighted()
        W = to_numpy(result.W)
        self.dictionary_ = to_numpy(result.D)
        self.image_map_ = W if problem.basis is None else W @ problem.basis.T  # the features' coordinates
        self.target_mean_ = np.asarray(targets.mean(axis=0)).ravel()
        self.offset_ = self.dictionary_ @ self.target_mean_ - self.image_map_ @ problem.feature_centre
        self.objective_trace_ = result.trace
        self.solver_seconds_ = result.seconds
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        covariance = _covariance(problem.stats.A, result.W, problem.stats.n)
        self.similarity_map_ = _square_root(covariance)
        self.retrieval_maps_ = _retrieval_maps(problem.stats, result.D, result.W, covariance)
        if a_step is not None:
            self.tag_weights_ = a_step.weights_matrix()
        if self._readout_setting("readout") == "omp":
            self._readout_gram(problem.xp)  # cached here: predicting must not change the estimator
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _prepare(self, X: Any, y: Any, words: Any = None) -> FitProblem:
        """The problem that :meth:`fit` solves: validated data, statistics, objective, start.

        The first half of :meth:`fit` (parameter and data validation, the pass for mu, the
        pass for the sufficient statistics, the principal basis, the effective ``dim_``); it
        sets the fitted attributes it determines (``feature_mean_``, ``words_``, the resolved
        settings ``lam_``, ``readout_``, ``prior_weight_``, ``whiten_``, ``dim_``,
        ``n_components_``, and ``n_features_in_``). The experiments use it to time or compare the solvers on
        exactly the problem the estimator would solve.

        Inside :func:`image2vec.cluster.use_scheduler` (a ``distributed.Client``, ``"threads"``,
        ``"processes"``) the two passes run as Dask tree reductions over row chunks of F
        (:func:`solvers.distributed.sufficient_stats_dask`), equal to rounding; the tasks of a
        memory-mapped F read their rows from its file (which every worker must see). Otherwise
        they run here.

        Returns
        -------
        FitProblem
        """
        self.check_params()
        # Finiteness is checked on the mean pass below: scikit-learn's check would read all of a
        # memory-mapped F at once (and allocate an N x p mask).
        F, X = validate_data(self, X, y, accept_sparse=False, dtype=[np.float64, np.float32],
                             multi_output=True, y_numeric=False, copy=False, ensure_all_finite=False)
        X = self._targets(X)
        self.words_ = check_words(words, X.shape[1], getattr(self, "classes_", None))
        self.lam_ = 0.0 if self.objective == "ip" else float(self._setting("lam"))
        self.readout_ = str(self._setting("readout"))
        self.prior_weight_ = float(self._setting("prior_weight"))
        self.whiten_ = bool(self._setting("whiten"))
        xp = self._array_module()
        scheduler = active_scheduler()
        if scheduler is None:
            self.feature_mean_, _ = column_means(F, X, CHUNK_ROWS)
        else:  # the same passes as Dask tasks; the preprocessing travels as a bound method
            rows = as_row_chunks(F, CHUNK_ROWS)
            self.feature_mean_, _ = column_means_dask(rows, X, scheduler=scheduler)
        if not np.isfinite(self.feature_mean_).all():  # a float64 sum of float features never overflows
            raise ValueError("Input X contains NaN or infinity: the image features must be finite")
        if self.model == "kernel":
            self.kernel_gamma_ = float(self._setting("kernel_gamma"))
            self.landmarks_ = self._landmarks(F)
        if scheduler is None:
            raw = sufficient_stats(F, X, transform=self._preprocess, chunk_size=CHUNK_ROWS)
        else:
            raw = sufficient_stats_dask(rows, X, transform=self._preprocess, scheduler=scheduler,
                                        chunk_size=CHUNK_ROWS)
        centred = raw.centered()
        basis = self._basis(centred.A, raw.n)
        centred = centred if basis is None else centred.rotated(basis)
        self.dim_ = self._data_dim(centred.A.shape[0], X.shape[1])
        transform = self._preprocess if basis is None else self._in_basis(basis, xp)
        weights = None
        if self.gamma:
            weights = incoherence_weights((X.T @ X).tocsr() if self.solver == "sgd" else centred.C)
            weights = weights if sp.issparse(weights) else xp.asarray(weights)
        terms = ObjectiveTerms(self.objective, "words" if self.model in ORTHONORMAL_WORD_MODELS else "map",
                               self.lam_, float(self.gamma), weights)
        return FitProblem(F, X, centred.to(xp, np.float64), terms, self.dim_, transform, basis,
                          raw.f_sum / raw.n, self._cold_start(centred.A.shape[0], xp), xp)

    def _setting(self, name: str) -> Any:
        """The parameter ``name``, or the model x objective's default when it is None."""
        value = getattr(self, name)
        return default_settings(self.model, self.objective)[name] if value is None else value

    def _readout_setting(self, name: str) -> Any:
        """``readout`` or ``prior_weight`` as a fitted model reads out: the parameter, else the
        fit's resolved value (``readout_``, ``prior_weight_``), else the default (a model file
        saved before the fit recorded them)."""
        value = getattr(self, name)
        if value is None:
            value = getattr(self, name + "_", None)
        return self._setting(name) if value is None else value

    def _cold_start(self, width: int, xp) -> Any:
        """W where a solver without a closed-form start begins.

        ``simple``: the fixed JL projection, entries N(0, 1/d). A W W^T = I map: the top ``dim``
        principal axes (identity rows in the basis); so does ``reduced-rank`` with ``ip``
        (partial least squares constrains both W and D). ``reduced-rank`` with ``l2`` (W free,
        ridge on W): W = 0 (the first D-step or SGD's random orthonormal words take it from
        there).
        """
        if self.model == "simple":
            rng = as_generator(self.random_state)
            return xp.asarray(rng.standard_normal((self.dim_, width)) / np.sqrt(self.dim_))
        if self.model in ORTHONORMAL_WORD_MODELS and self.objective == "l2":
            return xp.zeros((self.dim_, width))
        return xp.eye(self.dim_, width)

    def _solve(self, problem: FitProblem):
        """Run the solver on ``problem``; returns (SolverResult, the weak-tag A-step or None)."""
        learn_w = self.model != "simple"
        a_step = None
        if self.model == "weak-tag":  # the transformed features' mean: m in the map's coordinates
            centre = problem.feature_centre if problem.basis is None else problem.feature_centre @ problem.basis
            a_step = TagWeightStep(problem.F, problem.targets, problem.transform, centre, self.objective,
                                   problem.xp, bounds=(float(self.min_tag_weight), 1.0), chunk_rows=CHUNK_ROWS,
                                   cache_bytes=TRANSFORM_CACHE_BYTES)
        if self.solver == "sgd":
            result = sgd(problem.F, problem.targets, problem.start, problem.terms, learn_w=learn_w,
                         center=True, transform=problem.transform, sample_step=a_step,
                         batch_size=self.batch_size, max_steps=self.max_steps,
                         learning_rate=self.learning_rate, decay=self.decay, tol=self._tol(),
                         n_iter_no_change=self.n_iter_no_change, random_state=self.random_state,
                         xp=problem.xp)
            return result, a_step
        exact = closed_form(problem.stats, problem.dim, problem.terms) if learn_w else None
        if exact is not None and exact.converged and a_step is None:
            return exact, None
        sample_step = None if a_step is None else (lambda D, W: a_step(D, W, scatter=problem.stats.A))
        # In principal coordinates A is diagonal: its largest entry bounds the majoriser.
        bound = None if problem.basis is None else float(problem.stats.A.diagonal().max())
        result = bcd(problem.stats, problem.start if exact is None else exact.W, problem.terms,
                     D=None if exact is None else exact.D, learn_w=learn_w, sample_step=sample_step,
                     max_iter=self.max_iter, tol=self._tol(), spectral_bound=bound,
                     start_exact=exact is not None and exact.converged)
        return result, a_step

    def _tol(self) -> float:
        if self.tol is not None:
            return float(self.tol)
        return (WEAK_TAG_TOL if self.model == "weak-tag" else DEFAULT_TOL)[self.solver]

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
        """numpy for ``device="cpu"``, cupy for ``"cuda"`` (refused without CuPy and a device)."""
        if self.device == "cpu":
            return np
        if not gpu_available():
            raise Image2VecError("device='cuda' needs CuPy (pip install image2vec[gpu]) and a CUDA device")
        import cupy

        return cupy

    def _preprocess(self, F: Any) -> Any:
        """f' = (f - mu) / ||f - mu|| (the division only with ``normalize``), float64, on F's
        device; for ``kernel`` its kernel row k(f', L) (the Nystrom basis T comes after)."""
        preprocessed = preprocess_features(F, self.feature_mean_, self.normalize)
        if self.model != "kernel":
            return preprocessed
        return rbf_kernel(preprocessed, self.landmarks_, self.kernel_gamma_)

    def _landmarks(self, F: Any) -> np.ndarray:
        """L: ``n_landmarks`` distinct training images (all of them when there are fewer), drawn
        by ``random_state``, preprocessed (m x p); read row by row, so a memory-mapped F is not
        loaded whole."""
        m = min(int(self._setting("n_landmarks")), F.shape[0])
        rows = np.sort(as_generator(self.random_state).choice(F.shape[0], m, replace=False))
        return to_numpy(preprocess_features(np.asarray(F[rows]), self.feature_mean_, self.normalize))

    def _in_basis(self, basis: np.ndarray, xp) -> Any:
        """Raw feature rows -> f'^T basis, computed where the rows are: numpy chunks (the passes
        over the data) and ``xp`` chunks (the solvers), the basis copied to ``xp`` once."""
        on_device = xp.asarray(basis)
        return lambda chunk: self._preprocess(chunk) @ (on_device if get_array_module(chunk) is xp else basis)

    def _basis(self, scatter: np.ndarray, n_rows: int) -> np.ndarray | None:
        r"""The coordinates a learned W W^T = I map works in, or None (the features' own).

        ``learn-all`` and ``weak-tag``: the principal axes of the centred scatter
        A = U diag(s) U^T (s decreasing), the top ``n_components`` of those with non-zero
        variance, whitened with ``whiten`` (U_q diag(s_q / N)^{-1/2}: the whitened features
        have scatter N I). ``kernel``: the Nystrom basis T of its landmarks, the coordinates
        phi(f) = k(f, L) T. ``reduced-rank`` and ``simple``: None.
        """
        if self.model == "kernel":
            return nystrom_basis(self.landmarks_, self.kernel_gamma_)
        if self.model not in ("learn-all", "weak-tag"):
            return None
        values, vectors = np.linalg.eigh(to_numpy(scatter))
        values, vectors = values[::-1], vectors[:, ::-1]
        rank = int((values > 1e-9 * max(values[0], 1e-300)).sum())
        if rank == 0:
            raise ValueError(f"the features of the n_samples={n_rows} training images do not vary: "
                             f"model={self.model!r} needs at least 2 different images")
        q = min(self._setting("n_components"), rank)
        self.n_components_ = q
        if not self.whiten_:
            return vectors[:, :q]
        return vectors[:, :q] / np.sqrt(values[:q] / n_rows)

    def _data_dim(self, n_directions: int, n_words: int) -> int:
        """``dim``, lowered with a warning to what the constraint allows on this data."""
        dim = self._setting("dim")
        limit = n_directions if self.model not in ORTHONORMAL_WORD_MODELS else min(n_directions, n_words)
        if self.model == "simple":
            limit = dim
        if dim > limit:
            warnings.warn(f"dim={dim} exceeds the {limit} dimensions the {self.model} model "
                          f"can use on this data; using dim={limit}", UserWarning, stacklevel=3)
        return min(dim, limit)

    # ------------------------------------------------------------------ using a model

    def transform(self, F: Any) -> np.ndarray:
        """Embeddings r_n = W f'_n + (D xbar - W m), shape (N, d) (computed on ``device``)."""
        return to_numpy(self._embed(F, self._array_module()))

    def _embed(self, F: Any, xp) -> Any:
        """The embeddings of :meth:`transform` as an array of ``xp`` (one copy of F there)."""
        check_is_fitted(self, "dictionary_")
        F = validate_data(self, F, reset=False, dtype=[np.float64, np.float32])
        return self._preprocess(xp.asarray(F)) @ xp.asarray(self.image_map_).T + xp.asarray(self.offset_)

    def decision_function(self, F: Any) -> np.ndarray:
        """Word scores D^T r_n, shape (N, V): a full ranking of the vocabulary per image."""
        xp = self._array_module()
        return to_numpy(self._embed(F, xp) @ xp.asarray(self.dictionary_))

    def summarize(self, F: Any, k: int | None = None) -> Summary:
        """The k words that best explain each image's embedding (see ``readout``).

        ``omp``: min_{x >= 0, ||x||_0 <= k} ||r_n - D x||^2 + mu ||x - xbar||^2 by non-negative
        OMP in Gram form (G = D^T D + mu I, correlations D^T r_n + mu xbar), words ordered by
        coefficient. ``rank``: the k largest scores D^T r_n.
        """
        k = self.k if k is None else k
        xp = self._array_module()
        embedded = self._embed(F, xp)
        D = xp.asarray(self.dictionary_)
        if self._readout_setting("readout") == "rank":
            return Summary.top_k(to_numpy(embedded @ D), k, self.words_)
        mu, gram = self._readout_gram(xp)
        prior = xp.asarray(self.target_mean_)
        code = omp_gram(gram, embedded @ D + mu * prior, (embedded**2).sum(axis=1) + mu * prior @ prior, k,
                        nonneg=True)
        return Summary.from_ranking(to_numpy(code.indices), to_numpy(code.coefs), self.words_)

    def _readout_gram(self, xp=np) -> tuple[float, Any]:
        """mu and the read-out's Gram matrix G = D^T D + mu I (an array of ``xp``), cached per
        dictionary, mu and array module.

        mu is ``prior_weight``, or the fit's ``prior_weight_``; read-out settings can change
        after the fit (``set_params``) without refitting.
        """
        mu = float(self._readout_setting("prior_weight"))
        cached = getattr(self, "_gram_cache", None)
        if (cached is None or cached[0] != mu or cached[1] is not self.dictionary_
                or get_array_module(cached[2]) is not xp):
            D = xp.asarray(self.dictionary_, dtype=xp.float64)
            self._gram_cache = (mu, self.dictionary_, plus_identity(D.T @ D, mu, in_place=True))
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
            raise Image2VecError(f"unknown word {word!r}: it is not in the model's vocabulary of "
                                 f"{len(self.words_)} words")
        return int(matches[0])

    def similar(self, word: str, n: int = 5) -> list[tuple[str, float]]:
        """The n words visually nearest to ``word`` (never itself; all others when n is larger):
        the correlation of their word scores.

        Two words are visually similar when their scores d_v . r go up and down together over the
        training images: the cosine of the columns of Sigma^{1/2} D, with Sigma the covariance
        of the training embeddings (``similarity_map_`` = Sigma^{1/2}). For a whitened
        learn-all model Sigma is a multiple of I and this is the plain cosine of D's columns;
        for reduced-rank it stops rare words, whose columns are short and noisy, from looking
        alike.
        """
        v = self.word_index(word)
        vectors = self.similarity_map_ @ self.dictionary_
        norms = np.linalg.norm(vectors, axis=0)
        cosine = vectors.T @ vectors[:, v] / np.maximum(norms * norms[v], 1e-300)
        others = np.flatnonzero(np.arange(cosine.size) != v)  # never the word itself
        order = others[np.argsort(-cosine[others], kind="stable")][:n]
        return [(str(self.words_[u]), float(cosine[u])) for u in order]

    def retrieve(self, words: list[str], F: Any, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rank images for the query "the sum of ``words``" (see ``metric``).

        Returns the indices of the n best images and their scores (cosine, or distance
        ||r_n - D x_query|| with ``metric="euclidean"``), best first.
        """
        query = np.zeros((1, len(self.words_)))
        query[0, [self.word_index(w) for w in words]] = 1
        scores = self.retrieval_scores(F, query)[0]
        order = np.argsort(-scores, kind="stable")[:n]
        if self.metric == "euclidean":
            return order, np.sqrt(np.maximum(-scores[order], 0))
        return order, scores[order]

    def retrieval_scores(self, F: Any, queries: Any) -> np.ndarray:
        """Scores (n_queries, N) of the images for every query indicator q (rows of ``queries``).

        ``metric="cosine"``: cos(r_n - D xbar, D (q - xbar)), the correlation of the centred
        embedding with the centred word sum; ``"correlation"``: the same cosine in canonical,
        correlation-weighted coordinates (``retrieval_maps_``); ``"euclidean"``: -||r_n - D q||^2.
        """
        xp = self._array_module()
        embedded = self._embed(F, xp)
        targets = xp.asarray(sp.csr_matrix(queries) @ self.dictionary_.T)  # (n_queries, d): D q
        if self.metric != "euclidean":
            centre = xp.asarray(self.dictionary_ @ self.target_mean_)
            embedded, targets = embedded - centre, targets - centre
            if self.metric == "correlation":
                images, words = (xp.asarray(m) for m in self.retrieval_maps_)
                embedded, targets = embedded @ images.T, targets @ words.T
            return to_numpy(unit_rows(targets) @ unit_rows(embedded).T)
        return to_numpy(-((embedded**2).sum(axis=1)[None, :] - 2 * targets @ embedded.T
                          + (targets**2).sum(axis=1)[:, None]))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = False
        return tags

    def check_loaded(self) -> None:
        """Raise ValueError unless the fitted arrays of a loaded model fit together."""
        dim, n_words = self.dictionary_.shape
        if self.model == "kernel":  # W acts on the kernel row k(f', L) of the m landmarks
            n_landmarks = len(getattr(self, "landmarks_", ()))
            shapes = {"image_map_": (dim, n_landmarks), "landmarks_": (n_landmarks, self.n_features_in_)}
        else:
            shapes = {"image_map_": (dim, self.n_features_in_)}
        check_shapes(self, {**shapes, "feature_mean_": (self.n_features_in_,), "offset_": (dim,),
                            "target_mean_": (n_words,), "words_": (n_words,),
                            "retrieval_maps_": (2, dim, dim), "similarity_map_": (dim, dim)})
        if not np.any(self.dictionary_):
            raise ValueError("dictionary_ is all zero: no word has a vector")


#: Ridge of the covariances whitened by the correlation metric, relative to their mean eigenvalue.
RETRIEVAL_RIDGE = 1e-3


def _covariance(A: Any, W: Any, n: int) -> np.ndarray:
    """W A W^T / N: the covariance of the training embeddings (A is centred), as numpy."""
    W = to_numpy(W)
    return W @ to_numpy(A) @ W.T / n


def _square_root(covariance: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(covariance)
    return (vectors * np.sqrt(np.maximum(values, 0))) @ vectors.T


def _retrieval_maps(stats: Any, D: Any, W: Any, covariance: np.ndarray) -> np.ndarray:
    r"""The correlation metric's maps (image side, word-sum side), shape (2, d, d).

    Canonical correlation analysis (:func:`image2vec.arrays.canonical_pairs`, each covariance
    with a ridge of ``RETRIEVAL_RIDGE`` times its mean eigenvalue) of the embeddings and the word
    sums from the centred training statistics, S_r = W A W^T / N (``covariance``),
    S_t = D C D^T / N and S_rt = W B D^T / N: with projections W_r, W_t and correlations rho, the
    maps are diag(rho^2) W_r^T and diag(rho^2) W_t^T, canonical coordinates weighted by the
    squared correlations (rows of zeros for pairs a degenerate covariance does not have).
    """
    B, C = to_numpy(stats.B), to_numpy(stats.C)
    D, W = to_numpy(D), to_numpy(W)
    images, words, rho = canonical_pairs(covariance, D @ C @ D.T / stats.n, W @ B @ D.T / stats.n,
                                         RETRIEVAL_RIDGE, RETRIEVAL_RIDGE)
    maps = np.zeros((2, len(covariance), len(covariance)))
    maps[0, : len(rho)] = (rho**2)[:, None] * images.T
    maps[1, : len(rho)] = (rho**2)[:, None] * words.T
    return maps


@dataclass(frozen=True)
class FitProblem:
    """What a fit solves (see :meth:`Image2Vec.prepare`).

    Attributes
    ----------
    F : array of shape (N, p)
        The raw features as given (a memmap stays one).
    targets : csr_matrix of shape (N, V)
    stats : SufficientStats
        Centred statistics of the preprocessed features in the map's coordinates.
    terms : ObjectiveTerms
    dim : int
    transform : callable
        Raw feature rows -> the map's coordinates (preprocessing, then the basis).
    basis : ndarray of shape (p, q) or None
        The principal (whitened) basis of a W W^T = I map, else None.
    feature_centre : ndarray
        m, the mean of the preprocessed features (in the features' own coordinates).
    start : array of shape (d, q)
        The cold start of a solver (see ``Image2Vec._cold_start``).
    xp : module
        numpy or cupy.
    """

    F: Any
    targets: sp.csr_matrix
    stats: Any
    terms: ObjectiveTerms
    dim: int
    transform: Any
    basis: np.ndarray | None
    feature_centre: np.ndarray
    start: Any
    xp: Any
