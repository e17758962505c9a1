"""The word-sum model's lead over nearest-neighbour transfer as the training set grows (Flickr8k dev).

On the full Flickr8k train split the default model's P@3 is 1.04 times that of a dev-tuned knn,
where issue 26 asks for 1.10. This experiment asks whether more captioned images would close
the gap. For each fraction of the official train split (``--fractions``; ``--draws`` nested
random subsets for each fraction below 1, the same draw's smaller subsets inside its larger
ones), the default model (reduced-rank/l2/bcd) and knn are fitted on the subset, each with its
main setting chosen on dev for that subset (:data:`GRIDS`: the model's ridge weight lam, knn's
K; every other setting is the full train split's dev choice, ``flickr8k.py``'s
``chosen.json``), and scored on dev by the benchmark's harness. The vocabulary is the full train
split's, so every subset is judged on the same words.

Written into OUT (resumable: every fit's dev scores are kept under ``fits/``):

- ``learning_curve.csv``: every fraction x draw x system x grid value with its dev P@3, the
  chosen fits marked;
- ``learning_curve.md``: per fraction and draw, the chosen fits' P@3 with 95% bootstrap
  intervals over the dev images and the ratio model / knn with its paired bootstrap interval;
- ``learning_curve.png``: P@3 of both, and their ratio, against the number of training images.

    python experiments/learning_curve_flickr8k.py experiments/results/learning_curve --features /work/cache/f8k
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import common
import flickr8k
import numpy as np

from image2vec.datasets import WordData
from image2vec.evaluate import bootstrap_weights, score_metrics, with_intervals

MODEL, PEER = "reduced-rank/l2/bcd", "knn"
#: The setting each system's dev search varies for every subset, and its grid.
GRIDS = {MODEL: ("lam", (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)), PEER: ("n_neighbors", (5, 10, 20, 40, 80))}
#: The bar of issue 26: the default model's P@3 at this multiple of knn's.
BAR = 1.10
CHOSEN = Path(__file__).resolve().parent / "results" / "flickr8k" / "chosen.json"
OUTPUTS = ("learning_curve.csv", "learning_curve.md", "learning_curve.png", "fits/")


def build_parser() -> argparse.ArgumentParser:
    parser = common.script_parser(__file__, __doc__)
    common.add_output_argument(parser)
    common.add_flickr8k_arguments(parser)
    parser.add_argument("--fractions", type=share, nargs="+", default=[0.125, 0.25, 0.5, 1.0],
                        metavar="F", help="fractions of the train split (default: %(default)s)")
    parser.add_argument("--draws", type=common.positive_int, default=3,
                        help="random subsets per fraction below 1 (default: 3)")
    parser.add_argument("--chosen", type=Path, default=CHOSEN, metavar="JSON",
                        help="the full-train dev choices every other setting comes from "
                             "(default: experiments/results/flickr8k/chosen.json)")
    parser.add_argument("--boot", type=common.positive_int, default=1000, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def share(text: str) -> float:
    """argparse type: a fraction of the train split, in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def subset(data: WordData, rows: np.ndarray) -> WordData:
    """The images ``rows`` of ``data`` with its vocabulary (what a fit reads: features, targets)."""
    return replace(data, keys=[data.keys[i] for i in rows], files=[data.files[i] for i in rows],
                   features=data.features[rows], targets=data.targets[rows], truth=data.truth[rows],
                   queries=None if data.queries is None else data.queries[rows],
                   logits=None if data.logits is None else data.logits[rows],
                   categories=None if data.categories is None else data.categories[rows],
                   captions=None, caption_images=None)


def p_at_3(fit: flickr8k.Fit) -> float:
    return float(score_metrics(fit.scores)["P@3"][0])


def best_fit(label: str, base: dict, train: WordData, dev: WordData, folder: str,
             out: common.OutputFolder, seed: int) -> tuple[flickr8k.Fit, list[tuple[flickr8k.Fit, float]]]:
    """Every value of ``label``'s grid fitted on ``train`` (or read back) with its dev P@3, and the
    best by it (the first of the grid among equals)."""
    key, values = GRIDS[label]
    fits = []
    for value in values:
        settings = {**base, key: value}
        fit = flickr8k.load_fit(out, folder, label, settings)
        if fit is None:
            _, fit, _ = flickr8k.fit_and_score(label, settings, train, dev, seed)
            flickr8k.save_fit(out, folder, fit)
        fits.append((fit, p_at_3(fit)))
    return max(fits, key=lambda pair: pair[1])[0], fits


def draws_of(fractions: Sequence[float], n_draws: int) -> list[tuple[float, int]]:
    """(fraction, draw) pairs: ``n_draws`` draws of each fraction below 1, one of the whole split."""
    return [(fraction, draw) for fraction in sorted(set(fractions))
            for draw in range(1 if fraction == 1 else n_draws)]


