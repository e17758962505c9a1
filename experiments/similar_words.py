"""Nearest words in the learned visual space next to the nearest words in GloVe.

An Image2Vec model trained on all images of the data set places words by how they look: its
similarity is the cosine of the columns of D (on COCO the poster found "yellow -> bus, orange,
station, road, bananas"), while a text embedding places them by context ("yellow -> red,
bright-yellow"). For each query word the table lists the n nearest words in the visual space, in
GloVe 6B 50d among the same vocabulary, and in GloVe among its own 400,000 words.

Writes into OUT: ``similar_words.md`` (the table) and ``similar_words.json``.

    python experiments/similar_words.py out/similar --coco COCO_ROOT --dim 64
    python experiments/similar_words.py out/similar --words yellow dog --system learn-all/ip/bcd
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import common
import numpy as np
from tqdm import tqdm

from image2vec.baselines.imnet_glove import WordVectors, load_glove

DEFAULT_WORDS = ("yellow", "red", "dog", "snowy", "wooden", "kitchen")
OUTPUTS = ("similar_words.md", "similar_words.json")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = common.script_parser(__file__, __doc__)
    common.add_output_argument(parser)
    parser.add_argument("--words", nargs="+", default=list(DEFAULT_WORDS), metavar="WORD",
                        help=f"query words (default: {' '.join(DEFAULT_WORDS)})")
    parser.add_argument("-n", type=common.positive_int, default=5,
                        help="neighbours per word (default: 5)")
    parser.add_argument("--system", default="learn-all/l2/bcd", metavar="MODEL/OBJECTIVE/SOLVER",
                        help="the Image2Vec model (default: learn-all/l2/bcd)")
    common.add_data_arguments(parser)
    common.add_model_arguments(parser)
    return parser


def glove_neighbours(glove: WordVectors, word: str, candidates: Sequence[str], n: int) -> list[str]:
    """The n words of ``candidates`` nearest to ``word`` in GloVe by cosine (itself excluded)."""
    vectors, found = glove.lookup([word, *candidates])
    if not found[0]:
        return []
    norms = np.linalg.norm(vectors, axis=1)
    cosine = vectors[1:] @ vectors[0] / np.maximum(norms[1:] * norms[0], 1e-300)
    cosine[~found[1:] | (np.asarray(candidates) == word)] = -np.inf
    order = np.argsort(-cosine, kind="stable")[:n]
    return [candidates[i] for i in order if np.isfinite(cosine[i])]


def experiment(args: argparse.Namespace) -> None:
    """Train the model and write the table."""
    specs = common.parse_systems([args.system])
    if len(specs) != 1 or not specs[0].is_model:
        raise common.ExperimentError(f"--system must name one Image2Vec model as "
                                     f"MODEL/OBJECTIVE/SOLVER, not {args.system!r}")
    out = common.OutputFolder(args.out, OUTPUTS)
    data, name = common.load_dataset(args, out)
    words = list(data.vocabulary.words)
    model = specs[0].make(args.dim, args.seed).fit(data.features, data.targets, words=words)
    glove = load_glove()
    rows = []
    for word in tqdm(args.words, desc="words", unit="word"):
        word = word.lower()
        rows.append({
            "word": word,
            "visual": [w for w, _ in model.similar(word, args.n)] if word in data.vocabulary else None,
            "glove_vocabulary": glove_neighbours(glove, word, words, args.n) if word in glove else None,
            "glove": glove.nearest(word, args.n) if word in glove else None,
        })
    out.write_json("similar_words.json", {"data": name, "system": specs[0].label,
                                          "command": args.command, "words": rows})

    def cell(neighbours: list[str] | None, missing: str) -> str:
        return missing if neighbours is None else ", ".join(neighbours)

    table = [{"word": row["word"],
              "visual": cell(row["visual"], "(not in the vocabulary)"),
              "glove_vocabulary": cell(row["glove_vocabulary"], "(no GloVe vector)"),
              "glove": cell(row["glove"], "(no GloVe vector)")} for row in rows]
    report = (f"# Similar words on {name}\n\n"
              f"{len(data.keys)} images, {len(words)} words; visual space: {specs[0].label}, dim "
              f"{args.dim}, seed {args.seed}, trained on all images (cosine of the columns of D). "
              f"GloVe: 6B 50d, cosine, among the data set's vocabulary and among all its "
              f"{len(glove.words):,} words.\n\n    {args.command}\n\n"
              + common.markdown_table(table, (("word", "word"), ("visual", f"visual ({specs[0].label})"),
                                              ("glove_vocabulary", "GloVe, same vocabulary"),
                                              ("glove", "GloVe, all words"))))
    out.write_text("similar_words.md", report)
    print(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return common.run(experiment, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
