"""MS-COCO captions (and object categories) loaded with pycocotools, and train/val splits.

A :class:`CocoCaptions` holds, for N images, their ids, their files, their captions and, when an
``instances_*.json`` file is given, their object categories (the labels of the CVS baselines).
Targets X (N x V) are built from the captions by :mod:`image2vec.vocabulary`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pycocotools.coco import COCO

from image2vec.errors import Image2VecError
from image2vec.io import read_json, resolve_under

__all__ = ["CocoCaptions", "load_coco", "load_coco_split", "random_split"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoCaptions:
    """Images with their captions and (optionally) object categories.

    Attributes
    ----------
    image_ids : ndarray of shape (N,)
        Image ids, in the order of every other attribute (row n of F and X): int64 when they
        are all integers (as in COCO), else an object array of the integers and strings that
        other tools write.
    paths : list of Path, length N
        Image files, each inside the image folder.
    captions : list of list of str, length N
        The captions of each image (COCO has about 5 per image), never empty.
    categories : list of tuple of int, length N, or None
        Sorted COCO category ids present in each image (from the instances file), or None when
        no instances file was loaded.
    category_names : dict of int to str
        Category id -> name (empty without an instances file).
    """

    image_ids: np.ndarray
    paths: list[Path]
    captions: list[list[str]]
    categories: list[tuple[int, ...]] | None = None
    category_names: dict[int, str] | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, indices: Sequence[int] | np.ndarray) -> CocoCaptions:
        """The images at positions ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.intp).reshape(-1)
        return CocoCaptions(
            image_ids=self.image_ids[idx],
            paths=[self.paths[i] for i in idx],
            captions=[self.captions[i] for i in idx],
            categories=None if self.categories is None else [self.categories[i] for i in idx],
            category_names=self.category_names,
        )

    def positions(self, image_ids: Sequence | np.ndarray) -> np.ndarray:
        """Positions of ``image_ids`` in this data set (e.g. to align with a feature store).

        Raises
        ------
        Image2VecError
            If an id is not in this data set.
        """
        where = {i: n for n, i in enumerate(self.image_ids.tolist())}
        wanted = [i.item() if isinstance(i, np.generic) else i for i in image_ids]
        missing = [i for i in wanted if i not in where]
        if missing:
            raise Image2VecError(f"{len(missing)} image id(s) not in this data set, "
                                 f"e.g. {missing[:3]}")
        return np.array([where[i] for i in wanted], dtype=np.intp)

    def category_matrix(self) -> sp.csr_matrix:
        """Binary labels L (N x C), L[n, c] = 1 when category ``category_ids[c]`` is in image n.

        Columns follow the sorted category ids of ``category_names``.
        """
        if self.categories is None:
            raise Image2VecError("no categories: load the data with an instances_*.json file")
        column = {c: j for j, c in enumerate(sorted(self.category_names))}
        rows = np.repeat(np.arange(len(self)), [len(c) for c in self.categories])
        cols = np.array([column[c] for cats in self.categories for c in cats], dtype=np.intp)
        return sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)),
                             shape=(len(self), len(column)))


def _read_annotations(path: str | os.PathLike, required: Sequence[str]) -> dict:
    """Parse a COCO annotation file and check its ``required`` top-level lists and image ids.

    Image ids must be integers or strings (both occur in files written by other tools) and
    distinct: pycocotools would otherwise silently pair one image's annotations with another's
    file.
    """
    data = read_json(path, "annotation file")
    if not isinstance(data, dict):
        raise Image2VecError(f"annotation file {path} is not a COCO file: "
                             "its top level is not a JSON object")
    missing = [key for key in required if not isinstance(data.get(key), list)]
    if missing:
        raise Image2VecError(f"annotation file {path} is not a COCO file: it lacks the "
                             f"list(s) {', '.join(repr(k) for k in missing)}")
    seen = set()
    for image in data["images"]:
        image_id = image.get("id") if isinstance(image, dict) else None
        if not _is_id(image_id):
            raise Image2VecError(f"annotation file {path}: image {str(image)[:80]} has no integer "
                                 "or string id")
        if image_id in seen:
            raise Image2VecError(f"annotation file {path}: image id {image_id!r} is listed twice; "
                                 "each image needs its own id")
        seen.add(image_id)
    return data


