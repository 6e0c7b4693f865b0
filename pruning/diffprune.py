"""Diff-Prune (Fang et al. 2023) for diffusers ``UNet2DModel``: structural channel pruning by torch-pruning.

What VainF/Diff-Pruning does for Table 3 (and we do): torch-pruning's dependency graph traced with
one 1x3xHxW input at t=1; every group rooted at a Conv2d/Linear except ``conv_out`` is pruned
locally (each layer keeps the same fraction) in one step; groups that contain a GroupNorm are cut
by the same channels in each of its groups. Importance: ``taylor`` (|w * dL/dw| with gradients from
ONE batch with fixed noise accumulated over t = 0, 1, 2, ... until the loss drops below
``thr`` x its maximum), ``magnitude`` (L2 of the weights) or ``random``.

Channel counts depend only on the widths, the ratio and the GroupNorm groups. torch-pruning changed
its GroupNorm rounding in 1.4.1, so we compute the counts ourselves and only use torch-pruning (pinned
1.6.1) for the dependency graph, the importance scores and the physical removal:

- ``rounding='legacy'`` (default; the copy bundled with Diff-Pruning and pip releases <= 1.4.0, which
  made Table 3): a GroupNorm'd layer of C channels loses 32*((C - int(C*(1-r)))//32) channels (the
  group count in place of 32);
- ``rounding='per-group'`` (torch-pruning >= 1.4.1): it keeps G*int((C/G)*(1-r));
- layers without GroupNorm keep int(C*(1-r)) either way.

MACs are counted the way ddim's UNet counts them (``count_ddim_macs``): torch-pruning's counter plus
the biases of the attention projections, which ddim implements as 1x1 convolutions (counted with
their bias) and diffusers as linears (counted without).
"""
import torch

import dnnlib
from dnnlib.util import UserError

IMPORTANCES = ('taylor', 'magnitude', 'random')
ROUNDINGS = ('legacy', 'per-group')


def example_inputs(unet, batch=1):
    res = int(unet.config.sample_size)
    return dict(sample=torch.randn(batch, unet.config.in_channels, res, res), timestep=torch.ones((batch,), dtype=torch.long))


def count_params(module):
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_ddim_macs(unet):
    """(MACs, params) of one forward at batch 1, as ddim's UNet is counted (see module doc)."""
    import torch_pruning as tp
    from diffusers.models.attention_processor import Attention
    extra = []
    hooks = []
    for m in unet.modules():
        if isinstance(m, Attention):
            for lin in (m.to_q, m.to_k, m.to_v, m.to_out[0]):
                if lin.bias is not None:
                    hooks.append(lin.register_forward_hook(lambda mod, inp, out: extra.append(out.numel())))
    try:
        was_training = unet.training
        inputs = example_inputs(unet)  # positional: torch-pruning warns about keyword-only inputs
        macs, params = tp.utils.count_ops_and_params(unet.eval(), (inputs['sample'], inputs['timestep']))
        unet.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return int(macs) + sum(extra), int(params)


def _group_norm_groups(group):
    groups = [dep.target.module.num_groups for dep, _ in group if isinstance(dep.target.module, torch.nn.GroupNorm)]
    return max(groups) if groups else 1


def channels_to_remove(channels, ratio, norm_groups=1, rounding='legacy'):
    """How many channels of a layer of ``channels`` are removed (a multiple of ``norm_groups``)."""
    if rounding not in ROUNDINGS:
        raise UserError(f'--rounding: expected one of {", ".join(ROUNDINGS)}, got {rounding!r}')
    if norm_groups <= 1:
        return channels - int(channels * (1 - ratio))
    if rounding == 'legacy':
        return norm_groups * ((channels - int(channels * (1 - ratio))) // norm_groups)
    per_group = channels // norm_groups
    return channels - norm_groups * int(per_group * (1 - ratio))


def taylor_gradients(unet, images, diffusion, thr=0.05, seed=0, verbose=True):
    """Accumulate dL/dw of ONE batch (fixed noise) over t = 0, 1, ... until loss < thr * max loss.

    ``images``: float tensor [N, C, H, W] in [-1, 1]. Returns the number of timesteps used."""
    from training import diffusion as diff
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen)
    unet.zero_grad(set_to_none=True)
    unet.requires_grad_(True)
    max_loss = 0.0
    used = 0
    for t in range(diffusion.num_timesteps):
        tt = torch.full((images.shape[0],), t, dtype=torch.long)
        x_t = diff.q_sample(diffusion, images, tt, noise)
        loss = torch.nn.functional.mse_loss(unet(x_t, tt).sample, noise)
        loss.backward()
        used += 1
        value = float(loss.detach())
        max_loss = max(max_loss, value)
        if verbose and t % 100 == 0:
            print(f'diffprune taylor: t={t} loss {value:.5f} (max {max_loss:.5f})', flush=True)
        if value < max_loss * thr:
            break
    return used


