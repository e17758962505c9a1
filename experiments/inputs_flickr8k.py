"""Better inputs for every system alike, on Flickr8k dev: extractors, flip averaging, verbs.

Each input variant is an extractor name (``efficientnet-lite0``, ``-lite1``, ``-lite2``, any of them
with ``+flip``: the features of the image and its mirror averaged), optionally with ``:verbs``
(the vocabulary takes nouns, adjectives and verbs; summaries are still scored against the nouns
and adjectives, image search and annotation use every word). For every variant the default
model (reduced-rank/l2/bcd), knn and ridge get their settings from the dev search of
``flickr8k.py`` (run into ``OUT/variants/VARIANT/`` or ``--runs``, resumable, its fits kept) and
are scored by its harness.

Written into OUT:

- ``inputs.md``, ``inputs.csv``: every variant x system with 95% bootstrap intervals over the dev
  images, and its paired difference to the same system on the first variant (the baseline);
- ``speed.csv``: each extractor's end-to-end extraction rate (images/s) on the first
  ``--timing-images`` Flickr8k dev images, every extractor in turn round after round (median
  of ``--repeats`` rounds, a fresh feature store each time), and its ratio to the first one's.

    python experiments/inputs_flickr8k.py experiments/results/inputs --features /work/cache/f8k
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import common
import flickr8k
from timing import median_times

from image2vec.captions import load_captions
from image2vec.evaluate import bootstrap_weights
from image2vec.features import extract_features, load_extractor
from image2vec.names import DEFAULT_EXTRACTOR

SYSTEMS = ("reduced-rank/l2/bcd", "knn", "ridge")
VARIANTS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "efficientnet-lite0+flip",
            "efficientnet-lite0:verbs")
METRICS = ("P@3", "mAP", "search R@10", "annotation R@10")
OUTPUTS = ("inputs.md", "inputs.csv", "speed.csv", "variants/")


def build_parser() -> argparse.ArgumentParser:
    parser = common.script_parser(__file__, __doc__)
    common.add_output_argument(parser)
    common.add_flickr8k_folder_argument(parser)
    parser.add_argument("--features", type=Path, metavar="STORE",
                        help="feature stores STORE/EXTRACTOR/{train,dev} (default: OUT/features)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="EXTRACTOR[:verbs]",
                        help="input variants, the first the baseline (default: %(default)s)")
    parser.add_argument("--runs", type=Path, metavar="DIR",
                        help="where each variant's flickr8k.py run goes, DIR/VARIANT (default: OUT/variants)")
    parser.add_argument("--boot", type=common.positive_int, default=1000, help="bootstrap replicates")
    parser.add_argument("--timing-images", type=common.positive_int, default=256,
                        help="Flickr8k dev images of the speed measurement (default: 256)")
    parser.add_argument("--repeats", type=common.positive_int, default=3, help="timing rounds (default: 3)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run_variant(variant: str, args: argparse.Namespace, folder: Path) -> dict[str, flickr8k.Fit]:
    """flickr8k.py's dev search and scores of :data:`SYSTEMS` on one input variant."""
    extractor, _, option = variant.partition(":")
    if option not in ("", "verbs"):
        raise common.ExperimentError(f"variant {variant!r}: the only option is ':verbs'")
    argv = [str(folder), "--flickr8k", str(args.flickr8k), "--extractor", extractor,
            "--systems", *SYSTEMS, "--boot", str(args.boot), "--seed", str(args.seed), "--scores-only"]
    if args.features is not None:
        argv += ["--features", str(args.features)]
    if option:
        argv += ["--pos", "noun", "adj", "verb"]
    if flickr8k.main(argv) != 0:
        raise common.ExperimentError(f"the Flickr8k benchmark of variant {variant} failed")
    chosen = json.loads((folder / "chosen.json").read_text())
    reader = argparse.Namespace(root=folder)
    return {label: flickr8k.load_fit(reader, "systems", label, flickr8k.settings_for(label, chosen))
            for label in SYSTEMS}


