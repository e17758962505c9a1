"""Train the pretrained model that ships in the package, and measure what it is worth.

The model is image2vec's default (``image2vec train`` with no model option: reduced-rank, l2,
bcd, the default ``lam``, EfficientNet-Lite0 features), trained on the 7,000 Flickr8k train and
dev images, with the vocabulary of those images (nouns and adjectives, ``min_count`` 5), stored
in the project's ``.npz`` format at float16 so that the file stays under ``--max-bytes`` (2 MB:
no tracked file is larger). The embedding dimension is the one setting chosen here: the largest
of ``--dims`` whose file fits, with its dev figures beside the others.

What the model is worth is measured on the same settings trained on train alone (6,000 images,
train's vocabulary) and scored on dev (1,000 images) by the Flickr8k benchmark's harness: P@3,
mAP, image search and annotation R@10, each with a 95% bootstrap interval over dev images; and
the same model stored at float16 against its float64 arrays (paired differences), so that the
storage is shown not to move the figures. The official test split is not used.

Writes into OUT: ``dev.csv`` and ``dev.md`` (every dim, float16 and float64), ``record.json``
(command, data, commit, date, vocabulary size, file size, dev figures), and the model itself to
``--model-out`` (default: the package's ``image2vec/resources/pretrained/``), whose metadata
carries the same record.

    python experiments/pretrained.py experiments/results/pretrained --features /work/cache/f8k
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import flickr8k
import numpy as np
import scipy.sparse as sp

from image2vec import systems
from image2vec.captions import load_captions
from image2vec.datasets import WordData, load_caption_data
from image2vec.evaluate import bootstrap_weights, image_scores, score_metrics, with_intervals
from image2vec.pretrained import PRETRAINED_NAME
from image2vec.vocabulary import CaptionAnalyzer, analyze_captions, build_vocabulary

REPO = Path(__file__).resolve().parents[1]
METRICS = ("P@3", "R@3", "F1@3", "mAP", "search R@10", "annotation R@10")
DATA = ("Flickr8k train + dev (7,000 Flickr photos, 5 captions each; Hodosh, Young and "
        "Hockenmaier 2013; research use only)")


def build_parser() -> argparse.ArgumentParser:
    parser = common.script_parser(__file__, __doc__)
    common.add_output_argument(parser)
    common.add_flickr8k_arguments(parser)
    parser.add_argument("--dims", type=common.positive_int, nargs="+", default=[128, 192, 256],
                        help="embedding dimensions tried (default: 128 192 256)")
    parser.add_argument("--max-bytes", type=common.positive_int, default=2 * 2**20,
                        help="largest model file allowed (default: 2 MiB)")
    parser.add_argument("--boot", type=common.positive_int, default=1000,
                        help="bootstrap replicates (default: 1000)")
    parser.add_argument("--model-out", type=Path,
                        default=REPO / "image2vec" / "resources" / "pretrained" / PRETRAINED_NAME,
                        help="where the model is written (default: the package's resources)")
    return parser


def load(args: argparse.Namespace, out: common.OutputFolder) -> tuple[WordData, WordData, np.ndarray, Any, Any]:
    """Flickr8k train (own vocabulary) and dev (train's vocabulary), for the dev figures; and the
    features, targets and words of train + dev with the vocabulary of those 7,000 images (as
    ``image2vec train --split train+dev`` builds it), read from the same two feature stores."""
    train, dev = flickr8k.load_splits(args, out)  # the stores of experiments/flickr8k.py
    text, images = args.flickr8k / "Flickr8k_text" / "Flickr8k.token.txt", args.flickr8k / "Flicker8k_Dataset"
    store = args.features if args.features is not None else out.folder("features")
    analyzer = CaptionAnalyzer()
    documents = analyze_captions(load_captions(text, images, split="train+dev").captions, analyzer)
    vocabulary = build_vocabulary(documents, info={"source": str(text)}, analyzer=analyzer)
    parts = [load_caption_data(text, images, split=name, store=store / name, vocabulary=vocabulary,
                               logits=True) for name in ("train", "dev")]
    features = np.concatenate([part.features for part in parts])
    targets = sp.vstack([part.targets for part in parts]).tocsr()
    return train, dev, features, targets, vocabulary


def fitted(features: np.ndarray, targets: Any, vocabulary: Any, dim: int):
    """The default model of ``image2vec train`` at embedding dimension ``dim``."""
    model = systems.make_system("reduced-rank", random_state=0, dim=dim)
    return model.fit(features, targets, words=list(vocabulary.words))


def stored(model, path: Path):
    """``model`` written at float16 to ``path`` and read back (the file's own validation)."""
    systems.save(model, path, float_storage="float16")
    return systems.load(path)[0]


def commit() -> str:
    """The checkout's commit (with ``+dirty`` when it has uncommitted changes), or ``unknown``."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def experiment(args: argparse.Namespace) -> None:
    out = common.OutputFolder(args.out, ["dev.csv", "dev.md", "record.json"])
    start = time.perf_counter()
    train, dev, features, targets, vocabulary = load(args, out)
    weights = bootstrap_weights(len(dev.keys), args.boot, random_state=0)
    map_weights = weights[: max(1, args.boot // 5)]  # mAP's costlier replicates: a fifth, as flickr8k.py
    rows, sizes = [], {}
    with tempfile.TemporaryDirectory(prefix="pretrained-") as scratch:
        for dim in args.dims:
            model = fitted(train.features, train.targets, train.vocabulary, dim)
            half = stored(model, Path(scratch) / f"train-{dim}.npz")
            scores = {kind: image_scores(m, dev.features, dev.truth, dev.captions, dev.caption_images)
                      for kind, m in (("float16", half), ("float64", model))}
            point = {kind: score_metrics(s) for kind, s in scores.items()}
            replicates = {kind: score_metrics(s, weights, map_weights=map_weights) for kind, s in scores.items()}
            figures = {kind: with_intervals(point[kind], replicates[kind]) for kind in scores}
            storage = with_intervals({k: point["float16"][k] - point["float64"][k] for k in METRICS},
                                     {k: replicates["float16"][k] - replicates["float64"][k] for k in METRICS})
            whole = Path(scratch) / f"all-{dim}.npz"
            systems.save(fitted(features, targets, vocabulary, dim), whole, float_storage="float16")
            sizes[dim] = whole.stat().st_size
            for kind in ("float16", "float64"):
                rows.append({"dim": dim, "storage": kind, "file_bytes": sizes[dim] if kind == "float16" else None,
                             **{m: figures[kind][m] for m in METRICS},
                             **({f"{m} float16 - float64": storage[m] for m in METRICS} if kind == "float16" else {})})
    fitting = [dim for dim in args.dims if sizes[dim] <= args.max_bytes]
    if not fitting:
        raise common.ExperimentError(f"no dim of {args.dims} gives a file under {args.max_bytes} bytes "
                                     f"(sizes {sizes})")
    dim = max(fitting)
    chosen = next(r for r in rows if r["dim"] == dim and r["storage"] == "float16")
    record = {
        "command": args.command, "commit": commit(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "data": DATA, "n_images": len(features), "extractor": train.extractor,
        "settings": {"model": "reduced-rank", "objective": "l2", "solver": "bcd", "dim": dim,
                     "lam": "default", "min_count": vocabulary.info["min_count"], "random_state": 0},
        "n_words": len(vocabulary), "float_storage": "float16", "file_bytes": sizes[dim],
        "dev": {"trained_on": "Flickr8k train (6,000 images), scored on dev (1,000 images), "
                              f"95% bootstrap intervals over dev images ({args.boot} replicates)",
                **{m: chosen[m] for m in METRICS}},
    }
    model = fitted(features, targets, vocabulary, dim)
    args.model_out.parent.mkdir(parents=True, exist_ok=True)
    systems.save(model, args.model_out, float_storage="float16",
                 metadata={**record, "source": "Flickr8k.token.txt"})
    systems.load(args.model_out)  # the file passes the validation of any model file
    record["seconds"] = round(time.perf_counter() - start, 1)
    out.write_json("record.json", record)
    flat = [{key: (value[0] if isinstance(value, tuple) else value) for key, value in row.items()} for row in rows]
    out.write_csv("dev.csv", flat, list(flat[0]) + [k for k in flat[-2] if k not in flat[0]])
    out.write_text("dev.md", dev_table(rows, dim, args))
    print(dev_table(rows, dim, args))
    print(f"wrote {args.model_out} ({sizes[dim]} bytes, dim {dim}, {len(vocabulary)} words)")


def fmt(triple: tuple) -> str:
    value, low, high = triple
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def dev_table(rows: Sequence[dict], dim: int, args: argparse.Namespace) -> str:
    """Markdown: the dev figures of every dim and storage, the chosen one marked."""
    lines = [f"Flickr8k dev, trained on train alone; the shipped model (trained on train + dev) "
             f"uses dim {dim}, the largest whose float16 file fits {args.max_bytes} bytes. "
             f"95% bootstrap intervals over dev images ({args.boot} replicates, {max(1, args.boot // 5)} "
             "for mAP).", "",
             "| dim | storage | file (train + dev) | " + " | ".join(METRICS) + " |",
             "|---" * (3 + len(METRICS)) + "|"]
    for row in rows:
        size = f"{row['file_bytes'] / 2**20:.2f} MiB" if row["file_bytes"] else ""
        mark = " (shipped)" if row["dim"] == dim and row["storage"] == "float16" else ""
        lines.append(f"| {row['dim']}{mark} | {row['storage']} | {size} | "
                     + " | ".join(fmt(row[m]) for m in METRICS) + " |")
    lines += ["", "float16 - float64 storage, paired bootstrap differences:", ""]
    for row in rows:
        if row["storage"] == "float16":
            lines.append(f"- dim {row['dim']}: " + ", ".join(
                f"{m} {row[m + ' float16 - float64'][0]:+.4f} [{row[m + ' float16 - float64'][1]:+.4f}, "
                f"{row[m + ' float16 - float64'][2]:+.4f}]" for m in ("P@3", "mAP", "search R@10")))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(experiment, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
