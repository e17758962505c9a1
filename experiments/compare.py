"""Compare every model x objective x solver and every baseline on one data set.

Each system is trained and scored by k-fold cross-validation by image (one train/val split on
data sets above ``--kfold-max`` images) on the same folds: precision, recall and F1 of its k-word
summaries for k = 1..5 (micro-averaged), mAP over words, word-to-image retrieval recall@1/5/10
(one held-out caption per image as the query) and the training time. P, R and F1 are
micro-averaged over the held-out images of every fold (each image is held out once, so
F1 = 2PR / (P + R) on every row); mAP, retrieval recall and the time are means over the folds.
Writes into OUT:

- ``results.csv``: one row per system, every metric (P/R/F1 at k = 1..5, ``precision@k``,
  ``recall@k``, ``f1@k``; retrieval recall ``retrieval_recall@K``);
- ``results.md``: the data set, the protocol and a table sorted by F1@3;
- ``f1_at_k.png``: F1 against k, one line per system;
- ``l2_vs_ip.png``: F1@3 and mAP of l2 and ip side by side for every model and solver;
- ``objective.png`` and ``objective_traces.csv``: the training objective against the iteration
  (bcd sweep, sgd epoch) of each Image2Vec model, on the first fold.

    python experiments/compare.py out/compare                          # the embedded sample
    python experiments/compare.py out/coco --coco COCO_ROOT --dim 64   # a COCO folder
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import common
import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from image2vec.evaluate import (
    RECALL_AT,
    mean_average_precision,
    precision_recall_f1,
    query_scores,
    retrieval_recall,
)
from image2vec.model import MODELS

KS = (1, 2, 3, 4, 5)
OUTPUTS = ("results.csv", "results.md", "f1_at_k.png", "l2_vs_ip.png", "objective.png",
           "objective_traces.csv")
#: Summary recall is ``recall@k``; word-to-image retrieval recall ``retrieval_recall@K``.
METRICS = ([f"{m}@{k}" for k in KS for m in ("precision", "recall", "f1")] + ["map"]
           + [f"retrieval_recall@{K}" for K in RECALL_AT] + ["fit_seconds"])
CSV_COLUMNS = ("system", "model", "objective", "solver", *METRICS, "n_folds")
TABLE_COLUMNS = (("system", "system"), ("precision@3", "P@3"), ("recall@3", "R@3"),
                 ("f1@3", "F1@3"), ("f1@1", "F1@1"), ("f1@5", "F1@5"), ("map", "mAP"),
                 *((f"retrieval_recall@{K}", f"retrieval R@{K}") for K in RECALL_AT), ("fit_seconds", "fit (s)"))


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = common.script_parser(__file__, __doc__)
    parser.epilog = "Systems: MODEL[/OBJECTIVE[/SOLVER]] (a part left out: every choice), a baseline name, or all."
    common.add_output_argument(parser)
    parser.add_argument("--systems", nargs="+", default=["all"], metavar="SYSTEM",
                        help="systems to compare (default: all)")
    common.add_data_arguments(parser)
    common.add_split_arguments(parser)
    common.add_model_arguments(parser)
    return parser


def score_system(spec: common.SystemSpec, data: common.WordData, splits: list,
                 args: argparse.Namespace) -> tuple[dict, list]:
    """Cross-validated metrics of one system, and its objective trace on the first fold."""
    trace: list = []
    X = spec.inputs(data)
    scores, truths, summaries = [], [], {k: [] for k in KS}
    for fold in common.fit_folds(spec, data, splits, args):
        system, test, truth = fold.system, fold.test, data.truth[fold.test]
        row = {"fit_seconds": fold.fit_seconds}
        truths.append(truth)
        for k in KS:
            summaries[k].append(system.summarize(X[test], k).indices)
        row["map"] = mean_average_precision(system.decision_function(X[test]), truth)[0]
        row.update({f"retrieval_{key}": value for key, value in
                    retrieval_recall(query_scores(system, X[test], data.queries[test])).items()})
        scores.append(row)
        if not trace and spec.is_model:
            trace = list(system.objective_trace_)
    mean = {key: float(np.nanmean([row[key] for row in scores])) for key in scores[0]}
    truth = sp.vstack(truths) if sp.issparse(truths[0]) else np.vstack(truths)
    for k in KS:  # micro-averaged over every held-out image: F1 = 2PR / (P + R) of the row
        mean[f"precision@{k}"], mean[f"recall@{k}"], mean[f"f1@{k}"] = (
            float(v) for v in precision_recall_f1(np.vstack(summaries[k]), truth))
    return {"system": spec.label, "model": spec.name, "objective": spec.objective or "",
            "solver": spec.solver or "", **mean, "n_folds": len(splits)}, trace


def plot_f1_at_k(rows: list[dict]):
    """F1 against k, one line per system."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8.5, 4.8))
    colours = plt.get_cmap("tab20")
    for i, row in enumerate(rows):
        axis.plot(KS, [row[f"f1@{k}"] for k in KS], marker="o", markersize=3,
                  color=colours(i % 20), linestyle="-" if i < 20 else "--", label=row["system"])
    axis.set_xticks(KS)
    axis.set_xlabel("summary length k")
    axis.set_ylabel("F1@k (micro-averaged)")
    axis.set_title("F1 of k-word summaries")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    figure.tight_layout()
    return figure


