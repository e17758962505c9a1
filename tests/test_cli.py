"""The command line end to end on coco-mini: train, summarize, similar, retrieve, evaluate, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from image2vec import __version__
from image2vec.baselines.imnet_glove import load_glove
from image2vec.cli import main
from image2vec.flickr import SAMPLE_TSV


@pytest.fixture(scope="module")
def trained(coco_mini, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    model = folder / "model.npz"
    status = main(["train", "--captions", str(coco_mini / "annotations" / "captions_train2017.json"),
                   "--images", str(coco_mini / "train2017"), "--model", "learn-all", "--dim", "32",
                   "--features", str(folder / "store"), "--out", str(model), "--quiet"])
    assert status == 0 and model.exists()
    return model, folder


def images_of(coco_mini, n):
    return sorted(str(p) for p in (coco_mini / "train2017").glob("*.jpg"))[:n]


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and __version__ in capsys.readouterr().out


def test_the_pretrained_model_answers_without_model_and_says_so(capsys):
    from image2vec.datasets import sample_image_dir

    motorcycle = str(sample_image_dir() / "motorcycle_left.png")  # scikit-image's motorcycle
    assert main(["summarize", "--json", motorcycle]) == 0
    captured = capsys.readouterr()
    assert "using the pretrained model" in captured.err and "Flickr8k" in captured.err
    assert "motorcycle" in json.loads(captured.out)[0]["words"]  # the JSON on stdout is clean
    assert main(["similar", "dog", "-n", "3"]) == 0
    neighbours = capsys.readouterr().out
    assert neighbours.startswith("dog: ") and neighbours.count("(") == 3


def test_help_texts_state_the_defaults_the_code_uses(capsys):
    from image2vec.model import Image2Vec

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps at hyphens
    rng = np.random.default_rng(0)
    F, X = rng.standard_normal((30, 6)), (rng.random((30, 4)) < 0.5).astype(float)
    for model in ("reduced-rank", "learn-all", "weak-tag", "simple"):
        fitted = Image2Vec(model=model, max_iter=2, random_state=0).fit(F, X)
        assert f"{model}/l2 {fitted.lam_:g}" in text  # the lam each model's fit actually used
        ip = Image2Vec(model=model, objective="ip", max_iter=2, random_state=0).fit(F, X)
        assert f"{model}/ip {ip.prior_weight_:g}" in text and f"{model}/ip {ip.readout_}" in text
    learn_all_ip = Image2Vec(model="learn-all", objective="ip", max_iter=2).fit(F, X)
    assert f"learn-all/ip {learn_all_ip.whiten_}" in text
    defaults = Image2Vec().get_params()
    assert f"(default: {defaults['objective']})" in text and f"(default: {defaults['solver']})" in text
    assert "default: 256 for every model and objective" in text


def test_summarize_json(trained, coco_mini, capsys):
    model, _ = trained
    files = images_of(coco_mini, 3)
    assert main(["summarize", "--model", str(model), "-k", "4", "--json", *files]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["image"] for row in rows] == files
    for row in rows:
        assert 1 <= len(row["words"]) <= 4 and len(row["scores"]) == len(row["words"])
        assert row["scores"] == sorted(row["scores"], reverse=True)


def test_evaluate_json_has_the_agreed_keys(trained, coco_mini, capsys):
    model, folder = trained
    assert main(["evaluate", "--model", str(model), "--captions",
                 str(coco_mini / "annotations" / "captions_train2017.json"), "--images",
                 str(coco_mini / "train2017"), "--features", str(folder / "store"), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"k", "n_images", "precision", "recall", "f1", "map"} <= set(result)
    assert result["n_images"] == 80 and result["k"] == 3
    assert 0 < result["precision"] <= 1 and 0 < result["map"] <= 1


def test_similar_and_retrieve(trained, coco_mini, capsys):
    model, _ = trained
    assert main(["similar", "--model", str(model), "-n", "3", "table"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("table: ") and line.count("(") == 3
    assert main(["retrieve", "--model", str(model), "--images", str(coco_mini / "train2017"), "-n", "4", "dog"]) == 0
    ranked = [l for l in capsys.readouterr().out.splitlines() if l.strip()[:2].rstrip(".").isdigit()]
    assert len(ranked) == 4
    dogs = files_whose_captions_say(coco_mini, "dog")  # 6 of the 80 images
    hits = [line for line in ranked if line.split()[1] in dogs]
    assert len(hits) >= 2  # chance: 4 x 6 / 80 = 0.3


def files_whose_captions_say(coco_mini, word):
    annotations = json.loads((coco_mini / "annotations" / "captions_train2017.json").read_text())
    said = {a["image_id"] for a in annotations["annotations"] if word in a["caption"].lower().split()}
    return {str(coco_mini / "train2017" / image["file_name"]) for image in annotations["images"]
            if image["id"] in said}


def test_imnet_glove_trains_summarizes_and_evaluates_from_the_command_line(coco_mini, tmp_path, capsys):
    captions = str(coco_mini / "annotations" / "captions_train2017.json")
    model, store = tmp_path / "imnet.npz", tmp_path / "store"
    assert main(["train", "--captions", captions, "--images", str(coco_mini / "train2017"),
                 "--model", "imnet-glove", "--min-count", "1", "--features", str(store), "--out", str(model),
                 "--quiet"]) == 0
    capsys.readouterr()
    shown = {"000000466137.jpg": "teddy", "000000054718.jpg": "elephant", "000000281789.jpg": "zebra"}
    files = [str(coco_mini / "train2017" / name) for name in shown]
    assert main(["summarize", "--model", str(model), "--json", *files]) == 0
    for row, word in zip(json.loads(capsys.readouterr().out), shown.values()):
        assert {word, *load_glove().nearest(word, 5)} & set(row["words"]), row
    assert main(["evaluate", "--model", str(model), "--captions", captions, "--images",
                 str(coco_mini / "train2017"), "--features", str(store), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_images"] == 80 and 0 < result["precision"] <= 1 and 0 < result["map"] <= 1


@pytest.mark.parametrize("options, message", [
    (["--model", "prior", "--objective", "ip"], "prior does not take objective"),
    (["--model", "imnet-glove", "--readout", "rank"], "readout must be one of omp, cosine"),
    (["--model", "learn-all", "--objective", "ip", "--lam", "0.1"], "apply to objective='l2' only"),
    (["--model", "cvs", "--tags", "tags.tsv"], "--instances (COCO categories) goes with --captions"),
])
def test_settings_that_make_no_sense_are_refused_before_any_work(coco_mini, tmp_path, capsys,
                                                                options, message):
    annotations = coco_mini / "annotations"
    source = [] if "--tags" in options else ["--captions", str(annotations / "captions_train2017.json")]
    status = main(["train", *source, "--images", str(coco_mini / "train2017"), *options,
                   "--instances", str(annotations / "instances_train2017.json"),
                   "--out", str(tmp_path / "model.npz")])
    assert status == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no feature store was started


def test_bad_numbers_are_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["features", "--sample", "--workers", "-1", "--out", str(tmp_path / "store")])
    assert exit_.value.code == 2 and "expected an integer >= 0, got '-1'" in capsys.readouterr().err


def test_interactive_similar_from_a_pipe(trained):
    model, _ = trained
    run = subprocess.run([sys.executable, "-m", "image2vec", "similar", "--model", str(model)],
                         input="table\nzebraaa\nman\n\n", capture_output=True, text=True, timeout=120)
    assert run.returncode == 0
    assert run.stdout.count("Enter a word (empty line to quit)") == 4
    assert "table: " in run.stdout and "man: " in run.stdout and "unknown word 'zebraaa'" in run.stdout


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["summarize", "--model", "{model}", "{missing}"], "does not exist"),
        (["summarize", "--model", "{junk}", "{image}"], "not an image2vec model file"),
        (["similar", "--model", "{model}", "zebraaa"], "unknown word 'zebraaa'"),
        (["retrieve", "--model", "{model}", "--images", "{folder}", "zebraaa"], "unknown word 'zebraaa'"),
        (["summarize", "--model", "{future}", "{image}"], "format version 99"),
        (["train", "--captions", "{junk}", "--images", "{folder}", "--out", "{new}"], "in no known format"),
        (["train", "--captions", "{junk}", "--images", "{folder}", "--out", "{tmp}"], "is a folder"),
        (["summarize", "--model", "{headless}", "{image}"], "'params' is missing"),
        (["summarize", "--model", "{alien}", "{image}"], "malformed image2vec model file"),
        (["evaluate", "--model", "{model}", "--captions", "{captions}", "--images", "{folder}",
          "--instances", "{instances}"], "--instances adds the cross-modal mAP@50"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(trained, coco_mini, tmp_path, arguments, message):
    model, _ = trained
    junk = tmp_path / "junk.npz"
    junk.write_text("not a model")
    with np.load(model, allow_pickle=False) as data:
        arrays = dict(data)
    info = json.loads(str(arrays["__info__"]))
    for name, header in (("future", {**info, "format_version": 99}),
                         ("headless", {key: value for key, value in info.items() if key != "params"}),
                         ("alien", {**info, "params": {**info["params"], "colour": "red"}})):
        np.savez(tmp_path / f"{name}.npz", **{**arrays, "__info__": np.array(json.dumps(header))})
    values = {"model": model, "missing": tmp_path / "missing.jpg", "junk": junk, "image": images_of(coco_mini, 1)[0],
              "folder": coco_mini / "train2017", "new": tmp_path / "new.npz", "tmp": tmp_path,
              "captions": coco_mini / "annotations" / "captions_train2017.json",
              "instances": coco_mini / "annotations" / "instances_train2017.json",
              **{name: tmp_path / f"{name}.npz" for name in ("future", "headless", "alien")}}
    argv = [a.format(**{k: str(v) for k, v in values.items()}) for a in arguments]
    run = subprocess.run([sys.executable, "-m", "image2vec", *argv], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    errors = [l for l in run.stderr.splitlines() if l.startswith("image2vec: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "new.npz").exists()


def test_a_warning_is_one_line_without_source(coco_mini, tmp_path, capsys, trained):
    """A dim the data cannot hold is lowered with a warning: one 'image2vec: warning:' line on
    stderr, not Python's file:line and source line; Python's own display is back afterwards."""
    import warnings

    _, folder = trained
    shown = warnings.showwarning
    assert main(["train", "--captions", str(coco_mini / "annotations" / "captions_train2017.json"),
                 "--images", str(coco_mini / "train2017"), "--dim", "5000", "--features", str(folder / "store"),
                 "--out", str(tmp_path / "wide.npz"), "--quiet"]) == 0
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "dim=5000" in line]
    assert line.startswith("image2vec: warning: dim=5000 exceeds the") and "using dim=" in line
    assert "UserWarning" not in err and ".py:" not in err
    assert warnings.showwarning is shown


def test_train_weak_tag_on_flickr_tags(tmp_path, capsys):
    import skimage.data

    from image2vec import systems

    tags = SAMPLE_TSV
    model = tmp_path / "tags.npz"
    assert main(["train", "--tags", str(tags), "--images", skimage.data.data_dir, "--model", "weak-tag",
                 "--dim", "8", "--min-count", "2", "--out", str(model), "--quiet"]) == 0
    loaded, metadata = systems.load(model)
    weights = loaded.tag_weights_
    assert weights.shape[1] == len(loaded.words_) and weights.nnz > 0
    assert ((weights.data >= 0) & (weights.data <= 1)).all()
    assert "tags.tsv" in metadata["source"]


def test_a_kernel_model_with_verbs_trains_and_summarizes_from_the_command_line(coco_mini, tmp_path, capsys,
                                                                               trained):
    from image2vec import systems

    _, folder = trained
    model = tmp_path / "kernel.npz"
    assert main(["train", "--captions", str(coco_mini / "annotations" / "captions_train2017.json"),
                 "--images", str(coco_mini / "train2017"), "--model", "kernel", "--n-landmarks", "40",
                 "--kernel-gamma", "0.5", "--pos", "noun", "adj", "verb", "--dim", "16",
                 "--features", str(folder / "store"), "--out", str(model), "--quiet"]) == 0
    loaded, _ = systems.load(model)
    assert loaded.landmarks_.shape == (40, 1280) and loaded.kernel_gamma_ == 0.5
    assert {"sit", "stand"} <= set(loaded.words_)  # verbs, in their base form
    capsys.readouterr()
    assert main(["summarize", "--model", str(model), "--json", *images_of(coco_mini, 3)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(len(row["words"]) == 3 for row in rows)


@pytest.mark.parametrize("source", ["captions", "tags"])
def test_a_min_count_that_empties_the_vocabulary_fails_before_extraction(source, coco_mini, tmp_path, capsys,
                                                                          monkeypatch):
    import skimage.data

    import image2vec.datasets

    monkeypatch.setattr(image2vec.datasets, "extract_features", lambda *a, **k: pytest.fail("extracted"))
    data = (["--captions", str(coco_mini / "annotations" / "captions_train2017.json"),
             "--images", str(coco_mini / "train2017")] if source == "captions" else
            ["--tags", str(SAMPLE_TSV),
             "--images", skimage.data.data_dir, "--model", "weak-tag"])
    status = main(["train", *data, "--min-count", "1000", "--out", str(tmp_path / "m.npz"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "the vocabulary is empty" in err and "min_count=1000" in err
    assert len(err.strip().splitlines()) == 1
