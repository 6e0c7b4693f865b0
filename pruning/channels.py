"""Channel groups of StyleGAN2/3 generators, keep-mask selection, and slicing into a student.

A channel group is a set of feature channels that one tensor produces and other tensors consume;
pruning removes the same channels everywhere. Groups are found by walking the network's
structure (never by key order or substring tests).

StyleGAN2 (n_conv + 1 groups; convs in forward order b4.conv1, b8.conv0, b8.conv1, ...):
  group 0      = b4.const channels, consumed by conv 0;
  group k >= 1 = output channels of conv k-1, consumed by conv k and, when conv k-1 is a block's
                 conv1, by that block's toRGB (and a resnet block's skip); the last group is
                 consumed by the last toRGB only.
  Score source of group k: the weight of its conv consumer (the LAST toRGB for the last group).
StyleGAN3 (num_layers + 1 groups): group 0 = SynthesisInput output (rows of input.weight), group k =
  in-channels of layer k (outputs of layer k-1); the final toRGB's 3 outputs are never pruned.

Selection keeps, per group, C - floor(p*C) channels for StyleGAN2 (= ceil((1-p)*C), SVS) and
max(floor((1-p)*C), 3) for StyleGAN3 (DCP-GAN SG3 branch); the lowest scores are removed with a
stable sort. Widths of the student are always derived from the masks.

Slicing builds the student as the teacher's own Generator class with ``layer_channels`` = the
kept widths and copies every tensor, sliced along its channel axes. The toRGB layers have no
demodulation and scale their styles by 1/sqrt(C_in); with C_in -> C' their output would grow by
sqrt(C/C'). ``compensate_torgb=True`` multiplies the kept toRGB weights by sqrt(C'/C) (and likewise
the 1x1 skip convs of resnet synthesis blocks, whose gain is also 1/sqrt(C_in)), so that the
student computes exactly what the dense teacher computes with the removed channels zeroed (the
masked-dense oracle). The official SVS/DCP code does not compensate (with it, our toRGB weights
after SVS would be about 0.75x the official ones), so slicing alone is the default here and in
prune.py, and ``compensate_torgb=True`` / ``prune.py --torgb-compensation`` opts in.
Demodulated 3x3 convs need nothing: demodulation renormalises over the kept inputs.
"""
import math

import torch

import dnnlib

# ---------------------------------------------------------------------------------------------
# Structure.


def generator_family(G):
    """'sg2' or 'sg3'; UserError for anything else."""
    syn = getattr(G, 'synthesis', None)
    if syn is not None and hasattr(syn, 'block_resolutions'):
        return 'sg2'
    if syn is not None and hasattr(syn, 'layer_names') and hasattr(syn, 'input'):
        return 'sg3'
    raise dnnlib.util.UserError(f'network: {type(G).__name__} is not a StyleGAN2/StyleGAN3 generator this pruner supports')


def _new_group(groups, size):
    groups.append(dnnlib.EasyDict(index=len(groups), size=int(size), slices=[], score_weight=None,
                                  affine=None, torgb=[], fan_in_gain=[]))
    return len(groups) - 1


def _consume(group, layer_name, score=True):
    group.slices += [(f'{layer_name}.weight', 1), (f'{layer_name}.affine.weight', 0), (f'{layer_name}.affine.bias', 0)]
    if score and group.score_weight is None:
        group.score_weight = f'{layer_name}.weight'
        group.affine = f'{layer_name}.affine'


def _sg2_groups(G):
    syn = G.synthesis
    groups = []
    cur = None
    for res in syn.block_resolutions:
        prefix = f'synthesis.b{res}'
        block = getattr(syn, f'b{res}')
        block_in = cur
        if getattr(block, 'const', None) is not None:
            cur = _new_group(groups, block.const.shape[0])
            groups[cur].slices.append((f'{prefix}.const', 0))
        for conv_name in ('conv0', 'conv1'):
            conv = getattr(block, conv_name, None)
            if conv is None:
                continue
            _consume(groups[cur], f'{prefix}.{conv_name}')
            cur = _new_group(groups, conv.weight.shape[0])
            groups[cur].slices += [(f'{prefix}.{conv_name}.weight', 0), (f'{prefix}.{conv_name}.bias', 0)]
        if getattr(block, 'torgb', None) is not None:
            _consume(groups[cur], f'{prefix}.torgb', score=False)
            groups[cur].torgb.append(f'{prefix}.torgb.weight')
            groups[cur].fan_in_gain.append(f'{prefix}.torgb.weight')
        if getattr(block, 'skip', None) is not None:
            groups[cur].slices.append((f'{prefix}.skip.weight', 0))
            groups[block_in].slices.append((f'{prefix}.skip.weight', 1))
            groups[block_in].fan_in_gain.append(f'{prefix}.skip.weight')
    for group in groups:
        if group.score_weight is None:  # the last group: scored from the last toRGB
            if not group.torgb:
                raise dnnlib.util.UserError(f'network: channel group {group.index} has no consumer to score')
            group.score_weight = group.torgb[-1]
            group.affine = group.torgb[-1][:-len('.weight')] + '.affine'
    return groups


