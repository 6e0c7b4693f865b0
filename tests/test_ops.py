"""torch_utils.ops against direct, independent computations on tiny inputs."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import bias_act
from torch_utils.ops import conv2d_gradfix
from torch_utils.ops import conv2d_resample
from torch_utils.ops import fma
from torch_utils.ops import grid_sample_gradfix
from torch_utils.ops import upfirdn2d

# ----------------------------------------------------------------------------------------------
# Reference implementations written the slow, obvious way.


def ref_upfirdn2d(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip_filter=False, gain=1):
    """Zero insertion, explicit pad/crop, full 2-D convolution (float64), subsampling."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    x = x.double()
    u = torch.zeros([n, c, h * upy, w * upx], dtype=torch.float64)
    u[:, :, ::upy, ::upx] = x
    u = F.pad(u, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    u = u[:, :, max(-py0, 0):u.shape[2] - max(-py1, 0), max(-px0, 0):u.shape[3] - max(-px1, 0)]
    f = f.double()
    f2 = torch.outer(f, f) if f.ndim == 1 else f
    f2 = f2 * gain
    kernel = f2 if flip_filter else f2.flip([0, 1])  # conv2d correlates; a convolution flips
    y = F.conv2d(u, kernel[None, None].repeat(c, 1, 1, 1), groups=c)
    return y[:, :, ::downy, ::downx]


def ref_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    """Upsample (zero insertion + filter), pad, convolve, filter + downsample, in float64."""
    fw = fh = f.shape[-1]
    px0, px1, py0, py1 = padding
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    one = torch.ones([1, 1])
    x = ref_upfirdn2d(x, f if up > 1 else one, up=(up, up), pad=(px0, px1, py0, py1), flip_filter=flip_filter,
                      gain=up ** 2 if up > 1 else 1)
    x = F.conv2d(x, (w if flip_weight else w.flip([2, 3])).double(), groups=groups)
    if down > 1:
        x = ref_upfirdn2d(x, f, down=(down, down), flip_filter=flip_filter)
    return x

# ----------------------------------------------------------------------------------------------
# upfirdn2d.


def test_setup_filter():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    torch.testing.assert_close(f, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    assert upfirdn2d.setup_filter([1] * 8).shape == (8,)                        # long 1-D filters stay separable
    torch.testing.assert_close(upfirdn2d.setup_filter([1, 2], gain=4).sum(), torch.tensor(4.0))
    torch.testing.assert_close(upfirdn2d.setup_filter([1, 2, 3], flip_filter=True, separable=True),
                               torch.tensor([3., 2, 1]) / 6)
    assert upfirdn2d.setup_filter(None).shape == (1, 1)


@pytest.mark.parametrize('filter_shape', [(4,), (4, 4), (3, 2), (1, 1)])
def test_upfirdn2d_matches_reference(filter_shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([2, 3, 9, 8], generator=gen, dtype=torch.float64)
    f = torch.randn(filter_shape, generator=gen)
    cases = itertools.product([1, 2, [2, 3]], [1, 2, [1, 2]], [0, 1, [2, -1], [3, 1, -2, 4]], [False, True])
    for up, down, padding, flip in cases:
        ours = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=1.7)
        sx, sy = upfirdn2d._parse_scaling(up)
        dx, dy = upfirdn2d._parse_scaling(down)
        ref = ref_upfirdn2d(x, f, (sx, sy), (dx, dy), upfirdn2d._parse_padding(padding), flip, gain=1.7)
        assert ours.shape == ref.shape, (up, down, padding)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_resampling_helpers():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn([2, 3, 8, 8], dtype=torch.float64)
    assert upfirdn2d.upsample2d(x, f).shape == (2, 3, 16, 16)
    assert upfirdn2d.downsample2d(x, f).shape == (2, 3, 4, 4)
    assert upfirdn2d.filter2d(x, f).shape == (2, 3, 8, 8)
    torch.testing.assert_close(upfirdn2d.upsample2d(x, f),
                               ref_upfirdn2d(x, f, up=(2, 2), pad=(2, 1, 2, 1), gain=4))
    torch.testing.assert_close(upfirdn2d.downsample2d(x, f), ref_upfirdn2d(x, f, down=(2, 2), pad=(1, 1, 1, 1)))
    # A constant image keeps its value away from the borders (unit DC gain).
    ones = torch.ones([1, 1, 8, 8], dtype=torch.float64)
    torch.testing.assert_close(upfirdn2d.upsample2d(ones, f)[..., 2:-2, 2:-2], torch.ones([1, 1, 12, 12], dtype=torch.float64))
    torch.testing.assert_close(upfirdn2d.downsample2d(ones, f)[..., 1:-1, 1:-1], torch.ones([1, 1, 2, 2], dtype=torch.float64))


def test_upfirdn2d_float16_and_channels_last():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn([2, 4, 8, 8])
    ref = upfirdn2d.upsample2d(x, f)
    torch.testing.assert_close(upfirdn2d.upsample2d(x.half(), f).float(), ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(upfirdn2d.upsample2d(x.contiguous(memory_format=torch.channels_last), f), ref)


def test_upfirdn2d_gradients_to_second_order():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn([1, 2, 5, 5], dtype=torch.float64, requires_grad=True)
    for kwargs in [dict(up=2, padding=[2, 1, 2, 1]), dict(down=2, padding=1), dict(up=2, down=2, padding=[1, 2, 0, 3])]:
        fn = lambda x: upfirdn2d.upfirdn2d(x, f, gain=2, **kwargs)  # noqa: E731
        assert torch.autograd.gradcheck(fn, [x])
        assert torch.autograd.gradgradcheck(fn, [x])

# ----------------------------------------------------------------------------------------------
# bias_act.


def _ref_act(name, x, alpha):
    return {
        'linear': lambda: x,
        'relu': lambda: torch.where(x > 0, x, torch.zeros_like(x)),
        'lrelu': lambda: torch.where(x > 0, x, x * alpha),
        'tanh': lambda: (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x)),
        'sigmoid': lambda: 1 / (1 + torch.exp(-x)),
        'elu': lambda: torch.where(x > 0, x, torch.exp(x) - 1),
        'selu': lambda: 1.0507009873554805 * torch.where(x > 0, x, 1.6732632423543772 * (torch.exp(x) - 1)),
        'softplus': lambda: torch.log1p(torch.exp(x)),
        'swish': lambda: x / (1 + torch.exp(-x)),
    }[name]()


@pytest.mark.parametrize('act', sorted(bias_act.activation_funcs))
def test_bias_act_matches_formula(act):
    x = torch.randn([3, 5, 4, 4], dtype=torch.float64) * 3
    b = torch.randn([5], dtype=torch.float64)
    spec = bias_act.activation_funcs[act]
    # Defaults: the activation's own alpha and gain, no clamp.
    ref = _ref_act(act, x + b.reshape(1, -1, 1, 1), spec.def_alpha) * spec.def_gain
    torch.testing.assert_close(bias_act.bias_act(x, b, act=act), ref)
    # Explicit alpha, gain, clamp and a bias along another dimension.
    ref = (_ref_act(act, x + b[:4].reshape(1, 1, 1, 4), 0.3) * 1.5).clamp(-2, 2)
    torch.testing.assert_close(bias_act.bias_act(x, b[:4], dim=3, act=act, alpha=0.3, gain=1.5, clamp=2), ref)


def test_bias_act_does_not_modify_its_input():
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            x = torch.randn([2, 3, 4, 4]) * 10
            x_copy = x.clone()
            bias_act.bias_act(x, None, act='lrelu', gain=2, clamp=1)
            bias_act.bias_act(x, None, act='linear', gain=2, clamp=1)
            bias_act.bias_act(x, torch.ones(3), act='lrelu', gain=2, clamp=1)
            assert torch.equal(x, x_copy)


def test_bias_act_float16_clamp():
    x = torch.randn([2, 8, 4, 4]) * 100
    b = torch.randn([8])
    out = bias_act.bias_act(x.half(), b, act='lrelu', clamp=256 * np.sqrt(2) / 2)
    assert out.dtype == torch.float16
    ref = (F.leaky_relu(x + b.reshape(1, -1, 1, 1), 0.2) * np.sqrt(2)).clamp(-181.02, 181.02)
    torch.testing.assert_close(out.float(), ref, rtol=2e-3, atol=0.1)
    assert out.abs().max() <= 181.1


def test_bias_act_gradients_to_second_order():
    # Inputs away from the kinks (0 for lrelu, +-clamp) so finite differences are valid.
    x = (torch.rand([2, 3, 3, 3], dtype=torch.float64) + 0.1) * torch.sign(torch.randn([2, 3, 3, 3], dtype=torch.float64))
    x.requires_grad_(True)
    b = torch.zeros([3], dtype=torch.float64, requires_grad=True)
    for act, clamp in [('lrelu', None), ('lrelu', 0.5), ('tanh', None), ('swish', 1.0), ('softplus', None)]:
        fn = lambda x, b: bias_act.bias_act(x, b, act=act, gain=1.3, clamp=clamp)  # noqa: E731
        assert torch.autograd.gradcheck(fn, [x, b])
        assert torch.autograd.gradgradcheck(fn, [x, b])
    # The second derivative of a smooth activation is non-zero (tanh'' = -2 tanh (1 - tanh^2)).
    y = bias_act.bias_act(x, b, act='tanh')
    g, = torch.autograd.grad(y.sum(), x, create_graph=True)
    g2, = torch.autograd.grad(g.sum(), x)
    t = torch.tanh(x.detach())
    torch.testing.assert_close(g2, -2 * t * (1 - t * t))

# ----------------------------------------------------------------------------------------------
# conv2d_resample.


def test_conv2d_resample_matches_reference():
    gen = torch.Generator().manual_seed(1)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    cases = itertools.product([1, 3], [1, 2], [1, 2], [[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 2, 1]], [1, 2], [True, False], [False, True])
    for k, up, down, padding, groups, flip_weight, flip_filter in cases:
        x = torch.randn([2, 4, 8, 8], generator=gen, dtype=torch.float64)
        w = torch.randn([6, 4 // groups, k, k], generator=gen, dtype=torch.float64)
        ours = conv2d_resample.conv2d_resample(x, w, f, up=up, down=down, padding=padding, groups=groups,
                                               flip_weight=flip_weight, flip_filter=flip_filter)
        ref = ref_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_conv2d_resample_gradients_to_second_order():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn([2, 4, 4, 4], dtype=torch.float64, requires_grad=True)
    w = torch.randn([4, 2, 3, 3], dtype=torch.float64, requires_grad=True)
    for up, down in [(2, 1), (1, 2)]:
        fn = lambda x, w: conv2d_resample.conv2d_resample(x, w, f, up=up, down=down, padding=1, groups=2, flip_weight=(up == 1))  # noqa: E731
        assert torch.autograd.gradcheck(fn, [x, w])
        assert torch.autograd.gradgradcheck(fn, [x, w])


def test_conv2d_resample_float16():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn([2, 4, 8, 8])
    w = torch.randn([5, 4, 3, 3]) / 6
    for up, down in [(1, 1), (2, 1), (1, 2)]:
        ref = conv2d_resample.conv2d_resample(x, w, f, up=up, down=down, padding=1)
        out = conv2d_resample.conv2d_resample(x.half(), w.half(), f, up=up, down=down, padding=1)
        assert out.dtype == torch.float16
        torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)

# ----------------------------------------------------------------------------------------------
# fma and the compatibility shims.


def test_fma():
    a = torch.randn([2, 3, 1, 1], dtype=torch.float64, requires_grad=True)
    b = torch.randn([2, 3, 4, 4], dtype=torch.float64, requires_grad=True)
    c = torch.randn([1, 1, 4, 4], dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(fma.fma(a, b, c), a * b + c)
    assert torch.autograd.gradcheck(fma.fma, [a, b, c])
    assert torch.autograd.gradgradcheck(fma.fma, [a, b, c])


def test_gradfix_shims_are_plain_torch():
    x = torch.randn([1, 2, 5, 5])
    w = torch.randn([3, 2, 3, 3])
    torch.testing.assert_close(conv2d_gradfix.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1))
    torch.testing.assert_close(conv2d_gradfix.conv_transpose2d(x, w.transpose(0, 1), stride=2),
                               F.conv_transpose2d(x, w.transpose(0, 1), stride=2))
    with conv2d_gradfix.no_weight_gradients():
        assert conv2d_gradfix.weight_gradients_disabled
    assert not conv2d_gradfix.weight_gradients_disabled
    grid = torch.rand([1, 4, 4, 2]) * 2 - 1
    torch.testing.assert_close(grid_sample_gradfix.grid_sample(x, grid),
                               F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False))
