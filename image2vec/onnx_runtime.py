"""An extractor's network run by ONNX Runtime: exported once from the same weights, then cached.

On a CPU, ONNX Runtime runs EfficientNet-Lite0 about five times as fast as torch (its fused,
NCHWc-blocked convolution kernels), with features within 1e-5 relative of torch's
(``experiments/bench_features.py`` measures both). The network is exported from the torch
modules that :func:`image2vec.features.load_extractor` built from the weights file (nothing is
downloaded) into ``cache_dir()/onnx/``, under a name keyed by the extractor, the weights file's
SHA-256 and the torch release; the file is written to a temporary name and renamed, so that an
interrupted export leaves nothing. Exporting takes a few seconds, once per machine.

Needs the ``onnxruntime`` and ``onnx`` packages (the exporter writes through ``onnx``);
:func:`onnx_network` raises :class:`OnnxUnavailable` with the reason when either is missing or
the export fails, and the caller falls back to torch.

ONNX Runtime's Linux wheels (1.32) send usage telemetry to a Microsoft host unless
``ORT_DISABLE_TELEMETRY`` is set when it is imported (it also leaves a ``.ses`` file in the
temporary folder): importing this module sets it, since image2vec reaches no host at run time.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from image2vec.errors import Image2VecError
from image2vec.io import atomic_write, cache_dir

if TYPE_CHECKING:
    from torch import nn

__all__ = ["OnnxNetwork", "OnnxUnavailable", "onnx_network"]

os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # before onnxruntime is imported (the module text)

logger = logging.getLogger(__name__)

#: ONNX operator set of the export (supported by every onnxruntime release since 1.12).
OPSET = 17


class OnnxUnavailable(Image2VecError):
    """ONNX Runtime cannot run this network here (a package missing, or the export failed)."""


class OnnxNetwork:
    """An ONNX Runtime session computing (features, logits) of a float32 NCHW batch.

    Parameters
    ----------
    path : Path
        The exported model.
    threads : int
        Intra-op threads (the cores it may use); the session's threads sleep between batches
        instead of spinning, so that image decoding in another thread gets the cores.
    """

    def __init__(self, path: Path, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path, self.threads = path, options.intra_op_num_threads
        self.session = onnxruntime.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, logits = self.session.run(None, {"images": np.ascontiguousarray(batch, np.float32)})
        return features, logits

    def __getstate__(self) -> dict:  # a session does not pickle: a Dask worker opens the file
        return {"path": self.path, "threads": self.threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["threads"])


def weights_digest(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of a weights file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def onnx_network(name: str, weights: Path, body: nn.Module, head: nn.Module, crop: int,
                 threads: int) -> OnnxNetwork:
    """ONNX Runtime's session of ``head(body(x))``, exported once into the cache.

    Parameters
    ----------
    name : str
        Extractor name (part of the cached file's name).
    weights : Path
        The weights file ``body`` and ``head`` were loaded from (its hash keys the cache).
    body, head : nn.Module
        The torch network, in evaluation mode: images (B, 3, crop, crop) -> features -> logits.
    crop : int
        Input side used to trace the export (the batch size stays free).
    threads : int
        Intra-op threads of the session.

    Raises
    ------
    OnnxUnavailable
        ``onnxruntime`` or ``onnx`` is not installed, or the export or the session failed.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise OnnxUnavailable("onnxruntime is not installed (pip install onnxruntime)") from None
    import torch

    path = cache_dir() / "onnx" / f"{name}-{weights_digest(weights)}-torch{torch.__version__}.onnx"
    if not path.is_file():
        logger.info("exporting %s to ONNX (once): %s", name, path)
        _export(body, head, crop, path)
    try:
        return OnnxNetwork(path, threads)
    except Exception as exc:  # onnxruntime raises its own types for a damaged file
        raise OnnxUnavailable(f"ONNX Runtime cannot load {path} ({exc}); delete it to export "
                              "again") from None


def _export(body: nn.Module, head: nn.Module, crop: int, path: Path) -> None:
    """Write the ONNX model of (body, head) to ``path`` atomically."""
    import torch

    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise OnnxUnavailable("the onnx package is not installed (pip install onnx): it exports "
                              "the network once") from None

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = body, head

        def forward(self, x):
            features = self.body(x)
            return features, self.head(features)

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
            torch.onnx.export(Network().eval(), (torch.zeros(1, 3, crop, crop),), buffer,
                              dynamo=False, opset_version=OPSET, input_names=["images"],
                              output_names=["features", "logits"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"},
                                            "logits": {0: "batch"}})
    except Exception as exc:  # the exporter raises many types
        raise OnnxUnavailable(f"exporting the network to ONNX failed ({type(exc).__name__}: "
                              f"{exc})") from None
    with atomic_write(path) as fh:
        fh.write(buffer.getvalue())
