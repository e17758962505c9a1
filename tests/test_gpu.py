"""Image2Vec with ``device="cuda"`` against the same model on numpy.

The tests marked ``gpu`` need CuPy and a CUDA device (``make test PYTEST_ARGS="-m gpu"``); without
one they are deselected by default and skipped under ``-m gpu``. The embedding space of a fitted
model is defined up to an orthogonal transform (eigenvector signs may differ between LAPACK and
cuSOLVER), so fits are compared through what is invariant: D^T D, the word scores D^T r_n, the
summaries and the retrieval scores. The unmarked tests run the numpy half of the device code
(the weak-tag A-step in image chunks) in the normal suite.
"""

import numpy as np
import pytest
from sklearn.base import clone
from test_model import planted_words
from tolerance import assert_close

from image2vec import model as model_module
from image2vec import systems
from image2vec.cli import _load_model
from image2vec.errors import Image2VecError
from image2vec.model import Image2Vec
from solvers import omp_gram
from solvers.backend import gpu_available


def on_gpu(test):
    """Mark ``test`` as a GPU test, skipped where CuPy sees no CUDA device."""
    skip = pytest.mark.skipif(not gpu_available(), reason="CuPy with a CUDA device is not available")
    return pytest.mark.gpu(skip(test))


MODELS = ["reduced-rank", "learn-all", "weak-tag", "simple"]


def small_problem():
    F, X, _, _, _ = planted_words(n=300, p=24, d=8, n_visual=12, n_nonvisual=4)
    return F, X


