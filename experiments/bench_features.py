"""Throughput of image feature extraction (images/s), at batch 32 by default.

Two figures on the same images:

- ``network``: the extractor alone on preprocessed batches (best of ``--repeats`` passes);
- ``end to end``: :func:`image2vec.features.extract_features` into a fresh feature store, i.e.
  decoding, resizing and cropping, the network, and the resumable store's writes.

Images: coco-mini (``$IMAGE2VEC_SHARED_DATA/coco-mini`` or ``../shared/data/coco-mini``) by
default, or any folder of JPEG/PNG files with ``--images``.

    python experiments/bench_features.py
    python experiments/bench_features.py --device cuda --workers 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common
import torch
from bench_omp import best_time

from image2vec.features import extract_features, load_extractor, load_image

COCO_MINI_IMAGES = common.shared_data_dir() / "coco-mini" / "train2017"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=COCO_MINI_IMAGES,
                        help=f"image folder (default: {COCO_MINI_IMAGES})")
    parser.add_argument("--extractor", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--workers", type=int, default=0, help="decoding processes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    if not args.images.is_dir():
        raise SystemExit(f"image folder {args.images} does not exist: pass --images, or set "
                         "IMAGE2VEC_SHARED_DATA to the folder holding coco-mini")
    files = sorted(p for p in args.images.iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no JPEG/PNG image in {args.images}")
    extractor = load_extractor(args.extractor, args.device)
    batches = [torch.stack([extractor.preprocessing(load_image(f))
                            for f in files[i:i + args.batch_size]])
               for i in range(0, len(files), args.batch_size)]
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    best, _ = best_time(lambda: [extractor(batch) for batch in batches], args.repeats, sync)
    with tempfile.TemporaryDirectory() as store:
        start = time.perf_counter()
        extract_features(files, store, extractor=extractor, batch_size=args.batch_size,
                         num_workers=args.workers, progress=False)
        end_to_end = time.perf_counter() - start

    print(f"{args.extractor} (p = {extractor.dim}) on {args.device}, {torch.get_num_threads()} "
          f"threads, {len(files)} images of {args.images}, batch {args.batch_size}")
    print(f"  network     {len(files) / best:8.1f} images/s")
    print(f"  end to end  {len(files) / end_to_end:8.1f} images/s  "
          f"(decode + preprocess + network + store, {args.workers} decoding workers)")


if __name__ == "__main__":
    main()
