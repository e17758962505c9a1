"""Image features on coco-mini: shape, determinism, sensible ImageNet classes, the resumable
feature store (cache reuse, resume after interruption), bad images, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from tolerance import assert_close

from image2vec.cli import main
from image2vec.errors import Image2VecError
from image2vec.features import Extractor, available_extractors, extract_features, load_extractor, load_features
from image2vec.store import Partial, RowWriter, fingerprint

# ImageNet-1k class indices
TEDDY_BEAR = 850
SORREL = 339  # the only horse class
UNGULATES = range(339, 356)  # sorrel, zebra, hog, ..., ox, water buffalo, ..., llama


class Counting(Extractor):
    """The same extractor, counting the images it sees; raises KeyboardInterrupt (a user's
    Ctrl-C) instead of running batch number ``interrupt_at`` (0-based)."""

    def __init__(self, inner: Extractor, interrupt_at: int | None = None):
        self.__dict__.update(inner.__dict__)
        self.inner, self.interrupt_at = inner, interrupt_at
        self.batches = self.images = 0

    def __call__(self, batch):
        if self.batches == self.interrupt_at:
            raise KeyboardInterrupt
        self.batches += 1
        self.images += len(batch)
        return self.inner(batch)


@pytest.fixture(scope="module")
def coco_features(coco, lite0, tmp_path_factory):
    """Features and logits of all 80 coco-mini images, extracted once for this module."""
    store = tmp_path_factory.mktemp("coco-features")
    return extract_features(coco.paths, store, keys=coco.image_ids, extractor=lite0,
                            logits=True, batch_size=32, progress=False), store


def _largest_instance(coco_mini, category: str):
    """(image id, area fraction, bbox) of the instance of ``category`` covering most of its
    image, from the instances file."""
    inst = json.loads((coco_mini / "annotations" / "instances_train2017.json").read_text())
    cat = next(c["id"] for c in inst["categories"] if c["name"] == category)
    size = {im["id"]: im["width"] * im["height"] for im in inst["images"]}
    best = max((a for a in inst["annotations"] if a["category_id"] == cat),
               key=lambda a: a["area"] / size[a["image_id"]])
    return best["image_id"], best["area"] / size[best["image_id"]], best["bbox"]


def test_registry():
    assert {"efficientnet-lite0", "vgg16", "resnet50"} <= set(available_extractors())
    with pytest.raises(Image2VecError, match="unknown extractor 'nope'"):
        load_extractor("nope")
    with pytest.raises(Image2VecError, match="device must be cpu or cuda"):
        load_extractor(device="tpu")


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_torchvision_extractors_never_download(name, tmp_path, monkeypatch):
    """Without torchvision, or without its weights file, a clear error and no download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(Image2VecError, match="needs torchvision|weights not found") as err:
        load_extractor(name)
    assert "never downloads" in str(err.value)
    assert not any(tmp_path.rglob("*.pth"))


def test_missing_weights_file(tmp_path):
    with pytest.raises(Image2VecError, match="does not exist"):
        load_extractor(weights=tmp_path / "none.pth")


def test_feature_store_shape_and_index(coco, coco_features):
    fs, store = coco_features
    assert fs.features.shape == (80, 1280) and fs.features.dtype == np.float32
    assert fs.logits.shape == (80, 1000)
    assert isinstance(fs.features, np.memmap)
    assert fs.keys == [int(i) for i in coco.image_ids]
    assert fs.files == [str(p) for p in coco.paths]
    assert fs.skipped == []
    assert np.isfinite(fs.features).all() and (fs.features >= 0).all()  # pooled ReLU6 maps
    assert np.linalg.matrix_rank(fs.features) == 80  # distinct images, distinct features
    index = json.loads((store / "index.json").read_text())
    assert index["extractor"] == "efficientnet-lite0"
    assert "efficientnet-lite0-57934424.pth" in index["extractor_version"]
    assert index["preprocessing"]["crop"] == 224
    assert sorted(p.name for p in store.iterdir()) == ["features.npy", "index.json",
                                                       "logits.npy"]
    again = load_features(store)
    np.testing.assert_array_equal(again.features, fs.features)


