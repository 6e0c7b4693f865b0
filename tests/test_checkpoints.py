"""Checkpoint loading: NVIDIA v6 pickles (no embedded code run), our snapshots and weights-only exports.

The NVIDIA-format pickles are built here from the official fixtures: our classes, constructed from
the fixture's constructor arguments and loaded with its weights, pickle in exactly NVIDIA's
persistence-v6 layout (reduce tuples whose meta holds type, version, module_src, class_name, state).
"""
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

import dnnlib
from dnnlib.util import UserError
from torch_utils import persistence
from training import checkpoints
from training import networks_stylegan2, networks_stylegan3
from training.augment import AugmentPipe

OFFICIAL = ['sg2ada_g32_uncond', 'sg2ada_g32_cond10', 'sg2ada_g64_fp16res2_clamp256', 'sg3_stylegan2_g32',
            'sg3_stylegan3t_g32', 'sg3_stylegan3r_g32']
TOL = dict(rtol=1e-5, atol=1e-4)

_cache = {}


def load_fixture(fixtures_dir, name):
    if name not in _cache:
        data = np.load(fixtures_dir / f'{name}.npz')
        _cache[name] = dnnlib.EasyDict(meta=json.loads(str(data['meta'])), arrays={k: data[k] for k in data.files})
    return _cache[name]


def fixture_networks(fx):
    """Our G and D built from the fixture's constructor arguments, with its weights."""
    module = networks_stylegan3 if 'magnitude_ema_beta' in fx.meta['G_init_kwargs'] else networks_stylegan2
    G = module.Generator(**fx.meta['G_init_kwargs']).eval()
    D = networks_stylegan2.Discriminator(**fx.meta['D_init_kwargs']).eval()
    G.load_state_dict({k[len('G_ema/'):]: torch.from_numpy(v) for k, v in fx.arrays.items() if k.startswith('G_ema/')})
    D.load_state_dict({k[len('D/'):]: torch.from_numpy(v) for k, v in fx.arrays.items() if k.startswith('D/')})
    return G, D


class MetaPickler(pickle.Pickler):
    """Pickles persistent objects as usual, with a hook to edit each object's meta dict."""

    def __init__(self, file, edit_meta):
        super().__init__(file, protocol=4)
        self.edit_meta = edit_meta

    def reducer_override(self, obj):
        if not persistence.is_persistent(obj):
            return NotImplemented
        func, (meta,), *rest = obj.__reduce__()
        meta = dict(meta, state=dict(meta['state']))
        self.edit_meta(obj, meta)
        return (func, (meta,), *rest)


def v6_pickle(G, D, edit_meta=None, **extras):
    data = dict(G=G, D=D, G_ema=G, augment_pipe=None, training_set_kwargs=dict(path='data.zip', resolution=32), **extras)
    if edit_meta is None:
        return pickle.dumps(data, protocol=4)
    buf = io.BytesIO()
    MetaPickler(buf, edit_meta).dump(data)
    return buf.getvalue()


def check_images(fx, G, D=None):
    a = fx.arrays
    z, c = torch.from_numpy(a['io/z']), torch.from_numpy(a['io/c'])
    img_ref = a.get('io/img_force_fp32', a['io/img'])
    with torch.no_grad():
        img = G(z, c, noise_mode='const', force_fp32=True)
        np.testing.assert_allclose(img.numpy(), img_ref, **TOL)
        if D is not None:
            d_ref = a.get('io/D_fake_force_fp32', a['io/D_fake'])
            np.testing.assert_allclose(D(torch.from_numpy(img_ref), c, force_fp32=True).numpy(), d_ref, **TOL)


def is_ours(net, module):
    return type(net) is getattr(module, type(net).__name__)


# ---------------------------------------------------------------------------------------------
# NVIDIA persistence-v6 pickles.

