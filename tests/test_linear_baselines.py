"""The linear baselines ``ridge`` (reduced-rank ridge) and ``cca`` (mean GloVe vector + CCA).

Checked against scikit-learn (``Ridge``, ``CCA``) and numpy on planted data. GloVe is replaced
by small planted word vectors (``fake_glove``), except in the one test of the real vectors.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.linalg import subspace_angles
from sklearn.cross_decomposition import CCA
from sklearn.linear_model import Ridge
from tolerance import assert_close

from image2vec import systems
from image2vec.baselines import linear
from image2vec.baselines.imnet_glove import WordVectors, load_glove
from image2vec.baselines.linear import MeanVectorCCA, ReducedRankRidge, regularized_cca

WORDS = [f"word{v}" for v in range(12)]


def preprocessed(F, mean):
    """Centred with ``mean`` and L2-normalised per image, computed here independently."""
    centred = F - mean
    return centred / np.linalg.norm(centred, axis=1, keepdims=True)


@pytest.fixture
def fake_glove(monkeypatch):
    """Planted 16-d word vectors for WORDS (and nothing else) in place of GloVe."""
    vectors = np.random.default_rng(7).standard_normal((len(WORDS), 16))
    glove = WordVectors(words=WORDS, vectors=vectors, index={w: i for i, w in enumerate(WORDS)})
    monkeypatch.setattr(linear, "load_glove", lambda: glove)
    return glove


def bags_of_words(n, seed=0, noise=0.02):
    """Images whose features are the sum of their 3 words' (orthonormal) prototypes plus noise.

    Returns features F (n, 20) and binary targets X (n, 12), each row a random set of 3 words.
    """
    rng = np.random.default_rng(seed)
    prototypes = np.linalg.qr(np.random.default_rng(99).standard_normal((20, len(WORDS))))[0].T
    X = np.zeros((n, len(WORDS)))
    for row in X:
        row[rng.choice(len(WORDS), 3, replace=False)] = 1
    F = X @ prototypes + noise * rng.standard_normal((n, 20)) + 3.0
    return F, X


def distinct(X, n):
    """The first n rows of X with word sets that no earlier row has (a query has one right image)."""
    return np.sort(np.unique(X, axis=0, return_index=True)[1])[:n]


# --- ridge ---------------------------------------------------------------------------------


def test_ridge_is_sklearn_ridge_truncated_by_svd():
    rng = np.random.default_rng(0)
    F, X = rng.standard_normal((200, 15)), (rng.random((200, 10)) < 0.3) * rng.random((200, 10))
    F_new = rng.standard_normal((7, 15))
    model = ReducedRankRidge(alpha=3.0, dim=4).fit(F, sp.csr_matrix(X))
    mean = F.mean(axis=0)
    ridge = Ridge(alpha=3.0).fit(preprocessed(F, mean), X)
    fitted = ridge.predict(preprocessed(F, mean))
    Vt = np.linalg.svd(fitted - fitted.mean(axis=0))[2][:4]
    new = ridge.predict(preprocessed(F_new, mean))
    expected = (new - fitted.mean(axis=0)) @ Vt.T @ Vt + fitted.mean(axis=0)
    np.testing.assert_allclose(model.decision_function(F_new), expected, atol=1e-10)
    np.testing.assert_allclose(np.abs(model.components_ @ Vt.T), np.eye(4), atol=1e-8)


def test_ridge_recovers_a_planted_low_rank_map():
    rng = np.random.default_rng(1)
    F = rng.standard_normal((3000, 12)) + 1.0
    Fp = preprocessed(F, F.mean(axis=0))
    B = rng.standard_normal((12, 3)) @ rng.standard_normal((3, 25))  # rank 3
    clean = Fp @ B
    clean -= clean.min() - 1.0  # targets must be >= 0
    model = ReducedRankRidge(alpha=1e-6, dim=3).fit(F, clean + 0.05 * rng.standard_normal(clean.shape))
    error = model.decision_function(F) - clean
    assert np.sqrt((error**2).mean()) < 0.01 * clean.std()


def test_ridge_summaries_name_the_planted_words_and_queries_find_their_image():
    F, X = bags_of_words(400)
    model = ReducedRankRidge(dim=12, alpha=0.01).fit(F[:300], X[:300], words=WORDS)
    summary = model.summarize(F[300:], k=3)
    truth = [{WORDS[v] for v in np.flatnonzero(row)} for row in X[300:]]
    assert [set(words) for words in summary.words] == truth
    rows = 300 + distinct(X[300:], 20)
    scores = model.retrieval_scores(F[rows], sp.csr_matrix(X[rows]))
    assert scores.shape == (20, 20)
    assert (scores.argmax(axis=1) == np.arange(20)).all()


def test_ridge_caps_dim_with_a_warning():
    F, X = bags_of_words(50)
    with pytest.warns(UserWarning, match="dim=256 exceeds .* = 12; using dim=12"):
        model = ReducedRankRidge().fit(F, X, words=WORDS)
    assert model.dim_ == 12 and model.coef_.shape == (20, 12)


# --- cca ----------------------------------------------------------------------------------


def sklearn_scores(A, B, k):
    """Canonical correlations and the projected training data of scikit-learn's CCA."""
    cca = CCA(n_components=k, max_iter=5000, tol=1e-12).fit(A, B)
    x, y = cca.transform(A, B)
    return np.array([np.corrcoef(x[:, i], y[:, i])[0, 1] for i in range(k)]), x, y