def extraction_rates(extractors: Sequence[str], args: argparse.Namespace) -> dict[str, float]:
    """Images/s of extract_features on the first dev images, every extractor in each round."""
    text = args.flickr8k / "Flickr8k_text" / "Flickr8k.token.txt"
    files = load_captions(text, args.flickr8k / "Flicker8k_Dataset", split="dev").paths[: args.timing_images]
    networks = {name: load_extractor(name) for name in extractors}
    with tempfile.TemporaryDirectory() as scratch:
        counter = iter(range(10**9))

        def extraction(network):
            return lambda: extract_features(files, Path(scratch) / f"store{next(counter)}",
                                            extractor=network, progress=False)

        times, _ = median_times({name: extraction(net) for name, net in networks.items()}, args.repeats)
    return {name: len(files) / seconds for name, seconds in times.items()}


def experiment(args: argparse.Namespace) -> None:
    out = common.OutputFolder(args.out, OUTPUTS)
    variants = list(dict.fromkeys(args.variants))
    runs = args.runs if args.runs is not None else out.root / "variants"
    fits = {variant: run_variant(variant, args, runs / variant.replace(":", "-")) for variant in variants}
    n_dev = len(next(iter(fits[variants[0]].values())).scores.truth)
    weights = bootstrap_weights(n_dev, args.boot, args.seed)
    map_weights = weights[: max(1, args.boot // 5)]
    rows, table = [], []
    for variant in variants:
        for label in SYSTEMS:
            fit, base = fits[variant][label], fits[variants[0]][label]
            ci = flickr8k.intervals({label: fit}, weights, map_weights)[label]
            diff = flickr8k.paired(fit, base, weights, map_weights)
            rows.append({"variant": variant, "system": label, "settings": json.dumps(fit.settings),
                         **{f"{m} {part}": ci[m][i] for m in METRICS
                            for i, part in enumerate(("value", "low", "high"))},
                         **{f"{m} diff {part}": diff[m][i] for m in METRICS
                            for i, part in enumerate(("value", "low", "high"))}})
            table.append({"variant": variant, "system": label,
                          **{m: flickr8k.fmt(ci[m], flickr8k.digits(m)) for m in METRICS},
                          **{f"d {m}": flickr8k.fmt(diff[m], flickr8k.digits(m)) for m in ("P@3", "search R@10")}})
    out.write_csv("inputs.csv", rows, list(rows[0]))
    extractors = list(dict.fromkeys(variant.partition(":")[0] for variant in variants))
    rates = extraction_rates(extractors, args)
    speed = [{"extractor": name, "images_per_second": rate, "relative_to_first": rate / rates[extractors[0]],
              "date": datetime.date.today().isoformat(), "images": args.timing_images, "repeats": args.repeats}
             for name, rate in rates.items()]
    out.write_csv("speed.csv", speed, list(speed[0]))
    columns = [("variant", "variant"), ("system", "system"), *[(m, m) for m in METRICS],
               ("d P@3", f"P@3 - {variants[0]}"), ("d search R@10", f"search R@10 - {variants[0]}")]
    speed_rows = [{"extractor": row["extractor"], "rate": f"{row['images_per_second']:.1f}",
                   "relative": f"{row['relative_to_first']:.2f}"} for row in speed]
    out.write_text("inputs.md", "\n".join([
        "# Inputs for every system alike (Flickr8k dev)\n",
        f"{args.command}\n",
        "Each variant's settings from its own dev search; 95% bootstrap intervals over the 1,000 dev "
        f"images, and the paired difference to the same system on {variants[0]} (`:verbs`: nouns, "
        "adjectives and verbs in the vocabulary; summaries still scored against nouns and adjectives).\n",
        common.markdown_table(table, columns),
        f"\nEnd-to-end extraction rate, {datetime.date.today().isoformat()}: the first "
        f"{args.timing_images} dev images, median of {args.repeats} interleaved rounds "
        f"(default extractor: {DEFAULT_EXTRACTOR}).\n",
        common.markdown_table(speed_rows, [("extractor", "extractor"), ("rate", "images/s"),
                                           ("relative", f"rate / {extractors[0]}'s")])]))
    print((out.root / "inputs.md").read_text())


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(experiment, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
