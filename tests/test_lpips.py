"""LPIPS v0.1 (VGG): architecture against an explicit re-computation, properties, weight loading."""
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

import dnnlib
from torch_utils import vgg16
from training import lpips as lpips_mod

# torchvision's vgg16().features: conv output channels per stage, conv indices in `features`.
STAGES = [(64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)]
LIN_CHANNELS = [64, 128, 256, 512, 512]


def make_vgg_state(seed=0):
    """A random state_dict in the format of torchvision's vgg16-397923af.pth."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    idx, in_ch = 0, 3
    for stage in STAGES:
        for out_ch in stage:
            std = (2 / (in_ch * 9)) ** 0.5
            state[f'features.{idx}.weight'] = torch.randn([out_ch, in_ch, 3, 3], generator=gen) * std
            state[f'features.{idx}.bias'] = torch.randn([out_ch], generator=gen) * 0.05
            idx += 2
            in_ch = out_ch
        idx += 1  # the max-pool
    # The real file also holds the classifier; small stand-ins check that it is ignored.
    for k in (0, 3, 6):
        state[f'classifier.{k}.weight'] = torch.randn([4, 4], generator=gen)
        state[f'classifier.{k}.bias'] = torch.randn([4], generator=gen)
    return state


def make_lin_state(seed=1):
    """A random state_dict in the format of LPIPS v0.1 vgg.pth (non-negative heads, as trained)."""
    gen = torch.Generator().manual_seed(seed)
    return {f'lin{k}.model.1.weight': torch.rand([1, c, 1, 1], generator=gen) * 0.1 for k, c in enumerate(LIN_CHANNELS)}


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp('lpips_weights')
    vgg_state, lin_state = make_vgg_state(), make_lin_state()
    vgg_path, lin_path = folder / 'vgg16-397923af.pth', folder / 'vgg.pth'
    torch.save(vgg_state, vgg_path)
    torch.save(lin_state, lin_path)
    return dnnlib.EasyDict(vgg_path=str(vgg_path), lin_path=str(lin_path), vgg=vgg_state, lin=lin_state, folder=folder)


@pytest.fixture(scope='module')
def net(weights):
    return lpips_mod.LPIPS(vgg_weights=weights.vgg_path, lin_weights=weights.lin_path)


def images(n=2, res=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand([n, 3, res, res], generator=gen) * 2 - 1, torch.rand([n, 3, res, res], generator=gen) * 2 - 1


def reference_lpips(vgg_state, lin_state, x0, x1):
    """LPIPS v0.1 written out with F.conv2d on the state_dict tensors, in float64."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def trunk(x):
        x = (x.double() - shift) / scale
        feats, idx = [], 0
        for stage_idx, stage in enumerate(STAGES):
            if stage_idx > 0:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            for _ in stage:
                x = F.relu(F.conv2d(x, vgg_state[f'features.{idx}.weight'].double(), vgg_state[f'features.{idx}.bias'].double(), padding=1))
                idx += 2
            idx += 1
            feats.append(x)
        return feats

    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for k, (f0, f1) in enumerate(zip(trunk(x0), trunk(x1))):
        f0 = f0 / (f0.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
        f1 = f1 / (f1.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
        w = lin_state[f'lin{k}.model.1.weight'].double().view(1, -1, 1, 1)
        total += ((f0 - f1).square() * w).sum(dim=1).mean(dim=(1, 2))
    return total

# ---------------------------------------------------------------------------------------------


def test_vgg16_layout_matches_torchvision_indices():
    trunk = vgg16.VGG16Features()
    keys = [k for k in trunk.state_dict()]
    assert keys == [k for k in make_vgg_state() if k.startswith('features.')]
    assert len(trunk.features) == 31
    assert [i for i, m in enumerate(trunk.features) if isinstance(m, torch.nn.MaxPool2d)] == [4, 9, 16, 23, 30]
    assert list(vgg16.RELU_INDEX.values()) == [3, 8, 15, 22, 29]


def test_lpips_equals_explicit_computation(net, weights):
    x0, x1 = images(n=3)
    ours = net(x0, x1)
    ref = reference_lpips(weights.vgg, weights.lin, x0, x1)
    assert ours.shape == (3,) and ours.dtype == torch.float32
    assert (ref > 0).all()
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-8)
    # normalize=True takes [0, 1] inputs.
    torch.testing.assert_close(net((x0 + 1) / 2, (x1 + 1) / 2, normalize=True), ours, rtol=1e-5, atol=1e-7)


def test_lpips_properties(net):
    x0, x1 = images(n=2, seed=3)
    torch.testing.assert_close(net(x0, x0), torch.zeros(2), rtol=0, atol=1e-7)
    torch.testing.assert_close(net(x0, x1), net(x1, x0), rtol=1e-6, atol=1e-7)
    assert not net.training
    net.train()
    assert not net.training  # a parent's .train() leaves LPIPS in eval mode
    assert all(not p.requires_grad for p in net.parameters())


def test_lpips_gradients_reach_inputs_only(net):
    x0, x1 = images(n=2, seed=4)
    x0.requires_grad_(True)
    net(x0, x1).sum().backward()
    assert x0.grad is not None and torch.isfinite(x0.grad).all() and x0.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_lpips_float32_under_autocast(net):
    x0, x1 = images(n=2, seed=5)
    expected = net(x0, x1)
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        got = net(x0.bfloat16(), x1.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, net(x0.bfloat16().float(), x1.bfloat16().float()))
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=1e-4)  # only the inputs were rounded

# ---------------------------------------------------------------------------------------------


