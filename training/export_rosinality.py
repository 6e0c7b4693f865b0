"""Our StyleGAN2 networks -> a rosinality ``stylegan2-pytorch`` checkpoint (``legacy.py --to rosinality``).

The reverse of ``training/ckpt_rosinality.py``: the file is ``torch.save(dict(g_ema=..., g=..., d=...,
latent_avg=...))`` with rosinality's tensor names and layouts, so ``rosinality`` / DCP-GAN / CAGAN
code loads it with ``Generator(size, style_dim, n_mlp, channel_multiplier).load_state_dict(ckpt['g_ema'])``
when the widths follow rosinality's channel table (config-f at 256 px is channel_multiplier 2,
``channel_base=32768, channel_max=512`` here); pruned widths are written as they are, for loaders
that read widths from the tensors (DCP-GAN's students).

What rosinality's classes can express, and therefore what is checked: generator with the ``skip``
architecture, no labels, z_dim == w_dim, mapping lr multiplier 0.01, [1,3,3,1] filters;
discriminator ``resnet`` with minibatch-std group 4 and 1 channel. A ``conv_clamp`` (NVIDIA's 256)
has no rosinality counterpart and is dropped with a note: the functions are the same unless an
activation exceeds the clamp, which in float32 practice it does not. The blur kernels
rosinality keeps as buffers are written as its constructors make them: the normalised outer
product of [1,3,3,1], times 4 where it upsamples.
"""
import numpy as np
import torch

import dnnlib
from dnnlib.util import UserError

_K = torch.tensor([1., 3., 3., 1.])
DOWN_KERNEL = torch.outer(_K, _K) / torch.outer(_K, _K).sum()   # rosinality Blur(kernel, pad)
UP_KERNEL = DOWN_KERNEL * 4                                     # Blur(..., upsample_factor=2), Upsample(kernel)


def _check(cond, message):
    if not cond:
        raise UserError(f'--to rosinality: {message}')


def _blocks(G):
    return [getattr(G.synthesis, f'b{res}') for res in G.synthesis.block_resolutions]


def check_generator(G, where='G_ema', notes=None):
    """One clear error for a generator rosinality's Generator cannot represent (notes: what is dropped)."""
    _check(hasattr(G, 'synthesis') and hasattr(G.synthesis, 'block_resolutions') and hasattr(G.synthesis, 'b4'),
           f'{where} is not a StyleGAN2 generator (StyleGAN3 has no rosinality counterpart)')
    _check(G.c_dim == 0, f'{where} is conditional (c_dim={G.c_dim}); rosinality generators take no labels')
    _check(G.z_dim == G.w_dim, f'{where} has z_dim {G.z_dim} != w_dim {G.w_dim}; rosinality uses one style_dim')
    fc0 = G.mapping.fc0
    _check(abs(fc0.weight_gain * np.sqrt(fc0.in_features if hasattr(fc0, 'in_features') else fc0.weight.shape[1]) - 0.01) < 1e-9,
           f'{where}: mapping lr multiplier is not 0.01 (rosinality lr_mlp default)')
    for block in _blocks(G):
        _check(block.architecture == 'skip', f'{where}: block b{block.resolution} has architecture '
                                             f'{block.architecture!r}; rosinality generators are "skip"')
        for name in ('conv0', 'conv1', 'torgb'):
            clamp = getattr(getattr(block, name, None), 'conv_clamp', None)
            if clamp is not None and notes is not None:
                note = f'{where}: conv_clamp {clamp:g} dropped (rosinality has no clamp)'
                if note not in notes:
                    notes.append(note)
    for name, buf in G.named_buffers():
        if name.endswith('resample_filter'):
            f = buf.detach().float().cpu()
            _check(tuple(f.shape) == (4, 4) and torch.allclose(f / f.sum(), DOWN_KERNEL, atol=1e-6),
                   f'{where}: {name} is not the [1,3,3,1] filter rosinality uses')


