"""Shared code of the experiment scripts: output folder, data, systems, splits, tables, figures.

Every script of ``experiments/`` writes into an output folder given on its command line through
:class:`OutputFolder`, which writes each file atomically and keeps a manifest of what it wrote:
a folder that is not empty and has no manifest is refused, and so is any file in it that the
experiments did not write, so a run never overwrites somebody else's file.

Data come from a COCO folder in the official layout (``--coco ROOT``:
``ROOT/annotations/captions_{split}.json`` and ``ROOT/{split}/``) or, without ``--coco``, from
the embedded sample (20 scikit-image images with hand-written COCO captions). Image features are
cached in a feature store (``OUT/features`` unless ``--features STORE`` names a shared one).

Systems are named on the command line as ``MODEL[/OBJECTIVE[/SOLVER]]`` for the Image2Vec models
(``learn-all/l2/bcd``; a part left out means every choice: ``learn-all`` is the four
objective x solver combinations) and by registry name for the baselines (``knn``); ``all`` is
every combination and every baseline of :data:`image2vec.systems.BASELINES`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from sklearn.model_selection import KFold, ShuffleSplit  # noqa: E402

from image2vec import systems  # noqa: E402
from image2vec.datasets import (  # noqa: E402
    SAMPLE_CAPTIONS,
    WordData,
    load_caption_data,
    reads_logits,
    sample_image_dir,
)
from image2vec.errors import Image2VecError  # noqa: E402
from image2vec.io import atomic_write  # noqa: E402
from image2vec.model import MODELS, OBJECTIVES, SOLVERS  # noqa: E402
from image2vec.names import DEFAULT_EXTRACTOR, PARTS_OF_SPEECH, SUMMARY_POS  # noqa: E402

MANIFEST = ".image2vec-experiment.json"
_MANIFEST_TOOL = "image2vec experiments"


class ExperimentError(Exception):
    """Bad input or a refused write: reported as one line, exit status 2."""


# ---------------------------------------------------------------------------------- output folder


class OutputFolder:
    """An output folder that only ever overwrites files the experiments wrote themselves.

    Parameters
    ----------
    root : path-like
        The folder. It is created when missing; an existing folder must be empty or hold the
        manifest of an earlier experiment run.
    outputs : sequence of str
        The files (``name``) and folders (``name/``) the run will write, claimed at once, so
        that a refusal comes before the work rather than after it.

    Raises
    ------
    ExperimentError
        ``root`` is a file, a non-empty folder without a manifest, or one of ``outputs`` exists
        and was not written by an experiment.
    """

    def __init__(self, root: str | Path, outputs: Sequence[str] = ()):
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if self.root.exists() and not self.root.is_dir():
            raise ExperimentError(f"output {self.root} is a file, not a folder")
        if manifest.is_file():
            try:
                content = json.loads(manifest.read_text(encoding="utf-8"))
                self.entries = set(content["entries"]) if content["tool"] == _MANIFEST_TOOL else None
            except (ValueError, KeyError, TypeError):
                self.entries = None
            if self.entries is None:
                raise ExperimentError(f"{manifest} is not an image2vec experiment manifest; "
                                      "choose another output folder")
        elif self.root.is_dir() and any(self.root.iterdir()):
            raise ExperimentError(f"output folder {self.root} is not empty and was not written by "
                                  "an image2vec experiment: refusing to write into it; choose a "
                                  "new or empty folder")
        else:
            self.entries = set()
            self._save_manifest()
        for name in outputs:
            self.claim(name.rstrip("/"), folder=name.endswith("/"))

    def _save_manifest(self) -> None:
        with atomic_write(self.root / MANIFEST, "w") as fh:
            json.dump({"tool": _MANIFEST_TOOL, "entries": sorted(self.entries)}, fh, indent=1)
            fh.write("\n")

    def claim(self, name: str, folder: bool = False) -> Path:
        """The path of ``name`` (relative, ``/``-separated) in the folder, recorded as ours.

        Raises
        ------
        ExperimentError
            The path exists but was not written by an experiment.
        """
        path = self.root / name
        if name not in self.entries and not self._inside_claimed_folder(name):
            if path.exists() or path.is_symlink():
                raise ExperimentError(f"{path} exists and was not written by an image2vec "
                                      "experiment: refusing to overwrite it")
            self.entries.add(name + "/" if folder else name)
            self._save_manifest()
        if folder:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def _inside_claimed_folder(self, name: str) -> bool:
        parts = name.split("/")
        return any("/".join(parts[:i]) + "/" in self.entries for i in range(1, len(parts) + 1))

    def folder(self, name: str) -> Path:
        """A sub-folder owned by the experiments (e.g. the feature cache)."""
        return self.claim(name, folder=True)

    def write_text(self, name: str, text: str) -> Path:
        """Write a UTF-8 text file atomically."""
        path = self.claim(name)
        with atomic_write(path, "w") as fh:
            fh.write(text)
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write a binary file atomically."""
        path = self.claim(name)
        with atomic_write(path) as fh:
            fh.write(data)
        return path

    def write_json(self, name: str, obj: Any) -> Path:
        """Write indented JSON atomically."""
        return self.write_text(name, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")

    def write_csv(self, name: str, rows: Sequence[dict], columns: Sequence[str]) -> Path:
        """Write rows (dicts with at least ``columns``) as CSV; floats with 6 significant digits."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6g}" if isinstance(value, float) else value
                             for key, value in row.items()})
        return self.write_text(name, buffer.getvalue())

    def save_figure(self, name: str, figure: Any, dpi: int = 90) -> Path:
        """Save a matplotlib figure as PNG atomically and close it."""
        import matplotlib.pyplot as plt

        path = self.claim(name)
        with atomic_write(path) as fh:
            figure.savefig(fh, format="png", dpi=dpi)
        plt.close(figure)
        return path


# ------------------------------------------------------------------------------------------- data


def shared_data_dir() -> Path:
    """The project's shared data folder: ``$IMAGE2VEC_SHARED_DATA``, else ``shared/data`` beside
    the checkout (the experiments run from a checkout; the library itself reads no such path)."""
    return Path(os.environ.get("IMAGE2VEC_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def add_flickr8k_folder_argument(parser: argparse.ArgumentParser) -> None:
    """``--flickr8k DIR``: the Flickr8k folder in its official layout."""
    parser.add_argument("--flickr8k", type=Path, default=shared_data_dir() / "flickr8k",
                        help="Flickr8k folder: Flicker8k_Dataset/ and Flickr8k_text/ "
                        "(default: the shared data folder's flickr8k)")


def add_flickr8k_arguments(parser: argparse.ArgumentParser) -> None:
    """``--flickr8k DIR`` (:func:`add_flickr8k_folder_argument`), ``--features STORE`` (its
    feature stores: ``STORE/EXTRACTOR/train``, ``STORE/EXTRACTOR/dev``, as
    :func:`flickr8k.load_splits` reads them), ``--extractor`` and ``--pos``."""
    add_flickr8k_folder_argument(parser)
    parser.add_argument("--features", type=Path, metavar="STORE",
                        help="feature stores STORE/EXTRACTOR/train and STORE/EXTRACTOR/dev "
                        "(default: OUT/features)")
    parser.add_argument("--extractor", default=DEFAULT_EXTRACTOR,
                        help=f"feature extractor (default: {DEFAULT_EXTRACTOR}; +flip for "
                        "horizontal-flip averaging)")
    parser.add_argument("--pos", nargs="+", choices=PARTS_OF_SPEECH, default=list(SUMMARY_POS),
                        help="parts of speech of the vocabulary (default: noun adj; summaries are "
                        "scored against nouns and adjectives, retrieval uses every word)")


def script_parser(file: str, doc: str) -> argparse.ArgumentParser:
    """The command line of the experiment script ``file``: named after the file, described by the
    first paragraph of its docstring ``doc``, the rest of which ``--help`` does not rewrap."""
    return argparse.ArgumentParser(prog=Path(file).name, description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    """The positional output folder."""
    parser.add_argument("out", type=Path, help="output folder (created; an existing one must be "
                        "empty or written by an earlier experiment run)")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--coco``, ``--split``, ``--min-count``, ``--features``."""
    group = parser.add_argument_group("data")
    group.add_argument("--coco", type=Path, metavar="ROOT",
                       help="COCO root in the official layout (ROOT/annotations/"
                       "captions_SPLIT.json, ROOT/SPLIT/); default: the embedded 20-image sample")
    group.add_argument("--split", default="train2017",
                       help="COCO split: caption file and image folder name (default: train2017)")
    group.add_argument("--min-count", type=positive_int,
                       help="keep words of at least this many images (default: 2 below 1000 "
                       "training images, else 5)")
    group.add_argument("--features", type=Path, metavar="STORE",
                       help="feature store (cache) to use, e.g. shared between runs "
                       "(default: OUT/features)")


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """``--folds``, ``--kfold-max``, ``--val-fraction`` (see :func:`make_splits`)."""
    group = parser.add_argument_group("evaluation")
    group.add_argument("--folds", type=at_least_two, default=5,
                       help="k of k-fold cross-validation by image on small data sets (default: 5)")
    group.add_argument("--kfold-max", type=positive_int, default=5000, metavar="N",
                       help="data sets with more images use one train/val split (default: 5000)")
    group.add_argument("--val-fraction", type=fraction, default=0.2,
                       help="validation share of the train/val split (default: 0.2)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dim`` and ``--seed``."""
    group = parser.add_argument_group("models")
    group.add_argument("--dim", type=positive_int, default=256,
                       help="embedding dimension d of the Image2Vec models (default: 256)")
    group.add_argument("--seed", type=int, default=0,
                       help="random seed of the models and the folds (default: 0)")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def at_least_two(text: str) -> int:
    """argparse type: an integer >= 2 (a number of folds)."""
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1)."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def feature_store(args: argparse.Namespace, out: OutputFolder) -> Path:
    """The feature cache: ``--features`` or the output folder's ``features/``."""
    return args.features if args.features is not None else out.folder("features")


def load_dataset(args: argparse.Namespace, out: OutputFolder,
                 logits: bool = False) -> tuple[WordData, str]:
    """The captioned images of ``--coco``/``--split`` (or the embedded sample) and their name.

    ``logits``: also the ImageNet class logits (for systems that read them), extracted in the
    same pass as the features.

    Raises
    ------
    ExperimentError
        The COCO folder, its caption file or its image folder is missing.
    """
    if args.coco is None:
        captions, images, name = SAMPLE_CAPTIONS, sample_image_dir(), "the embedded 20-image sample"
    else:
        root = args.coco
        captions, images = root / "annotations" / f"captions_{args.split}.json", root / args.split
        for path, what in ((root, "COCO folder"), (captions, "caption file"), (images, "image folder")):
            if not path.exists():
                raise ExperimentError(f"{what} {path} does not exist (expected the official COCO "
                                      f"layout: ROOT/annotations/captions_{args.split}.json, "
                                      f"ROOT/{args.split}/)")
        name = f"{root} ({args.split})"
    data = load_caption_data(captions, images, store=feature_store(args, out) / "captions",
                             min_count=args.min_count, logits=logits)
    return data, name


# ---------------------------------------------------------------------------------------- systems


@dataclass(frozen=True)
class SystemSpec:
    """One system of a comparison: a registry name and, for Image2Vec models, its settings."""

    name: str
    objective: str | None = None
    solver: str | None = None

    @property
    def label(self) -> str:
        """``model/objective/solver`` or the baseline's name."""
        return "/".join(part for part in (self.name, self.objective, self.solver) if part)

    @property
    def is_model(self) -> bool:
        """Whether this is an Image2Vec model (with a word dictionary D)."""
        return self.name in MODELS

    @property
    def takes_logits(self) -> bool:
        """Whether the system reads ImageNet class logits instead of image features."""
        return reads_logits(systems.BASELINES.get(self.name))

    def inputs(self, data: WordData) -> np.ndarray:
        """What the system reads for the images of ``data``: the features F or the logits."""
        return data.inputs_for(systems.BASELINES.get(self.name))

    def make(self, dim: int, seed: int, **params: Any) -> Any:
        """A new, unfitted system (parameters it does not take are ignored)."""
        settings = {"objective": self.objective, "solver": self.solver} if self.is_model else {}
        return systems.make_system(self.name, dim=dim, random_state=seed, **settings, **params)


#: Model x solver pairs the benchmarks leave out: the kernel model's SGD would recompute the m
#: kernel columns of every minibatch at every step (its bcd is the exact closed form).
SKIPPED = {("kernel", "sgd")}


def all_systems() -> list[SystemSpec]:
    """Every model x objective x solver (but :data:`SKIPPED`) and every registered baseline."""
    return [SystemSpec(m, o, s) for m in MODELS for o in OBJECTIVES for s in SOLVERS
            if (m, s) not in SKIPPED] + [SystemSpec(name) for name in systems.BASELINES]


def parse_systems(tokens: Iterable[str]) -> list[SystemSpec]:
    """Expand ``MODEL[/OBJECTIVE[/SOLVER]]``, baseline names and ``all`` (order kept, no repeats).

    Raises
    ------
    ExperimentError
        An unknown model, objective, solver or baseline.
    """
    every = all_systems()
    chosen: list[SystemSpec] = []
    for token in tokens:
        if token == "all":
            matches = every
        else:
            parts = token.split("/")
            matches = [spec for spec in every
                       if len(parts) <= 3 and [spec.name, spec.objective, spec.solver][:len(parts)] == parts]
        if not matches:
            raise ExperimentError(
                f"unknown system {token!r}: use all, MODEL[/OBJECTIVE[/SOLVER]] with MODEL in "
                f"{', '.join(MODELS)}, OBJECTIVE in {', '.join(OBJECTIVES)}, SOLVER in "
                f"{', '.join(SOLVERS)}, or a baseline: {', '.join(systems.BASELINES)}")
        chosen.extend(spec for spec in matches if spec not in chosen)
    return chosen


# ----------------------------------------------------------------------------------------- splits


def make_splits(n_images: int, args: argparse.Namespace) -> list[tuple[np.ndarray, np.ndarray]]:
    """k-fold by image (``--folds``) up to ``--kfold-max`` images, else one train/val split.

    Raises
    ------
    ExperimentError
        Too few images for the folds.
    """
    if n_images <= args.kfold_max:
        if args.folds > n_images:
            raise ExperimentError(f"cannot make {args.folds} folds of {n_images} images: "
                                  "lower --folds")
        splitter = KFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    else:
        splitter = ShuffleSplit(n_splits=1, test_size=args.val_fraction, random_state=args.seed)
    return list(splitter.split(np.zeros((n_images, 1))))


def describe_splits(splits: list, n_images: int) -> str:
    """``5-fold cross-validation`` or ``one train/val split (64,000 / 16,000)``."""
    if len(splits) > 1:
        return f"{len(splits)}-fold cross-validation by image"
    train, test = splits[0]
    return f"one train/val split by image ({len(train):,} / {len(test):,} of {n_images:,})"


@dataclass(frozen=True)
class Fold:
    """A system fitted on the training images of one split."""

    system: Any
    train: np.ndarray
    test: np.ndarray
    fit_seconds: float


def fit_folds(spec: SystemSpec, data: WordData, splits: list, args: argparse.Namespace) -> list[Fold]:
    """Fit a new ``spec`` system (``args.dim``, ``args.seed``) on the training part of each split."""
    X = spec.inputs(data)
    words = list(data.vocabulary.words)
    folds = []
    for train, test in splits:
        start = time.perf_counter()
        system = spec.make(args.dim, args.seed).fit(X[train], data.targets[train], words=words)
        folds.append(Fold(system, train, test, time.perf_counter() - start))
    return folds


# ------------------------------------------------------------------------------- tables and errors


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], digits: int = 3) -> str:
    """A Markdown table; ``columns`` are (key, header) pairs, floats to ``digits`` decimals."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "n/a" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header for _, header in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row[key]) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run(experiment: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run ``experiment``; bad input is one line on stderr and status 2.

    ``args.command`` is set to the command line, for the record in the outputs. Value errors
    (bad settings refused by an estimator) are bad input too.
    """
    args = parser.parse_args(argv)
    args.command = f"python experiments/{parser.prog} " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format=f"{parser.prog}: %(message)s")
    try:
        experiment(args)
    except (ExperimentError, Image2VecError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0
