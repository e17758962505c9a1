"""Benchmark of the batched OMP against its peers, measured in one run on the same input.

Problem (issue 2): d = 256, V = 2048 unit-norm Gaussian atoms, N = 4096 signals, k = 5.

On the CPU (``--device cpu``, 2 threads) it times our ``solvers.omp`` in float64 and float32,
scikit-learn's ``orthogonal_mp_gram``, SPAMS ``spams.omp`` (PyPI ``spams-bin``) and the GEMM floor
(the product D^T Y that any OMP needs), and prints the ratios. On a GPU (``--device cuda``) it
times ``solvers.omp`` on CuPy arrays against the PyPI package ``orthogonal-matching-pursuit-gpu``
(torch) at N = 65536 by default, with the GPU GEMM floor.

Agreement is reported too: the fraction of signals whose support equals scikit-learn's (CPU) or
the GPU peer's. SPAMS implements the forward-selection variant of OMP (the atom that most reduces
the residual after refitting), so its supports differ from plain OMP on some signals.

    python experiments/bench_omp.py                 # CPU, the issue's problem
    python experiments/bench_omp.py --device cuda   # GPU, N = 65536
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from solvers import omp


def best_time(run: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> tuple[float, object]:
    """Smallest wall time of ``repeats`` calls (after one warm-up call) and the last result."""
    result = run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        sync()
        times.append(time.perf_counter() - start)
    return min(times), result


def supports(dense: np.ndarray) -> np.ndarray:
    return np.asarray(dense) != 0


def problem(dim: int, n_atoms: int, n_signals: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((dim, n_atoms))
    D /= np.linalg.norm(D, axis=0)
    return D, rng.standard_normal((n_signals, dim))


def bench_cpu(args: argparse.Namespace) -> None:
    from sklearn.linear_model import orthogonal_mp_gram

    D, Y = problem(args.dim, args.atoms, args.signals or 4096, args.seed)
    k = args.k
    rows = []
    # Every implementation runs under the same BLAS thread limit (SPAMS also gets numThreads).
    with threadpool_limits(args.threads):
        floor, _ = best_time(lambda: D.T @ Y.T, args.repeats)
        ours, code = best_time(lambda: omp(D, Y, k, n_jobs=args.threads), args.repeats)
        D32, Y32 = D.astype(np.float32), Y.astype(np.float32)
        ours32, _ = best_time(lambda: omp(D32, Y32, k, n_jobs=args.threads), args.repeats)
        rows += [("solvers.omp float64", ours), ("solvers.omp float32", ours32), ("GEMM floor D^T Y", floor)]
        ours_dense = code.toarray()
        if not args.skip_sklearn:
            start = time.perf_counter()
            reference = orthogonal_mp_gram(D.T @ D, D.T @ Y.T, n_nonzero_coefs=k).T
            rows.append(("sklearn orthogonal_mp_gram", time.perf_counter() - start))
            agree = (supports(ours_dense) == supports(reference)).all(axis=1).mean()
            print(f"supports equal to scikit-learn's: {agree:.1%} of signals")
        try:
            import spams
        except ImportError:
            print("SPAMS not installed (pip install spams-bin): skipped")
        else:
            Yf, Df = np.asfortranarray(Y.T), np.asfortranarray(D)
            spams_time, spams_code = best_time(lambda: spams.omp(Yf, Df, L=k, numThreads=args.threads), args.repeats)
            rows.append(("SPAMS spams.omp", spams_time))
            agree = (supports(ours_dense) == supports(spams_code.toarray().T)).all(axis=1).mean()
            print(f"supports equal to SPAMS's (forward selection): {agree:.1%} of signals")
    report(rows, ours, args, peers=("SPAMS spams.omp", "sklearn orthogonal_mp_gram", "GEMM floor D^T Y"))
    print(f"float32 speed-up over float64: {ours / ours32:.2f}x")


def bench_gpu(args: argparse.Namespace) -> None:
    import cupy
    import torch

    D, Y = problem(args.dim, args.atoms, args.signals or 65536, args.seed)
    k = args.k
    sync = cupy.cuda.Device().synchronize
    try:
        from orthogonal_matching_pursuit_gpu import run_omp
    except ImportError:
        run_omp = None
        print("orthogonal-matching-pursuit-gpu not installed: the peer is not timed, ours and the GEMM floor are")
    for dtype in (np.float64, np.float32):
        Dg, Yg = cupy.asarray(D, dtype=dtype), cupy.asarray(Y, dtype=dtype)
        floor, _ = best_time(lambda: Dg.T @ Yg.T, args.repeats, sync)
        ours, code = best_time(lambda: omp(Dg, Yg, k), args.repeats, sync)
        name = np.dtype(dtype).name
        rows = [(f"solvers.omp cupy {name}", ours), (f"GEMM floor cupy {name}", floor)]
        if run_omp is not None:
            Dt = torch.as_tensor(D, dtype=getattr(torch, name), device="cuda")
            Yt = torch.as_tensor(Y, dtype=getattr(torch, name), device="cuda")
            peer, peer_code = best_time(
                lambda: run_omp(Dt, Yt, k, normalize=False, fit_intercept=False), args.repeats, torch.cuda.synchronize
            )
            rows.append((f"omp-gpu (torch) {name}", peer))
            agree = (supports(cupy.asnumpy(code.toarray())) == supports(peer_code.cpu().numpy())).all(axis=1).mean()
            print(f"{name}: supports equal to omp-gpu's: {agree:.1%} of signals")
        report(rows, ours, args, peers=(f"omp-gpu (torch) {name}", f"GEMM floor cupy {name}"))


def report(rows: list[tuple[str, float]], ours: float, args: argparse.Namespace, peers: tuple[str, ...]) -> None:
    n = args.signals or (65536 if args.device == "cuda" else 4096)
    print(f"\nd={args.dim} V={args.atoms} N={n} k={args.k} threads={args.threads} device={args.device}")
    for name, seconds in rows:
        print(f"  {name:32s} {seconds:9.4f} s")
    times = dict(rows)
    for peer in peers:
        if peer in times:
            print(f"  ratio ours / {peer:24s} {ours / times[peer]:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--atoms", type=int, default=2048)
    parser.add_argument("--signals", type=int, default=None, help="default 4096 (cpu), 65536 (cuda)")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-sklearn", action="store_true", help="skip scikit-learn (about 40 s here)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (bench_gpu if args.device == "cuda" else bench_cpu)(args)


if __name__ == "__main__":
    main()
