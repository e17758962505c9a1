"""Caption analysis, vocabulary and targets X, checked against what coco-mini's captions say."""

from __future__ import annotations

import functools
import json
import logging
import re

import numpy as np
import pytest
import scipy.sparse as sp

import image2vec.datasets as datasets_mod
import image2vec.vocabulary as vocab_mod
from image2vec.coco import load_coco_split
from image2vec.errors import Image2VecError
from image2vec.features import FeatureSet
from image2vec.vocabulary import (
    SMALL_DATA_IMAGES,
    CaptionAnalyzer,
    Vocabulary,
    analyze_captions,
    build_vocabulary,
    default_min_count,
    load_wordnet,
    targets,
)

# Everyday nouns with regular plurals: a caption "contains" one when a regex finds it.
REGULAR_NOUNS = ("table", "street", "dog", "kitchen", "plate", "tree", "cake", "giraffe")


@pytest.fixture(scope="module")
def data(coco_mini):
    return load_coco_split(coco_mini, "train2017")


@pytest.fixture(scope="module")
def analyzer():
    return CaptionAnalyzer()


@pytest.fixture(scope="module")
def docs(data, analyzer):
    return analyze_captions(data.captions, analyzer, progress=False)


@pytest.fixture(scope="module")
def vocab(docs):
    return build_vocabulary(docs, min_count=2)


def _mentions(caption: str, pattern: str) -> bool:
    return re.search(rf"\b(?:{pattern})\b", caption.lower()) is not None


def test_wordnet_is_readable():
    wn = load_wordnet()
    assert wn.synsets("horse", "n")[0].lexname() == "noun.animal"
    assert wn.morphy("dogs", "n") == "dog"
    assert wn.morphy("geese", "n") == "goose"  # from the exception list noun.exc


class _NoNltkWordnet:
    """Stands in for ``nltk.corpus.wordnet`` where NLTK's own WordNet data is not installed."""

    def ensure_loaded(self):
        raise LookupError("Resource 'wordnet' not found")


@pytest.fixture
def no_nltk_wordnet(monkeypatch):
    import nltk.corpus

    monkeypatch.setattr(nltk.corpus, "wordnet", _NoNltkWordnet())
    load_wordnet.cache_clear()
    yield
    load_wordnet.cache_clear()


def test_debian_wordnet_folder_is_built(tmp_path, monkeypatch, no_nltk_wordnet):
    """Without NLTK's own data, Debian's files become an NLTK corpus with a right lexnames."""
    if not (vocab_mod.DEBIAN_WORDNET / "data.noun").is_file():
        pytest.skip("Debian's wordnet-base is not installed")
    monkeypatch.setenv("IMAGE2VEC_CACHE", str(tmp_path))
    wn = load_wordnet()
    folder = tmp_path / "nltk_data" / "corpora" / "wordnet-debian"
    assert (folder / "lexnames").read_text().splitlines()[5] == "05\tnoun.animal\t1"
    assert wn.synsets("bread", "n")[0].lexname() == "noun.food"
    assert wn.synsets("run", "v")[0].lexname() == "verb.motion"


def test_missing_wordnet_is_a_clear_error(tmp_path, monkeypatch, no_nltk_wordnet):
    monkeypatch.setenv("IMAGE2VEC_WORDNET_DIR", str(tmp_path))
    with pytest.raises(Image2VecError, match="apt-get install wordnet-base"):
        load_wordnet()


def test_caption_to_nouns_and_adjectives():
    analyze = CaptionAnalyzer(tagger="wordnet")
    assert analyze("Two dogs sitting on a red couch.") == ["dog", "red", "couch"]
    assert analyze("Men riding horses on the beaches!") == ["man", "horse", "beach"]
    assert analyze("The a of and") == []


def test_verbs_join_the_vocabulary_in_their_base_form_when_asked():
    analyze = CaptionAnalyzer(tagger="wordnet", pos=("noun", "adj", "verb"))
    assert analyze("A dog is running through the green grass.") == ["dog", "run", "green", "grass"]
    assert analyze("Two kids climbing a rock.") == ["kid", "climb", "rock"]
    assert CaptionAnalyzer(tagger="wordnet")("Two kids climbing a rock.") == ["kid", "rock"]
    with pytest.raises(Image2VecError, match="pos must be one or more of noun, adj, verb, not 'adverb'"):
        CaptionAnalyzer(pos=["noun", "adverb"])


