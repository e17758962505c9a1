"""The Image2Vec estimator on planted data, scikit-learn's estimator checks, persistence."""

import json
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
from scipy.optimize import lsq_linear
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks
from tolerance import assert_close

from image2vec import model as model_module
from image2vec import names, systems
from image2vec.arrays import preprocess_features
from image2vec.errors import Image2VecError
from image2vec.model import Image2Vec
from solvers import ObjectiveTerms, random_orthonormal_rows, sufficient_stats
from solvers import objective as objective_value
from solvers import tag_weights as tag_weights_module
from solvers.tag_weights import TagWeightStep


def planted_words(n=900, p=48, d=16, n_visual=24, n_nonvisual=8, noise=0.3, seed=0):
    """Images whose features are the sum of their visual words' vectors (mapped by W*) + noise.

    Every image has 3 visual words and 2 non-visual words (vectors of zero norm: nothing in the
    image shows them).
    """
    rng = np.random.default_rng(seed)
    n_words = n_visual + n_nonvisual
    d_true = rng.standard_normal((d, n_words))
    d_true[:, n_visual:] = 0
    w_true = random_orthonormal_rows(d, p, seed + 1)
    X = np.zeros((n, n_words))
    for row in X:
        row[rng.choice(n_visual, 3, replace=False)] = 1
        if n_nonvisual:
            row[n_visual + rng.choice(n_nonvisual, 2, replace=False)] = 1
    F = (X @ d_true.T) @ w_true + noise * rng.standard_normal((n, p))
    return F, X, w_true, d_true, n_visual


def visual_recall(model, F, X, n_visual, k=3):
    summary = model.summarize(F, k=k)
    hits = [X[i, [v for v in row if 0 <= v < n_visual]].sum() for i, row in enumerate(summary.indices)]
    return np.sum(hits) / (3 * len(F))


@pytest.mark.parametrize("model", ["reduced-rank", "learn-all", "simple"])
def test_l2_recovers_planted_words_better_than_ip(model):
    F, X, _, _, n_visual = planted_words()
    train, test = slice(0, 700), slice(700, None)
    recall = {
        objective: visual_recall(
            Image2Vec(model=model, objective=objective, dim=16, normalize=False, random_state=0)
            .fit(F[train], X[train]),
            F[test], X[test], n_visual)
        for objective in ("l2", "ip")
    }
    assert recall["l2"] > recall["ip"] + 0.01
    assert recall["l2"] > 0.7


@pytest.mark.parametrize("model, ratio", [("learn-all", 0.2), ("reduced-rank", 0.35)])
def test_l2_shrinks_nonvisual_words(model, ratio):
    F, X, _, _, n_visual = planted_words()
    norms = np.linalg.norm(Image2Vec(model=model, dim=16, lam=1e-3, normalize=False).fit(F, X).dictionary_, axis=0)
    assert norms[n_visual:].max() < ratio * np.median(norms[:n_visual])


def test_learn_all_recovers_the_planted_map_up_to_rotation():
    F, X, w_true, _, _ = planted_words(noise=0.0, n_nonvisual=0)
    model = Image2Vec(model="learn-all", dim=16, normalize=False, lam=1e-8).fit(F, X)
    angles = scipy.linalg.subspace_angles(model.image_map_.T, w_true.T)
    assert angles.max() < 1e-6


def test_reduced_rank_is_reduced_rank_ridge_on_the_preprocessed_features():
    """Scores D^T W f' equal the rank-d projection of ridge predictions (sklearn Ridge + NumPy SVD)."""
    from sklearn.linear_model import Ridge

    F, X, _, _, _ = planted_words(n=400)
    model = Image2Vec(dim=8, lam=1e-3).fit(F, X)
    prepared = model._preprocess(F)
    n = len(F)
    ridge = Ridge(alpha=n * 1e-3).fit(prepared, X)
    # Reduced-rank ridge (Mukherjee and Zhu 2011): project on the top right singular vectors of
    # the fitted values of the augmented problem, [F'; sqrt(N lam) I] B.
    centred = prepared - prepared.mean(axis=0)
    augmented = np.vstack([centred @ ridge.coef_.T, np.sqrt(n * 1e-3) * ridge.coef_.T])
    _, _, vt = np.linalg.svd(augmented, full_matrices=False)
    projection = vt[:8].T @ vt[:8]  # onto the span of the word vectors' rows
    np.testing.assert_allclose(model.dictionary_.T @ model.dictionary_, projection, atol=1e-8)
    # D^T r_n = D^T W (f'_n - m) + D^T D xbar: the projected ridge prediction, intercept included.
    expected = (centred @ ridge.coef_.T + X.mean(axis=0)) @ projection
    np.testing.assert_allclose(model.decision_function(F), expected, atol=1e-8)


