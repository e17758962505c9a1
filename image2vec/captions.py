"""Captioned-image datasets in the standard formats, recognised from the content of the file.

Three formats are read (whatever the file is called):

- **Flickr token files** of Flickr8k and Flickr30k (``Flickr8k.token.txt``,
  ``results_20130124.token``): one caption per line, ``<file>#<i><TAB><caption>``.
  Keys are the file names; images in the order of their first line, captions by number ``i``.
- **Karpathy split files** (``dataset_flickr8k.json``, ``dataset_flickr30k.json``,
  ``dataset_coco.json``): ``{"images": [{"filename", "filepath" (optional), "split",
  "sentences": [{"raw", ...}]}, ...]}``. Keys are the ``filename`` values, the image file is
  ``filepath/filename`` under the image folder; images in the order of the file.
- **COCO captions** files (``images`` and ``annotations``), read by
  :func:`image2vec.coco.load_coco`: keys are the image ids, images sorted by id.

A split selects images, either by name or by a split list file (one image file name per line,
as the captions file names it: the token file's name, Karpathy's ``filename``, COCO's
``file_name``); the result is in the list's order. Split names: for a Karpathy file the values of
its ``split`` field (``train``, ``val``, ``test``, ``restval``), matched exactly; for a Flickr
token file ``train``, ``dev`` and ``test``, the official lists ``*.<name>Images.txt``
(``Flickr_8k.trainImages.txt``, ...) in the token file's folder. Several names joined by ``+``
(``train+restval``) give the images of each in turn. A value that is not a split name of the file
must be a split list file.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from image2vec.coco import CocoCaptions, load_coco
from image2vec.errors import Image2VecError
from image2vec.io import open_regular, read_json, resolve_under

__all__ = ["CaptionedImages", "FORMATS", "detect_format", "load_captions"]

logger = logging.getLogger(__name__)

#: The formats :func:`detect_format` recognises.
FORMATS = ("coco", "flickr", "karpathy")

#: The split names of a Flickr token file, each read from the list ``*.<name>Images.txt``.
FLICKR_SPLITS = ("train", "dev", "test")

_TOKEN_LINE = "'<file>#<n><TAB><caption>'"


@dataclass(frozen=True, eq=False)
class CaptionedImages:
    """N images with their captions (and, from COCO, object categories); row n is image n.

    Attributes
    ----------
    keys : list of str or int, length N
        Image keys, all distinct: file names (Flickr, Karpathy) or image ids (COCO).
    paths : list of Path, length N
        Image files, each inside the image folder.
    captions : list of list of str, length N
        The captions of each image, never empty.
    categories : csr_matrix of shape (N, C) or None
        Binary COCO category labels (from an instances file), else None.
    category_names : list of str or None
        The names of the C category columns.
    """

    keys: list
    paths: list[Path]
    captions: list[list[str]]
    categories: sp.csr_matrix | None = None
    category_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_coco(cls, coco: CocoCaptions) -> CaptionedImages:
        """The same images as a :class:`image2vec.coco.CocoCaptions` (keys: the image ids)."""
        if coco.categories is None:
            return cls(coco.image_ids.tolist(), list(coco.paths), list(coco.captions))
        return cls(coco.image_ids.tolist(), list(coco.paths), list(coco.captions),
                   coco.category_matrix(),
                   [coco.category_names[c] for c in sorted(coco.category_names)])

    def subset(self, indices: Sequence[int] | np.ndarray) -> CaptionedImages:
        """The images at positions ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.intp).reshape(-1)
        return CaptionedImages(
            keys=[self.keys[i] for i in idx],
            paths=[self.paths[i] for i in idx],
            captions=[self.captions[i] for i in idx],
            categories=None if self.categories is None else self.categories[idx],
            category_names=self.category_names,
        )

    def positions(self, keys: Sequence) -> np.ndarray:
        """Positions of ``keys`` in this data set (e.g. to align with a feature store).

        Raises
        ------
        Image2VecError
            If a key is not in this data set.
        """
        where = {key: n for n, key in enumerate(self.keys)}
        missing = [key for key in keys if key not in where]
        if missing:
            raise Image2VecError(f"{len(missing)} image key(s) not in this data set, "
                                 f"e.g. {missing[:3]}")
        return np.array([where[key] for key in keys], dtype=np.intp)


def detect_format(path: str | os.PathLike) -> str:
    """The format of a captions file, from its content: one of :data:`FORMATS`.

    Raises
    ------
    Image2VecError
        If the file is missing, unreadable, or in none of the formats.
    """
    return _identify(path)[0]


