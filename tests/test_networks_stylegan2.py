"""training.networks_stylegan2 against NVIDIA's fixtures, plus per-layer widths, presets, gradients."""
import json
import pickle

import numpy as np
import pytest
import torch

import dnnlib
from training import networks_stylegan2 as nets
from training import presets

FIXTURES = ['sg2ada_g32_uncond', 'sg2ada_g32_cond10', 'sg2ada_g64_fp16res2_clamp256', 'sg3_stylegan2_g32']


def load_fixture(fixtures_dir, name):
    """Our G and D built from the fixture's kwargs with its tensors loaded, and its io dict."""
    data = np.load(fixtures_dir / f'{name}.npz')
    meta = json.loads(str(data['meta']))
    G = nets.Generator(**meta['G_init_kwargs']).eval().requires_grad_(False)
    D = nets.Discriminator(**meta['D_init_kwargs']).eval().requires_grad_(False)
    for net, prefix in [(G, 'G_ema/'), (D, 'D/')]:
        theirs = {k[len(prefix):]: torch.from_numpy(data[k]) for k in data.files if k.startswith(prefix)}
        ours = net.state_dict()
        assert sorted(theirs) == sorted(ours), f'{prefix}: names differ: {sorted(set(theirs) ^ set(ours))}'
        for key, value in theirs.items():
            assert ours[key].shape == value.shape, key
        net.load_state_dict(theirs, strict=True)
    io = {k[3:]: torch.from_numpy(data[k]) for k in data.files if k.startswith('io/') and data[k].dtype.kind == 'f'}
    return G, D, io


def assert_close(ours, ref, atol=1e-5):
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=atol)


@pytest.mark.parametrize('name', FIXTURES)
def test_fixture_outputs(fixtures_dir, name):
    G, D, io = load_fixture(fixtures_dir, name)
    z, c = io['z'], io['c']
    # sg2ada ran its fp16 blocks in float16 on the CPU: its fp32 reference is in the *_force_fp32 keys,
    # the other images carry float16 rounding (about 1e-2).
    fp16 = 'img_force_fp32' in io
    fp16_atol = 3e-2 if fp16 else 1e-5

    assert_close(G.mapping(z, c), io['ws'])
    assert_close(G.mapping(z, c, truncation_psi=0.7), io['ws_psi0.7'])
    img = G(z, c, noise_mode='const')
    assert_close(img, io['img_force_fp32' if fp16 else 'img'])
    assert_close(G(z, c, truncation_psi=0.7, noise_mode='const'), io['img_psi0.7'], atol=fp16_atol)
    assert_close(G(z, c, noise_mode='none'), io['img_noise_none'], atol=fp16_atol)
    assert_close(G.synthesis(io['ws'], noise_mode='const', fused_modconv=False), io['img_unfused'], atol=fp16_atol)
    assert_close(D(io['img_force_fp32' if fp16 else 'img'], c), io['D_fake_force_fp32' if fp16 else 'D_fake'])
    assert_close(D(io['real'], c), io['D_real'], atol=1e-3 if fp16 else 1e-5)

    # The unfused modulated convolution computes the same function.
    assert_close(G.synthesis(io['ws'], noise_mode='const', fused_modconv=False), img, atol=1e-4)
    # Random noise changes the image; the constant noise does not.
    assert not torch.allclose(G(z, c, noise_mode='random'), img)
    assert torch.equal(G(z, c, noise_mode='const'), img)


def test_fixture_pickle_round_trip(fixtures_dir):
    G, D, io = load_fixture(fixtures_dir, 'sg2ada_g32_cond10')
    G2 = pickle.loads(pickle.dumps(G))
    assert G2.init_kwargs == G.init_kwargs
    assert_close(G2(io['z'], io['c'], noise_mode='const'), io['img'])


# ----------------------------------------------------------------------------------------------
# Presets.


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_preset_parameter_counts():
    # Generator parameters at 256 px (buffers excluded): the SVS paper's base and small teachers.
    expected = {'stylegan2': (30_034_338, 28_864_129), 'paper256': (24_767_458, 24_001_089)}
    for cfg, (g_params, d_params) in expected.items():
        G_kwargs, D_kwargs = presets.network_kwargs(cfg, 256)
        assert G_kwargs.class_name == 'training.networks_stylegan2.Generator'
        assert _count(dnnlib.util.construct_class_by_name(**G_kwargs)) == g_params
        assert _count(dnnlib.util.construct_class_by_name(**D_kwargs)) == d_params


