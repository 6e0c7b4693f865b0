"""Perceptual path length (Karras et al. 2019, "A Style-Based Generator Architecture"), as
stylegan2-ada-pytorch's ``ppl2_wend`` and legacy ``ppl_{z,w}{full,end}``.

For each sample: draw z0, z1 ~ N(0, I) and t ~ U(0, 1) (``full``) or t = 0 (``end``); interpolate
at t and t + eps, in Z by slerp or in W by lerp of the mapped latents (W+ per layer); randomise the
constant noise buffers once per batch and render both images with ``noise_mode='const'``, so the
two images of a pair share their noise; optionally crop the face region (rows 3/8..7/8, columns
2/8..6/8); average-pool down to 256 px; map [-1, 1] to [0, 255]; take NVIDIA's VGG16 LPIPS
embedding (``vgg16.pt`` called with ``resize_images=False, return_lpips=True``) and score
``sum((f(t) - f(t + eps))^2) / eps^2``. PPL is the mean of the scores between the 1st ('lower')
and 99th ('higher') percentiles.
"""
import copy

import numpy as np
import torch

from metrics import detectors, features
from metrics.sample_rng import batch_rng, gather_in_batch_order, random_labels, randomize_noise_buffers


def slerp(a, b, t):
    """Spherical interpolation of the directions of a and b (rows), result unit length."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    d = (a * b).sum(dim=-1, keepdim=True)
    p = t * torch.acos(d)
    c = b - d * a
    c = c / c.norm(dim=-1, keepdim=True)
    out = a * torch.cos(p) + c * torch.sin(p)
    return out / out.norm(dim=-1, keepdim=True)


def draw_pairs(G, gen, batch_size, sampling):
    """(t [B], z0 [B, z_dim], z1 [B, z_dim]) of one batch; t is drawn for 'end' too (then zeroed)."""
    t = torch.rand([batch_size], generator=gen) * (1 if sampling == 'full' else 0)
    z0, z1 = torch.randn([batch_size * 2, G.z_dim], generator=gen).chunk(2)
    return t, z0, z1


def path_scores(G, vgg16, t, z0, z1, c, epsilon, space, crop, G_kwargs=None):
    """Scores [B] of one batch (``G`` is a private copy whose noise buffers are already drawn)."""
    if space == 'w':
        w0, w1 = G.mapping(z=torch.cat([z0, z1]), c=torch.cat([c, c])).chunk(2)
        wt0 = w0.lerp(w1, t[:, None, None])
        wt1 = w0.lerp(w1, t[:, None, None] + epsilon)
    else:
        zt0 = slerp(z0, z1, t[:, None])
        zt1 = slerp(z0, z1, t[:, None] + epsilon)
        wt0, wt1 = G.mapping(z=torch.cat([zt0, zt1]), c=torch.cat([c, c])).chunk(2)
    img = G.synthesis(ws=torch.cat([wt0, wt1]), noise_mode='const', force_fp32=True, **(G_kwargs or {}))
    if crop:
        s = img.shape[2] // 8
        img = img[:, :, s * 3:s * 7, s * 2:s * 6]
    factor = G.img_resolution // 256
    if factor > 1:
        img = img.reshape([-1, img.shape[1], img.shape[2] // factor, factor, img.shape[3] // factor, factor]).mean([3, 5])
    img = (img + 1) * (255 / 2)
    if G.img_channels == 1:
        img = img.repeat([1, 3, 1, 1])
    e0, e1 = vgg16(img, resize_images=False, return_lpips=True).chunk(2)
    return (e0 - e1).square().sum(1) / epsilon ** 2


def filtered_mean(scores):
    """Mean of the scores between the 1st ('lower') and 99th ('higher') percentiles."""
    scores = np.asarray(scores, dtype=np.float64)
    lo = np.percentile(scores, 1, method='lower')
    hi = np.percentile(scores, 99, method='higher')
    return float(scores[(scores >= lo) & (scores <= hi)].mean())


@torch.no_grad()
def compute_ppl(G, *, num_samples, epsilon=1e-4, space='w', sampling='end', crop=False, batch_size=2,
                dataset=None, G_kwargs=None, seed=0, num_gpus=1, rank=0, device='cpu', detector_dir=None,
                progress=None):
    """PPL of ``G`` over ``num_samples`` pairs; batch b draws from ``batch_rng(seed, b)``.

    Returns the PPL on every rank (scores are all-gathered) and the raw scores (numpy).
    """
    assert space in ('z', 'w') and sampling in ('full', 'end')
    device = torch.device(device)
    vgg16 = detectors.load_detector('vgg16', device=device, detector_dir=detector_dir)
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    monitor = features.Progress('ppl sampling', num_samples, progress, rank)
    num_batches = -(-num_samples // batch_size)
    scores = []
    for step in range(-(-num_batches // num_gpus)):
        b = step * num_gpus + rank
        gen = batch_rng(seed, b)
        t, z0, z1 = draw_pairs(G, gen, batch_size, sampling)
        randomize_noise_buffers(G, gen)
        c = random_labels(dataset, G.c_dim, seed, b, batch_size)
        dist = path_scores(G, vgg16, t.to(device), z0.to(device), z1.to(device), c.to(device), epsilon, space, crop, G_kwargs)
        scores.extend(p.cpu() for p in gather_in_batch_order(dist.to(torch.float64), num_gpus))
        monitor.update(min(len(scores) * batch_size, num_samples))
    scores = torch.cat(scores)[:num_samples].numpy()
    return filtered_mean(scores), scores