def plot_l2_vs_ip(rows: list[dict]):
    """F1@3 and mAP of l2 and ip side by side per model and solver; None without any pair."""
    import matplotlib.pyplot as plt

    by_key = {(r["model"], r["solver"], r["objective"]): r for r in rows if r["model"] in MODELS}
    groups = sorted({(m, s) for m, s, _ in by_key if (m, s, "l2") in by_key and (m, s, "ip") in by_key},
                    key=lambda g: (MODELS.index(g[0]), g[1]))
    if not groups:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    x = np.arange(len(groups))
    for axis, (metric, title) in zip(axes, (("f1@3", "F1@3"), ("map", "mAP"))):
        for offset, objective, colour in ((-0.2, "l2", "tab:blue"), (0.2, "ip", "tab:orange")):
            values = [by_key[(m, s, objective)][metric] for m, s in groups]
            axis.bar(x + offset, values, width=0.4, color=colour, label=objective)
        axis.set_xticks(x, [f"{m}\n{s}" for m, s in groups], fontsize=8)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), title="objective", loc="upper right")
    figure.suptitle("l2 against inner product (ip), per model and solver")
    figure.tight_layout(rect=(0, 0, 0.92, 1))
    return figure


def plot_objective(traces: dict[str, list]):
    """Objective after each bcd sweep / sgd epoch, one panel per objective; None without traces."""
    import matplotlib.pyplot as plt

    objectives = [o for o in ("l2", "ip") if any(label.split("/")[1] == o for label in traces)]
    if not objectives:
        return None
    figure, axes = plt.subplots(1, len(objectives), figsize=(4.8 * len(objectives), 3.8), squeeze=False)
    colours = {model: f"C{i}" for i, model in enumerate(MODELS)}
    for axis, objective in zip(axes[0], objectives):
        for label, trace in traces.items():
            model, label_objective, solver = label.split("/")
            if label_objective != objective or not trace:
                continue
            last = {}  # the value after the last block of every iteration
            for iteration, _, value in trace:
                last[iteration] = value
            axis.plot(list(last), list(last.values()), color=colours[model],
                      linestyle="-" if solver == "bcd" else "--", marker=".", label=label)
        if objective == "l2":  # a sum of squares: positive, falls over decades under sgd
            axis.set_yscale("log")
        axis.set_xlabel("iteration (bcd sweep, sgd epoch)")
        axis.set_ylabel("objective J (minimised)")
        axis.set_title(f"objective {objective}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def experiment(args: argparse.Namespace) -> None:
    """Run the comparison and write the outputs."""
    specs = common.parse_systems(args.systems)
    out = common.OutputFolder(args.out, OUTPUTS)
    data, name = common.load_dataset(args, out, logits=any(spec.takes_logits for spec in specs))
    n_images, n_words = data.targets.shape
    splits = common.make_splits(n_images, args)
    rows, traces = [], {}
    for spec in tqdm(specs, desc="systems", unit="system"):
        row, trace = score_system(spec, data, splits, args)
        rows.append(row)
        if trace:
            traces[spec.label] = trace
    ranked = sorted(rows, key=lambda r: -r["f1@3"])
    header = (f"# Comparison on {name}\n\n{n_images} images, {n_words} words (min_count "
              f"{data.vocabulary.info['min_count']}), {data.features.shape[1]}-d {data.extractor} features; "
              f"{common.describe_splits(splits, n_images)}, seed {args.seed}, Image2Vec dim "
              f"{args.dim}. P/R/F1 of k-word summaries micro-averaged over the held-out images of "
              "every fold; means over the folds: mAP over words, word-to-image retrieval recall@K with one held-out "
              "caption per image as the query; fit (s) is the mean training time per fold. "
              f"Sorted by F1@3.\n\n    {args.command}\n\n")
    out.write_csv("results.csv", rows, CSV_COLUMNS)
    out.write_text("results.md", header + common.markdown_table(ranked, TABLE_COLUMNS))
    out.save_figure("f1_at_k.png", plot_f1_at_k(ranked))
    for file, figure in (("l2_vs_ip.png", plot_l2_vs_ip(rows)), ("objective.png", plot_objective(traces))):
        if figure is not None:
            out.save_figure(file, figure)
    if traces:
        out.write_csv("objective_traces.csv",
                      [{"system": label, "iteration": i, "block": block, "objective": value}
                       for label, trace in traces.items() for i, block, value in trace],
                      ("system", "iteration", "block", "objective"))
    print(common.markdown_table(ranked, TABLE_COLUMNS))
    print(f"wrote {args.out}/results.csv, results.md and figures")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return common.run(experiment, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