def test_the_kernel_model_is_ridge_on_the_nystrom_features_of_its_kernel():
    """With every training image a landmark and dim = V (D^T D = I), the word scores D^T r are
    the predictions of a ridge regression (scikit-learn's Ridge, with intercept) on the Nystrom
    features of the RBF kernel (scikit-learn's Nystroem), on training and new images alike."""
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import Ridge

    F, X, _, _, _ = planted_words(n=120, p=10, d=8, n_visual=6, n_nonvisual=2)
    F_new = planted_words(n=30, p=10, d=8, n_visual=6, n_nonvisual=2, seed=1)[0]
    lam, gamma = 1e-2, 0.5
    model = Image2Vec(model="kernel", dim=X.shape[1], lam=lam, kernel_gamma=gamma, n_landmarks=len(F),
                      random_state=0).fit(F, X)
    assert model.landmarks_.shape == (len(F), F.shape[1]) and model.image_map_.shape == (X.shape[1], len(F))
    mean = F.mean(axis=0)
    nystroem = Nystroem(kernel="rbf", gamma=gamma, n_components=len(F)).fit(preprocess_features(F, mean))
    ridge = Ridge(alpha=len(F) * lam).fit(nystroem.transform(preprocess_features(F, mean)), X)
    for images in (F, F_new):
        expected = ridge.predict(nystroem.transform(preprocess_features(images, mean)))
        assert_close(model.decision_function(images), expected, rtol=1e-6)


def test_the_kernel_model_draws_its_landmarks_by_random_state_and_saves_them(tmp_path):
    F, X, _, _, n_visual = planted_words(n=300)
    fit = {"model": "kernel", "dim": 16, "n_landmarks": 100}
    model = Image2Vec(**fit, random_state=3).fit(F, X)
    again = Image2Vec(**fit, random_state=3).fit(F, X)
    other = Image2Vec(**fit, random_state=4).fit(F, X)
    prepared = preprocess_features(F, F.mean(axis=0))
    rows = [int(np.argmin(np.linalg.norm(prepared - landmark, axis=1))) for landmark in model.landmarks_]
    assert len(set(rows)) == 100 and np.allclose(prepared[rows], model.landmarks_)  # training images
    assert np.array_equal(model.landmarks_, again.landmarks_)
    assert not np.array_equal(model.landmarks_, other.landmarks_)
    assert visual_recall(model, F, X, n_visual) > 0.5
    path = tmp_path / "kernel.npz"
    systems.save(model, path)
    loaded = systems.load(path)[0]
    assert_close(loaded.transform(F[:20]), model.transform(F[:20]))
    broken = systems.load(path)[0]
    broken.landmarks_ = broken.landmarks_[:50]
    with pytest.raises(ValueError, match="image_map_ has shape"):
        broken.check_loaded()


