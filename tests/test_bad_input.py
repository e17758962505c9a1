"""Hostile input, broken files and impatient users (issue 11): one test per numbered case, the
command line's start-up, the retrieve cache and the word lookup.

Every bad input must end as one line ``image2vec: error: ...`` and exit status 2 (or a correct
result), with nothing lost. The models here are fitted on random 1280-d features (the width of
the default extractor), so the command line runs end to end in a few seconds.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image2vec import features as features_mod
from image2vec import names, persist, store
from image2vec.cli import main
from image2vec.coco import load_coco
from image2vec.errors import Image2VecError
from image2vec.features import BadImageError, Extractor, Preprocessing, extract_features, load_features, load_image
from image2vec.io import read_json

WORDS = ["dog", "dogs", "cat", "tree", "red car"]
REPO = Path(__file__).resolve().parents[1]


def run_cli(*argv: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "image2vec", *argv], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})}, **kwargs)


def one_error_line(err: str, message: str) -> None:
    """``err`` is exactly one line ``image2vec: error: ...`` containing ``message``."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("image2vec: error: "), err
    assert message in lines[0], lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A simple Image2Vec model over 1280-d features (efficientnet-lite0's width)."""
    from image2vec import systems
    from image2vec.model import Image2Vec

    rng = np.random.default_rng(0)
    F = rng.random((40, 1280)).astype(np.float32)
    X = (rng.random((40, len(WORDS))) < 0.4).astype(float)
    system = Image2Vec(model="simple", dim=4, random_state=0).fit(F, X, words=WORDS)
    path = tmp_path_factory.mktemp("model") / "model.npz"
    systems.save(system, path, metadata={"extractor": "efficientnet-lite0"})
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder of four small images."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def interrupting(tiny) -> Extractor:
    """The tiny extractor, interrupted (a user's Ctrl-C) at its first batch."""
    class Interrupting(Extractor):
        def __init__(self):
            self.__dict__.update(tiny.__dict__)

        def __call__(self, batch):
            raise KeyboardInterrupt

    return Interrupting()


def rewrite_model(source: Path, target: Path, *, info: dict | None = None, arrays: dict | None = None,
                  members: dict | None = None) -> Path:
    """A copy of model file ``source`` with metadata entries, arrays or raw members replaced.

    ``members`` maps a member name to (bytes, zip compression), written as is.
    """
    with zipfile.ZipFile(source) as archive:
        document = json.loads(str(np.load(source, allow_pickle=False)["__info__"]))
        stored = {name[:-4]: np.load(source, allow_pickle=False)[name[:-4]]
                  for name in archive.namelist() if name != "__info__.npy"}
    document.update(info or {})
    stored.update(arrays or {})
    np.savez(target, __info__=np.array(json.dumps(document)), **stored)
    if members:
        with zipfile.ZipFile(target, "a") as archive:
            for name, (data, compression) in members.items():
                archive.writestr(name, data, compress_type=compression)
    return target


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def run_limited(script: str, *args: str, margin_mib: int = 512) -> subprocess.CompletedProcess:
    """``script`` in a fresh Python whose address space may grow by ``margin_mib`` only, from the
    point where it calls ``limit()``."""
    prelude = """
import resource
def limit():
    with open("/proc/self/status") as fh:
        size = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + MARGIN * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
""".replace("MARGIN", str(margin_mib))
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc to set a memory limit")
    return subprocess.run([sys.executable, "-c", prelude + script, *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


# ---------------------------------------------------------------- 1. bounded work per image


def test_case01_a_thin_image_costs_a_bounded_amount_of_memory(tmp_path):
    """40000 x 1 and 1 x 20000 images are preprocessed under a 512 MiB address-space margin;
    scaling their short side to 256 first took 11 GB and 5.8 GB."""
    Image.new("RGB", (40000, 1), (200, 10, 10)).save(tmp_path / "wide.png")
    Image.new("L", (1, 20000), 90).save(tmp_path / "tall.png")
    assert (tmp_path / "wide.png").stat().st_size < 1000
    run = run_limited("""
import sys
import torch
from image2vec.features import Preprocessing, load_image
images = [load_image(path) for path in sys.argv[1:]]
limit()
for image in images:
    x = Preprocessing()(image)
    print(tuple(x.shape), round(float(x[0].mean()), 3))
""", str(tmp_path / "wide.png"), str(tmp_path / "tall.png"))
    assert run.returncode == 0, run.stderr[-2000:]
    wide, tall = run.stdout.splitlines()
    assert wide == f"(3, 224, 224) {round((200 / 255 - 0.485) / 0.229, 3)}"
    assert tall.startswith("(3, 224, 224)")


def test_crop_box_resamples_what_resize_then_crop_would():
    """Resampling only the crop box gives the pixels of resizing the image and cropping it."""
    y, x = np.mgrid[0:427, 0:640]
    image = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8))
    prep = Preprocessing()
    resized = image.resize((round(640 * 256 / 427), 256), Image.Resampling.BICUBIC)
    left = (resized.width - 224) // 2
    expected = np.asarray(resized.crop((left, 16, left + 224, 240)), dtype=int)
    got = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC,
                                  box=prep.crop_box(640, 427)), dtype=int)
    assert np.abs(got - expected).max() <= 1


# ---------------------------------------------------------------- 2, 3, 8, 11, 12: model files


def test_case02_a_model_file_cut_in_half(model, tmp_path):
    cut = tmp_path / "cut.npz"
    data = model.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(Image2VecError, match="not an image2vec model file .*truncated or damaged"):
        persist.load_system(cut, names.SavedSystems())


def test_case03_an_undeclared_array_is_refused_unread(model, tmp_path):
    """A zip bomb (a 64 MiB array of zeros in 64 kB) named like a fitted attribute."""
    bomb = npy_bytes(np.zeros(8 * 2**20))
    path = rewrite_model(model, tmp_path / "bomb.npz",
                         members={"junk_.npy": (bomb, zipfile.ZIP_DEFLATED)})
    assert path.stat().st_size < 2**20
    with pytest.raises(Image2VecError, match="does not declare .*junk_.npy.*refused"):
        persist.load_system(path, names.SavedSystems())