@pytest.mark.parametrize('name', OFFICIAL)
def test_v6_pickle_loads_into_our_classes(fixtures_dir, tmp_path, name):
    fx = load_fixture(fixtures_dir, name)
    G, D = fixture_networks(fx)
    path = tmp_path / 'network-snapshot.pkl'
    path.write_bytes(v6_pickle(G, D))
    net = checkpoints.load_network(str(path), verbose=False)
    assert set(net) >= {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}
    assert net.augment_pipe is None and net.training_set_kwargs == dict(path='data.zip', resolution=32)
    g_module = networks_stylegan3 if isinstance(G, networks_stylegan3.Generator) else networks_stylegan2
    assert is_ours(net.G_ema, g_module) and is_ours(net.D, networks_stylegan2)
    # sg2ada nested and SG3 flat constructor kwargs are kept as stored.
    assert dict(net.G_ema.init_kwargs) == fx.meta['G_init_kwargs']
    assert not net.G_ema.training and not any(p.requires_grad for p in net.G_ema.parameters())
    check_images(fx, net.G_ema, net.D)
    if 'io/img_transformed' in fx.arrays:
        net.G_ema.synthesis.input.transform.copy_(torch.from_numpy(fx.arrays['io/input_transform']))
        with torch.no_grad():
            img = net.G_ema(torch.from_numpy(fx.arrays['io/z']), torch.from_numpy(fx.arrays['io/c']), noise_mode='const')
        np.testing.assert_allclose(img.numpy(), fx.arrays['io/img_transformed'], **TOL)


def _poisoned_source(obj, meta):
    meta['module_src'] = "raise RuntimeError('embedded code executed')\n" + meta['module_src']


def test_default_loader_never_executes_embedded_code(fixtures_dir):
    fx = load_fixture(fixtures_dir, 'sg3_stylegan3t_g32')
    G, D = fixture_networks(fx)
    data = v6_pickle(G, D, edit_meta=_poisoned_source)
    net = checkpoints.load_network_bytes(data, 'poisoned.pkl', verbose=False)
    check_images(fx, net.G_ema, net.D)
    # The same file with allow_code=True does run the embedded source, which raises.
    with pytest.raises(UserError, match='embedded code executed'):
        checkpoints.load_network_bytes(data, 'poisoned.pkl', allow_code=True, verbose=False)


def test_allow_code_converts_foreign_classes(fixtures_dir):
    fx = load_fixture(fixtures_dir, 'sg2ada_g32_cond10')
    G, D = fixture_networks(fx)

    def foreign_source(obj, meta):  # a source text we do not know: executed into a fresh module
        meta['module_src'] = meta['module_src'] + '\n# foreign copy\n'
    data = v6_pickle(G, D, edit_meta=foreign_source)
    raw = pickle.loads(data)
    assert not is_ours(raw['G_ema'], networks_stylegan2)  # plain pickle gives the executed module's classes
    net = checkpoints.load_network_bytes(data, 'foreign.pkl', allow_code=True, verbose=False)
    assert is_ours(net.G_ema, networks_stylegan2) and is_ours(net.D, networks_stylegan2)
    check_images(fx, net.G_ema, net.D)
    # A normal pickle of our own classes loads with allow_code too.
    net = checkpoints.load_network_bytes(v6_pickle(G, D), 'ours.pkl', allow_code=True, verbose=False)
    assert is_ours(net.G_ema, networks_stylegan2)
    check_images(fx, net.G_ema)


