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
