"""Channel scorers: ``score(G, **kwargs) -> list of float32 CPU tensors``, one per channel group
(see ``pruning.channels``), higher = more important. Chosen by name:

  dcp     diversity-aware (DCP-GAN)                 pruning/dcp.py
  cagan   content-aware (CAGAN)                     pruning/cagan.py
  gs      GAN-Slimming style scalars                pruning/gs.py
  random  uniform random (sanity baseline)          pruning/baselines.py
  l1      consumer weight magnitude (baseline)      pruning/baselines.py

Shared here: device and fp32 preparation, per-batch seeding that does not depend on the number
of processes, latent sampling, progress lines, and torch.distributed support (each rank scores
its share of the batches, accumulators are summed with all_reduce).
"""
import copy
import sys
import time

import numpy as np
import torch

import dnnlib

from . import channels

METHODS = ('dcp', 'cagan', 'gs', 'random', 'l1')


def get_scorer(method):
    if method == 'dcp':
        from .dcp import score
    elif method == 'cagan':
        from .cagan import score
    elif method == 'gs':
        from .gs import score
    elif method == 'random':
        from .baselines import score_random as score
    elif method == 'l1':
        from .baselines import score_l1 as score
    else:
        raise dnnlib.util.UserError(f'--method: unknown scorer "{method}", expected one of {", ".join(METHODS)}')
    return score


def score(G, method, **kwargs):
    return get_scorer(method)(G, **kwargs)

# ---------------------------------------------------------------------------------------------
# Shared helpers.


def default_device(device=None):
    if device is not None:
        return torch.device(device)
    if dist_info()[1] > 1 and torch.cuda.is_available():
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def dist_info():
    """(rank, world_size); (0, 1) unless torch.distributed is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce_(tensors):
    """Sum the tensors over all processes (in place); no-op without torch.distributed."""
    if dist_info()[1] > 1:
        for t in tensors:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return tensors


def broadcast_(tensors, src=0):
    if dist_info()[1] > 1:
        for t in tensors:
            torch.distributed.broadcast(t, src=src)
    return tensors


def substream_seed(seed, *tags):
    """A well-mixed 63-bit seed for (seed, tags...): batch i of a run gets the same random numbers
    whatever the number of processes."""
    return int(np.random.SeedSequence([int(seed)] + [int(t) for t in tags]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def prepare_generator(G, device):
    """A float32 copy of G on ``device`` in eval mode with every parameter frozen (scorers then
    enable gradients on the tensors they score). The caller's G is left untouched."""
    channels.generator_family(G)
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    return G.float()


def sample_latents(G, n, gen, device):
    """z ~ N(0, I) and random one-hot labels (conditional G), drawn on the CPU from ``gen`` so
    the numbers do not depend on the device."""
    z = torch.randn([n, G.z_dim], generator=gen)
    c = torch.zeros([n, G.c_dim])
    if G.c_dim > 0:
        c[torch.arange(n), torch.randint(G.c_dim, [n], generator=gen)] = 1
    return z.to(device), c.to(device)


def map_latents(G, z, c, truncation_psi=1.0):
    with torch.no_grad():
        return G.mapping(z, c, truncation_psi=truncation_psi)


def synthesize(G, ws, noise_mode='random'):
    """Image in fp32, whatever the network's fp16 settings."""
    return G.synthesis(ws, noise_mode=noise_mode, force_fp32=True)


def in_channel_magnitude(t):
    """Per input channel mean |t| over (out, kh, kw) of a [C_out, C_in, ...] tensor (l1-out)."""
    t = t.detach().abs()
    dims = [0] + list(range(2, t.ndim))
    return t.mean(dim=dims)


def score_weights(G, groups):
    """The tensors whose input-channel gradients score each group (enabled for autograd)."""
    params = dict(G.named_parameters())
    weights = [params[g.score_weight] for g in groups]
    for w in weights:
        w.requires_grad_(True)
    return weights


def my_batches(sizes):
    """(index, size) of the batches this process handles (round-robin over ranks)."""
    rank, world = dist_info()
    return [(i, b) for i, b in enumerate(sizes) if i % world == rank]


def fixed_batches(n_samples, batch):
    """[batch]*(n // batch) plus the remainder, if any."""
    if n_samples < 1 or batch < 1:
        raise dnnlib.util.UserError(f'--n-samples/--batch: need positive values, got {n_samples}/{batch}')
    sizes = [batch] * (n_samples // batch)
    if n_samples % batch:
        sizes.append(n_samples % batch)
    return sizes


class Progress:
    """A line on stderr every ``interval`` seconds (rank 0 only): done/total, rate, ETA."""

    def __init__(self, total, desc, enabled=True, interval=5.0, unit='samples'):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.enabled = enabled and dist_info()[0] == 0
        self.done = 0
        self.start = self.last = time.time()

    def update(self, n):
        self.done += n
        now = time.time()
        if self.enabled and (now - self.last >= self.interval or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0
            print(f'{self.desc}: {self.done}/{self.total} {self.unit} ({rate:.1f}/s, '
                  f'{dnnlib.util.format_time(now - self.start)} elapsed, ETA {dnnlib.util.format_time(eta)})',
                  file=sys.stderr, flush=True)


def rng_scope(device):
    """Keep the global RNG (used by the networks' random noise) unchanged for the caller."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == 'cuda' else []
    return torch.random.fork_rng(devices=devices)
