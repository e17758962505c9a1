"""Saving and loading fitted systems without pickle: one ``.npz`` file per model.

A fitted estimator's state is its constructor parameters plus its fitted attributes (names
ending in ``_``). Arrays go into the ``.npz`` as arrays (sparse matrices as their CSR parts),
everything else (numbers, strings, lists) into one JSON document stored in the same file, with
the format version, the image2vec version, the system's registry name, the name and dtype of
every array, and free metadata (e.g. the feature extractor).

Float arrays may be stored at half precision (``float_storage="float16"``, as the pretrained
model that ships in the package is) and are read back as float64.

Loading trusts nothing in the file. It reads the archive member by member with
``allow_pickle=False`` and accepts exactly the arrays the document declares, each stored
uncompressed with a plain numeric or string dtype and a header whose shape accounts for the
member's size, so that no member is read before it is checked and no file can claim more
memory than it occupies (a zip bomb, or a header that claims 7 TiB). The parameters are then
validated by the system's own ``check_params`` exactly as constructor arguments, every float
array must be finite, and the system's ``check_loaded`` checks that the arrays fit together.
"""

from __future__ import annotations

import json
import math
import os
import unicodedata
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from image2vec import __version__
from image2vec.errors import Image2VecError
from image2vec.io import atomic_write, open_regular, parse_json

FORMAT = "image2vec-model"
#: 3: Image2Vec models carry the correlation metric (retrieval_maps_, similarity_map_).
FORMAT_VERSION = 3
_SPARSE_PARTS = ("data", "indices", "indptr", "shape")
_INFO = "__info__"
#: The largest JSON document a model file may hold.
_MAX_INFO_BYTES = 64 * 2**20
#: Array kinds a model may hold: booleans, integers, floats, Unicode strings.
_KINDS = "biufU"


def save_system(system: Any, name: str, path: str | os.PathLike, metadata: dict | None = None,
                float_storage: str | None = None) -> None:
    """Write a fitted ``system`` registered as ``name`` to ``path`` (.npz), atomically.

    Parameters
    ----------
    system : fitted estimator
    name : str
        Its registry name.
    path : path-like
    metadata : dict, optional
        Free JSON metadata (the feature extractor, the training data, ...).
    float_storage : {None, "float16"}
        ``"float16"`` stores every float array at half precision (relative rounding 2^-11),
        half the size of float32, for a model that ships in the package; :func:`load_system`
        reads such arrays back as float64. None stores the arrays as they are.

    Raises
    ------
    Image2VecError
        A fitted attribute that JSON cannot hold, or a float array outside float16's range.
    """
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
            arrays[attribute] = _stored(value, attribute, float_storage)
        else:
            values[attribute] = value
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "image2vec_version": __version__,
            "system": name, "params": _saved_params(system.get_params()), "values": values, "sparse": sparse,
            "arrays": {key: array.dtype.str for key, array in arrays.items()},
            "metadata": metadata or {}}
    try:
        document = json.dumps(info, default=_plain)
    except TypeError as exc:
        raise Image2VecError(f"cannot save {name}: a fitted attribute is not JSON-serialisable ({exc})") from None
    with atomic_write(path) as fh:
        np.savez(fh, **{_INFO: np.array(document)}, **arrays)


def _saved_params(params: dict) -> dict:
    """The constructor parameters as saved: a random generator object as None (its state is
    not part of the fitted model, and JSON cannot hold it)."""
    generators = (np.random.Generator, np.random.RandomState)
    return {key: None if isinstance(value, generators) else value for key, value in params.items()}