@pytest.mark.parametrize("objective, solver", [("l2", "bcd"), ("l2", "sgd")])
def test_weak_tag_down_weights_noise_tags(objective, solver):
    F, X, _, _, n_visual = planted_words(n=600)
    model = Image2Vec(model="weak-tag", objective=objective, solver=solver, dim=16, lam=1e-3, normalize=False,
                      max_iter=15, max_steps=600, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(F, X)
    weights = model.tag_weights_.toarray()
    tagged = X > 0
    visual = np.arange(X.shape[1]) < n_visual
    assert weights[tagged & visual].mean() > 0.5
    assert weights[tagged & ~visual].mean() < 0.5
    assert ((weights >= 0) & (weights <= 1)).all()
    assert (weights[~tagged] == 0).all()


@pytest.mark.parametrize("solver", ["bcd", "sgd"])
def test_weak_tag_at_its_defaults_turns_planted_noise_tags_down(solver):
    """At the defaults (lam 0.1, weights in [0, 1], tol 3e-4; dim at the planted 16): visual
    tags keep their weight, more than half of the noise tags are turned down (mean about 0.5;
    lam 1e-3, the test above, separates them further)."""
    F, X, _, _, n_visual = planted_words(n=600)
    model = Image2Vec(model="weak-tag", solver=solver, dim=16, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(F, X)
    weights = model.tag_weights_.toarray()[X > 0]
    visual = np.broadcast_to(np.arange(X.shape[1]) < n_visual, X.shape)[X > 0]
    assert weights[visual].mean() > 0.95 and (weights[visual] < 0.99).mean() < 0.05
    assert weights[~visual].mean() < 0.6 and (weights[~visual] < 0.99).mean() > 0.5


@pytest.mark.parametrize("model, objective", [("reduced-rank", "ip"), ("learn-all", "l2"), ("learn-all", "ip"),
                                              ("weak-tag", "ip")])
def test_solvers_start_feasible_where_the_map_has_orthonormal_rows(model, objective):
    F, X, _, _, _ = planted_words(n=200)
    start = Image2Vec(model=model, objective=objective, dim=8)._prepare(F, X).start
    np.testing.assert_allclose(start @ start.T, np.eye(8), atol=1e-12)


@pytest.mark.parametrize("objective", ["l2", "ip"])
def test_weak_tag_a_step_solves_each_images_box_problem(objective):
    """Images with 0 to 9 words (several padding groups) over three chunks, the second without a
    word: each image's new weights are SciPy's box-constrained least squares (l2) or the sign
    rule (ip)."""
    rng = np.random.default_rng(0)
    n, p, d, n_words = 150, 12, 16, 20
    counts = rng.integers(1, 10, n)
    counts[::7] = 0
    counts[64:128] = 0
    X = sp.csr_matrix((rng.uniform(0.2, 1, counts.sum()),
                       np.concatenate([rng.choice(n_words, c, replace=False) for c in counts]),
                       np.concatenate([[0], np.cumsum(counts)])), shape=(n, n_words))
    F = rng.standard_normal((n, p))
    D, W = rng.standard_normal((d, n_words)), rng.standard_normal((d, p))
    step = TagWeightStep(F, X, lambda f: f, np.zeros(p), objective, np, chunk_rows=64)
    step(D, W)
    shift = D @ np.asarray(X.mean(axis=0)).ravel() if objective == "l2" else 0
    for i in range(n):
        entries = slice(X.indptr[i], X.indptr[i + 1])
        words, x = X.indices[entries], X.data[entries]
        if not len(words):
            continue
        atoms, r = D[:, words] * x, W @ F[i] + shift
        if objective == "l2":
            expected = lsq_linear(atoms, r, bounds=(0, 1), tol=1e-12).x
        else:
            expected = (atoms.T @ r > 0).astype(float)
        np.testing.assert_allclose(step.weights[entries], expected, atol=1e-5)


def test_weak_tag_fit_is_the_same_with_its_features_cached_or_streamed(monkeypatch):
    """Cached: the A-step reads F's chunks once; streamed: once a sweep; the fits are equal."""
    F, X, _, _, _ = planted_words(n=300)
    monkeypatch.setattr(model_module, "CHUNK_ROWS", 128)  # three chunks
    reads = []
    monkeypatch.setattr(tag_weights_module, "release_mapped_pages", lambda F: reads.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cached = Image2Vec(model="weak-tag", dim=8, max_iter=5, tol=0).fit(F, X)
        assert len(reads) == 3
        monkeypatch.setattr(model_module, "TRANSFORM_CACHE_BYTES", 0)
        streamed = Image2Vec(model="weak-tag", dim=8, max_iter=5, tol=0).fit(F, X)
        assert len(reads) == 3 + 5 * 3
    np.testing.assert_allclose(cached.tag_weights_.toarray(), streamed.tag_weights_.toarray(), atol=1e-12)
    np.testing.assert_allclose(cached.dictionary_, streamed.dictionary_, atol=1e-10)


@pytest.mark.parametrize("objective", ["l2", "ip"])
def test_weak_tag_objective_is_that_of_the_reweighted_targets(objective):
    """The A-step's own statistics (A reused, B and C from the re-weighted X) are the real ones."""
    F, X, _, _, _ = planted_words(n=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = Image2Vec(model="weak-tag", objective=objective, dim=8, max_iter=4).fit(F, X)
    reweighted = sp.csr_matrix(X).multiply(model.tag_weights_)
    stats = sufficient_stats(F, reweighted, transform=lambda f: preprocess_features(
        f, model.feature_mean_, model.normalize)).centered()
    terms = ObjectiveTerms(objective, "map", model.lam_)
    # W in the features' coordinates: W_basis basis^T, so W A W^T is unchanged.
    value = objective_value(stats, model.dictionary_, model.image_map_, terms)
    np.testing.assert_allclose(value, model.objective_trace_[-1][2], rtol=1e-9)


@pytest.mark.parametrize("model", names.MODELS)
@pytest.mark.parametrize("objective", ["l2", "ip"])
@pytest.mark.parametrize("solver", ["bcd", "sgd"])
def test_every_combination_trains_and_summarizes(model, objective, solver):
    F, X, _, _, n_visual = planted_words(n=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # weak-tag/l2's Flickr8k ridge (10) over-smooths these 300 planted images for sgd's 300 steps
        ridge = {"lam": 1e-3} if (model, objective) == ("weak-tag", "l2") else {}
        fitted = Image2Vec(model=model, objective=objective, solver=solver, dim=16, max_iter=10,
                           max_steps=300, random_state=0, **ridge).fit(F, sp.csr_matrix(X))
    values = [value for _, _, value in fitted.objective_trace_]
    assert np.isfinite(values).all()
    if solver == "bcd":
        assert (np.diff(values) <= 1e-9 * np.abs(values).max()).all()
    # Far above chance (3 / 24 per slot). The planted words are equally frequent, so the
    # read-out's word-frequency prior carries no information here.
    assert visual_recall(fitted, F, X, n_visual) > 0.35


@pytest.mark.parametrize("model", ["reduced-rank", "learn-all", "simple"])
def test_the_default_bcd_fit_converges(model):
    F, X, _, _, _ = planted_words(n=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fitted = Image2Vec(model=model, dim=8, random_state=0).fit(F, X)
    assert fitted.converged_ and fitted.n_iter_ >= 1


def test_a_fit_that_runs_out_of_sweeps_warns_and_says_so():
    F, X, _, _, _ = planted_words(n=200)
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        fitted = Image2Vec(model="weak-tag", dim=8, max_iter=1).fit(F, X)
    assert not fitted.converged_ and fitted.n_iter_ == 1


def test_dim_adapts_to_the_data_with_a_warning():
    F, X, _, _, _ = planted_words(n=100)
    with pytest.warns(UserWarning, match="dim=100 exceeds the 48 dimensions"):
        model = Image2Vec(model="learn-all", dim=100, whiten=False).fit(F, X)
    assert model.dim_ == 48 and model.dictionary_.shape == (48, X.shape[1])
    with pytest.warns(UserWarning, match="using dim=32"):  # reduced-rank: at most V = 32 words
        assert Image2Vec(dim=40).fit(F, X).dim_ == 32


def test_a_memory_mapped_store_gives_the_same_model(tmp_path):
    """The fit reads F in row chunks: a float32 memmap fits as the array in memory does."""
    F, X, _, _, _ = planted_words(n=9000, p=24, d=8)
    F = F.astype(np.float32)
    np.save(tmp_path / "F.npy", F)
    mapped = np.load(tmp_path / "F.npy", mmap_mode="r", allow_pickle=False)
    in_memory = Image2Vec(dim=8).fit(F, X)
    streamed = Image2Vec(dim=8).fit(mapped, X)
    np.testing.assert_allclose(streamed.transform(F[:50]), in_memory.transform(F[:50]), atol=1e-10)


def test_outputs_shapes_and_consistency():
    F, X, _, _, _ = planted_words(n=200)
    model = Image2Vec(dim=8, k=4, random_state=0).fit(F, X, words=[f"word{v}" for v in range(X.shape[1])])
    embedded = model.transform(F)
    assert embedded.shape == (200, 8)
    assert_close(model.decision_function(F), embedded @ model.dictionary_, rtol=1e-7)
    summary = model.summarize(F)
    assert summary.indices.shape == (200, 4)
    assert all(w.startswith("word") for row in summary.words for w in row)
    assert (np.diff(summary.scores, axis=1) <= 1e-12).all()  # best first
    predicted = model.predict(F)
    assert predicted.shape == X.shape and (predicted.sum(axis=1) <= 4).all()


def test_rank_readout_takes_the_top_scores():
    F, X, _, _, _ = planted_words(n=200)
    model = Image2Vec(dim=8, readout="rank").fit(F, X)
    scores = model.decision_function(F[:5])
    np.testing.assert_array_equal(model.summarize(F[:5], k=2).indices, np.argsort(-scores, axis=1)[:, :2])


@pytest.mark.parametrize("model, least_cosine", [("learn-all", 0.5), ("reduced-rank", 0.5)])
def test_similar_and_retrieve(model, least_cosine):
    rng = np.random.default_rng(3)
    F, X, w_true, d_true, _ = planted_words(n=600, noise=0.1, n_nonvisual=0)
    d_true[:, 1] = d_true[:, 0] + 0.3 * rng.standard_normal(16)  # w1 looks like w0
    F = (X @ d_true.T) @ w_true + 0.1 * rng.standard_normal(F.shape)
    words = [f"w{v}" for v in range(X.shape[1])]
    model = Image2Vec(model=model, dim=16, lam=1e-3, normalize=False, metric="euclidean").fit(F, X, words=words)
    (nearest, cosine), *_ = model.similar("w0", n=3)
    assert nearest == "w1" and cosine > least_cosine
    # The similarity is the correlation of the two words' scores over the training images.
    scores = model.decision_function(F)
    correlation = np.corrcoef(scores[:, 0], scores[:, 1])[0, 1]
    assert cosine == pytest.approx(correlation, rel=1e-8)
    order, distances = model.retrieve(["w1", "w2"], F, n=5)
    assert (np.diff(distances) >= 0).all()
    direct = np.linalg.norm(model.transform(F) - model.dictionary_[:, [1, 2]].sum(axis=1), axis=1)
    np.testing.assert_allclose(distances, np.sort(direct)[:5], rtol=1e-6, atol=1e-9)
    assert (X[order][:, [1, 2]].sum(axis=1) >= 1).all()  # the top images show a query word
    model.set_params(metric="cosine")
    order, cosines = model.retrieve(["w1", "w2"], F, n=5)
    centre = model.dictionary_ @ model.target_mean_
    query = model.dictionary_[:, [1, 2]].sum(axis=1) - centre
    embedded = model.transform(F) - centre
    direct = embedded @ query / np.linalg.norm(embedded, axis=1) / np.linalg.norm(query)
    np.testing.assert_allclose(cosines, np.sort(direct)[::-1][:5], rtol=1e-9)
    assert (X[order][:, [1, 2]].sum(axis=1) >= 1).all()
    with pytest.raises(Image2VecError, match="unknown word 'zebra'"):
        model.similar("zebra")


def test_save_load_roundtrip(tmp_path):
    F, X, _, _, _ = planted_words(n=200)
    model = Image2Vec(model="weak-tag", dim=8, random_state=0, max_iter=3).fit(F, X)
    path = tmp_path / "model.npz"
    systems.save(model, path, metadata={"extractor": "efficientnet-lite0"})
    loaded, metadata = systems.load(path)
    assert metadata == {"extractor": "efficientnet-lite0"}
    np.testing.assert_array_equal(loaded.transform(F), model.transform(F))
    np.testing.assert_array_equal(loaded.summarize(F).indices, model.summarize(F).indices)
    assert loaded.get_params() == model.get_params()
    assert (loaded.tag_weights_ != model.tag_weights_).nnz == 0
    with np.load(path, allow_pickle=False) as data:  # plain arrays only
        assert "dictionary_" in data.files


def test_float16_storage_halves_the_file_and_loads_back_as_float64(tmp_path):
    F, X, _, _, _ = planted_words(n=200)
    model = Image2Vec(dim=8, random_state=0).fit(F, X)
    systems.save(model, tmp_path / "full.npz")
    systems.save(model, tmp_path / "half.npz", float_storage="float16")
    assert (tmp_path / "half.npz").stat().st_size < 0.7 * (tmp_path / "full.npz").stat().st_size
    loaded, _ = systems.load(tmp_path / "half.npz")
    assert loaded.dictionary_.dtype == np.float64
    # float16 keeps 11 significant bits: every array within 2^-11 of its largest value
    for name in ("dictionary_", "image_map_", "offset_", "similarity_map_", "retrieval_maps_"):
        original = getattr(model, name)
        np.testing.assert_allclose(getattr(loaded, name), original, rtol=2.0**-11,
                                   atol=2.0**-11 * np.abs(original).max(), err_msg=name)
    assert (loaded.summarize(F).indices == model.summarize(F).indices).mean() > 0.95
    model.offset_ = model.offset_ + 1e5  # beyond float16's range (65504): refused, not inf
    with pytest.raises(Image2VecError, match="offset_ at float16"):
        systems.save(model, tmp_path / "big.npz", float_storage="float16")
    assert not (tmp_path / "big.npz").exists()


@pytest.mark.parametrize("seed", [np.random.default_rng(7), np.random.RandomState(7), 7])
def test_random_state_takes_every_seed_scikit_learn_takes_and_a_generator(tmp_path, seed):
    F, X, _, _, _ = planted_words(n=100)
    model = Image2Vec(model="simple", dim=4, random_state=seed).fit(F, X)
    if isinstance(seed, int):  # the same JL projection as a generator of the same seed
        again = Image2Vec(model="simple", dim=4, random_state=np.random.default_rng(seed)).fit(F, X)
        np.testing.assert_array_equal(again.image_map_, model.image_map_)
    systems.save(model, tmp_path / "m.npz")  # a generator object is not saved, the model is
    loaded, _ = systems.load(tmp_path / "m.npz")
    assert loaded.random_state == (seed if isinstance(seed, int) else None)
    np.testing.assert_array_equal(loaded.image_map_, model.image_map_)


def test_load_refuses_other_versions_and_broken_files(tmp_path):
    F, X, _, _, _ = planted_words(n=100)
    systems.save(Image2Vec(dim=8).fit(F, X), tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:
        arrays = dict(data)
    info = json.loads(str(arrays["__info__"]))
    future = {**info, "format_version": 99}
    np.savez(tmp_path / "future.npz", **{**arrays, "__info__": np.array(json.dumps(future))})
    with pytest.raises(Image2VecError, match="format version 99"):
        systems.load(tmp_path / "future.npz")
    np.savez(tmp_path / "bad_shape.npz", **{**arrays, "offset_": np.zeros(3)})
    with pytest.raises(Image2VecError, match="inconsistent: offset_ has shape"):
        systems.load(tmp_path / "bad_shape.npz")
    alien = {**info, "system": "gpt"}
    np.savez(tmp_path / "alien.npz", **{**arrays, "__info__": np.array(json.dumps(alien))})
    with pytest.raises(Image2VecError, match="unknown system 'gpt'"):
        systems.load(tmp_path / "alien.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(Image2VecError, match="not an image2vec model"):
        systems.load(tmp_path / "junk.npz")
    with pytest.raises(Image2VecError, match="does not exist"):
        systems.load(tmp_path / "missing.npz")


BAD_SETTINGS = [
    ({"model": "huge"}, "'model' parameter"),
    ({"objective": "cosine"}, "'objective' parameter"),
    ({"solver": "adam"}, "'solver' parameter"),
    ({"dim": 0}, "'dim' parameter"),
    ({"dim": 2.5}, "'dim' parameter"),
    ({"k": 0}, "'k' parameter"),
    ({"lam": -1.0}, "'lam' parameter"),
    ({"lam": float("nan")}, "'lam' parameter"),
    ({"lam": "big"}, "'lam' parameter"),
    ({"gamma": float("nan")}, "'gamma' parameter"),
    ({"gamma": -0.5}, "'gamma' parameter"),
    ({"prior_weight": -5}, "'prior_weight' parameter"),
    ({"prior_weight": "abc"}, "'prior_weight' parameter"),
    ({"learning_rate": -1}, "'learning_rate' parameter"),
    ({"learning_rate": 0}, "'learning_rate' parameter"),
    ({"learning_rate": float("nan")}, "'learning_rate' parameter"),
    ({"batch_size": 0}, "'batch_size' parameter"),
    ({"max_iter": 0}, "'max_iter' parameter"),
    ({"max_steps": 0}, "'max_steps' parameter"),
    ({"decay": 1.0}, "'decay' parameter"),
    ({"tol": float("nan")}, "'tol' parameter"),
    ({"tol": -1e-3}, "'tol' parameter"),
    ({"n_iter_no_change": 0}, "'n_iter_no_change' parameter"),
    ({"n_components": 0}, "'n_components' parameter"),
    ({"normalize": "yes"}, "'normalize' parameter"),
    ({"metric": "manhattan"}, "'metric' parameter"),
    ({"device": "tpu"}, "'device' parameter"),
    ({"objective": "ip", "lam": 0.1}, "apply to objective='l2' only"),
    ({"objective": "ip", "gamma": 1.0}, "apply to objective='l2' only"),
    ({"model": "reduced-rank", "gamma": 1.0}, "not to reduced-rank"),
]


@pytest.mark.parametrize("params, message", BAD_SETTINGS)
def test_nonsense_settings_are_refused_before_any_work(params, message, monkeypatch):
    import image2vec.model

    F, X, _, _, _ = planted_words(n=50)
    with pytest.raises(ValueError, match=message):
        Image2Vec(**params).check_params()
    monkeypatch.setattr(image2vec.model, "sufficient_stats", lambda *a, **k: pytest.fail("work began"))
    with pytest.raises(ValueError, match=message):
        Image2Vec(**params).fit(F, X)


def test_the_estimator_is_importable_from_the_package():
    from image2vec import Image2Vec as public

    assert public is Image2Vec


def test_bad_data_is_refused():
    F, X, _, _, _ = planted_words(n=50)
    bad = F.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Image2Vec(dim=8).fit(bad, X)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        Image2Vec(dim=8).fit(F, X[:-1])
    with pytest.raises(ValueError, match="must be >= 0"):
        Image2Vec(dim=8).fit(F, -X)
    model = Image2Vec(dim=8).fit(F, X)
    with pytest.raises(ValueError, match="expecting 48 features"):
        model.transform(F[:, :10])


def test_incoherence_runs_from_the_estimator():
    F, X, _, _, n_visual = planted_words(n=300)
    model = Image2Vec(model="learn-all", dim=16, gamma=0.5, max_iter=5).fit(F, X)
    assert visual_recall(model, F, X, n_visual) > 0.5


@parametrize_with_checks([Image2Vec(), Image2Vec(model="learn-all"), Image2Vec(model="weak-tag", max_iter=5),
                          Image2Vec(model="simple", random_state=0), Image2Vec(solver="sgd", random_state=0),
                          Image2Vec(model="kernel", random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    """scikit-learn's own checks, at the default settings (the dim adapts to their tiny data)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dim lowered to what their data allows
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_whitening_stops_the_collapse_to_low_variance_directions():
    """Unwhitened, the l2 minimiser under W W^T = I takes the directions where the images barely
    vary (the bottom of the residual scatter); whitened, it takes the ones the words explain."""
    F, X, _, _, n_visual = planted_words()
    train, test = slice(0, 700), slice(700, None)
    recall = {
        whiten: visual_recall(Image2Vec(model="learn-all", dim=16, normalize=False, whiten=whiten)
                              .fit(F[train], X[train]), F[test], X[test], n_visual)
        for whiten in (False, True)
    }
    assert recall[True] > 0.9
    assert recall[True] > recall[False] + 0.1
    with pytest.warns(UserWarning, match="dim=16 exceeds the 9 dimensions"):
        assert Image2Vec(model="learn-all", dim=16).fit(F[:10], X[:10]).dim_ == 9


def test_correlation_retrieval_is_cca_of_embeddings_and_word_sums_and_rotation_free():
    """Scores equal a CCA computed directly from the training embeddings and word sums (NumPy),
    and rotating the d coordinates (W -> Q W, D -> Q D) changes no score."""
    from image2vec.model import RETRIEVAL_RIDGE

    F, X, _, _, _ = planted_words(n=400)
    model = Image2Vec(dim=8, metric="correlation").fit(F, X)
    centre = model.dictionary_ @ model.target_mean_
    images = model.transform(F) - centre  # W (f'_n - m)
    words = (X - X.mean(axis=0)) @ model.dictionary_.T  # D (x_n - xbar)

    def inverse_sqrt(M):
        M = M + RETRIEVAL_RIDGE * np.trace(M) / len(M) * np.eye(len(M))
        return scipy.linalg.inv(scipy.linalg.sqrtm(M)).real

    ir, it = inverse_sqrt(images.T @ images / 400), inverse_sqrt(words.T @ words / 400)
    u, rho, vt = np.linalg.svd(ir @ (images.T @ words / 400) @ it)
    a = (X[:5] @ model.dictionary_.T - centre) @ it @ vt.T * rho**2
    b = images @ ir @ u * rho**2
    expected = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    scores = model.retrieval_scores(F, X[:5])
    np.testing.assert_allclose(scores, expected, atol=1e-8)
    rotation = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 8)))[0]
    rotated = Image2Vec(dim=8, metric="correlation").fit(F, X)
    problem_stats = rotated._prepare(F, X).stats
    from image2vec.model import _covariance, _retrieval_maps

    D, W = rotation @ model.dictionary_, rotation @ model.image_map_
    rotated.dictionary_, rotated.image_map_ = D, W
    rotated.offset_ = rotation @ model.offset_
    rotated.retrieval_maps_ = _retrieval_maps(problem_stats, D, W, _covariance(problem_stats.A, W, problem_stats.n))
    np.testing.assert_allclose(rotated.retrieval_scores(F, X[:5]), scores, atol=1e-8)


# ------------------------------------------------------------- dev-chosen defaults per model x objective


def test_the_defaults_table_is_the_benchmarks_chosen_settings():
    """names.CHOSEN_SETTINGS equals experiments/results/flickr8k/chosen.json: they cannot drift."""
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "experiments"))
    import flickr8k

    chosen = json.loads((repo / "experiments/results/flickr8k/chosen.json").read_text())
    assert set(names.CHOSEN_SETTINGS) == {(m, o) for m in names.MODELS for o in names.OBJECTIVES}
    for (model, objective), settings in names.CHOSEN_SETTINGS.items():
        if (model, objective) == ("weak-tag", "l2"):  # chosen on noisy tags (weak_tags_flickr8k.py)
            continue
        family = flickr8k.SHARED_SETTINGS.get(f"{model}/{objective}", f"{model}/{objective}")
        assert settings == chosen[family], (model, objective)
        if objective == "l2":
            assert "lam" in settings  # every l2 model has a dev-chosen ridge


@pytest.mark.parametrize("model", names.MODELS)
@pytest.mark.parametrize("objective", names.OBJECTIVES)
def test_a_model_resolves_the_tables_settings_at_fit_time(model, objective):
    rng = np.random.default_rng(0)
    n, p, V = 60, 20, 15
    F, X = rng.standard_normal((n, p)), (rng.random((n, V)) < 0.2) * 1.0
    estimator = Image2Vec(model=model, objective=objective, max_iter=3, random_state=0)
    before = estimator.get_params()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = estimator.fit(F, X)
    expected = names.default_settings(model, objective)
    assert fitted.get_params() == before  # fit does not change the constructor's parameters
    lowered = [str(w.message) for w in caught if "exceeds the" in str(w.message)]
    if model == "simple":
        assert fitted.dim_ == expected["dim"] and not lowered
    else:  # the table's dim, lowered to what 20 features and 15 words allow
        assert lowered and lowered[0].startswith(f"dim={expected['dim']} exceeds")
    assert fitted.lam_ == (expected["lam"] if objective == "l2" else 0.0)
    assert fitted.readout_ == expected["readout"] and fitted.prior_weight_ == expected["prior_weight"]
    assert fitted.whiten_ is expected["whiten"]
    if model in ("learn-all", "weak-tag"):
        assert fitted.n_components_ == min(expected["n_components"], p)
    # The same model as the table's settings given explicitly, to the last digit.
    explicit = {key: value for key, value in expected.items() if objective == "l2" or key != "lam"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spelled = Image2Vec(model=model, objective=objective, max_iter=3, random_state=0, **explicit).fit(F, X)
    np.testing.assert_array_equal(fitted.dictionary_, spelled.dictionary_)
    assert fitted.summarize(F[:20]).words == spelled.summarize(F[:20]).words


def test_explicit_settings_win_over_the_table():
    rng = np.random.default_rng(1)
    F, X = rng.standard_normal((60, 12)), (rng.random((60, 10)) < 0.2) * 1.0
    fitted = Image2Vec(model="learn-all", objective="ip", whiten=True, readout="rank", prior_weight=0.5,
                       n_components=6, dim=4).fit(F, X)
    assert fitted.whiten_ is True and fitted.readout_ == "rank" and fitted.prior_weight_ == 0.5
    assert fitted.n_components_ == 6 and fitted.dim_ == 4
    assert names.default_settings("learn-all", "ip")["whiten"] is False  # the table says otherwise
    # A read-out setting changed after the fit wins over the fit's, which stays on record.
    omp = Image2Vec(**{**fitted.get_params(), "readout": "omp"}).fit(F, X)
    fitted.set_params(readout="omp")
    assert fitted.summarize(F[:5], k=2).words == omp.summarize(F[:5], k=2).words
    assert fitted.readout_ == "rank"
