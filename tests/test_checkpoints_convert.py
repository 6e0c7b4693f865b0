"""Converters: NVIDIA TensorFlow StyleGAN2 pickles and rosinality stylegan2-pytorch checkpoints."""
import argparse
import datetime
import json
import math
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import legacy
from dnnlib.util import UserError
from training import checkpoints, networks_stylegan2

TOL = dict(rtol=1e-5, atol=1e-4)


def npz(fixtures_dir, name):
    data = np.load(fixtures_dir / f'{name}.npz')
    return {k: data[k] for k in data.files}


# ---------------------------------------------------------------------------------------------
# TensorFlow pickles, synthesised from a fixture by the inverse of the documented mapping.

def _oihw_to_hwio(w, flip=False):
    w = w.transpose(2, 3, 1, 0)
    return w[::-1, ::-1].copy() if flip else w


def _tf_generator_variables(sd):
    """Our (official) G state dict -> TF variables of (Gs, mapping, synthesis)."""
    mapping, synthesis = [], []
    for name, v in sd.items():
        parts = name.split('.')
        if parts[0] == 'mapping' and parts[1].startswith('fc'):
            i = parts[1][2:]
            mapping.append((f'Dense{i}/{parts[2]}', v.T if parts[2] == 'weight' else v))
        elif parts[0] == 'synthesis' and parts[1:] == ['b4', 'const']:
            synthesis.append(('4x4/Const/const', v[None]))
        elif parts[0] == 'synthesis' and parts[2] in ('conv0', 'conv1', 'torgb'):
            r = int(parts[1][1:])
            layer = {'conv0': 'Conv0_up', 'conv1': 'Conv1' if r > 4 else 'Conv', 'torgb': 'ToRGB'}[parts[2]]
            field = '.'.join(parts[3:])
            prefix = f'{r}x{r}/{layer}/'
            if field == 'weight':
                synthesis.append((prefix + 'weight', _oihw_to_hwio(v, flip=(layer == 'Conv0_up'))))
            elif field == 'affine.weight':
                synthesis.append((prefix + 'mod_weight', v.T))
            elif field == 'affine.bias':
                synthesis.append((prefix + 'mod_bias', v - 1))
            elif field in ('bias', 'noise_strength'):
                synthesis.append((prefix + field, v))
            elif field == 'noise_const':
                index = 0 if r == 4 else int(math.log2(r)) * 2 - (5 if parts[2] == 'conv0' else 4)
                synthesis.append((f'noise{index}', v[None, None]))
            else:
                assert field == 'resample_filter', name
        else:
            assert name == 'mapping.w_avg' or name.endswith('resample_filter'), name
    return [('dlatent_avg', sd['mapping.w_avg'])], mapping, synthesis


def _tf_discriminator_variables(sd):
    variables = []
    fixed = {'b4.conv': '4x4/Conv', 'b4.fc': '4x4/Dense0', 'b4.out': 'Output'}
    for name, v in sd.items():
        head, field = name.rsplit('.', 1)
        if field == 'resample_filter':
            continue
        if head in fixed:
            tf_name = f'{fixed[head]}/{field}'
            v = _oihw_to_hwio(v) if v.ndim == 4 else (v.T if v.ndim == 2 else v)
        else:
            block, layer = head.split('.')
            r = int(block[1:])
            tf_layer = {'fromrgb': 'FromRGB', 'conv0': 'Conv0', 'conv1': 'Conv1_down', 'skip': 'Skip'}[layer]
            tf_name = f'{r}x{r}/{tf_layer}/{field}'
            v = _oihw_to_hwio(v) if v.ndim == 4 else v
        variables.append((tf_name, np.ascontiguousarray(v)))
    return variables


