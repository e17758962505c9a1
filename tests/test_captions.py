"""The caption readers: Flickr token files, Karpathy split files, COCO; splits; every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from image2vec.captions import CaptionedImages, detect_format, load_captions
from image2vec.coco import load_coco
from image2vec.errors import Image2VecError

TOKENS = ("b.jpg#1\tA dog runs .\n"
          "b.jpg#0\tA brown dog .\n"
          "a.jpg#0\tA red car .\n"
          "\n"
          "c.jpg#0\tSnow on a hill .\n"
          "a.jpg#1\tA car parked .\n")


def _karpathy(images: list[tuple[str, str, list[str]]], filepath: str | None = None) -> dict:
    entries = []
    for name, split, raws in images:
        entry = {"filename": name, "split": split, "imgid": len(entries),
                 "sentences": [{"raw": r, "tokens": r.lower().split()} for r in raws]}
        if filepath is not None:
            entry["filepath"] = filepath
        entries.append(entry)
    return {"images": entries, "dataset": "flickr8k"}


KARPATHY = _karpathy([("k1.jpg", "train", ["One .", "Uno ."]), ("k2.jpg", "val", ["Two ."]),
                      ("k3.jpg", "restval", ["Three ."]), ("k4.jpg", "train", ["Four ."]),
                      ("k5.jpg", "test", ["Five ."])])


def _write(folder: Path, name: str, content) -> Path:
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content),
                    encoding="utf-8")
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    return folder


@pytest.fixture
def tokens(tmp_path) -> Path:
    """A Flickr8k-style text folder: token file and the three official split lists."""
    text = tmp_path / "text"
    text.mkdir()
    _write(text, "Flickr_8k.trainImages.txt", "c.jpg\nb.jpg\n")
    _write(text, "Flickr_8k.devImages.txt", "a.jpg\n")
    _write(text, "Flickr_8k.testImages.txt", "\n")
    return _write(text, "Flickr8k.token.txt", TOKENS)


# --- the formats ---------------------------------------------------------------------------


def test_flickr_token_file(tokens, images):
    data = load_captions(tokens, images)
    assert data.keys == ["b.jpg", "a.jpg", "c.jpg"]  # order of first appearance
    assert data.captions == [["A brown dog .", "A dog runs ."],  # by caption number
                             ["A red car .", "A car parked ."], ["Snow on a hill ."]]
    assert data.paths == [images.resolve() / k for k in data.keys]
    assert data.categories is None and detect_format(tokens) == "flickr"


def test_karpathy_file_with_filepath(tmp_path, images):
    path = _write(tmp_path, "dataset_coco.json",
                  _karpathy([("x.jpg", "val", [" A cat . "]), ("y.jpg", "train", ["A mat ."])],
                            filepath="val2014"))
    data = load_captions(path, images)
    assert detect_format(path) == "karpathy"
    assert data.keys == ["x.jpg", "y.jpg"]
    assert data.captions == [["A cat ."], ["A mat ."]]
    assert data.paths == [images.resolve() / "val2014" / k for k in data.keys]


def test_coco_delegates_to_load_coco(coco_mini):
    captions = coco_mini / "annotations" / "captions_train2017.json"
    instances = coco_mini / "annotations" / "instances_train2017.json"
    coco = load_coco(captions, coco_mini / "train2017", instances)
    data = load_captions(captions, coco_mini / "train2017", instances=instances)
    assert detect_format(captions) == "coco"
    assert data.keys == coco.image_ids.tolist() and data.paths == coco.paths
    assert data.captions == coco.captions
    assert (data.categories != coco.category_matrix()).nnz == 0
    assert data.category_names == [coco.category_names[c] for c in sorted(coco.category_names)]


def test_format_comes_from_the_content_not_the_name(tmp_path, images):
    token_as_json = _write(tmp_path, "captions.json", TOKENS)
    karpathy_as_txt = _write(tmp_path, "captions.txt", KARPATHY)
    assert detect_format(token_as_json) == "flickr"
    assert detect_format(karpathy_as_txt) == "karpathy"
    assert len(load_captions(token_as_json, images)) == 3
    assert len(load_captions(karpathy_as_txt, images)) == 5


def test_subset_and_positions(tokens, images):
    data = load_captions(tokens, images)
    part = data.subset([2, 0])
    assert part.keys == ["c.jpg", "b.jpg"] and part.captions[1] == data.captions[0]
    assert part.paths == [data.paths[2], data.paths[0]]
    np.testing.assert_array_equal(data.positions(["c.jpg", "a.jpg"]), [2, 1])
    with pytest.raises(Image2VecError, match="1 image key.*not in this data set"):
        data.positions(["z.jpg"])


def test_subset_keeps_coco_categories():
    data = CaptionedImages([7, 8, 9], [Path("7"), Path("8"), Path("9")], [["a"], ["b"], ["c"]],
                           sp.csr_matrix(np.eye(3)), ["x", "y", "z"])
    part = data.subset([2, 0])
    np.testing.assert_array_equal(part.categories.toarray(), [[0, 0, 1], [1, 0, 0]])
    assert part.category_names == ["x", "y", "z"] and part.keys == [9, 7]


# --- splits ----------------------------------------------------------------------------------


def test_flickr_split_names_read_the_official_lists(tokens, images):
    train = load_captions(tokens, images, split="train")
    assert train.keys == ["c.jpg", "b.jpg"]  # the list's order
    assert train.captions[1] == ["A brown dog .", "A dog runs ."]
    assert load_captions(tokens, images, split="dev").keys == ["a.jpg"]
    assert load_captions(tokens, images, split="dev+train").keys == ["a.jpg", "c.jpg", "b.jpg"]


def test_split_list_file(tokens, images, tmp_path):
    listed = _write(tmp_path, "mine.txt", "a.jpg\n\n c.jpg \n")
    assert load_captions(tokens, images, split=listed).keys == ["a.jpg", "c.jpg"]
    assert load_captions(tokens, images, split=str(listed)).keys == ["a.jpg", "c.jpg"]


def test_karpathy_split_names(tmp_path, images):
    path = _write(tmp_path, "dataset_flickr8k.json", KARPATHY)
    assert load_captions(path, images, split="train").keys == ["k1.jpg", "k4.jpg"]
    assert load_captions(path, images, split="restval+train").keys == ["k3.jpg", "k1.jpg",
                                                                       "k4.jpg"]
    assert load_captions(path, images, split="test").captions == [["Five ."]]


def test_a_split_name_wins_over_a_file_of_that_name(tmp_path, images, monkeypatch):
    path = _write(tmp_path, "dataset_flickr8k.json", KARPATHY)
    _write(tmp_path, "val", "k1.jpg\n")
    monkeypatch.chdir(tmp_path)
    assert load_captions(path, images, split="val").keys == ["k2.jpg"]


def test_coco_split_list_by_file_name(coco_mini, tmp_path):
    captions = coco_mini / "annotations" / "captions_train2017.json"
    all_images = load_captions(captions, coco_mini / "train2017")
    names = [all_images.paths[i].name for i in (5, 1)]
    listed = _write(tmp_path, "list.txt", "\n".join(names))
    part = load_captions(captions, coco_mini / "train2017", split=listed)
    assert part.keys == [all_images.keys[5], all_images.keys[1]]


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    ("no tab or hash here\n", "no known format.*line 1 is not a Flickr token line"),
    ("a.jpg\tcaption without number\n", "no known format"),
    ("\n\n  \n", "is empty"),
    ('{"info": {}, "images": [{"id": 1}]}', "JSON but neither COCO.*nor a Karpathy"),
    ("[1, 2]", "JSON but neither"),
    ("{broken", "not valid JSON"),
])
def test_unknown_format(tmp_path, images, content, message):
    path = _write(tmp_path, "captions.txt", content)
    with pytest.raises(Image2VecError, match=message):
        load_captions(path, images)


def test_missing_captions_file_and_image_folder(tmp_path, tokens, images):
    with pytest.raises(Image2VecError, match="captions file .*nope.txt does not exist"):
        load_captions(tmp_path / "nope.txt", images)
    with pytest.raises(Image2VecError, match="image folder .*missing does not exist"):
        load_captions(tokens, tmp_path / "missing")


@pytest.mark.parametrize("line", ["a.jpg#x\tcaption", "a.jpg#1", "#1\tcaption", "a.jpg#2\t  "])
def test_malformed_token_line_names_its_number(tmp_path, images, line):
    path = _write(tmp_path, "t.token", f"a.jpg#0\tfine .\n\n{line}\n")
    with pytest.raises(Image2VecError, match=r"t\.token:3: malformed line"):
        load_captions(path, images)


def test_duplicate_caption_number(tmp_path, images):
    path = _write(tmp_path, "t.token", "a.jpg#0\tone .\nb.jpg#0\ttwo .\na.jpg#0\tagain .\n")
    with pytest.raises(Image2VecError, match=r"t\.token:3: caption a\.jpg#0 is given twice "
                                             r"\(first on line 1\)"):
        load_captions(path, images)


def test_split_list_naming_an_image_without_captions(tokens, images, tmp_path):
    listed = _write(tmp_path, "list.txt", "a.jpg\nghost.jpg\n")
    with pytest.raises(Image2VecError, match=r"list\.txt:2: image 'ghost\.jpg' has no captions"):
        load_captions(tokens, images, split=listed)


def test_split_list_naming_an_image_twice(tokens, images, tmp_path):
    listed = _write(tmp_path, "list.txt", "a.jpg\nb.jpg\na.jpg\n")
    with pytest.raises(Image2VecError, match=r"list\.txt:3: image 'a\.jpg' is listed twice"):
        load_captions(tokens, images, split=listed)
    with pytest.raises(Image2VecError, match="more than once"):
        load_captions(tokens, images, split="train+train")


def test_unknown_split_name_lists_the_available(tmp_path, tokens, images):
    with pytest.raises(Image2VecError, match="unknown split 'val': .* has the splits dev, test, "
                                             "train"):
        load_captions(tokens, images, split="val")
    path = _write(tmp_path, "dataset_flickr8k.json", KARPATHY)
    with pytest.raises(Image2VecError, match="has the splits restval, test, train, val"):
        load_captions(path, images, split="train+dev")
    alone = tmp_path / "alone"
    alone.mkdir()
    lone = _write(alone, "results.token", TOKENS)
    with pytest.raises(Image2VecError, match="has no named splits"):
        load_captions(lone, images, split="train")
    with pytest.raises(Image2VecError, match="split list .*gone.txt does not exist"):
        load_captions(lone, images, split=tmp_path / "gone.txt")


def test_empty_results(tmp_path, tokens, images):
    with pytest.raises(Image2VecError, match="testImages.txt names no image"):
        load_captions(tokens, images, split="test")
    empty = _write(tmp_path, "dataset.json", {"images": [], "dataset": "flickr30k"})
    with pytest.raises(Image2VecError, match="no image has a caption"):
        load_captions(empty, images)


@pytest.mark.parametrize("entry, message", [
    ({"split": "train", "sentences": []}, r"images\[1\] is not a Karpathy image entry"),
    ({"filename": "k1.jpg", "split": "train", "sentences": [{"raw": "x"}]},
     r"images\[1\]: image 'k1\.jpg' is listed twice \(also images\[0\]\)"),
    ({"filename": "z.jpg", "split": "train", "sentences": [{"raw": " "}]},
     r"images\[1\]\.sentences\[0\] has an empty"),
    ({"filename": "../z.jpg", "split": "train", "sentences": [{"raw": "x"}]},
     "outside the image folder"),
])
def test_bad_karpathy_entries(tmp_path, images, entry, message):
    data = _karpathy([("k1.jpg", "train", ["One ."])])
    data["images"].append(entry)
    with pytest.raises(Image2VecError, match=message):
        load_captions(_write(tmp_path, "d.json", data), images)


def test_token_name_cannot_leave_the_image_folder(tmp_path, images):
    path = _write(tmp_path, "t.token", "../secret.jpg#0\tcaption .\n")
    with pytest.raises(Image2VecError, match="outside the image folder"):
        load_captions(path, images)


def test_instances_need_coco_captions(tokens, images, coco_mini):
    with pytest.raises(Image2VecError, match="needs COCO captions.*is a flickr file"):
        load_captions(tokens, images,
                      instances=coco_mini / "annotations" / "instances_train2017.json")


# --- the real Flickr8k -----------------------------------------------------------------------


def test_real_flickr8k_train_and_dev(shared_data):
    root = shared_data / "flickr8k"
    token = root / "Flickr8k_text" / "Flickr8k.token.txt"
    train = load_captions(token, root / "Flicker8k_Dataset", split="train")
    dev = load_captions(token, root / "Flicker8k_Dataset", split="dev")
    assert len(train) == 6000 and len(dev) == 1000
    assert all(len(c) == 5 for c in train.captions + dev.captions)
    assert not set(train.keys) & set(dev.keys)
    listed = (root / "Flickr8k_text" / "Flickr_8k.devImages.txt").read_text().split()
    assert dev.keys == listed
    assert all(p.is_file() for p in dev.paths[:50])


# --- the command line ------------------------------------------------------------------------


def test_cli_split_errors_before_any_work(tokens, images, tmp_path, capsys):
    from image2vec.cli import main

    out = str(tmp_path / "model.npz")
    assert main(["train", "--captions", str(tokens), "--images", str(images), "--split", "val",
                 "--out", out, "--quiet"]) == 2
    assert "unknown split 'val'" in capsys.readouterr().err
    tags = _write(tmp_path, "tags.tsv", "a.jpg\tdog\n")
    assert main(["train", "--tags", str(tags), "--images", str(images), "--split", "train",
                 "--out", out, "--quiet"]) == 2
    assert "--split goes with --captions" in capsys.readouterr().err
    assert not (tmp_path / "model.npz.features").exists()