def test_regularized_cca_matches_sklearn_on_two_views_of_shared_factors():
    rng = np.random.default_rng(2)
    latent = rng.standard_normal((4000, 3)) * [3.0, 2.0, 1.0]
    A = latent @ rng.standard_normal((3, 8)) + rng.standard_normal((4000, 8))
    B = latent @ rng.standard_normal((3, 6)) + rng.standard_normal((4000, 6))
    A, B = A - A.mean(axis=0), B - B.mean(axis=0)
    W_a, W_b, s = regularized_cca(A, B, 1e-10, 1e-10)
    assert W_a.shape == (8, 6) and W_b.shape == (6, 6) and np.all(np.diff(s) <= 0)
    ours = np.array([np.corrcoef(A @ W_a[:, i], B @ W_b[:, i])[0, 1] for i in range(6)])
    np.testing.assert_allclose(ours, s, atol=1e-8)  # s are the correlations of the projections
    np.testing.assert_allclose(np.cov((A @ W_a).T, bias=True), np.eye(6), atol=1e-8)
    theirs, x, y = sklearn_scores(A, B, 3)
    np.testing.assert_allclose(s[:3], theirs, atol=1e-4)
    assert s[0] > 0.9 and s[3] < 0.1  # three shared factors
    assert np.max(subspace_angles(A @ W_a[:, :3], x)) < 1e-3
    assert np.max(subspace_angles(B @ W_b[:, :3], y)) < 1e-3


def test_cca_is_cca_of_preprocessed_features_and_mean_word_vectors(fake_glove):
    F, X = bags_of_words(600, noise=0.3)
    X = X * np.random.default_rng(3).random(X.shape)  # weighted means
    model = MeanVectorCCA(reg=1e-10, text_reg=1e-10, n_components=4).fit(F, X, words=WORDS)
    texts = X @ fake_glove.vectors / X.sum(axis=1, keepdims=True)
    Fp = preprocessed(F, F.mean(axis=0))
    theirs, x, y = sklearn_scores(Fp, texts, 4)
    np.testing.assert_allclose(model.correlations_, theirs, atol=1e-4)
    ours = (Fp - Fp.mean(axis=0)) @ model.image_weights_
    assert np.max(subspace_angles(ours, x)) < 1e-3
    assert np.max(subspace_angles((texts - texts.mean(axis=0)) @ model.text_weights_, y)) < 1e-3


def test_cca_summaries_name_the_planted_words_and_queries_find_their_image(fake_glove):
    F, X = bags_of_words(400)
    model = MeanVectorCCA(n_components=12).fit(F[:300], X[:300], words=WORDS)
    summary = model.summarize(F[300:], k=3)
    truth = [{WORDS[v] for v in np.flatnonzero(row)} for row in X[300:]]
    assert [set(words) for words in summary.words] == truth
    rows = 300 + distinct(X[300:], 20)
    scores = model.retrieval_scores(F[rows], sp.csr_matrix(X[rows]))
    assert scores.shape == (20, 20) and (scores.argmax(axis=1) == np.arange(20)).all()
    assert_close(scores, model.embed_texts(X[rows]) @ model.embed_images(F[rows]).T, rtol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(model.embed_images(F[:5]), axis=1), 1)