def _sg3_groups(G):
    syn = G.synthesis
    groups = []
    cur = _new_group(groups, syn.input.weight.shape[0])
    groups[cur].slices.append(('synthesis.input.weight', 0))
    names = list(syn.layer_names)
    for i, name in enumerate(names):
        layer = getattr(syn, name)
        _consume(groups[cur], f'synthesis.{name}')
        if getattr(layer, 'is_torgb', i == len(names) - 1):
            groups[cur].torgb.append(f'synthesis.{name}.weight')
            groups[cur].fan_in_gain.append(f'synthesis.{name}.weight')
        if i < len(names) - 1:
            cur = _new_group(groups, layer.weight.shape[0])
            groups[cur].slices += [(f'synthesis.{name}.weight', 0), (f'synthesis.{name}.bias', 0)]
    return groups


def channel_groups(G):
    """List of EasyDict(index, size, slices=[(tensor name, axis)], score_weight, affine, torgb=[names],
    fan_in_gain=[names]) with names relative to ``G`` (e.g. 'synthesis.b8.conv0.weight').
    ``fan_in_gain``: consumer weights without demodulation whose runtime gain is 1/sqrt(C_in)
    (toRGB layers; resnet skip convs), i.e. those the toRGB compensation rescales."""
    return _sg2_groups(G) if generator_family(G) == 'sg2' else _sg3_groups(G)


def group_widths(G):
    return [g.size for g in channel_groups(G)]

# ---------------------------------------------------------------------------------------------
# Selection.


def keep_count(size, ratio, family):
    """Channels kept in a group of ``size`` at remove ratio ``ratio`` with the family's rounding."""
    if family == 'sg2':
        return int(size) - int(math.floor(ratio * size))
    if family == 'sg3':
        return min(int(size), max(int(math.floor((1 - ratio) * size)), 3))
    raise ValueError(f'unknown family {family}')


def check_ratio(ratio, allow_zero=False):
    ok = (0 <= ratio < 1) if allow_zero else (0 < ratio < 1)
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ok):
        interval = '[0, 1)' if allow_zero else '(0, 1)'
        raise dnnlib.util.UserError(f'--ratio: {ratio} is outside {interval}')


def _check_scores(scores, sizes):
    if len(scores) != len(sizes):
        raise dnnlib.util.UserError(f'scores: {len(scores)} groups given, the network has {len(sizes)}')
    out = []
    for k, (s, size) in enumerate(zip(scores, sizes)):
        s = torch.as_tensor(s).detach().to('cpu', torch.float64).reshape(-1)
        if s.numel() != size:
            raise dnnlib.util.UserError(f'scores: group {k} has {s.numel()} scores for {size} channels')
        if not torch.isfinite(s).all():
            bad = int((~torch.isfinite(s)).sum())
            raise dnnlib.util.UserError(f'scores: group {k} has {bad} NaN/Inf scores (diverged scoring?); refusing to rank them')
        out.append(s)
    return out


def select_masks(scores, ratio, family='sg2', global_ranking=False):
    """Boolean keep-masks (one per group, original channel order) from per-channel scores.

    Per group (default): remove the C - keep_count(C) lowest-scoring channels (stable sort: ties
    remove the lower index first). ``global_ranking``: the same total number of channels is
    removed, but ranked across all groups after dividing each group's scores by their mean
    (scores of different layers live on different scales). ratio 0 keeps everything.
    """
    check_ratio(ratio, allow_zero=True)
    sizes = [int(torch.as_tensor(s).numel()) for s in scores]
    scores = _check_scores(scores, sizes)
    masks = [torch.ones(size, dtype=torch.bool) for size in sizes]
    if not global_ranking:
        for k, (s, size) in enumerate(zip(scores, sizes)):
            n_remove = size - keep_count(size, ratio, family)
            if n_remove >= size:
                raise dnnlib.util.UserError(f'--ratio: {ratio} would leave channel group {k} ({size} channels) empty')
            if n_remove > 0:
                order = torch.argsort(s, stable=True)
                masks[k][order[:n_remove]] = False
        return masks

    n_remove = sum(size - keep_count(size, ratio, family) for size in sizes)
    normed = []
    for s in scores:
        mean = s.abs().mean()
        normed.append(s / mean if mean > 0 else s)
    flat = torch.cat(normed)
    owner = torch.cat([torch.full([size], k, dtype=torch.long) for k, size in enumerate(sizes)])
    local = torch.cat([torch.arange(size) for size in sizes])
    order = torch.argsort(flat, stable=True)[:n_remove]
    for k, i in zip(owner[order].tolist(), local[order].tolist()):
        masks[k][i] = False
    for k, m in enumerate(masks):
        if not m.any():
            raise dnnlib.util.UserError(f'--global-ranking: ratio {ratio} removes every channel of group {k}; '
                                        'use a smaller ratio or per-layer ranking')
    return masks


