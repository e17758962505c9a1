"""The ``image2vec`` command line.

Every subcommand is a function ``_cmd_NAME(args) -> int`` registered in :func:`build_parser`.
Bad input surfaces as a one-line ``image2vec: error: ...`` message and exit status 2, never a
traceback. Ctrl-C and SIGTERM end with one line (status 130, 143) and remove temporary folders.

The command line starts in a fraction of a second: this module imports nothing heavy, and each
command imports what it needs (numpy, scikit-learn, torch) when it runs, so ``--help`` and usage
errors answer at once. ``features``, ``train`` and ``evaluate`` run on a Dask cluster with
``--scheduler`` (:mod:`image2vec.cluster`, which imports Dask only then).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import unicodedata
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from image2vec import __version__
from image2vec.errors import Image2VecError
from image2vec.names import DEFAULT_EXTRACTOR, PARTS_OF_SPEECH, extractor_of

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _cmd_demo(args: argparse.Namespace) -> int:
    from image2vec.demo import run_demo

    run_demo(out=args.out, coco=args.coco, random_state=args.random_state)
    return 0


def _load_data(args: argparse.Namespace, store: Path, vocabulary=None, logits: bool = False, client=None):
    """WordData of ``--captions`` or ``--tags`` with ``--images``, features cached in ``store``
    (extracted on the workers of ``client``, when given)."""
    from image2vec.datasets import load_caption_data, load_tag_data

    common = dict(store=store, vocabulary=vocabulary, extractor=args.extractor, device=args.device,
                  on_bad_image=args.on_bad_image, logits=logits, progress=not args.quiet, client=client)
    if getattr(args, "tags", None):
        return load_tag_data(args.tags, args.images, min_count=args.min_count, **common)
    return load_caption_data(args.captions, args.images, split=args.split,
                             instances=getattr(args, "instances", None),
                             min_count=getattr(args, "min_count", None), pos=getattr(args, "pos", None),
                             **common)


MODEL_OPTIONS = ("objective", "solver", "dim", "lam", "gamma", "readout", "prior_weight", "whiten",
                 "n_components", "n_landmarks", "kernel_gamma", "attention")


def _cmd_train(args: argparse.Namespace) -> int:
    from image2vec import systems
    from image2vec.cluster import connect, use_scheduler
    from image2vec.datasets import reads_logits

    out = _output_file(args.out, inputs={"--captions": args.captions, "--tags": args.tags,
                                         "--instances": args.instances, "--split": args.split},
                       folders={"--images": args.images, "--features": args.features},
                       companion=None if args.features else ".features")
    if args.tags and args.instances:
        raise Image2VecError("--instances (COCO categories) goes with --captions, not --tags")
    if args.tags and args.split:
        raise Image2VecError("--split goes with --captions, not --tags")
    options = {name: getattr(args, name) for name in MODEL_OPTIONS if getattr(args, name) is not None}
    try:  # a combination that makes no sense is refused before any work
        system = systems.make_system(args.model, options, random_state=args.random_state,
                                     device=args.device)
    except ValueError as exc:
        raise Image2VecError(str(exc)) from None
    store = Path(args.features) if args.features else out.with_name(out.name + ".features")
    with connect(args.scheduler) as client:
        data = _load_data(args, store, logits=reads_logits(system), client=client)
        inputs = _checked_inputs(data.inputs_for(system), system, data.files,
                                 f"the features of feature store {store}")
        fit_params = {"words": list(data.vocabulary.words)}
        accepted = inspect.signature(system.fit).parameters
        if data.categories is not None and "labels" in accepted:
            fit_params["labels"] = data.categories  # category labels of the common-space baselines
        start = time.perf_counter()
        try:  # on a cluster, the passes over the features run as Dask tasks
            with use_scheduler(client):
                system.fit(inputs, data.targets, **fit_params)
        except ValueError as exc:  # scikit-learn style parameter errors: one line, no traceback
            raise Image2VecError(str(exc)) from None
        seconds = time.perf_counter() - start
    systems.save(system, out, metadata={"extractor": data.extractor, "n_images": len(data.keys),
                                         "source": str(args.captions or args.tags),
                                         "date": time.strftime("%Y-%m-%d", time.gmtime())})
    print(f"{out}: {args.model} model, {len(data.vocabulary)} words, trained on "
          f"{len(data.keys)} images in {seconds:.1f} s")
    return 0


def _output_file(path: str, inputs: dict[str, str | None], folders: dict[str, str | None],
                 companion: str | None = None) -> Path:
    """``path`` as a file to write, refused at once when it cannot be one.

    It must be a new path or a regular file, with a name the file system takes (also with the
    suffix ``companion``, a folder written beside it), and none of the run's ``inputs`` (option
    -> file) nor a file inside one of its ``folders`` (option -> folder: existing files there
    are inputs; inside a feature store, any file).
    """
    out = Path(path)
    limit = os.pathconf(out.parent if out.parent.is_dir() else ".", "PC_NAME_MAX")
    for name in (out.name, out.name + (companion or "")):
        if len(os.fsencode(name)) > limit:
            raise Image2VecError(f"--out {_shown(str(out))}: the name is too long ({len(os.fsencode(name))} "
                                 f"bytes{' with ' + companion if name != out.name else ''}; this "
                                 f"file system takes {limit})")
    if out.is_dir():
        raise Image2VecError(f"--out {out} is a folder: give a file name such as {out / 'model.npz'}")
    if not out.parent.is_dir():
        raise Image2VecError(f"the folder of --out {out} does not exist")
    if os.path.lexists(out) and not out.is_file():
        raise Image2VecError(f"--out {out} exists and is not a regular file (a named pipe, device "
                             "or dangling link): give a new name")
    for option, name in inputs.items():
        if name and out.exists() and os.path.exists(name) and os.path.samefile(out, name):
            raise Image2VecError(f"--out {out} is an input of this run ({option} {name}): give "
                                 "another name")
    for option, folder in folders.items():
        if folder and os.path.isdir(folder) and out.resolve().is_relative_to(Path(folder).resolve()):
            if option == "--features":
                raise Image2VecError(f"--out {out} is inside the feature store {folder}: give a "
                                     "name outside it")
            if out.exists():
                raise Image2VecError(f"--out {out} is an input of this run (a file in {option} "
                                     f"{folder}): give another name")
    try:  # a read-only folder or file system is refused now, not after the training
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as exc:
        raise Image2VecError(f"cannot write in the folder of --out {out}: {exc.strerror or exc}") from None
    return out


def _extract(files: list[Path], store: Path | None, system, metadata: dict, args: argparse.Namespace,
             on_bad_image: str, keys: list | None = None):
    """What ``system`` reads (features, or class logits) for image files, and the files kept.

    Extracted into (or read from) feature store ``store`` with the model's extractor (None: the
    cache's store for these files).
    """
    import numpy as np

    from image2vec.features import extract_features

    # datasets.reads_logits, without importing the datasets (NLTK: a second) for a cached retrieve
    logits = getattr(system, "input_kind", "features") == "logits"
    extractor = extractor_of(metadata)
    feature_set = extract_features(files, store, keys=keys, extractor=extractor, device=args.device,
                                   on_bad_image=on_bad_image, logits=logits, progress=False)
    inputs = np.array(feature_set.logits if logits else feature_set.features)
    files = list(feature_set.files)
    return _checked_inputs(inputs, system, files, f"the {extractor} features"), files


def _checked_inputs(inputs, system, files: list[str], source: str):
    """``inputs`` (N x p) when ``system`` can read them, else a one-line error naming ``source``.

    The width must be the model's ``n_features_in_`` (when fitted) and every value finite.
    """
    import numpy as np

    expected = getattr(system, "n_features_in_", None)
    if expected is not None and inputs.shape[1] != expected:
        raise Image2VecError(f"{source} have {inputs.shape[1]} values per image but the model reads "
                             f"{expected}: use the extractor the model was trained with")
    finite = np.isfinite(inputs).all(axis=1)
    if not finite.all():
        raise Image2VecError(f"{source} hold NaN or infinite values for {int((~finite).sum())} "
                             f"image(s) (first: {_shown(files[int(finite.argmin())])}); delete the "
                             "feature store to extract them again")
    return inputs


def _shown(text: str) -> str:
    """A file name or word printable on any terminal: bytes that are not UTF-8 as ``\\xNN``, and
    control and format characters (terminal escapes, bidi overrides) as their escapes."""
    text = os.fsencode(text).decode("utf-8", "backslashreplace")
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c)[0] == "C"
                   else c for c in text)


def _load_model(path: str | None, device: str = "cpu"):
    """(system, metadata) of a model file, or of the pretrained model when ``path`` is None.

    An Image2Vec model loads without the baselines' torch. The pretrained model is named on
    stderr (so that ``--json`` output stays clean): the user sees which model answered. A system
    with a ``device`` setting computes on ``device`` (``--device``), wherever it was trained: a
    model fitted on a GPU reads out on the CPU and the other way round.
    """
    from image2vec.names import SavedSystems
    from image2vec.persist import load_system

    if path is None:
        from image2vec.pretrained import describe, load_pretrained

        system, metadata = load_pretrained(return_metadata=True)
        print(f"image2vec: using {describe(system, metadata)}; --model MODEL.npz for another",
              file=sys.stderr)
    else:
        system, metadata, _ = load_system(path, SavedSystems())
    if "device" in system.get_params():
        system.set_params(device=device)
    return system, metadata


def _vocabulary_word(system, word: str) -> str:
    """``word`` as the model's vocabulary spells it, looked up without regard to case, else by
    its WordNet base forms (:func:`image2vec.vocabulary.base_forms`: "dogs" -> "dog").

    Raises
    ------
    Image2VecError
        An empty word, or an unknown one (with the closest vocabulary words, if any).
    """
    import difflib

    word = word.strip()
    if not word:
        raise Image2VecError("the word is empty: give a word of the model's vocabulary")
    vocabulary = [str(w) for w in system.words_]
    spelled = {w.casefold(): w for w in reversed(vocabulary)}  # the first spelling wins
    if word.casefold() in spelled:
        return spelled[word.casefold()]
    from image2vec.vocabulary import base_forms  # NLTK, on this path only

    for form in base_forms(word):  # "dogs running" -> dog, run: the vocabulary holds lemmas
        if form.casefold() in spelled:
            return spelled[form.casefold()]
    close = difflib.get_close_matches(word.casefold(), list(spelled), n=3, cutoff=0.5)
    if close:
        raise Image2VecError(f"unknown word {word!r}; did you mean: "
                             f"{', '.join(spelled[c] for c in close)}?")
    raise Image2VecError(f"unknown word {word!r}: it is not among the model's {len(vocabulary)} "
                         "words, nor close to any")


def _cmd_summarize(args: argparse.Namespace) -> int:
    system, metadata = _load_model(args.model, args.device)
    features, files = _extract([Path(f) for f in args.images], None, system, metadata, args,
                               args.on_bad_image)
    summary = system.summarize(features, args.k)
    rows = [{"image": f, "words": words, "scores": [round(float(s), 4) for s in scores[: len(words)]]}
            for f, words, scores in zip(files, summary.words, summary.scores)]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for row in rows:
            print(f"{_shown(row['image'])}: {' + '.join(map(_shown, row['words'])) or '(no word)'}")
    return 0


def _cmd_similar(args: argparse.Namespace) -> int:
    system, _ = _load_model(args.model)
    if not hasattr(system, "similar"):
        raise Image2VecError(f"{args.model} is a baseline without word vectors: similar needs an "
                             "Image2Vec model")
    if args.word is not None:
        _print_similar(system, args.word, args.n)
        return 0
    while True:  # interactive: one word per line, from a terminal or a pipe
        print("Enter a word (empty line to quit): ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            print()
            return 0
        try:
            _print_similar(system, line.strip(), args.n)
        except Image2VecError as exc:
            print(exc)


def _print_similar(system, word: str, n: int) -> None:
    word = _vocabulary_word(system, word)
    neighbours = system.similar(word, n)
    print(f"{_shown(word)}: " + ", ".join(f"{_shown(w)} ({c:.2f})" for w, c in neighbours))


def _cmd_retrieve(args: argparse.Namespace) -> int:
    system, metadata = _load_model(args.model, args.device)
    if not hasattr(system, "retrieve"):
        raise Image2VecError(f"{args.model} is a baseline: retrieve needs an Image2Vec model")
    words = [_vocabulary_word(system, word) for word in args.words]  # before any feature
    folder = Path(args.images)
    if not folder.is_dir():
        raise Image2VecError(f"image folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise Image2VecError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    if args.features:
        _check_folder_store(Path(args.features), folder)
    store = Path(args.features) if args.features else _folder_cache(folder, metadata)
    features, kept = _extract(files, store, system, metadata, args, on_bad_image="skip",
                              keys=[_file_fingerprint(f) for f in files])
    order, values = system.retrieve(words, features, args.n)
    metric = getattr(system, "metric", "score")  # best first: the highest similarity, the smallest distance
    label = "euclidean distance" if metric == "euclidean" else metric
    print(f"images nearest to {' + '.join(_shown(w) for w in words)}:")
    for rank, (i, value) in enumerate(zip(order, values), start=1):
        print(f"{rank:3d}. {_shown(kept[i])}  ({label} {value:.3f})")
    return 0


def _folder_cache(folder: Path, metadata: dict) -> Path:
    """The feature store that caches an image folder's features for one extractor.

    Under :func:`image2vec.io.cache_dir`; the store's keys are the files' fingerprints, so it
    answers again as long as no file is added, removed or changed, and is rebuilt otherwise.
    """
    from image2vec.store import cache_path

    return cache_path("folders", str(folder.resolve()), extractor_of(metadata))


def _check_folder_store(store: Path, folder: Path) -> None:
    """Refuse ``--features STORE`` for ``retrieve`` when the store holds features that another
    command made (``features``, ``train``): retrieve would replace them with the folder's."""
    from image2vec.store import read_index

    index = read_index(store)
    if index is None:
        return
    keys, files = index.get("keys") or [], index.get("files") or []
    if not (all(isinstance(k, list) and len(k) == 3 for k in keys)
            and all(Path(f).parent.resolve() == folder.resolve() for f in files)):
        raise Image2VecError(f"feature store {store} holds the features of other images (made by "
                             "features or train) that retrieve would replace: give a new folder, "
                             "or leave out --features")