def test_bad_network_pickles_name_the_problem(fixtures_dir):
    fx = load_fixture(fixtures_dir, 'sg2ada_g32_uncond')
    G, D = fixture_networks(fx)

    def rename(obj, meta):
        if meta['class_name'] == 'Discriminator':
            meta['class_name'] = 'FancyDiscriminator'
    with pytest.raises(UserError, match=r"x\.pkl: D: unknown network class 'FancyDiscriminator'"):
        checkpoints.load_network_bytes(v6_pickle(G, D, edit_meta=rename), 'x.pkl', verbose=False)

    def bogus_kwarg(obj, meta):
        if meta['class_name'] == 'Generator':
            meta['state']['_init_kwargs'] = dict(meta['state']['_init_kwargs'], bogus_option=3)
    with pytest.raises(UserError, match='bogus_option'):
        checkpoints.load_network_bytes(v6_pickle(G, D, edit_meta=bogus_kwarg), 'x.pkl', verbose=False)

    def narrower(obj, meta):  # stored arguments disagree with the stored tensors
        if meta['class_name'] == 'Generator':
            kwargs = dict(meta['state']['_init_kwargs'])
            kwargs['synthesis_kwargs'] = dict(kwargs['synthesis_kwargs'], channel_max=32)
            meta['state']['_init_kwargs'] = kwargs
    with pytest.raises(UserError, match=r'x\.pkl: G: tensor synthesis\.\S+ has shape \[\d+.*expects \[32'):
        checkpoints.load_network_bytes(v6_pickle(G, D, edit_meta=narrower), 'x.pkl', verbose=False)

    def extra_tensor(obj, meta):
        if meta['class_name'] == 'MappingNetwork':
            meta['state']['_buffers'] = dict(meta['state']['_buffers'], stray=torch.zeros(3))
    with pytest.raises(UserError, match=r'tensor mapping\.stray \[3\] has no counterpart'):
        checkpoints.load_network_bytes(v6_pickle(G, D, edit_meta=extra_tensor), 'x.pkl', verbose=False)


def test_truncated_foreign_and_malicious_pickles(tmp_path, monkeypatch):
    G = networks_stylegan2.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                                     mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=64, channel_max=8))
    good = pickle.dumps(dict(G=G, D=None, G_ema=G))
    with pytest.raises(UserError, match=r'cut\.pkl: truncated'):
        checkpoints.load_network_bytes(good[:len(good) // 2], 'cut.pkl', verbose=False)
    with pytest.raises(UserError, match=r'list\.pkl: not a network pickle'):
        checkpoints.load_network_bytes(pickle.dumps([1, 2, 3]), 'list.pkl', verbose=False)
    with pytest.raises(UserError, match=r'junk\.bin: not a network checkpoint'):
        checkpoints.load_network_bytes(b'GIF89a not a network', 'junk.bin', verbose=False)

    marker = tmp_path / 'pwned'

    class Evil:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))
    evil = pickle.dumps(dict(G_ema=Evil()))
    with pytest.raises(UserError, match=r'evil\.pkl: refusing to load: the pickle references (posix|os|nt)\.system'):
        checkpoints.load_network_bytes(evil, 'evil.pkl', verbose=False)
    assert not marker.exists()
    # Official pickles name numpy's internals numpy.core.*, which numpy 2 renamed numpy._core.
    assert checkpoints._resolve_safe_global('numpy.core.multiarray', '_reconstruct') is np.zeros(1).__reduce__()[0]

    with pytest.raises(UserError, match='no such file'):
        checkpoints.load_network(str(tmp_path / 'missing.pkl'), verbose=False)
    monkeypatch.setenv('SVS_OFFLINE', '1')
    with pytest.raises(UserError, match=r'https://example\.invalid/net\.pkl: not in the cache'):
        checkpoints.load_network('https://example.invalid/net.pkl', verbose=False)


# ---------------------------------------------------------------------------------------------
# Our snapshots and weights-only exports.

def _small_snapshot(fixtures_dir):
    fx = load_fixture(fixtures_dir, 'sg2ada_g32_cond10')
    G, D = fixture_networks(fx)
    augment = AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1,
                          lumaflip=1, hue=1, saturation=1)
    augment.p.copy_(torch.tensor(0.37))
    data = dict(G=G, D=D, G_ema=G, augment_pipe=augment, training_set_kwargs=dict(path='cifar.zip', use_labels=True),
                pruning=dict(method='dcp', ratio=0.7, layer_channels=[64, 32]), training_state='state-000100.pt')
    return fx, data