@pytest.fixture
def tf_network_class(monkeypatch):
    """A class that pickles as dnnlib.tflib.network.Network, as TF StyleGAN2 wrote them."""
    class Network:
        def __init__(self, **state):
            self.__dict__.update(state)
    Network.__module__, Network.__qualname__ = 'dnnlib.tflib.network', 'Network'
    tflib = types.ModuleType('dnnlib.tflib')
    network = types.ModuleType('dnnlib.tflib.network')
    network.Network = Network
    monkeypatch.setitem(sys.modules, 'dnnlib.tflib', tflib)
    monkeypatch.setitem(sys.modules, 'dnnlib.tflib.network', network)
    return Network


def make_tf_pickle(Network, arrays, extra_g_kwargs=None):
    def net(name, static_kwargs, variables, components=None):
        return Network(version=4, name=name, static_kwargs=static_kwargs, components=components or {},
                       build_module_src="raise RuntimeError('TF code executed')", build_func_name=name,
                       variables=variables)
    g_sd = {k[len('G_ema/'):]: v for k, v in arrays.items() if k.startswith('G_ema/')}
    d_sd = {k[len('D/'):]: v for k, v in arrays.items() if k.startswith('D/')}
    g_kwargs = dict(latent_size=512, dlatent_size=512, mapping_layers=2, resolution=32, num_channels=3, label_size=0,
                    fmap_base=512, fmap_max=64, architecture='skip', **(extra_g_kwargs or {}))
    d_kwargs = dict(resolution=32, num_channels=3, label_size=0, fmap_base=512, fmap_max=64, architecture='resnet',
                    mbstd_group_size=4)

    def generator(name):
        top, mapping, synthesis = _tf_generator_variables(g_sd)
        return net(name, g_kwargs, top, dict(mapping=net('G_mapping', {}, mapping),
                                             synthesis=net('G_synthesis', {}, synthesis)))
    return pickle.dumps((generator('G'), net('D', d_kwargs, _tf_discriminator_variables(d_sd)), generator('Gs')), protocol=3)


def test_tf_pickle_converts_without_tensorflow(fixtures_dir, tmp_path, tf_network_class):
    arrays = npz(fixtures_dir, 'sg2ada_g32_uncond')
    path = tmp_path / 'stylegan2-config-f.pkl'
    path.write_bytes(make_tf_pickle(tf_network_class, arrays))
    net = checkpoints.load_network(str(path), verbose=False)
    assert type(net.G_ema) is networks_stylegan2.Generator and type(net.D) is networks_stylegan2.Discriminator
    assert net.G_ema.init_kwargs.synthesis_kwargs.channel_base == 1024
    z, c = torch.from_numpy(arrays['io/z']), torch.from_numpy(arrays['io/c'])
    with torch.no_grad():
        np.testing.assert_allclose(net.G_ema(z, c, noise_mode='const').numpy(), arrays['io/img'], **TOL)
        np.testing.assert_allclose(net.G(z, c, truncation_psi=0.7, noise_mode='const').numpy(), arrays['io/img_psi0.7'], **TOL)
        np.testing.assert_allclose(net.D(torch.from_numpy(arrays['io/img']), c).numpy(), arrays['io/D_fake'], **TOL)

    # legacy.py: the same conversion to a snapshot pickle and to a weights-only file.
    runner = CliRunner()
    out = tmp_path / 'converted.pkl'
    result = runner.invoke(legacy.main, ['--source', str(path), '--dest', str(out)])
    assert result.exit_code == 0, result.output
    again = checkpoints.load_network(str(out), verbose=False)
    with torch.no_grad():
        np.testing.assert_allclose(again.G_ema(z, c, noise_mode='const').numpy(), arrays['io/img'], **TOL)
    out16 = tmp_path / 'converted_fp16.safetensors'
    result = runner.invoke(legacy.main, ['--source', str(path), '--dest', str(out16), '--weights-only', '--force-fp16'])
    assert result.exit_code == 0, result.output
    fp16 = checkpoints.load_network(str(out16), verbose=False)
    assert fp16.G_ema.init_kwargs.synthesis_kwargs.num_fp16_res == 4 and fp16.D.init_kwargs.conv_clamp == 256
    with torch.no_grad():
        np.testing.assert_allclose(fp16.G_ema(z, c, noise_mode='const', force_fp32=True).numpy(), arrays['io/img'], **TOL)


