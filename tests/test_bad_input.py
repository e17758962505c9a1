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


# ---------------------------------------------------------------- 1. bounded work per image


def test_case01_a_thin_image_costs_a_bounded_amount_of_memory(tmp_path):
    """40000 x 1 and 1 x 20000 images are preprocessed under a 512 MiB address-space margin;
    scaling their short side to 256 first took 11 GB and 5.8 GB."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc to set a memory limit")
    Image.new("RGB", (40000, 1), (200, 10, 10)).save(tmp_path / "wide.png")
    Image.new("L", (1, 20000), 90).save(tmp_path / "tall.png")
    assert (tmp_path / "wide.png").stat().st_size < 1000
    script = """
import resource, sys
import torch
from image2vec.features import Preprocessing, load_image
images = [load_image(path) for path in sys.argv[1:]]
with open("/proc/self/status") as fh:
    size = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 512 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
for image in images:
    x = Preprocessing()(image)
    print(tuple(x.shape), round(float(x[0].mean()), 3))
"""
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "wide.png"),
                          str(tmp_path / "tall.png")], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
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
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
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