def test_snapshot_roundtrip_and_nvidia_layout(fixtures_dir, tmp_path):
    fx, data = _small_snapshot(fixtures_dir)
    data['G'].requires_grad_(True).train()
    path = tmp_path / 'snap' / 'network-snapshot-000100.pkl'
    checkpoints.save_snapshot(str(path), data)
    assert data['G'].training and data['G'].mapping.fc0.weight.requires_grad  # caller's modules untouched
    assert sorted(os.listdir(path.parent)) == [path.name]  # written atomically, no temporary left

    # NVIDIA's tools unpickle it directly: a dict of persistent networks plus plain data.
    with open(path, 'rb') as f:
        raw = pickle.load(f)
    assert set(raw) >= {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}
    assert not raw['G'].training and not raw['G'].mapping.fc0.weight.requires_grad

    net = checkpoints.load_network(str(path), verbose=False)
    assert net.pruning == data['pruning'] and net.training_state == 'state-000100.pt'
    assert net.training_set_kwargs == data['training_set_kwargs']
    assert float(net.augment_pipe.p) == pytest.approx(0.37)
    assert dict(net.augment_pipe.init_kwargs) == dict(data['augment_pipe'].init_kwargs)
    check_images(fx, net.G_ema, net.D)

    with pytest.raises(TypeError, match='plain data'):
        checkpoints.save_snapshot(str(tmp_path / 'bad.pkl'), dict(data, extra=object()))

    # Through dnnlib.util.open_url: file:// URLs, and http(s) URLs served from the download cache.
    assert checkpoints.load_network(path.as_uri(), verbose=False).training_state == 'state-000100.pt'
    url = 'https://example.invalid/teachers/network-snapshot-000100.pkl'
    cache = tmp_path / 'cache'
    cache.mkdir()
    (cache / dnnlib.util.url_cache_name(url)).write_bytes(path.read_bytes())
    assert checkpoints.load_network(url, cache_dir=str(cache), verbose=False).pruning == data['pruning']


@pytest.mark.parametrize('suffix', ['.safetensors', '.pt'])
def test_weights_only_export_roundtrip(fixtures_dir, tmp_path, monkeypatch, suffix):
    fx, data = _small_snapshot(fixtures_dir)
    path = tmp_path / f'weights{suffix}'
    checkpoints.export_weights(data, str(path))
    def no_unpickling(*args, **kwargs):
        raise AssertionError('a weights-only file went through the pickle loader')
    monkeypatch.setattr(checkpoints, '_unpickle', no_unpickling)
    net = checkpoints.load_network(str(path), verbose=False)
    assert is_ours(net.G_ema, networks_stylegan2) and type(net.augment_pipe) is AugmentPipe
    assert net.pruning == data['pruning'] and net.training_set_kwargs == data['training_set_kwargs']
    assert float(net.augment_pipe.p) == pytest.approx(0.37)
    check_images(fx, net.G_ema, net.D)
    if suffix == '.pt':
        ckpt = torch.load(path, weights_only=True)
        assert ckpt['format'] == checkpoints.WEIGHTS_FORMAT


def test_weights_only_shape_mismatch_names_tensor(fixtures_dir, tmp_path):
    _fx, data = _small_snapshot(fixtures_dir)
    path = tmp_path / 'weights.pt'
    checkpoints.export_weights(data, str(path))
    ckpt = torch.load(path, weights_only=True)
    ckpt['tensors']['G_ema.mapping.fc1.bias'] = torch.zeros(5)
    torch.save(ckpt, path)
    with pytest.raises(UserError, match=r'weights\.pt: G_ema: tensor mapping\.fc1\.bias has shape \[5\]'):
        checkpoints.load_network(str(path), verbose=False)
    with open(path, 'r+b') as f:  # truncated zip
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(UserError, match=r'weights\.pt: cannot read the torch checkpoint'):
        checkpoints.load_network(str(path), verbose=False)
