"""Sanity baselines: random scores and consumer weight magnitude (l1-out)."""
import torch

from . import channels, scorers


def score_random(G, seed=0, **_unused):
    """Uniform random scores from ``seed`` (no network evaluation)."""
    groups = channels.channel_groups(G)
    gen = torch.Generator().manual_seed(scorers.substream_seed(seed, 0x7A4D))
    return [torch.rand(g.size, generator=gen) for g in groups]


@torch.no_grad()
def score_l1(G, **_unused):
    """Mean |W| over (out, kh, kw) per input channel of the group's consumer weight (the last
    toRGB for the last SG2 group). Deterministic; raw stored weights."""
    groups = channels.channel_groups(G)
    params = dict(G.named_parameters())
    return [scorers.in_channel_magnitude(params[g.score_weight].float()).cpu() for g in groups]