def test_a_typed_word_finds_the_lemmas_captions_are_reduced_to(monkeypatch):
    analyze = CaptionAnalyzer(tagger="wordnet", pos=("noun", "adj", "verb"))
    for typed in ("dogs", "running", "children", "climbing"):
        [lemma] = analyze(f"the {typed}")
        assert vocab_mod.base_forms(typed) == [lemma]  # dog, run, child, climb
    assert vocab_mod.base_forms(" Dogs ") == ["dog"]
    assert vocab_mod.base_forms("dog") == [] and vocab_mod.base_forms("xyzzy") == []

    def missing():
        raise Image2VecError("WordNet is not installed")

    monkeypatch.setattr(vocab_mod, "load_wordnet", missing)
    assert vocab_mod.base_forms("dogs") == []  # no WordNet: no other form, no error


def test_perceptron_verb_tags_are_kept_only_when_asked(monkeypatch):
    class Tagger:
        def tag(self, tokens):
            tags = {"dogs": "NNS", "jumped": "VBD", "high": "JJ"}
            return [(t, tags.get(t, "DT")) for t in tokens]

    monkeypatch.setattr(vocab_mod, "_perceptron_tagger", Tagger)
    assert CaptionAnalyzer("perceptron", pos=("noun", "verb"))("dogs jumped high") == ["dog", "jump"]
    assert CaptionAnalyzer("perceptron")("dogs jumped high") == ["dog", "high"]


def test_a_verb_vocabulary_keeps_the_truth_to_nouns_and_adjectives(monkeypatch, coco_mini, data):
    """Targets and captions hold the verbs; the truth summaries are scored against does not; the
    vocabulary records its parts of speech and a later load with it analyses the same way."""
    features = FeatureSet(np.zeros((len(data), 4), np.float32), None, list(data.image_ids),
                          [str(p) for p in data.paths], [], {"extractor": "none"})
    monkeypatch.setattr(datasets_mod, "extract_features", lambda *args, **kwargs: features)
    captions = coco_mini / "annotations" / "captions_train2017.json"
    load = functools.partial(datasets_mod.load_caption_data, captions, coco_mini / "train2017",
                             store="unused", progress=False)
    plain, verbs = load(), load(pos=("noun", "adj", "verb"))
    assert verbs.vocabulary.info["pos"] == ["noun", "adj", "verb"]
    assert plain.vocabulary.info["pos"] == ["noun", "adj"]
    as_verbs = [verbs.vocabulary.index(word) for word in ("sit", "stand", "hold")]  # never nouns here
    assert verbs.targets[:, as_verbs].nnz > 30 and verbs.captions[:, as_verbs].nnz > 30
    assert verbs.truth[:, as_verbs].nnz == 0
    shared = [verbs.vocabulary.index(word) for word in plain.vocabulary.words]
    assert (verbs.truth[:, shared] != plain.truth).nnz == 0
    again = load(vocabulary=verbs.vocabulary)
    assert (again.targets != verbs.targets).nnz == 0


def test_tagger_path_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="image2vec.vocabulary"):
        analyzer = CaptionAnalyzer()
    assert analyzer.backend in ("perceptron", "wordnet")
    expected = "perceptron tagger" if analyzer.backend == "perceptron" else "most frequent sense"
    assert expected in caplog.text and "WordNet from" in caplog.text


def test_perceptron_tags_decide_when_present(monkeypatch):
    """With a tagger, its Penn tags decide; WordNet only lemmatises."""
    class Tagger:
        def tag(self, tokens):
            tags = {"red": "JJ", "couches": "NNS", "sitting": "VBG", "light": "VB"}
            return [(t, tags.get(t, "DT")) for t in tokens]

    monkeypatch.setattr(vocab_mod, "_perceptron_tagger", Tagger)
    analyzer = CaptionAnalyzer(tagger="perceptron")
    assert analyzer.backend == "perceptron"
    assert analyzer("red couches sitting light") == ["red", "couch"]


