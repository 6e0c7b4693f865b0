"""CAGAN content-aware channel scores (Liu et al., CVPR 2021), StyleGAN2 and StyleGAN3.

Per batch: x = G(z) (psi 1, random noise) with the graph kept; a content mask M (``uniform``: every
pixel; ``face``: BiSeNet labels other than background 0 and cloth 16); a salt-and-pepper target t
that equals x except, inside M and with probability ``noise_prob`` per pixel, all channels set to
+1 or -1 (fair coin per pixel); L = sum |t - x| with t constant. Only noised pixels contribute
(|x - x| has a zero subgradient), so the official per-pixel Python loop is replaced by one
``torch.where`` over a Bernoulli map and a sign map: the gradient is identical.
g_k[c] = mean over (out, kh, kw) of |dL/dW_k[:, c]|, summed over batches (no variance term).
"""
import torch

import dnnlib

from . import channels, scorers

MASKS = ('uniform', 'face')


def noise_maps(shape, noise_prob, gen):
    """(Bernoulli(noise_prob) bool map, +-1 sign map), both [N, 1, H, W], drawn on the CPU from
    ``gen`` in this order: the noise map, then the signs."""
    n, _c, h, w = shape
    noised = torch.rand([n, 1, h, w], generator=gen) < noise_prob
    sign = torch.where(torch.rand([n, 1, h, w], generator=gen) < 0.5, 1.0, -1.0)
    return noised, sign


def salt_and_pepper(img, content, noised, sign):
    """The constant target: ``img`` with every noised pixel inside ``content`` set to ``sign``."""
    hit = noised.to(img.device) & (content.to(img.device) > 0.5)
    return torch.where(hit, sign.to(img.device, img.dtype), img.detach())


def load_parser(mask, face_parser, parser, device):
    if mask not in MASKS:
        raise dnnlib.util.UserError(f'--mask: unknown content mask "{mask}", expected one of {", ".join(MASKS)}')
    if mask != 'face' or parser is not None:
        return parser
    if not face_parser:
        raise dnnlib.util.UserError('--mask face: needs the BiSeNet checkpoint 79999_iter.pth (--face-parser PATH_OR_URL)')
    from .face_parsing import load_face_parser
    return load_face_parser(face_parser, device=device)


def score(G, n_samples=400, batch=8, noise_prob=0.05, mask='uniform', face_parser=None, parser=None,
          seed=0, device=None, progress=True, **_unused):
    """CAGAN scores, one float32 tensor per channel group. ``parser``: an already loaded face
    parser; otherwise ``face_parser`` (path or URL of 79999_iter.pth) is loaded for mask='face'."""
    if not 0 < noise_prob <= 1:
        raise dnnlib.util.UserError(f'--noise-prob: {noise_prob} is outside (0, 1]')
    device = scorers.default_device(device)
    parser = load_parser(mask, face_parser, parser, device)
    from .content_mask import content_mask

    G = scorers.prepare_generator(G, device)
    groups = channels.channel_groups(G)
    weights = scorers.score_weights(G, groups)
    accum = [torch.zeros(g.size, dtype=torch.float64, device=device) for g in groups]
    with scorers.rng_scope(device):
        bar = scorers.Progress(n_samples, 'cagan', enabled=progress)
        for bi, b in scorers.my_batches(scorers.fixed_batches(n_samples, batch)):
            bseed = scorers.substream_seed(seed, bi)
            gen = torch.Generator().manual_seed(bseed)
            torch.manual_seed(bseed)
            z, c = scorers.sample_latents(G, b, gen, device)
            img = scorers.synthesize(G, scorers.map_latents(G, z, c), 'random')
            content = content_mask(parser, img.detach(), mask)
            noised, sign = noise_maps(img.shape, noise_prob, gen)
            target = salt_and_pepper(img, content, noised, sign)
            loss = (target - img).abs().sum()
            for k, grad in enumerate(torch.autograd.grad(loss, weights)):
                accum[k] += scorers.in_channel_magnitude(grad).to(torch.float64)
            bar.update(b)
        scorers.all_reduce_(accum)
    return [a.to(torch.float32).cpu() for a in accum]
