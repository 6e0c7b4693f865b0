"""Time and peak memory of P&R + D&C (one tiled k-NN engine) and of FID from 2048-d statistics.

    python bench/bench_prdc.py                      # N = 50,000 real x 50,000 fake, 2048-d, f32, CPU
    python bench/bench_prdc.py --n 20000 --mode f64 --check f32
    python bench/bench_prdc.py --n 2000 --check prdc   # bit-equality with the prdc package (small N)
    python bench/bench_prdc.py --device cuda

Features: real = N(0, I), fake = 1.03 N(0, I) + 0.02 (as in the design notes), float32.
Peak RSS is the process high-water mark (ru_maxrss), so it includes the features themselves
(2 x N x 2048 x 4 bytes = 0.8 GB at N = 50k).
"""
import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from metrics import frechet, knn  # noqa: E402


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def make_features(n, d, seed):
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((n, d), dtype=np.float32)
    fake = rng.standard_normal((n, d), dtype=np.float32)
    fake *= np.float32(1.03)
    fake += np.float32(0.02)
    return real, fake


def bench_fid(d, seed):
    rng = np.random.default_rng(seed)
    spectrum = 1.0 / np.arange(1, d + 1) ** 0.8  # power-law covariance spectrum

    def stats():
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        return rng.standard_normal(d) * 0.1, (q * spectrum) @ q.T
    mu1, s1 = stats()
    mu2, s2 = stats()
    t0 = time.time()
    fid = frechet.fid_from_stats(mu1, s1, mu2, s2)
    return fid, time.time() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=50000, help='real and fake samples each (default 50000)')
    p.add_argument('--dim', type=int, default=2048)
    p.add_argument('--k', type=int, default=5)
    p.add_argument('--mode', choices=['f32', 'f64'], default='f32', help='f64 = bit-exact prdc parity; f32 = centred float32')
    p.add_argument('--device', default='cpu')
    p.add_argument('--tile', type=int, default=None)
    p.add_argument('--check', choices=['none', 'f64', 'f32', 'prdc'], default='none',
                   help='also run this reference and compare (prdc needs ~12 N^2 bytes of RAM)')
    p.add_argument('--no-fid', action='store_true')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quiet', action='store_true')
    args = p.parse_args()

    import torch
    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, device {args.device}')
    if not args.no_fid:
        fid, secs = bench_fid(args.dim, args.seed)
        print(f'FID of {args.dim}-d statistics: {secs:.2f} s (FID {fid:.6f})')

    real, fake = make_features(args.n, args.dim, args.seed)
    print(f'features: {args.n} real x {args.n} fake, {args.dim}-d float32; peak RSS so far {peak_rss_gib():.2f} GiB', flush=True)
    t0 = time.time()
    res = knn.compute_prdc(real, fake, k=args.k, mode=args.mode, device=args.device, tile=args.tile, verbose=not args.quiet)
    secs = time.time() - t0
    print(f'P/R/D/C {args.mode} on {args.device}: {secs:.1f} s, peak RSS {peak_rss_gib():.2f} GiB')
    print(f'  precision {res.precision!r}  recall {res.recall!r}  density {res.density!r}  coverage {res.coverage!r}')

    if args.check != 'none':
        t0 = time.time()
        if args.check == 'prdc':
            import prdc
            ref = prdc.compute_prdc(real, fake, nearest_k=args.k)
        else:
            ref = knn.compute_prdc(real, fake, k=args.k, mode=args.check, device=args.device, tile=args.tile, verbose=not args.quiet)
        print(f'reference {args.check}: {time.time() - t0:.1f} s, peak RSS {peak_rss_gib():.2f} GiB')
        same = all(float(ref[key]) == res[key] for key in ('precision', 'recall', 'density', 'coverage'))
        print(f'  precision {float(ref["precision"])!r}  recall {float(ref["recall"])!r}  density {float(ref["density"])!r}  '
              f'coverage {float(ref["coverage"])!r}')
        print(f'identical to {args.check}: {same}')


if __name__ == '__main__':
    main()
