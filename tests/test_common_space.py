"""CVS / M-CVS / RVS as summarizers: planted words, the registry's save/load, the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from image2vec import systems
from image2vec.baselines import CommonSpaceSummarizer
from image2vec.cli import main
from image2vec.errors import Image2VecError

torch.set_num_threads(1)

SMALL = dict(hidden_size=32, attention_size=32, max_epochs=30)
WORDS = [f"w{v}" for v in range(12)]


def planted(n=300, n_clusters=6, p=20, seed=0):
    """Images in clusters; cluster c always has word c, plus a random other word 30% of the time.

    Returns features F (n x p), sparse word targets (n x 12) and the cluster of each image.
    """
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, n_clusters, n)
    targets = np.zeros((n, len(WORDS)), dtype=np.float32)
    targets[np.arange(n), cluster] = 1.0
    targets[np.arange(n), rng.integers(n_clusters, len(WORDS), n)] = rng.random(n) < 0.3
    centres = rng.standard_normal((n_clusters, 8))
    F = (centres[cluster] + 0.3 * rng.standard_normal((n, 8))) @ rng.standard_normal((8, p))
    return F, sp.csr_matrix(targets), cluster


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.mark.parametrize("variant", ["cvs", "mcvs", "rvs"])
def test_planted_words_are_recovered(data, variant):
    F, targets, cluster = data
    system = systems.make_system(variant, **SMALL).fit(F[:200], targets[:200], words=WORDS)
    assert system.variant == variant
    summary = system.summarize(F[200:], 2)
    assert np.mean(summary.indices[:, 0] == cluster[200:]) > 0.9
    assert summary.words[0][0] == WORDS[summary.indices[0, 0]]
    scores = system.decision_function(F[200:])
    assert scores.shape == (100, len(WORDS)) and np.all(np.abs(scores) <= 1 + 1e-6)
    # a word's score is the cosine of the image alone and the word as a one-word text
    one_word_texts = system.embed_texts(sp.identity(len(WORDS), format="csr"))
    np.testing.assert_allclose(scores, system.embed_images(F[200:]) @ one_word_texts.T,
                               atol=1e-6)
    assert np.all(np.diff(summary.scores, axis=1) <= 0)
    np.testing.assert_allclose(np.take_along_axis(scores, summary.indices, axis=1),
                               summary.scores, atol=1e-6)
    stages = [stage["modalities"] for stage in system.model_.stages_]
    assert stages == {"cvs": [["image", "text"]], "mcvs": [["image"], ["text"]],
                      "rvs": [["image"], ["text"]]}[variant]


def test_category_labels_are_used(data):
    F, targets, cluster = data
    labels = np.eye(6)[cluster]
    system = CommonSpaceSummarizer(**SMALL).fit(F, targets, words=WORDS, labels=labels)
    assert system.model_.n_classes_ == 6
    with pytest.raises(ValueError, match="labels has 10 rows"):
        CommonSpaceSummarizer(**SMALL).fit(F, targets, labels=labels[:10])


def test_text_and_image_embeddings_share_the_space(data):
    F, targets, cluster = data
    system = CommonSpaceSummarizer(**SMALL).fit(F, targets, words=WORDS)
    images, texts = system.embed_images(F), system.embed_texts(targets)
    assert images.shape == texts.shape == (300, 32)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    nearest = np.argmax(images @ texts.T, axis=1)
    assert np.mean(cluster[nearest] == cluster) > 0.9
    with pytest.raises(ValueError, match="3 word columns"):
        system.embed_texts(np.ones((2, 3)))


@pytest.mark.parametrize("variant", ["cvs", "mcvs", "rvs"])
def test_save_load_round_trip_is_bit_identical(data, variant, tmp_path):
    F, targets, _ = data
    system = systems.make_system(variant, **{**SMALL, "max_epochs": 5}, random_state=3).fit(
        F, targets, words=WORDS)
    systems.save(system, tmp_path / "model.npz")
    loaded, _ = systems.load(tmp_path / "model.npz")
    assert systems.system_name(loaded) == variant and loaded.get_params() == system.get_params()
    np.testing.assert_array_equal(loaded.embed_images(F), system.embed_images(F))
    np.testing.assert_array_equal(loaded.embed_texts(targets), system.embed_texts(targets))
    np.testing.assert_array_equal(loaded.decision_function(F), system.decision_function(F))
    assert loaded.summarize(F, 3).words == system.summarize(F, 3).words
    assert loaded.history_ == system.history_
    assert loaded.model_.stages_ == system.model_.stages_
    with np.load(tmp_path / "model.npz", allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["weights_"] = arrays["weights_"][:-1]
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(Image2VecError, match="inconsistent: the weights have"):
        systems.load(tmp_path / "cut.npz")


def test_bad_variant_is_refused(data):
    F, targets, _ = data
    with pytest.raises(ValueError, match="variant must be one of cvs, mcvs, rvs"):
        CommonSpaceSummarizer(variant="dcmh").fit(F, targets)


def test_train_cvs_with_instances_then_evaluate(coco_mini, tmp_path, capsys):
    annotations = coco_mini / "annotations"
    model = tmp_path / "cvs.npz"
    common = ["--captions", str(annotations / "captions_train2017.json"),
              "--images", str(coco_mini / "train2017"), "--features", str(tmp_path / "store"),
              "--quiet"]
    assert main(["train", *common, "--model", "cvs", "--instances",
                 str(annotations / "instances_train2017.json"), "--out", str(model)]) == 0
    loaded, _ = systems.load(model)
    assert systems.system_name(loaded) == "cvs" and loaded.model_.n_classes_ == 80
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), *common, "--json", "--instances",
                 str(annotations / "instances_train2017.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_images"] == 80 and 0 < result["precision"] <= 1 and 0 < result["map"] <= 1
    # Cross-modal retrieval on its own training images, relevance = a shared COCO category:
    # random embeddings score about 0.35 on these labels (mean of 20 draws).
    assert 0.5 < result["map@50 i2t"] <= 1 and 0.5 < result["map@50 t2i"] <= 1
