"""Block coordinate descent on the Image2Vec objectives, from sufficient statistics.

Blocks, in turn (notation of :mod:`solvers.objective`):

- D-step, ``l2``, constraint ``map``: D = W B (C + N lam I)^{-1} by a Cholesky factorisation;
  with the incoherence penalty (gamma > 0) exact minimisation column by column instead.
- D-step, ``ip``, constraint ``map``: d_v = normalise((W B)_v), the maximiser of tr(W B D^T) over
  unit columns.
- D-step, constraint ``words`` (both objectives): D = polar(W B), the maximiser of tr(W B D^T)
  over D D^T = I (orthogonal Procrustes).
- W-step, ``ip``: W = polar(D B^T), the maximiser of tr(W B D^T) over W W^T = I.
- W-step, ``l2``, constraint ``words``: the ridge regression W = D B^T (A + N lam I)^{-1}.
- W-step, ``l2``, constraint ``map``: the term tr(W A W^T) is not constant on {W W^T = I}
  unless A is a multiple of I, so Procrustes is applied to a majoriser: with s >= lambda_max(A),
  tr(W (A - s I) W^T) is concave and lies below its tangent at the current W_0, so
  J(W) <= J(W_0) + const - (1/N) tr(W M^T) with M = D B^T + W_0 (s I - A); W = polar(M)
  minimises the bound and never increases J. A few such majorise-minimise steps make one W-step
  (one step is exact when A = s I, e.g. for whitened features, and then only one is made).
- Optional per-image block (``sample_step``, e.g. the weak-tag A-step): a callable that receives
  (D, W) and returns new sufficient statistics.

The objective is recorded after every block; each block minimises J (or a majoriser of it) in its
variables, so the recorded trace never increases. :func:`closed_form` gives the exact minimiser
where one exists (every ``l2`` problem without incoherence, and ``ip`` under ``words``) and a
good start elsewhere; BCD started there converges in a sweep or two.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from solvers.backend import as_generator, column_norms, get_array_module, linalg_module, plus_identity
from solvers.objective import L2_TERMS, ObjectiveRecord, ObjectiveTerms, SufficientStats, objective


@dataclass
class SolverResult:
    """D (d x V), W (d x p) and the objective trace of a solver run.

    ``trace`` lists (iteration, block, J) after every block (bcd) or measurement (sgd), and
    ``seconds`` the wall time since the solver started at each entry.
    """

    D: Any
    W: Any
    trace: list[tuple[int, str, float]] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    seconds: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter, repr=False)

    def record(self, iteration: int, block: str, value: float) -> None:
        """Append (iteration, block, J) to the trace, with the time since the start."""
        self.trace.append((iteration, block, value))
        self.seconds.append(time.perf_counter() - self.started)

    @property
    def objective(self) -> float:
        """The last recorded objective value."""
        return self.trace[-1][2]


def bcd(
    stats: SufficientStats,
    W: Any,
    terms: ObjectiveTerms = L2_TERMS,
    *,
    D: Any = None,
    learn_w: bool = True,
    sample_step: Callable[[Any, Any], SufficientStats] | None = None,
    max_iter: int = 300,
    tol: float = 1e-6,
    w_substeps: int = 5,
    spectral_bound: float | None = None,
    start_exact: bool = False,
) -> SolverResult:
    r"""Minimise J(D, W) of :mod:`solvers.objective` by block coordinate descent.

    Parameters
    ----------
    stats : SufficientStats
        A = F^T F, B = F^T X, C = X^T X and N, arrays of the backend to run on.
    W : array of shape (d, p)
        Initial image map, feasible for ``terms.constraint`` (orthonormal rows for ``map``).
        With ``learn_w=False`` it stays fixed (the ``simple`` model's random projection) and
        only D is learned.
    terms : ObjectiveTerms
        The objective, its constraint and penalty weights.
    D : array of shape (d, V), optional
        Current word vectors (a warm start of the incoherent D-step).
    learn_w : bool
        Whether W is a block.
    sample_step : callable, optional
        ``sample_step(D, W) -> SufficientStats``: an extra block after D and W each sweep.
    max_iter : int
        Maximum number of sweeps over the blocks.
    tol : float
        Converged when a sweep lowers J by at most ``tol * |J|`` (relative decrease).
    w_substeps : int
        Majorise-minimise steps per W-step of the ``l2`` objective under ``map``; one when A is
        s I to ``1e-6`` relative (whitened features), where the majoriser is J itself.
    spectral_bound : float, optional
        s >= lambda_max(A) for the majoriser; computed once when not given.
    start_exact : bool
        D and W already minimise J on ``stats`` (:func:`closed_form`'s exact minimiser): each
        sweep is ``sample_step``, D, W instead of D, W, ``sample_step`` (the first D- and
        W-steps would return them unchanged), and the result's D and W are fitted to the
        statistics of its last ``sample_step``.

    Returns
    -------
    SolverResult
        ``converged`` is False, with a :class:`sklearn.exceptions.ConvergenceWarning`, when
        ``max_iter`` sweeps did not meet ``tol``.
    """
    _check_positive_int("max_iter", max_iter)
    _check_positive_int("w_substeps", w_substeps)
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    xp = get_array_module(stats.A, W)
    W = xp.asarray(W, dtype=stats.A.dtype)
    majorised = learn_w and terms.kind == "l2" and not terms.words_orthonormal
    if majorised and spectral_bound is None:
        spectral_bound = largest_eigenvalue(stats.A)
    if majorised and _is_multiple_of_identity(stats.A, spectral_bound):
        w_substeps = 1  # A = s I (whitened features): the majoriser is J itself, one step is exact
    result = SolverResult(D=D, W=W)
    record = ObjectiveRecord(terms)
    W_B = None  # W B for the current W and statistics, shared by a record and the next D-step
    previous = np.inf
    if start_exact and (D is None or sample_step is None):
        raise ValueError("start_exact needs the minimiser's D and a sample_step")
    for iteration in range(1, max_iter + 1):
        if start_exact:
            stats, W_B = _sample_block(sample_step, stats, result, record, iteration)
        W_B = result.W @ stats.B if W_B is None else W_B
        result.D = d_step(stats, result.W, terms, D=result.D, W_B=W_B)
        result.record(iteration, "D", record(stats, result.D, result.W, W_B=W_B))
        if learn_w:
            D_Bt = result.D @ stats.B.T
            result.W = w_step(stats, result.D, result.W, terms, spectral_bound=spectral_bound,
                              substeps=w_substeps, D_Bt=D_Bt)
            result.record(iteration, "W", record(stats, result.D, result.W, D_Bt=D_Bt))
            W_B = None
        if sample_step is not None and not start_exact:
            stats, W_B = _sample_block(sample_step, stats, result, record, iteration)
        result.n_iter = iteration
        current = result.objective
        exact_in_one_step = not (learn_w or sample_step is not None)
        if exact_in_one_step or (iteration > 1 and previous - current <= tol * abs(previous)):
            result.converged = True
            break
        previous = current
    if not result.converged:
        warnings.warn(f"bcd did not converge in max_iter={max_iter} sweeps (last relative decrease "
                      f"above tol={tol:g}); raise max_iter or tol", ConvergenceWarning, stacklevel=2)
    return result


def _sample_block(sample_step, stats, result, record, iteration):
    """Run ``sample_step`` on the current D, W; returns the new statistics and their W B."""
    stats = sample_step(result.D, result.W)
    W_B = result.W @ stats.B
    result.record(iteration, "sample", record(stats, result.D, result.W, W_B=W_B))
    return stats, W_B


def d_step(stats: SufficientStats, W: Any, terms: ObjectiveTerms = L2_TERMS, *,
           D: Any = None, W_B: Any = None) -> Any:
    """The exact minimiser of J over D for fixed W (see the module docstring).

    With ``terms.gamma > 0`` the penalty couples the columns; one sweep of exact column
    minimisations starting from ``D`` (or from the gamma = 0 solution) is made instead.
    ``W_B``: the product W B when the caller has already formed it.
    """
    target = W @ stats.B if W_B is None else W_B  # (d, V): sum_n r_n x_n^T
    if terms.words_orthonormal:
        return polar(target)
    if terms.kind == "ip":
        return target / column_norms(target)
    if terms.gamma and D is not None:
        return _incoherent_column_sweep(stats, target, D, terms)
    solution = _ridge_solve(stats.C, stats.n * terms.lam, target)
    if not terms.gamma:
        return solution
    return _incoherent_column_sweep(stats, target, solution, terms)


def _ridge_solve(gram: Any, ridge: float, rhs: Any) -> Any:
    """rhs (gram + ridge I)^{-1} for a symmetric PSD gram (pinv when singular).

    One LAPACK solve (gesv) of the backend's own library: on the CPU, SciPy's Cholesky and
    triangular solves run in a second OpenBLAS whose threads contend with numpy's just used,
    which made them slower in the solvers' loops than this LU (measured in a weak-tag fit).
    """
    xp = get_array_module(gram, rhs)
    system = plus_identity(gram, ridge)
    try:  # S system = rhs <=> system S^T = rhs^T (system is symmetric)
        solution = xp.linalg.solve(system, rhs.T).T
        if not bool(xp.isfinite(solution).all()):
            raise np.linalg.LinAlgError("singular system")
    except np.linalg.LinAlgError:
        # No ridge and a word that never occurs (or a constant feature): take the minimum norm.
        solution = rhs @ xp.linalg.pinv(system)
    return solution


def _incoherent_column_sweep(stats, target, D, terms):
    r"""One sweep of exact minimisations of J over each column d_v with the others fixed.

    With the others fixed, J is quadratic in d_v:
    [(C_vv / N + lam) I + 2 gamma sum_{u != v} K_uv d_u d_u^T] d_v = ((W B)_v - sum_{u != v} C_uv d_u) / N.
    """
    xp = get_array_module(D)
    D = D.copy()
    dim = D.shape[0]
    eye = xp.eye(dim, dtype=D.dtype)
    n, weights = stats.n, terms.weights
    for v in range(D.shape[1]):
        others = stats.C[:, v].copy()
        others[v] = 0
        rhs = (target[:, v] - D @ others) / n
        column = weights[:, [v]]
        column = xp.asarray(column.toarray()[:, 0]) if hasattr(column, "toarray") else column[:, 0]
        coupling = (D * column) @ D.T
        lhs = (stats.C[v, v] / n + terms.lam) * eye + 2 * terms.gamma * coupling
        D[:, v] = xp.linalg.solve(lhs, rhs)
    return D


def w_step(
    stats: SufficientStats,
    D: Any,
    W: Any,
    terms: ObjectiveTerms = L2_TERMS,
    *,
    spectral_bound: float | None = None,
    substeps: int = 5,
    D_Bt: Any = None,
) -> Any:
    """Update W for fixed D (see the module docstring): Procrustes, ridge, or majorised Procrustes.

    ``D_Bt``: the product D B^T when the caller has already formed it.
    """
    cross = D @ stats.B.T if D_Bt is None else D_Bt  # (d, p): D B^T
    if terms.kind == "ip":
        return polar(cross)
    if terms.words_orthonormal:
        return _ridge_solve(stats.A, stats.n * terms.lam, cross)
    if spectral_bound is None:
        spectral_bound = largest_eigenvalue(stats.A)
    for _ in range(substeps):
        W = polar(cross + spectral_bound * W - W @ stats.A)
    return W


def closed_form(stats: SufficientStats, dim: int, terms: ObjectiveTerms = L2_TERMS) -> SolverResult:
    r"""The exact minimiser of J where it has one; otherwise a start for :func:`bcd`.

    - ``l2``, ``map`` (W W^T = I), without incoherence: for fixed W the best D is
      W B S with S = (C + N lam I)^{-1}, and J(W B S, W) = (1/2N) tr(W (A - B S B^T) W^T), so the
      minimiser is W = the d eigenvectors of smallest eigenvalue of the residual scatter
      A - B S B^T (the feature directions that the words explain best, or that barely vary).
    - ``l2``, ``words`` (D D^T = I): reduced-rank ridge regression. With A + N lam I = L L^T and
      K = L^{-1} B = U S V^T, D = V_d^T (the top d right singular vectors) and
      W = D B^T (A + N lam I)^{-1} (Mukherjee and Zhu 2011).
    - ``ip``, ``words`` (W W^T = I, D D^T = I): partial least squares, W = U_d^T and D = V_d^T
      from B = U S V^T.
    - The minimum itself follows from the spectrum: J = (1/2N) (sum of the d smallest eigenvalues
      of A - B S B^T) under ``map``, J = (tr(C) - s_1^2 - ... - s_d^2) / 2N from K's singular
      values for reduced-rank (tr(W (A + N lam I) W^T) = tr(W B D^T) = sum_i s_i^2 there), and
      J = -(s_1 + ... + s_d) / N from B's for partial least squares.
    - ``ip``, ``map`` (unit columns of D) and ``l2`` with incoherence have no closed form: W is
      the top d left singular vectors of B (``ip``) or the incoherence-free minimiser (``l2``),
      and ``converged`` is False: run :func:`bcd` from there.

    Parameters
    ----------
    stats : SufficientStats
        Statistics of centred data.
    dim : int
        d, at most p (and, for ``words``, at most V).
    terms : ObjectiveTerms

    Returns
    -------
    SolverResult
        D, W, one trace entry, ``n_iter`` 1 and ``converged`` True for an exact minimiser.
    """
    result = SolverResult(D=None, W=None)
    xp = get_array_module(stats.A)
    p, n_words = stats.B.shape
    if dim > p or (terms.constraint == "words" and dim > n_words):
        raise ValueError(f"dim={dim} exceeds what the constraint allows (p={p}, V={n_words})")
    exact = not terms.gamma and (terms.kind == "l2" or terms.words_orthonormal)
    if terms.kind == "ip":
        left, singular, right = _top_singular_pairs(stats.B, dim)
        W = left.T
        D = right.T if terms.words_orthonormal else d_step(stats, W, terms)
        optimum = -float(singular.sum()) / stats.n
    elif not terms.words_orthonormal:  # W W^T = I
        S_BT = _ridge_solve(stats.C, stats.n * terms.lam, stats.B)  # B S (p x V)
        residual = stats.A - S_BT @ stats.B.T
        values, vectors = xp.linalg.eigh((residual + residual.T) / 2)
        W = vectors[:, :dim].T
        D = W @ S_BT
        optimum = float(values[:dim].sum()) / (2 * stats.n)
    else:  # D D^T = I: reduced-rank ridge; with A + N lam I = L L^T and K = L^{-1} B,
        # W = D B^T (A + N lam I)^{-1} = D K^T L^{-1}.
        whiten, unwhiten = _whitening(stats.A, stats.n * terms.lam)
        K = whiten(stats.B)
        _, singular, right = _top_singular_pairs(K, dim)
        D = right.T
        W = unwhiten(K @ D.T).T
        optimum = (float(stats.C.trace()) - float((singular**2).sum())) / (2 * stats.n)
    result.D, result.W, result.n_iter, result.converged = D, W, 1, exact
    result.record(1, "exact" if exact else "start", optimum if exact else objective(stats, D, W, terms))
    return result


def _whitening(gram: Any, ridge: float) -> tuple[Any, Any]:
    """M -> L^{-1} M and M -> L^{-T} M for gram + ridge I = L L^T (Cholesky, triangular solves).

    When the matrix is singular (no ridge, a feature that never varies), L^{-1} is
    Q_+^T / sqrt(values_+) from its eigendecomposition, the same on its range.
    """
    xp = get_array_module(gram)
    system = plus_identity(gram, ridge)
    solve = linalg_module(xp).solve_triangular
    try:
        lower = xp.linalg.cholesky(system)
        if bool(xp.isfinite(lower).all()):
            return (lambda M: solve(lower, M, lower=True)), (lambda M: solve(lower.T, M, lower=False))
    except np.linalg.LinAlgError:
        pass
    values, vectors = xp.linalg.eigh(system)
    keep = values > 1e-12 * float(values[-1])
    inverse = (vectors[:, keep] / xp.sqrt(values[keep])).T
    return (lambda M: inverse @ M), (lambda M: inverse.T @ M)


def _top_singular_pairs(M: Any, dim: int) -> tuple[Any, Any, Any]:
    """The top ``dim`` singular triplets (U_d, s_d, V_d) of M (m x n), from the smaller Gram."""
    xp = get_array_module(M)
    transpose = M.shape[0] > M.shape[1]
    small = M.T @ M if transpose else M @ M.T
    values, vectors = xp.linalg.eigh((small + small.T) / 2)  # LAPACK's divide and conquer
    values, vectors = values[::-1][:dim], vectors[:, ::-1][:, :dim]
    singular = xp.sqrt(xp.maximum(values, 0))
    other = (M @ vectors if transpose else M.T @ vectors) / xp.where(singular > 0, singular, 1)
    return (other, singular, vectors) if transpose else (vectors, singular, other)


def polar(M: Any) -> Any:
    """The matrix with orthonormal rows nearest to M (d x p, d <= p): U V^T from M = U S V^T.

    Computed from the d x d Gram matrix, polar(M) = (M M^T)^{-1/2} M, when M is well
    conditioned (one Newton-Schulz step restores orthonormality to rounding), else by an SVD.
    """
    xp = get_array_module(M)
    values, vectors = xp.linalg.eigh(M @ M.T)
    if float(values[0]) > 1e-8 * float(values[-1]) > 0:
        P = (vectors / xp.sqrt(values)) @ (vectors.T @ M)
        return 1.5 * P - 0.5 * (P @ P.T) @ P
    u, _, vt = xp.linalg.svd(M, full_matrices=False)
    return u @ vt


def _is_multiple_of_identity(A: Any, scale: float, rtol: float = 1e-6) -> bool:
    """Whether A = scale I up to ``rtol * scale`` in every entry."""
    xp = get_array_module(A)
    return float(xp.abs(plus_identity(A, -scale)).max()) <= rtol * abs(scale)


def largest_eigenvalue(A: Any) -> float:
    """lambda_max of a symmetric matrix."""
    xp = get_array_module(A)
    return float(xp.linalg.eigvalsh(A)[-1])


def random_orthonormal_rows(dim: int, n_features: int, random_state: Any = None, xp: Any = np) -> Any:
    """A d x p matrix with orthonormal rows, uniformly distributed (QR of a Gaussian matrix)."""
    if dim > n_features:
        raise ValueError(f"dim={dim} cannot exceed the feature dimension p={n_features} when W W^T = I")
    rng = as_generator(random_state)
    q, r = np.linalg.qr(rng.standard_normal((n_features, dim)))
    return xp.asarray((q * np.sign(np.diagonal(r))).T)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
