"""A gallery for eyeballing: held-out summaries of each system, and word-sum retrieval.

Every system is trained by k-fold cross-validation by image (one train/val split on large data
sets), so each image is summarized by a model that never saw it. A seeded sample of the held-out
images is shown with each system's k-word summary under it and the ground-truth words (the
vocabulary words of its captions). Word-sum queries ("snowy + young", "clock + tower + night")
rank the held-out images by ||r_n - D x_query|| under an Image2Vec model (each image scored by
its fold's model); query words outside the vocabulary are left out, and a query with none left
is skipped.

Writes into OUT: ``gallery.html`` (summaries and retrieval, thumbnails in ``images/``),
``gallery.png`` (a grid of the images with the summaries under them), ``retrieval.png`` (the
top images of each query) and ``gallery.json``.

    python experiments/gallery.py out/gallery --coco COCO_ROOT --dim 64
    python experiments/gallery.py out/gallery --query "red + wall" --systems learn-all/l2/bcd knn
"""

from __future__ import annotations

import argparse
import html
import io
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import common
import numpy as np
from PIL import Image
from tqdm import tqdm

DEFAULT_SYSTEMS = ("learn-all/l2/bcd", "learn-all/ip/bcd", "knn", "prior")
DEFAULT_QUERIES = ("snowy + young", "clock + tower + night")
THUMBNAIL = 256
OUTPUTS = ("gallery.html", "gallery.png", "retrieval.png", "gallery.json", "images/")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = common.script_parser(__file__, __doc__)
    common.add_output_argument(parser)
    parser.add_argument("--systems", nargs="+", default=list(DEFAULT_SYSTEMS), metavar="SYSTEM",
                        help=f"systems to show (default: {' '.join(DEFAULT_SYSTEMS)})")
    parser.add_argument("-k", type=common.positive_int, default=3, help="summary length (default: 3)")
    parser.add_argument("--n-images", type=common.positive_int, default=12,
                        help="held-out images shown (default: 12)")
    parser.add_argument("--query", action="append", metavar="WORDS",
                        help='a word-sum query, words separated by "+" or spaces; repeatable '
                        f"(default: {' and '.join(repr(q) for q in DEFAULT_QUERIES)})")
    parser.add_argument("--retrieval-system", default="learn-all/l2/bcd",
                        metavar="MODEL/OBJECTIVE/SOLVER",
                        help="Image2Vec model that ranks the images (default: learn-all/l2/bcd)")
    parser.add_argument("--n-retrieved", type=common.positive_int, default=5,
                        help="top images shown per query (default: 5)")
    common.add_data_arguments(parser)
    common.add_split_arguments(parser)
    common.add_model_arguments(parser)
    return parser


def query_words(query: str) -> list[str]:
    """``"clock + tower night"`` -> ``["clock", "tower", "night"]``."""
    return [word for word in re.split(r"[\s+]+", query.lower()) if word]