def generator_state_dict(G, where='G_ema', notes=None):
    """rosinality ``Generator.state_dict()`` of our StyleGAN2 ``G`` (float32 CPU tensors)."""
    check_generator(G, where, notes)
    ours = {k: v.detach().float().cpu().clone() for k, v in G.state_dict().items()}
    sd = {}

    def layer(src, dst, up=False, rgb=False):
        sd[f'{dst}.conv.weight'] = ours[f'{src}.weight'][None]
        sd[f'{dst}.conv.modulation.weight'] = ours[f'{src}.affine.weight']
        sd[f'{dst}.conv.modulation.bias'] = ours[f'{src}.affine.bias']
        if rgb:
            sd[f'{dst}.bias'] = ours[f'{src}.bias'].reshape(1, -1, 1, 1)
            if up:
                sd[f'{dst}.upsample.kernel'] = UP_KERNEL.clone()
            return
        if up:
            sd[f'{dst}.conv.blur.kernel'] = UP_KERNEL.clone()
        sd[f'{dst}.noise.weight'] = ours[f'{src}.noise_strength'].reshape(1)
        sd[f'{dst}.activate.bias'] = ours[f'{src}.bias']

    for i in range(G.mapping.num_layers):
        sd[f'style.{i + 1}.weight'] = ours[f'mapping.fc{i}.weight']
        sd[f'style.{i + 1}.bias'] = ours[f'mapping.fc{i}.bias']
    sd['input.input'] = ours['synthesis.b4.const'][None]
    layer('synthesis.b4.conv1', 'conv1')
    layer('synthesis.b4.torgb', 'to_rgb1', rgb=True)
    for j, res in enumerate(G.synthesis.block_resolutions[1:]):
        layer(f'synthesis.b{res}.conv0', f'convs.{2 * j}', up=True)
        layer(f'synthesis.b{res}.conv1', f'convs.{2 * j + 1}')
        layer(f'synthesis.b{res}.torgb', f'to_rgbs.{j}', up=True, rgb=True)
    noise_layers = ['synthesis.b4.conv1'] + [f'synthesis.b{res}.conv{k}' for res in G.synthesis.block_resolutions[1:] for k in (0, 1)]
    for n, src in enumerate(noise_layers):
        if f'{src}.noise_const' in ours:
            noise = ours[f'{src}.noise_const']
            sd[f'noises.noise_{n}'] = noise.reshape(1, 1, *noise.shape[-2:])
    return sd


def discriminator_state_dict(D, where='D', notes=None):
    """rosinality ``Discriminator.state_dict()`` of our resnet StyleGAN2 ``D``."""
    _check(getattr(D, 'c_dim', 0) == 0, f'{where} is conditional; rosinality discriminators take no labels')
    blocks = [getattr(D, f'b{res}') for res in D.block_resolutions]
    for block in blocks:
        _check(block.architecture == 'resnet', f'{where}: block b{block.resolution} has architecture '
                                               f'{block.architecture!r}; rosinality discriminators are "resnet"')
    mbstd = D.b4.mbstd
    _check(mbstd is not None and mbstd.group_size == 4 and mbstd.num_channels == 1,
           f'{where}: minibatch-std must be group 4, 1 channel (rosinality stddev_group=4, stddev_feat=1)')
    if notes is not None and any(getattr(m, 'conv_clamp', None) is not None for m in D.modules()):
        notes.append(f'{where}: conv_clamp dropped (rosinality has no clamp)')
    ours = {k: v.detach().float().cpu().clone() for k, v in D.state_dict().items()}
    size = D.img_resolution
    sd = {'convs.0.0.weight': ours[f'b{size}.fromrgb.weight'], 'convs.0.1.bias': ours[f'b{size}.fromrgb.bias']}
    for k, res in enumerate(D.block_resolutions, start=1):
        sd[f'convs.{k}.conv1.0.weight'] = ours[f'b{res}.conv0.weight']
        sd[f'convs.{k}.conv1.1.bias'] = ours[f'b{res}.conv0.bias']
        sd[f'convs.{k}.conv2.0.kernel'] = DOWN_KERNEL.clone()
        sd[f'convs.{k}.conv2.1.weight'] = ours[f'b{res}.conv1.weight']
        sd[f'convs.{k}.conv2.2.bias'] = ours[f'b{res}.conv1.bias']
        sd[f'convs.{k}.skip.0.kernel'] = DOWN_KERNEL.clone()
        sd[f'convs.{k}.skip.1.weight'] = ours[f'b{res}.skip.weight']
    sd.update({'final_conv.0.weight': ours['b4.conv.weight'], 'final_conv.1.bias': ours['b4.conv.bias'],
               'final_linear.0.weight': ours['b4.fc.weight'], 'final_linear.0.bias': ours['b4.fc.bias'],
               'final_linear.1.weight': ours['b4.out.weight'], 'final_linear.1.bias': ours['b4.out.bias']})
    return sd


def export_checkpoint(data, notes=None):
    """Snapshot dict (G_ema, G, D) -> rosinality checkpoint dict (``g_ema``, ``g``, ``d``, ``latent_avg``)."""
    G_ema = data.get('G_ema')
    if G_ema is None:
        raise UserError('--to rosinality: the snapshot has no G_ema')
    ckpt = dict(g_ema=generator_state_dict(G_ema, 'G_ema', notes))
    if getattr(G_ema.mapping, 'w_avg', None) is not None:
        ckpt['latent_avg'] = G_ema.mapping.w_avg.detach().float().cpu().clone()
    if data.get('G') is not None:
        ckpt['g'] = generator_state_dict(data['G'], 'G', notes)
    if data.get('D') is not None:
        ckpt['d'] = discriminator_state_dict(data['D'], 'D', notes)
    return ckpt


def save_checkpoint(data, path, verbose=True):
    """Write the rosinality checkpoint of a snapshot dict atomically (``torch.save`` of tensors only)."""
    notes = []
    ckpt = export_checkpoint(data, notes)
    for note in notes:
        if verbose:
            print(f'note: {note}')
    with dnnlib.util.atomic_open(path, 'wb') as f:
        torch.save(ckpt, f)
    return ckpt