def test_preset_table():
    G_kwargs, D_kwargs = presets.network_kwargs('paper256', 256)
    assert G_kwargs.synthesis_kwargs.channel_base == 16384 and G_kwargs.mapping_kwargs.num_layers == 8
    assert D_kwargs.epilogue_kwargs.mbstd_group_size == 8 and G_kwargs.synthesis_kwargs.conv_clamp == 256
    G_kwargs, D_kwargs = presets.network_kwargs('cifar', 32, c_dim=10, fp32=True)
    assert D_kwargs.architecture == 'orig' and G_kwargs.synthesis_kwargs.num_fp16_res == 0 and G_kwargs.c_dim == 10
    # 'auto' resolves from resolution and GPU count, as stylegan2-ada's train.py does.
    spec = presets.sg2ada_spec('auto', 256, gpus=1)
    assert (spec.mb, spec.mbstd, spec.fmaps, spec.lrate, spec.ema) == (16, 4, 0.5, 0.0025, 5.0)
    assert spec.gamma == pytest.approx(0.0002 * 256 ** 2 / 16)
    args = presets.training_kwargs('stylegan2', 256)
    assert (args.batch_size, args.batch_gpu, args.G_lr, args.r1_gamma, args.ema_kimg) == (32, 4, 0.002, 10, 10)
    G_kwargs, _ = presets.network_kwargs('stylegan3-r', 256, batch=32)
    assert G_kwargs.class_name == 'training.networks_stylegan3.Generator'
    assert (G_kwargs.channel_base, G_kwargs.conv_kernel) == (65536, 1)
    assert G_kwargs.magnitude_ema_beta == pytest.approx(0.5 ** (32 / 20000))
    G_kwargs, _ = presets.network_kwargs('sg3-stylegan2', 32, channel_base=1024, channel_max=64)
    assert G_kwargs.fused_modconv_default == 'inference_only'
    dnnlib.util.construct_class_by_name(**G_kwargs)
    with pytest.raises(dnnlib.util.UserError, match='unknown preset'):
        presets.network_kwargs('stylegan9', 256)


# ----------------------------------------------------------------------------------------------
# Per-layer widths.


def tiny_G(**synthesis_kwargs):
    kwargs = dict(channel_base=256, channel_max=32, num_fp16_res=0, conv_clamp=None)
    kwargs.update(synthesis_kwargs)
    return nets.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                          mapping_kwargs=dict(num_layers=2), **kwargs)


@pytest.mark.parametrize('architecture', ['orig', 'skip', 'resnet'])
def test_layer_channels_shape_the_tensors(architecture):
    widths = [5, 6, 7, 8, 9, 10]  # 16 px: convs b4.conv1, b8.conv0, b8.conv1, b16.conv0, b16.conv1
    G = tiny_G(layer_channels=widths, architecture=architecture)
    assert G.synthesis.layer_channels == widths
    sd = G.state_dict()
    assert sd['synthesis.b4.const'].shape == (5, 4, 4)
    assert sd['synthesis.b4.conv1.weight'].shape == (6, 5, 3, 3)
    assert sd['synthesis.b4.conv1.affine.weight'].shape == (5, 16)
    assert sd['synthesis.b8.conv0.weight'].shape == (7, 6, 3, 3)
    assert sd['synthesis.b8.conv1.weight'].shape == (8, 7, 3, 3)
    assert sd['synthesis.b16.conv0.weight'].shape == (9, 8, 3, 3)
    assert sd['synthesis.b16.conv1.weight'].shape == (10, 9, 3, 3)
    assert sd['synthesis.b16.torgb.weight'].shape == (3, 10, 1, 1)
    if architecture == 'skip':
        assert sd['synthesis.b4.torgb.weight'].shape == (3, 6, 1, 1)
        assert sd['synthesis.b8.torgb.weight'].shape == (3, 8, 1, 1)
    if architecture == 'resnet':
        assert sd['synthesis.b16.skip.weight'].shape == (10, 8, 1, 1)

    z = torch.randn([2, 16])
    img, features = G.synthesis(G.mapping(z, None), noise_mode='const', return_features=True)
    assert img.shape == (2, 3, 16, 16)
    assert {res: tuple(x.shape) for res, x in features.items()} == {4: (2, 6, 4, 4), 8: (2, 8, 8, 8), 16: (2, 10, 16, 16)}
    assert torch.equal(img, G(z, None, noise_mode='const'))

    # The widths travel with the pickle.
    G2 = pickle.loads(pickle.dumps(G))
    assert G2.synthesis.layer_channels == widths
    G2.load_state_dict(sd)
    assert torch.equal(G2(z, None, noise_mode='const'), img)


