"""The pipeline on a real Dask cluster (a LocalCluster of two worker processes) against the single
process on coco-mini: sharded features, the statistics' tree reduction, the fit, the summaries
and scores mapped over chunks, the command line with --scheduler, and workers that die."""

from __future__ import annotations

import functools
import json
import os
import pickle
import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp

from image2vec import features
from image2vec.arrays import preprocess_features
from image2vec.cli import main
from image2vec.cluster import ClusterSystem
from image2vec.datasets import load_caption_data
from image2vec.errors import Image2VecError
from image2vec.evaluate import evaluate
from image2vec.features import Extractor, extract_features, load_features, load_image
from image2vec.model import Image2Vec
from image2vec.persist import load_system
from image2vec.systems import REGISTRY
from solvers import sufficient_stats
from solvers.distributed import as_row_chunks, column_means_dask, sufficient_stats_dask
from solvers.objective import column_means

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

CLOSE = {"rtol": 1e-4, "atol": 1e-4}  # features of the same network on other batches and threads


class Dying(Extractor):
    """The same extractor, whose worker process exits (as if killed) when it meets a poison image:
    the first time only when ``flag`` is a path (the flag file records the death), every time
    otherwise, after the rows ``wait_for`` are recorded in the store's progress."""

    def __init__(self, inner: Extractor, poison, flag=None, progress=None, wait_for: int = 0):
        self.__dict__.update(inner.__dict__)
        self.inner, self.poison, self.flag = inner, poison, flag
        self.progress, self.wait_for = progress, wait_for

    def __call__(self, batch):
        if any(bool((image == self.poison).all()) for image in batch):
            if self.flag is None:
                _wait_for_rows(self.progress, self.wait_for)
                os._exit(1)
            if not os.path.exists(self.flag):
                open(self.flag, "w").close()
                os._exit(1)
        return self.inner(batch)


