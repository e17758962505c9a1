"""The experiment scripts end to end on the embedded samples: their outputs, checked for content."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tolerance import assert_close

from image2vec.datasets import SAMPLE_CAPTIONS, load_caption_data, sample_image_dir
from solvers.backend import gpu_available

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

import bench_fit  # noqa: E402
import common  # noqa: E402
import compare  # noqa: E402
import gallery  # noqa: E402
import l2_vs_ip  # noqa: E402
import similar_words  # noqa: E402
import timing  # noqa: E402
import weak_tags  # noqa: E402

FAST = ["--dim", "8", "--folds", "2"]


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """One feature store for every test: the sample's features are extracted once."""
    return tmp_path_factory.mktemp("features")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def assert_picture(path: Path, min_width: int = 300, min_height: int = 200) -> None:
    """A PNG that Pillow opens, of a sensible size, with more than a blank canvas in it."""
    assert path.stat().st_size > 5000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= min_height
        assert np.unique(np.asarray(image.convert("L"))).size > 20


def run_script(module, argv: list[str], capsys) -> tuple[int, str, str]:
    status = module.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_compare_on_the_sample(tmp_path, store, capsys):
    systems = ["learn-all/l2", "learn-all/ip/bcd", "prior", "knn"]
    status, printed, _ = run_script(
        compare, [str(tmp_path), "--systems", *systems, "--features", str(store), *FAST], capsys)
    assert status == 0
    rows = read_csv(tmp_path / "results.csv")
    assert [row["system"] for row in rows] == ["learn-all/l2/bcd", "learn-all/l2/sgd",
                                               "learn-all/ip/bcd", "prior", "knn"]
    for row in rows:
        for k in range(1, 6):
            for metric in ("precision", "recall", "f1"):
                assert 0 <= float(row[f"{metric}@{k}"]) <= 1
        for metric in ("map", "retrieval_recall@1", "retrieval_recall@5", "retrieval_recall@10"):
            assert 0 <= float(row[metric]) <= 1
        assert float(row["fit_seconds"]) >= 0 and row["n_folds"] == "2"
    assert any(float(row["f1@3"]) > 0 for row in rows)
    # Retrieval recall@K grows with K; F1@k is a real curve, not one number repeated.
    for row in rows:
        assert (float(row["retrieval_recall@1"]) <= float(row["retrieval_recall@5"])
                <= float(row["retrieval_recall@10"]))
    assert_f1_is_the_harmonic_mean(rows)
    assert len({row["f1@1"] for row in rows} | {row["f1@5"] for row in rows}) > 2

    table = (tmp_path / "results.md").read_text()
    assert "20 images" in table and "2-fold cross-validation" in table
    f1 = [float(line.split("|")[4]) for line in table.splitlines() if re.match(r"\| [a-z]", line)
          and not line.startswith("| system")]
    assert len(f1) == 5 and f1 == sorted(f1, reverse=True)
    for figure in ("f1_at_k.png", "l2_vs_ip.png", "objective.png"):
        assert_picture(tmp_path / figure)
    traces = read_csv(tmp_path / "objective_traces.csv")
    assert {row["system"] for row in traces} == {"learn-all/l2/bcd", "learn-all/l2/sgd", "learn-all/ip/bcd"}
    assert all(math.isfinite(float(row["objective"])) for row in traces)
    assert "learn-all/l2/sgd" in printed


def assert_f1_is_the_harmonic_mean(rows: list[dict]) -> None:
    """F1@k = 2 P R / (P + R) of the same row's precision@k and recall@k (to the csv's 6 digits)."""
    for row in rows:
        for k in range(1, 6):
            p, r, f1 = (float(row[f"{m}@{k}"]) for m in ("precision", "recall", "f1"))
            assert f1 == pytest.approx(2 * p * r / (p + r) if p + r else 0.0, rel=2e-5, abs=1e-9), (row["system"], k)


