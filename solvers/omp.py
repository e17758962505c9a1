"""Batched Orthogonal Matching Pursuit (Batch-OMP, Rubinstein, Zibulevsky & Elad 2008).

All signals are coded at once: the correlations of every signal with every atom come from one
GEMM, and each greedy step then works on arrays of shape (signals, atoms) with the precomputed
Gram matrix G = D^T D and a progressive Cholesky factor of G restricted to the support, so the
residual itself is never formed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from solvers.backend import column_norms, float_dtype, gather_rows, get_array_module, normalised_gram

# Elements of the (signals x atoms) working arrays of one block: about the L2/L3 cache of a
# CPU core, and a memory bound on a GPU.
_CPU_BLOCK_ELEMENTS = 2**20
_GPU_BLOCK_ELEMENTS = 2**29


@dataclass(frozen=True)
class SparseCode:
    """k-sparse codes of N signals over V atoms, in selection order.

    Attributes
    ----------
    indices : array of shape (N, k), int64
        Atom index chosen at each step; -1 where a signal stopped before step k.
    coefs : array of shape (N, k)
        Coefficient of each chosen atom (0 where ``indices`` is -1).
    n_atoms : int
        V, the number of atoms (columns of D).
    """

    indices: Any
    coefs: Any
    n_atoms: int

    @property
    def n_nonzero(self) -> Any:
        """Number of atoms chosen per signal, shape (N,)."""
        return (self.indices >= 0).sum(axis=1)

    def toarray(self) -> Any:
        """Dense codes X of shape (N, V) with Y ~= X D^T."""
        xp = get_array_module(self.coefs)
        n = self.indices.shape[0]
        dense = xp.zeros((n, self.n_atoms), dtype=self.coefs.dtype)
        rows = xp.broadcast_to(xp.arange(n)[:, None], self.indices.shape)
        chosen = self.indices >= 0
        dense[rows[chosen], self.indices[chosen]] = self.coefs[chosen]
        return dense


def omp(
    D: Any,
    Y: Any,
    n_nonzero_coefs: int | None,
    *,
    tol: float | None = None,
    nonneg: bool = False,
    gram: Any = None,
    batch_size: int | None = None,
    n_jobs: int = 1,
) -> SparseCode:
    r"""Code each signal y_n as a sparse combination of the atoms (columns) of D.

    Greedy: at step j every signal picks the atom most correlated with its residual,
    v_j = argmax_v |d_v . (y - D x)| / ||d_v||, then x is refitted by least squares on the chosen
    support S, x_S = (D_S^T D_S)^{-1} D_S^T y. Working only with G = D^T D and D^T y:
    the correlations are D^T y - G_{:,S} x_S and the refit uses a Cholesky factor of G_SS grown
    by one row per step.

    Parameters
    ----------
    D : array of shape (d, V)
        Dictionary, one atom per column. Atoms need not have unit norm: selection uses the
        normalised correlation; zero atoms are never chosen.
    Y : array of shape (N, d) or (d,)
        Signals, one per row.
    n_nonzero_coefs : int or None
        Maximum number of atoms per signal, k. Capped at V. None (only with ``tol``) means
        min(d, V).
    tol : float, optional
        Stop a signal once its squared residual norm ||y - D x||^2 is <= tol. As in
        scikit-learn, the test follows each added atom: a non-zero signal gets at least one
        atom even when ||y||^2 <= tol already; a zero signal gets none.
    nonneg : bool, default False
        Non-negative OMP: select only atoms with a positive correlation and refit by
        non-negative least squares on the support, so every coefficient is >= 0.
    gram : array of shape (V, V), optional
        Precomputed G = D^T D.
    batch_size : int, optional
        Signals processed together; by default as many as keep the working arrays near
        2^20 elements on the CPU (cache-sized) and 2^29 on a GPU.
    n_jobs : int, default 1
        Threads that code blocks of signals in parallel (numpy backend).

    Returns
    -------
    SparseCode
        ``indices`` and ``coefs`` of shape (N, k) in selection order. A signal stops early
        (its remaining indices are -1) when its residual is within ``tol``, when no atom is
        left with a (positive, if ``nonneg``) correlation, or when the next atom is a linear
        combination of those already chosen.

    Raises
    ------
    ValueError
        On shape mismatches, non-finite input or an invalid ``n_nonzero_coefs`` / ``tol``.
    """
    xp = get_array_module(D, Y, gram)
    D, Y, gram = _check_inputs(xp, D, Y, gram)
    k = _check_k(n_nonzero_coefs, tol, D.shape[0], D.shape[1])
    y_sq = (Y * Y).sum(axis=1)
    if gram is not None:
        return omp_gram(gram, Y @ D, y_sq, k, tol=tol, nonneg=nonneg, batch_size=batch_size, n_jobs=n_jobs)
    # Unit-norm atoms d_v / ||d_v|| give the same supports; coefficients are rescaled at the end.
    norms = column_norms(D)  # a zero atom keeps zero correlations and is never chosen
    D = D / norms
    # G as a general product of two distinct arrays: numpy turns D.T @ D into BLAS syrk and then
    # mirrors the triangle in one thread, which takes longer than the whole product on two.
    gram = xp.ascontiguousarray(D.T) @ D
    return _batch_omp(xp, gram, Y @ D, y_sq, norms, k, tol, nonneg, batch_size, n_jobs)


def omp_gram(
    gram: Any,
    corr: Any,
    y_sq: Any,
    n_nonzero_coefs: int | None,
    *,
    tol: float | None = None,
    nonneg: bool = False,
    batch_size: int | None = None,
    n_jobs: int = 1,
) -> SparseCode:
    """Batch-OMP from G = D^T D, the correlations D^T y_n and ||y_n||^2 alone (see :func:`omp`).

    This form needs no D: e.g. a regularised read-out min ||y - D x||^2 + mu ||x - x0||^2 is OMP
    over the stacked atoms [d_v; sqrt(mu) e_v], whose Gram matrix is G + mu I and whose
    correlations are D^T y + mu x0.

    Parameters
    ----------
    gram : array of shape (V, V)
    corr : array of shape (N, V)
        Row n: D^T y_n.
    y_sq : array of shape (N,)
        ||y_n||^2 (used by ``tol`` and the stopping rules).
    n_nonzero_coefs, tol, nonneg, batch_size, n_jobs
        As in :func:`omp`; with only ``tol``, at most V atoms.
    """
    xp = get_array_module(gram, corr, y_sq)
    dtype = float_dtype(xp, gram, corr)
    gram, corr, y_sq = (xp.asarray(a).astype(dtype, copy=False) for a in (gram, corr, y_sq))
    n_atoms = gram.shape[0]
    if gram.shape != (n_atoms, n_atoms) or corr.ndim != 2 or corr.shape[1] != n_atoms or y_sq.shape != corr.shape[:1]:
        raise ValueError(
            f"omp_gram: need gram (V, V), corr (N, V) and y_sq (N,), got {gram.shape}, {corr.shape}, {y_sq.shape}"
        )
    for name, a in (("gram", gram), ("corr", corr), ("y_sq", y_sq)):
        if not bool(xp.isfinite(a).all()):
            raise ValueError(f"omp_gram: {name} contains NaN or infinite values")
    k = _check_k(n_nonzero_coefs, tol, n_atoms, n_atoms)
    unit_gram, norms = normalised_gram(gram)
    return _batch_omp(xp, unit_gram, corr / norms, y_sq, norms, k, tol, nonneg, batch_size, n_jobs)


def _batch_omp(xp, gram, corr0, y_sq, norms, k, tol, nonneg, batch_size, n_jobs) -> SparseCode:
    """Blocks of signals through :func:`_omp_block` (unit-norm atoms); coefficients / norms."""
    n, n_atoms = corr0.shape
    if batch_size is None:
        batch_size = _default_batch_size(xp, n_atoms, k)
    indices = xp.full((n, k), -1, dtype=xp.int64)
    coefs = xp.zeros((n, k), dtype=corr0.dtype)

    def code_block(start: int) -> None:
        stop = min(start + batch_size, n)
        indices[start:stop], coefs[start:stop] = _omp_block(
            xp, gram, corr0[start:stop], y_sq[start:stop], k, tol, nonneg
        )

    starts = range(0, n, batch_size)
    if n_jobs > 1 and len(starts) > 1:
        # numpy releases the GIL inside its array loops, so blocks run in parallel threads.
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            list(pool.map(code_block, starts))
    else:
        for start in starts:
            code_block(start)
    coefs /= xp.where(indices >= 0, norms[xp.maximum(indices, 0)], 1)
    return SparseCode(indices=indices, coefs=coefs, n_atoms=n_atoms)


def _default_batch_size(xp, n_atoms: int, k: int) -> int:
    """Signals per block: cache-sized on the CPU, as large as memory allows on a GPU."""
    elements = _CPU_BLOCK_ELEMENTS if xp is np else _GPU_BLOCK_ELEMENTS
    return max(1, elements // (n_atoms * (k + 2)))  # c, G_{S,:} and the correlations


def _check_inputs(xp, D, Y, gram):
    D = xp.asarray(D)
    Y = xp.asarray(Y)
    if D.ndim != 2:
        raise ValueError(f"omp: D must be 2-d (d, V), got shape {D.shape}")
    if Y.ndim == 1:
        Y = Y[None, :]
    if Y.ndim != 2 or Y.shape[1] != D.shape[0]:
        raise ValueError(
            f"omp: Y must have shape (N, {D.shape[0]}) to match D of shape {D.shape}, "
            f"got {Y.shape}"
        )
    dtype = float_dtype(xp, D, Y)
    D = D.astype(dtype, copy=False)
    Y = Y.astype(dtype, copy=False)
    for name, a in (("D", D), ("Y", Y)):
        if not bool(xp.isfinite(a).all()):
            raise ValueError(f"omp: {name} contains NaN or infinite values")
    if gram is not None:
        gram = xp.asarray(gram).astype(dtype, copy=False)
        if gram.shape != (D.shape[1], D.shape[1]):
            raise ValueError(f"omp: gram must have shape {(D.shape[1],) * 2}, got {gram.shape}")
    return D, Y, gram


def _check_k(n_nonzero_coefs, tol, dim, n_atoms) -> int:
    """k capped at V; with only ``tol``, min(d, V)."""
    if tol is not None and not tol >= 0:
        raise ValueError(f"omp: tol must be >= 0, got {tol}")
    if n_nonzero_coefs is None:
        if tol is None:
            raise ValueError("omp: give n_nonzero_coefs, tol, or both")
        n_nonzero_coefs = dim
    if isinstance(n_nonzero_coefs, bool) or int(n_nonzero_coefs) != n_nonzero_coefs:
        raise ValueError(f"omp: n_nonzero_coefs must be an integer, got {n_nonzero_coefs!r}")
    if n_nonzero_coefs < 1:
        raise ValueError(f"omp: n_nonzero_coefs must be >= 1, got {n_nonzero_coefs}")
    return int(min(n_nonzero_coefs, n_atoms))


def _omp_block(xp, gram, corr0, y_sq, k, tol, nonneg):
    r"""Batch-OMP on one block of signals over unit-norm atoms; returns (indices, coefs).

    With c = D^T y and S the support, the step keeps, per signal:

    - L^{-1}, the inverse Cholesky factor of G_SS (L L^T = G_SS). Adding atom v:
      w = L^{-1} G_{S,v}, l = sqrt(1 - w.w), and L^{-1} gains the row [-w^T L^{-1}, 1] / l;
      l ~= 0 means d_v is a combination of the chosen atoms and the signal stops.
    - z = L^{-1} c_S (one new entry per step, z_j = (c_v - w.z) / l) and the least-squares
      coefficients x_S = L^{-T} z; non-negative OMP keeps them where they are all >= 0 (then
      they are the NNLS solution too) and solves NNLS(G_SS, c_S) for the other signals.
    - the rows G_{S,:} stacked under c, so that the correlations with the residual,
      c - G_{:,S} x_S = [1, -x_S] @ [c; G_{S,:}], are one batched product per step (the
      last step needs no correlations, and of G_{v,:} only the entries G_{v,S}).

    Steps a signal skipped keep identity rows in L^{-1} and G_SS and zero coefficients.
    """
    b, n_atoms = corr0.shape
    dtype = corr0.dtype
    eps = float(np.finfo(dtype).eps)
    rows = xp.arange(b)
    indices = xp.full((b, k), -1, dtype=xp.int64)
    coefs = xp.zeros((b, k), dtype=dtype)
    inv_chol = xp.broadcast_to(xp.eye(k, dtype=dtype), (b, k, k)).copy()
    gram_ss = inv_chol.copy()
    z = xp.zeros((b, k), dtype=dtype)
    target = xp.zeros((b, k), dtype=dtype)  # c_S
    stacked = xp.empty((k, b, n_atoms), dtype=dtype)  # [c; G_{S_1,:}; ...; G_{S_{k-1},:}]
    stacked[0] = corr0
    weights = xp.zeros((b, 1, k + 1), dtype=dtype)  # [1, -x_S]
    weights[:, 0, 0] = 1
    corr = stacked[0]  # D^T (y - D x); a buffer of its own from the first product on
    active = y_sq > 0  # tol is checked after each added atom, as in scikit-learn
    noise_floor = 8 * eps * xp.sqrt(y_sq)

    for j in range(k):
        if j:  # chosen atoms are out of the race (their correlation is ~0 already)
            corr[rows[:, None], indices[:, :j]] = 0
        new = xp.argmax(corr, axis=1)
        if not nonneg:
            low = xp.argmin(corr, axis=1)
            new = xp.where(-corr[rows, low] > corr[rows, new], low, new)
        best = corr[rows, new] if nonneg else xp.abs(corr[rows, new])
        active &= best > noise_floor
        g = gram[new[:, None], xp.maximum(indices[:, :j], 0)]  # G_{S,v}
        w = (inv_chol[:, :j, :j] @ g[..., None])[..., 0]
        pivot = 1 - (w * w).sum(axis=1)
        active &= pivot > 100 * eps
        if not bool(active.any()):
            break
        inv_diag = xp.where(active, 1 / xp.sqrt(xp.where(active, pivot, 1)), 1)  # 1 / l
        indices[:, j] = xp.where(active, new, -1)
        g *= active[:, None]
        gram_ss[:, j, :j] = g
        gram_ss[:, :j, j] = g
        inv_chol[:, j, :j] = (w[:, None, :] @ inv_chol[:, :j, :j])[:, 0] * (-inv_diag * active)[:, None]
        inv_chol[:, j, j] = inv_diag
        target[:, j] = stacked[0][rows, new] * active
        z[:, j] = (target[:, j] - (w * z[:, :j]).sum(axis=1)) * inv_diag * active
        gamma = (z[:, None, : j + 1] @ inv_chol[:, : j + 1, : j + 1])[:, 0]  # (L^{-T} z)^T
        if nonneg:  # the least-squares fit where it is >= 0, else the NNLS one
            refit = xp.nonzero((gamma < 0).any(axis=1))[0]
            if refit.size:
                gamma[refit] = nnls_gram(gram_ss[refit, : j + 1, : j + 1], target[refit, : j + 1],
                                         init=coefs[refit, : j + 1])
        coefs[:, : j + 1] = gamma
        if j + 1 < k:  # the correlations for the next step (the last one needs none)
            if not j:
                corr = xp.empty_like(corr0)
            gather_rows(gram, new, out=stacked[j + 1])
            weights[:, 0, 1 : j + 2] = -gamma
            xp.matmul(weights[:, :, : j + 2], stacked[: j + 2].transpose(1, 0, 2), out=corr[:, None, :])
        if tol is not None:
            fit_sq = (gamma[:, None, :] @ gram_ss[:, : j + 1, : j + 1] @ gamma[:, :, None])[:, 0, 0]
            active &= y_sq - 2 * (gamma * target[:, : j + 1]).sum(axis=1) + fit_sq > tol
    return indices, coefs


def _identity_outside(matrices, mask):
    """matrices[n] on the rows and columns where mask[n] holds, the identity elsewhere (b, s, s)."""
    xp = get_array_module(matrices)
    both = mask[:, :, None] & mask[:, None, :]
    return xp.where(both, matrices, xp.eye(mask.shape[1], dtype=matrices.dtype))


def nnls_gram(gram_ss: Any, target: Any, init: Any = None, max_iter: int | None = None) -> Any:
    r"""Batched non-negative least squares in Gram form (Lawson & Hanson's active set).

    For each b solves min_{x >= 0} (1/2) x^T A x - c^T x with A = D_S^T D_S positive definite
    and c = D_S^T y, which is min_{x >= 0} ||D_S x - y||^2.

    Parameters
    ----------
    gram_ss : array of shape (b, s, s)
        A per problem (symmetric positive definite).
    target : array of shape (b, s)
        c per problem.
    init : array of shape (b, s), optional
        A feasible (non-negative) starting point, e.g. the previous OMP step's solution padded
        with zeros; its positive entries start in the passive set.
    max_iter : int, optional
        Outer iterations (variables entering the passive set); default 3 s.

    Returns
    -------
    array of shape (b, s)
        The non-negative solutions.
    """
    xp = get_array_module(gram_ss, target)
    b, s = target.shape
    eps = float(np.finfo(target.dtype).eps)
    scale = xp.abs(target).max(axis=1, keepdims=True) + eps
    x = xp.zeros_like(target) if init is None else xp.maximum(init, 0)
    passive = x > 0
    rows = xp.arange(b)

    def solve_on(mask):
        a = _identity_outside(gram_ss, mask)
        return xp.linalg.solve(a, xp.where(mask, target, 0)[..., None])[..., 0]

    for _ in range(max_iter or 3 * s):
        # Inner loop: least squares on the passive set, stepping back towards feasibility.
        for _ in range(3 * s):
            z = solve_on(passive)
            blocked = passive & (z <= 0)
            infeasible = blocked.any(axis=1)
            if not bool(infeasible.any()):
                break
            step_to_zero = xp.where(blocked, x / xp.where(x - z > 0, x - z, 1), xp.inf)
            step = xp.minimum(step_to_zero.min(axis=1), 1)[:, None]
            x = xp.where(infeasible[:, None], x + step * (z - x), x)
            passive &= ~(infeasible[:, None] & (x <= 10 * eps * scale))
        x = xp.where(passive, xp.maximum(z, 0), 0)
        # Outer loop: the variable with the largest positive -gradient c - A x enters.
        grad = target - (gram_ss @ x[..., None])[..., 0]
        candidate = xp.where(passive, -xp.inf, grad)
        enter = xp.argmax(candidate, axis=1)
        working = candidate[rows, enter] > 10 * eps * s * scale[:, 0]
        if not bool(working.any()):
            break
        passive[working, enter[working]] = True
    return x