def _stored(array: np.ndarray, attribute: str, float_storage: str | None) -> np.ndarray:
    """``array`` as it is written: float arrays at ``float_storage`` precision, if given."""
    if float_storage is None or array.dtype.kind != "f":
        return array
    if float_storage != "float16":
        raise ValueError(f"float_storage must be None or 'float16', got {float_storage!r}")
    largest = float(np.finfo(np.float16).max)
    if array.size and not np.abs(array).max() <= largest:
        raise Image2VecError(f"cannot store {attribute} at float16: its values exceed float16's "
                             f"range ({largest:g})")
    return array.astype(np.float16)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and tuples inside fitted attributes."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def load_system(path: str | os.PathLike, registry: Mapping[str, type]) -> tuple[Any, dict, str]:
    """Read a file written by :func:`save_system`; returns (system, metadata, name).

    Parameters
    ----------
    path : path-like
    registry : mapping of str to class
        Saved system name -> class (e.g. :data:`image2vec.systems.REGISTRY`).

    Raises
    ------
    Image2VecError
        Missing file, not an image2vec model (not a zip archive, a NumPy ``.npy`` file,
        truncated or damaged), another format version, an unknown system, an array that is
        undeclared, compressed, of a refused dtype or larger than its member, a parameter the
        system's ``check_params`` refuses, NaN or infinite values, or arrays the system's own
        check finds inconsistent.
    """
    with open_regular(path, "model file") as fh:
        try:
            with zipfile.ZipFile(fh) as archive:
                info, arrays = _read_model(archive, os.fstat(fh.fileno()).st_size, path)
        except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
            fh.seek(0)
            if fh.read(6) == b"\x93NUMPY":
                raise Image2VecError(f"{path} is a NumPy array file (.npy), not an image2vec "
                                     "model (.npz written by image2vec train)") from None
            raise Image2VecError(f"{path} is not an image2vec model file (not a readable .npz "
                                 f"archive: truncated or damaged? {exc})") from None
    name = info.get("system")
    if not isinstance(name, str) or name not in registry:
        raise Image2VecError(f"{path} holds an unknown system {name!r}; known: {', '.join(registry)}")
    system = _build(registry[name], info, arrays, path)
    check = getattr(system, "check_loaded", None)
    if check is not None:
        try:
            check()
        except (ValueError, KeyError, AttributeError, TypeError, IndexError) as exc:
            raise Image2VecError(f"{path} is inconsistent: {exc}") from None
    return system, info.get("metadata") or {}, name