def widths_from_masks(masks):
    return [int(torch.as_tensor(m).sum()) for m in masks]


def masks_to_indices(masks):
    """Kept channel indices per group (JSON-friendly)."""
    return [torch.as_tensor(m).nonzero().flatten().tolist() for m in masks]


def indices_to_masks(indices, sizes):
    masks = []
    for idx, size in zip(indices, sizes):
        m = torch.zeros(size, dtype=torch.bool)
        m[torch.as_tensor(idx, dtype=torch.long)] = True
        masks.append(m)
    return masks

# ---------------------------------------------------------------------------------------------
# Slicing.


def _with_layer_channels(kwargs, widths):
    kwargs = dnnlib.EasyDict(kwargs)
    kwargs.pop('layer_channels', None)
    syn = kwargs.get('synthesis_kwargs', None)
    if isinstance(syn, dict):
        syn = dnnlib.EasyDict(syn)
        syn['layer_channels'] = list(widths)
        kwargs['synthesis_kwargs'] = syn
    else:
        kwargs['layer_channels'] = list(widths)
    return kwargs


def build_like(G, widths):
    """A fresh generator of G's class and constructor arguments with the given group widths."""
    if not hasattr(G, 'init_kwargs'):
        raise dnnlib.util.UserError(f'network: {type(G).__name__} does not record its constructor arguments')
    kwargs = _with_layer_channels(G.init_kwargs, widths)
    return type(G)(*G.init_args, **kwargs)


def slice_plan(groups):
    """{tensor name: [(axis, group index), ...]}."""
    plan = {}
    for g in groups:
        for name, axis in g.slices:
            plan.setdefault(name, []).append((axis, g.index))
    return plan


def _check_masks(masks, groups):
    if len(masks) != len(groups):
        raise dnnlib.util.UserError(f'masks: {len(masks)} given, the network has {len(groups)} channel groups')
    out = []
    for g, m in zip(groups, masks):
        m = torch.as_tensor(m).to('cpu').reshape(-1)
        if m.dtype != torch.bool or m.numel() != g.size:
            raise dnnlib.util.UserError(f'masks: group {g.index} needs a boolean mask of {g.size} entries')
        if not m.any():
            raise dnnlib.util.UserError(f'masks: group {g.index} keeps no channel')
        out.append(m)
    return out


@torch.no_grad()
def slice_generator(G, masks, compensate_torgb=False):
    """The student: G's class with widths = kept counts, every tensor sliced (see module doc)."""
    groups = channel_groups(G)
    masks = _check_masks(masks, groups)
    keep = [m.nonzero().flatten() for m in masks]
    widths = widths_from_masks(masks)
    plan = slice_plan(groups)

    student = build_like(G, widths)
    device = next(G.parameters()).device
    state = {}
    for name, tensor in G.state_dict().items():
        t = tensor.detach()
        for axis, k in plan.get(name, []):
            t = t.index_select(axis, keep[k].to(t.device))
        state[name] = t.clone()
    if compensate_torgb:
        for g in groups:
            for name in g.fan_in_gain:
                state[name] = state[name] * math.sqrt(widths[g.index] / g.size)

    target = student.state_dict()
    if set(target) != set(state):
        missing, extra = sorted(set(target) - set(state)), sorted(set(state) - set(target))
        raise RuntimeError(f'slice_generator: state names differ (missing {missing[:3]}, extra {extra[:3]})')
    for name, t in state.items():
        if tuple(target[name].shape) != tuple(t.shape):
            raise RuntimeError(f'slice_generator: {name} sliced to {tuple(t.shape)}, student expects {tuple(target[name].shape)}')
    student.load_state_dict(state, strict=True)
    student.to(device)
    student.train(G.training)
    params = dict(G.named_parameters())
    for name, p in student.named_parameters():
        p.requires_grad_(params[name].requires_grad)
    return student


@torch.no_grad()
def masked_dense(G, masks):
    """Test oracle: a copy of G whose consumers ignore the removed channels (their weight columns
    zeroed). Equal to ``slice_generator(G, masks, compensate_torgb=True)``."""
    import copy
    groups = channel_groups(G)
    masks = _check_masks(masks, groups)
    dense = copy.deepcopy(G)
    params = dict(dense.named_parameters())
    for g, m in zip(groups, masks):
        for name, axis in g.slices:
            if axis == 1:  # a consumer's input channels (conv, toRGB, skip weights)
                w = params[name]
                shape = [1] * w.ndim
                shape[1] = -1
                w.mul_(m.to(w.device, w.dtype).reshape(shape))
    return dense