def load_captions(
    captions: str | os.PathLike,
    images: str | os.PathLike,
    *,
    split: str | os.PathLike | None = None,
    instances: str | os.PathLike | None = None,
) -> CaptionedImages:
    """Read a captioned-image dataset in any of the :data:`FORMATS`, optionally one split of it.

    Parameters
    ----------
    captions : path-like
        A COCO captions JSON, a Flickr token file or a Karpathy split JSON (see the module
        docstring); the format is recognised from the content.
    images : path-like
        The image folder the captions file's names are relative to.
    split : str or path-like, optional
        A split name of the file (several joined by ``+``), or a split list file: one image
        file name per line. A string that is a split name of the file is taken as one, even
        where a file of that name exists. None: every image of the file.
    instances : path-like, optional
        A COCO ``instances_*.json`` file (COCO captions only): adds the category labels.

    Returns
    -------
    CaptionedImages
        In the split list's order (named splits: each in its own order, in turn), else in the
        order of the file (COCO: sorted ids). Image files are not opened here: a missing or
        broken one is reported by the feature extraction.

    Raises
    ------
    Image2VecError
        A missing image folder; an unrecognised format; a malformed line (with its number); a
        caption number given twice for one image; an image listed twice; an unknown split name
        (the message lists the file's); a split list naming an image without captions; no
        image; ``instances`` with a file that is not COCO.
    """
    if not Path(images).is_dir():
        raise Image2VecError(f"image folder {images} does not exist or is not a folder")
    images = Path(images).resolve()  # as the image paths are: their names relative to it
    fmt, parsed = _identify(captions)
    if instances is not None and fmt != "coco":
        raise Image2VecError(f"an instances file (COCO categories) needs COCO captions; "
                             f"{captions} is a {fmt} file")
    if fmt == "coco":
        del parsed  # load_coco parses the file itself
        data = CaptionedImages.from_coco(load_coco(captions, images, instances))
        names = [p.relative_to(images).as_posix() for p in data.paths]
        named: dict[str, list[int] | Path] = {}
    elif fmt == "karpathy":
        data, named = _karpathy(parsed, captions, images)
        names = data.keys
    else:
        data = _flickr(captions, images)
        names = data.keys
        named = _flickr_split_lists(Path(captions).parent)
    if split is None:
        logger.info("%s: %s format, %d images", captions, fmt, len(data))
        return data
    chosen = data.subset(_select(split, named, names, captions))
    logger.info("%s: %s format, %d images, %d in split %s", captions, fmt, len(data), len(chosen),
                split)
    return chosen