def test_perceptron_requested_without_data(monkeypatch):
    monkeypatch.setattr(vocab_mod, "_perceptron_tagger", lambda: None)
    with pytest.raises(Image2VecError, match="tagger='wordnet'"):
        CaptionAnalyzer(tagger="perceptron")


def test_vocabulary_counts_match_the_captions(data, vocab):
    """Each everyday noun's count is the number of images whose captions mention it."""
    checked = 0
    for word in REGULAR_NOUNS:
        n_images = sum(any(_mentions(c, f"{word}s?") for c in caps) for caps in data.captions)
        if n_images >= 2:
            assert vocab.count(word) == n_images, word
            checked += 1
    men = sum(any(_mentions(c, "man|men") for c in caps) for caps in data.captions)
    assert vocab.count("man") == men
    assert checked >= 6


def test_vocabulary_content(data, docs, vocab):
    assert all(c >= 2 for c in vocab.counts)
    assert list(vocab.counts) == sorted(vocab.counts, reverse=True)
    for word in ("sitting", "standing", "the", "with", "dogs", "tables"):
        assert word not in vocab  # verbs, stop words and plurals never appear
    assert all(w == w.lower() for w in vocab)
    rare = {w for doc in docs for words in doc for w in words} - set(vocab)
    assert rare, "coco-mini has words in a single image"
    singles = build_vocabulary(docs, min_count=1)
    assert rare <= set(singles) and set(vocab) < set(singles)
    assert all(singles.count(w) == 1 for w in rare)


def test_max_size_keeps_most_frequent(docs, vocab):
    top = build_vocabulary(docs, min_count=2, max_size=10)
    assert top.words == vocab.words[:10]


def test_targets_are_caption_fractions(data, docs, vocab):
    X = targets(docs, vocab)
    assert sp.isspmatrix_csr(X) and X.dtype == np.float32
    assert X.shape == (len(data), len(vocab))
    for word in ("table", "dog", "street"):
        v = vocab.index(word)
        expected = [np.mean([_mentions(c, f"{word}s?") for c in caps]) for caps in data.captions]
        np.testing.assert_allclose(X[:, v].toarray().ravel(), expected, rtol=1e-6)
    # every stored entry is a fraction of five captions, and each image has some word
    np.testing.assert_allclose(np.round(X.data * 5), X.data * 5, atol=1e-5)
    assert X.data.min() > 0 and X.data.max() <= 1
    assert np.all(np.diff(X.indptr) > 0)
    # column sums of the binary variant are the vocabulary counts
    B = targets(docs, vocab, binary=True)
    np.testing.assert_array_equal(B.toarray(), (X.toarray() > 0).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(B.sum(axis=0)).ravel(), vocab.counts)


def test_save_load_roundtrip(tmp_path, vocab):
    path = tmp_path / "vocab.json"
    vocab.save(path)
    back = Vocabulary.load(path)
    assert back.words == vocab.words and back.n_images == 80
    np.testing.assert_array_equal(back.counts, vocab.counts)
    assert back.info["min_count"] == 2
    assert json.loads(path.read_text())["counts"][0] == vocab.counts[0]


def test_load_bad_vocabulary_file(tmp_path):
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(Image2VecError, match="not valid JSON"):
        Vocabulary.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"words": []}')
    with pytest.raises(Image2VecError, match="not an image2vec vocabulary"):
        Vocabulary.load(tmp_path / "other.json")


@pytest.mark.parametrize("key", ["words", "counts", "n_images"])
def test_load_vocabulary_without_a_key(tmp_path, vocab, key):
    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text())
    del data[key]
    path.write_text(json.dumps(data))
    with pytest.raises(Image2VecError, match=f"^vocabulary file {path} lacks '{key}'$"):
        Vocabulary.load(path)


