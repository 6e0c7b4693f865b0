"""Random draws of sampling metrics (PPL, equivariance): a function of (seed, batch index) only.

Batch ``b`` of a metric uses ``batch_rng(seed, b)`` for everything it draws (latents, t, noise
buffers, translations, angles) and ``random_labels`` for its labels, so a run is reproducible, a
test can re-draw the very same numbers, and N processes (process r takes batches r, r + N, ...)
compute the metric of one process.
"""
import numpy as np
import torch

import dnnlib


def batch_rng(seed, batch_idx):
    """CPU ``torch.Generator`` of global batch ``batch_idx`` (draw on the CPU, then move)."""
    return torch.Generator().manual_seed((int(seed) << 32) + int(batch_idx) + 1)


def random_labels(dataset, c_dim, seed, batch_idx, count):
    """[count, c_dim] labels drawn from the dataset's labels (zeros [count, 0] when unconditional)."""
    if c_dim == 0:
        return torch.zeros([count, 0])
    if dataset is None:
        raise dnnlib.util.UserError('generator: is conditional, so a dataset is needed to draw labels from')
    rnd = np.random.RandomState([int(seed) & 0xffffffff, int(batch_idx), 1])
    get_label = getattr(dataset, 'get_label', None) or (lambda i: dataset[i][1])
    idx = rnd.randint(len(dataset), size=count)
    return torch.from_numpy(np.stack([np.asarray(get_label(int(i)), dtype=np.float32) for i in idx]))


def randomize_noise_buffers(G, gen):
    """Overwrite every ``*.noise_const`` buffer of ``G`` (a private copy) with N(0, 1) draws of ``gen``."""
    for name, buf in G.named_buffers():
        if name.endswith('.noise_const'):
            buf.copy_(torch.randn(buf.shape, generator=gen).to(buf))


def gather_in_batch_order(x, num_gpus):
    """Per-process batch results of one step -> their concatenation in global batch order."""
    if num_gpus == 1:
        return [x]
    parts = [torch.empty_like(x) for _ in range(num_gpus)]
    torch.distributed.all_gather(parts, x.contiguous())
    return parts
