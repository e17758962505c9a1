"""Does l2 shrink the words that are not visual? Word norms under l2 against visualness.

The seed's takeaway was that the l2 objective beats the inner product (ip) because l2 lets a
word's vector shrink when the word is not visual, while ip keeps every word at norm 1. This
script tests it on one data set:

- visualness of a word: its average precision as a detector, ranking held-out images by the
  word's score from a system trained without them (``--detector``, default the nearest-neighbour
  transfer baseline, which does not depend on either objective), over k-fold cross-validation;
- the norm ||d_v|| of every word under l2 (the model trained on all images), its Spearman
  correlation with visualness, and the words l2 shrinks most;
- the held-out 3-word summaries of the l2 and ip models (same model and solver) where the two
  disagree, with the words each gets right.

Writes into OUT: ``l2_vs_ip.md`` (the report), ``word_norms.csv`` (word, images, norm under l2,
AP), ``disagreements.csv`` (every image whose summaries differ) and ``norm_vs_visualness.png``
(scatter, words labelled).

    python experiments/l2_vs_ip.py out/l2_vs_ip --coco COCO_ROOT --dim 64
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import common
import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score
from tqdm import tqdm

from image2vec.model import MODELS, SOLVERS

K = 3
OUTPUTS = ("l2_vs_ip.md", "word_norms.csv", "disagreements.csv", "norm_vs_visualness.png")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = common.script_parser(__file__, __doc__)
    common.add_output_argument(parser)
    parser.add_argument("--model", choices=MODELS, default="learn-all",
                        help="Image2Vec model trained under both objectives (default: learn-all)")
    parser.add_argument("--solver", choices=SOLVERS, default="bcd", help="solver (default: bcd)")
    parser.add_argument("--detector", default="knn", metavar="SYSTEM",
                        help="system whose held-out word scores measure visualness "
                        "(default: knn)")
    parser.add_argument("--n-words", type=common.positive_int, default=10,
                        help="words listed as shrunk most (default: 10)")
    parser.add_argument("--n-examples", type=common.positive_int, default=15,
                        help="disagreeing summaries shown in the report (default: 15)")
    common.add_data_arguments(parser)
    common.add_split_arguments(parser)
    common.add_model_arguments(parser)
    return parser


def word_average_precision(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """AP of ranking the images by each word's score (N x V); NaN for words without a positive
    or without a negative image."""
    aps = np.full(truth.shape[1], np.nan)
    for v in range(truth.shape[1]):
        if 0 < truth[:, v].sum() < len(truth):
            aps[v] = average_precision_score(truth[:, v], scores[:, v])
    return aps


def held_out_summaries(folds: list[common.Fold], X: np.ndarray, n_images: int) -> list[list[int]]:
    """The K-word summary (word columns) of every image by the fold model that did not see it."""
    summaries: list[list[int]] = [[] for _ in range(n_images)]
    for fold in folds:
        for n, row in zip(fold.test, fold.system.summarize(X[fold.test], K).indices):
            summaries[n] = [int(v) for v in row if v >= 0]
    return summaries


def plot_norms(words: Sequence[str], norms: np.ndarray, aps: np.ndarray, counts: np.ndarray,
               rho: float, n_labels: int):
    """Scatter of word norm under l2 against AP, point size by image count, words labelled."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 5.5))
    shown = np.flatnonzero(~np.isnan(aps))
    axis.scatter(aps[shown], norms[shown], s=10 + 60 * counts[shown] / counts.max(), alpha=0.6)
    # Label every word on a small vocabulary; otherwise the extremes of either axis.
    if len(shown) <= 3 * n_labels:
        labelled = shown
    else:
        by_norm, by_ap = shown[np.argsort(norms[shown])], shown[np.argsort(aps[shown])]
        labelled = np.unique(np.concatenate([by_norm[:n_labels], by_norm[-n_labels:],
                                             by_ap[-n_labels // 2:]]))
    for v in labelled:
        axis.annotate(words[v], (aps[v], norms[v]), fontsize=7, xytext=(2, 2),
                      textcoords="offset points")
    axis.set_xlabel("visualness: AP of the word as a detector on held-out images")
    axis.set_ylabel("||d_v|| under l2 (ip: 1 for every word)")
    axis.set_title(f"Word norm under l2 against visualness (Spearman rho = {rho:.2f})")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def experiment(args: argparse.Namespace) -> None:
    """Run the study and write the outputs."""
    detector = common.parse_systems([args.detector])
    if len(detector) != 1:
        raise common.ExperimentError(f"--detector must name one system, not {args.detector!r}")
    l2, ip = (common.SystemSpec(args.model, objective, args.solver) for objective in ("l2", "ip"))
    out = common.OutputFolder(args.out, OUTPUTS)
    data, name = common.load_dataset(args, out, logits=detector[0].takes_logits)
    truth = data.truth.toarray() > 0
    n_images, n_words = truth.shape
    words = list(data.vocabulary.words)
    splits = common.make_splits(n_images, args)
    progress = tqdm(total=4, desc="fitting", unit="step")
    detector_folds = common.fit_folds(detector[0], data, splits, args)
    scores = np.zeros(truth.shape)
    for fold in detector_folds:
        scores[fold.test] = fold.system.decision_function(detector[0].inputs(data)[fold.test])
    held_out = np.concatenate([fold.test for fold in detector_folds])
    aps = word_average_precision(scores[held_out], truth[held_out])
    progress.update()
    model = l2.make(args.dim, args.seed).fit(data.features, data.targets, words=words)
    norms = np.linalg.norm(model.dictionary_, axis=0)
    progress.update()
    summaries = {}
    for spec in (l2, ip):
        summaries[spec.objective] = held_out_summaries(common.fit_folds(spec, data, splits, args),
                                                       data.features, n_images)
        progress.update()
    progress.close()

    counts = truth.sum(axis=0)
    scored = ~np.isnan(aps)
    rho = float(spearmanr(norms[scored], aps[scored]).statistic) if scored.sum() > 2 else float("nan")
    word_rows = [{"word": w, "images": int(counts[v]), "norm_l2": float(norms[v]),
                  "ap": float(aps[v])} for v, w in enumerate(words)]
    out.write_csv("word_norms.csv", word_rows, ("word", "images", "norm_l2", "ap"))
    disagreements = []
    for n in held_out:
        chosen = {objective: summaries[objective][n] for objective in ("l2", "ip")}
        if set(chosen["l2"]) == set(chosen["ip"]):
            continue
        hits = {objective: sum(truth[n, v] for v in chosen[objective]) for objective in chosen}
        disagreements.append({
            "image": Path(data.files[n]).name, "truth": " ".join(words[v] for v in np.flatnonzero(truth[n])),
            **{objective: " + ".join(words[v] for v in chosen[objective]) for objective in chosen},
            "l2_hits": int(hits["l2"]), "ip_hits": int(hits["ip"])})
    out.write_csv("disagreements.csv", disagreements, ("image", "l2", "ip", "l2_hits", "ip_hits", "truth"))
    out.save_figure("norm_vs_visualness.png", plot_norms(words, norms, aps, counts, rho, args.n_words))

    shrunk = sorted(word_rows, key=lambda row: row["norm_l2"])[:args.n_words]
    better = {o: sum(row[f"{o}_hits"] > row[f"{other}_hits"] for row in disagreements)
              for o, other in (("l2", "ip"), ("ip", "l2"))}
    shown = sorted(disagreements, key=lambda row: -abs(row["l2_hits"] - row["ip_hits"]))[:args.n_examples]
    report = (
        f"# l2 against inner product on {name}\n\n"
        f"{n_images} images, {n_words} words; model {args.model}, solver {args.solver}, dim "
        f"{args.dim}, seed {args.seed}; {common.describe_splits(splits, n_images)}.\n\n"
        f"    {args.command}\n\n"
        f"## Word norm under l2 against visualness\n\n"
        f"Visualness: AP of each word as a detector ({detector[0].label}, held-out scores), "
        f"{int(scored.sum())} words with a positive and a negative image. Spearman correlation "
        f"between ||d_v|| under l2 and AP: **{rho:.3f}** (positive: l2 keeps visual words long and "
        f"shrinks the others; ip gives every word norm 1). See `norm_vs_visualness.png`.\n\n"
        f"The {len(shrunk)} words l2 shrinks most:\n\n"
        + common.markdown_table(shrunk, (("word", "word"), ("norm_l2", "norm under l2"),
                                         ("ap", "AP (visualness)"), ("images", "images")))
        + f"\n## Held-out summaries where l2 and ip disagree\n\n"
        f"The {K}-word summaries differ on {len(disagreements)} of {len(held_out)} held-out images: l2 gets more "
        f"caption words right on {better['l2']}, ip on {better['ip']}, the same number on "
        f"{len(disagreements) - better['l2'] - better['ip']}. The {len(shown)} largest differences "
        f"(all of them in `disagreements.csv`):\n\n"
        + common.markdown_table(shown, (("image", "image"), ("l2", "l2"), ("l2_hits", "l2 right"),
                                        ("ip", "ip"), ("ip_hits", "ip right"), ("truth", "caption words"))))
    out.write_text("l2_vs_ip.md", report)
    print(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return common.run(experiment, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
