"""NVIDIA TensorFlow StyleGAN2 pickles (``dnnlib.tflib`` networks, read as stubs) -> our classes, without TensorFlow."""
import math
import re

import numpy as np
import torch

import dnnlib
from dnnlib.util import UserError
from training.ckpt_common import construct, copy_tensors_strict, networks_stylegan2


def _tf_params(stub):
    params = {}

    def recurse(prefix, net):
        for name, value in getattr(net, 'variables', []):
            params[prefix + name] = np.asarray(value)
        for name, comp in (getattr(net, 'components', None) or {}).items():
            recurse(f'{prefix}{name}/', comp)
    recurse('', stub)
    return params


class _TFKwargs:
    """Reads TF static kwargs, remembering which were understood."""

    def __init__(self, stub, where):
        version = getattr(stub, 'version', None)
        if not isinstance(version, int) or version < 4:
            raise UserError(f'{where}: TensorFlow network pickle version {version!r} is too old (need 4 or newer)')
        self.kwargs, self.known, self.where = dict(getattr(stub, 'static_kwargs', None) or {}), set(), where

    def __call__(self, name, default=None):
        self.known.add(name)
        value = self.kwargs.get(name, default)
        return default if value is None else value

    def check(self, ignored):
        self.known.update(ignored)
        unknown = sorted(set(self.kwargs) - self.known)
        if unknown:
            raise UserError(f'{self.where}: unknown TensorFlow kwarg(s) {unknown}')


def _hwio_to_oihw(w, flip=False):
    w = np.asarray(w)
    if flip:  # TF's transposed conv vs our conv_transpose2d: the kernel is mirrored
        w = w[::-1, ::-1]
    return w.transpose(3, 2, 0, 1)


def _tf_copy(net, rules, params, where, ignore=(r'(.*/)?lod',)):
    """Fill every tensor of ``net`` from TF ``params`` by the first matching (regex, fn) rule."""
    used = set()

    def get(name):
        if name not in params:
            raise UserError(f'{where}: TensorFlow variable {name} is missing')
        used.add(name)
        return params[name]

    tensors = {}
    for name in net.state_dict():
        for pattern, fn in rules:
            m = re.fullmatch(pattern, name)
            if m:
                if fn is not None:
                    tensors[name] = torch.from_numpy(np.array(fn(get, *m.groups()), dtype=np.float32, order='C'))
                break
        else:
            raise UserError(f'{where}: no TensorFlow variable maps to our tensor {name}')
    stray = sorted(n for n in params if n not in used and not any(re.fullmatch(p, n) for p in ignore))
    if stray:
        raise UserError(f'{where}: TensorFlow variable {stray[0]} {list(params[stray[0]].shape)} has no counterpart in our '
                        f'{type(net).__name__}')
    copy_tensors_strict(net, tensors, where, allow_missing=[r'.*\.resample_filter'])


