"""CVS, M-CVS and RVS on a COCO folder: the k-fold summary table and cross-modal mAP@50.

For every fold of the same splits as :func:`image2vec.evaluate.cross_validate` (``KFold``,
shuffled, seed 0), each variant is trained on the other folds, with the COCO instance categories
as labels (``--labels categories``, the setting of the thesis) or the vocabulary words
(``--labels words``), and scored on the held-out fold:

- summaries: P/R/F1@k, mAP and retrieval recall, by :func:`image2vec.evaluate.evaluate`;
- cross-modal retrieval: mAP@50 image -> text and text -> image among the held-out images that
  have at least one category (image alone vs its bag of caption words, both embedded without a
  partner; relevance = sharing a category), with the mAP@50 of random embeddings as chance.

Every metric is averaged over the folds.

    python experiments/common_space_coco.py --coco ../shared/data/coco-mini --store /tmp/store
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import KFold

from image2vec import systems
from image2vec.datasets import load_caption_data
from image2vec.evaluate import evaluate
from image2vec.metrics import cross_modal_map_at_k

COLUMNS = ("precision", "recall", "f1", "map", "recall@5", "i2t", "t2i", "chance", "seconds")


def run_fold(variant: str, data, labels: str, train: np.ndarray, test: np.ndarray, k: int,
             random_state: int) -> dict:
    """Train one variant on ``train`` and score it on ``test``."""
    categories = data.categories.toarray() > 0
    start = time.perf_counter()
    system = systems.make_system(variant, random_state=random_state).fit(
        data.features[train], data.targets[train], words=list(data.vocabulary.words),
        labels=categories[train] if labels == "categories" else None)
    seconds = time.perf_counter() - start
    result = evaluate(system, data.features[test], data.truth[test], k=k,
                      queries=data.queries[test], labels=categories[test])
    y = categories[test][categories[test].any(axis=1)]
    rng = np.random.default_rng(random_state)
    chance = (cross_modal_map_at_k(rng.standard_normal((len(y), 8)), y,
                                   rng.standard_normal((len(y), 8)), y) if len(y) else float("nan"))
    return {**result, "seconds": seconds, "i2t": result["map@50 i2t"], "t2i": result["map@50 t2i"],
            "chance": chance}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco", required=True, type=Path, help="COCO root (train2017 layout)")
    parser.add_argument("--store", required=True, type=Path, help="feature store (cache)")
    parser.add_argument("--labels", choices=("categories", "words"), default="categories")
    parser.add_argument("--variants", nargs="+", default=["cvs", "mcvs", "rvs"])
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("-k", type=int, default=3)
    parser.add_argument("--min-count", type=int,
                        help="keep words of at least this many images (default: 2 below 1000 "
                        "images, else 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    annotations = args.coco / "annotations"
    data = load_caption_data(annotations / "captions_train2017.json", args.coco / "train2017",
                             store=args.store, instances=annotations / "instances_train2017.json",
                             min_count=args.min_count, progress=False)
    n, v = data.targets.shape
    print(f"{args.coco}: {n} images, {v} words (min_count {data.vocabulary.info['min_count']}), "
          f"{data.categories.shape[1]} categories; {args.splits}-fold, k = {args.k}, "
          f"labels = {args.labels}")
    splitter = KFold(n_splits=args.splits, shuffle=True, random_state=args.random_state)
    print(f"{'system':8s}" + "".join(f"{c:>10s}" for c in COLUMNS))
    for variant in args.variants:
        folds = [run_fold(variant, data, args.labels, train, test, args.k, args.random_state)
                 for train, test in splitter.split(data.features)]
        mean = {c: float(np.nanmean([fold[c] for fold in folds])) for c in COLUMNS}
        print(f"{variant:8s}" + "".join(f"{mean[c]:10.3f}" for c in COLUMNS))


if __name__ == "__main__":
    main()
