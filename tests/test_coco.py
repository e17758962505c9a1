"""COCO loading on the real coco-mini subset, splits, and each kind of bad annotation file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from image2vec.coco import load_coco, load_coco_split, random_split
from image2vec.errors import Image2VecError
from image2vec.io import atomic_write, read_json, resolve_under


@pytest.fixture(scope="module")
def raw(coco_mini):
    with open(coco_mini / "annotations" / "captions_train2017.json") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def data(coco_mini):
    return load_coco_split(coco_mini, "train2017")


def _write(tmp_path: Path, obj, name="captions.json") -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_images_paired_with_their_captions_and_files(data, raw, coco_mini):
    assert len(data) == 80
    assert np.all(np.diff(data.image_ids) > 0)
    expected = {}
    for ann in raw["annotations"]:
        expected.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    names = {im["id"]: im["file_name"] for im in raw["images"]}
    for image_id, path, caps in zip(data.image_ids, data.paths, data.captions, strict=True):
        assert sorted(caps) == sorted(expected[int(image_id)])
        assert path == (coco_mini / "train2017" / names[int(image_id)]).resolve()
        assert path.is_file()
    assert sum(len(c) for c in data.captions) == 400


def test_categories_from_instances_file(data, coco_mini):
    with open(coco_mini / "annotations" / "instances_train2017.json") as fh:
        inst = json.load(fh)
    assert len(data.category_names) == len(inst["categories"]) == 80
    per_image = {}
    for ann in inst["annotations"]:
        per_image.setdefault(ann["image_id"], set()).add(ann["category_id"])
    for image_id, cats in zip(data.image_ids, data.categories, strict=True):
        assert set(cats) == per_image.get(int(image_id), set())
    labels = data.category_matrix()
    assert labels.shape == (80, 80)
    assert labels.sum() == sum(len(c) for c in data.categories)
    horse = next(c for c, n in data.category_names.items() if n == "horse")
    column = sorted(data.category_names).index(horse)
    rows = labels[:, column].nonzero()[0]
    assert [int(data.image_ids[r]) for r in rows] == sorted(
        i for i, cats in per_image.items() if horse in cats)


def test_without_instances_file(coco_mini):
    d = load_coco(coco_mini / "annotations" / "captions_train2017.json", coco_mini / "train2017")
    assert d.categories is None
    with pytest.raises(Image2VecError, match="instances"):
        d.category_matrix()


def test_random_split_is_seeded_disjoint_and_complete(data):
    train, val = random_split(data, val_fraction=0.25, random_state=3)
    assert (len(train), len(val)) == (60, 20)
    assert set(train.image_ids).isdisjoint(val.image_ids)
    assert set(train.image_ids) | set(val.image_ids) == set(data.image_ids)
    again, _ = random_split(data, val_fraction=0.25, random_state=3)
    other, _ = random_split(data, val_fraction=0.25, random_state=4)
    np.testing.assert_array_equal(train.image_ids, again.image_ids)
    assert set(other.image_ids) != set(train.image_ids)
    n = data.positions(val.image_ids)[0]
    assert val.captions[0] == data.captions[n] and val.paths[0] == data.paths[n]
    with pytest.raises(Image2VecError, match="val_fraction"):
        random_split(data, val_fraction=1.0)


def test_positions_align_ids(data):
    ids = data.image_ids[[5, 2, 70]]
    np.testing.assert_array_equal(data.positions(ids), [5, 2, 70])
    with pytest.raises(Image2VecError, match="not in this data set"):
        data.positions([123456789])


def test_not_json_is_refused(tmp_path, coco_mini):
    path = _write(tmp_path, "{this is not json")
    with pytest.raises(Image2VecError, match="not valid JSON"):
        load_coco(path, coco_mini / "train2017")


@pytest.mark.parametrize("drop", ["images", "annotations"])
def test_missing_images_or_annotations_is_refused(tmp_path, raw, coco_mini, drop):
    path = _write(tmp_path, {k: v for k, v in raw.items() if k != drop})
    with pytest.raises(Image2VecError, match=f"lacks the list.*'{drop}'"):
        load_coco(path, coco_mini / "train2017")


def test_missing_annotation_file(tmp_path, coco_mini):
    with pytest.raises(Image2VecError, match="does not exist"):
        load_coco(tmp_path / "nope.json", coco_mini / "train2017")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../x.jpg", "",
                                  "a\x00b.jpg", 17])
def test_file_name_outside_image_folder_is_refused(tmp_path, raw, coco_mini, name):
    bad = json.loads(json.dumps(raw))
    bad["images"][0]["file_name"] = name
    with pytest.raises(Image2VecError, match="outside the image folder|absolute|empty|NUL"):
        load_coco(_write(tmp_path, bad), coco_mini / "train2017")


@pytest.mark.parametrize("caption", ["", "   ", None, 42, ["a", "dog"]])
def test_empty_or_non_string_caption_is_refused(tmp_path, raw, coco_mini, caption):
    bad = json.loads(json.dumps(raw))
    bad["annotations"][7]["caption"] = caption
    with pytest.raises(Image2VecError, match=f"annotation {bad['annotations'][7]['id']} "):
        load_coco(_write(tmp_path, bad), coco_mini / "train2017")


def test_images_without_captions_are_left_out(tmp_path, raw, coco_mini):
    keep = {im["id"] for im in raw["images"][:10]}
    part = dict(raw, annotations=[a for a in raw["annotations"] if a["image_id"] in keep])
    d = load_coco(_write(tmp_path, part), coco_mini / "train2017")
    assert set(d.image_ids) == keep


def test_resolve_under_accepts_nested_names_and_user_symlinks(tmp_path):
    (tmp_path / "images" / "a").mkdir(parents=True)
    root = tmp_path / "images"
    assert resolve_under(root, "a/./b.jpg") == root.resolve() / "a" / "b.jpg"
    assert resolve_under(root, "a/../c.jpg") == root.resolve() / "c.jpg"
    (tmp_path / "elsewhere.jpg").write_bytes(b"x")
    (root / "linked.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    assert resolve_under(root, "linked.jpg").read_bytes() == b"x"


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as fh:
            fh.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "is a folder, not a file"),
    (lambda p: p.write_bytes(b'{"caption": "caf\xe9"}'), "is not UTF-8 text"),
    (lambda p: p.write_text("{this is not json"), "is not valid JSON"),
])
def test_read_json_errors_name_the_file(tmp_path, make, message):
    path = tmp_path / "ann.json"
    make(path)
    with pytest.raises(Image2VecError, match=f"^annotation file {path} {message}"):
        read_json(path, "annotation file")


def test_read_json_unreadable_path_and_missing_ok(tmp_path):
    (tmp_path / "file").write_text("{}")
    with pytest.raises(Image2VecError, match=r"^cannot read index .*file/x\.json: Not a directory"):
        read_json(tmp_path / "file" / "x.json", "index")
    assert read_json(tmp_path / "nope.json", missing_ok=True) is None
    assert read_json(tmp_path / "file") == {}


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_bytes(b"\xff\xfe{}"), "is not UTF-8"),
])
def test_annotation_file_folder_or_not_utf8(tmp_path, coco_mini, make, message):
    path = tmp_path / "captions.json"
    make(path)
    with pytest.raises(Image2VecError, match=message):
        load_coco(path, coco_mini / "train2017")
