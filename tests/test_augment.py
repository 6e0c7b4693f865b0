"""AugmentPipe: identity at p=0, the transforms it claims, gradients of any order, determinism,
and the ADA update rule."""
import math
import pickle

import numpy as np
import pytest
import torch

from training import augment
from training.augment import AugmentPipe, adjust_p, augpipe_specs


def smooth_images(batch=8, channels=3, res=32, seed=0):
    """Low-frequency images: resampling errors stay small, so transforms can be compared exactly-ish."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn([batch, channels, 4, 4], generator=g)
    return torch.nn.functional.interpolate(coarse, size=res, mode='bicubic', align_corners=False) * 0.5


def make_pipe(spec, p):
    pipe = AugmentPipe(**augpipe_specs[spec]) if isinstance(spec, str) else AugmentPipe(**spec)
    pipe.p.fill_(p)
    return pipe


def test_specs_and_buffers():
    assert set(augpipe_specs) == {'blit', 'geom', 'color', 'filter', 'noise', 'cutout', 'bg', 'bgc', 'bgcf', 'bgcfn', 'bgcfnc'}
    assert augpipe_specs['bgc'] == {**augpipe_specs['bg'], **augpipe_specs['color']}
    pipe = AugmentPipe(**augpipe_specs['bgc'])
    assert [name for name, _ in pipe.named_buffers()] == ['p', 'Hz_geom', 'Hz_fbank']
    assert float(pipe.p) == 0 and pipe.Hz_geom.shape == (12,) and pipe.Hz_fbank.shape == (4, 43)
    # The filter bank splits the spectrum: its bands add up to a unit impulse.
    total = pipe.Hz_fbank.sum(dim=0)
    assert abs(float(total[21]) - 1) < 1e-6 and float(total.abs().sum()) - abs(float(total[21])) < 1e-6


def test_p_zero_is_exact_identity():
    x = torch.randn([4, 3, 32, 32])
    for spec in ('bgc', 'bgcfnc'):
        assert torch.equal(make_pipe(spec, 0)(x), x)


def test_identity_transform_round_trip_is_near_exact():
    # Up- then downsampling with the mirrored orthogonal wavelet is a perfect reconstruction.
    pipe = AugmentPipe(xflip=1)
    x = torch.randn([2, 3, 32, 32])
    y = pipe._apply_geometry(x, torch.eye(3).expand(2, 3, 3))
    assert (y - x).abs().max() < 1e-4


def test_xflip_p1_flips_about_half():
    x = smooth_images(16)
    torch.manual_seed(0)
    y = make_pipe(dict(xflip=1), 1)(x)
    err_same = (y - x).abs().amax(dim=(1, 2, 3))
    err_flip = (y - x.flip(3)).abs().amax(dim=(1, 2, 3))
    flipped = err_flip < 0.1
    assert torch.all(flipped | (err_same < 1e-4))
    assert 2 <= int(flipped.sum()) <= 14  # each image flipped with probability 1/2
    assert torch.all((err_same > 0.1) | ~flipped)


def test_rotate90_p1_gives_quarter_turns():
    x = smooth_images(16)
    torch.manual_seed(1)
    y = make_pipe(dict(rotate90=1), 1)(x)
    for i in range(16):
        errs = [float((y[i] - torch.rot90(x[i], k, dims=(1, 2))).abs().max()) for k in range(4)]
        # Within NVIDIA's design tolerance: the not-quite-symmetric sym6 filter shifts a
        # mirrored/rotated image by about 0.1 pixel.
        errs.sort()
        assert errs[0] < 0.1 and errs[1] > 10 * errs[0], errs


def test_integer_translation_shifts_pixels():
    pipe = AugmentPipe(xint=1)
    x = torch.randn([2, 3, 32, 32])
    y = pipe._apply_geometry(x, augment.translate2d_inv(torch.tensor([3.0, 3.0]), torch.tensor([0.0, -2.0])))
    assert (y[0, :, :, 3:] - x[0, :, :, :-3]).abs().max() < 1e-4
    assert (y[1, :, :-2, 3:] - x[1, :, 2:, :-3]).abs().max() < 1e-4


def test_draw_probabilities_follow_p():
    pipe = make_pipe(dict(xflip=1), 0.4)
    torch.manual_seed(0)
    G_inv, _ = pipe._draw_geometry(20000, 32, 32, torch.device('cpu'))
    flip_rate = float((G_inv[:, 0, 0] < 0).float().mean())
    assert abs(flip_rate - 0.4 * 0.5) < 0.015


def test_brightness_and_contrast_are_what_they_say():
    x = torch.rand([6, 3, 16, 16])
    torch.manual_seed(0)
    y = make_pipe(dict(brightness=1), 1)(x)
    offset = y - x  # a per-image constant, equal in every channel
    assert torch.allclose(offset, offset[:, :1, :1, :1].expand_as(offset), atol=1e-6)
    assert offset[:, 0, 0, 0].abs().min() > 0

    torch.manual_seed(0)
    y = make_pipe(dict(contrast=1), 1)(x)
    ratio = y / x
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio), rtol=1e-4)


def test_color_transforms_keep_shape_dtype_and_luma_axis():
    x = torch.rand([6, 3, 16, 16])
    for spec in (dict(lumaflip=1), dict(hue=1), dict(saturation=1), 'color'):
        torch.manual_seed(2)
        y = make_pipe(spec, 1)(x)
        assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
        assert not torch.equal(y, x)
    # Hue rotation and saturation act around the grey axis: a grey image stays put.
    grey = torch.rand([6, 1, 16, 16]).expand(6, 3, 16, 16)
    for spec in (dict(hue=1), dict(saturation=1)):
        torch.manual_seed(3)
        assert torch.allclose(make_pipe(spec, 1)(grey), grey, atol=1e-5)


def test_grayscale_images():
    x = torch.rand([4, 1, 32, 32])
    torch.manual_seed(0)
    y = make_pipe('bgc', 1)(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_filter_noise_cutout_change_images():
    x = smooth_images(4)
    for spec in ('filter', 'noise', 'cutout'):
        torch.manual_seed(0)
        y = make_pipe(spec, 1)(x)
        assert y.shape == x.shape and not torch.equal(y, x)
    torch.manual_seed(0)
    y = make_pipe('cutout', 1)(x)
    zeroed = (y == 0).float().mean(dim=(1, 2, 3))
    assert torch.all((zeroed > 0.1) & (zeroed < 0.4))  # a 0.5 x 0.5 square, partly clipped at the border


def test_deterministic_given_seed():
    x = torch.randn([4, 3, 32, 32])
    pipe = make_pipe('bgcfnc', 0.7)
    torch.manual_seed(123)
    a = pipe(x)
    torch.manual_seed(123)
    b = pipe(x)
    torch.manual_seed(124)
    c = pipe(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gradients_and_double_backward_r1():
    # R1 through augmented reals: grad of D(aug(x)) w.r.t. x, then backward of its norm.
    torch.manual_seed(0)
    x = smooth_images(4).requires_grad_(True)
    conv = torch.nn.Conv2d(3, 4, 3)
    pipe = make_pipe('bgcfnc', 1)
    logits = conv(pipe(x)).square().mean(dim=(1, 2, 3))
    (grad_x,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    penalty = grad_x.square().sum()
    penalty.backward()
    assert torch.isfinite(grad_x).all() and grad_x.abs().sum() > 0
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0


def test_gradcheck_small():
    # Exact first and second derivatives (double precision, fixed transforms via a fixed seed).
    pipe = make_pipe("bgc", 1)
    x = torch.randn([2, 3, 8, 8], dtype=torch.float64, requires_grad=True)

    def fn(inp):
        torch.manual_seed(5)
        return pipe(inp)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_pickle_keeps_state():
    pipe = make_pipe('bgc', 0.25)
    clone = pickle.loads(pickle.dumps(pipe))
    assert float(clone.p) == 0.25 and clone.init_kwargs == augpipe_specs['bgc']
    x = torch.randn([2, 3, 32, 32])
    torch.manual_seed(0)
    a = pipe(x)
    torch.manual_seed(0)
    assert torch.equal(clone(x), a)


def test_adjust_p_rule():
    pipe = AugmentPipe(**augpipe_specs['bgc'])
    step = 64 * 4 / (500 * 1000)
    assert adjust_p(pipe, 0.9, batch_size=64, interval=4, ada_target=0.6, ada_kimg=500) == pytest.approx(step)
    assert adjust_p(pipe, 0.9, 64, 4, 0.6, 500) == pytest.approx(2 * step)
    assert adjust_p(pipe, 0.1, 64, 4, 0.6, 500) == pytest.approx(step)
    assert adjust_p(pipe, 0.6, 64, 4, 0.6, 500) == pytest.approx(step)   # on target: no change
    assert adjust_p(pipe, math.nan, 64, 4, 0.6, 500) == pytest.approx(step)  # no statistics yet
    for _ in range(3):
        adjust_p(pipe, -1.0, 64, 4, 0.6, 500)
    assert float(pipe.p) == 0  # clamped at zero
    assert adjust_p(pipe, 1.0, 32, 4, 0.6, 100) == pytest.approx(32 * 4 / (100 * 1000))
    assert np.isclose(float(pipe.p), 32 * 4 / (100 * 1000))


# ---- Statistics of every drawn parameter, and the matrices against closed forms ------------------
# NVIDIA's defaults (stylegan2-ada-pytorch augment.py) are the oracle for the spreads; the
# matrices are checked against closed forms written here in NumPy / scipy.

N_DRAWS, P = 40000, 0.6
CPU = torch.device('cpu')


def _geometry(seed=0, **kw):
    torch.manual_seed(seed)
    G_inv, _ = make_pipe(kw, P)._draw_geometry(N_DRAWS, 32, 32, CPU)
    return G_inv.double().numpy()


def _color(seed=0, **kw):
    torch.manual_seed(seed)
    C, _ = make_pipe(kw, P)._draw_color(N_DRAWS, 3, CPU)
    return C.double().numpy()


def _rate(mask):
    return float(np.mean(mask))


def _check_rate(mask, expected):
    # Binomial standard error at N_DRAWS is about 0.0025; 0.012 is ~5 sigma.
    assert abs(_rate(mask) - expected) < 0.012, (_rate(mask), expected)


def _check_std(values, expected, rel=0.03):
    assert abs(np.std(values) / expected - 1) < rel, (np.std(values), expected)
    assert abs(np.mean(values)) < 4 * expected / np.sqrt(len(values)) + 1e-9


def test_draw_xflip_rotate90_xint_statistics():
    G = _geometry(xflip=1)
    _check_rate(G[:, 0, 0] < 0, P / 2)
    np.testing.assert_allclose(np.abs(G[:, 0, 0]), 1, atol=1e-6)
    G = _geometry(rotate90=1)
    quarter = np.round(np.arctan2(G[:, 1, 0], G[:, 0, 0]) / (np.pi / 2)) % 4
    counts = np.bincount(quarter.astype(int), minlength=4) / N_DRAWS
    np.testing.assert_allclose(counts, [1 - P + P / 4, P / 4, P / 4, P / 4], atol=0.012)
    G = _geometry(xint=1)
    t = -G[:, :2, 2] / 32  # translate2d_inv: the matrix holds minus the shift, in pixels
    assert np.abs(G[:, :2, 2]).max() <= 4 and np.allclose(G[:, :2, 2], np.round(G[:, :2, 2]))  # |shift| <= 0.125·32, integer
    # Chosen with probability p (both axes together), uniform shifts: round(u·4) = 0 with prob 1/8.
    _check_rate(np.any(t != 0, axis=1), P * (1 - (1 / 8) ** 2))
    _check_rate(t[:, 0] != 0, P * 7 / 8)


def test_draw_scale_aniso_xfrac_statistics():
    G = _geometry(scale=1)
    assert np.allclose(G[:, 0, 1], 0) and np.allclose(G[:, 0, 0], G[:, 1, 1]) and np.allclose(G[:, :2, 2], 0)
    log_s = -np.log2(G[:, 0, 0])  # G_inv = diag(1/s, 1/s)
    chosen = np.abs(log_s) > 0
    _check_rate(chosen, P)
    _check_std(log_s[chosen], 0.2)   # scale_std = 0.2 (log2)
    G = _geometry(aniso=1)
    assert np.allclose(G[:, 0, 0] * G[:, 1, 1], 1, atol=1e-5)  # diag(1/s, s)
    log_s = -np.log2(G[:, 0, 0])
    chosen = np.abs(log_s) > 0
    _check_rate(chosen, P)
    _check_std(log_s[chosen], 0.2)   # aniso_std = 0.2 (log2)
    G = _geometry(xfrac=1)
    t = -G[:, :2, 2] / 32
    chosen = np.any(t != 0, axis=1)
    _check_rate(chosen, P)
    _check_std(t[chosen].ravel(), 0.125)  # xfrac_std = 0.125 of the image size


def test_draw_rotation_statistics():
    G = _geometry(rotate=1)
    R = G[:, :2, :2]
    np.testing.assert_allclose(np.einsum('nij,nkj->nik', R, R), np.broadcast_to(np.eye(2), R.shape), atol=1e-5)
    theta = np.arctan2(G[:, 1, 0], G[:, 0, 0])
    rotated = np.abs(theta) > 1e-6
    # Two rotations, each with probability 1 - sqrt(1 - p): any rotation with probability p.
    _check_rate(rotated, P)
    # One rotation is uniform on (-pi, pi]; with two, the sum wraps and is uniform too.
    hist = np.histogram(theta[rotated], bins=8, range=(-np.pi, np.pi))[0] / rotated.sum()
    np.testing.assert_allclose(hist, 1 / 8, atol=0.012)


def test_draw_color_statistics_and_matrices():
    luma = np.array([1, 1, 1, 0]) / np.sqrt(3)
    L = np.outer(luma, luma)
    eye = np.eye(4)
    C = _color(brightness=1)
    b = C[:, 0, 3]
    expected = np.broadcast_to(eye, C.shape).copy()
    expected[:, :3, 3] = b[:, None]  # translate3d(b, b, b)
    np.testing.assert_allclose(C, expected, atol=1e-6)
    _check_rate(b != 0, P)
    _check_std(b[b != 0], 0.2)  # brightness_std = 0.2

    C = _color(contrast=1)
    c = C[:, 0, 0]
    np.testing.assert_allclose(C, np.einsum('n,ij->nij', c, np.diag([1, 1, 1, 0])) + np.diag([0, 0, 0, 1]), atol=1e-6)
    _check_rate(c != 1, P)
    _check_std(np.log2(c[c != 1]), 0.5)  # contrast_std = 0.5 (log2)

    C = _color(lumaflip=1)
    flipped = np.abs(C - (eye - 2 * L)).max(axis=(1, 2)) < 1e-6
    assert np.all(flipped | (np.abs(C - eye).max(axis=(1, 2)) < 1e-6))
    _check_rate(flipped, P / 2)

    C = _color(saturation=1)
    s = (np.trace(C[:, :3, :3], axis1=1, axis2=2) - 1) / 2  # trace(L + (I - L)s) over RGB = 1 + 2s
    np.testing.assert_allclose(C, L + np.einsum('n,ij->nij', s, eye - L), atol=1e-5)
    _check_rate(np.abs(s - 1) > 1e-6, P)
    _check_std(np.log2(s[np.abs(s - 1) > 1e-6]), 1.0)  # saturation_std = 1 (log2)

    from scipy.spatial.transform import Rotation
    C = _color(hue=1)
    axis = np.ones(3) / np.sqrt(3)
    R = C[:, :3, :3]
    sin = (R[:, 2, 1] - R[:, 1, 2]) / (2 * axis[0])
    cos = (np.trace(R, axis1=1, axis2=2) - 1) / 2
    theta = np.arctan2(sin, cos)
    some = np.flatnonzero(np.abs(theta) > 1e-6)[:50]
    np.testing.assert_allclose(R[some], Rotation.from_rotvec(theta[some, None] * axis).as_matrix(), atol=1e-5)
    rotated = np.abs(theta) > 1e-6
    _check_rate(rotated, P)
    hist = np.histogram(theta[rotated], bins=8, range=(-np.pi, np.pi))[0] / rotated.sum()
    np.testing.assert_allclose(hist, 1 / 8, atol=0.012)  # hue_max = 1: uniform on (-pi, pi)


def test_draw_filter_noise_cutout_statistics():
    pipe = make_pipe(dict(imgfilter=1), P)
    torch.manual_seed(0)
    g, _ = pipe._draw_filter(N_DRAWS, CPU)
    _check_rate(np.all(np.abs(g.double().numpy() - 1) < 1e-6, axis=1), (1 - P) ** 4)  # each band with prob p
    # One band only (the others at strength 0): its gain a = exp2(N(0, 1)) relative to the others,
    # the whole vector renormalised to the expected power [10, 1, 1, 1] / 13 of natural images.
    pipe = make_pipe(dict(imgfilter=1, imgfilter_bands=[0, 0, 1, 0]), P)
    torch.manual_seed(0)
    g, _ = pipe._draw_filter(N_DRAWS, CPU)
    g = g.double().numpy()
    power = np.array([10, 1, 1, 1]) / 13
    np.testing.assert_allclose((g * g) @ power, 1, rtol=1e-5)
    np.testing.assert_allclose(g[:, [1, 3]], g[:, [0, 0]], rtol=1e-6)
    log_a = np.log2(g[:, 2] / g[:, 0])
    chosen = np.abs(log_a) > 1e-6
    _check_rate(chosen, P)
    _check_std(log_a[chosen], 1.0)  # imgfilter_std = 1 (log2)

    pipe = make_pipe(dict(noise=1), P)
    torch.manual_seed(0)
    noise, _ = pipe._draw_noise([N_DRAWS, 3, 8, 8], CPU)
    sigma = noise.double().numpy().reshape(N_DRAWS, -1).std(axis=1)
    chosen = sigma > 0
    _check_rate(chosen, P)
    # sigma = |N(0, noise_std)|: E[sigma] = 0.1·sqrt(2/pi) (up to the per-image sampling error).
    assert abs(sigma[chosen].mean() / (0.1 * np.sqrt(2 / np.pi)) - 1) < 0.03

    pipe = make_pipe(dict(cutout=1), P)
    torch.manual_seed(0)
    (size, center), _ = pipe._draw_cutout(N_DRAWS, CPU)
    size, center = size.numpy().reshape(N_DRAWS, 2), center.numpy().reshape(N_DRAWS, 2)
    chosen = size[:, 0] > 0
    _check_rate(chosen, P)
    assert np.all(size[chosen] == 0.5) and np.all(size[~chosen] == 0)  # cutout_size = 0.5
    assert center.min() >= 0 and center.max() <= 1 and abs(center.mean() - 0.5) < 0.01


def test_matrix_helpers_closed_forms():
    th = torch.tensor([0.3, -1.2])
    c, s = np.cos(th.numpy()), np.sin(th.numpy())
    np.testing.assert_allclose(augment.rotate2d(th).numpy()[:, :2, :2], np.stack([[c, -s], [s, c]]).transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_allclose(augment.rotate2d_inv(th).numpy() @ augment.rotate2d(th).numpy(), np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-6)
    np.testing.assert_allclose(augment.translate2d(2.0, -3.0).numpy(), [[1, 0, 2], [0, 1, -3], [0, 0, 1]])
    np.testing.assert_allclose(augment.scale2d_inv(2.0, 4.0).numpy(), np.diag([0.5, 0.25, 1]))
    np.testing.assert_allclose(augment.translate3d(1.0, 2.0, 3.0).numpy()[:3, 3], [1, 2, 3])
    np.testing.assert_allclose(augment.scale3d(2.0, 3.0, 4.0).numpy(), np.diag([2, 3, 4, 1]))
    from scipy.spatial.transform import Rotation
    axis = np.array([1.0, 2.0, 2.0]) / 3
    np.testing.assert_allclose(augment.rotate3d(axis, 0.7).numpy()[:3, :3], Rotation.from_rotvec(0.7 * axis).as_matrix(), atol=1e-6)
