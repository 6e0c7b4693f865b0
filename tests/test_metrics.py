"""Metric math: FID vs scipy, KID vs the direct formula, tiled P/R/D/C vs the prdc package,
detector loading (path, file:// URL, --detector-dir, offline error), reporting and plotting."""
import json
import os

import numpy as np
import prdc
import pytest
import scipy.linalg
import torch

import dnnlib
from metrics import detectors, frechet, knn, metric_main, plot_curves

# ---------------------------------------------------------------------------------------------
# FID


def _random_stats(rng, d, n):
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + rng.standard_normal(d)
    return x.mean(0), np.cov(x, rowvar=False, bias=True)


def _fid_scipy(mu1, s1, mu2, s2):
    # Independent reference: a general matrix square root of the non-symmetric product.
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


@pytest.mark.parametrize('d,n,rtol', [(64, 2000, 1e-10), (128, 60, 1e-6)])  # full rank; rank deficient (n < d)
def test_fid_matches_scipy_sqrtm(d, n, rtol):
    rng = np.random.default_rng(d)
    mu1, s1 = _random_stats(rng, d, n)
    mu2, s2 = _random_stats(rng, d, n)
    ref = _fid_scipy(mu1, s1, mu2, s2)
    for method in ['auto', 'eigh'] + (['cholesky'] if n > d else []):
        ours = frechet.fid_from_stats(mu1, s1, mu2, s2, method=method)
        assert ours > 1
        assert abs(ours - ref) <= rtol * abs(ref), method


def test_fid_of_identical_stats_is_zero_and_bad_input_is_rejected():
    rng = np.random.default_rng(1)
    mu, s = _random_stats(rng, 32, 500)
    assert abs(frechet.fid_from_stats(mu, s, mu, s)) < 1e-9
    with pytest.raises(dnnlib.util.UserError, match='NaN'):
        frechet.fid_from_stats(mu * np.nan, s, mu, s)
    with pytest.raises(dnnlib.util.UserError, match='dimensions differ'):
        frechet.fid_from_stats(mu[:4], s[:4, :4], mu, s)

# ---------------------------------------------------------------------------------------------
# KID