def _is_id(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _id_order(image_id: int | str) -> tuple[bool, int | str]:
    """Sort key of mixed ids: integers by value, then strings."""
    return isinstance(image_id, str), image_id


def _index(dataset: dict) -> COCO:
    """A pycocotools index over an already parsed annotation dict (its prints silenced)."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco.createIndex()
        except (KeyError, TypeError) as exc:
            raise Image2VecError(f"malformed COCO annotations: entry without {exc}") from None
    return coco


def load_coco(
    captions_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    instances_file: str | os.PathLike | None = None,
) -> CocoCaptions:
    """Load COCO captions, pairing each image with its captions and its file.

    Parameters
    ----------
    captions_file : path-like
        A ``captions_*.json`` file (official COCO format: ``images`` and ``annotations``).
    image_dir : path-like
        The folder holding the images' ``file_name`` entries.
    instances_file : path-like, optional
        An ``instances_*.json`` file: adds the object categories of each image.

    Returns
    -------
    CocoCaptions
        Images sorted by id; images without any caption are left out (and logged).

    Raises
    ------
    Image2VecError
        If a file is not JSON or not COCO, a ``file_name`` leaves ``image_dir`` (``../``,
        absolute path), or a caption is empty or not a string.
    """
    coco = _index(_read_annotations(captions_file, ("images", "annotations")))
    image_ids, paths, captions = [], [], []
    for image_id in sorted(coco.imgs, key=_id_order):
        anns = coco.imgToAnns.get(image_id, [])
        texts = []
        for ann in anns:
            text = ann.get("caption")
            if not isinstance(text, str) or not text.strip():
                raise Image2VecError(
                    f"{captions_file}: annotation {ann.get('id')} of image {image_id} has an "
                    f"empty or non-string caption {text!r}")
            texts.append(text.strip())
        if not texts:
            continue
        image_ids.append(image_id)
        paths.append(resolve_under(image_dir, coco.imgs[image_id].get("file_name")))
        captions.append(texts)
    if len(image_ids) < len(coco.imgs):
        logger.info("%d of %d images have no caption and are left out",
                    len(coco.imgs) - len(image_ids), len(coco.imgs))
    if not image_ids:
        raise Image2VecError(f"{captions_file}: no image has a caption")
    categories = names = None
    if instances_file is not None:
        names, categories = _categories(instances_file, image_ids)
    ids = np.asarray(image_ids, dtype=np.int64 if all(isinstance(i, int) for i in image_ids) else object)
    return CocoCaptions(ids, paths, captions, categories, names)


def _categories(path: str | os.PathLike, image_ids: list) -> tuple[dict[int, str], list[tuple[int, ...]]]:
    """Category id -> name, and the sorted category ids of each image, from an instances file.

    Raises
    ------
    Image2VecError
        A category without an integer id and a string name, or an annotation whose
        ``category_id`` is not one of the categories.
    """
    inst = _index(_read_annotations(path, ("images", "annotations", "categories")))
    names = {}
    for category in inst.dataset["categories"]:
        if not (isinstance(category, dict) and type(category.get("id")) is int
                and isinstance(category.get("name"), str)):
            raise Image2VecError(f"instances file {path}: category {str(category)[:80]} needs an "
                                 "integer id and a string name")
        names[category["id"]] = category["name"]
    categories = []
    for image_id in image_ids:
        anns = inst.imgToAnns.get(image_id, [])
        unknown = next((a for a in anns if type(a.get("category_id")) is not int
                        or a["category_id"] not in names), None)
        if unknown is not None:
            raise Image2VecError(f"instances file {path}: annotation {unknown.get('id')} of image "
                                 f"{image_id!r} has category_id {unknown.get('category_id')!r}, "
                                 "which is not one of its categories")
        categories.append(tuple(sorted({a["category_id"] for a in anns})))
    return names, categories


def load_coco_split(root: str | os.PathLike, split: str = "train2017",
                    instances: bool = True) -> CocoCaptions:
    """Load one split of the official COCO layout.

    Reads ``root/annotations/captions_{split}.json`` with images in ``root/{split}/`` and, when
    ``instances`` and the file exists, ``root/annotations/instances_{split}.json``. Train/val by
    COCO file is ``load_coco_split(root, "train2017")`` and ``load_coco_split(root, "val2017")``.
    """
    root = Path(root)
    inst = root / "annotations" / f"instances_{split}.json"
    return load_coco(root / "annotations" / f"captions_{split}.json", root / split,
                     inst if instances and inst.exists() else None)


def random_split(data: CocoCaptions, val_fraction: float = 0.2,
                 random_state: int = 0) -> tuple[CocoCaptions, CocoCaptions]:
    """Seeded random train/val split of one data set, by image.

    Parameters
    ----------
    data : CocoCaptions
    val_fraction : float in (0, 1)
        Fraction of images in the validation part (rounded, at least one in each part).
    random_state : int
        Seed of the permutation; the same seed gives the same split.

    Returns
    -------
    train, val : CocoCaptions
        Disjoint, each in increasing image-id order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise Image2VecError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(data)
    if n < 2:
        raise Image2VecError(f"cannot split {n} image(s) into train and val")
    n_val = min(max(int(round(val_fraction * n)), 1), n - 1)
    perm = np.random.default_rng(random_state).permutation(n)
    return data.subset(np.sort(perm[n_val:])), data.subset(np.sort(perm[:n_val]))
