"""Weak tags before and after the weak-tag model: which user tags does it switch off?

Flickr users tag photos with words that are not in the picture (camera models, places, dates,
"top20" tags). The weak-tag model learns, next to D and W, a weight a_nv in [0, 1] on each tag of
each training image (x_n -> a_n * x_n), so a tag the image does not show can be turned down (the
poster's "concrete, gbr, london" -> "crane, london"). This script trains it on all images of a tag
file and lists, per image, the tags before (all normalised tags; those in fewer than
``--min-count`` images are outside the vocabulary and get no weight) and after (tags with weight
at least ``--threshold``), with the weights, plus the tags by mean weight over their images.

Writes into OUT: ``weak_tags.md`` (the report), ``tag_weights.csv`` (image, tag, weight, kept)
and ``tag_means.csv`` (tag, images, mean weight).

    python experiments/weak_tags.py out/weak_tags                       # the Flickr sample
    python experiments/weak_tags.py out/weak_tags --tags TAGS.tsv --images DIR
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import common
import numpy as np
from tqdm import tqdm

from image2vec.datasets import load_tag_data
from image2vec.flickr import SAMPLE_TSV, load_tag_tsv
from image2vec.model import OBJECTIVES, SOLVERS

OUTPUTS = ("weak_tags.md", "tag_weights.csv", "tag_means.csv")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = common.script_parser(__file__, __doc__)
    common.add_output_argument(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--tags", type=Path, metavar="TSV",
                      help="tag file: image file <TAB> comma-separated tags (default: the "
                      "project's 16-image Flickr sample, image2vec/resources/sample/tags.tsv)")
    data.add_argument("--images", type=Path, metavar="DIR",
                      help="image folder of --tags (default for the sample: scikit-image's data "
                      "folder)")
    data.add_argument("--min-count", type=common.positive_int,
                      help="keep tags of at least this many images (default: 2 below 1000 "
                      "images, else 5)")
    data.add_argument("--features", type=Path, metavar="STORE",
                      help="feature store (cache) to use (default: OUT/features)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="l2", help="(default: l2)")
    parser.add_argument("--solver", choices=SOLVERS, default="bcd", help="(default: bcd)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="a tag is kept when its weight is at least this (default: 0.5)")
    common.add_model_arguments(parser)
    return parser


def experiment(args: argparse.Namespace) -> None:
    """Train the weak-tag model and write the report."""
    if (args.tags is None) != (args.images is None):
        raise common.ExperimentError("give both --tags and --images, or neither (the sample)")
    if args.tags is None:
        import skimage.data

        tags, images, name = SAMPLE_TSV, Path(skimage.data.data_dir), "the 16-image Flickr tag sample"
    else:
        tags, images, name = args.tags, args.images, str(args.tags)
        for path, what in ((tags, "tag file"), (images, "image folder")):
            if not path.exists():
                raise common.ExperimentError(f"{what} {path} does not exist")
    out = common.OutputFolder(args.out, OUTPUTS)
    data = load_tag_data(tags, images, store=common.feature_store(args, out) / "tags",
                         min_count=args.min_count)
    words = list(data.vocabulary.words)
    tagged = load_tag_tsv(tags, images)
    raw = dict(zip(tagged.keys, tagged.tags))
    spec = common.SystemSpec("weak-tag", args.objective, args.solver)
    model = spec.make(args.dim, args.seed).fit(data.features, data.targets, words=words)
    weights = model.tag_weights_.tocsr()
    summaries = model.summarize(data.features, 3).words

    weight_rows, image_rows = [], []
    for n, key in enumerate(tqdm(data.keys, desc="images", unit="image")):
        row = weights.getrow(n)
        weight = {words[v]: float(a) for v, a in zip(row.indices, row.data)}
        for tag, a in weight.items():
            weight_rows.append({"image": key, "tag": tag, "weight": a, "kept": int(a >= args.threshold)})
        before = raw[key]
        image_rows.append({
            "image": key,
            "before": ", ".join(f"{t} ({weight[t]:.2f})" if t in weight else f"~~{t}~~" for t in before),
            "after": ", ".join(t for t in before if weight.get(t, 0.0) >= args.threshold),
            "summary": " + ".join(summaries[n])})
    out.write_csv("tag_weights.csv", weight_rows, ("image", "tag", "weight", "kept"))
    by_tag: dict[str, list[float]] = {}
    for row in weight_rows:
        by_tag.setdefault(row["tag"], []).append(row["weight"])
    means = sorted(({"tag": t, "images": len(a), "mean_weight": float(np.mean(a))}
                    for t, a in by_tag.items()), key=lambda r: (r["mean_weight"], r["tag"]))
    out.write_csv("tag_means.csv", means, ("tag", "images", "mean_weight"))

    kept = sum(row["kept"] for row in weight_rows)
    report = (
        f"# Weak tags before and after the weak-tag model on {name}\n\n"
        f"{len(data.keys)} images, {len(words)} tags in the vocabulary (min_count "
        f"{data.vocabulary.info['min_count']}); model {spec.label}, dim {args.dim}, seed {args.seed}, trained on all "
        f"images. {kept} of {len(weight_rows)} (image, tag) pairs keep a weight >= "
        f"{args.threshold}.\n\n    {args.command}\n\n"
        "## Tags per image\n\nBefore: every normalised tag with its learned weight; struck out: "
        "outside the vocabulary (too rare to weigh). After: the tags kept. Summary: the model's "
        "3 words for the image.\n\n"
        + common.markdown_table(image_rows, (("image", "image"), ("before", "before (weight)"),
                                             ("after", "after"), ("summary", "summary")))
        + "\n## Tags by mean weight\n\nLowest first: the tags the model trusts least.\n\n"
        + common.markdown_table(means, (("tag", "tag"), ("images", "images"),
                                        ("mean_weight", "mean weight"))))
    out.write_text("weak_tags.md", report)
    print(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return common.run(experiment, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