def _identify(path: str | os.PathLike) -> tuple[str, dict | None]:
    """The format of ``path`` and, for a JSON format, the parsed file."""
    path = Path(path)
    try:
        with open_regular(path, "captions file") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise Image2VecError(f"cannot read captions file {path}: {exc.strerror or exc}") from None
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        data = read_json(path, "captions file")
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            if isinstance(data.get("annotations"), list):
                return "coco", data
            first = data["images"][0] if data["images"] else {}
            if "dataset" in data or (isinstance(first, dict) and "sentences" in first):
                return "karpathy", data
        raise Image2VecError(f"captions file {path} is JSON but neither COCO captions ('images' "
                             "and 'annotations') nor a Karpathy split file ('images' with "
                             "'sentences')")
    first = next((line for line in _lines(path) if line[1].strip()), None)
    if first is None:
        raise Image2VecError(f"captions file {path} is empty")
    if _token(first[1]) is None:
        raise Image2VecError(f"captions file {path} is in no known format: not COCO or Karpathy "
                             f"JSON, and line {first[0]} is not a Flickr token line {_TOKEN_LINE}")
    return "flickr", None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its end) of a UTF-8 text file, with one-line errors."""
    try:
        with io.TextIOWrapper(open_regular(path, "file"), encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, 1):
                yield lineno, line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise Image2VecError(f"{path} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise Image2VecError(f"cannot read {path}: {exc.strerror or exc}") from None


def _token(line: str) -> tuple[str, int, str] | None:
    """(file, caption number, caption) of a token line, or None if it is not one."""
    head, tab, text = line.partition("\t")
    name, hash_, number = head.rpartition("#")
    name, text = name.strip(), text.strip()
    if not (tab and hash_ and name and text and number.isascii() and number.isdigit()):
        return None
    return name, int(number), text


def _flickr(path: str | os.PathLike, images: Path) -> CaptionedImages:
    """All images of a Flickr token file, in the order of their first line."""
    found: dict[str, dict[int, tuple[int, str]]] = {}  # file -> number -> (line, caption)
    for lineno, line in _lines(Path(path)):
        if not line.strip():
            continue
        token = _token(line)
        if token is None:
            raise Image2VecError(f"{path}:{lineno}: malformed line {line[:80]!r}, expected "
                                 f"{_TOKEN_LINE}")
        name, number, text = token
        numbered = found.setdefault(name, {})
        if number in numbered:
            raise Image2VecError(f"{path}:{lineno}: caption {name}#{number} is given twice "
                                 f"(first on line {numbered[number][0]})")
        numbered[number] = (lineno, text)
    return CaptionedImages(
        keys=list(found), paths=[resolve_under(images, name) for name in found],
        captions=[[numbered[i][1] for i in sorted(numbered)] for numbered in found.values()])


def _flickr_split_lists(folder: Path) -> dict[str, list[int] | Path]:
    """The official split lists ``*.<name>Images.txt`` in ``folder``, by split name."""
    named: dict[str, list[int] | Path] = {}
    for name in FLICKR_SPLITS:
        matches = sorted(folder.glob(f"*.{name}Images.txt"))
        if len(matches) == 1:
            named[name] = matches[0]
    return named


def _karpathy(data: dict, path: str | os.PathLike,
              images: Path) -> tuple[CaptionedImages, dict[str, list[int] | Path]]:
    """The images of a Karpathy split file with captions, and the positions of each split."""
    keys, paths, captions = [], [], []
    named: dict[str, list[int] | Path] = {}
    seen: dict[str, int] = {}
    for n, entry in enumerate(data["images"]):
        where = f"{path}: images[{n}]"
        if not (isinstance(entry, dict) and isinstance(entry.get("filename"), str)
                and isinstance(entry.get("split"), str)
                and isinstance(entry.get("sentences"), list)):
            raise Image2VecError(f"{where} is not a Karpathy image entry (it needs a string "
                                 "'filename', a string 'split' and a list 'sentences')")
        name = entry["filename"]
        if name in seen:
            raise Image2VecError(f"{where}: image {name!r} is listed twice (also images"
                                 f"[{seen[name]}])")
        seen[name] = n
        texts = []
        for m, sentence in enumerate(entry["sentences"]):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                raise Image2VecError(f"{where}.sentences[{m}] has an empty or non-string 'raw' "
                                     f"caption {raw!r}")
            texts.append(raw.strip())
        if not texts:
            continue
        folder = entry.get("filepath")
        named.setdefault(entry["split"], []).append(len(keys))
        keys.append(name)
        paths.append(resolve_under(images, f"{folder}/{name}" if isinstance(folder, str)
                                   and folder else name))
        captions.append(texts)
    if len(keys) < len(data["images"]):
        logger.info("%d of %d images have no caption and are left out",
                    len(data["images"]) - len(keys), len(data["images"]))
    if not keys:
        raise Image2VecError(f"{path}: no image has a caption")
    return CaptionedImages(keys, paths, captions), named


def _select(split: str | os.PathLike, named: dict[str, list[int] | Path], names: list[str],
            captions: str | os.PathLike) -> list[int]:
    """Positions of the images of ``split``: split names joined by ``+``, or a list file."""
    parts = split.split("+") if isinstance(split, str) else []
    if parts and all(part in named for part in parts):
        chosen = [named[part] for part in parts]
    elif Path(split).is_file():
        chosen = [Path(split)]
    elif not isinstance(split, str):
        raise Image2VecError(f"split list {split} does not exist or is not a file")
    elif named:
        raise Image2VecError(f"unknown split {split!r}: {captions} has the splits "
                             f"{', '.join(sorted(named))} (join several with '+'), or give a "
                             "split list file")
    else:
        raise Image2VecError(f"unknown split {split!r}: {captions} has no named splits (a Flickr "
                             f"token file's are {', '.join(FLICKR_SPLITS)}, from the lists "
                             "*.<name>Images.txt beside it); give a split list file")
    position = {name: n for n, name in enumerate(names)}
    selected: list[int] = []
    for part in chosen:
        selected += part if isinstance(part, list) else _read_split_list(part, position, captions)
    if len(set(selected)) < len(selected):
        raise Image2VecError(f"split {split!r} names some images more than once")
    return selected


def _read_split_list(path: Path, position: dict[str, int],
                     captions: str | os.PathLike) -> list[int]:
    """Positions of the images a split list names, in its order."""
    selected: list[int] = []
    seen: dict[str, int] = {}
    for lineno, line in _lines(path):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise Image2VecError(f"{path}:{lineno}: image {name!r} is listed twice (first on "
                                 f"line {seen[name]})")
        if name not in position:
            raise Image2VecError(f"{path}:{lineno}: image {name!r} has no captions in "
                                 f"{captions}")
        seen[name] = lineno
        selected.append(position[name])
    if not selected:
        raise Image2VecError(f"split list {path} names no image")
    return selected
