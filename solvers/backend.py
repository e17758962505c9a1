"""Backend selection: the same solver code runs on numpy (CPU) and CuPy (GPU) arrays.

Solvers call :func:`get_array_module` on their inputs and then use only the numpy-compatible API
that numpy and CuPy share, plus the SciPy-compatible linear algebra that :func:`linalg_module`
returns (``scipy.linalg`` or ``cupyx.scipy.linalg``). There are no ``if cupy:`` forks in the
algorithms themselves. The zero-safe column scalings the solvers share live here too.
"""

from __future__ import annotations

import mmap
from types import ModuleType
from typing import Any

import numpy as np

try:  # CuPy is the optional `gpu` extra.
    import cupy as _cupy
except ImportError:  # pragma: no cover - exercised where CuPy is absent
    _cupy = None


def get_array_module(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    Non-array arguments (None, Python scalars, SciPy sparse matrices) are ignored.
    """
    if _cupy is not None:
        return _cupy.get_array_module(*[a for a in arrays if isinstance(a, _cupy.ndarray)])
    return np


def as_generator(random_state: Any) -> np.random.Generator:
    """A NumPy ``Generator`` for any seed scikit-learn accepts, or a ``Generator`` itself.

    None: fresh entropy; an int: ``default_rng(seed)``; a ``Generator``: itself (its draws
    advance it); a legacy ``RandomState``: a generator seeded by one draw from it (which
    advances it too, as scikit-learn's estimators do).
    """
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    return np.random.default_rng(random_state)


def linalg_module(xp: ModuleType) -> ModuleType:
    """SciPy-style linear algebra (``solve_triangular``, ``cho_factor``...) for ``xp``."""
    if xp is np:
        import scipy.linalg

        return scipy.linalg
    import cupyx.scipy.linalg

    return cupyx.scipy.linalg


def to_numpy(a: Any) -> np.ndarray:
    """Copy an array of any backend to a numpy array (no copy for numpy input)."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def gpu_available() -> bool:
    """True where CuPy is installed and sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except _cupy.cuda.runtime.CUDARuntimeError:
        return False


def read_only_mapping(F: Any) -> np.memmap | None:
    """The read-only ``numpy.memmap`` that owns F's data, or None.

    None for an array in memory and for a writable or copy-on-write mapping, whose contents may
    differ from its file (changes not flushed, or never written back).
    """
    root = F
    while isinstance(root, np.ndarray) and not (isinstance(root, np.memmap) and isinstance(root.base, mmap.mmap)):
        root = root.base
    return root if isinstance(root, np.memmap) and root.mode == "r" else None


def release_mapped_pages(F: Any) -> None:
    """Drop the pages of a read-only memory-mapped F from this process's resident set.

    The pages stay in the operating system's file cache and are read back on the next access,
    so a pass over a file-backed F of any size holds about one chunk of it at a time instead
    of everything read so far. Anything else (an array in memory, a writable or copy-on-write
    mapping, whose changes would be lost) is left alone.
    """
    root = read_only_mapping(F)
    if root is not None and hasattr(mmap, "MADV_DONTNEED"):
        root.base.madvise(mmap.MADV_DONTNEED)


def gather_rows(source: Any, indices: Any, out: Any) -> Any:
    """Rows ``source[indices]`` written into the preallocated ``out`` (no temporary array).

    numpy's ``take`` buffers ``out`` in its default bounds-checking mode, so the indices (valid
    by contract) are taken in ``clip`` mode; CuPy's ``take`` has no mode and writes directly.

    Parameters
    ----------
    source : array of shape (m, n)
    indices : integer array of shape (b,), entries in [0, m)
    out : array of shape (b, n), C-contiguous

    Returns
    -------
    out
    """
    if isinstance(source, np.ndarray):
        return np.take(source, indices, axis=0, out=out, mode="clip")
    return source.take(indices, axis=0, out=out)


def float_dtype(xp: ModuleType, *arrays: Any) -> Any:
    """float32 when every array is float32, else float64 (integers are promoted to float64)."""
    if arrays and all(getattr(a, "dtype", None) == xp.float32 for a in arrays):
        return xp.float32
    return xp.float64


def plus_identity(M: Any, scale: float, *, in_place: bool = False) -> Any:
    """M + scale I for a square dense M (numpy or CuPy), without forming I.

    A floating M keeps its dtype; an integer one becomes float64. ``in_place``: add to M's own
    diagonal when M is floating (M must not be shared); else to a copy.
    """
    xp = get_array_module(M)
    out = M.astype(xp.result_type(M.dtype, xp.float32), copy=not in_place)
    xp.fill_diagonal(out, xp.diagonal(out) + scale)
    return out


def minus_outer(M: Any, u: Any, v: Any) -> Any:
    """M - u v^T for a dense M, as a new array of the common dtype of M, u and v, held in the
    outer product's own buffer (one allocation of M's size)."""
    xp = get_array_module(M)
    dtype = xp.result_type(M.dtype, u.dtype, v.dtype)
    product = xp.outer(u.astype(dtype, copy=False), v.astype(dtype, copy=False))
    return xp.subtract(M, product, out=product)


def column_norms(A: Any) -> Any:
    """Euclidean norms of the columns of A, with 1 for a zero column.

    ``A / column_norms(A)`` has unit columns where A's are non-zero and keeps zero columns zero.

    Parameters
    ----------
    A : array of shape (m, n)

    Returns
    -------
    array of shape (n,)
    """
    xp = get_array_module(A)
    return _ones_for_zeros(xp, xp.linalg.norm(A, axis=0))


def normalised_gram(G: Any) -> tuple[Any, Any]:
    """The Gram matrix of the unit columns, G_uv / (s_u s_v) with s_u = sqrt(G_uu).

    Parameters
    ----------
    G : array of shape (n, n)
        A Gram matrix A^T A (symmetric positive semi-definite).

    Returns
    -------
    normalised : array of shape (n, n)
        The Gram matrix of ``A / column_norms(A)``: rows and columns of zero columns stay zero.
    scales : array of shape (n,)
        s, the column norms of A, with 1 for a zero column (as :func:`column_norms`).
    """
    xp = get_array_module(G)
    scales = _ones_for_zeros(xp, xp.sqrt(xp.maximum(xp.diagonal(G), 0)))
    return G / scales[:, None] / scales[None, :], scales


def _ones_for_zeros(xp: ModuleType, norms: Any) -> Any:
    return xp.where(norms > 0, norms, 1).astype(norms.dtype, copy=False)
