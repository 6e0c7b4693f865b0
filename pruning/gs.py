"""GAN-Slimming channel scores (Wang et al., ECCV 2020) from style scalars, StyleGAN2 and StyleGAN3.

A channel's "scaling factor" is the style (affine output) that modulates it in the layer that
consumes it. S_k = sum over batches of mean over the batch of |s| from the affine of group k's
consumer: conv k for k < n_conv, the last toRGB for the last group (SG3: layer k). The official
``mask_the_generator`` split one concatenated vector of every conv AND toRGB style by the group
widths, which misassigns scores from group 2 on; hooks on the affine modules avoid that.
``average_torgb=True`` additionally averages each SG2 block-output group with the toRGB that
reads it. Meaningful after sparsity training (an L1 term on the styles, in the training loss).
"""
import torch

from . import channels, scorers


@torch.no_grad()
def score(G, n_samples=400, batch=8, seed=0, device=None, progress=True, average_torgb=False, **_unused):
    device = scorers.default_device(device)
    G = scorers.prepare_generator(G, device)
    groups = channels.channel_groups(G)
    modules = dict(G.named_modules())
    sources = []  # (group index, affine module name)
    for g in groups:
        sources.append((g.index, g.affine))
        if average_torgb:
            for name in g.torgb:
                affine = name[:-len('.weight')] + '.affine'
                if affine != g.affine:
                    sources.append((g.index, affine))
    captured = {}
    hooks = []
    for _k, name in sources:
        def hook(_module, _inputs, output, name=name):
            captured[name] = output.detach().abs().to(torch.float64).mean(dim=0)
        hooks.append(modules[name].register_forward_hook(hook))
    sums = {name: torch.zeros(modules[name].weight.shape[0], dtype=torch.float64, device=device) for _k, name in sources}
    try:
        with scorers.rng_scope(device):
            bar = scorers.Progress(n_samples, 'gs', enabled=progress)
            for bi, b in scorers.my_batches(scorers.fixed_batches(n_samples, batch)):
                gen = torch.Generator().manual_seed(scorers.substream_seed(seed, bi))
                z, c = scorers.sample_latents(G, b, gen, device)
                captured.clear()
                scorers.synthesize(G, scorers.map_latents(G, z, c), 'const')
                for name in sums:
                    sums[name] += captured[name]
                bar.update(b)
    finally:
        for h in hooks:
            h.remove()
    scorers.all_reduce_(list(sums.values()))
    result = []
    for g in groups:
        names = [name for k, name in sources if k == g.index]
        result.append((sum(sums[n] for n in names) / len(names)).to(torch.float32).cpu())
    return result