def test_tf_pickle_unknown_kwarg_and_missing_file(fixtures_dir, tmp_path, tf_network_class):
    arrays = npz(fixtures_dir, 'sg2ada_g32_uncond')
    data = make_tf_pickle(tf_network_class, arrays, extra_g_kwargs=dict(mystery_knob=1))
    with pytest.raises(UserError, match=r"tf\.pkl: G: unknown TensorFlow kwarg\(s\) \['mystery_knob'\]"):
        checkpoints.load_network_bytes(data, 'tf.pkl', verbose=False)
    result = CliRunner().invoke(legacy.main, ['--source', str(tmp_path / 'nope.pkl'), '--dest', str(tmp_path / 'x.pkl')])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f'error: {tmp_path / "nope.pkl"}: no such file']


# ---------------------------------------------------------------------------------------------
# rosinality checkpoints.

def rosinality_state_dict(arrays):
    return {k[len('g_ema/'):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith('g_ema/')}


def test_rosinality_checkpoint_reproduces_fixture(fixtures_dir, tmp_path):
    arrays = npz(fixtures_dir, 'rosinality_g32')
    sd = rosinality_state_dict(arrays)
    path = tmp_path / '550000.pt'
    # As rosinality's train.py saves it, argparse options included.
    torch.save({'g_ema': sd, 'g': sd, 'latent_avg': torch.from_numpy(arrays['io/mean_w'][0]),
                'args': argparse.Namespace(size=32, channel_multiplier=2)}, path)
    net = checkpoints.load_network(str(path), verbose=False)
    G = net.G_ema
    assert type(G) is networks_stylegan2.Generator and net.D is None
    # Widths {4: 64, 8: 64, 16: 48, 32: 32} are no dense table: loaded through layer_channels.
    assert G.synthesis.layer_channels == [64, 64, 64, 64, 48, 48, 32, 32]
    z = torch.from_numpy(arrays['io/z'])
    with torch.no_grad():
        ws = G.mapping(z, None)
        np.testing.assert_allclose(ws[:, 0].numpy(), arrays['io/w'], **TOL)
        assert torch.equal(ws[:, 0], ws[:, -1])
        np.testing.assert_allclose(G(z, None, noise_mode='const').numpy(), arrays['io/img'], **TOL)
        np.testing.assert_allclose(G(z, None, truncation_psi=0.7, noise_mode='const').numpy(), arrays['io/img_psi0.7'], **TOL)
        np.testing.assert_allclose(net.G(z, None, noise_mode='const').numpy(), arrays['io/img'], **TOL)


def test_rosinality_without_latent_avg_estimates_w_avg(fixtures_dir, tmp_path, capsys):
    arrays = npz(fixtures_dir, 'rosinality_g32')
    path = tmp_path / 'student.pt'
    torch.save({'g_ema': rosinality_state_dict(arrays)}, path)
    net = checkpoints.load_network(str(path), w_avg_samples=2000)
    assert 'w_avg estimated as the mean of 2000 mapped z' in capsys.readouterr().err
    mean_w = torch.from_numpy(arrays['io/mean_w'][0])  # the mean of 1000 other z
    w_avg = net.G_ema.mapping.w_avg
    assert float((w_avg - mean_w).norm() / mean_w.norm()) < 0.1


def test_rosinality_bad_checkpoints(fixtures_dir, tmp_path):
    arrays = npz(fixtures_dir, 'rosinality_g32')
    sd = rosinality_state_dict(arrays)
    path = tmp_path / 'bad.pt'
    torch.save({'g_ema': dict(sd, **{'convs.2.extra.weight': torch.zeros(2)})}, path)
    with pytest.raises(UserError, match=r'bad\.pt: g_ema: tensor convs\.2\.extra\.weight \[2\] has no counterpart'):
        checkpoints.load_network(str(path), verbose=False)
    broken = dict(sd)
    broken['convs.3.conv.weight'] = torch.zeros(1, 48, 40, 3, 3)  # in-channels disagree with the previous conv
    torch.save({'g_ema': broken}, path)
    with pytest.raises(UserError, match=r'bad\.pt: g_ema: tensor synthesis\.b16\.conv1\.weight has shape \[48, 40, 3, 3\]'):
        checkpoints.load_network(str(path), verbose=False)

    torch.save({'g_ema': sd, 'extra': datetime.timedelta(days=1)}, path)  # a global weights_only refuses
    with pytest.raises(UserError, match=r'bad\.pt: refusing to load a torch checkpoint'):
        checkpoints.load_network(str(path), verbose=False)
    torch.save({'state': sd}, path)
    with pytest.raises(UserError, match=r'bad\.pt: unrecognised torch checkpoint'):
        checkpoints.load_network(str(path), verbose=False)


def _zero_state_dict(shapes):
    k = torch.tensor([1., 3., 3., 1.])
    kernel = torch.outer(k, k) / 64 * 4  # rosinality stores the up-sampling kernel scaled by factor**2
    return {name: kernel.clone() if name.endswith('kernel') else torch.zeros(shape) for name, shape in shapes.items()}


@pytest.mark.parametrize('key,total,params,channel_base', [('g_ema_size256_cm2', 30034530, 30034338, 32768),
                                                           ('g_ema_size256_cm1', None, 24767458, 16384)])
def test_every_rosinality_generator_key_is_mapped(fixtures_dir, key, total, params, channel_base):
    shapes = json.loads((fixtures_dir / 'rosinality_stylegan2_keys.json').read_text())[key]
    if total is not None:
        assert sum(math.prod(s) for n, s in shapes.items() if not n.startswith('noises.')) == total
    sd = _zero_state_dict(shapes)
    _kwargs, _tensors, accounting = checkpoints.rosinality_generator_plan(sd)
    assert set(accounting) == set(shapes)
    G, _notes = checkpoints.convert_rosinality_generator(sd)  # strict: every tensor lands on a tensor of equal shape
    assert G.img_resolution == 256 and G.init_kwargs.synthesis_kwargs.channel_base == channel_base
    assert 'layer_channels' not in G.init_kwargs.synthesis_kwargs
    assert sum(p.numel() for p in G.parameters()) == params
    ours = G.state_dict()
    for ros_name, our_name in accounting.items():
        if not our_name.startswith('resample_filter'):
            assert ours[our_name].numel() == math.prod(shapes[ros_name]), ros_name


def test_every_rosinality_discriminator_key_is_mapped(fixtures_dir):
    shapes = json.loads((fixtures_dir / 'rosinality_stylegan2_keys.json').read_text())['d_size256_cm2']
    sd = _zero_state_dict(shapes)
    _kwargs, _tensors, accounting = checkpoints.rosinality_discriminator_plan(sd)
    assert set(accounting) == set(shapes)
    D = checkpoints.convert_rosinality_discriminator(sd)
    assert type(D) is networks_stylegan2.Discriminator and D.init_kwargs.architecture == 'resnet'
    kernels = sum(math.prod(s) for n, s in shapes.items() if n.endswith('kernel'))
    assert sum(p.numel() for p in D.parameters()) == sum(math.prod(s) for s in shapes.values()) - kernels


def test_rosinality_pruned_student_loads_via_layer_channels(fixtures_dir):
    # A DCP/CAGAN-style student: b16.conv0 keeps 40 of 48 channels, so conv0 and conv1 widths differ.
    sd = rosinality_state_dict(npz(fixtures_dir, 'rosinality_g32'))
    keep = slice(0, 40)
    sd['convs.2.conv.weight'] = sd['convs.2.conv.weight'][:, keep]
    sd['convs.2.activate.bias'] = sd['convs.2.activate.bias'][keep]
    sd['convs.3.conv.weight'] = sd['convs.3.conv.weight'][:, :, keep]
    sd['convs.3.conv.modulation.weight'] = sd['convs.3.conv.modulation.weight'][keep]
    sd['convs.3.conv.modulation.bias'] = sd['convs.3.conv.modulation.bias'][keep]
    G, _notes = checkpoints.convert_rosinality_generator(sd)
    assert G.synthesis.layer_channels == [64, 64, 64, 64, 40, 48, 32, 32]
    torch.testing.assert_close(G.synthesis.b16.conv1.weight, sd['convs.3.conv.weight'][0])


# ---------------------------------------------------------------------------------------------
# The real config-f variable list (stylegan2-ffhq-config-f.pkl, 1024 px), not our own inverse map.
# Names and shapes as NVIDIA's TF code creates them (networks_stylegan2.py: G_main, G_mapping,
# G_synthesis_stylegan2 'skip', D_stylegan2 'resnet'; weights HWIO, dense [in, out]); the trainable
# generator variables add up to 30,370,060, the count the official training log prints for G.
CONFIG_F_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}


