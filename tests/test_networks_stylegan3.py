"""StyleGAN3 generator and filtered leaky ReLU against NVIDIA's official outputs and a direct computation."""
import json
import pickle

import numpy as np
import pytest
import scipy.signal
import torch

from torch_utils.ops import filtered_lrelu
from training import networks_stylegan3

SG3_FIXTURES = ['sg3_stylegan3t_g32', 'sg3_stylegan3r_g32']

#----------------------------------------------------------------------------
# Fixtures from the official code.


def _load_fixture(fixtures_dir, name):
    data = np.load(fixtures_dir / f'{name}.npz')
    meta = json.loads(str(data['meta']))
    return meta, {key: data[key] for key in data.files if key != 'meta'}


def _tensors(arrays, prefix):
    return {key[len(prefix):]: torch.from_numpy(np.array(value)) for key, value in arrays.items() if key.startswith(prefix)}


def _build_official_G(fixtures_dir, name):
    meta, arrays = _load_fixture(fixtures_dir, name)
    assert meta['G_class'] == 'Generator'
    G = networks_stylegan3.Generator(**meta['G_init_kwargs']).requires_grad_(False)
    official = _tensors(arrays, 'G_ema/')
    ours = G.state_dict()
    assert sorted(ours) == sorted(official), 'state_dict names differ from the official ones'
    for key, value in official.items():
        assert ours[key].shape == value.shape, key
    G.load_state_dict(official, strict=True)
    return G, meta, arrays


@pytest.fixture(scope='module', params=SG3_FIXTURES)
def official(request, fixtures_dir):
    return (request.param,) + _build_official_G(fixtures_dir, request.param)


def _close(ours, ref, tol=1e-5):
    np.testing.assert_allclose(ours.detach().numpy(), ref, rtol=tol, atol=tol)


def test_official_mapping(official):
    _name, G, _meta, io = official
    z, c = torch.from_numpy(io['io/z']), torch.from_numpy(io['io/c'])
    with torch.no_grad():
        _close(G.mapping(z, c, truncation_psi=1), io['io/ws'])
        _close(G.mapping(z, c, truncation_psi=0.7), io['io/ws_psi0.7'])


def test_official_images(official):
    name, G, meta, io = official
    z, c = torch.from_numpy(io['io/z']), torch.from_numpy(io['io/c'])
    with torch.no_grad():
        _close(G(z, c, truncation_psi=1, noise_mode='const'), io['io/img'])
        _close(G(z, c, truncation_psi=0.7, noise_mode='const'), io['io/img_psi0.7'])

        # Rotation + translation through the input transform, as the official generator script does.
        G.synthesis.input.transform.copy_(torch.from_numpy(io['io/input_transform']))
        try:
            _close(G(z, c, truncation_psi=1, noise_mode='const'), io['io/img_transformed'])
        finally:
            G.synthesis.input.transform.copy_(torch.eye(3))

        # The NVIDIA order of operations (grouped modulated conv, reference filtered_lrelu) agrees too.
        ws = torch.from_numpy(io['io/ws'])
        with _nvidia_order():
            _close(G.synthesis(ws, noise_mode='const'), io['io/img'])
    assert G.num_ws == io['io/ws'].shape[1]
    assert G.synthesis.layer_channels == G.synthesis.dense_layer_channels


def test_official_discriminator(official):
    networks_stylegan2 = pytest.importorskip('training.networks_stylegan2')
    _name, _G, meta, io = official
    D = getattr(networks_stylegan2, meta['D_class'])(**meta['D_init_kwargs']).requires_grad_(False)
    D.load_state_dict(_tensors(io, 'D/'), strict=True)
    c = torch.from_numpy(io['io/c'])
    with torch.no_grad():
        _close(D(torch.from_numpy(io['io/img']), c), io['io/D_fake'], tol=1e-4)
        _close(D(torch.from_numpy(io['io/real']), c), io['io/D_real'], tol=1e-4)


class _nvidia_order:
    """Run the generator with NVIDIA's arrangement of the ops (for cross-checking the fast paths)."""

    def __enter__(self):
        self.saved = (networks_stylegan3._modulated_conv2d_shared, filtered_lrelu._filtered_lrelu_fast)
        networks_stylegan3._modulated_conv2d_shared = networks_stylegan3._modulated_conv2d_grouped
        filtered_lrelu._filtered_lrelu_fast = filtered_lrelu._filtered_lrelu_ref

    def __exit__(self, *exc):
        networks_stylegan3._modulated_conv2d_shared, filtered_lrelu._filtered_lrelu_fast = self.saved

#----------------------------------------------------------------------------
# Per-layer widths (pruned students).


def _tiny_kwargs(**extra):
    return dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
                channel_base=256, channel_max=16, num_layers=4, num_critical=1, margin_size=2,
                num_fp16_res=0, conv_clamp=None, **extra)


