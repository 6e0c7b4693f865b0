"""Frechet Inception Distance and Kernel Inception Distance from features / statistics.

FID = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)).  The trace term is computed without a
general matrix square root: for any factor S1 = L L^T, S1 S2 is similar to the symmetric PSD matrix
L^T S2 L, so Tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of L^T S2 L). L is the Cholesky factor
(cheap; only eigenvalues are then needed) or, when S1 is singular (fewer samples than
dimensions), the symmetric root sqrt(S1) from an eigendecomposition. All in float64, tiny negative
eigenvalues (rounding, rank-deficient covariances) clipped to 0. No deprecated
``sqrtm(disp=...)``, no complex parts to discard.

KID = unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
``num_subsets`` random subsets of m = min(nr, ng, max_subset_size) samples of each set.
"""
import numpy as np
import scipy.linalg

import dnnlib


def _check_stats(mu, sigma, name):
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise dnnlib.util.UserError(f'{name}: expected mean [D] and covariance [D, D], got {mu.shape} and {sigma.shape}')
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise dnnlib.util.UserError(f'{name}: statistics contain NaN or Inf')
    return mu, sigma


def _psd_sqrt(sigma):
    """Symmetric square root of a (numerically) PSD matrix via eigh."""
    w, v = scipy.linalg.eigh(sigma, check_finite=False)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(sigma1, sigma2, method='auto'):
    """Tr((sigma1 sigma2)^(1/2)) for symmetric PSD sigma1, sigma2 (float64).

    method: 'cholesky' (needs sigma1 positive definite), 'eigh' (symmetric root, any PSD sigma1),
    or 'auto' (Cholesky, falling back to eigh when sigma1 is singular).
    """
    factor = None
    if method in ('auto', 'cholesky'):
        try:
            factor = scipy.linalg.cholesky(sigma1, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            if method == 'cholesky':
                raise
    if factor is None:
        factor = _psd_sqrt(sigma1)
    m = factor.T @ sigma2 @ factor
    m = (m + m.T) * 0.5  # exact symmetry for the symmetric eigensolver
    w = scipy.linalg.eigh(m, eigvals_only=True, check_finite=False, driver='ev')
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def fid_from_stats(mu1, sigma1, mu2, sigma2, method='auto'):
    """Frechet distance between Gaussians (mu1, sigma1) and (mu2, sigma2), as a Python float."""
    mu1, sigma1 = _check_stats(mu1, sigma1, 'first statistics')
    mu2, sigma2 = _check_stats(mu2, sigma2, 'second statistics')
    if mu1.shape != mu2.shape:
        raise dnnlib.util.UserError(f'statistics: feature dimensions differ ({mu1.shape[0]} vs {mu2.shape[0]})')
    diff = mu1 - mu2
    mean_term = float(diff @ diff)
    return mean_term + float(np.trace(sigma1)) + float(np.trace(sigma2)) - 2.0 * trace_sqrt_product(sigma1, sigma2, method)


def kid_subsets(num_real, num_gen, num_subsets=100, max_subset_size=1000, seed=0):
    """The (gen_index, real_index) subsets KID averages over; m = min(num_real, num_gen, max_subset_size)."""
    m = min(num_real, num_gen, max_subset_size)
    if m < 2:
        raise dnnlib.util.UserError(f'KID needs at least 2 real and 2 generated samples, got {num_real} and {num_gen}')
    rng = np.random.RandomState(seed)
    for _ in range(num_subsets):
        gen_idx = rng.choice(num_gen, m, replace=False)
        real_idx = rng.choice(num_real, m, replace=False)
        yield gen_idx, real_idx


def kid_from_features(real_features, gen_features, num_subsets=100, max_subset_size=1000, seed=0):
    """Kernel Inception Distance (unbiased MMD^2, cubic polynomial kernel), as a Python float."""
    real = np.asarray(real_features, dtype=np.float64)
    gen = np.asarray(gen_features, dtype=np.float64)
    if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
        raise dnnlib.util.UserError(f'features: expected [N, D] arrays of equal D, got {real.shape} and {gen.shape}')
    if not (np.isfinite(real).all() and np.isfinite(gen).all()):
        raise dnnlib.util.UserError('features: contain NaN or Inf')
    d = real.shape[1]
    total = 0.0
    count = 0
    for gen_idx, real_idx in kid_subsets(real.shape[0], gen.shape[0], num_subsets, max_subset_size, seed):
        x, y = gen[gen_idx], real[real_idx]
        m = x.shape[0]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2.0 * kxy.sum() / (m * m)
        count += 1
    return float(total / count)
