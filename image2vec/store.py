"""The feature store on disk: image features F in a resumable, self-describing folder.

A feature store is a folder::

    index.json      image keys and files, extractor name and version, preprocessing, skipped
                    images; written last, so its presence means the store is complete
    features.npy    F, float32 (N x p), memory-mappable
    logits.npy      class logits (N x 1000), when asked for
    partial/        only while extracting: a marker file, arrays for all N images, progress
                    (which rows are done, so that a rerun resumes and shards finish in any order)

:mod:`image2vec.features` computes what goes in; this module writes and reads it, without torch.
Every file is written to a temporary name and renamed, and only what the toolkit created is
ever deleted or overwritten: ``partial/`` holds a marker file from its creation and is refused
without it, and a folder with ``features.npy`` or ``logits.npy`` but neither an index nor a
marked ``partial/`` is refused. The arrays' disk blocks are reserved (``posix_fallocate``) before
they are memory-mapped, so a full disk is one clear error at the start, not a bus error when a
page of the mapping finds no block; the extraction then resumes once space is freed. A store is
checked against its index when read, so a damaged or edited one is an error, not wrong features.

The workers of a cluster write their rows through :class:`RowWriter` (positional writes, then
``fsync``), and the process that runs the extraction records their progress: one writer of
``progress.json``, and no worker's memory mapping that could write back a neighbour's rows.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from image2vec.errors import Image2VecError
from image2vec.io import atomic_write, read_json, write_json

__all__ = ["FeatureSet", "fingerprint", "file_stamp", "cache_store", "cache_path", "read_index", "load_features",
           "Partial", "RowWriter", "finish", "extraction_progress"]

logger = logging.getLogger(__name__)

STORE_FORMAT = "image2vec-features"
#: The arrays an extractor produces, in the order it returns them; each is ``<name>.npy``.
OUTPUTS = ("features", "logits")
#: The file that marks a ``partial/`` folder as the toolkit's own.
MARKER = "created-by-image2vec"


@dataclass(frozen=True)
class FeatureSet:
    """A complete feature store, read back.

    Attributes
    ----------
    features : ndarray of shape (N, p), float32
        F, row n for ``keys[n]`` (memory-mapped).
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