def convert_tf_generator(stub, where='G'):
    """Our StyleGAN2 ``Generator`` from a TF ``G_main`` network stub."""
    kw = _TFKwargs(stub, where)
    mapping_kwargs = dnnlib.EasyDict(num_layers=kw('mapping_layers', 8))
    synthesis_kwargs = dnnlib.EasyDict(channel_base=kw('fmap_base', 16384) * 2, channel_max=kw('fmap_max', 512),
                                       num_fp16_res=kw('num_fp16_res', 0), conv_clamp=kw('conv_clamp', None),
                                       architecture=kw('architecture', 'skip'))
    # The rest only when it differs from our defaults, so init_kwargs stay short.
    for tf_name, ours, default, target in [('label_fmaps', 'embed_features', None, mapping_kwargs),
                                           ('mapping_fmaps', 'layer_features', None, mapping_kwargs),
                                           ('mapping_nonlinearity', 'activation', 'lrelu', mapping_kwargs),
                                           ('mapping_lrmul', 'lr_multiplier', 0.01, mapping_kwargs),
                                           ('resample_kernel', 'resample_filter', [1, 3, 3, 1], synthesis_kwargs),
                                           ('use_noise', 'use_noise', True, synthesis_kwargs),
                                           ('nonlinearity', 'activation', 'lrelu', synthesis_kwargs)]:
        value = kw(tf_name, default)
        if value != default and not (isinstance(value, (list, tuple)) and list(value) == default):
            target[ours] = list(value) if isinstance(value, tuple) else value
    # TF "no tracking" (None) becomes beta 1: w_avg kept, never updated.
    kw.known.update(['w_avg_beta', 'dlatent_avg_beta'])
    w_avg_beta = kw.kwargs.get('w_avg_beta', kw.kwargs.get('dlatent_avg_beta', 0.995))
    w_avg_beta = 1 if w_avg_beta is None else w_avg_beta
    if w_avg_beta != 0.995:
        mapping_kwargs.w_avg_beta = w_avg_beta
    init_kwargs = dnnlib.EasyDict(z_dim=kw('latent_size', 512), c_dim=kw('label_size', 0), w_dim=kw('dlatent_size', 512),
                                  img_resolution=kw('resolution', 1024), img_channels=kw('num_channels', 3),
                                  mapping_kwargs=mapping_kwargs, synthesis_kwargs=synthesis_kwargs)
    kw.check(['truncation_psi', 'truncation_cutoff', 'style_mixing_prob', 'structure', 'conditioning', 'fused_modconv',
              'dtype', 'is_training', 'is_validation', 'return_dlatents', 'randomize_noise'])

    params = _tf_params(stub)
    for name in list(params):
        m = re.fullmatch(r'(?:synthesis/)?ToRGB_lod(\d+)/(.*)', name)
        if m:  # old progressive-growing layout: one ToRGB per resolution, 'orig' architecture
            r = init_kwargs.img_resolution // 2 ** int(m.group(1))
            params[f'synthesis/{r}x{r}/ToRGB/{m.group(2)}'] = params.pop(name)
            synthesis_kwargs.architecture = 'orig'

    G = construct(networks_stylegan2().Generator, (), init_kwargs, where)

    def noise(get, r, offset):
        return get(f'synthesis/noise{int(math.log2(int(r))) * 2 - offset}')[0, 0]
    s = 'synthesis/{0}x{0}/{1}/'
    rules = [
        (r'.*\.resample_filter', None),
        (r'mapping\.w_avg', lambda get: get('dlatent_avg')),
        (r'mapping\.embed\.weight', lambda get: get('mapping/LabelEmbed/weight').T),
        (r'mapping\.embed\.bias', lambda get: get('mapping/LabelEmbed/bias')),
        (r'mapping\.fc(\d+)\.weight', lambda get, i: get(f'mapping/Dense{i}/weight').T),
        (r'mapping\.fc(\d+)\.bias', lambda get, i: get(f'mapping/Dense{i}/bias')),
        (r'synthesis\.b4\.const', lambda get: get('synthesis/4x4/Const/const')[0]),
        (r'synthesis\.b4\.conv1\.noise_const', lambda get: get('synthesis/noise0')[0, 0]),
        (r'synthesis\.b4\.conv1\.(.*)', lambda get, f: _tf_layer(get, s.format(4, 'Conv'), f)),
        (r'synthesis\.b(\d+)\.conv0\.noise_const', lambda get, r: noise(get, r, 5)),
        (r'synthesis\.b(\d+)\.conv1\.noise_const', lambda get, r: noise(get, r, 4)),
        (r'synthesis\.b(\d+)\.conv0\.(.*)', lambda get, r, f: _tf_layer(get, s.format(r, 'Conv0_up'), f, flip=True)),
        (r'synthesis\.b(\d+)\.conv1\.(.*)', lambda get, r, f: _tf_layer(get, s.format(r, 'Conv1'), f)),
        (r'synthesis\.b(\d+)\.torgb\.(.*)', lambda get, r, f: _tf_layer(get, s.format(r, 'ToRGB'), f)),
        (r'synthesis\.b(\d+)\.skip\.weight', lambda get, r: _hwio_to_oihw(get(s.format(r, 'Skip') + 'weight'), flip=True)),
    ]
    _tf_copy(G, rules, params, where)
    return G


def _tf_layer(get, prefix, field, flip=False):
    """One modulated TF layer (Conv, Conv0_up, Conv1, ToRGB) -> our SynthesisLayer/ToRGBLayer field."""
    if field == 'weight':
        return _hwio_to_oihw(get(prefix + 'weight'), flip=flip)
    if field == 'bias':
        return get(prefix + 'bias')
    if field == 'noise_strength':
        return get(prefix + 'noise_strength')
    if field == 'affine.weight':
        return get(prefix + 'mod_weight').T
    if field == 'affine.bias':
        return get(prefix + 'mod_bias') + 1  # TF adds the 1 at run time; our affine bias_init=1 stores it
    raise UserError(f'{prefix}: no TensorFlow variable maps to our field {field}')


