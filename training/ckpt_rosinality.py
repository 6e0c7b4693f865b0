"""rosinality stylegan2-pytorch checkpoints (``g_ema``, ``g``, ``d``, ``latent_avg``) -> our StyleGAN2 classes.

Widths are read from the tensors, so pruned students (e.g. DCP-GAN's) load too.
"""
import copy
import re

import torch

import dnnlib
from dnnlib.util import UserError
from training.ckpt_common import construct, copy_tensors_strict, networks_stylegan2, note, shape_of


def _blur_kernel_ok(kernel):
    k1 = torch.tensor([1., 3., 3., 1.])
    ref = torch.outer(k1, k1)
    kernel = torch.as_tensor(kernel, dtype=torch.float32)
    return tuple(kernel.shape) == (4, 4) and bool(torch.allclose(kernel / kernel.sum(), ref / ref.sum(), atol=1e-6))


def _dense_channels(widths_by_res):
    """(channel_base, channel_max) whose table min(base // res, max) gives exactly these widths, or None."""
    max_res = max(widths_by_res)
    base, cmax = widths_by_res[max_res] * max_res, max(widths_by_res.values())
    if all(min(base // r, cmax) == c for r, c in widths_by_res.items()):
        return base, cmax
    return None


def rosinality_generator_plan(sd, where='g_ema'):
    """Map a rosinality ``Generator`` state dict to our StyleGAN2 ``Generator``.

    Returns ``(init_kwargs, tensors, accounting)``: constructor kwargs for our Generator, a dict of our
    tensor names -> tensors, and for every key of ``sd`` what it became (our name, or
    ``'resample_filter (rebuilt; kernel checked)'``). Widths are read from the tensors, so pruned
    students load too (``layer_channels`` when they are not a dense channel table).
    """
    sd = {k: v for k, v in sd.items()}
    tensors, accounting = {}, {}

    def take(key, ours, value=None):
        tensors[ours] = sd[key] if value is None else value
        accounting[key] = ours

    def need(key):
        if key not in sd:
            raise UserError(f'{where}: tensor {key} is missing (not a complete rosinality generator)')
        return sd[key]

    style_ids = sorted(int(m.group(1)) for k in sd for m in [re.fullmatch(r'style\.(\d+)\.weight', k)] if m)
    if not style_ids or style_ids != list(range(1, len(style_ids) + 1)):
        raise UserError(f'{where}: mapping layers style.N.weight are missing or not numbered 1..n_mlp')
    n_mlp = len(style_ids)
    style_dim = int(need('style.1.weight').shape[1])
    num_convs = len({m.group(1) for k in sd for m in [re.fullmatch(r'convs\.(\d+)\..*', k)] if m})
    if num_convs % 2:
        raise UserError(f'{where}: odd number of synthesis convs ({num_convs})')
    size = 4 * 2 ** (num_convs // 2)
    img_channels = int(need('to_rgb1.conv.weight').shape[1])

    # Channel groups in forward order: const, b4.conv1, then conv0/conv1 of each block.
    widths = [int(need('input.input').shape[1]), int(need('conv1.conv.weight').shape[1])]
    widths += [int(need(f'convs.{k}.conv.weight').shape[1]) for k in range(num_convs)]
    widths_by_res = {4: widths[1]}
    for k in range(num_convs):
        res = 8 * 2 ** (k // 2)
        if k % 2 == 1 and widths[k + 2] != widths[k + 1]:
            widths_by_res = None
        if widths_by_res is not None:
            widths_by_res[res] = widths[k + 2]
    if widths[0] != widths[1]:
        widths_by_res = None
    dense = _dense_channels(widths_by_res) if widths_by_res else None

    synthesis_kwargs = dnnlib.EasyDict(channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=None,
                                       architecture='skip')
    if dense is not None:
        synthesis_kwargs.channel_base, synthesis_kwargs.channel_max = dense
    else:
        synthesis_kwargs.layer_channels = widths
    init_kwargs = dnnlib.EasyDict(z_dim=style_dim, c_dim=0, w_dim=style_dim, img_resolution=size,
                                  img_channels=img_channels, mapping_kwargs=dnnlib.EasyDict(num_layers=n_mlp),
                                  synthesis_kwargs=synthesis_kwargs)

    def layer(src, dst):
        for key in [k for k in sd if k.startswith(src + '.')]:
            field = key[len(src) + 1:]
            if field == 'conv.weight':
                take(key, f'{dst}.weight', sd[key][0])
            elif field == 'conv.modulation.weight':
                take(key, f'{dst}.affine.weight')
            elif field == 'conv.modulation.bias':
                take(key, f'{dst}.affine.bias')
            elif field == 'noise.weight':
                take(key, f'{dst}.noise_strength', sd[key].reshape([]))
            elif field == 'activate.bias':
                take(key, f'{dst}.bias')
            elif field == 'bias':  # ToRGB
                take(key, f'{dst}.bias', sd[key].reshape(-1))
            elif field in ('conv.blur.kernel', 'upsample.kernel'):
                if not _blur_kernel_ok(sd[key]):
                    raise UserError(f'{where}: tensor {key} is not the [1,3,3,1] resampling kernel our networks use')
                accounting[key] = 'resample_filter (rebuilt; kernel checked)'
            else:
                raise UserError(f'{where}: tensor {key} {shape_of(sd[key])} has no counterpart in our Generator')

    for i in style_ids:
        take(f'style.{i}.weight', f'mapping.fc{i - 1}.weight')
        if f'style.{i}.bias' in sd:
            take(f'style.{i}.bias', f'mapping.fc{i - 1}.bias')
    take('input.input', 'synthesis.b4.const', sd['input.input'][0])
    layer('conv1', 'synthesis.b4.conv1')
    layer('to_rgb1', 'synthesis.b4.torgb')
    for k in range(num_convs):
        layer(f'convs.{k}', f'synthesis.b{8 * 2 ** (k // 2)}.conv{k % 2}')
    for j in range(num_convs // 2):
        layer(f'to_rgbs.{j}', f'synthesis.b{8 * 2 ** j}.torgb')
    for key in sd:
        m = re.fullmatch(r'noises\.noise_(\d+)', key)
        if m:
            n = int(m.group(1))
            dst = 'synthesis.b4.conv1' if n == 0 else f'synthesis.b{8 * 2 ** ((n - 1) // 2)}.conv{(n - 1) % 2}'
            take(key, f'{dst}.noise_const', sd[key].reshape(sd[key].shape[-2:]))
    stray = [k for k in sd if k not in accounting]
    if stray:
        raise UserError(f'{where}: tensor {stray[0]} {shape_of(sd[stray[0]])} has no counterpart in our Generator')
    return init_kwargs, tensors, accounting


def rosinality_discriminator_plan(sd, where='d'):
    """Map a rosinality ``Discriminator`` state dict to our resnet ``Discriminator`` (see the G plan)."""
    tensors, accounting = {}, {}
    if 'convs.0.0.weight' not in sd:
        raise UserError(f'{where}: tensor convs.0.0.weight is missing (not a rosinality discriminator)')
    num_blocks = len({m.group(1) for k in sd for m in [re.fullmatch(r'convs\.(\d+)\.conv1\..*', k)] if m})
    size = 4 * 2 ** num_blocks
    img_channels = int(sd['convs.0.0.weight'].shape[1])
    widths_by_res = {size: int(sd['convs.0.0.weight'].shape[0])}
    for k in range(1, num_blocks + 1):
        res = size // 2 ** (k - 1)
        key = f'convs.{k}.conv2.1.weight'
        if key not in sd:
            raise UserError(f'{where}: tensor {key} is missing (not a complete rosinality discriminator)')
        widths_by_res[res // 2] = int(sd[key].shape[0])
    dense = _dense_channels(widths_by_res)
    if dense is None:
        raise UserError(f'{where}: discriminator widths {widths_by_res} are not a dense channel table; '
                        f'pruned discriminators are not supported')
    init_kwargs = dnnlib.EasyDict(c_dim=0, img_resolution=size, img_channels=img_channels, architecture='resnet',
                                  channel_base=dense[0], channel_max=dense[1], num_fp16_res=0, conv_clamp=None,
                                  epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=4, mbstd_num_channels=1))
    fixed = {'convs.0.0.weight': f'b{size}.fromrgb.weight', 'convs.0.1.bias': f'b{size}.fromrgb.bias',
             'final_conv.0.weight': 'b4.conv.weight', 'final_conv.1.bias': 'b4.conv.bias',
             'final_linear.0.weight': 'b4.fc.weight', 'final_linear.0.bias': 'b4.fc.bias',
             'final_linear.1.weight': 'b4.out.weight', 'final_linear.1.bias': 'b4.out.bias'}
    fields = {'conv1.0.weight': 'conv0.weight', 'conv1.1.bias': 'conv0.bias', 'conv2.1.weight': 'conv1.weight',
              'conv2.2.bias': 'conv1.bias', 'skip.1.weight': 'skip.weight'}
    for key, value in sd.items():
        m = re.fullmatch(r'convs\.(\d+)\.(.*)', key)
        if key in fixed:
            tensors[fixed[key]] = value
            accounting[key] = fixed[key]
        elif m and int(m.group(1)) >= 1 and m.group(2) in fields:
            ours = f'b{size // 2 ** (int(m.group(1)) - 1)}.{fields[m.group(2)]}'
            tensors[ours] = value
            accounting[key] = ours
        elif m and int(m.group(1)) >= 1 and m.group(2) in ('conv2.0.kernel', 'skip.0.kernel'):
            if not _blur_kernel_ok(value):
                raise UserError(f'{where}: tensor {key} is not the [1,3,3,1] resampling kernel our networks use')
            accounting[key] = 'resample_filter (rebuilt; kernel checked)'
        else:
            raise UserError(f'{where}: tensor {key} {shape_of(value)} has no counterpart in our Discriminator')
    return init_kwargs, tensors, accounting


def convert_rosinality_generator(sd, where='g_ema', latent_avg=None):
    """Our ``Generator`` from a rosinality ``g``/``g_ema`` state dict; returns ``(G, notes)``."""
    init_kwargs, tensors, _accounting = rosinality_generator_plan(sd, where)
    G = construct(networks_stylegan2().Generator, (), init_kwargs, where)
    notes = []
    allow = [r'.*\.resample_filter', r'mapping\.w_avg']
    if not any(n.endswith('noise_const') for n in tensors):
        allow.append(r'.*\.noise_const')
        notes.append('no noise buffers in the file: noise_const stays random')
    if latent_avg is not None:
        tensors['mapping.w_avg'] = torch.as_tensor(latent_avg).reshape(-1)
    copy_tensors_strict(G, tensors, where, allow_missing=allow)
    return G, notes


def convert_rosinality_discriminator(sd, where='d'):
    init_kwargs, tensors, _accounting = rosinality_discriminator_plan(sd, where)
    D = construct(networks_stylegan2().Discriminator, (), init_kwargs, where)
    copy_tensors_strict(D, tensors, where, allow_missing=[r'.*\.resample_filter'])
    return D


@torch.no_grad()
def estimate_w_avg(G, num_samples=10000, seed=0, batch_size=1000):
    """Mean of the mapping output over ``num_samples`` z drawn with a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros([G.w_dim], dtype=torch.float64)
    done = 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        z = torch.randn([n, G.z_dim], generator=gen)
        c = torch.zeros([n, G.c_dim])
        ws = G.mapping(z, c, truncation_psi=1)
        total += ws[:, 0].double().sum(dim=0)
        done += n
    return (total / num_samples).float()


def convert_rosinality_checkpoint(ckpt, source='<checkpoint>', verbose=True, w_avg_samples=10000):
    """A rosinality checkpoint dict -> ``dict(G, D, G_ema, augment_pipe=None, training_set_kwargs=None)``."""
    def state_dict(key):
        sd = ckpt[key]
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise UserError(f'{source}: {key} is not a state dict of tensors')
        return sd

    latent_avg = ckpt.get('latent_avg')
    G_ema, notes = convert_rosinality_generator(state_dict('g_ema'), f'{source}: g_ema', latent_avg)
    if latent_avg is None:
        G_ema.mapping.w_avg.copy_(estimate_w_avg(G_ema, num_samples=w_avg_samples))
        notes.append(f'no latent_avg in the file: w_avg estimated as the mean of {w_avg_samples} mapped z (seed 0)')
    if 'g' in ckpt:
        G, _ = convert_rosinality_generator(state_dict('g'), f'{source}: g', G_ema.mapping.w_avg.clone())
    else:
        G = copy.deepcopy(G_ema)
        notes.append('no g in the file: G is a copy of g_ema')
    D = convert_rosinality_discriminator(state_dict('d'), f'{source}: d') if 'd' in ckpt else None
    if D is None:
        notes.append('no d in the file: D is None')
    note(verbose, f'{source}: rosinality checkpoint, converted' + ''.join(f'; {n}' for n in notes))
    return dict(G=G, D=D, G_ema=G_ema, augment_pipe=None, training_set_kwargs=None)