def test_layer_channels_default_is_dense_and_validated():
    dense = tiny_G()
    assert dense.synthesis.layer_channels == [32, 32, 32, 32, 16, 16]
    explicit = tiny_G(layer_channels=[32, 32, 32, 32, 16, 16])
    assert {k: v.shape for k, v in dense.state_dict().items()} == {k: v.shape for k, v in explicit.state_dict().items()}
    assert nets.dense_layer_channels(256, 32768, 512) == [512] * 10 + [256, 256, 128, 128]
    with pytest.raises(ValueError, match='layer_channels'):
        tiny_G(layer_channels=[8] * 5)


def test_nested_and_flat_synthesis_kwargs_agree():
    torch.manual_seed(0)
    nested = nets.Generator(16, 0, 16, 8, 3, mapping_kwargs=dict(num_layers=1),
                            synthesis_kwargs=dict(channel_base=64, channel_max=8, num_fp16_res=0))
    flat = nets.Generator(16, 0, 16, 8, 3, mapping_kwargs=dict(num_layers=1), channel_base=64, channel_max=8, num_fp16_res=0)
    flat.load_state_dict(nested.state_dict())
    z = torch.randn([2, 16])
    assert torch.equal(nested(z, None, noise_mode='const'), flat(z, None, noise_mode='const'))


# ----------------------------------------------------------------------------------------------
# Mapping behaviour, fp16 off CUDA, gradients.


def test_truncation_and_w_avg_tracking():
    G = tiny_G()
    G.mapping.w_avg.copy_(torch.randn([16]))
    z = torch.randn([4, 16])
    ws = G.mapping(z, None)
    torch.testing.assert_close(G.mapping(z, None, truncation_psi=0.5), G.mapping.w_avg + 0.5 * (ws - G.mapping.w_avg))
    cut = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, 2:], ws[:, 2:])
    torch.testing.assert_close(cut[:, :2], G.mapping.w_avg + 0.5 * (ws[:, :2] - G.mapping.w_avg))

    w_avg = G.mapping.w_avg.clone()
    G.mapping(z, None)
    assert torch.equal(G.mapping.w_avg, w_avg)  # no update unless asked
    G.mapping(z, None, update_emas=True)
    torch.testing.assert_close(G.mapping.w_avg, ws[:, 0].mean(0) + 0.995 * (w_avg - ws[:, 0].mean(0)))


def test_fp16_blocks_run_in_float32_off_cuda():
    G = tiny_G(num_fp16_res=2, conv_clamp=256)
    assert G.synthesis.b16.use_fp16 and G.synthesis.b8.use_fp16
    z = torch.randn([2, 16])
    img, features = G.synthesis(G.mapping(z, None), noise_mode='const', return_features=True)
    assert img.dtype == torch.float32 and all(x.dtype == torch.float32 for x in features.values())
    assert torch.equal(img, G(z, None, noise_mode='const', force_fp32=True))


@pytest.mark.parametrize('architecture', ['orig', 'skip', 'resnet'])
def test_discriminator_r1_double_backward(architecture):
    D = nets.Discriminator(c_dim=3, img_resolution=16, img_channels=3, architecture=architecture,
                           channel_base=128, channel_max=16, num_fp16_res=1, conv_clamp=256)
    img = torch.randn([4, 3, 16, 16], requires_grad=True)
    c = torch.eye(3)[[0, 1, 2, 0]]
    logits = D(img, c)
    assert logits.shape == (4, 1)
    grad, = torch.autograd.grad(logits.sum(), img, create_graph=True)
    grad.square().sum().backward()
    # Every weight of the path from the image to the logit receives a second-order gradient
    # (biases that only shift the logit do not affect its gradient and may get none).
    for name, p in D.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
        if name.endswith('weight'):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_generator_path_length_double_backward():
    G = tiny_G(layer_channels=[5, 6, 7, 8, 9, 10], architecture='resnet').train()
    for p in G.parameters():  # noise strengths and biases start at zero; make every path count
        p.data.add_(torch.randn_like(p) * 0.1)
    ws = G.mapping(torch.randn([2, 16]), None)
    img = G.synthesis(ws)  # training mode, default fused modconv
    pl_noise = torch.randn_like(img) / 16
    grad, = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
    grad.square().sum(2).mean(1).sqrt().mean().backward()
    for name, p in G.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
        if name.endswith('weight') or name.endswith('noise_strength') or name.endswith('const'):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
