"""Shared fixtures: the array backend (numpy; CuPy under ``-m gpu``) and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image2vec.io import shared_data_dir
from solvers.backend import gpu_available


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module a solver test runs on; the CuPy variant needs a CUDA device."""
    if request.param == "numpy":
        return np
    if not gpu_available():
        pytest.skip("CuPy with a CUDA device is not available")
    import cupy

    return cupy


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared data folder (``$IMAGE2VEC_SHARED_DATA`` or ``../shared/data``)."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.fail(f"shared data folder {path} is missing: set IMAGE2VEC_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def coco_mini(shared_data) -> Path:
    """The 80-image COCO train2017 subset in the official layout."""
    return shared_data / "coco-mini"
