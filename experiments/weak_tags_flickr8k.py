"""The weak-tag benchmark: systems trained on Flickr-style noisy tags of the Flickr8k photos.

The Flickr8k train photos carry the noisy tags of ``experiments/flickr_tags.py`` (about half of
them not in the picture: users' batch tags, copied tags; many caption words missing). On them
are trained, each with a small search on dev: weak-tag (``l2``: its lam and the lower bound of
its tag weights; ``ip``), learn-all (``l2``: lam; ``ip``), reduced-rank (lam) and knn (K), the
read-out (OMP prior weight, or ranking) tried on each fit. They are scored two ways:

- **dev against the clean captions**: 3-word summaries against the caption words of the 1,000
  dev photos that are in the tag vocabulary (P@3, mAP over words) and image search by the dev
  captions (R@10), with :func:`image2vec.evaluate.image_scores` as ``experiments/flickr8k.py``
  does; the search criterion is dev P@3;
- **tag relevance on the train photos' own tags**: each train photo's noisy tags ranked by the
  system's relevance, a_nv for the weak-tag model and the word score (D^T r_n, knn's vote) for
  the others, its average precision against the truth file (tag in the photo's captions or
  not), averaged over the photos that have a true and a false tag. The anchor is neighbour
  voting (Li, Snoek and Worring 2009, "Learning social tag relevance by neighbor voting"):
  relevance(t, n) = votes for t among the K visual neighbours of photo n (cosine of the centred,
  normalised features, at most one neighbour per user and none of n's own user) minus
  K * prior(t); K = 100, set in advance (a K sweep is reported beside it, not chosen on the truth).

95% percentile bootstrap intervals over photos (dev photos for the dev figures, train photos for
tag relevance) and paired bootstrap differences: weak-tag - learn-all and weak-tag - neighbour
voting. The curve of dev P@3 against weak-tag's ``tol`` (and the sweeps it takes) is recorded.

Writes into OUT: ``search.csv``, ``chosen.json``, ``results.csv``, ``results.md`` (the tables,
the differences and the tol curve), ``tol_curve.csv``, ``run.json``.

    python experiments/flickr_tags.py experiments/results/flickr_tags
    python experiments/weak_tags_flickr8k.py experiments/results/weak_tags_flickr8k \\
        --tags experiments/results/flickr_tags --features /work/cache/f8k
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import flickr8k
import numpy as np
import scipy.sparse as sp
from sklearn.metrics import average_precision_score
from tqdm import tqdm

from image2vec import systems
from image2vec.arrays import preprocess_features
from image2vec.datasets import WordData
from image2vec.evaluate import ImageScores, bootstrap_weights, image_scores, score_metrics, with_intervals
from image2vec.flickr import load_tag_tsv
from image2vec.vocabulary import build_vocabulary, targets

OUTPUTS = ("search.csv", "chosen.json", "results.csv", "results.md", "tol_curve.csv", "run.json")
#: The dev search: fit settings (every combination fitted once) and read-outs tried on each fit.
OMP_READOUTS = [("omp", 0.03), ("omp", 0.1), ("omp", 0.3), ("rank", None)]
SEARCH = {
    "weak-tag/l2": {"fit": {"lam": [1e-3, 1e-2, 1e-1, 1.0, 10.0], "min_tag_weight": [0.0, 0.3]},
                    "readout": OMP_READOUTS},
    "weak-tag/ip": {"fit": {}, "readout": OMP_READOUTS},
    "learn-all/l2": {"fit": {"lam": [1.0, 10.0, 100.0]}, "readout": OMP_READOUTS},
    "learn-all/ip": {"fit": {}, "readout": OMP_READOUTS},
    "reduced-rank/l2": {"fit": {"lam": [1e-4, 3e-4, 1e-3, 3e-3]},
                        "readout": [("omp", 0.0), ("omp", 0.1), ("rank", None)]},
    "knn": {"fit": {"n_neighbors": [5, 10, 20, 40]}, "readout": []},
}
TOLS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5)
VOTING_K = 100
#: The weak-tag model at the package's defaults, scored beside the dev search's choice.
DEFAULTS = "weak-tag/l2 at its defaults"
VOTING_SWEEP = (25, 50, 100, 200)
METRICS = ("P@3", "mAP", "search R@10")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = common.script_parser(__file__, __doc__)
    common.add_output_argument(parser)
    common.add_flickr8k_arguments(parser)
    parser.add_argument("--tags", type=Path, default=Path(__file__).parent / "results" / "flickr_tags",
                        help="output folder of flickr_tags.py for the train split: tags.tsv, truth.tsv, "
                        "users.tsv (default: experiments/results/flickr_tags)")
    parser.add_argument("--min-count", type=common.positive_int, default=5,
                        help="keep tags of at least this many train photos (default: 5)")
    parser.add_argument("--no-search", action="store_true", help="each system at its defaults")
    parser.add_argument("--boot", type=common.positive_int, default=1000,
                        help="bootstrap replicates (default: 1000; dev mAP uses a fifth)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser


# ------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class TagBenchmark:
    """The train photos' noisy tags and the dev photos' clean caption words, in the tag vocabulary.

    Attributes
    ----------
    words : list of str
        The tag vocabulary (tags of at least ``min_count`` train photos).
    X : csr_matrix of shape (N_train, V)
        Binary noisy tags of the train photos.
    tag_truth : csr_matrix of shape (N_train, V)
        1 on the tags of X that are in the photo's captions (the truth file), else 0 (stored).
    users : ndarray of shape (N_train,)
    dev_truth : csr_matrix of shape (N_dev, V)
        The dev photos' caption words in the tag vocabulary.
    dev_captions : csr_matrix of shape (M, V)
        Each dev caption's words in the tag vocabulary.
    """

    words: list[str]
    X: sp.csr_matrix
    tag_truth: sp.csr_matrix
    users: np.ndarray
    dev_truth: sp.csr_matrix
    dev_captions: sp.csr_matrix


def load_benchmark(folder: Path, train: WordData, dev: WordData, image_dir: Path, min_count: int) -> TagBenchmark:
    """Read flickr_tags.py's files for the train photos (in the order of ``train``)."""
    for name in ("tags.tsv", "truth.tsv", "users.tsv"):
        if not (folder / name).is_file():
            raise common.ExperimentError(f"{folder / name} does not exist: run experiments/flickr_tags.py "
                                         f"{folder} first")
    tagged = load_tag_tsv(folder / "tags.tsv", image_dir)
    position = {key: i for i, key in enumerate(tagged.keys)}
    missing = [key for key in train.keys if key not in position]
    if missing:
        raise common.ExperimentError(f"{len(missing)} train photos have no line in {folder / 'tags.tsv'}, "
                                     f"e.g. {missing[0]}: generate the tags of the train split")
    documents = [[tagged.tags[position[key]]] for key in train.keys]
    vocabulary = build_vocabulary(documents, min_count=min_count, info={"source": str(folder)})
    X = targets(documents, vocabulary, binary=True).tocsr()
    X.sort_indices()
    column = {w: v for v, w in enumerate(vocabulary.words)}
    row = {key: n for n, key in enumerate(train.keys)}
    true_pairs, users = set(), np.zeros(len(train.keys), dtype=np.int64)
    with open(folder / "truth.tsv", newline="", encoding="utf-8") as fh:
        for record in csv.DictReader(fh, delimiter="\t"):
            if record["in_captions"] == "1" and record["image"] in row and record["tag"] in column:
                true_pairs.add((row[record["image"]], column[record["tag"]]))
    with open(folder / "users.tsv", newline="", encoding="utf-8") as fh:
        for record in csv.DictReader(fh, delimiter="\t"):
            if record["image"] in row:
                users[row[record["image"]]] = int(record["user"])
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    truth = sp.csr_matrix(([float((r, c) in true_pairs) for r, c in zip(rows, X.indices)], X.indices.copy(),
                           X.indptr.copy()), shape=X.shape)
    # Caption vocabulary -> tag vocabulary (the tag words that are caption words of train).
    shared = [(u, column[word]) for u, word in enumerate(dev.vocabulary.words) if word in column]
    mapping = sp.csr_matrix((np.ones(len(shared)), tuple(np.array(shared, dtype=np.int64).reshape(-1, 2).T)),
                            shape=(len(dev.vocabulary.words), len(column)))
    return TagBenchmark(list(vocabulary.words), X, truth, users, (dev.truth @ mapping).tocsr(),
                        (dev.captions @ mapping).tocsr())


