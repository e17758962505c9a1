"""Minibatch stochastic gradient descent on the Image2Vec objectives, streaming rows.

For a minibatch of b rows with embeddings r_n = W f_n, the stochastic gradients of J (notation of
:mod:`solvers.objective`) are

- ``l2``, ``map``: with e_n = r_n - D x_n, grad_D = -(1/b) sum_n e_n x_n^T + lam D
  + 2 gamma D (K o D^T D), grad_W = (1/b) sum_n e_n f_n^T;
- ``l2``, ``words``: with e_n = r_n - D x_n and D D^T = I, grad_W = (1/b) sum_n e_n f_n^T + lam W,
  grad_D = -(1/b) sum_n r_n (x_n - D^T r_n)^T;
- ``ip``: grad_D = -(1/b) sum_n r_n x_n^T, grad_W = -(1/b) sum_n (D x_n) f_n^T.

After each step the iterate is projected back onto the constraints: a factor with orthonormal
rows onto the nearest such matrix (its polar factor), and for ``ip`` under ``map`` each column of
D onto the unit sphere. Steps are eta / L per block, L a Lipschitz estimate taken on the first
minibatch (for ``ip``, which is linear, the relative gradient size), so the defaults work across
data scales; the estimates are taken again after every measurement of J (under D D^T = I the
curvature in D is that of the embeddings, which grow from W = 0). The minibatch is capped at N.

Schedule and stopping, in steps: eta stays at ``learning_rate`` while J keeps falling. J is
measured exactly by a streaming pass after every epoch, or every ``MIN_STEPS_PER_CHECK`` steps
when an epoch is shorter (few rows per minibatch). After ``n_iter_no_change`` measurements
without a relative decrease of ``tol``, eta is divided by ``decay``; once eta has fallen below
``learning_rate * MIN_RATE`` such a stall means convergence. ``max_steps`` bounds the work.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

from solvers.backend import as_generator, column_norms, get_array_module
from solvers.bcd import SolverResult, polar
from solvers.objective import (
    L2_TERMS,
    ObjectiveTerms,
    check_rows,
    column_means,
    incoherence_gradient,
    iter_row_chunks,
    penalty,
)

#: eta below learning_rate * MIN_RATE ends the run at the next stall.
MIN_RATE = 1e-3
#: J is measured after an epoch, but never after fewer steps than this.
MIN_STEPS_PER_CHECK = 50


def sgd(
    F: Any,
    X: Any,
    W: Any,
    terms: ObjectiveTerms = L2_TERMS,
    *,
    learn_w: bool = True,
    center: bool = False,
    transform: Callable[[Any], Any] | None = None,
    sample_step: Callable[[Any, Any], Any] | None = None,
    D: Any = None,
    batch_size: int = 256,
    max_steps: int = 20_000,
    learning_rate: float = 0.5,
    decay: float = 5.0,
    tol: float = 1e-4,
    n_iter_no_change: int = 2,
    random_state: Any = None,
    xp: Any = None,
) -> SolverResult:
    """Minimise J(D, W) by minibatch SGD with projections, streaming rows of F and X.

    Parameters
    ----------
    F : array-like of shape (N, p)
        Image features, any row-indexable array (a numpy memmap included).
    X : sparse matrix or array of shape (N, V)
        Word targets.
    W : array of shape (d, q)
        Initial image map, feasible for ``terms.constraint``; q = p, or the width of
        ``transform``'s output. Fixed when ``learn_w`` is False.
    terms : ObjectiveTerms
    learn_w : bool
        Whether W is updated.
    center : bool
        Fit W (f_n - mean f) ~= D (x_n - mean x), an intercept model, by centring every
        minibatch with the column means (recomputed when ``sample_step`` changes X).
    transform : callable, optional
        Applied to every chunk of F as it is read (e.g. preprocessing and a change of basis).
    sample_step : callable, optional
        ``sample_step(D, W) -> X``: new targets after every measurement (the weak-tag A-step).
    D : array of shape (d, V), optional
        Initial dictionary; default zeros (``l2``, ``map``) or random feasible words.
    batch_size : int
        Rows per minibatch (at most N are used).
    max_steps : int
        The budget: at most this many minibatch steps.
    learning_rate : float
        eta, relative to the Lipschitz estimate (values in (0, 1] are safe).
    decay : float
        eta is divided by ``decay`` (> 1) when J stalls.
    tol : float
        A measurement that lowers J by less than ``tol * |J|`` (from the best so far) is a stall.
    n_iter_no_change : int
        Stalls in a row before eta decays (or, at the smallest eta, the run ends).
    random_state : int, Generator or None
        Seed of the row order (and of the random initial D).
    xp : module, optional
        Array module to compute on (numpy or cupy); default that of W.

    Returns
    -------
    SolverResult
        J after every measurement; ``converged`` False, with a ConvergenceWarning, when
        ``max_steps`` ran out first.
    """
    check_rows(F, X)
    _check_settings(batch_size=batch_size, max_steps=max_steps, learning_rate=learning_rate,
                    decay=decay, tol=tol, n_iter_no_change=n_iter_no_change)
    xp = xp or get_array_module(W)
    rng = as_generator(random_state)
    n, n_words = X.shape
    dtype = xp.float32 if getattr(F, "dtype", None) == np.float32 else xp.float64
    W = xp.asarray(W, dtype=dtype)
    D = xp.asarray(_initial_words(W.shape[0], n_words, terms, rng, xp) if D is None else D, dtype=dtype)
    batch = min(batch_size, n)
    chunk_size = max(batch, 4096)
    offsets = _offsets(F, X, xp, transform, dtype) if center else None
    result = SolverResult(D=D, W=W)
    steps_per_check = max(-(-n // batch), MIN_STEPS_PER_CHECK)

    def minibatches():  # epochs of shuffled minibatches, on the current X and offsets
        while True:
            for f_batch, x_batch in iter_row_chunks(F, X, batch, order=rng.permutation(n), xp=xp,
                                                    f_offset=offsets and offsets[0],
                                                    transform=transform, dtype=dtype):
                yield f_batch, _Rows(x_batch, offsets and offsets[1])

    stream = minibatches()
    eta, scales, step, stalls, best = learning_rate, None, 0, 0, math.inf
    while step < max_steps and not result.converged:
        for _ in range(min(steps_per_check, max_steps - step)):
            f_batch, x_batch = next(stream)
            grad_d, grad_w = _gradients(f_batch, x_batch, D, W, terms)
            if scales is None:  # taken again after every measurement: W moves, and L_D with it
                scales = _step_scales(f_batch, x_batch, D, W, grad_d, grad_w, terms)
            D = _project_words(D - (eta / scales[0]) * grad_d, terms)
            if learn_w:
                W = W - (eta / scales[1]) * grad_w
                W = polar(W) if terms.kind == "ip" or not terms.words_orthonormal else W
            step += 1
        result.D, result.W, result.n_iter, scales = D, W, step, None
        value = streaming_objective(F, X, D, W, terms, offsets=offsets, chunk_size=chunk_size,
                                    transform=transform)
        result.record(step, "steps", value)
        if sample_step is not None:
            X = sample_step(D, W)
            offsets = _offsets(F, X, xp, transform, dtype) if center else None
            stream = minibatches()
            value = streaming_objective(F, X, D, W, terms, offsets=offsets, chunk_size=chunk_size,
                                        transform=transform)
            result.record(step, "sample", value)
        if best - value > tol * abs(best) or best == math.inf:
            best, stalls = min(best, value), 0
            continue
        stalls += 1
        if stalls >= n_iter_no_change:
            stalls = 0
            if eta <= learning_rate * MIN_RATE:
                result.converged = True
            eta /= decay
    if not result.converged:
        warnings.warn(f"sgd did not converge in max_steps={max_steps} steps; raise max_steps "
                      "or tol", ConvergenceWarning, stacklevel=2)
    return result


def _check_settings(**settings: Any) -> None:
    """ValueError naming the first setting out of its range (NaN and wrong types included)."""
    integers = {"batch_size": 1, "max_steps": 1, "n_iter_no_change": 1}
    for name, value in settings.items():
        if name in integers:
            ok = not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= integers[name]
            if not ok:
                raise ValueError(f"{name} must be an integer >= {integers[name]}, got {value!r}")
            continue
        ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)
        low = {"learning_rate": 0.0, "decay": 1.0, "tol": 0.0}[name]
        if not ok or value < low or (name != "tol" and value == low):
            bound = ">= 0" if name == "tol" else f"> {low:g}"
            raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _initial_words(dim: int, n_words: int, terms: ObjectiveTerms, rng, xp) -> Any:
    """Zeros (``l2``, ``map``), else random words projected onto the constraint."""
    if terms.kind == "l2" and not terms.words_orthonormal:
        return xp.zeros((dim, n_words))
    return _project_words(xp.asarray(rng.standard_normal((dim, n_words))), terms)


def _project_words(D: Any, terms: ObjectiveTerms) -> Any:
    if terms.words_orthonormal:
        return polar(D)
    return D / column_norms(D) if terms.kind == "ip" else D


def _offsets(F, X, xp, transform, dtype) -> tuple[Any, Any]:
    """(mean of transform(F), mean of X) as arrays of ``xp`` in ``dtype``."""
    return tuple(xp.asarray(m, dtype=dtype) for m in column_means(F, X, xp=xp, transform=transform))


class _Rows:
    """A minibatch of targets x_n - u, with x sparse (or dense) and u the column means (or None).

    The centred rows are never formed: each product expands (x - 1 u^T) M = x M - 1 (u^T M).
    """

    def __init__(self, x: Any, u: Any = None):
        self.x, self.u = x, u
        self.rows = x.shape[0]

    def times(self, M: Any) -> Any:
        """(x - 1 u^T) M for M of shape (V, k): shape (b, k)."""
        out = self.x @ M
        return out if self.u is None else out - self.u @ M

    def transpose_times(self, R: Any) -> Any:
        """(x - 1 u^T)^T R for R of shape (b, k): shape (V, k)."""
        xp = get_array_module(R)
        out = xp.asarray(self.x.T @ R)
        return out if self.u is None else out - xp.outer(self.u, R.sum(axis=0))

    def squared_norm(self) -> float:
        """sum_n ||x_n - u||^2 = sum ||x_n||^2 - 2 sum_n x_n . u + b ||u||^2."""
        squares = float(self.x.multiply(self.x).sum() if sp.issparse(self.x) else (self.x**2).sum())
        if self.u is None:
            return squares
        return squares - 2 * float((self.x @ self.u).sum()) + self.rows * float(self.u @ self.u)

    def largest_mean_square(self) -> float:
        """lambda_max((x - 1 u^T)^T (x - 1 u^T) / b), from the b x b Gram matrix."""
        xp = get_array_module(self.u) if self.u is not None else np
        gram = self.x @ self.x.T
        gram = xp.asarray(gram.toarray() if hasattr(gram, "toarray") else gram)
        if self.u is not None:
            xu = xp.asarray(self.x @ self.u)
            gram = gram - xu[:, None] - xu[None, :] + float(self.u @ self.u)
        return float(xp.linalg.eigvalsh(gram)[-1]) / self.rows


def _gradients(f, x: _Rows, D, W, terms):
    b = f.shape[0]
    embedded = f @ W.T  # (b, d): r_n
    if terms.kind == "ip":
        return -x.transpose_times(embedded).T / b, -(x.times(D.T).T @ f) / b
    residual = embedded - x.times(D.T)  # (b, d): e_n = r_n - D x_n
    grad_w = (residual.T @ f) / b
    if terms.words_orthonormal:
        grad_d = -(x.transpose_times(embedded).T - (embedded.T @ embedded) @ D) / b
        return grad_d, grad_w + terms.lam * W
    grad_d = -x.transpose_times(residual).T / b + terms.lam * D
    if terms.gamma:
        grad_d = grad_d + incoherence_gradient(D, terms)
    return grad_d, grad_w


def _step_scales(f, x: _Rows, D, W, grad_d, grad_w, terms):
    """Step-size scales (D, W), the steps being eta / scale.

    ``l2``: Lipschitz constants of the two gradients on this minibatch: the largest eigenvalue
    of x^T x / b + lam (or of R^T R / b under ``words``) for D, and of f^T f / b for W (+ lam
    under ``words``), each from the smaller of the two Gram matrices (no V x V work). ``ip`` is
    linear and has none: the scales make the first step move each block by eta times its own
    norm, ||grad|| / ||block||.
    """
    xp = get_array_module(f)
    tiny = 1e-12
    if terms.kind == "ip":
        return (float(xp.linalg.norm(grad_d) / xp.linalg.norm(D)) + tiny,
                float(xp.linalg.norm(grad_w) / xp.linalg.norm(W)) + tiny)
    if terms.words_orthonormal:
        scale_d = _largest_mean_square(f @ W.T)
    else:
        scale_d = x.largest_mean_square() + terms.lam
    scale_w = _largest_mean_square(f) + (terms.lam if terms.words_orthonormal else 0.0)
    return scale_d + tiny, scale_w + tiny


def _largest_mean_square(M: Any) -> float:
    """lambda_max(M^T M / b) for M of shape (b, m), from whichever Gram matrix is smaller."""
    xp = get_array_module(M)
    gram = M @ M.T if M.shape[0] < M.shape[1] else M.T @ M
    return float(xp.linalg.eigvalsh(gram)[-1]) / M.shape[0]


def streaming_objective(
    F: Any,
    X: Any,
    D: Any,
    W: Any,
    terms: ObjectiveTerms = L2_TERMS,
    *,
    chunk_size: int = 4096,
    offsets: tuple | None = None,
    transform: Callable[[Any], Any] | None = None,
) -> float:
    """J(D, W) from one streaming pass over the rows (no sufficient statistics needed).

    ``offsets`` (f_mean, x_mean) centre the rows (as ``sgd(center=True)`` does); under D D^T = I,
    ||x - D^T r||^2 = ||x||^2 - 2 r . D x + ||r||^2, so no dense row of X is formed.
    """
    total = 0.0
    for f_chunk, x_chunk in iter_row_chunks(F, X, chunk_size, xp=get_array_module(W),
                                            f_offset=offsets and offsets[0], transform=transform,
                                            dtype=W.dtype):
        x = _Rows(x_chunk, offsets and offsets[1])
        embedded = f_chunk @ W.T
        words = x.times(D.T)  # (b, d): D x_n
        if terms.kind == "ip":
            total -= float((embedded * words).sum())
        elif terms.words_orthonormal:
            total += 0.5 * (x.squared_norm() - 2 * float((embedded * words).sum())
                            + float((embedded**2).sum()))
        else:
            total += 0.5 * float(((embedded - words) ** 2).sum())
    value = total / X.shape[0]
    return value if terms.kind == "ip" else value + penalty(D, W, terms)