def experiment(args: argparse.Namespace) -> None:
    out = common.OutputFolder(args.out, OUTPUTS)
    if not args.chosen.is_file():
        raise common.ExperimentError(f"{args.chosen} does not exist: run experiments/flickr8k.py first "
                                     "or pass --chosen")
    chosen = json.loads(args.chosen.read_text())
    bases = {label: {k: v for k, v in flickr8k.settings_for(label, chosen).items() if k != GRIDS[label][0]}
             for label in GRIDS}
    train, dev = flickr8k.load_splits(args, out)
    weights = bootstrap_weights(dev.truth.shape[0], args.boot, args.seed)
    csv_rows, table, points = [], [], []
    for fraction, draw in draws_of(args.fractions, args.draws):
        order = np.random.default_rng(args.seed + draw).permutation(len(train.keys))
        rows = np.sort(order[: max(1, round(fraction * len(order)))])
        part = subset(train, rows)
        folder = f"fits/{fraction:g}-{draw}"
        best = {}
        for label in GRIDS:
            best[label], fits = best_fit(label, bases[label], part, dev, folder, out, args.seed)
            key = GRIDS[label][0]
            csv_rows += [{"fraction": fraction, "draw": draw, "n_train": len(rows), "system": label,
                          "setting": key, "value": fit.settings[key], "P@3": value,
                          "chosen": int(fit is best[label])} for fit, value in fits]
        replicates = {label: score_metrics(best[label].scores, weights)["P@3"] for label in GRIDS}
        ci = {label: with_intervals({"P@3": np.array([p_at_3(best[label])])}, {"P@3": replicates[label]})["P@3"]
              for label in GRIDS}
        ratio = with_intervals({"ratio": np.array([ci[MODEL][0] / ci[PEER][0]])},
                               {"ratio": replicates[MODEL] / replicates[PEER]})["ratio"]
        points.append((len(rows), ci[MODEL][0], ci[PEER][0], ratio))
        table.append({"n": f"{len(rows):,}", "draw": draw,
                      "lam": f"{best[MODEL].settings['lam']:g}", "K": best[PEER].settings["n_neighbors"],
                      "model": flickr8k.fmt(ci[MODEL]), "knn": flickr8k.fmt(ci[PEER]), "ratio": flickr8k.fmt(ratio)})
        print(f"n = {len(rows)} (draw {draw}): {MODEL} P@3 {ci[MODEL][0]:.3f}, knn {ci[PEER][0]:.3f}, "
              f"ratio {flickr8k.fmt(ratio)}", flush=True)
    out.write_csv("learning_curve.csv", csv_rows, list(csv_rows[0]))
    columns = [("n", "train images"), ("draw", "draw"), ("lam", "lam (dev)"), ("K", "K (dev)"),
               ("model", f"{MODEL} P@3"), ("knn", "knn P@3"), ("ratio", "ratio model / knn")]
    out.write_text("learning_curve.md", "\n".join([
        "# The default model against knn as the training set grows (Flickr8k dev)\n",
        f"{args.command}\n",
        f"Nested random subsets of the train split; on each, lam and K chosen by dev P@3 over "
        f"{list(GRIDS[MODEL][1])} and {list(GRIDS[PEER][1])}, every other setting from {args.chosen.name}. "
        f"95% bootstrap intervals over the {dev.truth.shape[0]:,} dev images ({args.boot} replicates); "
        f"the ratio's interval is paired. Issue 26's bar: ratio {BAR:.2f}.\n",
        common.markdown_table(table, columns)]))
    plot(out, points)
    print((out.root / "learning_curve.md").read_text())


def plot(out: common.OutputFolder, points: list[tuple]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, model, peer, ratio = zip(*points)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(n, model, "o", label=f"{MODEL} (default)")
    left.plot(n, peer, "s", label="knn (dev-tuned)")
    left.set(xscale="log", xlabel="training images", ylabel="dev P@3")
    left.legend()
    values = np.array([r[0] for r in ratio])
    errors = np.array([[r[0] - r[1], r[2] - r[0]] for r in ratio]).T
    right.errorbar(n, values, yerr=errors, fmt="o", capsize=3)
    right.axhline(BAR, color="grey", linestyle="--", label=f"issue 26's bar ({BAR:.2f})")
    right.axhline(1.0, color="black", linewidth=0.8)
    right.set(xscale="log", xlabel="training images", ylabel="P@3 ratio model / knn (95% CI)")
    right.legend()
    fig.tight_layout()
    out.save_figure("learning_curve.png", fig)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(experiment, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