def test_teddy_bear_is_recognised(coco_mini, coco_features):
    fs, _ = coco_features
    image_id, fraction, _ = _largest_instance(coco_mini, "teddy bear")
    assert fraction > 0.2
    assert int(np.argmax(fs.logits[fs.keys.index(image_id)])) == TEDDY_BEAR


def test_horse_is_recognised(coco_mini, coco_features, lite0, tmp_path):
    """coco-mini's horse image shows small horses on a hillside: the whole image ranks a
    hoofed animal in its top 5; the largest horse's box, cropped, is a sorrel."""
    fs, _ = coco_features
    image_id, _, (x, y, w, h) = _largest_instance(coco_mini, "horse")
    row = fs.keys.index(image_id)
    assert set(np.argsort(fs.logits[row])[-5:]) & set(UNGULATES)
    crop = tmp_path / "horse.png"
    Image.open(fs.files[row]).crop((x, y, x + w, y + h)).save(crop)
    out = extract_features([crop], tmp_path / "store", extractor=lite0, logits=True,
                           progress=False)
    assert int(np.argmax(out.logits[0])) == SORREL


def test_deterministic(coco, coco_features, lite0, tmp_path):
    fs, _ = coco_features
    paths = coco.paths[:6]
    a = extract_features(paths, tmp_path / "a", extractor=lite0, batch_size=3, progress=False)
    b = extract_features(paths, tmp_path / "b", extractor=lite0, batch_size=3, progress=False)
    np.testing.assert_array_equal(a.features, b.features)
    # other batch sizes give the same features up to float rounding
    np.testing.assert_allclose(a.features, fs.features[:6], rtol=1e-4, atol=1e-4)


def test_cache_is_reused(coco, coco_features, lite0):
    fs, store = coco_features
    counting = Counting(lite0)
    again = extract_features(coco.paths, store, keys=coco.image_ids, extractor=counting,
                             logits=True, progress=False)
    assert counting.images == 0
    np.testing.assert_array_equal(again.features, fs.features)


def test_other_request_recomputes(coco, lite0, tmp_path):
    first = extract_features(coco.paths[:2], tmp_path, extractor=lite0, progress=False)
    counting = Counting(lite0)
    second = extract_features(coco.paths[2:5], tmp_path, extractor=counting, progress=False)
    assert counting.images == 3 and second.features.shape == (3, 1280)
    assert not np.allclose(second.features[:2], first.features)


def test_resume_after_interruption(coco, coco_features, lite0, tmp_path):
    fs, _ = coco_features
    paths, keys = coco.paths[:10], coco.image_ids[:10]
    with pytest.raises(KeyboardInterrupt):
        extract_features(paths, tmp_path, keys=keys, extractor=Counting(lite0, interrupt_at=2),
                         batch_size=4, progress=False)
    assert not (tmp_path / "index.json").exists()  # the store is marked incomplete
    progress = json.loads((tmp_path / "partial" / "progress.json").read_text())
    assert progress["done"] == 8
    with pytest.raises(Image2VecError, match="not a complete feature store"):
        load_features(tmp_path)
    counting = Counting(lite0)
    out = extract_features(paths, tmp_path, keys=keys, extractor=counting, batch_size=4,
                           progress=False)
    assert counting.images == 2  # only the images after the last finished batch
    assert out.keys == [int(k) for k in keys]
    np.testing.assert_allclose(out.features, fs.features[:10], rtol=1e-4, atol=1e-4)
    assert not (tmp_path / "partial").exists()


def test_a_store_with_logits_answers_a_request_for_features_alone(coco, lite0, tmp_path, monkeypatch):
    with_logits = extract_features(coco.paths[:2], tmp_path, extractor=lite0, logits=True,
                                   progress=False)
    monkeypatch.setattr(type(lite0), "__call__", lambda *_: pytest.fail("features recomputed"))
    again = extract_features(coco.paths[:2], tmp_path, extractor=lite0, progress=False)
    np.testing.assert_array_equal(again.features, with_logits.features)
    np.testing.assert_array_equal(again.logits, with_logits.logits)


