"""Block coordinate descent on the Image2Vec objectives, from sufficient statistics.

Blocks, in turn (notation of :mod:`solvers.objective`):

- D-step, ``l2``: D = W B (C + N lam I)^{-1} by a Cholesky factorisation; with the incoherence
  penalty (gamma > 0) exact minimisation column by column instead.
- D-step, ``ip``: d_v = normalise((W B)_v), the maximiser of tr(W B D^T) over unit columns.
- W-step, ``ip``: orthogonal Procrustes, W = U V^T from the SVD D B^T = U S V^T, the maximiser of
  tr(W B D^T) over W W^T = I.
- W-step, ``l2``: the term tr(W A W^T) is not constant on {W W^T = I} unless A is a multiple of I,
  so Procrustes is applied to a majoriser: with s >= lambda_max(A), tr(W (A - s I) W^T) is concave
  and lies below its tangent at the current W_0, so J(W) <= J(W_0) + const - (1/N) tr(W M^T) with
  M = D B^T + W_0 (s I - A); W = polar(M) minimises the bound and never increases J. A few such
  majorise-minimise steps make one W-step (one step is exact when A = s I).
- Optional per-image block (``sample_step``, e.g. the weak-tag A-step): a callable that receives
  (D, W) and returns new sufficient statistics.

The objective is recorded after every block; each block minimises J (or a majoriser of it) in its
variables, so the recorded trace never increases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from solvers.backend import column_norms, get_array_module, linalg_module
from solvers.objective import SufficientStats, check_objective, objective


@dataclass
class SolverResult:
    """D (d x V), W (d x p) and the objective trace of a solver run.

    ``trace`` lists (iteration, block, J) after every block (bcd) or epoch (sgd).
    """

    D: Any
    W: Any
    trace: list[tuple[int, str, float]] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False

    @property
    def objective(self) -> float:
        """The last recorded objective value."""
        return self.trace[-1][2]


def bcd(
    stats: SufficientStats,
    W: Any,
    *,
    objective_kind: str = "l2",
    lam: float = 0.0,
    gamma: float = 0.0,
    cooccurrence: Any = None,
    learn_w: bool = True,
    sample_step: Callable[[Any, Any], SufficientStats] | None = None,
    max_iter: int = 50,
    tol: float = 1e-7,
    w_substeps: int = 5,
) -> SolverResult:
    r"""Minimise J(D, W) of :mod:`solvers.objective` by block coordinate descent.

    Parameters
    ----------
    stats : SufficientStats
        A = F^T F, B = F^T X, C = X^T X and N, arrays of the backend to run on.
    W : array of shape (d, p)
        Initial image map; orthonormal rows when ``learn_w``. With ``learn_w=False`` it stays
        fixed (the ``simple`` model's random projection) and only D is learned.
    objective_kind : {"l2", "ip"}
    lam : float
        Ridge weight on ||D||_F^2 (``l2``).
    gamma : float
        Weight of the co-occurrence incoherence penalty (``l2``); needs ``cooccurrence``.
    cooccurrence : array of shape (V, V), optional
        K, symmetric with a zero diagonal (see :func:`solvers.objective.incoherence_weights`).
    learn_w : bool
        Whether W is a block.
    sample_step : callable, optional
        ``sample_step(D, W) -> SufficientStats``: an extra block after D and W each iteration.
    max_iter : int
        Maximum number of sweeps over the blocks.
    tol : float
        Stop when a sweep lowers J by less than ``tol * max(1, |J|)``.
    w_substeps : int
        Majorise-minimise steps per W-step of the ``l2`` objective.

    Returns
    -------
    SolverResult
    """
    check_objective(objective_kind)
    if objective_kind == "ip" and (lam or gamma):
        raise ValueError("lam and gamma apply to the l2 objective only (ip has unit-norm words)")
    if gamma and cooccurrence is None:
        raise ValueError("gamma > 0 needs the cooccurrence matrix K")
    xp = get_array_module(stats.A, W)
    terms = dict(kind=objective_kind, lam=lam, gamma=gamma, cooccurrence=cooccurrence)
    W = xp.asarray(W, dtype=stats.A.dtype)
    spectral_bound = _largest_eigenvalue(stats.A) if learn_w and objective_kind == "l2" else None
    result = SolverResult(D=None, W=W)
    previous = np.inf
    for iteration in range(1, max_iter + 1):
        result.D = d_step(stats, result.W, objective_kind=objective_kind, lam=lam, gamma=gamma,
                          cooccurrence=cooccurrence, D=result.D)
        result.trace.append((iteration, "D", objective(stats, result.D, result.W, **terms)))
        if learn_w:
            result.W = w_step(stats, result.D, result.W, objective_kind=objective_kind,
                              spectral_bound=spectral_bound, substeps=w_substeps)
            result.trace.append((iteration, "W", objective(stats, result.D, result.W, **terms)))
        if sample_step is not None:
            stats = sample_step(result.D, result.W)
            result.trace.append((iteration, "sample", objective(stats, result.D, result.W, **terms)))
        result.n_iter = iteration
        current = result.objective
        if not (learn_w or sample_step is not None) or previous - current <= tol * max(1.0, abs(current)):
            result.converged = True
            break
        previous = current
    return result


def d_step(
    stats: SufficientStats,
    W: Any,
    *,
    objective_kind: str = "l2",
    lam: float = 0.0,
    gamma: float = 0.0,
    cooccurrence: Any = None,
    D: Any = None,
) -> Any:
    """The exact minimiser of J over D for fixed W (see the module docstring).

    With ``gamma > 0`` the penalty couples the columns; one sweep of exact column minimisations
    starting from ``D`` (or from the gamma = 0 solution) is made instead.
    """
    xp = get_array_module(stats.A, W)
    target = W @ stats.B  # (d, V): sum_n r_n x_n^T
    if objective_kind == "ip":
        return target / column_norms(target)
    if gamma and D is not None:
        return _incoherent_column_sweep(stats, target, D, lam, gamma, cooccurrence)
    n_words = stats.C.shape[0]
    system = stats.C + stats.n * lam * xp.eye(n_words, dtype=stats.C.dtype)
    linalg = linalg_module(xp)
    try:
        # system = L L^T, and D system = W B  <=>  L L^T D^T = (W B)^T.
        lower = xp.linalg.cholesky(system)
        half = linalg.solve_triangular(lower, target.T, lower=True)
        solution = linalg.solve_triangular(lower.T, half, lower=False).T
        if not bool(xp.isfinite(solution).all()):
            raise np.linalg.LinAlgError("not positive definite")
    except np.linalg.LinAlgError:
        # lam = 0 with a word that never occurs: C is singular; take the minimum-norm minimiser.
        solution = target @ xp.linalg.pinv(system)
    if not gamma:
        return solution
    return _incoherent_column_sweep(stats, target, solution, lam, gamma, cooccurrence)


def _incoherent_column_sweep(stats, target, D, lam, gamma, weights):
    r"""One sweep of exact minimisations of J over each column d_v with the others fixed.

    With the others fixed, J is quadratic in d_v:
    [(C_vv / N + lam) I + 2 gamma sum_{u != v} K_uv d_u d_u^T] d_v = ((W B)_v - sum_{u != v} C_uv d_u) / N.
    """
    xp = get_array_module(D)
    D = D.copy()
    dim = D.shape[0]
    eye = xp.eye(dim, dtype=D.dtype)
    n = stats.n
    for v in range(D.shape[1]):
        others = stats.C[:, v].copy()
        others[v] = 0
        rhs = (target[:, v] - D @ others) / n
        coupling = (D * weights[:, v]) @ D.T
        lhs = (stats.C[v, v] / n + lam) * eye + 2 * gamma * coupling
        D[:, v] = xp.linalg.solve(lhs, rhs)
    return D


def w_step(
    stats: SufficientStats,
    D: Any,
    W: Any,
    *,
    objective_kind: str = "l2",
    spectral_bound: float | None = None,
    substeps: int = 5,
) -> Any:
    """Update W over {W W^T = I} by (majorised) orthogonal Procrustes; see the module docstring."""
    cross = D @ stats.B.T  # (d, p): D B^T
    if objective_kind == "ip":
        return polar(cross)
    if spectral_bound is None:
        spectral_bound = _largest_eigenvalue(stats.A)
    for _ in range(substeps):
        W = polar(cross + spectral_bound * W - W @ stats.A)
    return W


def polar(M: Any) -> Any:
    """The matrix with orthonormal rows nearest to M (d x p, d <= p): U V^T from M = U S V^T."""
    xp = get_array_module(M)
    u, _, vt = xp.linalg.svd(M, full_matrices=False)
    return u @ vt


def _largest_eigenvalue(A: Any) -> float:
    xp = get_array_module(A)
    return float(xp.linalg.eigvalsh(A)[-1])


def random_orthonormal_rows(dim: int, n_features: int, random_state: Any = None, xp: Any = np) -> Any:
    """A d x p matrix with orthonormal rows, uniformly distributed (QR of a Gaussian matrix)."""
    if dim > n_features:
        raise ValueError(f"dim={dim} cannot exceed the feature dimension p={n_features} when W W^T = I")
    rng = np.random.default_rng(random_state)
    q, r = np.linalg.qr(rng.standard_normal((n_features, dim)))
    return xp.asarray((q * np.sign(np.diagonal(r))).T)