def test_case03_a_declared_but_compressed_array_is_refused(model, tmp_path):
    declared = json.loads(str(np.load(model)["__info__"]))["arrays"]
    path = rewrite_model(model, tmp_path / "bomb.npz", info={"arrays": {**declared, "junk_": "<f8"}},
                         members={"junk_.npy": (npy_bytes(np.zeros(2**20)), zipfile.ZIP_DEFLATED)})
    with pytest.raises(Image2VecError, match="'junk_' is compressed"):
        persist.load_system(path, names.SavedSystems())


def test_case03_a_header_that_claims_7_tib_is_refused(model, tmp_path):
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (2**40,)})
    path = rewrite_model(model, tmp_path / "huge.npz")
    original = np.load(path)["offset_"]
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if name != "offset_.npy"}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("offset_.npy", header.getvalue() + original.tobytes())
    with pytest.raises(Image2VecError, match=r"'offset_' declares \(1099511627776,\) float64"):
        persist.load_system(path, names.SavedSystems())


@pytest.mark.parametrize("n_features, arrays, message", [
    (1000, {}, "image_map_ has shape (4, 1280), expected (4, 1000)"),
    (None, {"feature_mean_": 7}, "feature_mean_ has shape (7,), expected (1280,)"),
    (None, {"dictionary_": np.nan}, "dictionary_ contains NaN or infinite values"),
    (None, {"feature_mean_": np.nan}, "feature_mean_ contains NaN or infinite values"),
    (None, {"offset_": np.inf}, "offset_ contains NaN or infinite values"),
])
def test_case08_mismatched_or_non_finite_model_arrays(model, tmp_path, n_features, arrays, message):
    document = json.loads(str(np.load(model)["__info__"]))
    changed = {}
    for name, value in arrays.items():  # an int: that many zeros; a float: one entry replaced
        changed[name] = np.load(model)[name].copy()
        if isinstance(value, int):
            changed[name] = np.zeros(value, changed[name].dtype)
        else:
            changed[name].flat[1] = value
    info = None if n_features is None else {"values": {**document["values"], "n_features_in_": n_features}}
    path = rewrite_model(model, tmp_path / "changed.npz", info=info, arrays=changed)
    with pytest.raises(Image2VecError, match="is inconsistent: ") as error:
        persist.load_system(path, names.SavedSystems())
    assert message in str(error.value)


def test_case11_a_numpy_array_file_as_model(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.zeros((3, 4), np.float32))
    status = main(["summarize", "--model", str(tmp_path / "features.npy"), str(tmp_path / "x.jpg")])
    assert status == 2
    one_error_line(capsys.readouterr().err, "is a NumPy array file (.npy), not an image2vec model")


@pytest.mark.parametrize("value, message", [
    ("abc", "prior_weight"), (-5, "prior_weight"), ("huge", "dim"),
])
def test_case12_loaded_parameters_are_validated_like_constructor_ones(model, tmp_path, value, message):
    document = json.loads(str(np.load(model)["__info__"]))
    name = "dim" if value == "huge" else "prior_weight"
    path = rewrite_model(model, tmp_path / "params.npz",
                         info={"params": {**document["params"], name: value}})
    with pytest.raises(Image2VecError, match="has a parameter that Image2Vec refuses") as error:
        persist.load_system(path, names.SavedSystems())
    assert message in str(error.value)


def test_model_files_still_round_trip(model):
    from image2vec import systems

    loaded, metadata = systems.load(model)
    assert metadata == {"extractor": "efficientnet-lite0"} and loaded.words_.tolist() == WORDS
    with zipfile.ZipFile(model) as archive:  # every member stored, none compressed
        assert {m.compress_type for m in archive.infolist()} == {zipfile.ZIP_STORED}


# ---------------------------------------------------------------- 4, 5: the feature store


def test_case04_a_full_disk_is_one_clear_error_and_the_rerun_resumes(images, tiny, tmp_path, monkeypatch):
    files = sorted(images.iterdir())
    clean = extract_features(files, tmp_path / "clean", extractor=tiny, progress=False)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(Image2VecError, match="no space left on the disk of .* free some space"):
        extract_features(files, tmp_path / "store", extractor=tiny, progress=False)
    assert not (tmp_path / "store" / "index.json").exists()
    monkeypatch.undo()
    again = extract_features(files, tmp_path / "store", extractor=tiny, progress=False)
    np.testing.assert_array_equal(again.features, clean.features)


def test_case04_the_arrays_own_their_disk_blocks_before_any_row_is_written(images, interrupting,
                                                                         tmp_path):
    """A memory-mapped file with holes is written past the end of a full disk (a bus error)."""
    with pytest.raises(KeyboardInterrupt):
        extract_features(sorted(images.iterdir()) * 2000, tmp_path, extractor=interrupting,
                         progress=False)
    array = tmp_path / "partial" / "features.npy"
    assert array.stat().st_blocks * 512 >= array.stat().st_size > 8000 * 3 * 4


def test_case05_a_partial_folder_of_the_user_is_left_alone(images, tiny, tmp_path):
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "thesis.tex").write_text("years of work")
    with pytest.raises(Image2VecError, match="partial was not created by image2vec"):
        extract_features(sorted(images.iterdir()), tmp_path, extractor=tiny, progress=False)
    assert (tmp_path / "partial" / "thesis.tex").read_text() == "years of work"


def test_case05_arrays_of_the_user_are_not_overwritten(images, tiny, tmp_path):
    np.save(tmp_path / "features.npy", np.arange(3.0))
    with pytest.raises(Image2VecError, match="holds features.npy but no feature store index"):
        extract_features(sorted(images.iterdir()), tmp_path, extractor=tiny, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "features.npy"), np.arange(3.0))


