"""Saving and loading fitted systems without pickle: one ``.npz`` file per model.

A fitted estimator's state is its constructor parameters plus its fitted attributes (names
ending in ``_``). Arrays go into the ``.npz`` as arrays (sparse matrices as their CSR parts),
everything else (numbers, strings, lists) into one JSON document stored in the same file, with
the format version, the image2vec version, the system's registry name and free metadata (e.g.
the feature extractor). Loading uses ``np.load(allow_pickle=False)`` and refuses files of
another format version or of an unknown system.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import scipy.sparse as sp

from image2vec import __version__
from image2vec.errors import Image2VecError
from image2vec.io import atomic_write

FORMAT = "image2vec-model"
FORMAT_VERSION = 1
_SPARSE_PARTS = ("data", "indices", "indptr", "shape")


def save_system(system: Any, name: str, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write a fitted ``system`` registered as ``name`` to ``path`` (.npz), atomically."""
    arrays: dict[str, np.ndarray] = {}
    values: dict[str, Any] = {}
    sparse: list[str] = []
    for attribute, value in vars(system).items():
        if not attribute.endswith("_") or attribute.startswith("_"):
            continue
        if sp.issparse(value):
            csr = sp.csr_matrix(value)
            for part in _SPARSE_PARTS:
                arrays[f"{attribute}.{part}"] = np.asarray(getattr(csr, part))
            sparse.append(attribute)
        elif isinstance(value, np.ndarray):
            arrays[attribute] = value
        else:
            values[attribute] = value
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "image2vec_version": __version__,
            "system": name, "params": system.get_params(), "values": values, "sparse": sparse,
            "metadata": metadata or {}}
    try:
        document = json.dumps(info, default=_plain)
    except TypeError as exc:
        raise Image2VecError(f"cannot save {name}: a fitted attribute is not JSON-serialisable ({exc})") from None
    with atomic_write(path) as fh:
        np.savez(fh, __info__=np.array(document), **arrays)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and tuples inside fitted attributes."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def load_system(path: str | os.PathLike, registry: dict[str, type]) -> tuple[Any, dict, str]:
    """Read a file written by :func:`save_system`; returns (system, metadata, name).

    Raises
    ------
    Image2VecError
        Missing file, not an image2vec model, another format version, an unknown system, or
        arrays the system's own check finds inconsistent.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise Image2VecError(f"model file {path} does not exist") from None
    except (OSError, ValueError, EOFError):
        raise Image2VecError(f"{path} is not an image2vec model file (not a readable .npz)") from None
    try:
        info = json.loads(str(arrays.pop("__info__")))
    except (KeyError, json.JSONDecodeError):
        raise Image2VecError(f"{path} is not an image2vec model file (no metadata)") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise Image2VecError(f"{path} is not an image2vec model file")
    if info.get("format_version") != FORMAT_VERSION:
        raise Image2VecError(
            f"{path} has model format version {info.get('format_version')} (written by image2vec "
            f"{info.get('image2vec_version')}); this image2vec {__version__} reads version "
            f"{FORMAT_VERSION}: retrain the model")
    name = info.get("system")
    if not isinstance(name, str) or name not in registry:
        raise Image2VecError(f"{path} holds an unknown system {name!r}; known: {', '.join(registry)}")
    try:
        system = registry[name](**info["params"])
        for attribute in info["sparse"]:
            parts = [arrays.pop(f"{attribute}.{part}") for part in _SPARSE_PARTS]
            setattr(system, attribute, sp.csr_matrix(tuple(parts[:3]), shape=tuple(parts[3])))
        for attribute, value in {**info["values"], **arrays}.items():
            if not (attribute.endswith("_") and not attribute.startswith("_")):
                raise ValueError(f"{attribute!r} is not a fitted attribute")
            setattr(system, attribute, value)
    except KeyError as exc:
        raise Image2VecError(f"{path} is not a complete image2vec model file ({exc} is missing)") from None
    except (TypeError, ValueError) as exc:
        raise Image2VecError(f"{path} is a malformed image2vec model file ({exc})") from None
    check = getattr(system, "check_loaded", None)
    if check is not None:
        try:
            check()
        except (ValueError, KeyError, AttributeError, TypeError, IndexError) as exc:
            raise Image2VecError(f"{path} is inconsistent: {exc}") from None
    return system, info.get("metadata") or {}, name