def test_committed_coco_mini_results_have_consistent_columns():
    """experiments/results/coco-mini/results.csv: one column per metric, and each row's F1 the
    harmonic mean of its precision and recall."""
    rows = read_csv(REPO / "experiments/results/coco-mini/results.csv")
    with open(REPO / "experiments/results/coco-mini/results.csv", encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
    assert len(header) == len(set(header)) and header == list(compare.CSV_COLUMNS)
    assert len(rows) == len(common.all_systems())
    assert_f1_is_the_harmonic_mean(rows)


def test_l2_vs_ip_on_the_sample(tmp_path, store, capsys):
    status, _, _ = run_script(l2_vs_ip, [str(tmp_path), "--features", str(store), *FAST], capsys)
    assert status == 0
    words = read_csv(tmp_path / "word_norms.csv")
    assert len(words) > 20
    assert all(float(row["norm_l2"]) >= 0 for row in words)
    aps = [float(row["ap"]) for row in words if row["ap"] != "nan"]
    assert aps and all(0 <= ap <= 1 for ap in aps)
    report = (tmp_path / "l2_vs_ip.md").read_text()
    assert re.search(r"Spearman correlation .*: \*\*-?\d\.\d{3}\*\*", report)
    shrunk = min(words, key=lambda row: float(row["norm_l2"]))["word"]
    assert f"| {shrunk} |" in report
    for row in read_csv(tmp_path / "disagreements.csv"):
        assert set(row["l2"].split(" + ")) != set(row["ip"].split(" + "))
        assert 0 <= int(row["l2_hits"]) <= 3 and 0 <= int(row["ip_hits"]) <= 3
    assert_picture(tmp_path / "norm_vs_visualness.png")


def test_similar_words_on_the_sample(tmp_path, store, capsys):
    status, printed, _ = run_script(
        similar_words, [str(tmp_path), "--features", str(store), "--dim", "8",
                        "--words", "red", "Grass", "yellow"], capsys)
    assert status == 0
    result = json.loads((tmp_path / "similar_words.json").read_text())
    red, grass, yellow = result["words"]
    assert red["word"] == "red" and grass["word"] == "grass"
    vocabulary = set(load_caption_data(SAMPLE_CAPTIONS, sample_image_dir(), store=store / "captions",
                                       progress=False).vocabulary.words)
    for row in (red, grass):
        for neighbours in (row["visual"], row["glove_vocabulary"]):
            assert len(neighbours) == 5 and row["word"] not in neighbours
            assert set(neighbours) <= vocabulary
    assert len(grass["glove"]) == 5 and "grass" not in grass["glove"]
    assert not set(grass["glove"]) <= vocabulary  # GloVe's own 400k words
    assert yellow["visual"] is None and len(yellow["glove"]) == 5  # GloVe knows it, COCO-sample doesn't
    assert "(not in the vocabulary)" in (tmp_path / "similar_words.md").read_text()
    assert "| red |" in printed


def test_gallery_on_the_sample(tmp_path, store, capsys):
    status, _, _ = run_script(
        gallery, [str(tmp_path), "--features", str(store), *FAST, "--n-images", "6",
                  "--systems", "learn-all/l2/bcd", "knn", "--query", "red + wall",
                  "--query", "snowy young"], capsys)
    assert status == 0
    page = (tmp_path / "gallery.html").read_text()
    sources = re.findall(r"<img src='([^']+)'", page)
    assert len(sources) >= 6 + 1
    for source in sources:
        with Image.open(tmp_path / source) as image:
            assert max(image.size) <= 256 and min(image.size) > 10
    assert "not in the vocabulary: snowy, young" in page
    result = json.loads((tmp_path / "gallery.json").read_text())
    assert len(result["images"]) == 6
    for shown in result["images"]:
        assert set(shown["summaries"]) == {"learn-all/l2/bcd", "knn"}
        assert all(1 <= len(words) <= 3 for words in shown["summaries"].values())
    red_wall, snowy = result["retrieval"]
    assert red_wall["words"] == ["red", "wall"] and len(red_wall["images"]) == 5
    distances = [hit["distance"] for hit in red_wall["images"]]
    assert distances == sorted(distances)
    assert snowy["images"] == []
    assert_picture(tmp_path / "gallery.png", 600, 400)
    assert_picture(tmp_path / "retrieval.png", 600, 150)


def test_weak_tags_on_the_flickr_sample(tmp_path, store, capsys):
    status, _, _ = run_script(weak_tags, [str(tmp_path), "--features", str(store), "--dim", "8"], capsys)
    assert status == 0
    weights = read_csv(tmp_path / "tag_weights.csv")
    assert len({row["image"] for row in weights}) > 10
    for row in weights:
        assert 0 <= float(row["weight"]) <= 1 and row["kept"] == str(int(float(row["weight"]) >= 0.5))
    report = (tmp_path / "weak_tags.md").read_text()
    assert "| astronaut.png |" in report and "~~spacesuit~~" in report  # a tag too rare to weigh
    means = read_csv(tmp_path / "tag_means.csv")
    assert [float(r["mean_weight"]) for r in means] == sorted(float(r["mean_weight"]) for r in means)


@pytest.mark.parametrize("module", [compare, l2_vs_ip, similar_words, gallery, weak_tags])
def test_help(module, capsys):
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_refuses_a_foreign_folder_without_a_traceback(tmp_path):
    foreign = tmp_path / "notes.txt"
    foreign.write_text("mine")
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "compare.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "not empty and was not written by an image2vec experiment" in done.stderr
    assert foreign.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_refuses_to_overwrite_a_foreign_file_before_working(tmp_path, capsys):
    common.OutputFolder(tmp_path)  # an experiment folder ...
    (tmp_path / "results.csv").write_text("somebody else's")  # ... where somebody left a file
    status, _, err = run_script(compare, [str(tmp_path), "--systems", "prior"], capsys)
    assert status == 2 and "refusing to overwrite" in err
    assert (tmp_path / "results.csv").read_text() == "somebody else's"
    assert not (tmp_path / "features").exists()  # refused before extracting anything


def test_rerun_into_its_own_folder_is_allowed(tmp_path, store, capsys):
    argv = [str(tmp_path), "--features", str(store), "--dim", "8", "--words", "red"]
    assert run_script(similar_words, argv, capsys)[0] == 0
    assert run_script(similar_words, argv, capsys)[0] == 0
    manifest = json.loads((tmp_path / common.MANIFEST).read_text())
    assert set(manifest["entries"]) == {"similar_words.md", "similar_words.json"}


@pytest.mark.parametrize("argv, message", [
    (["--coco", "{missing}"], "COCO folder"),
    (["--systems", "learn-all/l3"], "unknown system 'learn-all/l3'"),
    (["--systems", "prior", "--folds", "50"], "cannot make 50 folds of 20 images"),
])
def test_bad_input_is_one_line(tmp_path, store, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "nowhere") for a in argv]
    status, _, err = run_script(compare, [str(tmp_path / "out"), "--features", str(store), *argv], capsys)
    last = err.strip().splitlines()[-1]  # after the progress bars, if any
    assert status == 2 and last.startswith("compare.py: error: ") and message in last
    assert "Traceback" not in err