def test_case05_the_programs_own_partial_folder_is_replaced_and_removed(images, tiny, interrupting,
                                                                       tmp_path):
    files = sorted(images.iterdir())
    with pytest.raises(KeyboardInterrupt):
        extract_features(files[:2], tmp_path, extractor=interrupting, progress=False)
    assert (tmp_path / "partial" / store.MARKER).is_file()
    extract_features(files, tmp_path, extractor=tiny, progress=False)  # another request
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy", "index.json"]


def test_a_damaged_store_is_refused(images, tiny, tmp_path):
    extract_features(sorted(images.iterdir()), tmp_path, extractor=tiny, progress=False)
    np.save(tmp_path / "features.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(Image2VecError, match=r"is damaged \(features.npy holds float32 \(4, 5\)"):
        load_features(tmp_path)


# ---------------------------------------------------------------- 6: bit depths


def test_case06_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 9), 30000, np.uint16)).save(tmp_path / "sixteen.png")
    Image.fromarray(np.full((8, 9), 0.5, np.float32)).save(tmp_path / "float.tiff")
    assert Image.open(tmp_path / "sixteen.png").mode in ("I;16", "I")  # "I" (32-bit) on Pillow 10.0
    assert np.asarray(load_image(tmp_path / "sixteen.png"))[0, 0].tolist() == [117] * 3
    assert np.asarray(load_image(tmp_path / "float.tiff"))[0, 0].tolist() == [128] * 3


@pytest.mark.parametrize("array, name, message", [
    (np.full((8, 9), 2.0, np.float32), "bright.tiff", "float pixels that are not all in [0, 1]"),
    (np.full((8, 9), np.nan, np.float32), "nan.tiff", "float pixels that are not all in [0, 1]"),
    (np.full((8, 9), 70000, np.int32), "wide.tiff", "32-bit integer pixels"),
])
def test_case06_pixels_of_unknown_range_are_refused(tmp_path, array, name, message):
    Image.fromarray(array).save(tmp_path / name)
    with pytest.raises(BadImageError, match=re.escape(message)):
        load_image(tmp_path / name)


# ---------------------------------------------------------------- 7, 10, 14: annotation files


def coco_file(path: Path, images: list, annotations: list, **more) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": annotations, **more}))
    return path


def test_case07_duplicate_image_ids_are_refused(images, tmp_path):
    captions = coco_file(tmp_path / "c.json",
                         [{"id": 5, "file_name": "0.png"}, {"id": 5, "file_name": "1.png"}],
                         [{"id": 1, "image_id": 5, "caption": "a dog"}])
    with pytest.raises(Image2VecError, match="image id 5 is listed twice"):
        load_coco(captions, images)


def test_case10_string_and_mixed_image_ids(images, tmp_path):
    captions = coco_file(tmp_path / "c.json",
                         [{"id": "b", "file_name": "0.png"}, {"id": 7, "file_name": "1.png"},
                          {"id": "a", "file_name": "2.png"}],
                         [{"id": 1, "image_id": "b", "caption": "a dog"},
                          {"id": 2, "image_id": 7, "caption": "a cat"},
                          {"id": 3, "image_id": "a", "caption": "a tree"}])
    data = load_coco(captions, images)
    assert data.image_ids.tolist() == [7, "a", "b"]
    assert [p.name for p in data.paths] == ["1.png", "2.png", "0.png"]
    assert data.captions == [["a cat"], ["a tree"], ["a dog"]]
    keys = json.loads(json.dumps(data.image_ids.tolist()))  # through a feature store index
    assert data.positions(keys[::-1]).tolist() == [2, 1, 0]


@pytest.mark.parametrize("image", [{"id": True, "file_name": "0.png"}, {"id": 1.5, "file_name": "0.png"},
                                   {"file_name": "0.png"}])
def test_case10_ids_that_are_neither_integers_nor_strings_are_refused(images, tmp_path, image):
    captions = coco_file(tmp_path / "c.json", [image], [])
    with pytest.raises(Image2VecError, match="has no integer or string id"):
        load_coco(captions, images)


def test_case14_json_nested_100000_deep(model, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.json").write_text(deep)
    with pytest.raises(Image2VecError, match="deep.json is nested too deeply"):
        read_json(tmp_path / "deep.json", "annotation file")
    document = json.loads(str(np.load(model)["__info__"]))
    path = rewrite_model(model, tmp_path / "deep.npz")
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if name != "__info__.npy"}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("__info__.npy", npy_bytes(np.array(json.dumps(document)[:-1]
                                                            + ', "x": ' + deep + "}")))
    with pytest.raises(Image2VecError, match="metadata of model file .* is nested too deeply"):
        persist.load_system(path, names.SavedSystems())


@pytest.mark.parametrize("category_id", ["cat", 99, None])
def test_case14_instances_with_a_bad_category_id(images, tmp_path, category_id):
    listed = [{"id": 1, "file_name": "0.png"}]
    captions = coco_file(tmp_path / "c.json", listed, [{"id": 1, "image_id": 1, "caption": "a cat"}])
    instances = coco_file(tmp_path / "i.json", listed,
                          [{"id": 8, "image_id": 1, "category_id": category_id}],
                          categories=[{"id": 17, "name": "cat"}])
    with pytest.raises(Image2VecError, match=f"annotation 8 of image 1 has category_id {category_id!r}"):
        load_coco(captions, images, instances)


# ---------------------------------------------------------------- 9: features the model cannot read


