"""The Flickr8k benchmark: every system trained on train (6,000 images), scored on dev (1,000).

Flickr8k (Hodosh, Young and Hockenmaier 2013): 8,091 Flickr photos with 5 captions each; the
official train and dev splits are read from the original token file and split lists. The
vocabulary (nouns and adjectives of the captions, ``min_count`` 5) comes from train only.
Settings are chosen on dev by one search for every system, knn's K and vote weighting included
(by summary P@3; by image search R@10 with ``--criterion "search R@10"``, cca always):
a numeric setting chosen at the edge of its grid widens the grid past that edge (by the ratio
of its two outermost values, at most ``MAX_WIDENINGS`` times) until no choice sits at an edge;
``search.csv`` marks the choices still at one. The official test split is not used.

Every system of the registry is scored by one harness (:func:`image2vec.evaluate.image_scores`):

- summaries: precision, recall and F1 of k-word summaries (k = 1..5) against the vocabulary
  words of the image's 5 captions, micro-averaged, and mAP over words;
- the standard sentence protocol: image search (each of the 5,000 dev captions, as the bag of
  its vocabulary words, ranks the 1,000 dev images) and image annotation (each image ranks the
  5,000 captions), recall at 1, 5, 10 (in %) and median rank. Image2Vec scores a caption as the
  sum of its word vectors, D x, against the image embedding r (cosine of the centred vectors);
  ridge and cca by cosine in their own spaces; the others by the sum of the caption words'
  standardised word scores;
- 95% percentile bootstrap intervals over dev images (the captions of an image go with it) for
  every figure, and paired bootstrap differences for the questions the README answers.

Writes into OUT (resumable: finished fits are kept in ``systems/`` and ``search/``):

- ``search.csv``, ``chosen.json``: the settings tried on dev (``chosen`` marks the kept ones,
  ``at_edge`` the settings at an edge of their final grid) and the ones kept;
- ``results.csv``, ``results.md``: every system with its intervals, fit time and peak memory;
- ``differences.md``: paired differences (l2 - ip, bcd - sgd, Image2Vec - knn, - cca, - ridge,
  OMP - ranking);
- ``retrieval.md``: image search and annotation beside the published Flickr8k test figures;
- ``f1_at_k.png``, ``l2_vs_ip.png``, ``objective_vs_time.png``, ``word_norms.png``,
  ``similar.md``, ``run.json`` (the command, wall time and peak memory of the whole run).

    python experiments/flickr8k.py experiments/results/flickr8k              # everything
    python experiments/flickr8k.py out/f8k --systems reduced-rank knn --no-search
    python experiments/flickr8k.py experiments/results/flickr8k_search --extractor efficientnet-lite2 \
        --pos noun adj verb --criterion "search R@10" --scores-only     # a search model
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import resource
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import common
import numpy as np
from scipy.stats import spearmanr

from image2vec import systems
from image2vec.datasets import WordData, load_caption_data
from image2vec.evaluate import (
    ImageScores,
    bootstrap_weights,
    image_scores,
    score_metrics,
    with_intervals,
)
from image2vec.model import MODELS, OBJECTIVES, SOLVERS, Image2Vec

OUTPUTS = ("search.csv", "chosen.json", "results.csv", "results.md", "differences.md",
           "retrieval.md", "f1_at_k.png", "l2_vs_ip.png", "objective_vs_time.png", "objective_traces.csv",
           "word_norms.png", "similar.md", "run.json", "systems/", "search/")
#: Published Flickr8k test figures, R@10 (annotation, image search), other features, same protocol
#: (the table of issue 12: Frome et al. 2013, Karpathy and Fei-Fei 2015, Kiros et al. 2014,
#: Klein et al. 2015).
PUBLISHED = {
    "DeViSE (Frome et al. 2013)": (27.3, 29.6),
    "BRNN (Karpathy & Fei-Fei 2015)": (54.2, 44.7),
    "Kiros et al. 2014 (VGG)": (55.0, 51.5),
    "Klein et al. 2015 mean vector + CCA (VGG)": (61.2, 60.4),
}
PROBES = ("yellow", "red", "dog", "beach", "snow", "ball", "water", "grass", "child", "bike")
#: The settings searched on dev, per system name; every combination is fitted once, and the
#: read-out settings (``readout``, ``prior_weight``) are tried on each fit without refitting.
SEARCH = {
    "reduced-rank/l2": {"fit": {"lam": [1e-4, 3e-4, 1e-3, 3e-3], "dim": [128, 256, 512]},
                        "readout": [("omp", 0.0), ("omp", 0.1), ("rank", None)]},
    "reduced-rank/ip": {"fit": {"dim": [64, 128, 256]},
                        "readout": [("omp", 0.0), ("omp", 0.1), ("omp", 1.0), ("rank", None)]},
    "learn-all/l2": {"fit": {"lam": [1.0, 10.0, 100.0], "n_components": [256, 512, 1024]},
                     "readout": [("omp", 0.03), ("omp", 0.1), ("omp", 0.3), ("rank", None)]},
    "learn-all/ip": {"fit": {"whiten": [False, True]},
                     "readout": [("omp", 0.3), ("omp", 1.0), ("omp", 3.0), ("omp", 10.0), ("rank", None)]},
    "simple/l2": {"fit": {"lam": [1e-3, 1e-2, 1e-1]},
                  "readout": [("omp", 0.1), ("omp", 1.0), ("rank", None)]},
    "simple/ip": {"fit": {}, "readout": [("omp", 0.3), ("omp", 1.0), ("omp", 3.0), ("rank", None)]},
    "ridge": {"fit": {"alpha": [0.3, 1.0, 3.0, 10.0]}},
    "weak-tag/l2": {"fit": {"lam": [1e-3, 1e-1, 10.0]},
                    "readout": [("omp", 0.03), ("omp", 0.1), ("rank", None)]},
    "cca": {"fit": {"reg": [0.3, 1.0, 3.0], "power": [0.5, 1.0, 2.0]}, "criterion": "search R@10"},
    "kernel/l2": {"fit": {"lam": [1e-4, 3e-4, 1e-3], "kernel_gamma": [0.5, 1.0, 2.0], "n_landmarks": [2000]},
                  "readout": [("omp", 0.0), ("omp", 0.1), ("rank", None)]},
    "kernel/ip": {"fit": {"kernel_gamma": [0.5, 1.0, 2.0], "n_landmarks": [2000]},
                  "readout": [("omp", 0.0), ("omp", 0.1), ("omp", 1.0), ("rank", None)]},
    "knn": {"fit": {"n_neighbors": [5, 10, 20, 40, 80], "weighting": ["uniform", "cosine", "exp"],
                    "temperature": [0.02, 0.05, 0.1]},
            "only_with": {"temperature": ("weighting", "exp")}},
}
#: How many times a numeric setting's grid is widened past an edge at most (see :func:`search`).
MAX_WIDENINGS = 6
#: weak-tag/ip shares learn-all/ip's settings (without a ridge its extra block has none of its own).
SHARED_SETTINGS = {"weak-tag/ip": "learn-all/ip"}
READOUT_PARAMS = ("readout", "prior_weight")
#: Systems whose fitted model the analysis reads (word norms, similar words): saved with the scores.
NEEDS_MODEL = ("reduced-rank/l2/bcd", "learn-all/l2/bcd", "learn-all/ip/bcd")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = common.script_parser(__file__, __doc__)
    common.add_output_argument(parser)
    common.add_flickr8k_arguments(parser)
    parser.add_argument("--systems", nargs="+", default=["all"], metavar="SYSTEM",
                        help="MODEL[/OBJECTIVE[/SOLVER]], baseline names or all (default: all)")
    parser.add_argument("--no-search", action="store_true",
                        help="use each system's defaults (or an earlier run's chosen.json)")
    parser.add_argument("--criterion", choices=CRITERIA, default="P@3",
                        help="the dev metric that chooses every searched system's settings (default: "
                        "%(default)s; cca is always chosen by image search R@10)")
    parser.add_argument("--scores-only", action="store_true",
                        help="the search, results, retrieval and differences only: no figures, "
                        "objective traces, word norms or similar words")
    parser.add_argument("--boot", type=common.positive_int, default=1000,
                        help="bootstrap replicates (default: 1000; mAP uses a fifth of them)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser


# ------------------------------------------------------------------------------------ resources


class PeakMemory:
    """The peak resident memory (MB) above the level at entry, sampled every 5 ms."""

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = _rss_mb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())
        self.extra = self.peak - self.start


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


# ------------------------------------------------------------------------------------------ data


def load_splits(args: argparse.Namespace, out: common.OutputFolder) -> tuple[WordData, WordData]:
    """Flickr8k train and dev (dev with train's vocabulary), features and logits in stores."""
    text = args.flickr8k / "Flickr8k_text" / "Flickr8k.token.txt"
    images = args.flickr8k / "Flicker8k_Dataset"
    for path, what in ((text, "Flickr8k token file"), (images, "Flickr8k image folder")):
        if not path.exists():
            raise common.ExperimentError(f"{what} {path} does not exist (see the README: Data)")
    store = (args.features if args.features is not None else out.folder("features")) / args.extractor
    train = load_caption_data(text, images, split="train", store=store / "train", logits=True,
                              extractor=args.extractor, pos=args.pos)
    dev = load_caption_data(text, images, split="dev", store=store / "dev", logits=True,
                            vocabulary=train.vocabulary, extractor=args.extractor)
    return train, dev


# --------------------------------------------------------------------------------------- systems


@dataclass
class Fit:
    """One fitted system's dev scores and costs."""

    label: str
    settings: dict
    scores: ImageScores
    fit_seconds: float
    peak_mb: float
    extra: dict = field(default_factory=dict)


def spec_of(label: str) -> common.SystemSpec:
    """The system of a label; a model family without a solver (the search) is fitted by bcd."""
    parts = label.split("/")
    if parts[0] not in MODELS:
        return common.SystemSpec(label)
    return common.SystemSpec(*parts, *(["bcd"] if len(parts) == 2 else []))


def settings_key(label: str, settings: dict) -> str:
    return hashlib.sha256(json.dumps([label, settings], sort_keys=True).encode()).hexdigest()[:12]


def fit_and_score(label: str, settings: dict, train: WordData, dev: WordData, seed: int,
                  readouts: Sequence[tuple] = ()) -> tuple[Any, Fit, list[Fit]]:
    """Fit one system on train; its dev scores (and those of other read-outs of the same fit)."""
    spec = spec_of(label)
    fit_settings = {key: value for key, value in settings.items() if key not in READOUT_PARAMS}
    system = spec.make(fit_settings.get("dim", 256), seed,
                       **{key: value for key, value in fit_settings.items() if key != "dim"})
    with warnings.catch_warnings(), PeakMemory() as memory:
        warnings.simplefilter("ignore")  # dims lowered, solvers stopped: recorded below
        start = time.perf_counter()
        system.fit(spec.inputs(train), train.targets, words=list(train.vocabulary.words))
        seconds = time.perf_counter() - start
    extra = {"converged": bool(getattr(system, "converged_", True)),
             "n_iter": int(getattr(system, "n_iter_", 0))}

    def scored(readout_settings: dict) -> Fit:
        if readout_settings:
            system.set_params(**readout_settings)
        scores = image_scores(system, spec.inputs(dev), dev.truth, dev.captions, dev.caption_images)
        return Fit(label, {**fit_settings, **readout_settings}, scores, seconds, memory.extra, extra)

    main = scored({key: settings[key] for key in READOUT_PARAMS if key in settings})
    others = [scored({"readout": readout, "prior_weight": prior}) for readout, prior in readouts]
    return system, main, others


def fit_name(folder: str, label: str, settings: dict) -> str:
    """Where a fit's files live in the output folder, without their suffix."""
    return f"{folder}/{label.replace('/', '_')}-{settings_key(label, settings)}"


def save_fit(out: common.OutputFolder, folder: str, fit: Fit) -> None:
    name = fit_name(folder, fit.label, fit.settings)
    arrays = {key: value for key, value in asdict(fit.scores).items() if key != "ks"}
    buffer = __import__("io").BytesIO()
    np.savez_compressed(buffer, **arrays)
    out.write_bytes(name + ".npz", buffer.getvalue())
    out.write_json(name + ".json", {"label": fit.label, "settings": fit.settings, "ks": list(fit.scores.ks),
                                    "fit_seconds": fit.fit_seconds, "peak_mb": fit.peak_mb, **fit.extra})


def load_fit(out: common.OutputFolder, folder: str, label: str, settings: dict) -> Fit | None:
    name = out.root / fit_name(folder, label, settings)
    if not (name.with_suffix(".json").is_file() and name.with_suffix(".npz").is_file()):
        return None
    meta = json.loads(name.with_suffix(".json").read_text())
    with np.load(name.with_suffix(".npz"), allow_pickle=False) as data:
        scores = ImageScores(ks=tuple(meta["ks"]), **{key: data[key] for key in data.files})
    extra = {key: meta[key] for key in ("converged", "n_iter") if key in meta}
    return Fit(label, meta["settings"], scores, meta["fit_seconds"], meta["peak_mb"], extra)


#: Models whose summaries are compared read out both ways: sparse (OMP) and ranking D^T r.
READOUT_COMPARISONS = ("reduced-rank/l2/bcd", "learn-all/l2/bcd")


def readouts_of(label: str, settings: dict, system: Any, dev: WordData,
                out: common.OutputFolder) -> tuple[Fit, Fit]:
    """The dev scores of a fitted model read out by OMP (its prior weight) and by ranking."""
    pair = []
    for readout, prior in (("omp", settings.get("prior_weight")), ("rank", None)):
        variant = {**settings, "readout": readout, "prior_weight": prior}
        fit = load_fit(out, "systems", label, variant)
        if fit is None:
            system.set_params(readout=readout, prior_weight=prior)
            scores = image_scores(system, dev.features, dev.truth, dev.captions, dev.caption_images)
            fit = Fit(label, variant, scores, 0.0, 0.0)
            save_fit(out, "systems", fit)
        pair.append(fit)
    system.set_params(**{key: settings.get(key) for key in READOUT_PARAMS if key in settings})
    return tuple(pair)


#: Dev metrics a search may choose settings by (``--criterion``).
CRITERIA = ("P@3", "search R@10")


def criterion_of(label: str, criterion: str = "P@3") -> str:
    """The dev metric that chooses ``label``'s settings: its own (cca's), else ``criterion``."""
    return SEARCH.get(label, {}).get("criterion", criterion)


def numeric_grids(grid: dict, readouts: bool = True) -> dict[str, list]:
    """The numeric settings of a search grid with more than one value, each sorted: the fit
    settings and, with ``readouts``, the prior weights of the OMP read-outs (``prior_weight``;
    image search, the same for every read-out of a fit, does not choose them)."""
    grids = {key: sorted(values) for key, values in grid["fit"].items()
             if len(values) > 1 and all(_is_number(value) for value in values)}
    weights = sorted(prior for readout, prior in grid.get("readout", []) if readout == "omp" and prior is not None)
    if readouts and len(weights) > 1:
        grids["prior_weight"] = weights
    return grids


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def edges_of(settings: dict, grids: dict[str, list]) -> list[tuple[str, str]]:
    """(setting, "low" or "high") for every numeric setting at the edge of its grid."""
    return [(key, "low" if settings[key] == values[0] else "high") for key, values in grids.items()
            if settings.get(key) is not None and settings[key] in (values[0], values[-1])]


def edge_note(settings: dict, grids: dict[str, list]) -> str:
    """``key:side`` for every setting at an edge of its grid, ``(bound)`` where the grid cannot
    be widened past it (an edge at 0, see :func:`widen`): search.csv's ``at_edge``."""
    return " ".join(f"{key}:{side}" + (" (bound)" if widen(grids[key], side) is None else "")
                    for key, side in edges_of(settings, grids))


def widen(values: list, side: str) -> Any:
    """The next value past the ``side`` edge of a sorted grid, by the ratio of its two outermost
    values (10, 20, 40 -> 80 or 5), or None: an edge at 0 is a bound of the setting's range,
    and an integer grid cannot go below 1 or repeat a value."""
    edge, inner = (values[0], values[1]) if side == "low" else (values[-1], values[-2])
    if edge <= 0 or inner <= 0:
        return None
    value = edge * edge / inner
    if all(isinstance(v, int) for v in values):
        value = int(round(value))
        return value if value >= 1 and value not in values else None
    return float(f"{value:.6g}")


def combinations(grid: dict) -> list[dict]:
    """Every combination of the fit settings, without the settings that ``only_with`` says do
    not apply to it (a temperature without exp weighting), each once."""
    keys = list(grid["fit"])
    combos = []
    for values in itertools.product(*(grid["fit"][key] for key in keys)):
        combo = dict(zip(keys, values))
        for key, (other, value) in grid.get("only_with", {}).items():
            if combo.get(other) != value:
                combo.pop(key, None)
        if combo not in combos:
            combos.append(combo)
    return combos


def search_grid(label: str, grid: dict, train: WordData, dev: WordData, out: common.OutputFolder,
                seed: int, criterion: str = "P@3") -> tuple[list[Fit], Fit]:
    """Every fit of a grid (cached in ``search/``) and the one of best criterion."""
    readouts = grid.get("readout", [])
    fits = []
    for combo in combinations(grid):
        variants = [{**combo, "readout": r, "prior_weight": p} for r, p in readouts] or [combo]
        found = [load_fit(out, "search", label, v) for v in variants]
        if any(f is None for f in found):
            _, first, rest = fit_and_score(label, variants[0], train, dev, seed, readouts=readouts[1:])
            found = [first, *rest]
            for f in found:
                save_fit(out, "search", f)
        fits += found
    return fits, max(fits, key=lambda f: criterion_value(label, f, criterion))


def criterion_value(label: str, fit: Fit, criterion: str = "P@3") -> float:
    return float(score_metrics(fit.scores)[criterion_of(label, criterion)][0])


def search(labels: Sequence[str], train: WordData, dev: WordData, out: common.OutputFolder,
           seed: int, criterion: str = "P@3") -> tuple[dict[str, dict], list[dict]]:
    """The settings of best dev ``criterion`` (cca: always image-search R@10) per searched system.

    Among fits level on the criterion (the read-outs of one fit are, on image search) the first
    of the grid is kept.

    A numeric setting chosen at the edge of its grid widens the grid past that edge
    (:func:`widen`) and the new combinations are fitted, until no choice sits at an edge or a
    setting has been widened :data:`MAX_WIDENINGS` times; ``search.csv`` marks the rows whose
    settings sit at an edge of the final grid (``at_edge``) and the chosen one (``chosen``).
    """
    chosen, rows = {}, []
    for label in labels:
        if label not in SEARCH:
            continue
        grid = {**SEARCH[label], "fit": {k: list(v) for k, v in SEARCH[label]["fit"].items()},
                "readout": list(SEARCH[label].get("readout", []))}
        by_summaries = criterion_of(label, criterion) == "P@3"
        widened = dict.fromkeys(numeric_grids(grid, by_summaries), 0)
        while True:
            fits, best = search_grid(label, grid, train, dev, out, seed, criterion)
            grids = numeric_grids(grid, by_summaries)
            steps = [(key, side, widen(grids[key], side)) for key, side in edges_of(best.settings, grids)
                     if widened.get(key, 0) < MAX_WIDENINGS]
            steps = [(key, side, value) for key, side, value in steps if value is not None]
            if not steps:
                break
            for key, side, value in steps:
                widened[key] = widened.get(key, 0) + 1
                print(f"search {label}: {key} = {best.settings[key]} is at the {side} edge of "
                      f"{grids[key]}; widening to {value}", flush=True)
                if key == "prior_weight" and key not in grid["fit"]:
                    grid["readout"].append(("omp", value))
                else:
                    grid["fit"][key].append(value)
        grids = numeric_grids(grid, by_summaries)
        for f in fits:
            rows.append({"system": label, "settings": json.dumps(f.settings),
                         "criterion": criterion_of(label, criterion),
                         "value": criterion_value(label, f, criterion), "fit_seconds": f.fit_seconds,
                         "chosen": int(f is best),
                         "at_edge": edge_note(f.settings, grids)})
        chosen[label] = best.settings
        edge = edge_note(best.settings, grids)
        print(f"search {label}: {best.settings} ({criterion_of(label, criterion)} "
              f"{criterion_value(label, best, criterion):.3f})"
              + (f"; at an edge: {edge}" if edge else ""), flush=True)
    return chosen, rows


def settings_for(label: str, chosen: dict) -> dict:
    """The chosen settings of a system (solver variants and weak-tag share their family's)."""
    family = "/".join(label.split("/")[:2])
    family = SHARED_SETTINGS.get(family, family)
    return dict(chosen.get(family, {}))


# -------------------------------------------------------------------------------------- analysis


def intervals(fits: dict[str, Fit], weights: np.ndarray, map_weights: np.ndarray) -> dict[str, dict]:
    return {label: with_intervals(score_metrics(fit.scores),
                                  score_metrics(fit.scores, weights, map_weights=map_weights))
            for label, fit in fits.items()}


def paired(a: Fit, b: Fit, weights: np.ndarray, map_weights: np.ndarray) -> dict[str, tuple]:
    """Differences a - b of every metric with their paired bootstrap intervals."""
    est = {k: score_metrics(a.scores)[k] - score_metrics(b.scores)[k] for k in score_metrics(a.scores)}
    ra, rb = (score_metrics(f.scores, weights, map_weights=map_weights) for f in (a, b))
    return with_intervals(est, {k: ra[k] - rb[k] for k in ra})


def fmt(triple: tuple, places: int = 3) -> str:
    value, low, high = triple
    return f"{value:.{places}f} [{low:.{places}f}, {high:.{places}f}]"


def digits(metric: str) -> int:
    """Decimal places: retrieval figures are percentages and ranks, the others fractions."""
    return 1 if metric.startswith(("search", "annotation")) else 3


def write_results(out, fits, cis, chosen, data_line) -> None:
    columns = ["P@3", "R@3", "F1@3", "F1@1", "F1@5", "mAP", "search R@10", "annotation R@10"]
    rows, csv_rows = [], []
    order = sorted(fits, key=lambda label: -cis[label]["P@3"][0])
    for label in order:
        ci, fit = cis[label], fits[label]
        rows.append({"system": label, **{c: fmt(ci[c], digits(c)) for c in columns},
                     "fit (s)": f"{fit.fit_seconds:.1f}", "peak (MB)": f"{fit.peak_mb:.0f}",
                     "converged": str(fit.extra.get("converged", ""))})
        csv_rows.append({"system": label, "settings": json.dumps(settings_for(label, chosen)),
                         **{f"{m} {part}": ci[m][i] for m in ci for i, part in enumerate(("value", "low", "high"))},
                         "fit_seconds": fit.fit_seconds, "peak_mb": fit.peak_mb, **fit.extra})
    out.write_csv("results.csv", csv_rows, list(csv_rows[0]))
    table = common.markdown_table(rows, [(c, c) for c in ("system", *columns, "fit (s)", "peak (MB)", "converged")])
    out.write_text("results.md", f"# Flickr8k dev: every system\n\n{data_line}\n\nFigures with 95% bootstrap "
                   "intervals over the 1,000 dev images; retrieval in %. Sorted by P@3.\n\n" + table)


def write_retrieval(out, cis) -> None:
    lines = ["# Flickr8k sentence retrieval\n",
             "Image annotation (image -> its captions) and image search (caption -> its image), "
             "R@K in %, median rank. Ours: dev split (1,000 images, 5,000 captions), 95% bootstrap "
             "intervals. Published: the official test split (1,000 images) with other image "
             "features (CNNs of their time) and full sentences; same protocol.\n",
             "| system | annotation R@1 | R@5 | R@10 | med r | search R@1 | R@5 | R@10 | med r |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label in sorted(cis, key=lambda label: -cis[label]["search R@10"][0]):
        ci = cis[label]
        cells = [fmt(ci[f"{side} {m}"], 1) for side in ("annotation", "search")
                 for m in ("R@1", "R@5", "R@10", "medr")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for name, (annotation, search_) in PUBLISHED.items():
        lines.append(f"| *{name}, test* | | | {annotation} | | | | {search_} | |")
    out.write_text("retrieval.md", "\n".join(lines) + "\n")


QUESTIONS = [
    ("l2 - ip", [(f"{m}/l2/{s}", f"{m}/ip/{s}") for m in MODELS for s in SOLVERS]),
    ("bcd - sgd", [(f"{m}/{o}/bcd", f"{m}/{o}/sgd") for m in MODELS for o in OBJECTIVES]),
    ("Image2Vec - knn", [("reduced-rank/l2/bcd", "knn"), ("learn-all/l2/bcd", "knn"), ("kernel/l2/bcd", "knn")]),
    ("Image2Vec - cca", [("reduced-rank/l2/bcd", "cca"), ("learn-all/l2/bcd", "cca")]),
    ("Image2Vec - ridge", [("reduced-rank/l2/bcd", "ridge"), ("learn-all/l2/bcd", "ridge"),
                           ("kernel/l2/bcd", "ridge")]),
    ("kernel - linear", [("kernel/l2/bcd", "reduced-rank/l2/bcd"), ("kernel/ip/bcd", "reduced-rank/ip/bcd")]),
    ("Image2Vec - prior", [("reduced-rank/l2/bcd", "prior")]),
]


def write_differences(out, fits, readout_pairs, weights, map_weights) -> dict:
    metrics = ["P@3", "F1@3", "mAP", "search R@10", "annotation R@10"]
    lines = ["# Paired differences on Flickr8k dev\n",
             "a - b with 95% paired bootstrap intervals over the dev images (the same resamples "
             "for both systems); an interval that excludes 0 is a difference the dev split can "
             "tell apart.\n", "| question | a | b | " + " | ".join(metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    record = {}
    pairs = [(q, a, b) for q, candidates in QUESTIONS for a, b in candidates if a in fits and b in fits]
    lookup = dict(fits)
    for omp, rank in readout_pairs:
        lookup[f"{omp.label} omp"], lookup[f"{rank.label} rank"] = omp, rank
        pairs.append(("OMP - ranking", f"{omp.label} omp", f"{rank.label} rank"))
    for question, a, b in pairs:
        diff = paired(lookup[a], lookup[b], weights, map_weights)
        record[f"{a} - {b}"] = {m: diff[m] for m in metrics}
        lines.append(f"| {question} | {a} | {b} | " + " | ".join(
            fmt(diff[m], digits(m)) for m in metrics) + " |")
    out.write_text("differences.md", "\n".join(lines) + "\n")
    return record


def plot_f1(out, cis) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in sorted(cis, key=lambda label: -cis[label]["F1@3"][0]):
        ks = [1, 2, 3, 4, 5]
        ax.plot(ks, [cis[label][f"F1@{k}"][0] for k in ks], marker="o", ms=3,
                lw=2.5 if label.startswith("reduced-rank/l2/bcd") else 1, label=label)
    ax.set_xlabel("summary length k")
    ax.set_ylabel("F1@k (dev)")
    ax.set_title("Flickr8k dev: F1 of k-word summaries")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out.save_figure("f1_at_k.png", fig)


def plot_l2_vs_ip(out, cis) -> None:
    import matplotlib.pyplot as plt

    pairs = [(m, s) for m in MODELS for s in SOLVERS if f"{m}/l2/{s}" in cis and f"{m}/ip/{s}" in cis]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, metric in zip(axes, ("P@3", "search R@10")):
        x = np.arange(len(pairs))
        for shift, objective in ((-0.18, "l2"), (0.18, "ip")):
            values = [cis[f"{m}/{objective}/{s}"][metric] for m, s in pairs]
            ax.bar(x + shift, [v[0] for v in values], 0.36, label=objective,
                   yerr=np.array([[v[0] - v[1], v[2] - v[0]] for v in values]).T, capsize=2)
        ax.set_xticks(x, [f"{m}\n{s}" for m, s in pairs], fontsize=7)
        ax.set_title(f"{metric} (dev, 95% CI)")
        ax.legend()
    fig.tight_layout()
    out.save_figure("l2_vs_ip.png", fig)


def objective_traces(out: common.OutputFolder, train: WordData, seed: int) -> list[dict]:
    """The default fit's problems on train solved three ways: closed form, BCD sweeps, SGD.

    BCD sweeps start from the cold start (the principal axes, or W = 0 for reduced-rank) as SGD
    does; the closed form is where the estimator's BCD starts. Times exclude the statistics pass
    that BCD and the closed form need (SGD streams the rows instead). Kept in
    ``objective_traces.csv``: a rerun plots them again without solving.
    """
    from solvers import bcd, closed_form, sgd

    path = out.root / "objective_traces.csv"
    if path.is_file():
        with open(path, newline="") as fh:
            return [{**row, "seconds": float(row["seconds"]), "objective": float(row["objective"])}
                    for row in csv.DictReader(fh)]
    rows = []
    for model in ("reduced-rank", "learn-all"):
        problem = Image2Vec(model=model, random_state=seed)._prepare(train.features, train.targets)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = {"closed form": closed_form(problem.stats, problem.dim, problem.terms),
                       "bcd sweeps": bcd(problem.stats, problem.start, problem.terms, max_iter=300, tol=1e-9),
                       "sgd": sgd(problem.F, problem.targets, problem.start, problem.terms, center=True,
                                  transform=problem.transform, random_state=seed)}
        rows += [{"model": model, "solver": name, "seconds": t, "objective": value}
                 for name, result in results.items() for t, (_, _, value) in zip(result.seconds, result.trace)]
    out.write_csv("objective_traces.csv", rows, ["model", "solver", "seconds", "objective"])
    return rows


def plot_objective(out: common.OutputFolder, rows: list[dict]) -> None:
    """(J - J_best) / |J_best| against seconds, per model, one line per solver."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    models = list(dict.fromkeys(row["model"] for row in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [row for row in rows if row["model"] == model]
        best = min(row["objective"] for row in mine)
        for solver in dict.fromkeys(row["solver"] for row in mine):
            points = [row for row in mine if row["solver"] == solver]
            gap = [max(row["objective"] - best, 1e-12) / abs(best) for row in points]
            exact = solver == "closed form"
            ax.loglog([row["seconds"] + 1e-3 for row in points], gap, marker="o" if exact else ".",
                      ms=8 if exact else 3, label=f"{solver} ({points[-1]['seconds']:.1f} s)")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: they overlap otherwise
        ax.set_xlabel("seconds (statistics pass excluded)")
        ax.set_ylabel("(J - J_best) / |J_best|")
        ax.set_title(f"{model}, l2, Flickr8k train")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.save_figure("objective_vs_time.png", fig)


def word_norms(out, systems_by_label: dict, dev: WordData, fits: dict, seed: int) -> dict:
    """Word norm against visualness (knn's per-word ROC AUC on dev), Spearman rho with its CI."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score

    knn = fits["knn"].scores
    usable = [v for v in range(knn.truth.shape[1]) if 0 < knn.truth[:, v].sum() < len(knn.truth)]
    visual = np.array([roc_auc_score(knn.truth[:, v], knn.word_scores[:, v]) for v in usable])
    rng = np.random.default_rng(seed)
    report = {}
    labels = [label for label in ("learn-all/l2/bcd", "reduced-rank/l2/bcd", "learn-all/ip/bcd")
              if label in systems_by_label]
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.6), squeeze=False)
    for ax, label in zip(axes[0], labels):
        norms = np.linalg.norm(systems_by_label[label].dictionary_, axis=0)[usable]
        rho = spearmanr(norms, visual).statistic
        draws = [spearmanr(norms[idx], visual[idx]).statistic
                 for idx in (rng.integers(0, len(usable), len(usable)) for _ in range(1000))]
        low, high = np.nanpercentile(draws, [2.5, 97.5])
        report[label] = {"rho": float(rho), "low": float(low), "high": float(high), "n_words": len(usable)}
        ax.scatter(visual, norms, s=4, alpha=0.5)
        ax.set_xlabel("visualness: knn ROC AUC of the word on dev")
        ax.set_ylabel("||d_v||")
        ax.set_title(f"{label}\nSpearman {rho:.2f} [{low:.2f}, {high:.2f}]", fontsize=9)
    fig.tight_layout()
    out.save_figure("word_norms.png", fig)
    return report


def similar_table(out, systems_by_label: dict, words: Sequence[str]) -> None:
    from image2vec.baselines.imnet_glove import load_glove

    glove = load_glove()
    known = [w for w in words if w in glove.index]
    vectors = np.array([glove.vectors[glove.index[w]] for w in known])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    columns = [label for label in ("reduced-rank/l2/bcd", "learn-all/l2/bcd", "learn-all/ip/bcd")
               if label in systems_by_label]
    lines = ["# The 5 nearest words of 10 probe words\n",
             "`similar` of the models trained on Flickr8k train (the correlation of two words' scores "
             "over the training images: the cosine of the columns of Sigma^{1/2} D, with Sigma the "
             "embeddings' covariance), and the cosine of GloVe 6B 50d vectors over the same vocabulary.\n",
             "| word | " + " | ".join(columns) + " | GloVe |", "|---|" + "---|" * (len(columns) + 1)]
    for probe in PROBES:
        cells = []
        for label in columns:
            model = systems_by_label[label]
            cells.append(", ".join(w for w, _ in model.similar(probe, 5)) if probe in model.words_ else "-")
        if probe in known:
            cosine = vectors @ vectors[known.index(probe)]
            order = [known[i] for i in np.argsort(-cosine) if known[i] != probe][:5]
            cells.append(", ".join(order))
        else:
            cells.append("-")
        lines.append(f"| {probe} | " + " | ".join(cells) + " |")
    out.write_text("similar.md", "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ main


def experiment(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    out = common.OutputFolder(args.out, OUTPUTS)
    labels = [spec.label if spec.is_model else spec.name for spec in common.parse_systems(args.systems)]
    labels = [label for label in labels if label.count("/") == 2 or label.split("/")[0] not in MODELS]
    train, dev = load_splits(args, out)
    data_line = (f"Flickr8k: train {len(train.keys):,} images, dev {len(dev.keys):,} images and "
                 f"{dev.captions.shape[0]:,} captions; vocabulary {len(train.vocabulary):,} words "
                 f"({', '.join(args.pos)}; min_count {train.vocabulary.info.get('min_count')}, from train); features "
                 f"{train.extractor} ({train.features.shape[1]}-d).")
    print(data_line, flush=True)
    families = sorted({"/".join(label.split("/")[:2]) for label in labels})
    previous = out.root / "chosen.json"
    if args.no_search:
        chosen = json.loads(previous.read_text()) if previous.is_file() else {}
        rows = []
    else:
        searched = sorted({SHARED_SETTINGS.get(family, family) for family in families})
        chosen, rows = search(searched, train, dev, out, args.seed, args.criterion)
        out.write_csv("search.csv", rows, ["system", "settings", "criterion", "value", "fit_seconds",
                                           "chosen", "at_edge"])
        out.write_json("chosen.json", chosen)
    fits: dict[str, Fit] = {}
    fitted: dict[str, Any] = {}
    for label in labels:
        settings = settings_for(label, chosen)
        cached = load_fit(out, "systems", label, settings)
        model_file = fit_name("systems", label, settings) + ".model.npz"
        if cached is not None and (label not in NEEDS_MODEL or (out.root / model_file).is_file()):
            fits[label] = cached
            if label in NEEDS_MODEL:
                fitted[label] = systems.load(out.root / model_file)[0]
            continue
        system, fit, _ = fit_and_score(label, settings, train, dev, args.seed)
        fits[label], fitted[label] = fit, system
        save_fit(out, "systems", fit)
        if label in NEEDS_MODEL:
            systems.save(system, out.claim(model_file))
        print(f"{label}: P@3 {score_metrics(fit.scores)['P@3'][0]:.3f}, fit {fit.fit_seconds:.1f} s, "
              f"peak +{fit.peak_mb:.0f} MB", flush=True)
    readout_pairs = [readouts_of(label, settings_for(label, chosen), fitted[label], dev, out)
                     for label in READOUT_COMPARISONS if label in fitted]
    weights = bootstrap_weights(len(dev.keys), args.boot, args.seed)
    map_weights = weights[: max(1, args.boot // 5)]
    cis = intervals(fits, weights, map_weights)
    write_results(out, fits, cis, chosen, data_line)
    write_retrieval(out, cis)
    differences = write_differences(out, fits, readout_pairs, weights, map_weights)
    norms = {}
    if not args.scores_only:
        plot_f1(out, cis)
        plot_l2_vs_ip(out, cis)
        traces = objective_traces(out, train, args.seed)
        plot_objective(out, traces)
        norms = word_norms(out, fitted, dev, fits, args.seed) if "knn" in fits else {}
        similar_table(out, fitted, list(train.vocabulary.words))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.write_json("run.json", {
        "command": args.command, "date": time.strftime("%Y-%m-%d"), "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": usage.ru_maxrss / 1024, "data": data_line, "chosen": chosen,
        "word_norms_vs_visualness": norms, "differences": differences})
    print(f"done in {time.perf_counter() - started:.0f} s; peak RSS {usage.ru_maxrss / 1024:.0f} MB")


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(experiment, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