def _importance(name):
    import torch_pruning as tp
    if name == 'taylor':
        return tp.importance.TaylorImportance()
    if name == 'magnitude':
        return tp.importance.MagnitudeImportance(p=2)
    if name == 'random':
        return tp.importance.RandomImportance()
    raise UserError(f'--importance: expected one of {", ".join(IMPORTANCES)}, got {name!r}')


def prune_unet(unet, ratio, importance='taylor', rounding='legacy', images=None, diffusion=None, thr=0.05, seed=0,
               verbose=True):
    """Prune ``unet`` in place (channels physically removed) and return a report EasyDict.

    ``images``/``diffusion``: the batch and schedule of the Taylor gradients (taylor only)."""
    import torch_pruning as tp
    from diffusers.models.attention_processor import Attention, AttnProcessor
    if not (isinstance(ratio, (int, float)) and 0 <= ratio < 1):
        raise UserError(f'--ratio: expected a number in [0, 1), got {ratio!r}')
    imp = _importance(importance)
    if importance == 'taylor':
        if images is None or diffusion is None:
            raise UserError('diffprune: taylor importance needs a batch of training images and the noise schedule')
        steps = taylor_gradients(unet, images, diffusion, thr=thr, seed=seed, verbose=verbose)
    else:
        steps = 0
    torch.manual_seed(seed)  # random importance
    before_macs, before_params = count_ddim_macs(unet)

    # Trace with the classic (bmm) attention processor: torch-pruning follows its ops.
    attentions = [m for m in unet.modules() if isinstance(m, Attention)]
    processors = [m.processor for m in attentions]
    for m in attentions:
        m.set_processor(AttnProcessor())

    def restore():
        for m, proc in zip(attentions, processors):
            m.set_processor(proc)
    unet.eval().requires_grad_(True)  # torch-pruning traces the autograd graph
    try:
        graph = tp.DependencyGraph().build_dependency(unet, example_inputs=example_inputs(unet),
                                                      output_transform=lambda out: out.sample)
    except Exception as err:  # tracing failures come as many types; one line names the model
        restore()
        raise UserError(f'diffprune: torch-pruning cannot trace {type(unet).__name__} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""})')
    names = {m: n for n, m in unet.named_modules()}
    layers = []
    # Groups are fetched one at a time, after the previous one was pruned (as torch-pruning's own
    # pruners do): a group's channel indices refer to the layers as they are at that moment.
    num_groups = 0
    for group in graph.get_all_groups(ignored_layers=[unet.conv_out], root_module_types=[torch.nn.Conv2d, torch.nn.Linear]):
        num_groups += 1
        root = group[0].dep.target.module
        handler = group[0].dep.handler
        channels = graph.get_out_channels(root) if graph.is_out_channel_pruning_fn(handler) else graph.get_in_channels(root)
        norm_groups = _group_norm_groups(group)
        n_remove = channels_to_remove(channels, ratio, norm_groups, rounding)
        if n_remove >= channels or (norm_groups > 1 and n_remove // norm_groups >= channels // norm_groups):
            restore()
            raise UserError(f'diffprune: ratio {ratio} would remove every channel of {names.get(root, root)} '
                            f'({channels} channels, {norm_groups} groups)')
        if n_remove <= 0:
            continue
        scores = imp(group)
        if scores is None:
            continue
        scores = scores.detach().float().cpu()
        if norm_groups > 1:  # same channels in every group: rank the group-averaged scores
            per_group = n_remove // norm_groups
            size = channels // norm_groups
            ranked = scores.view(norm_groups, size).mean(0).argsort()[:per_group]
            idxs = torch.cat([ranked + g * size for g in range(norm_groups)])
        else:
            idxs = scores.argsort()[:n_remove]
        idxs = sorted(int(i) for i in idxs)
        graph.get_pruning_group(root, handler, idxs).prune()
        layers.append(dnnlib.EasyDict(name=names.get(root, str(root)), channels=channels, removed=len(idxs),
                                      norm_groups=norm_groups))
    restore()
    if num_groups == 0:
        raise UserError(f'diffprune: torch-pruning found no prunable layer in {type(unet).__name__}')
    from training.ddpm_checkpoints import sync_block_attributes
    sync_block_attributes(unet)
    unet.zero_grad(set_to_none=True)
    unet.requires_grad_(False)
    macs, params = count_ddim_macs(unet)
    if verbose:
        print(f'diffprune {importance} r={ratio}: params {before_params / 1e6:.4f}M -> {params / 1e6:.4f}M, '
              f'MACs {before_macs / 1e9:.4f}G -> {macs / 1e9:.4f}G ({len(layers)} groups pruned)', flush=True)
    return dnnlib.EasyDict(ratio=ratio, importance=importance, rounding=rounding, taylor_steps=steps, layers=layers,
                           params_before=before_params, params=params, macs_before=before_macs, macs=macs)

# ---------------------------------------------------------------------------------------------
# The job behind ``prune.py ddpm``: teacher -> student folder (diffusers) + pruning.json.


def calibration_batch(data, batch, resolution, seed=0):
    """``batch`` training images (a seeded random subset) as float [-1, 1] NCHW."""
    import numpy as np
    dataset = dnnlib.util.construct_class_by_name(class_name='training.dataset.ImageFolderDataset', path=data)
    if len(dataset) == 0:
        raise UserError(f'--data: {data} holds no images')
    if dataset.resolution != resolution:
        raise UserError(f'--data: {data} has {dataset.resolution} px images, the network makes {resolution} px')
    idx = np.random.RandomState(seed).permutation(len(dataset))[:batch]
    images = np.stack([dataset[int(i)][0] for i in idx])
    return torch.from_numpy(images).to(torch.float32) / 127.5 - 1


def apply_svs(unet, fn='sqrt', reset_norm=True, spectra_png=None):
    """SVS of a DDPM through the shared ``svs.scale_`` (the DDPM rule), then optionally the official
    GroupNorm reset (``svs_reset_norm``, default on for Table 3). Returns a small JSON-able report;
    ``spectra_png``: also plot the singular values before/after (svs.spectra)."""
    import svs
    from svs import scaling, spectra
    report = svs.scale_(unet, fn=fn)
    reset = scaling.reset_group_norm_affine_(unet) if reset_norm else []
    if spectra_png is not None:
        spectra.plot_spectra(report, spectra_png, title=f'DDPM UNet: SVS ({report.fn})')
    return dict(fn=report.fn, scaled=[layer.name for layer in report.layers], reset_group_norms=reset)


def prune_ddpm(network, outdir, ratio=0.3, importance='taylor', rounding='legacy', data=None, batch=128, thr=0.05,
               svs_fn='none', svs_reset_norm=True, seed=0, overwrite=False, verbose=True):
    """Prune the teacher's (EMA) UNet; write ``outdir/student`` (diffusers folder) and ``pruning.json``."""
    import json
    import os
    from training import ddpm_checkpoints, diffusion
    student_dir, json_path = os.path.join(outdir, 'student'), os.path.join(outdir, 'pruning.json')
    if not overwrite and (os.path.exists(student_dir) or os.path.exists(json_path)):
        raise UserError(f'--outdir: {outdir} already holds a student (use --overwrite or another folder)')
    teacher = ddpm_checkpoints.load_ddpm(network)
    unet = teacher.net
    widths = lambda net: [m.conv1.out_channels for m in net.modules() if hasattr(m, 'conv1') and hasattr(m, 'time_emb_proj')]
    teacher_widths = widths(unet)
    schedule = diffusion.make_schedule(**(teacher.diffusion or {}))
    images = None
    if importance == 'taylor':
        if data is None:
            raise UserError('--data: taylor importance needs the training images')
        images = calibration_batch(data, batch, int(unet.config.sample_size), seed)
    report = prune_unet(unet, ratio, importance=importance, rounding=rounding, images=images, diffusion=schedule,
                        thr=thr, seed=seed, verbose=verbose)
    svs_report = None
    if svs_fn and svs_fn != 'none':
        svs_report = apply_svs(unet, svs_fn, svs_reset_norm)
    ddpm_checkpoints.save_diffusers(unet.eval(), student_dir, diffusion=schedule)
    info = dict(teacher=os.fspath(network), method='diffprune', importance=importance, ratio=ratio, rounding=rounding,
                thr=thr, batch=batch if importance == 'taylor' else None, seed=seed, taylor_steps=report.taylor_steps,
                params=dict(teacher=report.params_before, student=report.params),
                macs=dict(teacher=report.macs_before, student=report.macs),
                layers=[dict(layer) for layer in report.layers], svs=svs_report,
                settings=dict(importance=importance, thr=thr, n_samples=batch if importance == 'taylor' else None, seed=seed),
                teacher_widths=teacher_widths, widths=widths(unet))
    dnnlib.util.atomic_write_bytes(json_path, (json.dumps(info, indent=2) + '\n').encode('utf-8'))
    return dnnlib.EasyDict(student=student_dir, report=report, info=info)


def svs_ddpm(network, outdir, fn='sqrt', reset_norm=True, overwrite=False):
    """SVS of an existing DDPM student: ``outdir/student`` (diffusers folder) and ``svs.json``."""
    import json
    import os
    from training import ddpm_checkpoints, diffusion
    student_dir = os.path.join(outdir, 'student')
    os.makedirs(outdir, exist_ok=True)
    if not overwrite and os.path.exists(student_dir):
        raise UserError(f'--outdir: {student_dir} exists (use --overwrite or another folder)')
    src = ddpm_checkpoints.load_ddpm(network)
    report = apply_svs(src.net, fn, reset_norm, spectra_png=os.path.join(outdir, 'spectra.png'))
    ddpm_checkpoints.save_diffusers(src.net.eval(), student_dir, diffusion=diffusion.make_schedule(**(src.diffusion or {})))
    dnnlib.util.atomic_write_bytes(os.path.join(outdir, 'svs.json'),
                                   (json.dumps(dict(network=os.fspath(network), **report), indent=2) + '\n').encode('utf-8'))
    return student_dir