def assert_same_model(ours, reference, rtol):
    """Two fits agree in everything an orthogonal change of embedding coordinates leaves alone."""
    F, _ = small_problem()
    for name in ("feature_mean_", "target_mean_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(reference, name), rtol=rtol, atol=1e-12)
    D, D_ref = ours.dictionary_, reference.dictionary_
    assert_close(D.T @ D, D_ref.T @ D_ref, rtol=rtol)
    assert_close(ours.decision_function(F), reference.decision_function(F), rtol=rtol)
    queries = np.eye(D.shape[1])[:5]  # the default metric: correlation, from the fit's statistics
    np.testing.assert_allclose(ours.retrieval_scores(F, queries), reference.retrieval_scores(F, queries),
                               rtol=rtol, atol=rtol)
    if hasattr(reference, "tag_weights_"):
        np.testing.assert_allclose(ours.tag_weights_.toarray(), reference.tag_weights_.toarray(), atol=1e-6)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("objective", ["l2", "ip"])
def test_a_step_in_image_chunks_equals_one_chunk(objective, monkeypatch):
    """The weak-tag A-step reads F in row chunks (on the device with ``cuda``): the chunk size
    does not change the fit."""
    F, X = small_problem()
    params = dict(model="weak-tag", objective=objective, dim=8, max_iter=5, random_state=0)
    whole = Image2Vec(**params).fit(F, X)
    monkeypatch.setattr(model_module, "CHUNK_ROWS", 64)  # 300 rows: 5 chunks, the last one short
    chunked = Image2Vec(**params).fit(F, X)
    # Each padded group's coordinate descent stops once no weight moves by more than 1e-6, and the
    # chunks regroup the images: the weights (scale 1) agree to that scale, not to rounding.
    np.testing.assert_allclose(chunked.tag_weights_.toarray(), whole.tag_weights_.toarray(), atol=1e-5)
    assert_close(chunked.dictionary_, whole.dictionary_, rtol=1e-5)
    assert 0 < (whole.tag_weights_.data < 1).mean() < 1  # the step really re-weights some tags


def test_a_model_saved_from_cuda_reads_out_where_the_command_line_says(tmp_path):
    """``--device`` decides where a loaded model computes, not the device it was trained on."""
    F, X = small_problem()
    fitted = Image2Vec(model="learn-all", dim=8, random_state=0).fit(F, X)
    path = tmp_path / "model.npz"
    systems.save(_with_device(fitted, "cuda"), path)  # as if trained on a GPU
    on_cpu, _ = _load_model(str(path))
    assert on_cpu.device == "cpu"
    np.testing.assert_array_equal(on_cpu.summarize(F).indices, fitted.summarize(F).indices)
    on_cuda, _ = _load_model(str(path), "cuda")
    assert on_cuda.device == "cuda"
    if not gpu_available():
        with pytest.raises(Image2VecError, match="device='cuda' needs CuPy"):
            on_cuda.summarize(F)


def _with_device(fitted, device):
    """``fitted`` with another ``device`` setting and the same fitted arrays (no fit there)."""
    moved = clone(fitted).set_params(device=device)
    moved.__dict__.update({key: value for key, value in fitted.__dict__.items() if key.endswith("_")})
    return moved


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("objective", ["l2", "ip"])
@pytest.mark.parametrize("solver", ["bcd", "sgd"])
@on_gpu
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_cuda_fit_equals_the_numpy_fit(model, objective, solver, monkeypatch):
    """Both devices take the same path: tol=0 and no SGD step decay leave no stopping decision
    that rounding could flip, except the A-step's sweeps (weak-tag: compared to 1e-4)."""
    F, X = small_problem()
    monkeypatch.setattr(model_module, "CHUNK_ROWS", 128)  # the A-step and SGD passes in chunks
    cpu = Image2Vec(model=model, objective=objective, solver=solver, dim=8, max_iter=20, tol=0.0,
                    max_steps=600, n_iter_no_change=10**6, random_state=0)
    cpu.fit(F, X)
    gpu = clone(cpu).set_params(device="cuda").fit(F, X)
    for name in ("dictionary_", "image_map_", "offset_", "target_mean_"):
        assert type(getattr(gpu, name)) is np.ndarray, name  # fitted attributes stay numpy
    rtol = 1e-4 if model == "weak-tag" else 1e-6
    assert_same_model(gpu, cpu, rtol)
    np.testing.assert_allclose(gpu.objective_trace_[-1][2], cpu.objective_trace_[-1][2], rtol=rtol)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("readout", ["omp", "rank"])
@on_gpu
def test_cuda_read_out_equals_numpy(model, readout):
    """One fitted model read out on both devices: transform, summaries, predictions, retrieval."""
    F, X = small_problem()
    cpu = Image2Vec(model=model, dim=8, readout=readout, max_iter=20, random_state=0).fit(F, X)
    gpu = _with_device(cpu, "cuda")
    np.testing.assert_allclose(gpu.transform(F), cpu.transform(F), rtol=1e-10, atol=1e-12)
    summary, reference = gpu.summarize(F, k=4), cpu.summarize(F, k=4)
    np.testing.assert_array_equal(summary.indices, reference.indices)
    np.testing.assert_allclose(summary.scores, reference.scores, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(gpu.predict(F), cpu.predict(F))
    queries = np.eye(X.shape[1])[:5]
    for metric in ("correlation", "cosine", "euclidean"):
        gpu.set_params(metric=metric)
        cpu.set_params(metric=metric)
        np.testing.assert_allclose(gpu.retrieval_scores(F, queries), cpu.retrieval_scores(F, queries),
                                   rtol=1e-9, atol=1e-10)
        order, scores = gpu.retrieve([str(cpu.words_[0]), str(cpu.words_[3])], F, n=10)
        order_ref, scores_ref = cpu.retrieve([str(cpu.words_[0]), str(cpu.words_[3])], F, n=10)
        np.testing.assert_array_equal(order, order_ref)
        assert_close(scores, scores_ref, rtol=1e-9)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-9), (np.float32, 1e-3)])
@on_gpu
def test_omp_gram_on_cupy_equals_numpy(nonneg, dtype, rtol):
    """The read-out solver at a size where the GPU codes every signal in one block and the CPU
    in many."""
    import cupy

    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((64, 300)) + 0.5 * rng.standard_normal((64, 1))
    D = (atoms / np.linalg.norm(atoms, axis=0)).astype(dtype)
    Y = rng.standard_normal((3000, 64)).astype(dtype)
    gram, corr, y_sq = D.T @ D, Y @ D, (Y * Y).sum(axis=1)
    reference = omp_gram(gram, corr, y_sq, 6, nonneg=nonneg)
    code = omp_gram(cupy.asarray(gram), cupy.asarray(corr), cupy.asarray(y_sq), 6, nonneg=nonneg)
    same = (cupy.asnumpy(code.indices) == reference.indices).all(axis=1)
    assert same.mean() > (0.999 if dtype == np.float64 else 0.99)  # float32 near-ties may flip
    np.testing.assert_allclose(cupy.asnumpy(code.coefs)[same], reference.coefs[same], rtol=rtol,
                               atol=rtol * np.abs(reference.coefs).max())
