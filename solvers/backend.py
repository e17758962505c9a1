"""Backend selection: the same solver code runs on numpy (CPU) and CuPy (GPU) arrays.

Solvers call :func:`get_array_module` on their inputs and then use only the numpy-compatible API
that numpy and CuPy share, plus the SciPy-compatible linear algebra that :func:`linalg_module`
returns (``scipy.linalg`` or ``cupyx.scipy.linalg``). There are no ``if cupy:`` forks in the
algorithms themselves.
"""

from __future__ import annotations

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


def float_dtype(xp: ModuleType, *arrays: Any) -> Any:
    """float32 when every array is float32, else float64 (integers are promoted to float64)."""
    if arrays and all(getattr(a, "dtype", None) == xp.float32 for a in arrays):
        return xp.float32
    return xp.float64
