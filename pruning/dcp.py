"""DCP-GAN diversity-aware channel scores (Chung et al., CVPR 2024), StyleGAN2 and StyleGAN3.

1. PCA of W from ``pca_samples`` mapped latents (psi 1): components sorted by the std of the
   projections (ddof 0), probability rho_m = std_m^2 / total variance, normalised to sum 1.
2. Per batch of latents w (the last batch absorbs the remainder), draw ``n_directions`` component
   indices with replacement by rho; each direction d is applied to every sample and every style
   input: w' = w + alpha * d.
3. Per direction, L = sum |G(w') - G(w)| (sum, not mean). By default the perturbed image is a
   constant (stop-gradient; SVS SG2 and the DCP-GAN SG3 branch), so dL/dtheta =
   -sign(G(w') - G(w)) dG(w)/dtheta. ``grad_through_perturbed=True`` keeps both passes in the
   graph, as DCP-GAN's main branch does (its ``requires_grad = False`` is a no-op).
4. g_k[c] = mean over (out, kh, kw) of |dL/dW_k[:, c]| for the group's consumer weight W_k.
5. S_k[c] = sum over batches of sum over directions of (g - mean over directions of g)^2:
   channels whose gradient magnitude varies little across latent directions are removed.

``noise_mode='random'`` (default) reproduces the official runs: fresh noise in each pass.
``'const'`` shares the stored noise, so both passes differ only by the edit; the clean image is
then computed once per batch and reused for every direction (an exact shortcut). The perturbed
images of a batch are rendered in one no-grad pass of n_directions * batch images.
"""
import numpy as np
import torch

import dnnlib

from . import channels, scorers

NOISE_MODES = ('random', 'const', 'none')


def dcp_batches(n_samples, batch):
    """Batch sizes of the official loop: [b] * (n//b - 1) + [b + n % b]; one batch if n < b."""
    if n_samples < 1 or batch < 1:
        raise dnnlib.util.UserError(f'--n-samples/--batch: need positive values, got {n_samples}/{batch}')
    if n_samples < batch:
        return [n_samples]
    n_batch = n_samples // batch
    return [batch] * (n_batch - 1) + [batch + n_samples % batch]


@torch.no_grad()
def latent_pca(G, n_samples=10000, seed=0, device='cpu', chunk=1000):
    """(components [M, w_dim] unit rows, rho [M] summing to 1, mean w [w_dim]), float64.

    Components are sorted by projection std (descending) with a deterministic sign (largest
    entry positive)."""
    gen = torch.Generator().manual_seed(scorers.substream_seed(seed, 0x50CA))
    ws = []
    for start in range(0, n_samples, chunk):
        z, c = scorers.sample_latents(G, min(chunk, n_samples - start), gen, device)
        ws.append(scorers.map_latents(G, z, c)[:, 0].to(torch.float64))
    w = torch.cat(ws)
    mean = w.mean(dim=0)
    centred = w - mean
    _u, s, vh = torch.linalg.svd(centred, full_matrices=False)
    std = s / np.sqrt(w.shape[0])
    order = torch.argsort(std, descending=True, stable=True)
    comps, std = vh[order], std[order]
    comps = comps / comps.norm(dim=1, keepdim=True)
    flip = comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)).sign()
    comps = comps * torch.where(flip == 0, torch.ones_like(flip), flip)
    total_var = centred.square().mean(dim=0).sum()
    rho = std.square() / total_var
    rho = rho / rho.sum()
    return comps, rho, mean


def _direction_grads(G, weights, ws, ws_p, noise_mode, grad_through_perturbed, clean=None, perturbed=None):
    """Gradients of L = sum |G(ws_p) - G(ws)| with respect to ``weights``."""
    if grad_through_perturbed:
        img = scorers.synthesize(G, ws, noise_mode)
        img_p = scorers.synthesize(G, ws_p, noise_mode)
        loss = (img_p - img).abs().sum()
        return torch.autograd.grad(loss, weights)
    img = clean if clean is not None else scorers.synthesize(G, ws, noise_mode)
    # d/dtheta sum |p - img| with p constant = sum sign(img - p) * dimg/dtheta.
    cotangent = torch.sign(img.detach() - perturbed)
    return torch.autograd.grad(img, weights, grad_outputs=cotangent, retain_graph=clean is not None)


def score(G, n_samples=5000, batch=5, n_directions=10, alpha=10.0, pca_samples=10000,
          grad_through_perturbed=False, noise_mode='random', truncation_psi=1.0, seed=0,
          device=None, progress=True, **_unused):
    """DCP scores, one float32 tensor per channel group (see the module docstring)."""
    if noise_mode not in NOISE_MODES:
        raise dnnlib.util.UserError(f'--noise-mode: unknown "{noise_mode}", expected one of {", ".join(NOISE_MODES)}')
    if n_directions < 2:
        raise dnnlib.util.UserError(f'--n-directions: need at least 2 directions for a variance, got {n_directions}')
    if pca_samples < 2:
        raise dnnlib.util.UserError(f'--pca-samples: need at least 2, got {pca_samples}')
    device = scorers.default_device(device)
    G = scorers.prepare_generator(G, device)
    groups = channels.channel_groups(G)
    weights = scorers.score_weights(G, groups)
    sizes = dcp_batches(n_samples, batch)
    accum = [torch.zeros(g.size, dtype=torch.float64, device=device) for g in groups]
    share_clean = noise_mode != 'random' and not grad_through_perturbed

    with scorers.rng_scope(device):
        comps, rho, w_mean = latent_pca(G, pca_samples, seed=seed, device=device)
        scorers.broadcast_([comps, rho, w_mean])
        comps = comps.to(torch.float32)
        rho_cpu = rho.cpu()
        w_mean = w_mean.to(torch.float32)
        bar = scorers.Progress(n_samples, 'dcp', enabled=progress)
        for bi, b in scorers.my_batches(sizes):
            bseed = scorers.substream_seed(seed, bi)
            gen = torch.Generator().manual_seed(bseed)
            torch.manual_seed(bseed)  # the networks' random noise
            z, c = scorers.sample_latents(G, b, gen, device)
            ws = scorers.map_latents(G, z, c)
            if truncation_psi != 1:
                ws = w_mean.lerp(ws, truncation_psi)
            idx = torch.multinomial(rho_cpu, n_directions, replacement=True, generator=gen).to(device)
            shifts = alpha * truncation_psi * comps[idx]                      # [N, w_dim]
            ws_p = ws.unsqueeze(0) + shifts[:, None, None, :]                 # [N, b, num_ws, w_dim]

            perturbed = None
            if not grad_through_perturbed:
                with torch.no_grad():
                    perturbed = scorers.synthesize(G, ws_p.flatten(0, 1), noise_mode)
                    perturbed = perturbed.reshape(n_directions, b, *perturbed.shape[1:])
            clean = scorers.synthesize(G, ws, noise_mode) if share_clean else None

            mags = [torch.empty(n_directions, g.size, dtype=torch.float64, device=device) for g in groups]
            for i in range(n_directions):
                grads = _direction_grads(G, weights, ws, ws_p[i], noise_mode, grad_through_perturbed,
                                         clean=clean,
                                         perturbed=None if perturbed is None else perturbed[i])
                for k, grad in enumerate(grads):
                    mags[k][i] = scorers.in_channel_magnitude(grad).to(torch.float64)
            del clean
            for k, m in enumerate(mags):
                accum[k] += (m - m.mean(dim=0, keepdim=True)).square().sum(dim=0)
            bar.update(b)
        scorers.all_reduce_(accum)
    return [a.to(torch.float32).cpu() for a in accum]
