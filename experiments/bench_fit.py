"""Fit time of every Image2Vec model x objective x solver against scikit-learn Ridge, in one run.

Two parts, each timed against the peer a user would write instead: scikit-learn
``Ridge(solver="cholesky")`` from the same features to the same word targets (dense), in the same
process and run.

1. Flickr8k size (N = 6,000, p = 1,280, V = 1,229): the real Flickr8k train features and
   caption targets, and synthetic data of the same shape. Every model x objective x solver is
   fitted with its defaults; the median wall time of ``--repeats`` fits (one for sgd), its
   ratio to Ridge's median, whether it converged, and for sgd the time at which its objective
   first came within 1% of the bcd optimum (statistics pass included). Ridge is timed
   alternately with each system (Ridge, fit, Ridge, fit...), so that a change in the machine's
   load during the run hits both sides of every ratio alike.
2. Scale (synthetic, COCO to YFCC sized): N = 25k, 100k, 400k images, p = 1,280 float32
   features in a memory-mapped ``.npy``, V = 5,000 words, about 10 an image (sparse). The
   default fit, each in a fresh process: wall time and peak resident memory (the process's
   VmHWM, memory-mapped pages it holds included), against Ridge where a dense target matrix
   fits in memory (``--ridge-max-gb``).

``--device cuda`` fits Image2Vec on the GPU (CuPy; Ridge stays scikit-learn's, on the CPU).
Writes ``bench_fit.csv`` and ``bench_fit.md`` into OUT.

    python experiments/bench_fit.py out/bench_fit --features experiments/results/flickr8k/features
    python experiments/bench_fit.py out/bench_fit --scale 25000 100000   # a shorter series
    python experiments/bench_fit.py out/weak_tag --models weak-tag --scale   # one model, no series
    python experiments/bench_fit.py out/bench_fit_gpu --device cuda          # Image2Vec on CuPy
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import common
import numpy as np
import scipy.sparse as sp
import timing

from image2vec.model import MODELS, OBJECTIVES, SOLVERS, Image2Vec
from image2vec.names import DEFAULT_MODEL
from solvers.backend import gpu_available

OUTPUTS = ("bench_fit.csv", "bench_fit.md", "features/")
COLUMNS = ("part", "data", "system", "n", "seconds", "ratio", "converged", "sgd_seconds_to_1pct",
           "peak_rss_mb", "ridge_seconds", "ridge_peak_rss_mb", "repeats")


def build_parser() -> argparse.ArgumentParser:
    parser = common.script_parser(__file__, __doc__)
    common.add_output_argument(parser)
    common.add_flickr8k_arguments(parser)
    parser.add_argument("--repeats", type=common.positive_int, default=3,
                        help="fits timed per bcd system and per Ridge (default: 3; sgd: 1)")
    parser.add_argument("--scale", type=int, nargs="*", default=[25_000, 100_000, 400_000], metavar="N",
                        help="image counts of the scale series (default: 25000 100000 400000)")
    parser.add_argument("--scale-model", choices=MODELS, default=DEFAULT_MODEL,
                        help=f"the model of the scale series (default: {DEFAULT_MODEL})")
    parser.add_argument("--ridge-max-gb", type=float, default=4.0,
                        help="largest dense target matrix Ridge is given in the series (default: 4)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), metavar="MODEL",
                        help=f"models of the first part (default: all of {', '.join(MODELS)})")
    parser.add_argument("--solvers", nargs="+", choices=SOLVERS, default=list(SOLVERS), metavar="SOLVER",
                        help=f"solvers of the first part (default: all of {', '.join(SOLVERS)})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the Image2Vec fits run (default: cpu; cuda needs CuPy and a "
                             "CUDA device); Ridge runs on the CPU")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def synthetic(n: int, p: int, n_words: int, per_image: int, seed: int,
              out: np.ndarray | None = None) -> tuple[np.ndarray, sp.csr_matrix]:
    """CNN-like features (non-negative, a common mean) driven by sparse word targets.

    Each image has ``per_image`` words (binary); its features are the sum of its words' random
    feature signatures plus noise, rectified. Written into ``out`` (e.g. a memmap) in chunks.
    """
    rng = np.random.default_rng(seed)
    signatures = rng.standard_normal((n_words, p)).astype(np.float32) / np.sqrt(per_image)
    popularity = 1 / np.arange(1, n_words + 1) ** 0.8  # Zipf-like word frequencies
    popularity /= popularity.sum()
    cols = np.concatenate([rng.choice(n_words, per_image, replace=False, p=popularity) for _ in range(n)])
    X = sp.csr_matrix((np.ones(n * per_image, np.float32), cols, np.arange(0, n * per_image + 1, per_image)),
                      shape=(n, n_words))
    F = np.empty((n, p), np.float32) if out is None else out
    for start in range(0, n, 8192):
        rows = slice(start, min(start + 8192, n))
        noise = rng.standard_normal((rows.stop - start, p)).astype(np.float32)
        F[rows] = np.maximum(X[rows] @ signatures + noise + 0.5, 0)
    return F, X


def ridge(F: np.ndarray, X: sp.csr_matrix, alpha: float):
    from sklearn.linear_model import Ridge

    return Ridge(alpha=alpha, solver="cholesky").fit(F, X.toarray())


def part_one(name: str, F: np.ndarray, X: sp.csr_matrix, repeats: int, seed: int,
             models: Sequence[str] = MODELS, device: str = "cpu", solvers: Sequence[str] = SOLVERS) -> list[dict]:
    """Every model (of ``models``) x objective x solver on one Flickr8k-sized data set, against Ridge.

    The ratio is to Ridge on the features as stored (float32: scikit-learn then computes in
    float32), timed alternately with the system (``timing.median_times``); Ridge on float64
    features, the precision the Image2Vec solvers work in, is timed once for the whole set.
    """
    wide = F.astype(np.float64)
    times, _ = timing.median_times({F.dtype.name: lambda: ridge(F, X, alpha=3.0),
                                    "float64": lambda: ridge(wide, X, alpha=3.0)}, repeats, warm_up=False)
    ridge_seconds, wide_seconds = times[F.dtype.name], times["float64"]
    rows = [{"part": "flickr8k size", "data": name, "system": f"Ridge(cholesky), {F.dtype}", "n": len(F),
             "seconds": ridge_seconds, "ratio": 1.0, "repeats": repeats},
            {"part": "flickr8k size", "data": name, "system": "Ridge(cholesky), float64", "n": len(F),
             "seconds": wide_seconds, "ratio": wide_seconds / ridge_seconds, "repeats": repeats}]
    print(f"{name}: Ridge {ridge_seconds:.2f} s ({F.dtype}), {wide_seconds:.2f} s (float64)", flush=True)
    for model in models:
        for objective in OBJECTIVES:
            optimum = None
            for solver in solvers:
                if (model, solver) in common.SKIPPED:
                    continue
                estimator = Image2Vec(model=model, objective=objective, solver=solver, random_state=seed,
                                      device=device)
                rounds = 1 if solver == "sgd" else repeats
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    times, results = timing.median_times(
                        {"ridge": lambda: ridge(F, X, alpha=3.0), "fit": lambda e=estimator: e.fit(F, X)},
                        rounds, warm_up=False)
                seconds, peer_seconds, fitted = times["fit"], times["ridge"], results["fit"]
                trace = fitted.objective_trace_
                row = {"part": "flickr8k size", "data": name, "system": f"{model}/{objective}/{solver}",
                       "n": len(F), "seconds": seconds, "ratio": seconds / peer_seconds,
                       "converged": fitted.converged_, "ridge_seconds": peer_seconds, "repeats": rounds}
                if solver == "bcd":
                    optimum = trace[-1][2]
                elif optimum is not None:
                    row["sgd_seconds_to_1pct"] = _time_to_within(fitted, optimum, 0.01)
                rows.append(row)
                print(f"{name}: {row['system']} {seconds:.2f} s ({row['ratio']:.1f}x Ridge's "
                      f"{peer_seconds:.2f} s)", flush=True)
    return rows


def _time_to_within(fitted: Image2Vec, optimum: float, fraction: float) -> float:
    """Seconds of the fit until the objective first came within ``fraction`` of ``optimum``.

    The solver's clock starts after the statistics pass; the pass's time (the fit's total minus
    the solver's last entry) is added.
    """
    seconds = fitted.solver_seconds_
    preparation = fitted.fit_seconds_ - seconds[-1]
    for (_, _, value), t in zip(fitted.objective_trace_, seconds):
        if value - optimum <= fraction * abs(optimum):
            return preparation + t
    return float("nan")


CHILD = """
import json, resource, sys, time, warnings
import numpy as np, scipy.sparse as sp
F = np.load(sys.argv[1], mmap_mode="r", allow_pickle=False)
X = sp.load_npz(sys.argv[2])
start = time.perf_counter()
if sys.argv[3] == "image2vec":
    from image2vec import Image2Vec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Image2Vec(model=sys.argv[5], device=sys.argv[4], random_state=0).fit(F, X)
else:
    from sklearn.linear_model import Ridge
    Ridge(alpha=3.0, solver="cholesky").fit(np.asarray(F), X.toarray())
seconds = time.perf_counter() - start
try:  # this process's own high-water mark (ru_maxrss keeps the forking parent's across exec)
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except OSError:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kb / 1024}))
"""


def in_child(system: str, features: Path, targets: Path, device: str = "cpu", model: str = DEFAULT_MODEL) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(features), str(targets), system, device, model],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def part_two(sizes: Sequence[int], ridge_max_gb: float, seed: int, scratch: Path,
             device: str = "cpu", model: str = DEFAULT_MODEL) -> list[dict]:
    """The model's default l2/bcd fit on memory-mapped synthetic data of growing N, each in a
    fresh process."""
    rows = []
    for n in sizes:
        features, targets = scratch / f"F{n}.npy", scratch / f"X{n}.npz"
        mapped = np.lib.format.open_memmap(features, mode="w+", dtype=np.float32, shape=(n, 1280))
        _, X = synthetic(n, 1280, 5000, 10, seed, out=mapped)
        mapped.flush()
        del mapped
        sp.save_npz(targets, X)
        ours = in_child("image2vec", features, targets, device, model)
        row = {"part": "scale", "data": "synthetic, memory-mapped float32", "system": f"{model}/l2/bcd",
               "n": n, "seconds": ours["seconds"], "peak_rss_mb": ours["peak_rss_mb"]}
        dense_gb = n * 5000 * 8 / 2**30
        if dense_gb <= ridge_max_gb:
            peer = in_child("ridge", features, targets)
            row.update(ridge_seconds=peer["seconds"], ridge_peak_rss_mb=peer["peak_rss_mb"],
                       ratio=ours["seconds"] / peer["seconds"])
        rows.append(row)
        print(f"scale N={n}: {ours['seconds']:.1f} s, {ours['peak_rss_mb']:.0f} MB"
              + (f"; Ridge {row['ridge_seconds']:.1f} s" if "ridge_seconds" in row else
                 f"; Ridge not run (dense targets {dense_gb:.0f} GB)"), flush=True)
        features.unlink()
        targets.unlink()
    return rows


def table(rows: list[dict]) -> str:
    def cell(value):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    header = [c for c in COLUMNS if c != "part"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def experiment(args: argparse.Namespace) -> None:
    import flickr8k

    if args.device == "cuda" and not gpu_available():
        raise common.ExperimentError("--device cuda needs CuPy (pip install -e .[gpu]) and a CUDA device")
    out = common.OutputFolder(args.out, OUTPUTS)
    rows = []
    train, _ = flickr8k.load_splits(args, out)
    shape = train.features.shape
    density = train.targets.nnz / train.targets.shape[0]
    rows += part_one("Flickr8k train (real)", np.asarray(train.features), train.targets, args.repeats, args.seed,
                     args.models, args.device, args.solvers)
    F, X = synthetic(shape[0], shape[1], train.targets.shape[1], int(round(density)), args.seed)
    rows += part_one("synthetic, same shape", F, X, args.repeats, args.seed, args.models, args.device,
                     args.solvers)
    with tempfile.TemporaryDirectory(prefix="image2vec-bench-") as scratch:
        rows += part_two(args.scale, args.ridge_max_gb, args.seed, Path(scratch), args.device, args.scale_model)
    out.write_csv("bench_fit.csv", rows, COLUMNS)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.write_text("bench_fit.md", f"# Fit time against scikit-learn Ridge\n\n`{args.command}`, "
                   f"{time.strftime('%Y-%m-%d')}; peak RSS of the run {usage.ru_maxrss / 1024:.0f} MB.\n\n"
                   + table(rows))


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(experiment, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