def _file_fingerprint(path: Path) -> list:
    """[name, size, modification time in ns]: a file whose fingerprint is unchanged is unchanged.

    A file that cannot be examined (a dangling link) gets size and time -1: the extraction
    skips it, with the other unreadable images.
    """
    from image2vec.store import file_stamp

    return [path.name, *(file_stamp(path) or [-1, -1])]


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401

        from image2vec import serve
    except ImportError:
        raise Image2VecError("serve needs the web extra: pip install 'image2vec[web]'") from None

    service = serve.build_service(args.model, args.images, args.features, args.device)
    with serve.bind(args.host, args.port) as sock:
        host, port = sock.getsockname()[:2]
        if not serve.is_loopback(sock):
            print(f"image2vec: warning: serving on {host}, not on this machine alone: whoever reaches "
                  "it can use the page" + (" and see the folder's images" if args.images else ""),
                  file=sys.stderr)
        if service.folder is not None:
            service.folder.start(service)
        print(f"image2vec: serving {args.model or 'the default model'} at "
              f"http://{f'[{host}]' if ':' in host else host}:{port}/ (Ctrl-C to stop)", flush=True)
        serve.serve(service, sock)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from image2vec.cluster import ClusterSystem, connect
    from image2vec.datasets import reads_logits, vocabulary_of
    from image2vec.evaluate import evaluate

    system, metadata = _load_model(args.model, args.device)
    name = args.model or "the pretrained model"
    if args.instances and not hasattr(system, "embed_texts"):
        raise Image2VecError("--instances adds the cross-modal mAP@50 of cvs, mcvs and rvs "
                             f"models; {name} is not one")
    args.extractor = extractor_of(metadata)
    with connect(args.scheduler) as client:
        store = Path(args.features) if args.features else None  # None: the cache
        data = _load_data(args, store, vocabulary=vocabulary_of(list(system.words_)),
                          logits=reads_logits(system), client=client)
        inputs = _checked_inputs(data.inputs_for(system), system, data.files,
                                 f"the features of feature store {store}" if args.features
                                 else f"the {args.extractor} features")
        # on a cluster, summaries and scores are computed by the workers, which read the store
        result = evaluate(system if client is None else ClusterSystem(system, client), inputs,
                          data.truth, k=args.k, queries=data.queries, labels=data.categories)
    if args.json:  # NaN (e.g. no word with both positive and negative images) as null
        print(json.dumps({key: None if isinstance(value, float) and value != value else value
                          for key, value in result.items()}))
    else:
        print(f"{name} on {result['n_images']} images, k={args.k}: "
              + ", ".join(f"{key} {result[key]:.3f}" for key in ("precision", "recall", "f1", "map")
                          + tuple(key for key in result if key.startswith(("recall@", "map@")))))
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from image2vec.cluster import connect
    from image2vec.features import extract_features

    if args.coco:
        from image2vec.coco import load_coco_split

        data = load_coco_split(args.coco, args.split, instances=False)
        files, keys = data.paths, data.image_ids
    else:
        from image2vec.flickr import load_sample, load_tag_tsv

        data = load_tag_tsv(args.tsv, args.images) if args.tsv else load_sample()
        files, keys = data.paths, data.keys
    with connect(args.scheduler) as client:  # on a cluster every worker builds the network itself
        result = extract_features(files, args.out, keys=keys, extractor=args.extractor, weights=args.weights,
                                  device=args.device, logits=args.logits, batch_size=args.batch_size,
                                  on_bad_image=args.on_bad_image, num_workers=args.workers,
                                  progress=not args.quiet, client=client)
    n, p = result.features.shape
    print(f"{args.out}: features {n} x {p} ({result.index['extractor']})"
          + (f", logits {n} x {result.logits.shape[1]}" if result.logits is not None else "")
          + f"; {len(result.skipped)} image(s) skipped")
    return 0


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def _port(text: str) -> int:
    port = _non_negative_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return port


