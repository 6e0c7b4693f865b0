"""Metrics end to end: what ``calc_metric`` reports, recomputed from the features with independent
code (scipy's general sqrtm for FID, the direct unbiased MMD² for KID, the prdc package for
P/R/D/C), and the fast float32 k-NN mode at Inception's d = 2048 against the prdc package."""
import os

import numpy as np
import PIL.Image
import prdc
import pytest
import scipy.linalg
import torch

from metrics import knn, metric_main
from tests.test_metrics_extract import NUM_IMAGES, TinyG, env  # noqa: F401  (env is a fixture)


def _real_features_by_hand(env):
    # The dataset's PNGs in file-name order through the stand-in detector, without our extraction code.
    files = sorted(os.listdir(env.dataset_kwargs.path))
    images = np.stack([np.asarray(PIL.Image.open(os.path.join(env.dataset_kwargs.path, f))).transpose(2, 0, 1) for f in files])
    with torch.no_grad():
        return torch.jit.load(env.det)(torch.from_numpy(images), return_features=True).numpy().astype(np.float64)


def test_calc_metric_fid_kid_prdc_recomputed_from_the_features(env):
    G = TinyG(scale=0.5)
    memo = dict()
    run = lambda name: metric_main.calc_metric(name, G=G, dataset_kwargs=env.dataset_kwargs, device='cpu',
                                               detector_dir=env.det_dir, gen_memo=memo, cache=False)
    fid, kid, pr = run('fid1k_full'), run('kid1k_full'), run('prdc1k_full')
    real = _real_features_by_hand(env)
    gen = memo[('inception', 1000)].get_all().astype(np.float64)  # the generated features the metrics used
    assert real.shape[0] == NUM_IMAGES and gen.shape == (1000, real.shape[1])

    # FID: population covariances (NVIDIA), general matrix square root of the product.
    mu_r, mu_g = real.mean(0), gen.mean(0)
    s_r, s_g = np.cov(real, rowvar=False, bias=True), np.cov(gen, rowvar=False, bias=True)
    covmean = scipy.linalg.sqrtm(s_g @ s_r).real
    ref_fid = np.sum((mu_g - mu_r) ** 2) + np.trace(s_g) + np.trace(s_r) - 2 * np.trace(covmean)
    assert fid.results.fid1k_full == pytest.approx(ref_fid, rel=1e-6)

    # KID: 100 subsets of m = min(40, 1000, 1000) drawn with RandomState(0) (generated indices
    # first), unbiased MMD² with k(x, y) = (x·y / d + 1)³.
    d, m = real.shape[1], min(real.shape[0], gen.shape[0], 1000)
    rs = np.random.RandomState(0)
    values = []
    for _ in range(100):
        x = gen[rs.choice(gen.shape[0], m, replace=False)]
        y = real[rs.choice(real.shape[0], m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        off = ~np.eye(m, dtype=bool)
        values.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    assert kid.results.kid1k_full == pytest.approx(np.mean(values), rel=1e-6, abs=1e-12)

    # P/R/D/C: the prdc package on the same float32 features, bit for bit.
    ref = prdc.compute_prdc(real.astype(np.float32), gen.astype(np.float32), nearest_k=5)
    for key in ('precision', 'recall', 'density', 'coverage'):
        assert pr.results[f'prdc1k_full_{key}'] == ref[key], key
        assert pr.results[key] == ref[key], key


def test_f32_knn_at_inception_width_agrees_with_prdc():
    # Post-ReLU-like Inception features: non-negative, offset, d = 2048.
    rng = np.random.default_rng(2048)
    n_real, n_fake, d = 500, 400, 2048
    real = (np.abs(rng.standard_normal((n_real, d))) * 0.3 + 0.5).astype(np.float32)
    fake = (np.abs(rng.standard_normal((n_fake, d))) * 0.31 + 0.5).astype(np.float32)
    ref = prdc.compute_prdc(real, fake, nearest_k=5)
    ours = knn.compute_prdc(real, fake, k=5, mode='f32', tile=256, return_radii=True)
    for ours_r, feats in ((ours.radii_real, real), (ours.radii_fake, fake)):
        radii = prdc.prdc.compute_nearest_neighbour_distances(feats, 5)
        assert np.max(np.abs(ours_r - radii) / radii) < 2e-6
    for key in ('precision', 'recall', 'density', 'coverage'):
        assert abs(ours[key] - ref[key]) <= 2.0 / min(n_real, n_fake), key
    assert 0 < ref['precision'] < 1 and 0 < ref['coverage'] < 1  # the decisions are not all trivial