def test_lpips_loads_from_file_url_and_cache(weights, net, tmp_path, monkeypatch):
    x0, x1 = images(n=1, seed=6)
    expected = net(x0, x1)

    by_file_url = lpips_mod.LPIPS(vgg_weights='file://' + os.path.abspath(weights.vgg_path),
                                  lin_weights='file://' + os.path.abspath(weights.lin_path))
    torch.testing.assert_close(by_file_url(x0, x1), expected, rtol=0, atol=0)

    # http(s) URLs already in the cache load without the network: in the default cache
    # ($SVS_CACHE_DIR, set per test) and in an explicit cache_dir.
    monkeypatch.setenv('SVS_OFFLINE', '1')
    vgg_url = 'https://models.example.com/vgg16-397923af.pth'
    lin_url = 'https://weights.example.com/v0.1/vgg.pth'
    for cache_dir in (None, str(tmp_path / 'explicit_cache')):
        folder = cache_dir or dnnlib.util.make_cache_dir_path('downloads')
        os.makedirs(folder)
        os.symlink(os.path.abspath(weights.vgg_path), os.path.join(folder, dnnlib.util.url_cache_name(vgg_url)))
        shutil.copy(weights.lin_path, os.path.join(folder, dnnlib.util.url_cache_name(lin_url)))
        by_cache = lpips_mod.LPIPS(vgg_weights=vgg_url, lin_weights=lin_url, cache_dir=cache_dir)
        torch.testing.assert_close(by_cache(x0, x1), expected, rtol=0, atol=0)
        shutil.rmtree(folder)

    # Not cached and offline: one clear error naming the URL.
    with pytest.raises(dnnlib.util.UserError, match='vgg16-other.pth'):
        lpips_mod.LPIPS(vgg_weights='https://models.example.com/vgg16-other.pth', lin_weights=lin_url)


def test_make_lpips_builds_once(weights):
    a = lpips_mod.make_lpips(vgg_weights=weights.vgg_path, lin_weights=weights.lin_path)
    b = lpips_mod.make_lpips(vgg_weights=weights.vgg_path, lin_weights=weights.lin_path)
    assert a is b
    assert isinstance(a, lpips_mod.LPIPS)


def test_lpips_bad_weight_files(weights, tmp_path):
    with pytest.raises(dnnlib.util.UserError, match='missing.pth'):
        lpips_mod.LPIPS(vgg_weights=str(tmp_path / 'missing.pth'), lin_weights=weights.lin_path)
    with pytest.raises(dnnlib.util.UserError, match='no_heads.pth'):
        lpips_mod.LPIPS(vgg_weights=weights.vgg_path, lin_weights=str(tmp_path / 'no_heads.pth'))

    lin = dict(weights.lin)
    del lin['lin4.model.1.weight']
    torch.save(lin, tmp_path / 'lin_missing.pth')
    with pytest.raises(dnnlib.util.UserError, match='lin4'):
        lpips_mod.LPIPS(vgg_weights=weights.vgg_path, lin_weights=str(tmp_path / 'lin_missing.pth'))

    lin = dict(weights.lin, **{'lin2.model.1.weight': torch.zeros([1, 128, 1, 1])})
    torch.save(lin, tmp_path / 'lin_shape.pth')
    with pytest.raises(dnnlib.util.UserError, match='lin2.*shape'):
        lpips_mod.LPIPS(vgg_weights=weights.vgg_path, lin_weights=str(tmp_path / 'lin_shape.pth'))

    vgg = {k: v for k, v in weights.vgg.items() if k != 'features.28.bias'}
    torch.save(vgg, tmp_path / 'vgg_missing.pth')
    with pytest.raises(dnnlib.util.UserError, match=r'features\.28\.bias'):
        vgg16.load_vgg16_features(str(tmp_path / 'vgg_missing.pth'))

    (tmp_path / 'garbage.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(dnnlib.util.UserError, match='garbage.pth: cannot read'):
        vgg16.load_vgg16_features(str(tmp_path / 'garbage.pth'))

# ---------------------------------------------------------------------------------------------


# Stored reference outputs. The lpips package cannot be imported here (it needs torchvision) and its
# trained heads cannot be fetched offline, so these numbers are the float64 re-implementation above
# (``reference_lpips``: ScalingLayer shift/scale, unit-normalised channels with eps 1e-10, squared
# differences weighted by the non-negative 1x1 heads, spatial mean, sum over the 5 ReLU stages) on
# the seeded random trunk and heads of ``make_vgg_state`` / ``make_lin_state``, computed once and
# written down. What this proves: our LPIPS equals that formula on these inputs, and neither
# implementation can drift silently (a change to both would still fail here). What it does not
# prove: parity with the package's trained heads (which only scale the per-channel terms).
REFERENCE_LPIPS = {  # images(n=3, seed=7): (x0, x1), and (clamp(x0 / 2), x0)
    'pair': [0.07097887213112802, 0.0729333149732421, 0.0729295480122974],
    'half': [0.004266178524839688, 0.004264154896644072, 0.004433069751008314],
}


def test_lpips_matches_stored_reference_outputs(weights, net):
    x0, x1 = images(n=3, seed=7)
    cases = dict(pair=(x0, x1), half=((x0 * 0.5).clamp(-1, 1), x0))
    for name, (a, b) in cases.items():
        expected = torch.tensor(REFERENCE_LPIPS[name], dtype=torch.float64)
        torch.testing.assert_close(reference_lpips(weights.vgg, weights.lin, a, b), expected, rtol=1e-9, atol=0)
        torch.testing.assert_close(net(a, b).double(), expected, rtol=1e-5, atol=1e-9)