def test_kid_matches_direct_formula():
    rng = np.random.default_rng(2)
    d = 16
    real = np.abs(rng.standard_normal((70, d))).astype(np.float32)
    gen = (np.abs(rng.standard_normal((50, d))) * 1.2).astype(np.float32)
    num_subsets, max_subset = 4, 30
    ours = frechet.kid_from_features(real, gen, num_subsets=num_subsets, max_subset_size=max_subset, seed=7)

    # Same documented subset draw (RandomState(seed): generated indices, then real indices),
    # then the unbiased MMD^2 written out element by element.
    def kern(a, b):
        return (float(np.dot(a.astype(np.float64), b.astype(np.float64))) / d + 1) ** 3
    rs = np.random.RandomState(7)
    m = min(len(real), len(gen), max_subset)
    values = []
    for _ in range(num_subsets):
        x = gen[rs.choice(len(gen), m, replace=False)]
        y = real[rs.choice(len(real), m, replace=False)]
        kxx = sum(kern(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        kyy = sum(kern(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        kxy = sum(kern(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
        values.append(kxx + kyy - 2 * kxy)
    assert ours == pytest.approx(np.mean(values), rel=1e-10, abs=1e-12)
    assert ours > 0
    same = frechet.kid_from_features(real, real, num_subsets=3, max_subset_size=30)
    assert abs(same) < abs(ours)

def test_kid_defaults_and_bad_input():
    rng = np.random.default_rng(5)
    real = rng.standard_normal((1100, 4)).astype(np.float32)
    gen = (rng.standard_normal((1050, 4)) + 0.3).astype(np.float32)
    # NVIDIA's defaults: 100 subsets of at most 1000 samples, here with one subset.
    assert frechet.kid_from_features(real, gen, num_subsets=1) == frechet.kid_from_features(
        real, gen, num_subsets=1, max_subset_size=1000)
    assert frechet.kid_from_features(real, gen, num_subsets=1) != frechet.kid_from_features(
        real, gen, num_subsets=1, max_subset_size=1001)
    for bad_real, bad_gen in ((real[:, :3], gen), (real[:, 0], gen), (real, gen[None])):
        with pytest.raises(dnnlib.util.UserError, match='features'):
            frechet.kid_from_features(bad_real, bad_gen, num_subsets=1)
    with pytest.raises(dnnlib.util.UserError, match='NaN'):
        frechet.kid_from_features(real * np.nan, gen, num_subsets=1)

# ---------------------------------------------------------------------------------------------
# P/R/D/C


def _features(kind, n_real, n_fake, d, seed):
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((n_real, d), dtype=np.float32)
    fake = (1.03 * rng.standard_normal((n_fake, d)) + 0.02).astype(np.float32)
    if kind == 'offset':  # ReLU-like features far from the origin: float32 cancellation
        real, fake = np.abs(real) + 3, np.abs(fake) + 3
    if kind == 'dup':  # duplicate reals (radius 0 neighbours) and fakes equal to reals
        real[100:160] = real[:60]
        fake[10:40] = real[10:40]
    return real, fake


CASES = [  # kind, n_real, n_fake, d, tile
    ('gauss', 2000, 2000, 1024, 768),
    ('offset', 2000, 1700, 512, 512),
    ('dup', 1500, 1600, 256, 700),
    ('offset', 5000, 5000, 48, 2048),
]


@pytest.mark.parametrize('kind,n_real,n_fake,d,tile', CASES)
def test_prdc_f64_is_identical_to_prdc_package(kind, n_real, n_fake, d, tile):
    real, fake = _features(kind, n_real, n_fake, d, seed=n_real + d)
    ref = prdc.compute_prdc(real, fake, nearest_k=5)
    ours = knn.compute_prdc(real, fake, k=5, mode='f64', tile=tile, return_radii=True)
    for key in ('precision', 'recall', 'density', 'coverage'):
        assert ours[key] == ref[key], key
    np.testing.assert_array_equal(ours.radii_real, prdc.prdc.compute_nearest_neighbour_distances(real, 5))
    np.testing.assert_array_equal(ours.radii_fake, prdc.prdc.compute_nearest_neighbour_distances(fake, 5))
    assert 0 < ref['precision'] < 1 and 0 < ref['recall'] <= 1


def test_prdc_f32_mode_agrees_with_reference():
    real, fake = _features('offset', 1200, 1000, 512, seed=3)
    ref = prdc.compute_prdc(real, fake, nearest_k=5)
    ours = knn.compute_prdc(real, fake, k=5, mode='f32', tile=500, return_radii=True)
    radii = prdc.prdc.compute_nearest_neighbour_distances(real, 5)
    assert np.max(np.abs(ours.radii_real - radii) / radii) < 1e-6  # ~1 ulp thanks to centring
    for key in ('precision', 'recall', 'density', 'coverage'):
        assert abs(ours[key] - ref[key]) <= 2.0 / 1000, key


def test_pr_non_strict_matches_brute_force():
    # k = 3 and <= as stylegan2-ada's pr50k3, here against a dense float64 brute force.
    rng = np.random.default_rng(5)
    real = rng.integers(0, 3, (300, 8)).astype(np.float32)  # many exact ties
    fake = rng.integers(0, 3, (250, 8)).astype(np.float32)
    k = 3
    ours = knn.compute_prdc(real, fake, k=k, mode='f64', tile=128, strict=False)

    def dist(a, b):
        return np.sqrt(((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1))
    r_real = np.sort(dist(real, real), axis=1)[:, k]
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    d = dist(real, fake)
    assert ours.precision == (d <= r_real[:, None]).any(0).mean()
    assert ours.recall == (d <= r_fake[None, :]).any(1).mean()
    assert ours.density == (d <= r_real[:, None]).sum(0).mean() / k
    strict = knn.compute_prdc(real, fake, k=k, mode='f64', tile=128, strict=True)
    assert strict.precision == (d < r_real[:, None]).any(0).mean()
    assert strict.precision < ours.precision  # the ties make the test matter


def test_squared_distance_thresholds_are_exact():
    # sqrt32(d2) < r  <=>  d2 < t(r), and <= likewise, on values packed around the radii.
    rng = np.random.default_rng(4)
    radii = torch.from_numpy(np.concatenate([[0.0], rng.uniform(0.1, 50, 300)]).astype(np.float32))
    for strict in (True, False):
        t = knn._d2_thresholds(radii, strict)
        base = (radii.double() ** 2).float()
        for steps in range(-3, 4):
            d2 = base.clone()
            for _ in range(abs(steps)):
                d2 = torch.nextafter(d2, torch.full_like(d2, np.inf if steps > 0 else 0.0))
            d = knn._sqrt_f32(d2)
            expected = (d < radii) if strict else (d <= radii)
            assert torch.equal(d2 < t, expected)


def test_prdc_progress_only_when_verbose(capsys):
    real, fake = _features('gauss', 60, 50, 8, seed=1)
    quiet = knn.compute_prdc(real, fake, tile=16)
    assert capsys.readouterr().err == ''
    loud = knn.compute_prdc(real, fake, tile=16, verbose=True)
    err = capsys.readouterr().err
    assert 'knn: real x fake tile 16/16' in err and quiet == loud  # the last tile always reports


def test_tf32_guard_restores_settings_and_never_swallows_errors():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('high')
    try:
        with pytest.raises(ZeroDivisionError):
            with knn._TF32Off():
                assert torch.get_float32_matmul_precision() == 'highest'
                1 / 0
        assert torch.get_float32_matmul_precision() == 'high'
    finally:
        torch.set_float32_matmul_precision(before)


def test_prdc_bad_input():
    real, fake = _features('gauss', 50, 50, 8, seed=0)
    fake[3, 2] = np.nan
    with pytest.raises(dnnlib.util.UserError, match='NaN'):
        knn.compute_prdc(real, fake)
    with pytest.raises(dnnlib.util.UserError, match='at least 6'):
        knn.compute_prdc(real[:5], real[:20])
    with pytest.raises(dnnlib.util.UserError, match='dimensions differ'):
        knn.compute_prdc(real, real[:, :4])

# ---------------------------------------------------------------------------------------------
# Detectors


class StandInDetector(torch.nn.Module):
    """Same call signature as NVIDIA's TorchScript detectors; row-independent arithmetic."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer('weight', torch.randn(48, dim, generator=gen) / 7)

    def forward(self, img: torch.Tensor, return_features: bool = False, resize_images: bool = True,
                return_lpips: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        x = img.to(torch.float32) / 255
        x = torch.nn.functional.adaptive_avg_pool2d(x, [4, 4]).flatten(1)
        f = (x[:, :, None] * self.weight[None]).sum(1)
        return torch.relu(f) if return_features else torch.softmax(f, dim=1)


def write_stand_in_detectors(folder, inception_dim=64, vgg_dim=96):
    """inception-2015-12-05.pt and vgg16.pt stand-ins (TorchScript) in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    torch.jit.save(torch.jit.script(StandInDetector(inception_dim, 1)), os.path.join(folder, 'inception-2015-12-05.pt'))
    torch.jit.save(torch.jit.script(StandInDetector(vgg_dim, 2)), os.path.join(folder, 'vgg16.pt'))
    return folder


@pytest.fixture(scope='module')
def detector_dir(tmp_path_factory):
    return write_stand_in_detectors(str(tmp_path_factory.mktemp('detectors')))


def test_detector_loads_from_path_file_url_and_folder(detector_dir):
    path = os.path.join(detector_dir, 'inception-2015-12-05.pt')
    img = torch.randint(0, 256, [3, 3, 32, 32], dtype=torch.uint8)
    expected = StandInDetector(64, 1)(img, return_features=True)
    for det in [detectors.load_detector(path),
                detectors.load_detector('file://' + path),
                detectors.load_detector('inception', detector_dir=detector_dir)]:
        torch.testing.assert_close(detectors.run_detector(det, img, return_features=True), expected, rtol=0, atol=0)
    gray = img[:, :1]
    torch.testing.assert_close(detectors.run_detector(detectors.load_detector(path), gray, return_features=True),
                               StandInDetector(64, 1)(gray.repeat(1, 3, 1, 1), return_features=True))
    vgg = detectors.load_detector('vgg16', detector_dir=detector_dir)
    assert vgg(img, resize_images=False, return_lpips=False, return_features=True).shape == (3, 96)
    assert detectors.detector_kwargs('inception') == dict(return_features=True)


def test_detector_missing_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv('SVS_OFFLINE', '1')
    with pytest.raises(dnnlib.util.UserError, match='--detector-dir'):
        detectors.load_detector('inception')
    with pytest.raises(dnnlib.util.UserError, match='no file inception-2015-12-05.pt'):
        detectors.load_detector('inception', detector_dir=str(tmp_path))
    with pytest.raises(dnnlib.util.UserError, match='no such file'):
        detectors.load_detector(str(tmp_path / 'missing.pt'))
    (tmp_path / 'vgg16.pt').write_bytes(b'not torchscript')
    with pytest.raises(dnnlib.util.UserError, match='not a TorchScript detector'):
        detectors.load_detector('vgg16', detector_dir=str(tmp_path))

# ---------------------------------------------------------------------------------------------
# Registry, reporting, curves


def test_registry_names():
    for name in ['fid50k_full', 'fid50k', 'fid10k', 'fid10k_full', 'kid50k_full', 'pr50k3_full', 'prdc50k_full', 'prdc50k',
                 'prdc10k', 'kid10k_full']:
        assert metric_main.is_valid_metric(name), name
    assert not metric_main.is_valid_metric('fid')
    assert set(metric_main.list_valid_metrics()) >= {'fid50k_full', 'prdc50k_full'}
    with pytest.raises(dnnlib.util.UserError, match='unknown metric'):
        metric_main.calc_metric('fid5k', G=object(), dataset_kwargs={})


def test_report_metric_and_plot_curves(tmp_path):
    runs = []
    for run, scale in [('00000-dense', 1.0), ('00001-svs', 0.7)]:
        run_dir = tmp_path / run
        for kimg in (0, 40, 80):
            result = dnnlib.EasyDict(results=dnnlib.EasyDict(fid50k_full=np.float64(100 * scale / (1 + kimg / 40))),
                                     metric='fid50k_full', total_time=1.5, total_time_str='2s', num_gpus=1)
            snapshot = run_dir / f'network-snapshot-{kimg:06d}.pkl'
            line = metric_main.report_metric(result, run_dir=str(run_dir), snapshot_pkl=str(snapshot))
            assert json.loads(line)['kimg'] == kimg
        runs.append(str(run_dir))
    lines = (tmp_path / '00000-dense' / 'metric-fid50k_full.jsonl').read_text().splitlines()
    assert len(lines) == 3
    record = json.loads(lines[1])
    assert record['snapshot_pkl'] == 'network-snapshot-000040.pkl' and record['results']['fid50k_full'] == 50.0
    kimg, values = plot_curves.read_metric_curve(runs[1], 'fid50k_full')
    assert kimg == [0, 40, 80] and values == pytest.approx([70, 35, 70 / 3])
    out = plot_curves.plot_metric_curves(runs, str(tmp_path / 'fid.png'))
    with open(out, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(dnnlib.util.UserError, match='no such file'):
        plot_curves.read_metric_curve(str(tmp_path), 'fid50k_full')