def test_load_malformed_or_unreadable_vocabulary(tmp_path, vocab):
    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(data, counts=data["counts"][:-1])))
    with pytest.raises(Image2VecError, match=f"^vocabulary file {path} is malformed: .* counts"):
        Vocabulary.load(path)
    with pytest.raises(Image2VecError, match=f"^vocabulary file {tmp_path} is a folder"):
        Vocabulary.load(tmp_path)
    path.write_bytes(b"\xff{}")
    with pytest.raises(Image2VecError, match="is not UTF-8"):
        Vocabulary.load(path)


def test_default_min_count_small_data(docs, vocab):
    """coco-mini (80 images) is small data: the default is 2, and the info says so."""
    auto = build_vocabulary(docs)
    assert auto.words == vocab.words
    assert auto.info["min_count"] == 2


def test_default_min_count_large_data():
    """From SMALL_DATA_IMAGES images on, the default is 5 (COCO)."""
    assert default_min_count(SMALL_DATA_IMAGES - 1) == 2
    assert default_min_count(SMALL_DATA_IMAGES) == 5
    caption = ["man", "street"]
    rare = [[caption, ["dog"]]] * 4  # "dog" in 4 images: kept with min_count 2, not with 5
    large = build_vocabulary(rare + [[caption]] * (SMALL_DATA_IMAGES - 4))
    assert large.info["min_count"] == 5 and set(large) == {"man", "street"}
    small = build_vocabulary(rare + [[caption]] * (SMALL_DATA_IMAGES - 5))
    assert small.info["min_count"] == 2 and "dog" in small
    explicit = build_vocabulary(rare, min_count=4, info={"min_count": 99, "source": "x"})
    assert explicit.info == {"min_count": 4, "max_size": None, "source": "x"}


@pytest.mark.parametrize("tagger", ["perceptron", "wordnet"])
def test_saved_vocabulary_says_which_tagger_built_it(tmp_path, monkeypatch, tagger):
    class Tagger:  # stands in for NLTK's perceptron, whose data may not be installed
        def tag(self, tokens):
            return [(t, "NNS" if t.endswith("s") else "NN") for t in tokens]

    monkeypatch.setattr(vocab_mod, "_perceptron_tagger", Tagger)
    analyzer = CaptionAnalyzer(tagger=tagger)
    docs = analyze_captions([["Two dogs on a couch."], ["A dog on a couch."]], analyzer,
                            progress=False)
    build_vocabulary(docs, analyzer=analyzer).save(tmp_path / "vocab.json")
    back = Vocabulary.load(tmp_path / "vocab.json")
    assert back.info["tagger"] == tagger and set(back) == {"dog", "couch"}


def test_load_caption_data_records_min_count_and_tagger(monkeypatch, coco_mini, data):
    """The data loader's vocabulary: default min_count 2 on coco-mini, the tagger path used."""
    features = FeatureSet(np.zeros((len(data), 4), np.float32), None, list(data.image_ids),
                          [str(p) for p in data.paths], [], {"extractor": "none"})
    monkeypatch.setattr(datasets_mod, "extract_features", lambda *args, **kwargs: features)
    captions = coco_mini / "annotations" / "captions_train2017.json"
    loaded = datasets_mod.load_caption_data(captions, coco_mini / "train2017", store="unused",
                                            progress=False)
    info = loaded.vocabulary.info
    assert info["min_count"] == 2 and info["source"] == str(captions)
    assert info["tagger"] == CaptionAnalyzer().backend
    assert all(c >= 2 for c in loaded.vocabulary.counts)


def test_empty_vocabulary_suggests_lower_min_count(docs):
    with pytest.raises(Image2VecError, match="vocabulary is empty.*lower min_count"):
        build_vocabulary(docs, min_count=1000)


def test_words_outside_vocabulary_are_ignored():
    v = Vocabulary(["cat", "dog"], [2, 1], n_images=2)
    X = targets([[["cat", "zebra"], ["cat", "dog", "cat"]], [["zebra"]]], v)
    np.testing.assert_allclose(X.toarray(), [[1.0, 0.5], [0.0, 0.0]])
    with pytest.raises(Image2VecError, match="distinct"):
        Vocabulary(["a", "a"], [1, 1], 1)