@pytest.mark.skipif(gpu_available(), reason="the refusal is for machines without a CUDA device")
def test_bench_fit_on_cuda_without_a_device_is_one_line(tmp_path, capsys):
    """Refused before any data is read or the output folder is made."""
    status, _, err = run_script(bench_fit, [str(tmp_path / "out"), "--device", "cuda"], capsys)
    assert status == 2 and err.strip() == ("bench_fit.py: error: --device cuda needs CuPy "
                                           "(pip install -e .[gpu]) and a CUDA device")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("warm_up", [False, True])
def test_benchmarks_time_every_implementation_in_turn(warm_up):
    """Round after round each callable in turn (after one untimed call each with warm_up): the
    medians of each one's times and its last result (bench_fit's Ridge beside every fit)."""
    calls = []

    def fit():
        calls.append("fit")
        time.sleep(0.05)
        return len(calls)

    times, results = timing.median_times({"ridge": lambda: calls.append("ridge"), "fit": fit}, 3,
                                         warm_up=warm_up)
    assert calls == ["ridge", "fit"] * (4 if warm_up else 3)
    assert results == {"ridge": None, "fit": len(calls)}
    assert times["fit"] >= 0.05 > times["ridge"]


def test_coco_folder_without_its_split(tmp_path, coco_mini, capsys):
    status, _, err = run_script(compare, [str(tmp_path / "out"), "--coco", str(coco_mini),
                                          "--split", "val2017"], capsys)
    assert status == 2 and "captions_val2017.json does not exist" in err


