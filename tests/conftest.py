"""Shared fixtures: the array backend (numpy; CuPy under ``-m gpu``), the shared data folder, and
the feature extractors (the default network, and a tiny one for feature stores in milliseconds)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from solvers.backend import gpu_available


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """The toolkit's cache (feature stores of summarize and evaluate, the ONNX export) in a
    folder of this test session, not the user's."""
    import os

    saved = os.environ.get("IMAGE2VEC_CACHE")
    os.environ["IMAGE2VEC_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if saved is None:
        del os.environ["IMAGE2VEC_CACHE"]
    else:
        os.environ["IMAGE2VEC_CACHE"] = saved


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
    """The project's shared data folder (``$IMAGE2VEC_SHARED_DATA`` or ``../shared/data``).

    Without it (an unpacked sdist, a checkout on its own) the tests that need it are skipped; in CI
    (``CI=true``, or ``IMAGE2VEC_REQUIRE_SHARED_DATA=1`` as ``.ci/run`` sets) they fail instead.
    """
    path = Path(os.environ.get("IMAGE2VEC_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not path.is_dir():
        message = f"shared data folder {path} is missing: set IMAGE2VEC_SHARED_DATA"
        if _shared_data_required():
            pytest.fail(message)
        pytest.skip(message)
    return path


def _shared_data_required() -> bool:
    """Whether a missing shared data folder fails the tests that need it rather than skipping them."""
    return (os.environ.get("CI", "").lower() in {"1", "true", "yes"}
            or os.environ.get("IMAGE2VEC_REQUIRE_SHARED_DATA") == "1")


@pytest.fixture(scope="session")
def coco_mini(shared_data) -> Path:
    """The 80-image COCO train2017 subset in the official layout."""
    return shared_data / "coco-mini"


@pytest.fixture(scope="session")
def coco(coco_mini):
    """coco-mini's train2017 split: image paths, ids and captions."""
    from image2vec.coco import load_coco_split

    return load_coco_split(coco_mini, "train2017")


@pytest.fixture(scope="session")
def lite0():
    """The default extractor, EfficientNet-Lite0, built once for the session."""
    from image2vec.features import load_extractor

    return load_extractor("efficientnet-lite0")


@pytest.fixture(scope="session")
def tiny():
    """A network-free extractor (mean colour, p = 3): feature stores in milliseconds."""
    from torch import nn

    from image2vec.features import Extractor, Preprocessing

    return Extractor("tiny", "1", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)),
                     nn.Linear(3, 2), 3, Preprocessing(resize=16, crop=8))