def test_layer_channels_widths_and_names():
    torch.manual_seed(0)
    dense = networks_stylegan3.Generator(**_tiny_kwargs())
    widths = [5, 7, 3, 4, 6]
    G = networks_stylegan3.Generator(**_tiny_kwargs(layer_channels=widths)).requires_grad_(False)
    syn = G.synthesis
    assert syn.layer_channels == widths
    assert G.init_kwargs.layer_channels == widths
    assert syn.layer_names == dense.synthesis.layer_names  # names keep the dense widths
    assert sorted(G.state_dict()) == sorted(dense.state_dict())

    # The Fourier features stay dense; the channel mixing produces the pruned width.
    dense_c0 = dense.synthesis.input.channels
    assert syn.input.freqs.shape == (dense_c0, 2) and syn.input.weight.shape == (widths[0], dense_c0)
    for idx, name in enumerate(syn.layer_names):
        layer = getattr(syn, name)
        out = widths[idx + 1] if idx + 1 < len(widths) else 3
        assert (layer.in_channels, layer.out_channels) == (widths[idx], out)
        assert layer.weight.shape[:2] == (out, widths[idx])
        assert layer.affine.weight.shape == (widths[idx], 16)

    z = torch.randn([2, 16])
    img, feats = syn(G.mapping(z, None), return_features=True)
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    assert sorted(feats) == list(range(len(widths)))
    for idx, x in feats.items():
        assert x.shape[1] == (widths[idx + 1] if idx + 1 < len(widths) else 3)
    assert torch.equal(feats[len(widths) - 1] * syn.output_scale, img)

    # Persistent class: a pickle round trip keeps the widths and the function.
    G2 = pickle.loads(pickle.dumps(G))
    assert G2.synthesis.layer_channels == widths
    torch.testing.assert_close(G2(z, None), G(z, None), rtol=0, atol=0)

    with pytest.raises(Exception, match='layer_channels'):
        networks_stylegan3.Generator(**_tiny_kwargs(layer_channels=[5, 7, 3]))


def test_conditional_fp16_settings_run_in_float32_on_cpu():
    torch.manual_seed(5)
    kwargs = _tiny_kwargs()
    kwargs.update(c_dim=3, num_fp16_res=2, conv_clamp=256)
    G = networks_stylegan3.Generator(**kwargs).requires_grad_(False)
    assert any(getattr(G.synthesis, name).use_fp16 for name in G.synthesis.layer_names)
    z, c = torch.randn([2, 16]), torch.eye(3)[[0, 2]]
    img = G(z, c, truncation_psi=0.5, truncation_cutoff=2)
    assert img.dtype == torch.float32 and torch.isfinite(img).all()
    torch.testing.assert_close(img, G(z, c, truncation_psi=0.5, truncation_cutoff=2, force_fp32=True))
    ws = G.mapping(z, c, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(ws[:, 2:], G.mapping(z, c)[:, 2:])  # beyond the cutoff: untruncated


def test_magnitude_ema_update_and_gradients():
    torch.manual_seed(1)
    G = networks_stylegan3.Generator(**_tiny_kwargs(magnitude_ema_beta=0.5))
    layer = getattr(G.synthesis, G.synthesis.layer_names[0])
    z = torch.randn([3, 16])
    ws = G.mapping(z, None)
    x_in = G.synthesis.input(ws[:, 0]).detach()
    before = layer.magnitude_ema.clone()
    img = G.synthesis(ws, update_emas=True)
    expected = 0.5 * before + 0.5 * x_in.square().mean()
    torch.testing.assert_close(layer.magnitude_ema, expected)

    # Second-order gradients (R1-style penalty through the generator output) are available.
    ws = ws.detach().requires_grad_(True)
    img = G.synthesis(ws)
    (grad,) = torch.autograd.grad(img.square().sum(), ws, create_graph=True)
    grad.square().sum().backward()
    assert all(p.grad is not None for p in G.synthesis.parameters())

#----------------------------------------------------------------------------
# filtered_lrelu against a direct computation.


def _direct_filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter):
    """Explicit zero insertion, padding, 2-D convolution, leaky ReLU, convolution, subsampling (numpy)."""
    x = x.detach().double().numpy()
    if b is not None:
        x = x + b.detach().double().numpy()[None, :, None, None]
    def as_2d(f):
        if f is None:
            return np.ones([1, 1])
        f = f.double().numpy()
        return np.outer(f, f) if f.ndim == 1 else f
    fu2 = as_2d(fu) * up ** 2
    fd2 = as_2d(fd)
    conv = scipy.signal.correlate2d if flip_filter else scipy.signal.convolve2d
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    out = []
    for img in x.reshape(n * c, h, w):
        z = np.zeros([h * up, w * up])
        z[::up, ::up] = img
        z = np.pad(z, [[max(py0, 0), max(py1, 0)], [max(px0, 0), max(px1, 0)]])
        z = z[max(-py0, 0):z.shape[0] - max(-py1, 0), max(-px0, 0):z.shape[1] - max(-px1, 0)]
        z = conv(z, fu2, mode='valid')
        z = np.where(z >= 0, z, z * slope) * gain
        if clamp is not None:
            z = np.clip(z, -clamp, clamp)
        z = conv(z, fd2, mode='valid')[::down, ::down]
        out.append(z)
    return np.stack(out).reshape(n, c, *out[0].shape)


