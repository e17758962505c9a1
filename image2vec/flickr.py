"""Flickr images with weak user tags: a simple TSV or the YFCC100M metadata layout.

Tags are normalised (URL-decoded, lower-cased, stripped, deduplicated) and each image's tag list
is one "document" for :func:`image2vec.vocabulary.build_vocabulary` and
:func:`image2vec.vocabulary.targets` with ``binary=True`` (x_nv = 1 for each of the image's tags
in the vocabulary). Tags are noisy on purpose: many are not visual (camera models, places).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import unquote_plus

from image2vec.errors import Image2VecError
from image2vec.io import open_regular, resolve_under, resource_path

__all__ = ["TaggedImages", "normalize_tags", "load_tag_tsv", "load_yfcc100m", "load_sample",
           "SAMPLE_TSV"]

#: The hand-tagged sample shipped with the project (images from scikit-image's data folder).
SAMPLE_TSV = resource_path("sample", "tags.tsv")

# YFCC100M metadata: 23 columns in the original release, 25 (line number, id, hash, ...) in the
# later one. Columns (0-based) of the photo id, the user tags and the photo/video marker.
_YFCC_COLUMNS = {23: (0, 8, 22), 25: (1, 10, 24)}


@dataclass(frozen=True)
class TaggedImages:
    """Images with their normalised tags.

    Attributes
    ----------
    keys : list of str
        Image keys (the TSV's file name, or the YFCC100M photo id).
    paths : list of Path
        Image files.
    tags : list of list of str
        Normalised tags of each image (possibly empty), in first-seen order.
    """

    keys: list[str]
    paths: list[Path]
    tags: list[list[str]]

    def __len__(self) -> int:
        return len(self.keys)

    def documents(self) -> list[list[list[str]]]:
        """Each image's tags as its only word list, the input of the vocabulary functions."""
        return [[t] for t in self.tags]


def normalize_tags(tags: str | Iterable[str]) -> list[str]:
    """URL-decode, lower-case, strip and deduplicate tags, keeping first-seen order.

    Control and format characters (``%00``, terminal escapes, bidi overrides) are dropped: a
    tag is printable text.

    Parameters
    ----------
    tags : str or iterable of str
        Comma-separated tags (``"New+York,nyc,%2Bsky"``) or already split tags.

    Examples
    --------
    >>> normalize_tags("New+York, NYC,new%20york,,Sky ")
    ['new york', 'nyc', 'sky']
    """
    if isinstance(tags, str):
        tags = tags.split(",")
    out: dict[str, None] = {}
    for tag in tags:
        tag = re.sub(r"\s+", " ", unquote_plus(tag).lower())
        tag = "".join(c for c in tag if not unicodedata.category(c).startswith("C")).strip()
        if tag:
            out.setdefault(tag)
    return list(out)


@contextlib.contextmanager
def _open_table(path: str | os.PathLike) -> Iterator[TextIO]:
    """A tag file as UTF-8 text, read as it streams; a file that is not UTF-8 is a clear error."""
    with io.TextIOWrapper(open_regular(path, "tag file"), encoding="utf-8", newline="") as fh:
        try:
            yield fh
        except UnicodeDecodeError as exc:
            raise Image2VecError(f"tag file {path} is not UTF-8 text ({exc.reason})") from None


def load_tag_tsv(path: str | os.PathLike,
                 image_dir: str | os.PathLike | None = None) -> TaggedImages:
    """Load a TSV of ``image file <TAB> comma-separated tags`` lines.

    Blank lines and lines starting with ``#`` are ignored. File names are relative to
    ``image_dir`` (default: the TSV's folder) and may not leave it.

    Raises
    ------
    Image2VecError
        Missing file, a line without exactly two columns, a file named twice, a file name
        outside ``image_dir``, or no image at all.
    """
    root = Path(image_dir) if image_dir is not None else Path(path).parent
    keys, paths, tags = [], [], []
    seen: set[str] = set()
    with _open_table(path) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise Image2VecError(f"{path}:{lineno}: expected 2 tab-separated columns "
                                     f"(image file, tags), found {len(fields)}")
            name = fields[0].strip()
            if name in seen:
                raise Image2VecError(f"{path}:{lineno}: image {name!r} is listed twice")
            seen.add(name)
            keys.append(name)
            paths.append(resolve_under(root, name))
            tags.append(normalize_tags(fields[1]))
    if not keys:
        raise Image2VecError(f"{path}: no image listed")
    return TaggedImages(keys, paths, tags)


def load_yfcc100m(path: str | os.PathLike, image_dir: str | os.PathLike,
                  file_pattern: str = "{id}.jpg", limit: int | None = None) -> TaggedImages:
    """Load photos and user tags from YFCC100M metadata (``yfcc100m_dataset`` lines).

    Both layouts are read: the original 23 columns (photo id first, user tags 9th) and the
    25-column one (line number, photo id, hash, ...; user tags 11th). User tags are URL-encoded
    and comma-separated. Videos (marker 1) are left out.

    Parameters
    ----------
    path : path-like
        Tab-separated metadata file.
    image_dir : path-like
        Folder of the downloaded photos.
    file_pattern : str
        File name of a photo in ``image_dir``, formatted with ``id`` (e.g. ``"{id}.jpg"``).
    limit : int, optional
        Read at most this many photos.
    """
    keys, paths, tags = [], [], []
    with _open_table(path) as fh:
        for lineno, fields in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if limit is not None and len(keys) >= limit:
                break
            if not fields:
                continue
            if len(fields) not in _YFCC_COLUMNS:
                raise Image2VecError(f"{path}:{lineno}: {len(fields)} columns; a YFCC100M "
                                     "metadata line has 23 or 25")
            id_col, tag_col, marker_col = _YFCC_COLUMNS[len(fields)]
            if fields[marker_col].strip() == "1":
                continue
            photo_id = fields[id_col].strip()
            keys.append(photo_id)
            paths.append(resolve_under(image_dir, file_pattern.format(id=photo_id)))
            tags.append(normalize_tags(fields[tag_col]))
    if not keys:
        raise Image2VecError(f"{path}: no photo listed")
    return TaggedImages(keys, paths, tags)


def load_sample() -> TaggedImages:
    """The project's hand-tagged sample: 16 images of scikit-image's data folder, noisy tags."""
    import skimage.data

    return load_tag_tsv(SAMPLE_TSV, image_dir=skimage.data.data_dir)
