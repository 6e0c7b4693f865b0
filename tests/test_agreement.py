"""PSNR/SSIM of metrics/agreement.py against a direct per-window computation, and on generators."""
import math

import numpy as np
import pytest
import torch

from metrics import agreement


def direct_ssim(x, y, data_range=255.0, size=11, sigma=1.5):
    """SSIM of one HWC pair, window by window with explicit 2-D Gaussian weights (no convolution)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    r = (size - 1) / 2
    ii, jj = np.meshgrid(np.arange(size) - r, np.arange(size) - r, indexing='ij')
    w = np.exp(-(ii ** 2 + jj ** 2) / (2 * sigma ** 2))
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    h, wd, ch = x.shape
    values = []
    for k in range(ch):
        for top in range(h - size + 1):
            for left in range(wd - size + 1):
                px = x[top:top + size, left:left + size, k]
                py = y[top:top + size, left:left + size, k]
                mx, my = (w * px).sum(), (w * py).sum()
                vx = (w * (px - mx) ** 2).sum()
                vy = (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_and_psnr_match_direct_computation():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(3, 16, 14, 3)).astype(np.uint8)
    noise = rng.normal(0, 25, size=a.shape)
    b = np.clip(a.astype(np.float64) * 0.8 + 20 + noise, 0, 255).astype(np.uint8)
    got = agreement.ssim(a, b)
    want = [direct_ssim(a[i], b[i]) for i in range(len(a))]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert all(0 < v < 0.95 for v in got)

    mse = ((a.astype(np.float64) - b) ** 2).reshape(len(a), -1).mean(axis=1)
    np.testing.assert_allclose(agreement.psnr(a, b), 10 * np.log10(255.0 ** 2 / mse), rtol=1e-12)


def test_ssim_range_and_identity():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, size=(2, 12, 12, 3))
    # [0, 1] data with data_range 1 gives the same SSIM as the same data scaled to [0, 255].
    np.testing.assert_allclose(agreement.ssim(a, a[::-1], data_range=1.0), agreement.ssim(a * 255, a[::-1] * 255),
                               rtol=1e-10)
    np.testing.assert_allclose(agreement.ssim(a, a, data_range=1.0), 1.0, rtol=1e-12)
    assert np.all(np.isinf(agreement.psnr(a, a, data_range=1.0)))
    with pytest.raises(ValueError):
        agreement.ssim(a[:, :8, :8], a[:, :8, :8])
    with pytest.raises(ValueError):
        agreement.psnr(a, a[:1])


def test_generator_agreement_same_latents():
    from test_pruning import tiny_sg2
    teacher = tiny_sg2(channel_base=256, channel_max=16)
    same = agreement.generator_agreement(teacher, teacher, seeds=range(4))
    assert same.num_images == 4
    assert math.isinf(same.psnr['mean']) and same.ssim['mean'] == pytest.approx(1.0)

    other = tiny_sg2(channel_base=256, channel_max=16)
    with torch.no_grad():
        w = other.synthesis.b32.conv1.weight  # demodulated: a plain rescale would change nothing
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * w.std())
    diff = agreement.generator_agreement(teacher, other, seeds=range(4))
    assert 0 < diff.psnr['mean'] < 60 and diff.ssim['mean'] < 1
    # The numbers are those of the images generated from generate.py's latents for the same seeds.
    ref = agreement.generate_for_seeds(teacher, [0, 1, 2, 3])
    out = agreement.generate_for_seeds(other, [0, 1, 2, 3])
    assert diff.psnr['mean'] == pytest.approx(float(agreement.psnr(ref, out).mean()))
    assert diff.ssim['mean'] == pytest.approx(float(agreement.ssim(ref, out).mean()))