def _lowpass(numtaps, cutoff):
    return torch.as_tensor(scipy.signal.firwin(numtaps, cutoff), dtype=torch.float32)


FLRELU_CASES = [
    # fu taps, fd taps ('2d' = non-separable), up, down, padding, clamp, flip_filter, slope
    (12, 12, 2, 2, [9, 8, 9, 8], None, False, 0.2),
    (12, 12, 2, 2, [9, 8, 9, 8], 0.5, False, 0.2),
    (24, 12, 4, 2, [20, 19, 18, 21], 0.8, True, 0.2),
    (12, '2d', 2, 2, [9, 8, 9, 8], None, False, 0.2),
    (8, None, 2, 1, 3, None, False, 0.2),
    (None, 6, 1, 2, [2, 1, 0, 3], 0.5, False, 0.2),
    (None, None, 1, 1, [-1, 2, 0, -2], None, False, 1.0),
]


@pytest.mark.parametrize('impl', ['cuda', 'ref'])
@pytest.mark.parametrize('case', FLRELU_CASES)
def test_filtered_lrelu_matches_direct(case, impl):
    ku, kd, up, down, padding, clamp, flip_filter, slope = case
    gen = torch.Generator().manual_seed(2)
    x = torch.randn([2, 3, 15, 13], generator=gen) * 2
    b = torch.randn([3], generator=gen)
    fu = None if ku is None else _lowpass(ku, 0.3) + 0.01 * torch.arange(ku)  # asymmetric: flips matter
    if kd == '2d':
        fd = torch.randn([6, 5], generator=gen) / 10
    else:
        fd = None if kd is None else _lowpass(kd, 0.4)
    gain = 1.7
    y = filtered_lrelu.filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=padding, gain=gain, slope=slope,
                                      clamp=clamp, flip_filter=flip_filter, impl=impl)
    pads = filtered_lrelu._parse_padding(padding)
    ref = _direct_filtered_lrelu(x, fu, fd, b, up, down, pads, gain, slope, clamp, flip_filter)
    assert y.dtype == x.dtype and tuple(y.shape) == ref.shape
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-5)

    # float16 keeps its dtype and stays close.
    y16 = filtered_lrelu.filtered_lrelu(x.half(), fu, fd, b.half(), up=up, down=down, padding=padding, gain=gain,
                                        slope=slope, clamp=clamp, flip_filter=flip_filter, impl=impl)
    assert y16.dtype == torch.float16
    np.testing.assert_allclose(y16.float().numpy(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('impl', ['cuda', 'ref'])
@pytest.mark.parametrize('clamp', [None, 0.6])
def test_filtered_lrelu_gradcheck(impl, clamp):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn([1, 2, 5, 6], generator=gen, dtype=torch.float64).requires_grad_(True)
    b = torch.randn([2], generator=gen, dtype=torch.float64).requires_grad_(True)
    fu, fd = _lowpass(4, 0.3) + 0.02 * torch.arange(4), _lowpass(4, 0.4)
    fn = lambda x, b: filtered_lrelu.filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=[2, 1, 3, 1], clamp=clamp,
                                                    impl=impl)
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_filtered_lrelu_leaves_input_alone():
    # The fast path works in place on its own buffers only.
    x = torch.randn([1, 2, 6, 6], requires_grad=True)
    x_copy = x.detach().clone()
    y = filtered_lrelu.filtered_lrelu(x, None, None, None, gain=1, slope=0.2, clamp=0.1)
    assert torch.equal(x.detach(), x_copy)
    torch.testing.assert_close(y, torch.nn.functional.leaky_relu(x_copy, 0.2).clamp(-0.1, 0.1))


@pytest.mark.parametrize('chunk_elements', [1, 300, 5000])
def test_filtered_lrelu_chunking_is_exact(monkeypatch, chunk_elements):
    # CPU pieces (per channel group, per sample group) give the same values and gradients as one piece.
    gen = torch.Generator().manual_seed(4)
    x = torch.randn([3, 5, 9, 8], generator=gen).requires_grad_(True)
    b = torch.randn([5], generator=gen).requires_grad_(True)
    fu, fd = _lowpass(8, 0.3), _lowpass(6, 0.4)
    run = lambda: filtered_lrelu.filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=[5, 4, 6, 3], clamp=1.0)
    whole = run()
    grads_whole = torch.autograd.grad(whole.square().sum(), [x, b])
    monkeypatch.setattr(filtered_lrelu, '_CHUNK_ELEMENTS', chunk_elements)
    pieces = run()
    grads_pieces = torch.autograd.grad(pieces.square().sum(), [x, b])
    torch.testing.assert_close(pieces, whole, rtol=1e-6, atol=1e-6)  # GEMM blocking may differ by an ulp
    for g1, g2 in zip(grads_pieces, grads_whole):
        torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-6)
