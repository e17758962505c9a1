"""Flickr weak tags: normalisation, the TSV and YFCC100M layouts, the shipped sample, bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest

import image2vec.datasets as datasets_mod
from image2vec.errors import Image2VecError
from image2vec.features import FeatureSet
from image2vec.flickr import SAMPLE_TSV, load_sample, load_tag_tsv, load_yfcc100m, normalize_tags
from image2vec.vocabulary import build_vocabulary, targets


def _yfcc_line(photo_id: str, tags: str, video: bool = False, wide: bool = True) -> str:
    """A YFCC100M metadata line; ``wide``: the 25-column layout, else the original 23."""
    fields = [""] * (25 if wide else 23)
    id_col, tag_col, marker_col = (1, 10, 24) if wide else (0, 8, 22)
    fields[id_col], fields[tag_col], fields[marker_col] = photo_id, tags, "1" if video else "0"
    if wide:
        fields[0], fields[2] = "17", "9f3e1c"
    fields[7 if wide else 5] = "Canon+EOS+5D"  # capture device, not a tag
    return "\t".join(fields)


def test_normalize_tags():
    assert normalize_tags("New+York, NYC,new%20york,,Sky ,%2Bplus, \tTAB ") == [
        "new york", "nyc", "sky", "+plus", "tab"]
    assert normalize_tags(["A", "a", " b "]) == ["a", "b"]
    assert normalize_tags("") == []


def test_sample_tags_and_images():
    data = load_sample()
    assert len(data) == 16
    assert all(p.is_file() for p in data.paths)
    assert data.keys[0] == "astronaut.png"
    assert data.tags[0][:4] == ["astronaut", "woman", "portrait", "nasa"]
    assert "eileen collins" in data.tags[0]  # URL-decoded
    assert data.tags[1].count("coffee") == 1  # "coffee" and "Coffee" deduplicated
    assert "my cat" in data.tags[2]
    assert "old" in data.tags[6]  # "%20old%20" stripped


def test_sample_vocabulary_and_binary_targets():
    data = load_sample()
    docs = data.documents()
    vocab = build_vocabulary(docs, min_count=2)
    # counts are the number of images carrying the tag, from the file itself
    lines = [line for line in SAMPLE_TSV.read_text().splitlines() if line and line[0] != "#"]
    bw = sum("black+and+white" in line or "black%20and%20white" in line for line in lines)
    assert vocab.count("black and white") == bw == 4
    assert vocab.count("canon") == 2  # a camera model: noisy, non-visual, yet frequent enough
    assert "spacesuit" not in vocab  # in one image only
    X = targets(docs, vocab, binary=True)
    assert X.shape == (16, len(vocab))
    assert set(np.unique(X.data)) == {1.0}
    for n, tags in enumerate(data.tags):
        assert {vocab.words[v] for v in X[n].indices} == set(tags) & set(vocab)


def test_load_tag_data_default_min_count(monkeypatch):
    """16 tagged images are small data: min_count 2, recorded; tags have no tagger."""
    sample = load_sample()
    features = FeatureSet(np.zeros((len(sample), 4), np.float32), None, list(sample.keys),
                          [str(p) for p in sample.paths], [], {"extractor": "none"})
    monkeypatch.setattr(datasets_mod, "extract_features", lambda *args, **kwargs: features)
    data = datasets_mod.load_tag_data(SAMPLE_TSV, sample.paths[0].parent, store="unused")
    assert data.vocabulary.words == build_vocabulary(sample.documents(), min_count=2).words
    assert data.vocabulary.info["min_count"] == 2 and "tagger" not in data.vocabulary.info


def test_tsv_relative_to_its_folder(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "tags.tsv").write_text("img/a.jpg\tdog,Dog\n\n# comment\nimg/b.jpg\t\n")
    data = load_tag_tsv(tmp_path / "tags.tsv")
    assert data.keys == ["img/a.jpg", "img/b.jpg"]
    assert data.paths[0] == (tmp_path / "img" / "a.jpg").resolve()
    assert data.tags == [["dog"], []]


@pytest.mark.parametrize("content, message", [
    ("a.jpg dog,cat\n", "expected 2 tab-separated columns"),
    ("a.jpg\tdog\tcat\n", "expected 2 tab-separated columns"),
    ("a.jpg\tdog\na.jpg\tcat\n", "listed twice"),
    ("../../etc/passwd\tdog\n", "outside the image folder"),
    ("/etc/passwd\tdog\n", "absolute path"),
    ("# only a comment\n", "no image listed"),
])
def test_bad_tsv(tmp_path, content, message):
    (tmp_path / "tags.tsv").write_text(content)
    with pytest.raises(Image2VecError, match=message):
        load_tag_tsv(tmp_path / "tags.tsv")


def test_missing_tsv(tmp_path):
    with pytest.raises(Image2VecError, match="does not exist"):
        load_tag_tsv(tmp_path / "nope.tsv")


def test_tsv_that_is_not_utf8_or_a_named_pipe(tmp_path):
    (tmp_path / "latin1.tsv").write_bytes("caf\xe9.jpg\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(Image2VecError, match="latin1.tsv is not UTF-8 text"):
        load_tag_tsv(tmp_path / "latin1.tsv")
    os.mkfifo(tmp_path / "pipe.tsv")  # refused at once, not waited on
    with pytest.raises(Image2VecError, match="pipe.tsv is not a regular file"):
        load_tag_tsv(tmp_path / "pipe.tsv")


@pytest.mark.parametrize("wide", [True, False])
def test_yfcc100m_layouts(tmp_path, wide):
    lines = [_yfcc_line("1001", "london,concrete,gbr,London", wide=wide),
             _yfcc_line("1002", "top20sunsets,sunset,new+york", wide=wide),
             _yfcc_line("1003", "video,clip", video=True, wide=wide),
             _yfcc_line("1004", "", wide=wide)]
    (tmp_path / "meta").write_text("\n".join(lines) + "\n")
    data = load_yfcc100m(tmp_path / "meta", tmp_path / "photos")
    assert data.keys == ["1001", "1002", "1004"]
    assert data.tags == [["london", "concrete", "gbr"], ["top20sunsets", "sunset", "new york"], []]
    assert data.paths[1] == (tmp_path / "photos" / "1002.jpg").resolve()
    assert len(load_yfcc100m(tmp_path / "meta", tmp_path, limit=2)) == 2


def test_yfcc100m_bad_input(tmp_path):
    (tmp_path / "meta").write_text("a\tb\tc\n")
    with pytest.raises(Image2VecError, match="3 columns; a YFCC100M metadata line has 23 or 25"):
        load_yfcc100m(tmp_path / "meta", tmp_path)
    (tmp_path / "meta").write_text(_yfcc_line("../x", "a") + "\n")
    with pytest.raises(Image2VecError, match="outside the image folder"):
        load_yfcc100m(tmp_path / "meta", tmp_path / "photos")
