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
