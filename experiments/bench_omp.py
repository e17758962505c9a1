"""Benchmark of the batched OMP against its peers, measured in one run on the same input.

Problem (issue 2): d = 256, V = 2048 unit-norm Gaussian atoms, N = 4096 signals, k = 5.

On the CPU (``--device cpu``, 2 threads) it times our ``solvers.omp`` in float64 and float32,
SPAMS ``spams.omp`` (PyPI ``spams-bin``), the GEMM floor (the product D^T Y that any OMP needs)
and once scikit-learn's ``orthogonal_mp_gram``, and prints the ratios. On a GPU
(``--device cuda``) it times ``solvers.omp`` on CuPy arrays against the PyPI package
``orthogonal-matching-pursuit-gpu`` (torch) at N = 65536 by default, with the GPU GEMM floor.

Every implementation runs once to warm up, then ``--repeats`` times in turn (one call of each
per round, so that a change in the machine's load hits all of them alike); the medians are
reported, with the date, the machine and its load average before and after.

Agreement is reported too: the fraction of signals whose support equals scikit-learn's (CPU) or
the GPU peer's. SPAMS implements the forward-selection variant of OMP (the atom that most reduces
the residual after refitting), so its supports differ from plain OMP on some signals.

    python experiments/bench_omp.py                 # CPU, the issue's problem
    python experiments/bench_omp.py --device cuda   # GPU, N = 65536
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np
import timing
from threadpoolctl import threadpool_limits

from solvers import omp


def supports(dense: np.ndarray) -> np.ndarray:
    return np.asarray(dense) != 0


def problem(dim: int, n_atoms: int, n_signals: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((dim, n_atoms))
    D /= np.linalg.norm(D, axis=0)
    return D, rng.standard_normal((n_signals, dim))


def machine() -> str:
    """CPU model and core count."""
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


def load_average() -> str:
    """The 1-minute load average (runnable processes, all cores together)."""
    return f"{os.getloadavg()[0]:.2f}"


def bench_cpu(args: argparse.Namespace) -> None:
    from sklearn.linear_model import orthogonal_mp_gram

    D, Y = problem(args.dim, args.atoms, args.signals or 4096, args.seed)
    D32, Y32 = D.astype(np.float32), Y.astype(np.float32)
    Yf, Df = np.asfortranarray(Y.T), np.asfortranarray(D)
    k = args.k
    runs = {"solvers.omp float64": lambda: omp(D, Y, k, n_jobs=args.threads),
            "solvers.omp float32": lambda: omp(D32, Y32, k, n_jobs=args.threads),
            "GEMM floor D^T Y": lambda: D.T @ Y.T}
    try:
        import spams
    except ImportError:
        spams = None
        print("SPAMS not installed (pip install spams-bin): skipped")
    else:
        runs["SPAMS spams.omp"] = lambda: spams.omp(Yf, Df, L=k, numThreads=args.threads)
    # Every implementation runs under the same BLAS thread limit (SPAMS also gets numThreads).
    with threadpool_limits(args.threads):
        times, _ = timing.median_times(runs, args.repeats)
        ours_dense = omp(D, Y, k).toarray()
        if spams is not None:
            agree = (supports(ours_dense) == supports(spams.omp(Yf, Df, L=k).toarray().T)).all(axis=1).mean()
            print(f"supports equal to SPAMS's (forward selection): {agree:.1%} of signals")
        if not args.skip_sklearn:
            start = time.perf_counter()
            reference = orthogonal_mp_gram(D.T @ D, D.T @ Y.T, n_nonzero_coefs=k).T
            times["sklearn orthogonal_mp_gram (1 run)"] = time.perf_counter() - start
            agree = (supports(ours_dense) == supports(reference)).all(axis=1).mean()
            print(f"supports equal to scikit-learn's: {agree:.1%} of signals")
    report(times, "solvers.omp float64", args,
           peers=("SPAMS spams.omp", "sklearn orthogonal_mp_gram (1 run)", "GEMM floor D^T Y"))
    print(f"float32 speed-up over float64: {times['solvers.omp float64'] / times['solvers.omp float32']:.2f}x")


def bench_gpu(args: argparse.Namespace) -> None:
    import cupy
    import torch

    D, Y = problem(args.dim, args.atoms, args.signals or 65536, args.seed)
    k = args.k
    try:
        from orthogonal_matching_pursuit_gpu import run_omp
    except ImportError:
        run_omp = None
        print("orthogonal-matching-pursuit-gpu not installed: the peer is not timed, ours and the GEMM floor are")
    for dtype in (np.float64, np.float32):
        name = np.dtype(dtype).name
        Dg, Yg = cupy.asarray(D, dtype=dtype), cupy.asarray(Y, dtype=dtype)
        runs = {f"solvers.omp cupy {name}": lambda Dg=Dg, Yg=Yg: omp(Dg, Yg, k),
                f"GEMM floor cupy {name}": lambda Dg=Dg, Yg=Yg: Dg.T @ Yg.T}
        if run_omp is not None:
            Dt = torch.as_tensor(D, dtype=getattr(torch, name), device="cuda")
            Yt = torch.as_tensor(Y, dtype=getattr(torch, name), device="cuda")
            runs[f"omp-gpu (torch) {name}"] = lambda Dt=Dt, Yt=Yt: run_omp(Dt, Yt, k, normalize=False,
                                                                            fit_intercept=False)
            ours = cupy.asnumpy(omp(Dg, Yg, k).toarray())
            peer = run_omp(Dt, Yt, k, normalize=False, fit_intercept=False).cpu().numpy()
            print(f"{name}: supports equal to omp-gpu's: {(supports(ours) == supports(peer)).all(axis=1).mean():.1%}")

        def sync() -> None:
            cupy.cuda.Device().synchronize()
            torch.cuda.synchronize()

        times, _ = timing.median_times(runs, args.repeats, sync=sync)
        report(times, f"solvers.omp cupy {name}", args, peers=(f"omp-gpu (torch) {name}", f"GEMM floor cupy {name}"))


def report(times: dict[str, float], ours: str, args: argparse.Namespace, peers: tuple[str, ...]) -> None:
    n = args.signals or (65536 if args.device == "cuda" else 4096)
    print(f"\n{datetime.date.today()}, {machine()}, load average {args.load_before} before, "
          f"{load_average()} after")
    print(f"d={args.dim} V={args.atoms} N={n} k={args.k} threads={args.threads} device={args.device}, "
          f"median of {args.repeats} runs")
    for name, seconds in times.items():
        print(f"  {name:36s} {seconds:9.4f} s")
    for peer in peers:
        if peer in times:
            print(f"  ratio ours / {peer:36s} {times[ours] / times[peer]:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--atoms", type=int, default=2048)
    parser.add_argument("--signals", type=int, default=None, help="default 4096 (cpu), 65536 (cuda)")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-sklearn", action="store_true", help="skip scikit-learn (about 40 s here)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.load_before = load_average()
    (bench_gpu if args.device == "cuda" else bench_cpu)(args)


if __name__ == "__main__":
    main()