def test_system_names_expand():
    labels = [spec.label for spec in common.parse_systems(["learn-all", "knn", "learn-all/l2/bcd"])]
    assert labels == ["learn-all/l2/bcd", "learn-all/l2/sgd", "learn-all/ip/bcd", "learn-all/ip/sgd", "knn"]
    every = common.parse_systems(["all"])
    # 5 models x 2 objectives x 2 solvers, less the kernel model's SGD (common.SKIPPED)
    assert len(every) == 20 - 2 + len(common.systems.BASELINES)
    assert [spec.label for spec in common.parse_systems(["kernel"])] == ["kernel/l2/bcd", "kernel/ip/bcd"]


@pytest.fixture(scope="session")
def miniature_flickr8k(tmp_path_factory) -> Path:
    """The embedded sample in Flickr8k's layout: JPEGs, a token file, train and dev lists."""
    root = tmp_path_factory.mktemp("flickr8k")
    (root / "Flicker8k_Dataset").mkdir()
    (root / "Flickr8k_text").mkdir()
    sample = json.loads(SAMPLE_CAPTIONS.read_text())
    names = {}
    for image in sample["images"]:
        name = Path(image["file_name"]).stem + ".jpg"
        with Image.open(sample_image_dir() / image["file_name"]) as picture:
            picture.convert("RGB").save(root / "Flicker8k_Dataset" / name)
        names[image["id"]] = name
    lines, numbers = [], {}
    for annotation in sample["annotations"]:
        name = names[annotation["image_id"]]
        number = numbers[name] = numbers.get(name, -1) + 1
        lines.append(f"{name}#{number}\t{annotation['caption']}")
    (root / "Flickr8k_text" / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    ordered = sorted(names.values())
    (root / "Flickr8k_text" / "Flickr_8k.trainImages.txt").write_text("\n".join(ordered[:14]) + "\n")
    (root / "Flickr8k_text" / "Flickr_8k.devImages.txt").write_text("\n".join(ordered[14:]) + "\n")
    return root


def test_search_grids_widen_past_an_edge_by_their_ratio():
    import flickr8k

    assert flickr8k.widen([5, 10, 20, 40, 80], "high") == 160
    assert flickr8k.widen([5, 10, 20, 40, 80], "low") == 2  # 2.5 rounded: K is an integer
    assert flickr8k.widen([1, 2], "low") is None  # 0.5 rounds to 0: no K below 1
    assert flickr8k.widen([1e-4, 3e-4, 1e-3], "high") == pytest.approx(1e-3 * 1e-3 / 3e-4, rel=1e-5)  # 6 digits
    assert flickr8k.widen([0.0, 0.1, 1.0], "low") is None  # 0 bounds prior_weight's range
    grid = {"fit": {"lam": [1.0, 10.0], "dim": [64], "whiten": [False, True]},
            "readout": [("omp", 0.0), ("omp", 0.3), ("rank", None)]}
    grids = flickr8k.numeric_grids(grid)
    assert grids == {"lam": [1.0, 10.0], "prior_weight": [0.0, 0.3]}  # one value, booleans: no grid
    assert flickr8k.edges_of({"lam": 10.0, "prior_weight": None}, grids) == [("lam", "high")]
    assert flickr8k.edge_note({"lam": 1.0, "prior_weight": 0.0}, grids) == "lam:low prior_weight:low (bound)"


def test_search_combinations_drop_settings_that_do_not_apply():
    import flickr8k

    combos = flickr8k.combinations(flickr8k.SEARCH["knn"])
    assert len(combos) == 5 * (2 + 3)  # the temperature only with exp weighting
    assert {"n_neighbors": 20, "weighting": "cosine"} in combos
    assert {"n_neighbors": 20, "weighting": "exp", "temperature": 0.05} in combos


def test_flickr8k_benchmark_on_a_miniature(tmp_path, miniature_flickr8k, capsys, monkeypatch):
    import flickr8k

    monkeypatch.setattr(flickr8k, "SEARCH", {
        "reduced-rank/l2": {"fit": {"lam": [1e-3, 1e-2], "dim": [4]}, "readout": [("omp", 0.0), ("rank", None)]},
        "ridge": {"fit": {"alpha": [0.1, 1.0]}}})
    argv = [str(tmp_path / "out"), "--flickr8k", str(miniature_flickr8k), "--boot", "50",
            "--systems", "reduced-rank/l2/bcd", "learn-all/l2/bcd", "learn-all/ip/bcd", "knn", "ridge", "prior"]
    status, printed, err = run_script(flickr8k, argv, capsys)
    assert status == 0, err
    out = tmp_path / "out"
    chosen = json.loads((out / "chosen.json").read_text())
    assert set(chosen) == {"reduced-rank/l2", "ridge"}
    search = read_csv(out / "search.csv")
    # Two-value grids start with the choice at an edge: each widens by its ratio (10) until the
    # choice is inside or the cap is reached, and search.csv says which.
    for system, key in (("reduced-rank/l2", "lam"), ("ridge", "alpha")):
        mine = [row for row in search if row["system"] == system]
        values = sorted({json.loads(row["settings"])[key] for row in mine})
        assert 2 <= len(values) <= 2 + flickr8k.MAX_WIDENINGS
        assert_close(np.diff(np.log10(values)), 1.0, rtol=1e-6)
        assert len(mine) == len(values) * (2 if system == "reduced-rank/l2" else 1)  # read out two ways
        [best] = [row for row in mine if row["chosen"] == "1"]
        assert json.loads(best["settings"]) == chosen[system]
        assert float(best["value"]) == max(float(row["value"]) for row in mine)
        assert (key in best["at_edge"]) == (chosen[system][key] in (values[0], values[-1]))
        if best["at_edge"]:
            assert len(values) == 2 + flickr8k.MAX_WIDENINGS  # widened as far as allowed
    rows = {row["system"]: row for row in read_csv(out / "results.csv")}
    assert set(rows) == {"reduced-rank/l2/bcd", "learn-all/l2/bcd", "learn-all/ip/bcd", "knn", "ridge", "prior"}
    for row in rows.values():
        for metric in ("P@3", "mAP", "search R@10", "annotation R@10"):
            value, low, high = (float(row[f"{metric} {part}"]) for part in ("value", "low", "high"))
            assert low <= high and 0 <= value <= (100 if "R@" in metric else 1)
    assert float(rows["prior"]["search R@1 value"]) == 0  # every image scored alike: ties count against
    differences = (out / "differences.md").read_text()
    assert "| l2 - ip | learn-all/l2/bcd | learn-all/ip/bcd |" in differences
    assert "OMP - ranking" in differences and "Image2Vec - knn" in differences
    retrieval = (out / "retrieval.md").read_text()
    assert "Klein et al. 2015" in retrieval and "60.4" in retrieval
    run = json.loads((out / "run.json").read_text())
    assert run["wall_seconds"] > 0 and run["peak_rss_mb"] > 100
    for figure in ("f1_at_k.png", "l2_vs_ip.png", "objective_vs_time.png", "word_norms.png"):
        assert_picture(out / figure)
    # A second run reuses every fit: nothing is refitted, the same table comes out.
    before = (out / "results.csv").read_text()
    monkeypatch.setattr(flickr8k, "fit_and_score", lambda *a, **k: pytest.fail("refitted"))
    assert run_script(flickr8k, argv, capsys)[0] == 0
    assert (out / "results.csv").read_text() == before


def test_flickr8k_search_by_image_search_recall(tmp_path, miniature_flickr8k, capsys, monkeypatch):
    """--criterion "search R@10": every searched system keeps the settings of best dev image
    search R@10, and search.csv says by which metric."""
    import flickr8k

    monkeypatch.setattr(flickr8k, "SEARCH", {
        "reduced-rank/l2": {"fit": {"lam": [1e-3], "dim": [2, 4, 8]}, "readout": [("omp", 0.1), ("omp", 1.0)]},
        "ridge": {"fit": {"alpha": [0.1, 1.0, 10.0]}}})
    monkeypatch.setattr(flickr8k, "MAX_WIDENINGS", 0)
    argv = [str(tmp_path / "out"), "--flickr8k", str(miniature_flickr8k), "--boot", "20", "--scores-only",
            "--systems", "reduced-rank/l2/bcd", "ridge", "--criterion", "search R@10"]
    status, _, err = run_script(flickr8k, argv, capsys)
    assert status == 0, err
    chosen = json.loads((tmp_path / "out" / "chosen.json").read_text())
    search = read_csv(tmp_path / "out" / "search.csv")
    rows = {row["system"]: row for row in read_csv(tmp_path / "out" / "results.csv")}
    for system in ("reduced-rank/l2", "ridge"):
        mine = [row for row in search if row["system"] == system]
        assert len(mine) == (6 if system == "reduced-rank/l2" else 3)  # two read-outs of each fit
        assert {row["criterion"] for row in mine} == {"search R@10"}
        assert "prior_weight" not in "".join(row["at_edge"] for row in mine)  # not searched by R@10
        [best] = [row for row in mine if row["chosen"] == "1"]
        assert json.loads(best["settings"]) == chosen[system]
        assert float(best["value"]) == max(float(row["value"]) for row in mine)
    # The value searched on is the system's image search R@10 in the results.
    assert_close(float(rows["ridge"]["search R@10 value"]),
                 max(float(row["value"]) for row in search if row["system"] == "ridge"), rtol=1e-9)


def test_inputs_benchmark_compares_variants_paired_and_times_extraction(tmp_path, miniature_flickr8k, capsys,
                                                                        monkeypatch):
    import flickr8k
    import inputs_flickr8k

    monkeypatch.setattr(flickr8k, "SEARCH", {
        "reduced-rank/l2": {"fit": {"lam": [1e-3], "dim": [4]}, "readout": [("omp", 0.0)]},
        "ridge": {"fit": {"alpha": [1.0]}}, "knn": {"fit": {"n_neighbors": [3]}}})
    argv = [str(tmp_path / "out"), "--flickr8k", str(miniature_flickr8k), "--boot", "20", "--timing-images", "4",
            "--repeats", "1", "--variants", "efficientnet-lite0", "efficientnet-lite0:verbs"]
    status, printed, err = run_script(inputs_flickr8k, argv, capsys)
    assert status == 0, err
    rows = read_csv(tmp_path / "out" / "inputs.csv")
    assert [(row["variant"], row["system"]) for row in rows] == [
        (variant, system) for variant in ("efficientnet-lite0", "efficientnet-lite0:verbs")
        for system in inputs_flickr8k.SYSTEMS]
    for row in rows[:3]:  # the baseline against itself: no difference, whatever the resample
        for metric in inputs_flickr8k.METRICS:
            assert [float(row[f"{metric} diff {part}"]) for part in ("value", "low", "high")] == [0, 0, 0]
    verbs_run = tmp_path / "out" / "variants" / "efficientnet-lite0-verbs"
    assert "(noun, adj, verb;" in (verbs_run / "results.md").read_text()
    [speed] = read_csv(tmp_path / "out" / "speed.csv")
    assert speed["extractor"] == "efficientnet-lite0" and float(speed["relative_to_first"]) == 1
    assert float(speed["images_per_second"]) > 0
    assert "P@3 - efficientnet-lite0" in (tmp_path / "out" / "inputs.md").read_text()
    bad = run_script(inputs_flickr8k, [str(tmp_path / "bad"), "--flickr8k", str(miniature_flickr8k),
                                       "--variants", "efficientnet-lite0:adverbs"], capsys)
    assert bad[0] == 2 and "the only option is ':verbs'" in bad[2]


def test_learning_curve_chooses_each_subsets_settings_on_dev_and_reports_the_paired_ratio(
        tmp_path, miniature_flickr8k, capsys, monkeypatch):
    import learning_curve_flickr8k as curve

    monkeypatch.setattr(curve, "GRIDS", {curve.MODEL: ("lam", (1e-3, 1e-1)), curve.PEER: ("n_neighbors", (1, 3))})
    chosen = tmp_path / "chosen.json"
    chosen.write_text(json.dumps({"reduced-rank/l2": {"lam": 1.0, "dim": 4, "readout": "omp", "prior_weight": 0.0},
                                  "knn": {"n_neighbors": 5, "weighting": "uniform"}}))
    argv = [str(tmp_path / "out"), "--flickr8k", str(miniature_flickr8k), "--boot", "20", "--chosen", str(chosen),
            "--fractions", "0.5", "1", "--draws", "2"]
    status, printed, err = run_script(curve, argv, capsys)
    assert status == 0, err
    rows = read_csv(tmp_path / "out" / "learning_curve.csv")
    subsets = sorted({(row["fraction"], row["draw"], row["n_train"]) for row in rows})
    assert subsets == [("0.5", "0", "7"), ("0.5", "1", "7"), ("1", "0", "14")]  # one draw of the whole split
    chosen_p3 = {}
    for fraction, draw, _ in subsets:
        for system, (key, values) in curve.GRIDS.items():
            mine = [row for row in rows if (row["fraction"], row["draw"], row["system"]) == (fraction, draw, system)]
            assert [float(row["value"]) for row in mine] == list(values) and {row["setting"] for row in mine} == {key}
            [best] = [row for row in mine if row["chosen"] == "1"]
            assert float(best["P@3"]) == max(float(row["P@3"]) for row in mine)
            chosen_p3[fraction, draw, system] = float(best["P@3"])
    table = (tmp_path / "out" / "learning_curve.md").read_text()
    ratios = [float(line.split("|")[-2].split()[0]) for line in table.splitlines() if re.match(r"\| \d", line)]
    expected = [chosen_p3[f, d, curve.MODEL] / chosen_p3[f, d, curve.PEER] for f, d, _ in subsets]
    assert_close(ratios, expected, rtol=1e-3)  # printed to 3 decimals (ratios near 1)
    assert_picture(tmp_path / "out" / "learning_curve.png")
    # A second run reads every fit back: nothing is refitted, the same table comes out.
    monkeypatch.setattr(curve.flickr8k, "fit_and_score", lambda *a, **k: pytest.fail("refitted"))
    assert run_script(curve, argv, capsys)[0] == 0
    assert (tmp_path / "out" / "learning_curve.md").read_text() == table
    missing = run_script(curve, [str(tmp_path / "bad"), "--flickr8k", str(miniature_flickr8k),
                                 "--chosen", str(tmp_path / "none.json")], capsys)
    assert missing[0] == 2 and "none.json does not exist" in missing[2]
    with pytest.raises(SystemExit):
        curve.build_parser().parse_args([str(tmp_path / "bad"), "--fractions", "1.5"])