def convert_tf_discriminator(stub, where='D'):
    """Our StyleGAN2 ``Discriminator`` from a TF ``D_stylegan2`` network stub."""
    kw = _TFKwargs(stub, where)
    init_kwargs = dnnlib.EasyDict(
        c_dim=kw('label_size', 0), img_resolution=kw('resolution', 1024), img_channels=kw('num_channels', 3),
        architecture=kw('architecture', 'resnet'), channel_base=kw('fmap_base', 16384) * 2,
        channel_max=kw('fmap_max', 512), num_fp16_res=kw('num_fp16_res', 0), conv_clamp=kw('conv_clamp', None),
        # D_stylegan2's own default group size is 4 (NVIDIA's legacy.py falls back to the whole batch).
        epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=kw('mbstd_group_size', 4),
                                        mbstd_num_channels=kw('mbstd_num_features', 1)))
    cmap_dim = kw('mapping_fmaps', None)
    if cmap_dim is not None:
        init_kwargs.cmap_dim = cmap_dim
    mapping_kwargs = dnnlib.EasyDict(num_layers=kw('mapping_layers', 0), lr_multiplier=kw('mapping_lrmul', 0.1))
    if cmap_dim is not None:
        mapping_kwargs.embed_features = mapping_kwargs.layer_features = cmap_dim
    if init_kwargs.c_dim:
        init_kwargs.mapping_kwargs = mapping_kwargs
    block_kwargs = dnnlib.EasyDict()
    for tf_name, ours, default in [('nonlinearity', 'activation', 'lrelu'), ('resample_kernel', 'resample_filter', [1, 3, 3, 1]),
                                   ('freeze_layers', 'freeze_layers', 0)]:
        value = kw(tf_name, default)
        if value != default and not (isinstance(value, (list, tuple)) and list(value) == default):
            block_kwargs[ours] = list(value) if isinstance(value, tuple) else value
    if block_kwargs:
        init_kwargs.block_kwargs = block_kwargs
    kw.check(['structure', 'conditioning', 'dtype', 'is_training', 'is_validation'])

    params = _tf_params(stub)
    for name in list(params):
        m = re.fullmatch(r'FromRGB_lod(\d+)/(.*)', name)
        if m:
            r = init_kwargs.img_resolution // 2 ** int(m.group(1))
            params[f'{r}x{r}/FromRGB/{m.group(2)}'] = params.pop(name)
            init_kwargs.architecture = 'orig'

    D = construct(networks_stylegan2().Discriminator, (), init_kwargs, where)
    rules = [
        (r'b(\d+)\.fromrgb\.weight', lambda get, r: _hwio_to_oihw(get(f'{r}x{r}/FromRGB/weight'))),
        (r'b(\d+)\.fromrgb\.bias', lambda get, r: get(f'{r}x{r}/FromRGB/bias')),
        (r'b(\d+)\.conv0\.weight', lambda get, r: _hwio_to_oihw(get(f'{r}x{r}/Conv0/weight'))),
        (r'b(\d+)\.conv0\.bias', lambda get, r: get(f'{r}x{r}/Conv0/bias')),
        # Down-sampling convs are plain correlations in both codebases: no flip.
        (r'b(\d+)\.conv1\.weight', lambda get, r: _hwio_to_oihw(get(f'{r}x{r}/Conv1_down/weight'))),
        (r'b(\d+)\.conv1\.bias', lambda get, r: get(f'{r}x{r}/Conv1_down/bias')),
        (r'b(\d+)\.skip\.weight', lambda get, r: _hwio_to_oihw(get(f'{r}x{r}/Skip/weight'))),
        (r'mapping\.embed\.weight', lambda get: get('LabelEmbed/weight').T),
        (r'mapping\.embed\.bias', lambda get: get('LabelEmbed/bias')),
        (r'mapping\.fc(\d+)\.weight', lambda get, i: get(f'Mapping{i}/weight').T),
        (r'mapping\.fc(\d+)\.bias', lambda get, i: get(f'Mapping{i}/bias')),
        (r'b4\.conv\.weight', lambda get: _hwio_to_oihw(get('4x4/Conv/weight'))),
        (r'b4\.conv\.bias', lambda get: get('4x4/Conv/bias')),
        (r'b4\.fc\.weight', lambda get: get('4x4/Dense0/weight').T),
        (r'b4\.fc\.bias', lambda get: get('4x4/Dense0/bias')),
        (r'b4\.out\.weight', lambda get: get('Output/weight').T),
        (r'b4\.out\.bias', lambda get: get('Output/bias')),
        (r'.*\.resample_filter', None),
    ]
    _tf_copy(D, rules, params, where)
    return D