# --------------------------------------------------------------------------------------- systems


@dataclass
class Scored:
    """One fitted system: its settings, dev scores, tag relevance per train photo, fit time."""

    label: str
    settings: dict
    scores: ImageScores | None
    relevance_ap: np.ndarray
    fit_seconds: float
    n_iter: int = 0


def make(label: str, settings: dict, seed: int) -> Any:
    """A new system from ``model/objective`` or a baseline name and its settings."""
    parts = label.split("/")
    extra = {"objective": parts[1], "solver": "bcd"} if len(parts) > 1 else {}
    return systems.make_system(parts[0], dim=256, random_state=seed, **extra, **settings)


def fit(label: str, settings: dict, train: WordData, bench: TagBenchmark, seed: int) -> tuple[Any, float]:
    system = make(label, settings, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dims lowered, solvers stopped: n_iter is recorded
        start = time.perf_counter()
        system.fit(train.features, bench.X, words=bench.words)
    return system, time.perf_counter() - start


def dev_scores(system: Any, dev: WordData, bench: TagBenchmark) -> ImageScores:
    return image_scores(system, dev.features, bench.dev_truth, bench.dev_captions, dev.caption_images)


def relevance_of(system: Any, train: WordData, bench: TagBenchmark) -> np.ndarray:
    """The relevance of every stored tag of X (CSR order): a_nv (weak-tag), else D^T r_n."""
    if hasattr(system, "tag_weights_"):
        weights = system.tag_weights_.tocsr()
        rows = np.repeat(np.arange(bench.X.shape[0]), np.diff(bench.X.indptr))
        return np.asarray(weights[rows, bench.X.indices]).ravel()
    scores = system.decision_function(train.features)
    rows = np.repeat(np.arange(bench.X.shape[0]), np.diff(bench.X.indptr))
    return scores[rows, bench.X.indices]


def per_photo_ap(relevance: np.ndarray, bench: TagBenchmark) -> np.ndarray:
    """Average precision of each photo's tags ranked by ``relevance`` (NaN where a photo has no
    true or no false tag: nothing to rank)."""
    out = np.full(bench.X.shape[0], np.nan)
    truth, indptr = bench.tag_truth.data, bench.X.indptr
    for n in range(bench.X.shape[0]):
        entries = slice(indptr[n], indptr[n + 1])
        relevant = truth[entries] > 0
        if relevant.any() and not relevant.all():
            out[n] = average_precision_score(relevant, relevance[entries])
    return out


def neighbour_voting(train: WordData, bench: TagBenchmark, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Neighbour-voting relevance (Li, Snoek and Worring 2009) of every stored tag, per K.

    votes(t, n) = #{neighbours of n with tag t} - K prior(t), prior(t) = share of photos with t;
    neighbours by cosine of the centred, normalised features, one per user, none of n's user.
    """
    F = preprocess_features(train.features, train.features.mean(axis=0)).astype(np.float32)
    n, users, widest = len(F), bench.users, max(ks)
    neighbours = np.zeros((n, widest), dtype=np.int64)
    for start in tqdm(range(0, n, 1000), desc="neighbours", unit="chunk"):
        similarity = F[start:start + 1000] @ F.T
        order = np.argsort(-similarity, axis=1)
        for i, candidates in enumerate(order, start):
            seen, found = {users[i]}, []
            for j in candidates:
                if users[j] not in seen:
                    seen.add(users[j])
                    found.append(j)
                    if len(found) == widest:
                        break
            neighbours[i, :len(found)] = found  # fewer users than K: the rest repeat photo 0 (never here)
    X = (bench.X > 0).astype(np.float64).tocsr()
    prior = np.asarray(X.mean(axis=0)).ravel()
    rows = np.repeat(np.arange(n), np.diff(X.indptr))
    out = {}
    for k in ks:
        A = sp.csr_matrix((np.ones(n * k), neighbours[:, :k].ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
        votes = (A @ X).tocsr()
        out[k] = np.asarray(votes[rows, X.indices]).ravel() - k * prior[X.indices]
    return out


# ----------------------------------------------------------------------------------------- search


def search(train: WordData, dev: WordData, bench: TagBenchmark,
           args: argparse.Namespace) -> tuple[dict, dict, list]:
    """Each system's settings with the best dev P@3 (fit settings x read-outs), its fitted system
    (set to that read-out) and fit time, and the rows of every setting tried."""
    chosen, fitted, rows = {}, {}, []
    for label, grid in SEARCH.items():
        names = list(grid["fit"])
        combos = [dict(zip(names, values)) for values in itertools.product(*grid["fit"].values())]
        if args.no_search:
            combos, readouts = [{}], []
        else:
            readouts = grid["readout"]
        best = None
        for settings in tqdm(combos, desc=f"search {label}", unit="fit"):
            system, seconds = fit(label, settings, train, bench, args.seed)
            defaults = {} if not readouts else {"readout": "omp", "prior_weight": None}
            options = [defaults] + [{"readout": r, "prior_weight": p} for r, p in readouts]
            for option in options:
                if option:
                    system.set_params(**option)
                value = float(score_metrics(dev_scores(system, dev, bench))["P@3"][0])
                full = {**settings, **option}
                rows.append({"system": label, "settings": json.dumps(full), "dev P@3": value,
                             "fit_seconds": seconds, "n_iter": int(getattr(system, "n_iter_", 0))})
                if best is None or value > best[0]:
                    best = (value, full, system, seconds, option)
        chosen[label] = best[1]
        best[2].set_params(**best[4])
        fitted[label] = (best[2], best[3])
        print(f"{label}: {best[1]} (dev P@3 {best[0]:.3f})", flush=True)
    return chosen, fitted, rows


# ---------------------------------------------------------------------------------------- figures


def intervals(estimate: float, replicates: np.ndarray, corrected: bool = False) -> tuple[float, float, float]:
    return with_intervals({"x": np.array([estimate])}, {"x": replicates}, corrected=("x",) if corrected else ())["x"]


def dev_replicates(scores: ImageScores, weights: np.ndarray) -> dict[str, np.ndarray]:
    every = score_metrics(scores, weights, map_weights=weights[: max(1, len(weights) // 5)])
    return {name: every[name] for name in METRICS}


def ap_replicates(ap: np.ndarray, weights: np.ndarray) -> np.ndarray:
    valid = ~np.isnan(ap)
    return (weights[:, valid] @ ap[valid]) / weights[:, valid].sum(axis=1)


def cell(value: tuple[float, float, float], digits: int = 3) -> str:
    return f"{value[0]:.{digits}f} [{value[1]:.{digits}f}, {value[2]:.{digits}f}]"


def experiment(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    out = common.OutputFolder(args.out, OUTPUTS)
    train, dev = flickr8k.load_splits(args, out)
    bench = load_benchmark(args.tags, train, dev, args.flickr8k / "Flicker8k_Dataset", args.min_count)
    print(f"{len(bench.words)} tags in the vocabulary, {bench.X.nnz} train tags, "
          f"{1 - bench.tag_truth.data.mean():.3f} of them not in the captions", flush=True)
    chosen, fitted, search_rows = search(train, dev, bench, args)
    out.write_csv("search.csv", search_rows, ("system", "settings", "dev P@3", "fit_seconds", "n_iter"))
    out.write_json("chosen.json", chosen)

    # The package's defaults (chosen under the constraint of separating planted noise: README).
    fitted[DEFAULTS] = fit("weak-tag/l2", {}, train, bench, args.seed)
    scored: dict[str, Scored] = {}
    for label, settings in [*chosen.items(), (DEFAULTS, {})]:
        system, seconds = fitted[label]
        scored[label] = Scored(label, settings, dev_scores(system, dev, bench),
                               per_photo_ap(relevance_of(system, train, bench), bench), seconds,
                               int(getattr(system, "n_iter_", 0)))
        if label in ("weak-tag/l2", DEFAULTS):  # a_nv ties at the bounds: D^T r_n too, and as tie-break
            rows = np.repeat(np.arange(bench.X.shape[0]), np.diff(bench.X.indptr))
            words = system.decision_function(train.features)[rows, bench.X.indices]
            a = relevance_of(system, train, bench)
            lexicographic = np.empty(len(a))
            lexicographic[np.lexsort((words, a))] = np.arange(len(a))  # by a, then by D^T r_n
            for name, relevance in ((f"{label}, ranked by D^T r", words),
                                    (f"{label}, ranked by a then D^T r", lexicographic)):
                scored[name] = Scored(name, settings, None, per_photo_ap(relevance, bench), seconds)
    voting = neighbour_voting(train, bench, VOTING_SWEEP)
    for k in VOTING_SWEEP:
        name = f"neighbour voting (K {k})"
        scored[name] = Scored(name, {"K": k}, None, per_photo_ap(voting[k], bench), 0.0)
    anchor = f"neighbour voting (K {VOTING_K})"

    dev_weights = bootstrap_weights(dev.features.shape[0], args.boot, args.seed)
    train_weights = bootstrap_weights(train.features.shape[0], args.boot, args.seed + 1)
    result_rows, table = [], []
    replicate = {}
    for name, item in scored.items():
        row = {"system": name, "settings": json.dumps(item.settings), "fit_seconds": item.fit_seconds,
               "n_iter": item.n_iter}
        if item.scores is not None:
            estimates = {k: v[0] for k, v in score_metrics(item.scores).items()}
            reps = dev_replicates(item.scores, dev_weights)
            for metric in METRICS:
                row[metric], row[f"{metric} low"], row[f"{metric} high"] = intervals(
                    float(estimates[metric]), reps[metric], corrected=metric == "mAP")
            replicate[name] = reps
        ap_estimate = float(np.nanmean(item.relevance_ap))
        ap_reps = ap_replicates(item.relevance_ap, train_weights)
        row["tag mAP"], row["tag mAP low"], row["tag mAP high"] = intervals(ap_estimate, ap_reps, corrected=True)
        replicate.setdefault(name, {})["tag mAP"] = ap_reps
        replicate[name]["tag mAP estimate"] = ap_estimate
        result_rows.append(row)
        table.append({"system": name, "settings": json.dumps(item.settings),
                      **{m: cell((row[m], row[f"{m} low"], row[f"{m} high"])) if m in row else ""
                         for m in (*METRICS, "tag mAP")}})
    columns = ["system", "settings", "fit_seconds", "n_iter"] + [
        f"{m}{suffix}" for m in (*METRICS, "tag mAP") for suffix in ("", " low", " high")]
    out.write_csv("results.csv", result_rows, columns)

    differences = []
    pairs = [("weak-tag/l2", "learn-all/l2"), (DEFAULTS, "learn-all/l2"), ("weak-tag/ip", "learn-all/ip"),
             ("weak-tag/l2", anchor), (DEFAULTS, anchor), (f"{DEFAULTS}, ranked by a then D^T r", anchor),
             ("learn-all/l2", anchor), ("reduced-rank/l2", anchor), (DEFAULTS, f"{DEFAULTS}, ranked by D^T r")]
    by_name = {row["system"]: row for row in result_rows}
    for a, b in pairs:
        for metric in (*METRICS, "tag mAP"):
            if metric not in by_name[a] or metric not in by_name[b]:
                continue
            diff = replicate[a][metric] - replicate[b][metric]
            estimate = by_name[a][metric] - by_name[b][metric]
            differences.append({"difference": f"{a} - {b}", "metric": metric,
                                "value": cell(intervals(estimate, diff, corrected="mAP" in metric))})

    curve = tol_curve({}, train, dev, bench, args.seed)
    out.write_csv("tol_curve.csv", curve, ("tol", "n_iter", "fit_seconds", "dev P@3", "tag mAP"))
    seconds = time.perf_counter() - started
    report = (
        "# Weak tags on Flickr8k: systems trained on Flickr-style noisy tags\n\n"
        f"    {args.command}\n\n"
        f"Train: {bench.X.shape[0]:,} photos, {bench.X.nnz:,} noisy tags in a vocabulary of {len(bench.words)} "
        f"(min_count {args.min_count}), {1 - bench.tag_truth.data.mean():.1%} of them not in the photo's "
        f"captions (tags: {args.tags}). Dev: {dev.features.shape[0]:,} photos scored against their caption "
        f"words in the tag vocabulary. Settings chosen on dev P@3 ({'no search' if args.no_search else 'search.csv'}). "
        f"95% bootstrap intervals ({args.boot} replicates; dev mAP {max(1, args.boot // 5)}), over dev photos "
        f"for P@3, mAP and image search R@10 (%), over train photos for tag mAP "
        f"({int((~np.isnan(next(iter(scored.values())).relevance_ap)).sum()):,} photos with a true and a false "
        f"tag). Run time {seconds / 60:.1f} min.\n\n## Results\n\n"
        + common.markdown_table(table, [("system", "system"), ("settings", "settings")]
                                + [(m, m) for m in (*METRICS, "tag mAP")])
        + "\n## Paired differences\n\n"
        + common.markdown_table(differences, [("difference", "difference"), ("metric", "metric"),
                                              ("value", "value [95% CI]")])
        + "\n## weak-tag/l2 at its defaults: dev P@3 against tol\n\n"
        + common.markdown_table(curve, [("tol", "tol"), ("n_iter", "sweeps"), ("fit_seconds", "fit s"),
                                        ("dev P@3", "dev P@3"), ("tag mAP", "tag mAP")], digits=4))
    out.write_text("results.md", report)
    out.write_json("run.json", {"command": args.command, "seconds": seconds,
                                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    print(report)


def tol_curve(settings: dict, train: WordData, dev: WordData, bench: TagBenchmark, seed: int) -> list[dict]:
    """weak-tag/l2 at ``settings`` for each tol of :data:`TOLS`: sweeps, time, dev P@3, tag mAP."""
    rows = []
    for tol in tqdm(TOLS, desc="tol curve", unit="fit"):
        system, seconds = fit("weak-tag/l2", {**settings, "tol": tol, "max_iter": 1000}, train, bench, seed)
        p3 = float(score_metrics(dev_scores(system, dev, bench))["P@3"][0])
        ap = float(np.nanmean(per_photo_ap(relevance_of(system, train, bench), bench)))
        rows.append({"tol": tol, "n_iter": int(system.n_iter_), "fit_seconds": seconds, "dev P@3": p3, "tag mAP": ap})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return common.run(experiment, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