def _read_model(archive: zipfile.ZipFile, size: int, path: str | os.PathLike,
                ) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON document and the declared arrays of a model archive of ``size`` bytes, each
    checked before read."""
    members = {member.filename: member for member in archive.infolist()}
    if f"{_INFO}.npy" not in members:
        raise Image2VecError(f"{path} is not an image2vec model file (no metadata)")
    document = _read_array(archive, members.pop(f"{_INFO}.npy"), size, path, _MAX_INFO_BYTES)
    if document.dtype.kind != "U" or document.shape != ():
        raise Image2VecError(f"{path} is not an image2vec model file (its metadata is not text)")
    info = parse_json(str(document), f"the metadata of model file {path}")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise Image2VecError(f"{path} is not an image2vec model file")
    if info.get("format_version") != FORMAT_VERSION:
        raise Image2VecError(
            f"{path} has model format version {info.get('format_version')} (written by image2vec "
            f"{info.get('image2vec_version')}); this image2vec {__version__} reads version "
            f"{FORMAT_VERSION}: retrain the model")
    declared = info.get("arrays")
    if not isinstance(declared, dict) or not all(isinstance(d, str) for d in declared.values()):
        raise Image2VecError(f"{path} is a malformed image2vec model file (no valid list of arrays)")
    _check_document(info, path)
    undeclared = sorted(set(members) - {f"{key}.npy" for key in declared})
    if undeclared:
        raise Image2VecError(f"{path} holds arrays its metadata does not declare "
                             f"({', '.join(undeclared[:3])}): refused")
    arrays = {}
    for key, dtype in declared.items():
        if f"{key}.npy" not in members:
            raise Image2VecError(f"{path} is not a complete image2vec model file (array {key} is missing)")
        arrays[key] = _read_array(archive, members[f"{key}.npy"], size, path)
        if arrays[key].dtype.str != dtype:
            raise Image2VecError(f"{path}: array {key} is {arrays[key].dtype.str}, its metadata "
                                 f"says {dtype}: refused")
        if arrays[key].dtype == np.float16:  # a storage format only: models compute in float64
            arrays[key] = arrays[key].astype(np.float64)
    return info, arrays


#: The metadata entries image2vec itself reads, and their types; the rest is free JSON (the
#: pretrained model's record: its settings, its dev figures).
_METADATA_TYPES = {"extractor": str, "source": str, "data": str, "date": str, "n_images": int}


def _check_document(info: dict, path: str | os.PathLike) -> None:
    """Refuse a model document whose entries are not of the types :func:`save_system` writes."""
    expected = {"params": dict, "values": dict, "sparse": list, "metadata": dict}
    for key, kind in expected.items():
        if not isinstance(info.get(key, kind()), kind):
            raise Image2VecError(f"{path} is a malformed image2vec model file (its {key!r} is a "
                                 f"{type(info[key]).__name__}, not a {kind.__name__})")
    if not all(isinstance(name, str) for name in info.get("sparse", [])):
        raise Image2VecError(f"{path} is a malformed image2vec model file (a sparse array name "
                             "is not a string)")
    metadata = info.get("metadata", {})
    odd = [key for key, kind in _METADATA_TYPES.items() if key in metadata and not isinstance(metadata[key], kind)]
    if odd:
        raise Image2VecError(f"{path} is a malformed image2vec model file (metadata {odd[0]!r} "
                             f"is not a {_METADATA_TYPES[odd[0]].__name__})")


def _read_array(archive: zipfile.ZipFile, member: zipfile.ZipInfo, size: int,
                path: str | os.PathLike, limit: int | None = None) -> np.ndarray:
    """One ``.npy`` member, read only after its header is checked against its size.

    The member must be stored uncompressed (as :func:`save_system` writes it), lie within the
    ``size`` bytes of the file (a zip directory can claim any size), be at most ``limit`` bytes,
    and hold exactly the data its header declares, of a kind in ``_KINDS``.
    """
    where = f"{path}: array {member.filename[:-4]!r}"
    if member.compress_type != zipfile.ZIP_STORED:
        raise Image2VecError(f"{where} is compressed; image2vec writes uncompressed arrays: refused")
    if member.compress_size != member.file_size or member.header_offset + member.file_size > size:
        raise Image2VecError(f"{where} claims {member.file_size} bytes but the file holds "
                             f"{size} in all: refused")
    if limit is not None and member.file_size > limit:
        raise Image2VecError(f"{where} has {member.file_size} bytes, over the limit of {limit}")
    with archive.open(member) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, fortran_order, dtype = read_header(fh)
        except ValueError as exc:
            raise Image2VecError(f"{where} has a malformed header ({exc})") from None
        if dtype.kind not in _KINDS or dtype.hasobject:
            raise Image2VecError(f"{where} has dtype {dtype}; a model holds numbers and strings only")
        if dtype.itemsize == 0:
            raise Image2VecError(f"{where} has dtype {dtype}, whose items are 0 bytes: it holds no data")
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise Image2VecError(f"{where} has shape {shape}, with a negative size: refused")
        nbytes = math.prod(shape) * dtype.itemsize
        if fh.tell() + nbytes != member.file_size:
            raise Image2VecError(f"{where} declares {shape} {dtype} ({nbytes} bytes) but its member "
                                 f"holds {member.file_size - fh.tell()}: refused")
        data = bytearray(nbytes)
        if fh.readinto(data) != nbytes:
            raise EOFError(f"{member.filename} is truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")


def _build(cls: type, info: dict, arrays: dict[str, np.ndarray], path: str | os.PathLike) -> Any:
    """A ``cls`` with the file's parameters, validated as constructor ones, and its attributes."""
    try:
        system = cls(**info["params"])
    except KeyError as exc:
        raise Image2VecError(f"{path} is not a complete image2vec model file ({exc} is missing)") from None
    except TypeError as exc:
        raise Image2VecError(f"{path} is a malformed image2vec model file ({exc})") from None
    if hasattr(system, "check_params"):
        try:
            system.check_params()
        except (TypeError, ValueError) as exc:
            raise Image2VecError(f"{path} has a parameter that {cls.__name__} refuses: {exc}") from None
    try:
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
    for attribute, value in vars(system).items():
        data = value.data if sp.issparse(value) else value
        if isinstance(data, np.ndarray) and data.dtype.kind == "f":
            if not np.isfinite(data).all():
                raise Image2VecError(f"{path} is inconsistent: {attribute} contains NaN or infinite values")
            bound = np.sqrt(np.finfo(data.dtype).max) / 2**20  # a million squares stay finite
            if data.size and np.abs(data).max() > bound:
                raise Image2VecError(f"{path} is inconsistent: {attribute} holds values too large to "
                                     f"compute with (up to {np.abs(data).max():.3g}; at most {bound:.3g})")
    if hasattr(system, "words_"):
        _check_words(system.words_, path)
    return system


def _check_words(words: Any, path: str | os.PathLike) -> None:
    """Refuse a vocabulary that ``build_vocabulary`` cannot have made: no word, a word that is
    not a string, empty, given twice or holding a control or format character."""
    words = np.asarray(words)
    problem = None
    if words.ndim != 1 or words.size == 0:
        problem = "it has no word"
    elif words.dtype.kind != "U":
        problem = f"its words are not text ({words.dtype})"
    else:
        seen: set[str] = set()
        for word in words.tolist():
            if not word.strip():
                problem = "it holds an empty word"
            elif word in seen:
                problem = f"it holds the word {word!r} twice"
            elif any(unicodedata.category(c).startswith("C") for c in word):
                problem = f"the word {word.encode('unicode_escape').decode()!r} holds a control character"
            if problem:
                break
            seen.add(word)
    if problem:
        raise Image2VecError(f"{path} is inconsistent: its vocabulary is refused: {problem}")
