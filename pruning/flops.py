"""Parameters and FLOPs of generators, with the paper's convention.

Parameters: every generator parameter, mapping network included (buffers excluded).
FLOPs: multiply-accumulates (no factor 2) of
  - the modulated 3x3 convs, C_in * C_out * k^2 * s^2, where s is the conv's INPUT resolution
    (so the up-sampling conv0 of a block is counted at the lower resolution),
  - the toRGB convs, C_in * img_channels * res^2 (and resnet skip 1x1 convs at their input
    resolution when present),
  - the mapping network and the style affines: the number of entries of their weights.
Modulation, demodulation, noise, biases, activations and the FIR filters are not counted.
At 256 px this gives 45,124,673,536 MACs / 30,034,338 params for the dense config-f ("base").

StyleGAN3 (no counterpart in the paper's calculator): per layer C_in * C_out * k^2 * (H_in+k-1) *
(W_in+k-1) at the conv's padded output size, the Fourier input's matrix product, affines and mapping.
"""
import math

import numpy as np

# ---------------------------------------------------------------------------------------------
# StyleGAN2, analytic from the per-group widths.


def sg2_dense_widths(img_resolution, channel_base=32768, channel_max=512):
    """Dense channel-group widths: [const, out of conv 0, out of conv 1, ...] (n_conv + 1)."""
    log2 = int(np.log2(img_resolution))
    assert img_resolution == 2 ** log2 and img_resolution >= 4
    ch = lambda res: min(channel_base // res, channel_max)
    widths = [ch(4), ch(4)]
    for res in [2 ** i for i in range(3, log2 + 1)]:
        widths += [ch(res), ch(res)]
    return widths


def pruned_widths_sg2(widths, ratio):
    """Per-group keep counts of the SG2 family, C - floor(p*C) (float64 product, as the official
    numpy code), for widths of a uniformly pruned network."""
    return [int(c) - int(math.floor(ratio * c)) for c in widths]


def sg2_conv_input_resolutions(img_resolution):
    """Input resolution of every modulated conv in forward order (b4.conv1, b8.conv0, b8.conv1, ...)."""
    res = [4]
    r = 8
    while r <= img_resolution:
        res += [r // 2, r]
        r *= 2
    return res


def sg2_params_and_macs(widths, img_resolution, z_dim=512, w_dim=512, c_dim=0, mapping_layers=8,
                        img_channels=3, kernel_size=3, embed_features=None, layer_features=None,
                        architecture='skip'):
    """(params, MACs) of a StyleGAN2-ADA generator from its channel-group widths (n_conv + 1 of them).

    Matches ``training.networks_stylegan2.Generator`` with ``layer_channels=widths``.
    """
    log2 = int(np.log2(img_resolution))
    n_conv = 2 * log2 - 3
    if len(widths) != n_conv + 1:
        raise ValueError(f'expected {n_conv + 1} widths for {img_resolution} px, got {len(widths)}')
    # Mapping network: optional label embedding, then mapping_layers FC layers.
    embed_features = w_dim if embed_features is None else embed_features
    layer_features = w_dim if layer_features is None else layer_features
    if c_dim == 0:
        embed_features = 0
    params = macs = 0
    if c_dim > 0:
        params += c_dim * embed_features + embed_features
        macs += c_dim * embed_features
    features = [z_dim + embed_features] + [layer_features] * (mapping_layers - 1) + [w_dim]
    for fin, fout in zip(features[:-1], features[1:]):
        params += fin * fout + fout
        macs += fin * fout

    in_res = sg2_conv_input_resolutions(img_resolution)
    params += widths[0] * 16  # const
    for k in range(n_conv):
        cin, cout = widths[k], widths[k + 1]
        params += cout * cin * kernel_size ** 2 + cout + 1 + (w_dim * cin + cin)  # weight, bias, noise_strength, affine
        macs += cin * cout * kernel_size ** 2 * in_res[k] ** 2 + w_dim * cin
    resolutions = [2 ** i for i in range(2, log2 + 1)]
    for j, res in enumerate(resolutions):
        has_torgb = architecture == 'skip' or res == img_resolution
        if has_torgb:
            cin = widths[2 * j + 1]
            params += img_channels * cin + img_channels + (w_dim * cin + cin)
            macs += cin * img_channels * res ** 2 + w_dim * cin
        if architecture == 'resnet' and j > 0:
            cin, cout = widths[2 * j - 1], widths[2 * j + 1]
            params += cout * cin
            macs += cin * cout * (res // 2) ** 2
    return params, macs

# ---------------------------------------------------------------------------------------------
# Any generator instance.


def count_params(module):
    """Number of parameters (buffers excluded)."""
    return int(sum(p.numel() for p in module.parameters()))


def _fc_weight_entries(module):
    return int(sum(m.weight.numel() for m in module.modules() if type(m).__name__ == 'FullyConnectedLayer'))


def _sg2_macs(G):
    syn = G.synthesis
    macs = _fc_weight_entries(G.mapping) + _fc_weight_entries(syn)  # mapping + every affine
    for res in syn.block_resolutions:
        block = getattr(syn, f'b{res}')
        for conv_name in ('conv0', 'conv1'):
            conv = getattr(block, conv_name, None)
            if conv is not None:
                cout, cin, kh, kw = conv.weight.shape
                in_res = res // 2 if getattr(conv, 'up', 1) > 1 else res
                macs += cout * cin * kh * kw * in_res ** 2
        torgb = getattr(block, 'torgb', None)
        if torgb is not None:
            cout, cin, kh, kw = torgb.weight.shape
            macs += cout * cin * kh * kw * res ** 2
        skip = getattr(block, 'skip', None)
        if skip is not None:
            cout, cin, kh, kw = skip.weight.shape
            macs += cout * cin * kh * kw * (res // 2) ** 2
    return int(macs)


def _sg3_macs(G):
    syn = G.synthesis
    macs = _fc_weight_entries(G.mapping) + _fc_weight_entries(syn)
    inp = syn.input
    h, w = (int(v) for v in np.broadcast_to(np.asarray(inp.size), [2])[::-1])
    macs += int(inp.weight.numel()) * h * w  # x @ weight^T at every pixel
    for name in syn.layer_names:
        layer = getattr(syn, name)
        cout, cin, kh, kw = layer.weight.shape
        in_w, in_h = (int(v) for v in np.broadcast_to(np.asarray(layer.in_size), [2]))
        macs += cout * cin * kh * kw * (in_h + kh - 1) * (in_w + kw - 1)
    return int(macs)


def count_macs(G):
    """MACs per generated image (see the module docstring), from the modules' actual shapes."""
    syn = G.synthesis
    if hasattr(syn, 'block_resolutions'):
        return _sg2_macs(G)
    if hasattr(syn, 'layer_names'):
        return _sg3_macs(G)
    raise TypeError(f'count_macs: unsupported generator {type(G).__name__}')


def generator_stats(G):
    """dict(params, macs, synthesis_params, mapping_params) of a generator instance."""
    return dict(params=count_params(G), macs=count_macs(G),
                mapping_params=count_params(G.mapping), synthesis_params=count_params(G.synthesis))


def format_count(n, unit=''):
    """30034338 -> '30.03M'; 45124673536 -> '45.12B'."""
    for div, suffix in ((1e12, 'T'), (1e9, 'B'), (1e6, 'M'), (1e3, 'K')):
        if abs(n) >= div:
            return f'{n / div:.2f}{suffix}{unit}'
    return f'{n}{unit}'