def _wait_for_rows(progress, rows: int, timeout: float = 60) -> None:
    """Block until the progress record says the first ``rows`` images are done."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if progress.exists() and json.loads(progress.read_text())["done"] >= rows:
            return
        time.sleep(0.1)


def _builds() -> int:
    """Run on a worker: how many times this process built a named extractor."""
    return features._built_extractor.cache_info().misses


@pytest.fixture(scope="module")
def client():
    """Two worker processes of one thread each."""
    with (distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   dashboard_address=None) as cluster,
          distributed.Client(cluster) as client):
        yield client


@pytest.fixture(scope="module")
def reference(coco, lite0, tmp_path_factory):
    """The single-process feature store of the 80 images."""
    store = tmp_path_factory.mktemp("reference")
    return extract_features(coco.paths, store, keys=coco.image_ids, extractor=lite0, batch_size=16,
                            progress=False), store


@pytest.fixture(scope="module")
def data(coco_mini, reference):
    """The captioned images with the reference features (the store answers: nothing extracted)."""
    _, store = reference
    return load_caption_data(coco_mini / "annotations" / "captions_train2017.json",
                             coco_mini / "train2017", store=store, progress=False)


@pytest.fixture(scope="module")
def fitted(data):
    return Image2Vec(dim=16).fit(data.features, data.targets, words=list(data.vocabulary.words))


@pytest.mark.slow
def test_cli_features_on_the_cluster_equal_the_single_process_store(coco_mini, client, reference,
                                                                    tmp_path, capsys):
    expected, _ = reference
    status = main(["features", "--coco", str(coco_mini), "--out", str(tmp_path), "--batch-size", "8",
                   "--scheduler", client.scheduler.address, "--quiet"])
    assert status == 0, capsys.readouterr().err
    assert capsys.readouterr().out == f"{tmp_path}: features 80 x 1280 (efficientnet-lite0); 0 image(s) skipped\n"
    sharded = load_features(tmp_path)
    assert sharded.keys == expected.keys and sharded.files == expected.files
    assert sharded.index == expected.index
    np.testing.assert_allclose(sharded.features, expected.features, **CLOSE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy", "index.json"]
    assert max(client.run(_builds).values()) == 1  # each worker built the network once


@pytest.mark.slow
def test_statistics_on_the_cluster_equal_the_streaming_pass(client, reference):
    expected, _ = reference
    F = expected.features  # memory-mapped: the tasks read their rows from the file
    X = sp.random(80, 30, density=0.1, random_state=0, format="csr")
    rows = as_row_chunks(F, 16)
    assert len(pickle.dumps(rows.__dask_graph__())) < F.nbytes / 100  # no rows in the graph
    mean, x_mean = column_means_dask(rows, X, scheduler=client, split_every=2)
    np.testing.assert_allclose(mean, column_means(F, X)[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x_mean, column_means(F, X)[1], rtol=1e-12, atol=1e-12)
    transform = functools.partial(preprocess_features, mean=mean)
    stats = sufficient_stats_dask(rows, X, transform=transform, scheduler=client, split_every=2)
    single = sufficient_stats(F, X, transform=transform)
    assert stats.n == single.n == 80
    for name in ("A", "B", "C", "f_sum", "x_sum"):
        np.testing.assert_allclose(getattr(stats, name), getattr(single, name), rtol=1e-10, atol=1e-10,
                                   err_msg=name)
    assert not np.allclose(stats.A, sufficient_stats(F, X).A)  # the transform was applied


@pytest.mark.slow
@pytest.mark.parametrize("model", ["reduced-rank", "learn-all"])
def test_fit_on_the_cluster_equals_the_single_process_fit(client, data, model, monkeypatch):
    monkeypatch.setattr("image2vec.model.CHUNK_ROWS", 16)  # five row chunks
    F, X, words = data.features, data.targets, list(data.vocabulary.words)
    single = Image2Vec(model=model, dim=16).fit(F, X, words=words)
    spread = Image2Vec(model=model, dim=16).fit(F, X, words=words, scheduler=client)
    np.testing.assert_allclose(spread.feature_mean_, single.feature_mean_, rtol=1e-12, atol=1e-12)
    # the embedding space is determined up to a rotation: compare what does not depend on it
    np.testing.assert_allclose(spread.decision_function(F), single.decision_function(F), atol=1e-8)
    np.testing.assert_allclose(spread.dictionary_.T @ spread.dictionary_,
                               single.dictionary_.T @ single.dictionary_, atol=1e-8)
    assert spread.summarize(F).words == single.summarize(F).words


@pytest.mark.slow
def test_summaries_and_scores_mapped_over_chunks_equal_the_single_process_ones(client, data, fitted):
    F = data.features
    mapped = ClusterSystem(fitted, client, chunk_size=16)
    summary, expected = mapped.summarize(F, 4), fitted.summarize(F, 4)
    np.testing.assert_array_equal(summary.indices, expected.indices)
    np.testing.assert_allclose(summary.scores, expected.scores, rtol=1e-12)
    assert summary.words == expected.words and len(summary.words) == 80
    expected_scores = fitted.decision_function(F)  # atol: scores near 0 in any summation order
    np.testing.assert_allclose(mapped.decision_function(F), expected_scores, rtol=1e-12,
                               atol=1e-12 * np.abs(expected_scores).max())
    np.testing.assert_allclose(mapped.retrieval_scores(F, data.queries),
                               fitted.retrieval_scores(F, data.queries), rtol=1e-12, atol=1e-12)
    assert not hasattr(mapped, "embed_texts") and mapped.words_ is fitted.words_
    result = evaluate(mapped, F, data.truth, k=3, queries=data.queries)
    assert result == pytest.approx(evaluate(fitted, F, data.truth, k=3, queries=data.queries))


@pytest.mark.slow
def test_cli_train_and_evaluate_on_the_cluster_equal_the_single_process_ones(coco_mini, client, data,
                                                                            reference, tmp_path, capsys):
    _, store = reference
    common = ["--captions", str(coco_mini / "annotations" / "captions_train2017.json"),
              "--images", str(coco_mini / "train2017"), "--features", str(store), "--quiet"]
    outputs = {}
    for name, scheduler in [("single", []), ("cluster", ["--scheduler", client.scheduler.address])]:
        model = tmp_path / f"{name}.npz"
        assert main(["train", *common, "--dim", "16", "--out", str(model), *scheduler]) == 0
        evaluated = ["--scheduler", "local:1"] if scheduler else []  # a LocalCluster of its own
        capsys.readouterr()
        assert main(["evaluate", "--model", str(model), *common, "--json", *evaluated]) == 0
        outputs[name] = load_system(model, REGISTRY)[0], json.loads(capsys.readouterr().out)
    (single, single_scores), (cluster, cluster_scores) = outputs["single"], outputs["cluster"]
    np.testing.assert_allclose(cluster.decision_function(data.features),
                               single.decision_function(data.features), atol=1e-8)
    assert cluster_scores == pytest.approx(single_scores) and cluster_scores["n_images"] == 80


@pytest.mark.slow
def test_a_worker_that_dies_mid_shard_is_replaced_and_the_store_is_complete(client, coco, lite0, reference,
                                                                           tmp_path):
    expected, _ = reference
    files = coco.paths[:12]  # two shards of three batches; the worker dies in the first one's second
    dying = Dying(lite0, lite0.preprocessing(load_image(files[3])), flag=tmp_path / "died")
    out = extract_features(files, tmp_path / "store", keys=coco.image_ids[:12], extractor=dying,
                           batch_size=2, client=client, progress=False)
    assert (tmp_path / "died").exists()
    assert out.keys == expected.keys[:12] and out.files == expected.files[:12]
    np.testing.assert_allclose(out.features, expected.features[:12], **CLOSE)


@pytest.mark.slow
def test_a_shard_that_kills_every_worker_fails_in_one_line_and_the_rerun_resumes(client, coco, lite0,
                                                                                 reference, tmp_path,
                                                                                 monkeypatch):
    expected, _ = reference
    monkeypatch.setattr(client.cluster.scheduler, "allowed_failures", 0)  # the first death fails it
    files, keys, store = coco.paths[:12], coco.image_ids[:12], tmp_path / "store"
    progress = store / "partial" / "progress.json"
    poisoned = Dying(lite0, lite0.preprocessing(load_image(files[9])), progress=progress, wait_for=6)
    with pytest.raises(Image2VecError) as error:
        extract_features(files, store, keys=keys, extractor=poisoned, batch_size=2, client=client,
                         progress=False)
    message = str(error.value)
    assert "workers kept dying while extracting images 6..11" in message and "\n" not in message
    assert "6 of 12 images are done and the next run resumes there" in message
    assert json.loads(progress.read_text())["done"] == 6
    assert not (store / "index.json").exists()
    done = np.load(store / "partial" / "features.npy", mmap_mode="r+")
    done[:6] = 7.0  # a mark on the rows that the rerun must not compute again
    done.flush()
    del done
    out = extract_features(files, store, keys=keys, extractor=lite0, batch_size=2, client=client,
                           progress=False)
    np.testing.assert_array_equal(out.features[:6], 7.0)
    np.testing.assert_allclose(out.features[6:], expected.features[6:12], **CLOSE)
    assert not (store / "partial").exists()


@pytest.mark.parametrize("scheduler, message", [
    ("local:0", "--scheduler local:0: local:N needs a number of workers N >= 1"),
    ("local:two", "local:N needs a number of workers N >= 1"),
    ("tcp://127.0.0.1:9", "cannot connect to the Dask scheduler at tcp://127.0.0.1:9"),
])
def test_a_bad_scheduler_is_one_line(scheduler, message, tmp_path, capsys):
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        status = main(["features", "--sample", "--out", str(tmp_path), "--scheduler", scheduler])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("image2vec: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing extracted


def test_without_distributed_the_scheduler_option_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert main(["train", "--captions", "c.json", "--images", str(tmp_path), "--out", str(tmp_path / "m.npz"),
                 "--scheduler", "local:2"]) == 2
    err = capsys.readouterr().err
    assert err == "image2vec: error: --scheduler needs dask.distributed: pip install image2vec[dist]\n"
