"""The main job of ``make demo``: use the pretrained model, then train, compare, draw.

On the embedded sample (20 scikit-image images with hand-written COCO-style captions) or on a
COCO folder (``--coco ROOT``, e.g. the 80-image subset), it

1. extracts and caches EfficientNet-Lite0 features and builds the caption vocabulary;
2. uses the pretrained model that ships in the package (:mod:`image2vec.pretrained`): the 3-word
   summaries of the first 20 images, the visually similar words of a few words, and the images
   of the folder that a word retrieves, in seconds;
3. scores the eight model x objective combinations, both read-outs of the default model and the
   frequency-prior and nearest-neighbour baselines by k-fold cross-validation (P/R/F1@3, mAP,
   retrieval recall@1) and prints the table (also ``results.csv``);
4. trains the default model (reduced-rank, l2) on every image, saves it (``model.npz``), prints
   its 3-word summaries of the same images and the visually similar words of two words;
5. draws those images with both models' summaries under them (``summaries.png``, and
   ``summaries.json``).
"""

from __future__ import annotations

import csv
import functools
import io
import time
import warnings
from pathlib import Path

import numpy as np

from image2vec import systems
from image2vec.datasets import SAMPLE_CAPTIONS, load_caption_data, sample_image_dir
from image2vec.evaluate import cross_validate
from image2vec.io import atomic_write, write_json
from image2vec.names import DEFAULT_MODEL, MODELS

COMBINATIONS = [(model, objective) for model in MODELS for objective in ("l2", "ip")]
SHOWN = 20  # images summarized, printed and drawn (the first ones of a large COCO folder)
COLUMNS = ("system", "precision", "recall", "f1", "map", "recall@1", "seconds")
#: Words whose similar words the pretrained model shows, and words of things the sample's
#: pictures show (a cat, motorcycles, grass) that retrieve images from the folder.
SIMILAR_QUERIES = ("dog", "beach", "snow")
RETRIEVAL_QUERIES = ("cat", "motorcycle", "grass")


def run_demo(out: str | Path, coco: str | Path | None = None, random_state: int = 0, dim: int = 64) -> list[dict]:
    """Run the main job; writes into ``out`` and returns the table rows."""
    out = Path(out)
    if coco is None:
        captions, images, name = SAMPLE_CAPTIONS, sample_image_dir(), "the embedded sample"
    else:
        root = Path(coco)
        captions, images, name = root / "annotations" / "captions_train2017.json", root / "train2017", str(root)
    data = load_caption_data(captions, images, store=out / "features")
    shown = data.files[:SHOWN]
    pretrained_words = show_pretrained(data, shown)
    n_images, n_words = data.targets.shape
    n_splits = 5 if n_images >= 50 else 4
    print(f"\n2. Training on {name}: {n_images} images, {n_words} words (min_count "
          f"{data.vocabulary.info['min_count']}), features {data.features.shape[1]}-d "
          f"({data.extractor}); {n_splits}-fold cross-validation, k = 3, dim = {dim} where the "
          "data allows it (else the largest it allows: the number of words, or of training images - 1)")

    candidates = [(f"{model} / {objective}", model, {"objective": objective}) for model, objective in COMBINATIONS]
    candidates += [(f"{DEFAULT_MODEL} / l2, rank read-out", DEFAULT_MODEL, {"readout": "rank"}),
                   ("baseline: frequency prior", "prior", {}), ("baseline: nearest neighbours", "knn", {})]
    rows = []
    words = list(data.vocabulary.words)
    for label, model, params in candidates:
        start = time.perf_counter()
        with warnings.catch_warnings():  # said once in the header instead of once a fold
            warnings.filterwarnings("ignore", message=r"dim=\d+ exceeds", category=UserWarning)
            scores = cross_validate(
                functools.partial(systems.make_system, model, dim=dim, random_state=random_state, **params),
                data.features, data.targets, data.truth, queries=data.queries, k=3, n_splits=n_splits,
                random_state=random_state, fit_params={"words": words})
        rows.append({"system": label, **{key: scores[key] for key in COLUMNS[1:-1]},
                     "seconds": time.perf_counter() - start})
    print(format_table(rows))
    write_csv(out / "results.csv", rows)

    model = systems.make_system(DEFAULT_MODEL, dim=dim, random_state=random_state)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"dim=\d+ exceeds", category=UserWarning)
        model.fit(data.features, data.targets, words=words)
    systems.save(model, out / "model.npz", metadata={"extractor": data.extractor, "source": str(captions)})
    summary = model.summarize(data.features[:SHOWN], 3)
    print(f"\nSummaries ({DEFAULT_MODEL}, l2, trained on all images) of {len(shown)} images:")
    for file, summary_words in zip(shown, summary.words):
        print(f"  {Path(file).name:28s} {' + '.join(summary_words)}")
    # Query words: the two whose scores vary most over the images (the columns of Sigma^{1/2} D
    # with the longest norms: the most visual words, where D's own columns may all have norm 1).
    spread = np.linalg.norm(model.similarity_map_ @ model.dictionary_, axis=0)
    queries = [words[v] for v in np.argsort(-spread, kind="stable")[:2]]
    print("\nVisually similar words (correlation of the words' scores over the images) of the two "
          "most visual words:")
    for word in queries:
        print(f"  {word}: " + ", ".join(f"{w} ({c:.2f})" for w, c in model.similar(word, 5)))
    draw_summaries(shown, {"pretrained": pretrained_words, "trained here": summary.words},
                   out / "summaries.png")
    write_json(out / "summaries.json", [{"image": f, "pretrained": p, "trained": t}
                                        for f, p, t in zip(shown, pretrained_words, summary.words)])
    print(f"\nWrote {out / 'results.csv'}, {out / 'model.npz'}, {out / 'summaries.png'}")
    return rows