@pytest.fixture(scope="module")
def captioned(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("captioned")
    listed = [{"id": i, "file_name": f"{i}.png"} for i in range(4)]
    texts = ["a dog near a tree", "a cat on a red car", "two dogs and a cat", "a tree"]
    return coco_file(folder / "captions.json", listed,
                     [{"id": i, "image_id": i, "caption": text} for i, text in enumerate(texts)])


@pytest.mark.slow
@pytest.mark.parametrize("damage, message", [
    ("nan", "hold NaN or infinite values for 1 image(s) (first: "),
    ("width", "have 100 values per image but the model reads 1280"),
])
def test_case09_evaluate_and_train_refuse_features_the_model_cannot_read(
        model, images, captioned, tmp_path, capsys, damage, message):
    feature_store = tmp_path / "store"
    evaluate = ["evaluate", "--model", str(model), "--captions", str(captioned), "--images",
                str(images), "--features", str(feature_store), "--quiet"]
    assert main(evaluate) == 0
    if damage == "nan":
        features = np.load(feature_store / "features.npy", mmap_mode="r+")
        features[2, 5] = np.nan
        features.flush()
        del features
    else:  # a consistent store of another width
        np.save(feature_store / "features.npy", np.zeros((4, 100), np.float32))
        index = json.loads((feature_store / "index.json").read_text())
        index["outputs"]["features"]["shape"] = [4, 100]
        (feature_store / "index.json").write_text(json.dumps(index))
    capsys.readouterr()
    assert main(evaluate) == 2
    one_error_line(capsys.readouterr().err, message)
    if damage == "nan":  # train refuses them the same way: one line, no scikit-learn advice
        assert main(["train", "--model", "learn-all", "--dim", "2", "--min-count", "1",
                     "--captions", str(captioned), "--images", str(images), "--features",
                     str(feature_store), "--out", str(tmp_path / "m.npz"), "--quiet"]) == 2
        one_error_line(capsys.readouterr().err, message)
        assert not (tmp_path / "m.npz").exists()


# ---------------------------------------------------------------- 13, 15 and folders as images


def test_case13_a_file_name_that_is_not_utf8(model, tmp_path, capsys):
    name = os.fsdecode(b"caf\xff.png")
    Image.new("RGB", (30, 20), (0, 90, 200)).save(tmp_path / name)
    assert main(["summarize", "--model", str(model), str(tmp_path / name)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path}/caf\\xff.png: ") and out.count("\n") == 1


def test_case15_a_named_pipe_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "x.jpg")
    script = "import sys; from image2vec.features import load_image; load_image(sys.argv[1])"
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.jpg")],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "is not a regular file (a named pipe, socket or device)" in run.stderr


def test_a_folder_given_as_image_is_a_folder(model, tmp_path, capsys):
    assert main(["summarize", "--model", str(model), str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, f"image {tmp_path} is a folder, not a file")


def test_case15_sigterm_leaves_no_temporary_file_and_the_rerun_resumes(model, images, tmp_path):
    scratch, cache = tmp_path / "tmp", tmp_path / "cache"
    scratch.mkdir()
    files = [str(images / "0.png")] * 64
    argv = [sys.executable, "-m", "image2vec", "summarize", "--model", str(model), *files]
    env = {**os.environ, "TMPDIR": str(scratch), "IMAGE2VEC_CACHE": str(cache)}
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(cache.glob("features/*/partial")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(cache.glob("features/*/partial")), "the summary never started its feature store"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    # the last line (before it, the first run's notice that it exports the network once)
    assert err.endswith("\nimage2vec: terminated\n") and "Traceback" not in err
    assert list(scratch.iterdir()) == []
    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0 and rerun.stdout.count(files[0]) == 64, rerun.stderr


def test_case15_ctrl_c_during_the_imports_is_one_line(model, images):
    process = subprocess.Popen([sys.executable, "-m", "image2vec", "summarize", "--model", str(model),
                                str(images / "0.png")], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # the command line is importing numpy, scikit-learn, torch
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT
    assert err == "image2vec: interrupted\n"


# ---------------------------------------------------------------- a command line that answers


def test_the_parser_imports_nothing_heavy():
    script = ("import sys; from image2vec.cli import build_parser; build_parser(); "
              "print([m for m in ('numpy', 'torch', 'sklearn', 'scipy', 'nltk', 'image2vec.systems')"
              " if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert run.stdout.strip() == "[]", run.stderr


def test_usage_errors_answer_at_once():
    start = time.perf_counter()
    run = run_cli("train", "--model", "nope")
    assert run.returncode == 2 and "invalid choice: 'nope'" in run.stderr
    assert time.perf_counter() - start < 2  # ~0.2 s; generous for a loaded machine


def test_the_light_system_names_agree_with_the_registry():
    from image2vec import model, systems

    assert names.SYSTEM_NAMES == systems.SYSTEM_NAMES and names.MODELS == model.MODELS
    assert dict(names.SavedSystems()) == systems.REGISTRY


def test_retrieve_caches_the_folder_and_sees_a_changed_file(model, images, tmp_path, capsys,
                                                            monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in images.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv("IMAGE2VEC_CACHE", str(tmp_path / "cache"))
    assert main(["retrieve", "--model", str(model), "--images", str(folder), "-n", "4", "DOG"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("images nearest to dog:") and first.count(str(folder)) == 4
    assert len(list((tmp_path / "cache" / "folders").iterdir())) == 1

    def no_network(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(features_mod, "load_extractor", no_network)
    assert main(["retrieve", "--model", str(model), "--images", str(folder), "-n", "4", "dog"]) == 0
    assert capsys.readouterr().out == first
    Image.new("RGB", (30, 20), (250, 250, 0)).save(folder / "1.png")  # a changed file
    with pytest.raises(AssertionError, match="the cache should have answered"):
        main(["retrieve", "--model", str(model), "--images", str(folder), "dog"])


def test_a_cached_retrieve_does_not_import_torch(model, images, tmp_path):
    env = {"IMAGE2VEC_CACHE": str(tmp_path)}
    argv = ["retrieve", "--model", str(model), "--images", str(images), "cat"]
    assert run_cli(*argv, env=env).returncode == 0
    script = ("import sys; from image2vec.cli import main; status = main(sys.argv[1:]); "
              "print(status, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, **env})
    assert run.stdout.splitlines()[-1] == "0 False", run.stderr


@pytest.mark.parametrize("word, message", [
    ("dgo", "unknown word 'dgo'; did you mean: dog, dogs?"),
    ("zebra", "unknown word 'zebra': it is not among the model's 5 words"),
    ("", "the word is empty"),
])
def test_unknown_and_empty_words(model, capsys, word, message):
    assert main(["similar", "--model", str(model), word]) == 2
    one_error_line(capsys.readouterr().err, message)


def test_a_message_of_several_lines_is_printed_as_one(monkeypatch, capsys):
    from image2vec import cli

    def fail(path):
        raise Image2VecError("first line\nsecond line")

    monkeypatch.setattr(cli, "_load_model", fail)
    assert main(["similar", "--model", "m.npz", "dog"]) == 2
    one_error_line(capsys.readouterr().err, "first line second line")


def test_words_are_looked_up_without_regard_to_case(model, capsys):
    assert main(["similar", "--model", str(model), "-n", "2", "Red CAR"]) == 0
    assert capsys.readouterr().out.startswith("red car: ")


@pytest.mark.parametrize("typed, found", [("Cats", "cat"), ("trees", "tree"), ("dogs", "dogs")])
def test_a_word_not_in_the_vocabulary_is_found_by_its_base_form(model, capsys, typed, found):
    """The vocabulary holds lemmas; a typed plural or verb form finds them ("dogs", a word of this
    model's vocabulary, is found as itself before its base form)."""
    assert main(["similar", "--model", str(model), "-n", "2", typed]) == 0
    assert capsys.readouterr().out.startswith(f"{found}: ")


def test_a_lookup_by_base_form_prints_nothing_about_wordnet(model):
    done = run_cli("similar", "--model", str(model), "-n", "2", "trees")  # a fresh process: WordNet is read
    assert done.returncode == 0 and done.stdout.startswith("tree: ")
    assert done.stderr == "", done.stderr


# ================================================================ issue 28: the second trial
# One test (or more) per class of failure; each failed on the code before the fix.


def lying_sizes(path: Path, member: str, claim: int) -> None:
    """Make the zip directory of ``path`` claim ``claim`` bytes for ``member`` (local header and
    central directory), with an .npy header that claims as much: the member holds far less."""
    import struct

    with zipfile.ZipFile(path) as archive:
        data = archive.read(member)
    header_len = len(data) - len(np.load(path)[member[:-4]].tobytes())
    shape = ((claim - header_len) // 8,)
    import io
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    header = header.getvalue()
    claim = len(header) + shape[0] * 8
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if name != member}
    with zipfile.ZipFile(path, "w") as archive:
        for name, body in members.items():
            archive.writestr(name, body)
        archive.writestr(member, header + data[header_len:])
    raw = bytearray(path.read_bytes())
    name = member.encode()
    # the sizes in the member's local header (name at +30, sizes at +18) and in its central
    # directory entry (name at +46, sizes at +20)
    for signature, name_at, sizes_at in [(b"PK\x03\x04", 30, 18), (b"PK\x01\x02", 46, 20)]:
        at = raw.find(signature)
        while at != -1:
            if raw[at + name_at: at + name_at + len(name)] == name:
                struct.pack_into("<II", raw, at + sizes_at, claim, claim)
            at = raw.find(signature, at + 4)
    path.write_bytes(bytes(raw))


def test_issue28_class01_a_zip_directory_that_lies_about_a_size_is_refused_unallocated(model, tmp_path):
    """A member of a few kB claiming 3.6 GB: refused before anything is allocated."""
    path = rewrite_model(model, tmp_path / "liar.npz")
    lying_sizes(path, "image_map_.npy", 3_600_000_000)
    assert path.stat().st_size < 2**20
    run = run_limited("""
import sys
from image2vec import names, persist
from image2vec.errors import Image2VecError
limit()
try:
    persist.load_system(sys.argv[1], names.SavedSystems())
except Image2VecError as exc:
    print(exc)
""", str(path))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "'image_map_' claims 3600000000 bytes but the file holds" in run.stdout, run.stdout


@pytest.fixture(scope="module")
def cvs_model(tmp_path_factory) -> Path:
    from image2vec import systems

    rng = np.random.default_rng(3)
    F = rng.random((30, 6)).astype(np.float32)
    X = np.zeros((30, 3))
    X[np.arange(30), rng.integers(0, 3, 30)] = 1
    system = systems.make_system("cvs", hidden_size=4, attention_size=4, max_epochs=1).fit(
        F, X, words=["dog", "cat", "tree"])
    path = tmp_path_factory.mktemp("cvs") / "cvs.npz"
    systems.save(system, path, metadata={"extractor": "efficientnet-lite0"})
    return path


@pytest.mark.parametrize("where, value", [
    ("input_dims", 10**9), ("input_dims", -5), ("input_dims", 2 * 10**6), ("hidden_size", 10**6),
    ("n_classes", 10**9), ("input_dims", "x"),
])
def test_issue28_class02_a_common_space_layout_is_checked_before_its_network_is_built(
        cvs_model, tmp_path, where, value):
    document = json.loads(str(np.load(cvs_model)["__info__"]))
    if where == "hidden_size":
        info = {"params": {**document["params"], "hidden_size": value}}
    else:
        layout = document["values"]["layout_"]
        if where == "input_dims":
            layout["input_dims"] = {name: value for name in layout["input_dims"]}
        else:
            layout[where] = value
        info = {"values": {**document["values"], "layout_": layout}}
    path = rewrite_model(cvs_model, tmp_path / "layout.npz", info=info)
    run = run_limited("""
import sys
from image2vec import names, persist
from image2vec.errors import Image2VecError
limit()
try:
    persist.load_system(sys.argv[1], names.SavedSystems())
except Image2VecError as exc:
    print("refused:", exc)
""", str(path), margin_mib=1024)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("refused: ") and "inconsistent" in run.stdout, run.stdout


def npy_with_header(descr: str, shape: tuple, body: bytes) -> bytes:
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return header.getvalue() + body


def replace_member(source: Path, target: Path, member: str, data: bytes) -> Path:
    rewrite_model(source, target)
    with zipfile.ZipFile(target) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if name != member}
    with zipfile.ZipFile(target, "w") as archive:
        for name, body in members.items():
            archive.writestr(name, body)
        archive.writestr(member, data)
    return target


@pytest.mark.parametrize("member, data, message", [
    ("offset_.npy", npy_with_header("<f8", (-13, -13), b"\0" * 169 * 8), "negative"),
    ("words_.npy", npy_with_header("<U0", (5,), b""), "holds no data"),
])
def test_issue28_class03_crafted_array_headers(model, tmp_path, capsys, member, data, message):
    path = replace_member(model, tmp_path / "crafted.npz", member, data)
    if member == "words_.npy":  # the metadata declares what the member says
        document = json.loads(str(np.load(model)["__info__"]))
        path = replace_member(rewrite_model(model, tmp_path / "d.npz", info={
            "arrays": {**document["arrays"], "words_": "<U0"}}), tmp_path / "crafted.npz", member, data)
    assert main(["similar", "--model", str(path), "dog"]) == 2
    one_error_line(capsys.readouterr().err, message)


@pytest.mark.parametrize("entry, value", [
    ("metadata", ["a", "list"]), ("params", [1, 2]), ("values", "text"), ("sparse", {"a": 1}),
    ("metadata", {"extractor": ["not", "a", "name"]}),
])
def test_issue28_class03_metadata_entries_of_the_wrong_type(model, images, tmp_path, capsys, entry, value):
    path = rewrite_model(model, tmp_path / "typed.npz", info={entry: value})
    assert main(["summarize", "--model", str(path), str(images / "0.png")]) == 2
    one_error_line(capsys.readouterr().err, "malformed image2vec model file")


@pytest.mark.parametrize("words, message", [
    (np.array([], dtype="<U3"), "no word"),
    (np.array(["dog", "cat", "dog", "tree", "red car"]), "'dog' twice"),
    (np.array(["dog", "", "cat", "tree", "red car"]), "an empty word"),
    (np.array([1, 2, 3, 4, 5]), "not text"),
    (np.array([True, False, True, False, True]), "not text"),
    (np.array(["dog", "c\x1b[2Jat", "x", "tree", "red car"]), "control character"),
])
def test_issue28_class03_and_11_vocabularies_the_loader_refuses(model, tmp_path, words, message):
    document = json.loads(str(np.load(model)["__info__"]))
    arrays = {"words_": words}
    if words.size == 0:  # a consistent model of 0 words: every array cut to 0 columns
        loaded = np.load(model)
        arrays.update(dictionary_=loaded["dictionary_"][:, :0], target_mean_=loaded["target_mean_"][:0])
    path = rewrite_model(model, tmp_path / "words.npz", arrays=arrays,
                         info={"arrays": {**document["arrays"], **{k: v.dtype.str for k, v in arrays.items()}}})
    with pytest.raises(Image2VecError, match=re.escape(message)):
        persist.load_system(path, names.SavedSystems())


@pytest.mark.parametrize("value", [1e308, 1e200, -3e160])
def test_issue28_class03_values_too_large_to_compute_with(model, tmp_path, capsys, value):
    dictionary = np.load(model)["dictionary_"].copy()
    dictionary[0, 0] = value
    path = rewrite_model(model, tmp_path / "large.npz", arrays={"dictionary_": dictionary})
    assert main(["similar", "--model", str(path), "dog"]) == 2
    one_error_line(capsys.readouterr().err, "dictionary_ holds values too large to compute with")


def test_issue28_class03_an_all_zero_dictionary(model, images, captioned, tmp_path, capsys):
    dictionary = np.zeros_like(np.load(model)["dictionary_"])
    path = rewrite_model(model, tmp_path / "zero.npz", arrays={"dictionary_": dictionary})
    status = main(["evaluate", "--model", str(path), "--captions", str(captioned), "--images",
                   str(images), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2, err
    one_error_line(err, "dictionary_ is all zero")


def test_issue28_class04_integers_python_will_not_convert(model, images, tmp_path, capsys):
    huge = "9" * 5000
    (tmp_path / "c.json").write_text('{"images": [{"id": ' + huge + ', "file_name": "0.png"}], '
                                     '"annotations": [{"id": 1, "image_id": ' + huge + ', "caption": "a dog"}]}')
    with pytest.raises(Image2VecError, match="integer of 5000 digits"):
        load_coco(tmp_path / "c.json", images)
    captions = coco_file(tmp_path / "big.json", [{"id": 10**20, "file_name": "0.png"}],
                         [{"id": 1, "image_id": 10**20, "caption": "a dog"}])
    with pytest.raises(Image2VecError, match="out of the 64-bit range"):
        load_coco(captions, images)
    document = str(np.load(model)["__info__"])
    path = replace_member(model, tmp_path / "digits.npz", "__info__.npy",
                          npy_bytes(np.array(document[:-1] + ', "n": ' + huge + "}")))
    assert main(["similar", "--model", str(path), "dog"]) == 2
    one_error_line(capsys.readouterr().err, "integer of 5000 digits")


def test_issue28_class05_an_output_is_never_an_input(images, captioned, tmp_path, capsys):
    captions = tmp_path / "c.json"
    captions.write_bytes(captioned.read_bytes())
    before = captions.read_bytes()
    (tmp_path / "link.npz").symlink_to(captions)
    os.mkfifo(tmp_path / "fifo.npz")
    base = ["train", "--captions", str(captions), "--images", str(images), "--quiet"]
    cases = [(str(captions), "is an input of this run"), (str(tmp_path / "link.npz"), "is an input"),
             (str(images / "0.png"), "is an input"), (str(tmp_path / "fifo.npz"), "not a regular file"),
             ("/dev/null", "not a regular file")]
    for out, message in cases:
        assert main([*base, "--out", out]) == 2
        one_error_line(capsys.readouterr().err, message)
    assert captions.read_bytes() == before
    store = tmp_path / "store"
    store.mkdir()
    (store / "features.npy").write_bytes(b"x")
    assert main([*base, "--features", str(store), "--out", str(store / "features.npy")]) == 2
    one_error_line(capsys.readouterr().err, "is inside the feature store")


def test_issue28_class06_an_absurd_word_does_not_enter_a_vocabulary():
    from image2vec.vocabulary import MAX_WORD_LENGTH, build_vocabulary

    long = "a" * 1_000_000
    documents = [[["dog", long]], [["dog", long]], [["cat"]]]
    vocabulary = build_vocabulary(documents, min_count=1)
    assert list(vocabulary) == ["dog", "cat"]
    edge = "b" * MAX_WORD_LENGTH
    assert edge in build_vocabulary([[[edge]], [[edge + "b"]]], min_count=1)


def test_issue28_class07_a_dangling_symlink_is_skipped_like_an_unreadable_image(
        model, images, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in images.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    monkeypatch.setenv("IMAGE2VEC_CACHE", str(tmp_path / "cache"))
    assert main(["retrieve", "--model", str(model), "--images", str(folder), "-n", "9", "dog"]) == 0
    out = capsys.readouterr().out
    assert out.count(str(folder)) == 4 and "gone.jpg" not in out


def test_issue28_class08_a_garbage_weights_file(tmp_path):
    from image2vec.features import load_extractor

    garbage = [(f"garbage{seed}.pt", np.random.default_rng(seed).bytes(4096)) for seed in range(30)]
    for name, data in [*garbage, ("text.pt", b"not weights at all\n"), ("empty.pt", b""),
                       ("pickled.pt", b"\x80\x04K\x01.")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(Image2VecError, match=f"cannot read weights file .*{name}"):
            load_extractor("efficientnet-lite0", weights=tmp_path / name)
    run = run_cli("features", "--sample", "--out", str(tmp_path / "store"), "--weights",
                  str(tmp_path / "text.pt"), "--quiet")
    assert run.returncode == 2
    one_error_line(run.stderr, "cannot read weights file")


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "latin-1"}, {"PYTHONIOENCODING": "ascii"}])
def test_issue28_class09_an_output_encoding_that_cannot_spell_a_file_name(model, tmp_path, env):
    Image.new("RGB", (30, 20), (0, 90, 200)).save(tmp_path / "日本.jpg")
    run = run_cli("summarize", "--model", str(model), str(tmp_path / "日本.jpg"), env=env)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and run.stdout.count("\n") == 1
    missing = run_cli("summarize", "--model", str(model), str(tmp_path / "дом.jpg"), env=env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_issue28_class10_a_named_pipe_as_a_split_list_is_refused_at_once(images, tmp_path):
    (tmp_path / "Flickr8k.token.txt").write_text("0.png#0\ta dog\n1.png#0\ta cat\n")
    os.mkfifo(tmp_path / "Flickr_8k.trainImages.txt")
    from image2vec.captions import load_captions

    script = ("import sys; from image2vec.captions import load_captions\n"
              "from image2vec.errors import Image2VecError\n"
              "try: load_captions(sys.argv[1], sys.argv[2], split='train')\n"
              "except Image2VecError as exc: print(exc)")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "Flickr8k.token.txt"), str(images)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "is not a regular file (a named pipe, socket or device)" in run.stdout, run.stderr
    os.mkfifo(tmp_path / "list.txt")
    with pytest.raises(Image2VecError, match="list.txt does not exist or is not a file"):
        load_captions(tmp_path / "Flickr8k.token.txt", images, split=tmp_path / "list.txt")


def test_issue28_class11_control_characters_leave_tags():
    from image2vec.flickr import normalize_tags

    assert normalize_tags("dog%00,dog,cat%1B%5B2J,%E2%80%AEevil,a%09b") == ["dog", "cat[2j", "evil", "a b"]


@pytest.mark.parametrize("option, value", [("--lam", "1e308"), ("--lam", "inf"), ("--gamma", "1e300"),
                                           ("--lam", "nan")])
def test_issue28_class12_huge_settings_are_refused_before_the_work(images, captioned, tmp_path, capsys,
                                                                    monkeypatch, option, value):
    from image2vec import cli

    def no_work(*args, **kwargs):
        raise AssertionError("the work started")

    monkeypatch.setattr(cli, "_load_data", no_work)
    model = "learn-all" if option == "--gamma" else "reduced-rank"
    assert main(["train", "--captions", str(captioned), "--images", str(images), "--model", model,
                 option, value, "--out", str(tmp_path / "m.npz")]) == 2
    one_error_line(capsys.readouterr().err, option.lstrip("-"))


@pytest.mark.parametrize("address", ["local:²", "local:٣", "local:0", "local:", "local:1e3"])
def test_issue28_class13_a_scheduler_that_is_not_a_number(address):
    from image2vec.cluster import connect

    with pytest.raises(Image2VecError, match="local:N needs a number of workers"):
        with connect(address):
            pass


def test_issue28_class14_an_output_name_too_long_is_refused_before_the_work(images, captioned, tmp_path,
                                                                           capsys, monkeypatch):
    from image2vec import cli

    def no_work(*args, **kwargs):
        raise AssertionError("the work started")

    monkeypatch.setattr(cli, "_load_data", no_work)
    for length in (247, 250, 255, 256, 300):  # 247 and more: the name of its store is too long
        out = tmp_path / ("m" * (length - 4) + ".npz")
        assert main(["train", "--captions", str(captioned), "--images", str(images),
                     "--out", str(out)]) == 2
        one_error_line(capsys.readouterr().err, "name is too long")
    with pytest.raises(AssertionError, match="the work started"):  # 246: fits, with its store
        main(["train", "--captions", str(captioned), "--images", str(images),
              "--out", str(tmp_path / ("m" * 242 + ".npz"))])
    with pytest.raises(AssertionError, match="the work started"):  # 255 with a store of its own
        main(["train", "--captions", str(captioned), "--images", str(images),
              "--features", str(tmp_path / "s"), "--out", str(tmp_path / ("m" * 251 + ".npz"))])


def test_issue28_class14_atomic_write_takes_any_name_the_file_system_takes(tmp_path):
    from image2vec.io import write_json

    name = "x" * 255
    write_json(tmp_path / name, {"a": 1})
    assert read_json(tmp_path / name) == {"a": 1} and len(list(tmp_path.iterdir())) == 1


def test_issue28_class15_unreadable_images_cost_linear_work_and_few_lines(tiny, tmp_path, monkeypatch,
                                                                        caplog):
    folder = tmp_path / "bad"
    folder.mkdir()
    files = []
    for i in range(600):
        files.append(folder / f"{i:04d}.jpg")
        files[-1].write_bytes(b"not an image")
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20), (5, 5, 5)).save(good)
    written = []
    original = store.write_json

    def counting(path, obj):
        written.append(len(json.dumps(obj)))
        return original(path, obj)

    monkeypatch.setattr(store, "write_json", counting)
    with caplog.at_level("WARNING", logger="image2vec"):
        result = extract_features([*files, good], tmp_path / "store", extractor=tiny, batch_size=4,
                                  progress=False)
    assert len(result.skipped) == 600 and len(result.files) == 1
    index_bytes = (tmp_path / "store" / "index.json").stat().st_size
    assert sum(written) < 3 * index_bytes  # quadratic: about 150 rewrites of the growing list
    warnings_ = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings_) <= 12 and "skipped 600 unreadable images" in warnings_[-1].getMessage()


def test_issue28_class15_the_bad_list_survives_an_interruption(tiny, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = []
    for i in range(12):
        files.append(folder / f"{i:02d}.png")
        if i % 3:
            Image.new("RGB", (20, 20), (i * 10, 0, 0)).save(files[-1])
        else:
            files[-1].write_bytes(b"broken")

    class Stopping(Extractor):
        calls = 0

        def __init__(self):
            self.__dict__.update(tiny.__dict__)

        def __call__(self, batch):
            Stopping.calls += 1
            if Stopping.calls == 3:
                raise KeyboardInterrupt
            return tiny(batch)

    with pytest.raises(KeyboardInterrupt):
        extract_features(files, tmp_path / "store", extractor=Stopping(), batch_size=2, progress=False)
    resumed = extract_features(files, tmp_path / "store", extractor=tiny, batch_size=2, progress=False)
    clean = extract_features(files, tmp_path / "clean", extractor=tiny, batch_size=2, progress=False)
    assert resumed.skipped == clean.skipped and len(clean.skipped) == 4
    np.testing.assert_array_equal(resumed.features, clean.features)


def test_issue28_class16_similar_never_lists_the_word_itself(model, capsys):
    assert main(["similar", "--model", str(model), "-n", "1000", "dog"]) == 0
    out = capsys.readouterr().out
    listed = out.split(": ", 1)[1].split(", ")
    assert len(listed) == len(WORDS) - 1 and not any(w.startswith("dog (") for w in listed)
    assert "inf" not in out


def test_issue28_class16_retrieve_labels_its_scores_by_metric(model, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMAGE2VEC_CACHE", str(tmp_path))
    assert main(["retrieve", "--model", str(model), "--images", str(images), "-n", "4", "dog"]) == 0
    out = capsys.readouterr().out
    assert "distance" not in out and out.count("(correlation ") == 4  # the default metric
    scores = [float(line.rsplit("(correlation ", 1)[1].rstrip(")")) for line in out.splitlines()[1:]]
    assert scores == sorted(scores, reverse=True)


def test_issue28_an_exif_rotated_photo_is_loaded_upright(tmp_path):
    image = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (20, 40)


def test_issue28_words_are_printed_with_control_characters_escaped(model, tmp_path, capsys):
    from image2vec.cli import _shown

    assert _shown("a\x1b[2Jb\u202ec") == "a\\x1b[2Jb\\u202ec"
    assert _shown("日本 café") == "日本 café"


def test_issue28_retrieve_does_not_replace_a_store_made_by_another_command(model, images, tiny, tmp_path,
                                                                           capsys):
    extract_features(sorted(images.iterdir()), tmp_path / "train-store", extractor=tiny, progress=False)
    before = (tmp_path / "train-store" / "index.json").read_bytes()
    assert main(["retrieve", "--model", str(model), "--images", str(images), "--features",
                 str(tmp_path / "train-store"), "dog"]) == 2
    one_error_line(capsys.readouterr().err, "holds the features of other images")
    assert (tmp_path / "train-store" / "index.json").read_bytes() == before
    for _ in range(2):  # retrieve's own store: made, then read again
        assert main(["retrieve", "--model", str(model), "--images", str(images), "--features",
                     str(tmp_path / "mine"), "dog"]) == 0


def test_issue28_wordnet_needs_no_writable_cache_folder(tmp_path):
    from image2vec.vocabulary import DEBIAN_WORDNET

    if not (Path(DEBIAN_WORDNET) / "data.noun").is_file():
        pytest.skip("needs Debian's wordnet-base")
    (tmp_path / "file").write_text("a file, not a folder")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    script = ("import sys; from image2vec.vocabulary import DEBIAN_WORDNET, _debian_wordnet_corpus\n"
              "from pathlib import Path\n"
              "root = _debian_wordnet_corpus(Path(DEBIAN_WORDNET)); print((root / 'lexnames').is_file())")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "IMAGE2VEC_CACHE": str(tmp_path / "file" / "cache"),
                              "TMPDIR": str(scratch)}, timeout=120)
    assert run.stdout.strip() == "True", run.stderr[-2000:]
    assert list(scratch.iterdir()) == []  # the private copy is removed at exit


@pytest.mark.parametrize("seed", ["100000000000000000000", "4294967296", "-1", "²"])
def test_issue28_a_seed_numpy_cannot_take_is_a_usage_error(seed):
    """Refused when parsed: scikit-learn and torch refused it only after the features."""
    run = run_cli("train", "--captions", "c.json", "--images", "x", "--out", "m.npz",
                  "--random-state", seed)
    assert run.returncode == 2 and "argument --random-state: expected" in run.stderr
    assert "Traceback" not in run.stderr