def retrieve_held_out(folds: list[common.Fold], X: np.ndarray, words: list[str],
                      n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n held-out images nearest to D x_query (each scored by its fold's model), distances."""
    found, distances = [], []
    for fold in folds:
        order, distance = fold.system.retrieve(words, X[fold.test])
        found.append(fold.test[order])
        distances.append(distance)
    found, distances = np.concatenate(found), np.concatenate(distances)
    best = np.argsort(distances, kind="stable")[:n]
    return found[best], distances[best]


def thumbnail(out: common.OutputFolder, file: str, n: int) -> str:
    """Write a JPEG thumbnail of image row ``n`` into ``images/``; returns its relative name."""
    name = f"images/{n:06d}.jpg"
    with Image.open(file) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    out.write_bytes(name, buffer.getvalue())
    return name


def plot_grid(cells: list[dict], labels: list[str], columns: int = 4):
    """The images with one line per system and the truth under each."""
    import matplotlib.pyplot as plt

    rows = -(-len(cells) // columns)
    lines = len(labels) + 1
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, (2.5 + 0.17 * lines) * rows),
                                squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, cell in zip(axes.ravel(), cells):
        with Image.open(cell["file"]) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            axis.imshow(np.asarray(image))
        axis.set_title(Path(cell["file"]).name, fontsize=7)
        text = [f"{label}: {' + '.join(cell['summaries'][label])}" for label in labels]
        text.append(f"truth: {' '.join(cell['truth'])}")
        axis.text(0.0, -0.03, "\n".join(textwrap.fill(line, 48, subsequent_indent="  ")
                                        for line in text),
                  transform=axis.transAxes, ha="left", va="top", fontsize=6.5, family="monospace")
    figure.tight_layout()
    return figure


def plot_retrieval(results: list[dict], files: list[str], n: int):
    """One row per query: its top images, the title green when the image has every query word."""
    import matplotlib.pyplot as plt

    shown = [r for r in results if r["images"]]
    figure, axes = plt.subplots(len(shown), n, figsize=(2.3 * n, 2.5 * len(shown)), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for row, result in zip(axes, shown):
        row[0].text(-0.08, 0.5, " + ".join(result["words"]), transform=row[0].transAxes,
                    rotation=90, ha="right", va="center", fontsize=9)
        for axis, hit in zip(row, result["images"]):
            with Image.open(files[hit["row"]]) as image:
                image = image.convert("RGB")
                image.thumbnail((THUMBNAIL, THUMBNAIL))
                axis.imshow(np.asarray(image))
            axis.set_title(f"d = {hit['distance']:.2f}", fontsize=8,
                           color="tab:green" if hit["has_all_words"] else "black")
    figure.suptitle("Word-sum retrieval (held-out images; green: the captions have every word)",
                    fontsize=9)
    figure.tight_layout()
    return figure


def write_html(out: common.OutputFolder, name: str, cells: list[dict], labels: list[str],
               results: list[dict], command: str) -> None:
    """``gallery.html``: summaries (caption words in bold) and retrieval, thumbnails linked."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>image2vec gallery: "
             f"{e(name)}</title><style>body{{font-family:sans-serif;margin:1em}}"
             ".cell{display:inline-block;vertical-align:top;width:270px;margin:6px;font-size:12px}"
             "img{max-width:256px;max-height:256px}td{padding:2px 6px}</style></head><body>",
             f"<h1>Held-out summaries on {e(name)}</h1><p><code>{e(command)}</code></p>"
             "<p>Words that are among the image's caption words are in <b>bold</b>.</p>"]
    for cell in cells:
        truth = set(cell["truth"])
        lines = "".join(
            f"<tr><td>{e(label)}</td><td>"
            + " + ".join(f"<b>{e(w)}</b>" if w in truth else e(w) for w in cell["summaries"][label])
            + "</td></tr>" for label in labels)
        parts.append(f"<div class='cell'><img src='{e(cell['thumbnail'])}' alt='{e(cell['image'])}'>"
                     f"<div>{e(cell['image'])}</div><table>{lines}<tr><td>truth</td><td>"
                     f"{e(' '.join(cell['truth']))}</td></tr></table></div>")
    parts.append("<h1>Word-sum retrieval</h1>")
    for result in results:
        parts.append(f"<h2>{e(result['query'])}</h2>")
        if not result["images"]:
            parts.append(f"<p>Skipped: {e(result['note'])}</p>")
            continue
        if result["note"]:
            parts.append(f"<p>{e(result['note'])}</p>")
        parts.extend(f"<div class='cell'><img src='{e(hit['thumbnail'])}' alt='{e(hit['image'])}'>"
                     f"<div>{e(hit['image'])}, d = {hit['distance']:.3f}"
                     f"{' (has every word)' if hit['has_all_words'] else ''}</div></div>"
                     for hit in result["images"])
    parts.append("</body></html>\n")
    out.write_text("gallery.html", "\n".join(parts))


def experiment(args: argparse.Namespace) -> None:
    """Summarize, retrieve, and write the gallery."""
    specs = common.parse_systems(args.systems)
    retrieval = common.parse_systems([args.retrieval_system])
    if len(retrieval) != 1 or not retrieval[0].is_model:
        raise common.ExperimentError("--retrieval-system must name one Image2Vec model as "
                                     f"MODEL/OBJECTIVE/SOLVER, not {args.retrieval_system!r}")
    out = common.OutputFolder(args.out, OUTPUTS)
    data, name = common.load_dataset(args, out, logits=any(spec.takes_logits for spec in specs))
    words = np.asarray(data.vocabulary.words)
    truth = data.truth.toarray() > 0
    splits = common.make_splits(len(data.keys), args)
    held_out = np.sort(np.concatenate([test for _, test in splits]))
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.choice(held_out, size=min(args.n_images, held_out.size), replace=False))

    folds, summaries = {}, {spec.label: {} for spec in specs}
    for spec in tqdm([*specs, *(s for s in retrieval if s not in specs)], desc="systems", unit="system"):
        folds[spec.label] = common.fit_folds(spec, data, splits, args)
        if spec not in specs:
            continue
        for fold in folds[spec.label]:
            shown = np.intersect1d(fold.test, chosen)
            if shown.size:
                summary = fold.system.summarize(spec.inputs(data)[shown], args.k)
                summaries[spec.label].update(zip(shown.tolist(), summary.words))

    labels = [spec.label for spec in specs]
    cells = [{"row": int(n), "image": Path(data.files[n]).name, "file": data.files[n],
              "thumbnail": thumbnail(out, data.files[n], n),
              "truth": [str(w) for w in words[truth[n]]],
              "summaries": {label: summaries[label][n] for label in labels}} for n in chosen]
    results = []
    for query in args.query or DEFAULT_QUERIES:
        asked = query_words(query)
        known = [w for w in asked if w in data.vocabulary]
        missing = [w for w in asked if w not in data.vocabulary]
        note = f"not in the vocabulary: {', '.join(missing)}" if missing else ""
        images = []
        if known:
            rows, distances = retrieve_held_out(folds[retrieval[0].label], data.features, known,
                                                args.n_retrieved)
            columns = [data.vocabulary.index(w) for w in known]
            images = [{"row": int(n), "image": Path(data.files[n]).name,
                       "thumbnail": thumbnail(out, data.files[n], n), "distance": float(d),
                       "has_all_words": bool(truth[n, columns].all())}
                      for n, d in zip(rows, distances)]
        results.append({"query": query, "words": known, "note": note, "images": images})

    write_html(out, name, cells, labels, results, args.command)
    out.save_figure("gallery.png", plot_grid(cells, labels))
    if any(result["images"] for result in results):
        out.save_figure("retrieval.png", plot_retrieval(results, data.files, args.n_retrieved))
    out.write_json("gallery.json", {
        "data": name, "command": args.command, "k": args.k, "retrieval_system": retrieval[0].label,
        "images": [{key: cell[key] for key in ("image", "truth", "summaries")} for cell in cells],
        "retrieval": [{"query": r["query"], "words": r["words"], "note": r["note"],
                       "images": [{k: hit[k] for k in ("image", "distance", "has_all_words")}
                                  for hit in r["images"]]} for r in results]})
    print(f"wrote {args.out}/gallery.html, gallery.png and gallery.json")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return common.run(experiment, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