def _config_f_modulated(prefix, c_in, c_out, k, noise=True):
    out = [(prefix + 'weight', (k, k, c_in, c_out)), (prefix + 'mod_weight', (512, c_in)), (prefix + 'mod_bias', (c_in,))]
    return out + ([(prefix + 'noise_strength', ())] if noise else []) + [(prefix + 'bias', (c_out,))]


def config_f_generator_variables():
    """{component: [(name, shape)]} for G_main ('' = the top level), G_mapping and G_synthesis."""
    ch = CONFIG_F_CHANNELS
    mapping = [v for i in range(8) for v in ((f'Dense{i}/weight', (512, 512)), (f'Dense{i}/bias', (512,)))]
    synthesis = [(f'noise{i}', (1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2))) for i in range(17)]
    synthesis += [('4x4/Const/const', (1, 512, 4, 4))]
    synthesis += _config_f_modulated('4x4/Conv/', 512, 512, 3) + _config_f_modulated('4x4/ToRGB/', 512, 3, 1, noise=False)
    for r in (8, 16, 32, 64, 128, 256, 512, 1024):
        synthesis += _config_f_modulated(f'{r}x{r}/Conv0_up/', ch[r // 2], ch[r], 3)
        synthesis += _config_f_modulated(f'{r}x{r}/Conv1/', ch[r], ch[r], 3)
        synthesis += _config_f_modulated(f'{r}x{r}/ToRGB/', ch[r], 3, 1, noise=False)
    return {'': [('lod', ()), ('dlatent_avg', (512,))], 'mapping': mapping, 'synthesis': synthesis}


def config_f_discriminator_variables():
    ch = CONFIG_F_CHANNELS
    variables = [('1024x1024/FromRGB/weight', (1, 1, 3, 32)), ('1024x1024/FromRGB/bias', (32,))]
    for r in (1024, 512, 256, 128, 64, 32, 16, 8):
        variables += [(f'{r}x{r}/Conv0/weight', (3, 3, ch[r], ch[r])), (f'{r}x{r}/Conv0/bias', (ch[r],)),
                      (f'{r}x{r}/Conv1_down/weight', (3, 3, ch[r], ch[r // 2])), (f'{r}x{r}/Conv1_down/bias', (ch[r // 2],)),
                      (f'{r}x{r}/Skip/weight', (1, 1, ch[r], ch[r // 2]))]
    return variables + [('4x4/Conv/weight', (3, 3, 513, 512)), ('4x4/Conv/bias', (512,)),
                        ('4x4/Dense0/weight', (8192, 512)), ('4x4/Dense0/bias', (512,)),
                        ('Output/weight', (512, 1)), ('Output/bias', (1,))]


def test_real_config_f_variable_list_converts(tf_network_class):
    g_vars, d_vars = config_f_generator_variables(), config_f_discriminator_variables()
    trainable = [s for comp in ('mapping', 'synthesis') for n, s in g_vars[comp] if not n.startswith('noise')]
    assert sum(math.prod(s) for s in trainable) == 30370060
    probes = {'mapping/Dense3/weight', 'synthesis/64x64/Conv0_up/weight', 'synthesis/64x64/Conv0_up/mod_bias',
              'synthesis/1024x1024/ToRGB/bias', 'synthesis/noise5', 'synthesis/noise6', 'dlatent_avg',
              '8x8/Skip/weight', '4x4/Dense0/weight', '1024x1024/FromRGB/weight', 'Output/weight'}
    rng = np.random.default_rng(0)
    values = {}

    def arrays(prefix, variables):
        out = []
        for name, shape in variables:
            full = prefix + name
            # Zeros cost no memory until touched; a few tensors get values to check the mapping.
            a = rng.standard_normal(shape).astype(np.float32) if full in probes else np.zeros(shape, np.float32)
            values[full] = a
            out.append((name, a))
        return out

    def net(name, kwargs, variables, components=None):
        return tf_network_class(version=4, name=name, static_kwargs=kwargs, components=components or {},
                                build_module_src="raise RuntimeError('TF code executed')", build_func_name=name,
                                variables=variables)
    kwargs = dict(num_channels=3, resolution=1024, label_size=0, fmap_base=16384)
    Gs = net('G', kwargs, arrays('', g_vars['']), dict(mapping=net('G_mapping', {}, arrays('mapping/', g_vars['mapping'])),
                                                       synthesis=net('G_synthesis', {}, arrays('synthesis/', g_vars['synthesis']))))
    D = net('D', kwargs, arrays('', d_vars))
    from training import ckpt_tf
    G = ckpt_tf.convert_tf_generator(Gs)  # strict: every TF variable used, every tensor of ours filled
    Dn = ckpt_tf.convert_tf_discriminator(D)
    assert sum(p.numel() for p in G.parameters()) == 30370060
    assert sum(p.numel() for p in Dn.parameters()) == sum(math.prod(s) for _n, s in d_vars)
    ch = CONFIG_F_CHANNELS
    for r in (8, 64, 1024):
        assert tuple(G.synthesis.get_submodule(f'b{r}.conv0').weight.shape) == (ch[r], ch[r // 2], 3, 3)
        assert tuple(getattr(Dn, f'b{r}').conv1.weight.shape) == (ch[r // 2], ch[r], 3, 3)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    sd, dd = G.state_dict(), Dn.state_dict()
    assert torch.equal(sd['mapping.fc3.weight'], t(values['mapping/Dense3/weight'].T))
    assert torch.equal(sd['mapping.w_avg'], t(values['dlatent_avg']))
    # Transposed conv in TF: the kernel is mirrored; HWIO -> OIHW.
    assert torch.equal(sd['synthesis.b64.conv0.weight'], t(values['synthesis/64x64/Conv0_up/weight'][::-1, ::-1].transpose(3, 2, 0, 1)))
    assert torch.equal(sd['synthesis.b64.conv0.affine.bias'], t(values['synthesis/64x64/Conv0_up/mod_bias'] + 1))
    assert torch.equal(sd['synthesis.b1024.torgb.bias'], t(values['synthesis/1024x1024/ToRGB/bias']))
    assert torch.equal(sd['synthesis.b32.conv0.noise_const'], t(values['synthesis/noise5'][0, 0]))
    assert torch.equal(sd['synthesis.b32.conv1.noise_const'], t(values['synthesis/noise6'][0, 0]))
    assert torch.equal(dd['b8.skip.weight'], t(values['8x8/Skip/weight'].transpose(3, 2, 0, 1)))
    assert torch.equal(dd['b1024.fromrgb.weight'], t(values['1024x1024/FromRGB/weight'].transpose(3, 2, 0, 1)))
    assert torch.equal(dd['b4.fc.weight'], t(values['4x4/Dense0/weight'].T))
    assert torch.equal(dd['b4.out.weight'], t(values['Output/weight'].T))
