"""Detector features of a dataset or a generator, sharded over processes, with an on-disk cache.

Sharding follows stylegan2-ada-pytorch: with ``num_gpus`` processes (torch.distributed already
initialised by the caller: gloo on CPU, nccl on CUDA), process ``rank`` handles global items
``rank, rank + num_gpus, ...``, and every batch is all-gathered and interleaved back into global
order. Generator latents and labels are a function of the global sample index and the seed only,
and the float64 mean/covariance sums run over fixed chunks of global items, so N processes produce
the features (and statistics) of one process.

Only the dataset side is cached (``<cache>/gan-metrics/<dataset>-<detector>-<md5>.npz``, md5 over
the dataset kwargs, the dataset file's size and mtime, the detector and the statistics settings);
the file is written atomically by rank 0 and read by every rank.
"""
import copy
import hashlib
import io
import json
import os
import sys
import time

import numpy as np
import torch

import dnnlib
from metrics import detectors
from torch_utils import distributed
from torch_utils import misc

# ---------------------------------------------------------------------------------------------


class FeatureStats:
    """Accumulates features: all of them (float32) and/or float64 sums for mean and covariance."""

    # Rows per float64 accumulation step. Fixed, so the sums (and FID) do not depend on the batch
    # size or on the number of processes.
    ACCUM_CHUNK = 256

    def __init__(self, capture_all=False, capture_mean_cov=False, max_items=None):
        self.capture_all = capture_all
        self.capture_mean_cov = capture_mean_cov
        self.max_items = max_items
        self.num_items = 0
        self.num_features = None
        self.all_features = []
        self.raw_mean = None
        self.raw_cov = None
        self.pending = np.zeros([0, 0], dtype=np.float32)  # rows not yet summed (< ACCUM_CHUNK)
        self.cache_hit = None  # set by the dataset extraction: True / False / None (not cached)
        self.source = 'features'  # named in error messages

    def set_num_features(self, num_features):
        if self.num_features is None:
            self.num_features = num_features
            self.raw_mean = np.zeros([num_features], dtype=np.float64)
            self.raw_cov = np.zeros([num_features, num_features], dtype=np.float64)
            self.pending = np.zeros([0, num_features], dtype=np.float32)
        elif num_features != self.num_features:
            raise dnnlib.util.UserError(f'{self.source}: feature dimension changed from {self.num_features} to {num_features}')

    def is_full(self):
        return self.max_items is not None and self.num_items >= self.max_items

    def append(self, x):
        """Add a [N, D] batch (numpy); rows beyond ``max_items`` are dropped."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise dnnlib.util.UserError(f'{self.source}: expected [N, D] features, got shape {x.shape}')
        if self.max_items is not None:
            x = x[:max(self.max_items - self.num_items, 0)]
        self.set_num_features(x.shape[1])
        if x.shape[0] == 0:
            return
        if not np.isfinite(x).all():
            raise dnnlib.util.UserError(f'{self.source}: the detector returned NaN or Inf features '
                                        f'(items {self.num_items}..{self.num_items + x.shape[0] - 1})')
        self.num_items += x.shape[0]
        if self.capture_all:
            self.all_features.append(np.array(x, copy=True))
        if self.capture_mean_cov:
            rows = np.concatenate([self.pending, x])
            full = rows.shape[0] // self.ACCUM_CHUNK * self.ACCUM_CHUNK
            for start in range(0, full, self.ACCUM_CHUNK):
                self._accumulate(rows[start:start + self.ACCUM_CHUNK], self.raw_mean, self.raw_cov)
            self.pending = np.array(rows[full:], copy=True)

    @staticmethod
    def _accumulate(rows, raw_mean, raw_cov):
        x64 = rows.astype(np.float64)
        raw_mean += x64.sum(axis=0)
        raw_cov += x64.T @ x64

    def append_torch(self, x, num_gpus=1, rank=0):
        """Add a [N, D] tensor from each process; gathered and interleaved into global order."""
        if x.ndim != 2:
            raise dnnlib.util.UserError(f'{self.source}: expected [N, D] features, got shape {tuple(x.shape)}')
        assert 0 <= rank < num_gpus
        if num_gpus > 1:
            parts = [torch.empty_like(x) for _ in range(num_gpus)]
            torch.distributed.all_gather(parts, x.contiguous())
            x = torch.stack(parts, dim=1).flatten(0, 1)
        self.append(x.detach().cpu().numpy())

    def get_all(self):
        assert self.capture_all
        if not self.all_features:
            return np.zeros([0, self.num_features or 0], dtype=np.float32)
        if len(self.all_features) > 1:
            self.all_features = [np.concatenate(self.all_features)]
        return self.all_features[0]

    def get_all_torch(self):
        return torch.from_numpy(self.get_all())

    def get_mean_cov(self):
        """float64 mean [D] and covariance [D, D] (population covariance, as NVIDIA computes it)."""
        assert self.capture_mean_cov
        if self.num_items == 0:
            raise dnnlib.util.UserError(f'{self.source}: no features to compute statistics from')
        raw_mean, raw_cov = self.raw_mean.copy(), self.raw_cov.copy()
        if self.pending.shape[0]:
            self._accumulate(self.pending, raw_mean, raw_cov)
        mean = raw_mean / self.num_items
        cov = raw_cov / self.num_items - np.outer(mean, mean)
        return mean, cov

    # Saving / loading (npz, no pickle).

    def save(self, path):
        meta = dict(capture_all=self.capture_all, capture_mean_cov=self.capture_mean_cov, max_items=self.max_items,
                    num_items=self.num_items, num_features=self.num_features, accum_chunk=self.ACCUM_CHUNK)
        arrays = dict(meta=np.array(json.dumps(meta)))
        if self.num_features is not None:
            arrays.update(raw_mean=self.raw_mean, raw_cov=self.raw_cov, pending=self.pending)
            if self.capture_all:
                arrays['all_features'] = self.get_all()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        dnnlib.util.atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data['meta']))
            if meta['accum_chunk'] != cls.ACCUM_CHUNK:
                raise dnnlib.util.UserError(f'{path}: written with another accumulation chunk size')
            obj = cls(capture_all=meta['capture_all'], capture_mean_cov=meta['capture_mean_cov'], max_items=meta['max_items'])
            obj.num_items = meta['num_items']
            if meta['num_features'] is not None:
                obj.set_num_features(meta['num_features'])
                obj.raw_mean, obj.raw_cov, obj.pending = data['raw_mean'], data['raw_cov'], data['pending']
                if obj.capture_all:
                    obj.all_features = [data['all_features']]
        return obj


# ---------------------------------------------------------------------------------------------


class Progress:
    """Progress of one extraction: silent (None/False), a line on stderr every few seconds (True),
    or a callable ``progress(tag, done, total)``. Only rank 0 reports."""

    def __init__(self, tag, total, progress=None, rank=0, every_s=5.0):
        self.tag, self.total, self.rank, self.every_s = tag, total, rank, every_s
        self.progress = progress if rank == 0 else None
        self.start = self.last = time.time()

    def update(self, done):
        if not self.progress:
            return
        if callable(self.progress):
            self.progress(self.tag, done, self.total)
            return
        now = time.time()
        if now - self.last >= self.every_s or done >= self.total:
            self.last = now
            rate = done / max(now - self.start, 1e-9)
            print(f'{self.tag}: {done}/{self.total} items, {now - self.start:.1f} s ({rate:.1f}/s)', file=sys.stderr, flush=True)


def _broadcast_flag(flag, num_gpus, device):
    if num_gpus == 1:
        return flag
    t = torch.as_tensor(float(flag), dtype=torch.float32, device=device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item() != 0)


def _dataset_stamp(dataset_kwargs):
    """Size and modification time of the dataset file/folder, so a changed dataset misses the cache."""
    path = dataset_kwargs.get('path')
    if not isinstance(path, str) or not os.path.exists(path):
        return None
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def dataset_cache_file(dataset_kwargs, dataset_name, detector, det_kwargs, stats_kwargs):
    """Path of the cached features for this dataset / detector / settings."""
    key = dict(dataset_kwargs=dict(dataset_kwargs), dataset_stamp=_dataset_stamp(dataset_kwargs),
               detector_url=detectors.detector_url(detector), detector_kwargs=det_kwargs, stats_kwargs=stats_kwargs)
    md5 = hashlib.md5(repr(sorted(key.items())).encode('utf-8')).hexdigest()
    stem = os.path.splitext(detectors.detector_file_name(detector))[0]
    return dnnlib.util.make_cache_dir_path('gan-metrics', f'{dataset_name}-{stem}-{md5}.npz')


def open_dataset(dataset_kwargs):
    try:
        return dnnlib.util.construct_class_by_name(**dataset_kwargs)
    except (FileNotFoundError, IOError) as e:
        raise dnnlib.util.UserError(f'{dataset_kwargs.get("path", "dataset")}: cannot open dataset ({e})') from None


def compute_dataset_features(dataset_kwargs, detector='inception', *, max_items=None, allow_fewer=True,
                             capture_all=False, capture_mean_cov=False, batch_size=64, num_workers=0,
                             num_gpus=1, rank=0, device='cpu', cache=True, detector_dir=None, progress=None):
    """Features of the dataset's first ``max_items`` images (all when None), in dataset order.

    ``dataset_kwargs``: ``class_name`` plus constructor kwargs (``xflip=True`` doubles the set with
    mirrored copies, as NVIDIA's dataset does). ``allow_fewer=False`` makes a dataset with fewer
    than ``max_items`` images an error instead of using what exists. Returns a ``FeatureStats``
    whose ``cache_hit`` says whether the cache answered.
    """
    device = torch.device(device)
    dataset = open_dataset(dataset_kwargs)
    if max_items is not None and len(dataset) < max_items and not allow_fewer:
        raise dnnlib.util.UserError(f'{dataset_kwargs.get("path", dataset.name)}: has {len(dataset)} images, fewer than the '
                                    f'{max_items} requested (ask to use all of them, e.g. --allow-fewer-real, or use a *_full metric)')
    num_items = len(dataset) if max_items is None else min(len(dataset), max_items)
    if num_items == 0:
        raise dnnlib.util.UserError(f'{dataset_kwargs.get("path", dataset.name)}: the dataset is empty')
    det_kwargs = detectors.detector_kwargs(detector)
    stats_kwargs = dict(capture_all=capture_all, capture_mean_cov=capture_mean_cov, max_items=num_items)

    cache_file = None
    if cache:
        cache_file = dataset_cache_file(dataset_kwargs, dataset.name, detector, det_kwargs, stats_kwargs)
        hit = _broadcast_flag(rank == 0 and os.path.isfile(cache_file), num_gpus, device)
        if hit:
            stats = FeatureStats.load(cache_file)
            stats.cache_hit = True
            return stats

    with distributed.node_leader_first(rank, enabled=num_gpus > 1):  # a download happens once per node
        det = detectors.load_detector(detector, device=device, detector_dir=detector_dir)
    stats = FeatureStats(max_items=num_items, **{k: v for k, v in stats_kwargs.items() if k != 'max_items'})
    stats.source = f'dataset {dataset.name} features'
    stats.cache_hit = False if cache else None
    item_subset = [(i * num_gpus + rank) % num_items for i in range((num_items - 1) // num_gpus + 1)]
    loader = torch.utils.data.DataLoader(dataset=dataset, sampler=item_subset, batch_size=batch_size, num_workers=num_workers)
    monitor = Progress(f'dataset {dataset.name}', num_items, progress, rank)
    for images, _labels in loader:
        if images.dtype != torch.uint8:
            raise dnnlib.util.UserError(f'{dataset_kwargs.get("path", dataset.name)}: images must be uint8, got {images.dtype}')
        with misc.frozen_network_scope():
            features = detectors.run_detector(det, images.to(device), **det_kwargs)
        stats.append_torch(features, num_gpus=num_gpus, rank=rank)
        monitor.update(stats.num_items)

    if cache and rank == 0:
        stats.save(cache_file)
    return stats


# ---------------------------------------------------------------------------------------------


class _SampleInputs:
    """Latent z and label c of global sample i: a function of (seed, i) only, so any sharding of
    the samples over processes sees the same inputs."""

    BLOCK = 1024

    def __init__(self, z_dim, c_dim, seed, dataset=None):
        self.z_dim, self.c_dim, self.seed, self.dataset = z_dim, c_dim, seed, dataset
        self.cached = (None, None, None)

    def _block(self, b):
        if self.cached[0] != b:
            gen = torch.Generator().manual_seed((int(self.seed) << 32) + b)
            z = torch.randn([self.BLOCK, self.z_dim], generator=gen)
            c = torch.zeros([self.BLOCK, self.c_dim])
            if self.c_dim > 0:
                rnd = np.random.RandomState([int(self.seed) & 0xffffffff, b])
                get_label = getattr(self.dataset, 'get_label', None) or (lambda i: self.dataset[i][1])
                idx = rnd.randint(len(self.dataset), size=self.BLOCK)
                c = torch.from_numpy(np.stack([np.asarray(get_label(int(i)), dtype=np.float32) for i in idx]))
            self.cached = (b, z, c)
        return self.cached[1], self.cached[2]

    def get(self, indices):
        zs, cs = [], []
        for i in indices:
            z, c = self._block(int(i) // self.BLOCK)
            zs.append(z[int(i) % self.BLOCK])
            cs.append(c[int(i) % self.BLOCK])
        return torch.stack(zs), torch.stack(cs)


def check_generator_vs_dataset(G, dataset, where='generator'):
    """Clear errors for a generator that cannot be compared with the dataset."""
    res, ch = getattr(dataset, 'resolution', None), getattr(dataset, 'num_channels', None)
    if res is not None and G.img_resolution != res:
        raise dnnlib.util.UserError(f'{where}: generates {G.img_resolution}x{G.img_resolution} images but the dataset '
                                    f'{dataset.name} is {res}x{res}')
    if ch is not None and G.img_channels != ch:
        raise dnnlib.util.UserError(f'{where}: generates {G.img_channels}-channel images but the dataset {dataset.name} has {ch}')
    if G.c_dim > 0 and getattr(dataset, 'label_dim', 0) != G.c_dim:
        raise dnnlib.util.UserError(f'{where}: is conditional (c_dim={G.c_dim}) but the dataset {dataset.name} has '
                                    f'label_dim={getattr(dataset, "label_dim", 0)} (use its labels: use_labels=True)')


def images_to_uint8(img):
    """Generator output in [-1, 1] to uint8, exactly as the field quantises it."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def compute_generator_features(G, detector='inception', *, num_items, dataset_kwargs=None, dataset=None,
                               truncation_psi=1, noise_mode='random', seed=0, G_kwargs=None,
                               capture_all=False, capture_mean_cov=False, batch_size=64, batch_gen=None,
                               num_gpus=1, rank=0, device='cpu', detector_dir=None, progress=None, detector_kwargs=None):
    """Features of ``num_items`` generated images (z ~ N(0, I), random dataset labels when conditional).

    Sample i uses the latent and label derived from (seed, i) alone. With ``noise_mode='random'``
    the noise comes from torch's RNG, seeded per (seed, rank) in a forked RNG state, so a run is
    reproducible for a given process count; exact equality across process counts needs
    ``noise_mode='const'`` or ``'none'``.
    """
    device = torch.device(device)
    if num_items < 1:
        raise dnnlib.util.UserError(f'number of generated samples must be positive, got {num_items}')
    if dataset is None and dataset_kwargs is not None:
        dataset = open_dataset(dataset_kwargs)
    if dataset is not None:
        check_generator_vs_dataset(G, dataset)
    elif G.c_dim > 0:
        raise dnnlib.util.UserError('generator: is conditional, so a dataset is needed to draw labels from')
    batch_gen = batch_gen or min(batch_size, 4)
    if batch_size % batch_gen != 0:
        raise dnnlib.util.UserError(f'batch_gen {batch_gen} must divide batch_size {batch_size}')

    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    with distributed.node_leader_first(rank, enabled=num_gpus > 1):
        det = detectors.load_detector(detector, device=device, detector_dir=detector_dir)
    # detector_kwargs: another output of the same detector (is50k: Inception softmax without output bias).
    det_kwargs = detectors.detector_kwargs(detector) if detector_kwargs is None else dict(detector_kwargs)
    stats = FeatureStats(capture_all=capture_all, capture_mean_cov=capture_mean_cov, max_items=num_items)
    stats.source = 'generator features'
    inputs = _SampleInputs(G.z_dim, G.c_dim, seed, dataset)
    G_kwargs = dict(G_kwargs or {})
    monitor = Progress('generator', num_items, progress, rank)

    fork_devices = [device] if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
        torch.manual_seed((int(seed) << 16) + rank)
        step = 0
        while not stats.is_full():
            indices = step * batch_size * num_gpus + np.arange(batch_size) * num_gpus + rank
            z, c = inputs.get(indices)
            images = []
            for start in range(0, batch_size, batch_gen):
                img = G(z[start:start + batch_gen].to(device), c[start:start + batch_gen].to(device),
                        truncation_psi=truncation_psi, noise_mode=noise_mode, **G_kwargs)
                images.append(images_to_uint8(img))
            with misc.frozen_network_scope():
                features = detectors.run_detector(det, torch.cat(images), **det_kwargs)
            stats.append_torch(features, num_gpus=num_gpus, rank=rank)
            monitor.update(stats.num_items)
            step += 1
    return stats
