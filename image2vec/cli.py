"""The ``image2vec`` command line.

Every subcommand is a function ``_cmd_NAME(args) -> int`` registered in :func:`build_parser`.
Bad input surfaces as a one-line ``image2vec: error: ...`` message and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from image2vec import __version__
from image2vec.errors import Image2VecError


def _cmd_demo(args: argparse.Namespace) -> int:
    from image2vec.demo import run_demo

    run_demo(out=args.out, random_state=args.random_state)
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from image2vec.features import extract_features, load_extractor

    if args.coco:
        from image2vec.coco import load_coco_split

        data = load_coco_split(args.coco, args.split, instances=False)
        files, keys = data.paths, data.image_ids
    else:
        from image2vec.flickr import load_sample, load_tag_tsv

        data = load_tag_tsv(args.tsv, args.images) if args.tsv else load_sample()
        files, keys = data.paths, data.keys
    extractor = load_extractor(args.extractor, args.device, args.weights)
    result = extract_features(files, args.out, keys=keys, extractor=extractor, logits=args.logits,
                              batch_size=args.batch_size, on_bad_image=args.on_bad_image,
                              num_workers=args.workers, progress=not args.quiet)
    n, p = result.features.shape
    print(f"{args.out}: features {n} x {p} ({extractor.name})"
          + (f", logits {n} x {result.logits.shape[1]}" if result.logits is not None else "")
          + f"; {len(result.skipped)} image(s) skipped")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
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
    feats.add_argument("--extractor", default="efficientnet-lite0",
                       help="efficientnet-lite0 (default), or vgg16 / resnet50 when torchvision "
                            "and their weights are installed")
    feats.add_argument("--weights", metavar="FILE", help="weights file instead of the default")
    feats.add_argument("--logits", action="store_true",
                       help="also store the 1000 ImageNet class logits")
    feats.add_argument("--batch-size", type=_positive_int, default=32, help="default: 32")
    feats.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    feats.add_argument("--on-bad-image", choices=("skip", "fail"), default="skip",
                       help="a missing, broken or oversized image is skipped with a warning "
                            "(listed in the index) or stops the run (default: skip)")
    feats.add_argument("--workers", type=int, default=0,
                       help="image decoding processes (default: 0, in the main process)")
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
    demo.add_argument("--random-state", type=int, default=0, help="seed (default: 0)")
    demo.set_defaults(func=_cmd_demo)

    _add_features_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (Image2VecError, FileNotFoundError, PermissionError) as exc:
        print(f"image2vec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("image2vec: interrupted", file=sys.stderr)
        return 130