def _seed(text: str) -> int:
    """A random seed: an integer in [0, 2**32 - 1], as scikit-learn and NumPy take them."""
    value = _non_negative_int(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 4294967295], got {text!r}")
    return value


def _int_at_least(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _add_features_parser(sub) -> None:
    feats = sub.add_parser(
        "features", help="extract CNN image features into a resumable feature store",
        description="Extract image features F (N x p) with a pretrained CNN into a feature "
                    "store (features.npy + index.json). Re-running resumes an interrupted run "
                    "and reuses a finished one.")
    source = feats.add_mutually_exclusive_group(required=True)
    source.add_argument("--coco", metavar="ROOT",
                        help="COCO root (annotations/captions_SPLIT.json, SPLIT/ images)")
    source.add_argument("--tsv", metavar="FILE", help="tag file: image file <TAB> tags")
    source.add_argument("--sample", action="store_true",
                        help="the project's tagged sample of scikit-image images")
    feats.add_argument("--split", default="train2017", help="COCO split (default: train2017)")
    feats.add_argument("--images", metavar="DIR",
                       help="image folder of --tsv (default: the TSV's folder)")
    feats.add_argument("--out", required=True, metavar="STORE", help="feature store folder")
    feats.add_argument("--extractor", default=DEFAULT_EXTRACTOR,
                       help=f"{DEFAULT_EXTRACTOR} (default), efficientnet-lite0/1/2, or vgg16 / "
                            "resnet50 when torchvision and their weights are installed; NAME+flip "
                            "averages the features of the image and its mirror (twice the work)")
    feats.add_argument("--weights", metavar="FILE", help="weights file instead of the default")
    feats.add_argument("--logits", action="store_true",
                       help="also store the 1000 ImageNet class logits")
    feats.add_argument("--batch-size", type=_positive_int, default=32, help="default: 32")
    feats.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    feats.add_argument("--on-bad-image", choices=("skip", "fail"), default="skip",
                       help="a missing, broken or oversized image is skipped with a warning "
                            "(listed in the index) or stops the run (default: skip)")
    feats.add_argument("--workers", type=_non_negative_int, default=0,
                       help="image decoding processes (default: 0, in the main process)")
    _add_scheduler_option(feats, "extract the images in shards on its workers (the store and the "
                                 "images on a file system they all see)")
    feats.add_argument("--quiet", action="store_true", help="no progress bar")
    feats.set_defaults(func=_cmd_features)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``image2vec`` with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="image2vec",
        description="Summarize images in a few words with a learned visual word dictionary.",
    )
    parser.add_argument("--version", action="version", version=f"image2vec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the main job on a small embedded default")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--coco", metavar="ROOT",
                      help="a COCO folder (annotations/captions_train2017.json, train2017/) "
                           "instead of the embedded sample")
    demo.add_argument("--random-state", type=_seed, default=0, help="seed (default: 0)")
    demo.set_defaults(func=_cmd_demo)

    _add_features_parser(sub)
    _add_model_parsers(sub)
    return parser