def test_cca_words_without_vectors_are_never_chosen_and_images_without_any_are_left_out(fake_glove):
    F, X = bags_of_words(100)
    words = ["qzxv", *WORDS[1:]]  # word 0 has no vector
    X[:10] = 0
    X[:10, 0] = 1  # ten images described by that word only
    model = MeanVectorCCA(n_components=10).fit(F, X, words=words)
    assert not model.has_vector_[0] and model.has_vector_[1:].all()
    assert (model.decision_function(F)[:, 0] == -1).all()
    assert_close(model.preprocessed_mean_, preprocessed(F, F.mean(axis=0))[10:].mean(axis=0), rtol=1e-7)
    assert not model.embed_texts(X[:2]).any()  # no known word: no text vector, cosine 0


def test_cca_caps_n_components_with_a_warning(fake_glove):
    F, X = bags_of_words(100)
    with pytest.warns(UserWarning, match="n_components=50 exceeds the canonical pairs available = 16"):
        model = MeanVectorCCA().fit(F, X, words=WORDS)
    assert model.n_components_ == 16 and model.image_weights_.shape == (20, 16)


@pytest.mark.slow
def test_cca_takes_its_word_vectors_from_glove():
    glove = load_glove()
    words = ["dog", "ice cream", "qzxvqzxv"]
    F, X = bags_of_words(30)
    model = MeanVectorCCA(n_components=2).fit(F, X[:, :3] + 0.1, words=words)
    np.testing.assert_array_equal(model.has_vector_, [True, True, False])
    np.testing.assert_allclose(model.word_vectors_[0], glove.lookup(["dog"])[0][0])
    np.testing.assert_allclose(model.word_vectors_[1], glove.lookup(["ice", "cream"])[0].mean(axis=0))


# --- both ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "name", "value"), [
    (ReducedRankRidge, "alpha", -1.0), (ReducedRankRidge, "alpha", float("nan")),
    (ReducedRankRidge, "alpha", "1"), (ReducedRankRidge, "dim", 0), (ReducedRankRidge, "dim", 2.5),
    (ReducedRankRidge, "dim", True),
    (MeanVectorCCA, "reg", -0.1), (MeanVectorCCA, "reg", float("nan")), (MeanVectorCCA, "text_reg", -1e-3),
    (MeanVectorCCA, "text_reg", None), (MeanVectorCCA, "n_components", 0),
    (MeanVectorCCA, "n_components", 51), (MeanVectorCCA, "n_components", 3.0),
    (MeanVectorCCA, "power", -1.0), (MeanVectorCCA, "power", float("inf")), (MeanVectorCCA, "power", False),
])
def test_bad_settings_are_refused_by_name_before_any_work(cls, name, value):
    with pytest.raises(ValueError, match=name):
        cls(**{name: value}).check_params()
    with pytest.raises(ValueError, match=name):
        cls(**{name: value}).fit(None, None)  # refused before the data is looked at


@pytest.mark.parametrize("cls", [ReducedRankRidge, MeanVectorCCA])
def test_negative_targets_are_refused(cls):
    F, X = bags_of_words(20)
    with pytest.raises(ValueError, match=">= 0"):
        cls().fit(F, -X, words=WORDS)


@pytest.mark.parametrize(("name", "params"), [("ridge", {"dim": 5}), ("cca", {"n_components": 5})])
def test_save_and_load_round_trip(tmp_path, fake_glove, name, params):
    F, X = bags_of_words(60)
    system = systems.make_system(name, params).fit(F[:50], X[:50], words=WORDS)
    systems.save(system, tmp_path / "m.npz")
    loaded, _ = systems.load(tmp_path / "m.npz")
    assert type(loaded) is type(system) and systems.system_name(loaded) == name
    np.testing.assert_allclose(loaded.decision_function(F[50:]), system.decision_function(F[50:]))
    np.testing.assert_allclose(loaded.retrieval_scores(F[50:], X[50:]), system.retrieval_scores(F[50:], X[50:]))
    assert loaded.summarize(F[50:], k=2).words == system.summarize(F[50:], k=2).words


def test_a_file_with_inconsistent_arrays_is_refused(tmp_path, fake_glove):
    from image2vec.errors import Image2VecError

    F, X = bags_of_words(60)
    for system in (ReducedRankRidge(dim=5), MeanVectorCCA(n_components=5)):
        system.fit(F, X, words=WORDS)
        system.feature_mean_ = system.feature_mean_[:-1]
        systems.save(system, tmp_path / "bad.npz")
        with pytest.raises(Image2VecError, match="inconsistent"):
            systems.load(tmp_path / "bad.npz")


def test_the_registry_and_the_command_line_names_agree():
    assert {"cca", "ridge"} <= set(systems.SYSTEM_NAMES)
    assert systems.BASELINES["cca"] is MeanVectorCCA and systems.BASELINES["ridge"] is ReducedRankRidge
