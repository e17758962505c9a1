"""Minibatch stochastic gradient descent on the Image2Vec objectives, streaming rows.

For a minibatch of b rows with residuals e_n = W f_n - D x_n, the stochastic gradients of J
(notation of :mod:`solvers.objective`) are

- ``l2``: grad_D = -(1/b) sum_n e_n x_n^T + lam D + 2 gamma D (K o D^T D),
  grad_W = (1/b) sum_n e_n f_n^T;
- ``ip``: grad_D = -(1/b) sum_n (W f_n) x_n^T, grad_W = -(1/b) sum_n (D x_n) f_n^T.

After each step the iterate is projected back onto the constraints: W onto the nearest matrix
with orthonormal rows (its polar factor), and for ``ip`` each column of D onto the unit sphere.
Step sizes are eta_t = eta_0 / (1 + t / decay) divided by a scale per block taken on the first
minibatch (a Lipschitz estimate for ``l2``, the relative gradient size for ``ip``), so the
defaults work across data scales.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from solvers.backend import column_norms, get_array_module
from solvers.bcd import SolverResult, polar
from solvers.objective import check_objective, check_rows, column_means, iter_row_chunks, penalty


def sgd(
    F: Any,
    X: Any,
    W: Any,
    *,
    objective_kind: str = "l2",
    lam: float = 0.0,
    gamma: float = 0.0,
    cooccurrence: Any = None,
    learn_w: bool = True,
    center: bool = False,
    sample_step: Callable[[Any, Any], Any] | None = None,
    D: Any = None,
    batch_size: int = 256,
    n_epochs: int = 30,
    learning_rate: float = 0.5,
    decay: float | None = None,
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
    W : array of shape (d, p)
        Initial image map (orthonormal rows when ``learn_w``; fixed otherwise).
    objective_kind : {"l2", "ip"}
    lam, gamma, cooccurrence
        As in :func:`solvers.bcd.bcd`.
    learn_w : bool
        Whether W is updated.
    center : bool
        Fit W (f_n - mean f) ~= D (x_n - mean x), an intercept model, by centring every
        minibatch with the column means (recomputed when ``sample_step`` changes X).
    sample_step : callable, optional
        ``sample_step(D, W) -> X``: new targets after every epoch (the weak-tag A-step).
    D : array of shape (d, V), optional
        Initial dictionary; zeros (``l2``) or random unit columns (``ip``) by default.
    batch_size : int
        Rows per minibatch.
    n_epochs : int
        Passes over the data; rows are visited in a new random order each epoch.
    learning_rate : float
        eta_0, relative to the Lipschitz estimate (values in (0, 1] are safe).
    decay : float, optional
        Steps after which the step size has halved; default five epochs.
    random_state : int, Generator or None
        Seed of the row order (and of the ``ip`` initial D).
    xp : module, optional
        Array module to compute on (numpy or cupy); default that of W.

    Returns
    -------
    SolverResult
        With J recorded after every epoch (a full streaming pass).
    """
    check_objective(objective_kind)
    check_rows(F, X)
    if gamma and cooccurrence is None:
        raise ValueError("gamma > 0 needs the cooccurrence matrix K")
    xp = xp or get_array_module(W)
    rng = np.random.default_rng(random_state)
    n, n_words = X.shape
    dtype = xp.float32 if getattr(F, "dtype", None) == np.float32 else xp.float64
    W = xp.asarray(W, dtype=dtype)
    if D is None:
        D = xp.asarray(rng.standard_normal((W.shape[0], n_words)), dtype=dtype)
        D = D / column_norms(D) if objective_kind == "ip" else D * 0
    D = xp.asarray(D, dtype=dtype)
    steps_per_epoch = -(-n // batch_size)
    decay = decay or 5 * steps_per_epoch
    result = SolverResult(D=D, W=W)
    step = 0
    scales = None
    offsets = column_means(F, X, xp=xp) if center else None
    terms = dict(objective_kind=objective_kind, lam=lam, gamma=gamma, cooccurrence=cooccurrence)
    for epoch in range(1, n_epochs + 1):
        batches = iter_row_chunks(F, X, batch_size, order=rng.permutation(n), xp=xp, offsets=offsets)
        for f_batch, x_batch in batches:
            grad_d, grad_w = _gradients(f_batch, x_batch, D, W, objective_kind, lam, gamma, cooccurrence)
            if scales is None:
                scales = _step_scales(f_batch, x_batch, D, W, grad_d, grad_w, lam, objective_kind)
            eta = learning_rate / (1 + step / decay)
            D = D - (eta / scales[0]) * grad_d
            if objective_kind == "ip":
                D = D / column_norms(D)
            if learn_w:
                W = polar(W - (eta / scales[1]) * grad_w)
            step += 1
        result.D, result.W, result.n_iter = D, W, epoch
        chunk_size = max(batch_size, 4096)
        result.trace.append((epoch, "epoch", streaming_objective(F, X, D, W, offsets=offsets, chunk_size=chunk_size, **terms)))
        if sample_step is not None:
            X = sample_step(D, W)
            offsets = column_means(F, X, xp=xp) if center else None
            result.trace.append((epoch, "sample", streaming_objective(F, X, D, W, offsets=offsets, chunk_size=chunk_size, **terms)))
    return result


def _gradients(f, x, D, W, kind, lam, gamma, cooccurrence):
    b = f.shape[0]
    embedded = f @ W.T  # (b, d): r_n
    if kind == "ip":
        return -(embedded.T @ x) / b, -((x @ D.T).T @ f) / b
    residual = embedded - x @ D.T  # (b, d): e_n
    grad_d = -(residual.T @ x) / b + lam * D
    if gamma:
        grad_d = grad_d + 2 * gamma * D @ (cooccurrence * (D.T @ D))
    return grad_d, (residual.T @ f) / b


def _step_scales(f, x, D, W, grad_d, grad_w, lam, kind):
    """Step-size scales (D, W), the steps being eta / scale.

    ``l2``: Lipschitz constants of the two gradients, the largest eigenvalues of x^T x / b + lam
    and of f^T f / b. ``ip`` is linear and has none: the scales make the first step move each
    block by eta times its own norm, ||grad|| / ||block||.
    """
    xp = get_array_module(f)
    tiny = 1e-12
    if kind == "ip":
        return (float(xp.linalg.norm(grad_d) / xp.linalg.norm(D)) + tiny,
                float(xp.linalg.norm(grad_w) / xp.linalg.norm(W)) + tiny)
    b = f.shape[0]
    return (float(xp.linalg.eigvalsh(x.T @ x / b)[-1]) + lam + tiny,
            float(xp.linalg.eigvalsh(f.T @ f / b)[-1]) + tiny)


def streaming_objective(
    F: Any,
    X: Any,
    D: Any,
    W: Any,
    *,
    objective_kind: str = "l2",
    lam: float = 0.0,
    gamma: float = 0.0,
    cooccurrence: Any = None,
    chunk_size: int = 4096,
    offsets: tuple | None = None,
) -> float:
    """J(D, W) from one streaming pass over the rows (no sufficient statistics needed)."""
    total = 0.0
    for f_chunk, x_chunk in iter_row_chunks(F, X, chunk_size, xp=get_array_module(W), offsets=offsets):
        embedded = f_chunk @ W.T
        if objective_kind == "ip":
            total -= float((embedded * (x_chunk @ D.T)).sum())
        else:
            total += 0.5 * float(((embedded - x_chunk @ D.T) ** 2).sum())
    value = total / X.shape[0]
    return value if objective_kind == "ip" else value + penalty(D, lam=lam, gamma=gamma, cooccurrence=cooccurrence)