def test_recompute_without_logits_removes_old_logits(coco, lite0, tmp_path):
    with_logits = extract_features(coco.paths[:2], tmp_path, extractor=lite0, logits=True,
                                   progress=False)
    assert with_logits.logits.shape == (2, 1000) and (tmp_path / "logits.npy").is_file()
    without = extract_features(coco.paths[1:3], tmp_path, extractor=lite0, progress=False)
    assert without.logits is None and not (tmp_path / "logits.npy").exists()
    index = json.loads((tmp_path / "index.json").read_text())
    assert list(index["outputs"]) == ["features"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy", "index.json"]


def test_store_that_is_a_file_is_refused(coco, lite0, tmp_path):
    path = tmp_path / "store"
    path.write_text("someone's file\n")
    with pytest.raises(Image2VecError, match=f"^feature store {path} is an existing file"):
        extract_features(coco.paths[:1], path, extractor=lite0, progress=False)
    with pytest.raises(Image2VecError, match=f"^feature store {path} is an existing file"):
        load_features(path)
    assert path.read_text() == "someone's file\n"


def test_folder_with_a_foreign_or_bad_index_is_refused(coco, lite0, tmp_path):
    (tmp_path / "index.json").write_text('{"format": "something else"}')
    with pytest.raises(Image2VecError, match="not an image2vec feature store index"):
        extract_features(coco.paths[:1], tmp_path, extractor=lite0, progress=False)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(Image2VecError, match="feature store index .* is not valid JSON"):
        load_features(tmp_path)
    assert (tmp_path / "index.json").read_text() == "{not json"


@pytest.fixture(scope="module")
def bad_images(coco, tmp_path_factory):
    """Two good images among a missing, a truncated, a non-image and two oversized files."""
    folder = tmp_path_factory.mktemp("bad")
    data = coco.paths[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.jpg").write_text("not an image\n")
    # more pixels than Pillow's limit (89.5 Mpx: warning range) and than twice it (error)
    Image.new("1", (10000, 9500)).save(folder / "large.png")
    Image.new("1", (20000, 10000)).save(folder / "bomb.png")
    return [coco.paths[0], folder / "missing.jpg", folder / "truncated.jpg",
            folder / "notes.jpg", folder / "large.png", folder / "bomb.png", coco.paths[1]]


def test_bad_images_are_skipped_with_warning(bad_images, coco_features, lite0, tmp_path, caplog):
    fs, _ = coco_features
    limit = Image.MAX_IMAGE_PIXELS
    with caplog.at_level("WARNING", logger="image2vec.features"):
        out = extract_features(bad_images, tmp_path, extractor=lite0, batch_size=4,
                               progress=False)
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's limit is kept
    assert out.keys == [0, 6] and out.features.shape == (2, 1280)
    np.testing.assert_allclose(out.features, fs.features[:2], rtol=1e-4, atol=1e-4)
    reasons = {s["key"]: s["reason"] for s in out.skipped}
    assert sorted(reasons) == [1, 2, 3, 4, 5]
    assert "does not exist" in reasons[1]
    assert "truncated" in reasons[2]
    assert "not an image" in reasons[3]
    assert "decompression-bomb limit" in reasons[4] and "decompression-bomb limit" in reasons[5]
    for path in bad_images[1:6]:
        assert str(path) in caplog.text
    assert json.loads((tmp_path / "index.json").read_text())["skipped"] == out.skipped


def test_bad_image_fails_when_asked(bad_images, lite0, tmp_path):
    with pytest.raises(Image2VecError, match=r"^image .*missing\.jpg does not exist; fix or remove it"):
        extract_features(bad_images, tmp_path, extractor=lite0, on_bad_image="fail",
                         progress=False)
    with pytest.raises(Image2VecError, match="on_bad_image must be skip or fail"):
        extract_features(bad_images, tmp_path, extractor=lite0, on_bad_image="ignore")


def test_no_readable_image(bad_images, lite0, tmp_path):
    with pytest.raises(Image2VecError, match="none of the 2 images could be read"):
        extract_features(bad_images[1:3], tmp_path, extractor=lite0, progress=False)


def test_decoding_workers_give_the_same_features(coco, coco_features, lite0, tmp_path):
    fs, _ = coco_features
    out = extract_features(coco.paths[:4], tmp_path, extractor=lite0, batch_size=2,
                           num_workers=2, progress=False)
    np.testing.assert_allclose(out.features, fs.features[:4], rtol=1e-4, atol=1e-4)


def test_cli_features_on_tsv(coco, coco_features, tmp_path, capsys):
    fs, _ = coco_features
    (tmp_path / "tags.tsv").write_text(
        "".join(f"{p.name}\tdog,cat\n" for p in coco.paths[:3]) + "gone.jpg\tdog\n")
    store = tmp_path / "store"
    status = main(["features", "--tsv", str(tmp_path / "tags.tsv"),
                   "--images", str(coco.paths[0].parent), "--out", str(store), "--quiet"])
    assert status == 0
    assert "features 3 x 1280" in capsys.readouterr().out
    out = load_features(store)
    assert out.keys == [p.name for p in coco.paths[:3]]
    assert out.skipped[0]["key"] == "gone.jpg"
    np.testing.assert_allclose(out.features, fs.features[:3], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["--tsv", "/does/not/exist.tsv"], "tag file /does/not/exist.tsv does not exist"),
    (["--sample", "--extractor", "nope"], "unknown extractor"),
    (["--sample", "--extractor", "vgg16"], "vgg16"),
    (["--coco", "/does/not/exist"], "does not exist"),
])
def test_cli_bad_input_is_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    status = main(["features", *argv, "--out", str(tmp_path / "s"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("image2vec: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_out_is_an_existing_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    status = main(["features", "--sample", "--out", str(tmp_path / "file"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "is an existing file, not a folder" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_on_bad_image_fail(bad_images, tmp_path, capsys):
    lines = "".join(f"{p.name}\tx\n" for p in bad_images[2:4])
    (bad_images[2].parent / "bad.tsv").write_text(lines)
    status = main(["features", "--tsv", str(bad_images[2].parent / "bad.tsv"),
                   "--out", str(tmp_path / "s"), "--on-bad-image", "fail", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "truncated.jpg" in err and err.count("\n") == 1


# ------------------------------------------------------------- the progress record of a sharded store


@pytest.fixture(scope="module")
def ten_images(coco) -> list:
    return coco.paths[:10]


def test_shards_recorded_out_of_order_resume_with_the_gaps_alone(tiny, ten_images, tmp_path):
    reference = extract_features(ten_images, tmp_path / "reference", extractor=tiny, batch_size=2,
                                 progress=False)
    store = tmp_path / "store"
    partial = Partial(store, fingerprint(tiny.spec, list(range(10)), ten_images, False), 10, {"features": 3})
    writer = RowWriter(partial.folder, ["features"])  # as a worker writes its shards
    writer.write([6, 7, 2, 3], {"features": np.full((4, 3), 7.0)})
    writer.close()
    partial.record(6, 8)
    partial.record(2, 4)
    progress = json.loads((partial.folder / "progress.json").read_text())
    assert (progress["done"], progress["finished"]) == (0, [[2, 4], [6, 8]])
    assert partial.missing() == [(0, 2), (4, 6), (8, 10)] and partial.n_done == 4
    partial.record(0, 2)
    progress = json.loads((partial.folder / "progress.json").read_text())
    assert (progress["done"], progress["finished"]) == (4, [[6, 8]])
    del partial
    counting = Counting(tiny)
    out = extract_features(ten_images, store, extractor=counting, batch_size=2, progress=False)
    assert counting.images == 4  # rows 4, 5, 8, 9
    np.testing.assert_array_equal(out.features[[2, 3, 6, 7]], 7.0)  # the workers' rows, kept
    np.testing.assert_array_equal(out.features[[0, 1]], 0.0)  # recorded as done: trusted, not redone
    assert_close(out.features[[4, 5, 8, 9]], reference.features[[4, 5, 8, 9]], rtol=1e-6)


@pytest.mark.parametrize("finished", [[[5, 99]], [[3, 3]], [["a", 4]], "all"])
def test_a_malformed_progress_record_starts_afresh(tiny, ten_images, tmp_path, finished):
    request = fingerprint(tiny.spec, list(range(10)), ten_images, False)
    partial = Partial(tmp_path, request, 10, {"features": 3})
    partial.record(0, 4)
    record = json.loads((partial.folder / "progress.json").read_text())
    (partial.folder / "progress.json").write_text(json.dumps({**record, "finished": finished}))
    assert Partial(tmp_path, request, 10, {"features": 3}).missing() == [(0, 10)]