def _add_data_options(parser: argparse.ArgumentParser, tags: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", metavar="FILE",
                        help="captions, format recognised from the content: COCO captions JSON, "
                             "Flickr8k/Flickr30k token file (<file>#<n><TAB><caption>) or "
                             "Karpathy split JSON (dataset_*.json)")
    if tags:
        source.add_argument("--tags", metavar="TAGS.tsv", help="weak tags: image file <TAB> tags")
    parser.add_argument("--images", required=True, metavar="DIR", help="image folder")
    parser.add_argument("--split", metavar="NAME|FILE",
                        help="images to use (--captions): a split name (Karpathy JSON: its "
                             "'split' values, e.g. train, val, test, restval; Flickr token file: "
                             "train, dev, test, the official *.<name>Images.txt lists beside "
                             "it; several joined by '+') or a file of image file names, one a "
                             "line (default: all images)")
    parser.add_argument("--features", metavar="STORE", help="feature store folder (cache)")
    parser.add_argument("--on-bad-image", choices=("skip", "fail"), default="skip",
                        help="skip a broken image with a warning, or stop (default: skip)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    _add_scheduler_option(parser, "extract features on its workers (the store and the images on a "
                                  "file system they all see) and pass over the features there")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_scheduler_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--scheduler", metavar="ADDRESS|local:N",
                        help=f"run on a Dask cluster and {what}: the address of a running "
                             "dask.distributed scheduler (tcp://host:8786), or local:N for N "
                             "worker processes on this machine (needs pip install image2vec[dist])")


