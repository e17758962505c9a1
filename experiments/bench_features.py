"""Throughput of image feature extraction (images/s) against this machine's physical limit.

On the same images, in one run, every stage timed in turn round after round (median of
``--repeats`` rounds after a warm-up, :func:`timing.median_times`):

- ``network``: the network alone on preprocessed batches, torch (the path before ONNX Runtime:
  channels-last, inference mode) and ONNX Runtime;
- ``decode + resize``: reading, decoding, resizing, cropping and normalising alone, with the
  full decode of every JPEG (the path before) and with the draft decode of JPEGs over twice the
  resize (``Preprocessing.draft_size``);
- ``end to end``: the path before (each batch decoded, then run through torch, in turn: what
  ``extract_features`` did) and :func:`image2vec.features.extract_features` as it is now (the
  default backend, decoding in a thread that overlaps the network) into a fresh feature store.

The network's FLOPs per image are counted (``torch.utils.flop_counter`` on a 1-image batch at
the crop size) and set against the machine's float32 GEMM rate (a square torch matmul of
``--gemm`` rows, which saturates the cores): each stage's fraction of the physical limit.
The features of ONNX Runtime and of the end-to-end run are compared with torch's.

Images: the first ``-n`` Flickr8k dev images (``$IMAGE2VEC_SHARED_DATA/flickr8k`` or
``../shared/data/flickr8k``), or any folder of JPEG/PNG files with ``--images``.

    python experiments/bench_features.py                  # 512 Flickr8k dev images, 3 rounds
    python experiments/bench_features.py --images DIR -n 256 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import torch
from timing import median_times

from image2vec.features import _read_image, extract_features, load_extractor, load_image

FLICKR8K = common.shared_data_dir() / "flickr8k"


def flickr8k_dev(flickr8k: Path) -> list[Path]:
    """The Flickr8k dev images, in the order of the split file."""
    names = (flickr8k / "Flickr8k_text" / "Flickr_8k.devImages.txt").read_text().split()
    return [flickr8k / "Flicker8k_Dataset" / name for name in names]


def gemm_rate(n: int, repeats: int) -> float:
    """float32 FLOP/s of an n x n matmul with torch's threads (median of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    times, _ = median_times({"gemm": lambda: torch.mm(a, b)}, repeats)
    return 2 * n ** 3 / times["gemm"]


def network_flops(extractor) -> float:
    """FLOPs of the network (features and class logits) for one image, counted."""
    from torch.utils.flop_counter import FlopCounterMode

    crop = extractor.preprocessing.crop
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        extractor.head(extractor.body(torch.zeros(1, 3, crop, crop)))
    return counter.get_total_flops()


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max over rows of ||a_n - b_n|| / ||b_n||."""
    return float((np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, help="image folder (default: Flickr8k dev)")
    parser.add_argument("-n", type=int, default=512, help="number of images (default 512)")
    parser.add_argument("--extractor", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gemm", type=int, default=2048, help="matmul side for the GEMM rate")
    args = parser.parse_args()

    if args.images:
        files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    elif (FLICKR8K / "Flickr8k_text").is_dir():
        files = flickr8k_dev(FLICKR8K)
    else:
        raise SystemExit(f"{FLICKR8K} does not exist: pass --images DIR, or set "
                         "IMAGE2VEC_SHARED_DATA to the folder holding flickr8k")
    files = files[: args.n]
    if not files:
        raise SystemExit("no JPEG/PNG image to time")
    before = load_extractor(args.extractor, backend="torch")
    now = load_extractor(args.extractor)
    pre, size = before.preprocessing, args.batch_size

    def decode_full() -> list[torch.Tensor]:
        return [pre(load_image(f)) for f in files]

    def decode_draft() -> list[torch.Tensor]:
        return [pre(*_read_image(f, pre)) for f in files]

    inputs = decode_full()
    batches = [torch.stack(inputs[i:i + size]) for i in range(0, len(files), size)]
    drafted = sum(load_image(f).size != _read_image(f, pre)[0].size for f in files)

    def network(extractor):
        return lambda: np.concatenate([extractor(batch)[0] for batch in batches])

    def end_to_end_before() -> np.ndarray:
        return np.concatenate([before(torch.stack([pre(load_image(f)) for f in files[i:i + size]]))[0]
                               for i in range(0, len(files), size)])

    def end_to_end_now() -> np.ndarray:
        with tempfile.TemporaryDirectory() as store:
            return np.array(extract_features(files, store, extractor=now, batch_size=size,
                                             progress=False).features)

    runs = {"network, torch": network(before), f"network, {now.backend}": network(now),
            "decode + resize, full decode": decode_full, "decode + resize, draft": decode_draft,
            "end to end, before": end_to_end_before, "end to end, now": end_to_end_now}
    times, results = median_times(runs, args.repeats)
    rate, flops = gemm_rate(args.gemm, 2 * args.repeats + 1), network_flops(before)
    limit = rate / flops

    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores, torch "
          f"{torch.get_num_threads()} threads, onnxruntime "
          f"{now.network.threads if now.network else '-'} intra-op threads")
    print(f"{args.extractor}: {len(files)} images ({drafted} decoded reduced) of "
          f"{files[0].parent}, batch {size}, median of {args.repeats} rounds")
    print(f"network: {flops / 1e9:.3f} GFLOP/image (counted); float32 GEMM "
          f"{rate / 1e9:.1f} GFLOP/s ({args.gemm}^2 torch matmul): limit {limit:.1f} images/s")
    print(f"  {'stage':<32}{'images/s':>10}{'x before':>10}{'of limit':>10}")
    pairs = {"network, torch": "network, torch", f"network, {now.backend}": "network, torch",
             "decode + resize, full decode": "decode + resize, full decode",
             "decode + resize, draft": "decode + resize, full decode",
             "end to end, before": "end to end, before", "end to end, now": "end to end, before"}
    for name, reference in pairs.items():
        speed = len(files) / times[name]
        fraction = f"{speed / limit:10.2f}" if name.startswith(("network", "end")) else f"{'':10}"
        print(f"  {name:<32}{speed:10.1f}{times[reference] / times[name]:10.2f}{fraction}".rstrip())
    torch_features = results["network, torch"]
    print(f"features vs torch (max over images of ||f - f_torch|| / ||f_torch||): "
          f"{now.backend} {relative_difference(results[f'network, {now.backend}'], torch_features):.1e}, "
          f"end to end now {relative_difference(results['end to end, now'], torch_features):.1e}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