def fingerprint(extractor: dict, keys: Sequence, files: Sequence[Path], logits: bool,
                stamps: Sequence | None = None) -> str:
    """The hash of a request: extractor spec (name, version, preprocessing), keys, files, logits
    and, when given, the stamps of the files (:func:`file_stamp`; a changed file is then another request).

    ``extractor`` is an extractor's :attr:`~image2vec.features.Extractor.spec`. A store whose
    index holds the same fingerprint answers the request without computing.
    """
    spec = {"extractor": extractor["extractor"], "version": extractor["extractor_version"],
            "preprocessing": extractor["preprocessing"], "logits": logits,
            "keys": list(keys), "files": [str(f) for f in files]}
    if stamps is not None:
        spec["stamps"] = list(stamps)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def file_stamp(path: Path) -> list | None:
    """[size, modification time in ns] of a file (None if it cannot be read): a file whose
    stamp is unchanged is taken to be unchanged."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def cache_store(extractor: dict, files: Sequence[Path]) -> Path:
    """The feature store caching the features of ``files`` (in this order) for ``extractor``.

    One store per set of files and extractor under ``features/`` of :func:`image2vec.io.cache_dir`
    (file paths made absolute), so that the same images asked for again are read back, not
    extracted; the request includes every file's :func:`file_stamp`, so a changed file makes
    the store be extracted again. Delete the folder to reclaim its space.
    """
    return cache_path("features", extractor["extractor"], extractor["extractor_version"],
                      [str(Path(f).absolute()) for f in files])


def cache_path(kind: str, *key: Any) -> Path:
    """``kind/<hash of key>`` under :func:`image2vec.io.cache_dir`: one cached store per key
    (a JSON-serialisable description of what the store holds)."""
    from image2vec.io import cache_dir

    text = json.dumps(list(key))
    return cache_dir() / kind / hashlib.sha256(text.encode(errors="surrogateescape")).hexdigest()[:20]


def read_index(store: Path) -> dict | None:
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


def load_features(store: str | os.PathLike) -> FeatureSet:
    """Read a complete feature store, its arrays memory-mapped and checked against its index.

    Raises
    ------
    Image2VecError
        If ``store`` is a file, not a complete feature store (no valid ``index.json``), or
        damaged: an array missing, unreadable, or of another shape or type than its index says.
    """
    store = Path(store)
    index = read_index(store)
    if index is None:
        raise Image2VecError(f"{store} is not a complete feature store (no index.json)")
    try:
        keys, files, skipped = list(index["keys"]), list(index["files"]), list(index["skipped"])
        arrays = {name: _stored_array(store, name, (len(keys), int(entry["shape"][1])))
                  for name, entry in index["outputs"].items() if name in OUTPUTS}
        if len(files) != len(keys) or "features" not in arrays:
            raise ValueError("its index does not list one file per key and a features array")
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise Image2VecError(f"feature store {store} is damaged ({exc}); delete the folder to "
                             "extract the features again") from None
    return FeatureSet(arrays["features"], arrays.get("logits"), keys, files, skipped, index)


def _stored_array(store: Path, name: str, shape: tuple[int, int]) -> np.ndarray:
    """``<name>.npy`` of ``store`` memory-mapped; ValueError unless float32 of ``shape``.

    Memory-mapping never reads more than the file holds: a header that claims more data than
    the file has is refused by the mapping itself.
    """
    try:
        array = np.load(store / f"{name}.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {name}.npy: {exc}") from None
    if array.dtype != np.float32 or array.shape != shape:
        raise ValueError(f"{name}.npy holds {array.dtype} {array.shape}, its index says "
                         f"float32 {shape}")
    return array


def _check_owned(store: Path) -> None:
    """Refuse to write into ``store`` over files that the toolkit did not create."""
    partial = store / "partial"
    if partial.exists() or partial.is_symlink():
        if not (partial / MARKER).is_file():
            raise Image2VecError(f"{partial} was not created by image2vec (it has no {MARKER} "
                                 "file) and is left alone: move it away or choose another "
                                 "feature store folder")
    elif not (store / "index.json").exists():
        foreign = [f"{name}.npy" for name in OUTPUTS if (store / f"{name}.npy").exists()]
        if foreign:
            raise Image2VecError(f"{store} holds {' and '.join(foreign)} but no feature store "
                                 "index: image2vec does not overwrite files it did not create; "
                                 "move them away or choose another folder")


def _allocated(path: Path, shape: tuple[int, int], mode: str) -> np.memmap:
    """A float32 ``.npy`` array memory-mapped from ``path``, its disk blocks reserved.

    Raises
    ------
    Image2VecError
        The disk (or the user's quota) has no room for the array.
    """
    try:
        array = np.lib.format.open_memmap(path, mode=mode, dtype=np.float32, shape=shape)
        if hasattr(os, "posix_fallocate"):  # all but macOS and Windows
            with open(path, "r+b") as fh:
                os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        size = shape[0] * shape[1] * 4 / 2**20
        raise Image2VecError(f"no space left on the disk of {path.parent} for {path.name} "
                             f"({size:.0f} MiB): free some space and run again (the extraction "
                             "resumes)") from None
    return array


class Partial:
    """The ``partial/`` folder of an extraction in progress in ``store``.

    It holds the :data:`MARKER` file (there from its creation), arrays for all N images and
    ``progress.json`` = {fingerprint, done, finished} and ``bad.jsonl`` (the unreadable images,
    one JSON object a line, appended): images 0..done-1 are processed, and
    so are the row ranges ``finished`` ([start, stop) pairs past the first gap: the shards of a
    cluster run finish in any order). An unfinished extraction of the same request resumes with
    the rows not yet processed; one of another request is discarded.

    Raises
    ------
    Image2VecError
        ``store`` holds a ``partial/`` or arrays that the toolkit did not create, or the disk
        has no room for the arrays.
    """

    def __init__(self, store: Path, fingerprint: str, n: int, dims: dict[str, int]):
        self.folder, self.fingerprint, self.n = store / "partial", fingerprint, n
        _check_owned(store)
        progress = read_json(self.folder / "progress.json", "extraction progress file",
                             missing_ok=True)
        ranges = _done_ranges(progress, n) if isinstance(progress, dict) else None
        fresh = (ranges is None or progress.get("fingerprint") != fingerprint
                 or not all((self.folder / f"{name}.npy").is_file() for name in dims))
        if fresh:
            if self.folder.exists():
                logger.info("discarding an unfinished extraction of other images or extractor")
                shutil.rmtree(self.folder)
            # made under a temporary name with its marker, then renamed: an interruption
            # never leaves a partial/ without the marker, which every later run would refuse
            store.mkdir(parents=True, exist_ok=True)
            made = Path(tempfile.mkdtemp(prefix=".partial-", dir=store))
            with atomic_write(made / MARKER, "w") as fh:
                fh.write("An unfinished image2vec feature extraction; image2vec deletes this "
                         "folder when it is done.\n")
            os.rename(made, self.folder)
            progress, ranges = {}, []
        self.ranges = ranges
        self.bad = self._read_bad(progress.get("bad", []))
        self._bad_written = len(self.bad)
        self.arrays = {name: _allocated(self.folder / f"{name}.npy", (n, dim), "w+" if fresh else "r+")
                       for name, dim in dims.items()}
        if fresh:
            self._write()

    def reopen(self) -> None:
        """Map the arrays afresh, read-only: rows other processes wrote (Dask workers, with
        positional writes) are then read from the file, not from pages this process mapped
        before (which a network file system need not revalidate)."""
        self.arrays = {name: np.load(self.folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                       for name in self.arrays}

    @property
    def n_done(self) -> int:
        """How many images are processed."""
        return sum(stop - start for start, stop in self.ranges)

    def missing(self) -> list[tuple[int, int]]:
        """The [start, stop) ranges of the rows not yet processed, in order."""
        edges = [0, *(edge for interval in self.ranges for edge in interval), self.n]
        return [(start, stop) for start, stop in zip(edges[::2], edges[1::2]) if start < stop]

    def record(self, start: int, stop: int) -> None:
        """Record that rows ``start``..``stop - 1`` are processed, after flushing the arrays."""
        for array in self.arrays.values():
            array.flush()
        self.ranges = _merged([*self.ranges, [start, stop]])
        self._write()

    def _write(self) -> None:
        """Append the bad images not yet written to ``bad.jsonl``, then rewrite the ranges.

        The bad list only grows, so it is appended (a rewrite after every batch would cost
        time and disk quadratic in the number of unreadable images).
        """
        if len(self.bad) > self._bad_written:
            with open(self.folder / "bad.jsonl", "a", encoding="utf-8", errors="backslashreplace") as fh:
                fh.writelines(json.dumps(entry, ensure_ascii=False) + "\n"
                              for entry in self.bad[self._bad_written:])
                fh.flush()
                os.fsync(fh.fileno())
            self._bad_written = len(self.bad)
        prefix = self.ranges[0][1] if self.ranges and self.ranges[0][0] == 0 else 0
        write_json(self.folder / "progress.json",
                   {"fingerprint": self.fingerprint, "done": prefix,
                    "finished": self.ranges[1:] if prefix else self.ranges})

    def _read_bad(self, earlier: list) -> list[dict]:
        """The bad images recorded in ``bad.jsonl`` (and ``earlier``) among the processed rows,
        once each: entries of a batch that was not recorded (or a torn last line) are dropped,
        and found again when the batch is redone."""
        entries = list(earlier) if isinstance(earlier, list) else []
        with contextlib.suppress(FileNotFoundError):
            with open(self.folder / "bad.jsonl", encoding="utf-8") as fh:
                for line in fh:
                    with contextlib.suppress(ValueError):
                        entries.append(json.loads(line))
        kept: dict[int, dict] = {}
        for entry in entries:
            position = entry.get("position") if isinstance(entry, dict) else None
            if (isinstance(position, int) and position not in kept
                    and any(start <= position < stop for start, stop in self.ranges)):
                kept[position] = entry
        return list(kept.values())


def extraction_progress(store: str | os.PathLike, n: int) -> int:
    """How many of the ``n`` images an extraction in progress in ``store`` has processed (0 when
    none has started, or the progress file is not yet readable), read from ``progress.json``."""
    try:
        progress = read_json(Path(store) / "partial" / "progress.json", "extraction progress file",
                             missing_ok=True)
    except Image2VecError:  # replaced while read: the next look finds it
        return 0
    ranges = _done_ranges(progress, n) if isinstance(progress, dict) else None
    return sum(stop - start for start, stop in ranges or [])


def _done_ranges(progress: dict, n: int) -> list[list[int]] | None:
    """The processed row ranges of a progress record, merged; None unless it is well formed."""
    done, finished = progress.get("done"), progress.get("finished", [])
    if not isinstance(done, int) or not isinstance(finished, list) or not 0 <= done <= n:
        return None
    ranges = [[0, done]] if done else []
    for interval in finished:
        if (not isinstance(interval, list) or len(interval) != 2
                or not all(isinstance(i, int) for i in interval) or not 0 <= interval[0] < interval[1] <= n):
            return None
        ranges.append(interval)
    return _merged(ranges)


def _merged(ranges: list[list[int]]) -> list[list[int]]:
    """Sorted, disjoint [start, stop) ranges covering the same rows as ``ranges``."""
    merged: list[list[int]] = []
    for start, stop in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return merged


class RowWriter:
    """Writes rows into the arrays of a ``partial/`` folder from another process (a worker).

    Positional writes into the preallocated files, then ``fsync`` on :meth:`close`: a memory
    mapping on a network file system is written back a whole page at a time, which would put
    back stale copies of the neighbouring rows another worker wrote. The rows count as done
    only once the process running the extraction records them (:meth:`Partial.record`).

    Parameters
    ----------
    folder : Path
        The ``partial/`` folder.
    names : sequence of str
        The arrays to write (of :data:`OUTPUTS`).
    """

    def __init__(self, folder: Path, names: Sequence[str]):
        self.files = {}
        for name in names:
            header = np.load(folder / f"{name}.npy", mmap_mode="r")  # reads the header only
            row_bytes = header.shape[1] * header.dtype.itemsize
            self.files[name] = (os.open(folder / f"{name}.npy", os.O_WRONLY), header.offset, row_bytes)
            del header

    def write(self, positions: Sequence[int], outputs: dict[str, np.ndarray]) -> None:
        """Write ``outputs[name][j]`` as row ``positions[j]`` of every array."""
        for name, (fd, offset, row_bytes) in self.files.items():
            rows = np.ascontiguousarray(outputs[name], dtype=np.float32)
            for position, row in zip(positions, rows, strict=True):
                os.pwrite(fd, row.tobytes(), offset + position * row_bytes)

    def close(self) -> None:
        """Make the written rows durable and close the files."""
        for fd, _, _ in self.files.values():
            os.fsync(fd)
            os.close(fd)
        self.files.clear()


def finish(store: Path, partial: Partial, extractor: dict, keys: list,
           files: list[Path]) -> FeatureSet:
    """Write the kept rows as the final arrays, then the index, then drop ``partial/``.

    ``extractor`` is the extractor's spec (recorded in the index). Runs while the store has no
    ``index.json``, so an array of an earlier request that this one does not produce
    (``logits.npy``) is removed before the new index is written: an interruption never leaves
    an index beside arrays it does not describe.

    Raises
    ------
    Image2VecError
        No image could be read.
    """
    bad = {b["position"] for b in partial.bad}
    kept = np.array([i for i in range(len(files)) if i not in bad], dtype=np.intp)
    if kept.size == 0:
        raise Image2VecError(f"none of the {len(files)} images could be read "
                             f"(first: {partial.bad[0]['reason']})")
    outputs: dict[str, dict] = {}
    for name, array in partial.arrays.items():
        tmp = partial.folder / f"{name}.final.npy"
        out = _allocated(tmp, (kept.size, array.shape[1]), "w+")
        for start in range(0, kept.size, 4096):
            out[start:start + 4096] = array[kept[start:start + 4096]]
        out.flush()
        del out
        os.replace(tmp, store / f"{name}.npy")
        outputs[name] = {"file": f"{name}.npy", "shape": [int(kept.size), int(array.shape[1])],
                         "dtype": "float32"}
    index = {
        "format": STORE_FORMAT, "version": 1, "fingerprint": partial.fingerprint, **extractor,
        "outputs": outputs, "keys": [keys[i] for i in kept], "files": [str(files[i]) for i in kept],
        "skipped": [{k: b[k] for k in ("key", "file", "reason")}
                    for b in sorted(partial.bad, key=lambda b: b["position"])],
    }
    partial.arrays.clear()
    for name in OUTPUTS:
        if name not in outputs:
            (store / f"{name}.npy").unlink(missing_ok=True)
    write_json(store / "index.json", index)
    shutil.rmtree(partial.folder)
    return load_features(store)