def show_pretrained(data, shown: list[str]) -> list[list[str]]:
    """Print what the pretrained model says of the images; returns its summaries of ``shown``."""
    from image2vec.pretrained import describe, load_pretrained

    model, metadata = load_pretrained(return_metadata=True)
    if metadata.get("extractor") != data.extractor:
        raise ValueError(f"the pretrained model reads {metadata.get('extractor')} features, "
                         f"these are {data.extractor}")
    summary = model.summarize(data.features[: len(shown)], 3)
    print(f"\n1. Using {describe(model, metadata)}.\n   Summaries (3 words) of {len(shown)} images:")
    for file, summary_words in zip(shown, summary.words):
        print(f"  {Path(file).name:28s} {' + '.join(summary_words)}")
    known = set(model.words_)
    print("\n   Visually similar words:")
    for word in (w for w in SIMILAR_QUERIES if w in known):
        print(f"  {word}: " + ", ".join(f"{w} ({c:.2f})" for w, c in model.similar(word, 5)))
    print(f"\n   Images of the folder retrieved by a word (score: {model.metric}, higher is closer):")
    for word in (w for w in RETRIEVAL_QUERIES if w in known):
        order, scores = model.retrieve([word], data.features, 3)
        print(f"  {word}: " + ", ".join(f"{Path(data.files[i]).name} ({s:.2f})" for i, s in zip(order, scores)))
    return summary.words


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the rows (metrics to three decimals)."""
    header = f"{'system':32s} {'P@3':>6s} {'R@3':>6s} {'F1@3':>6s} {'mAP':>6s} {'ret@1':>6s} {'time':>7s}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['system']:32s} {row['precision']:6.3f} {row['recall']:6.3f} {row['f1']:6.3f} "
                     f"{row['map']:6.3f} {row['recall@1']:6.3f} {row['seconds']:6.1f}s")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path, "w") as fh:
        fh.write(buffer.getvalue())


def draw_summaries(files: list[str], words: dict[str, list[list[str]]], path: Path, columns: int = 5) -> None:
    """A grid of the images with each labelled set of summary words under them, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = -(-len(files) // columns)
    height = 2.6 + 0.3 * len(words)
    figure, axes = plt.subplots(rows, columns, figsize=(2.8 * columns, height * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for n, (axis, file) in enumerate(zip(axes.ravel(), files)):
        with Image.open(file) as image:
            image.thumbnail((320, 320))
            axis.imshow(np.asarray(image.convert("RGB")))
        axis.set_title(Path(file).name, fontsize=7)
        lines = [f"{label}: {' + '.join(summaries[n]) or '-'}" for label, summaries in words.items()]
        axis.text(0.5, -0.06, "\n".join(lines), transform=axis.transAxes, ha="center", va="top",
                  fontsize=7.5, wrap=True)
    figure.tight_layout()
    with atomic_write(path) as fh:
        figure.savefig(fh, format="png", dpi=80)
    plt.close(figure)