PRETRAINED_HELP = "model file (default: the pretrained Flickr8k model that ships with image2vec)"


def _add_model_parsers(sub) -> None:
    from image2vec import names

    def per_model(name: str, models=names.MODELS, objectives=names.OBJECTIVES) -> str:
        """The default of a setting per model x objective (the dev-chosen table), said once
        when they all agree."""
        values = {f"{model}/{objective}": names.default_settings(model, objective)[name]
                  for model in models for objective in objectives}
        if len(set(values.values())) == 1:
            return f"{next(iter(values.values()))} for every model and objective"
        return ", ".join(f"{label} {value:g}" if isinstance(value, float) else f"{label} {value}"
                         for label, value in values.items())

    train = sub.add_parser("train", help="train a model (or a baseline) and save it",
                           description="Extract and cache features, build the vocabulary, train, "
                                       "and save the model as one .npz file.")
    _add_data_options(train, tags=True)
    train.add_argument("--instances", metavar="ANN.json", help="COCO instances file (categories)")
    train.add_argument("--model", choices=names.SYSTEM_NAMES, default=names.DEFAULT_MODEL,
                       help=f"default: {names.DEFAULT_MODEL}")
    # Model settings default to None: the system's own default, and an option that a system
    # does not take (--objective for prior) is refused rather than ignored.
    train.add_argument("--objective", choices=names.OBJECTIVES,
                       help=f"Image2Vec models (default: {names.DEFAULT_OBJECTIVE})")
    train.add_argument("--solver", choices=names.SOLVERS,
                       help=f"Image2Vec models (default: {names.DEFAULT_SOLVER})")
    train.add_argument("--dim", type=_positive_int,
                       help="embedding dimension of the Image2Vec models (default: "
                            f"{per_model('dim')}; the defaults of every Image2Vec setting are the "
                            "ones chosen on Flickr8k dev per model and objective)")
    train.add_argument("--min-count", type=_positive_int, default=None,
                       help="keep words in at least this many images (default: 2 below 1000 "
                            "training images, else 5)")
    train.add_argument("--lam", type=float,
                       help=f"ridge weight (l2 objective; default: {per_model('lam', objectives=('l2',))})")
    train.add_argument("--gamma", type=float, help="co-occurrence incoherence (l2; default 0)")
    train.add_argument("--readout", choices=("omp", "rank", "cosine"),
                       help="summary read-out: omp or rank for the Image2Vec models (default: "
                            f"{per_model('readout')}), omp or cosine for imnet-glove")
    train.add_argument("--prior-weight", type=float,
                       help="word-frequency prior of the omp read-out of the Image2Vec models "
                            f"(default: {per_model('prior_weight')})")
    train.add_argument("--whiten", action=argparse.BooleanOptionalAction,
                       help="learn-all and weak-tag: learn the map on whitened principal components "
                            f"(default: {per_model('whiten', ('learn-all', 'weak-tag'))})")
    train.add_argument("--n-components", type=_positive_int,
                       help="learn-all and weak-tag: principal components the map works on "
                            f"(default: {per_model('n_components', ('learn-all', 'weak-tag'))})")
    train.add_argument("--n-landmarks", type=_positive_int,
                       help="kernel: training images the Nystrom kernel map uses "
                            f"(default: {per_model('n_landmarks', ('kernel',))})")
    train.add_argument("--kernel-gamma", type=float,
                       help="kernel: gamma of its RBF kernel exp(-gamma ||f - g||^2) on the unit-norm "
                            f"features (default: {per_model('kernel_gamma', ('kernel',))})")
    train.add_argument("--pos", nargs="+", choices=PARTS_OF_SPEECH, metavar="POS",
                       help="--captions: the parts of speech of the vocabulary, of noun, adj, verb "
                            "(default: noun adj; summaries are scored against nouns and adjectives)")
    train.add_argument("--attention", choices=("full", "no_cross", "none"),
                       help="attention ablation of cvs, mcvs, rvs (default: full)")
    train.add_argument("--extractor", default=DEFAULT_EXTRACTOR,
                       help=f"feature extractor (default: {DEFAULT_EXTRACTOR}; +flip: horizontal-flip averaging)")
    train.add_argument("--random-state", type=_seed, default=0, help="seed (default: 0)")
    train.add_argument("--out", required=True, metavar="MODEL.npz", help="model file to write")
    train.set_defaults(func=_cmd_train)

    summarize = sub.add_parser("summarize", help="summarize images in k words")
    summarize.add_argument("--model", metavar="MODEL.npz", help=PRETRAINED_HELP)
    summarize.add_argument("-k", type=_positive_int, default=3, help="words per image (default: 3)")
    summarize.add_argument("--json", action="store_true", help="print a JSON list")
    summarize.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    summarize.add_argument("--on-bad-image", choices=("skip", "fail"), default="fail",
                           help="stop at a missing or broken image (default) or skip it")
    summarize.add_argument("images", nargs="+", metavar="IMAGE")
    summarize.set_defaults(func=_cmd_summarize)

    similar = sub.add_parser("similar", help="visually similar words (interactive without WORD)")
    similar.add_argument("--model", metavar="MODEL.npz", help=PRETRAINED_HELP)
    similar.add_argument("-n", type=_positive_int, default=5, help="how many (default: 5)")
    similar.add_argument("word", nargs="?",
                         help="the word (any case); omitted: read words from standard input")
    similar.set_defaults(func=_cmd_similar)

    retrieve = sub.add_parser("retrieve", help="rank images by a sum of words")
    retrieve.add_argument("--model", metavar="MODEL.npz", help=PRETRAINED_HELP)
    retrieve.add_argument("--images", required=True, metavar="DIR", help="folder of images to rank")
    retrieve.add_argument("--features", metavar="STORE",
                          help="feature store that caches the folder's features (default: one per "
                               "folder under $IMAGE2VEC_CACHE, $XDG_CACHE_HOME/image2vec or "
                               "~/.cache/image2vec)")
    retrieve.add_argument("-n", type=_positive_int, default=5, help="how many (default: 5)")
    retrieve.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    retrieve.add_argument("words", nargs="+", metavar="WORD")
    retrieve.set_defaults(func=_cmd_retrieve)

    serve = sub.add_parser("serve", help="a local web page for a model: summaries, image search, similar words",
                           description="Start a local web server for a model and print its URL: drop an image "
                                       "to see its words, search the images of --images DIR by words, click "
                                       "a word to see the words that look alike. Needs pip install "
                                       "'image2vec[web]'.")
    serve.add_argument("--model", metavar="MODEL.npz", help="the model (default: the pretrained model)")
    serve.add_argument("--images", metavar="DIR", help="folder of images to search")
    serve.add_argument("--features", metavar="STORE",
                       help="feature store that caches the folder's features (default: the cache of "
                            "image2vec retrieve)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine alone)")
    serve.add_argument("--port", type=_port, default=8765, help="default: 8765 (0: a free port)")
    serve.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    serve.set_defaults(func=_cmd_serve)

    evaluate = sub.add_parser("evaluate", help="score a model on captioned images")
    evaluate.add_argument("--model", metavar="MODEL.npz", help=PRETRAINED_HELP)
    _add_data_options(evaluate, tags=False)
    evaluate.add_argument("--instances", metavar="ANN.json",
                          help="COCO instances file: adds the cross-modal mAP@50 of cvs, mcvs, rvs")
    evaluate.add_argument("-k", type=_positive_int, default=3, help="summary length (default: 3)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=_cmd_evaluate)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    From its first line on, SIGINT (Ctrl-C) and SIGTERM raise an exception wherever the program
    is (imports included), so that it ends with one line and status 130 or 143 after the open
    with-blocks have removed their temporary folders.
    """
    with _signals_raise():
        try:
            return _run(argv)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            print(f"image2vec: {'terminated' if signum == signal.SIGTERM else 'interrupted'}",
                  file=sys.stderr)
            return 128 + signum


def _run(argv: Sequence[str] | None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name the terminal's encoding cannot spell
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="image2vec: %(message)s")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    with warnings.catch_warnings():  # restores Python's own display when the command ends
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args))
        except (Image2VecError, OSError) as exc:  # OSError: a path that is a folder, a full disk, ...
            print("image2vec: error: " + " ".join(str(exc).split("\n")), file=sys.stderr)
            return 2


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr, ``image2vec: warning: ...`` (not the source line)."""
    print("image2vec: warning: " + " ".join(str(message).split()), file=sys.stderr)


class _Signalled(KeyboardInterrupt):
    """SIGINT or SIGTERM received (``signum``)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_signalled(signum: int, frame) -> None:
    raise _Signalled(signum)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`_Signalled` inside the block (in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_signalled)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
