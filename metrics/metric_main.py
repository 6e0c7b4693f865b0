"""Metric registry: names people know, one call to compute, one call to record.

    result = metric_main.calc_metric('fid50k_full', G=G_ema, dataset_kwargs=training_set_kwargs,
                                     num_gpus=num_gpus, rank=rank, device=device)
    if rank == 0:
        metric_main.report_metric(result, run_dir=run_dir, snapshot_pkl=snapshot_pkl)

Metrics (N = 1, 10 or 50, in thousands of generated images):

=====================  ==========  ===============================  =====  ====  ==============
name                   features    real images                      k      test  numbers
=====================  ==========  ===============================  =====  ====  ==============
fid{N}k_full           Inception   all (no x-flip)                                FID
fid{N}k                Inception   first N k (x-flip as the data)                 FID
kid{N}k_full           Inception   all, at most 1M (no x-flip)                    KID
pr{N}k3_full           VGG16 fc2   all, at most 200k (no x-flip)    3      <=    precision, recall
pr{N}k3                VGG16 fc2   first N k (x-flip as the data)   3      <=    precision, recall
prdc{N}k_full          Inception   all (no x-flip)                  5      <     P, R, D, C
prdc{N}k               Inception   first N k (no x-flip)            5      <     P, R, D, C
kid{N}k                Inception   first N k (x-flip as the data)                 KID
is50k                  Inception   none (softmax, no output bias)                 mean, std
ppl2_wend              VGG16 LPIPS none (W, endpoints, no crop)                   PPL
ppl_{z,w}{full,end}    VGG16 LPIPS none (Z/W, full/end, face crop)                PPL
eqt50k_int/_frac       -           none (StyleGAN3 only)                          PSNR dB
eqr50k                 -           none (StyleGAN3 only)                          PSNR dB
=====================  ==========  ===============================  =====  ====  ==============

Names, definitions and result keys are NVIDIA's (stylegan2-ada-pytorch / stylegan3 ``metric_main``):
``is50k`` gives ``is50k_mean``/``is50k_std``; PPL uses 50k pairs, eps = 1e-4, the ``vgg16.pt``
LPIPS embedding and 1st/99th percentile filtering (``metrics/perceptual_path_length.py``);
equivariance uses 50k samples (``metrics/equivariance.py``). ``prdc*`` write the paper release's
bare ``precision``/``recall``/``density``/``coverage`` keys and our ``prdc50k_full_precision`` ...
aliases. ``calc_metric(num_gen=...)`` overrides the sample count (smoke tests, quick looks; the
result then is not the named metric, and ``details.num_gen`` says so).

``pr*k3`` follow stylegan2-ada-pytorch (VGG16 4096-d, k = 3, ``<=``) but with exact distances
(the original uses fp16 distances on the GPU, which moves P and R by up to ~1 point); the paper's
P/R/D/C columns are ``prdc*`` (Inception 2048-d, k = 5, strict ``<``, as the ``prdc`` package).
The two P&R numbers are not comparable with each other.

With several processes every rank calls ``calc_metric``; features are sharded, the k-NN / FID
math runs on rank 0 and every rank returns the same result.
"""
import copy
import json
import os
import re
import time

import numpy as np
import torch

import dnnlib
from metrics import features as feat
from metrics import frechet, knn

# ---------------------------------------------------------------------------------------------

_metric_dict = dict()  # name -> EasyDict(family, num_gen, max_real, full, ...)


def _register(name, **spec):
    _metric_dict[name] = dnnlib.EasyDict(name=name, **spec)


for _n in (50, 10, 1):
    _g = _n * 1000
    _register(f'fid{_n}k_full', family='fid', num_gen=_g, max_real=None, full=True)
    _register(f'fid{_n}k', family='fid', num_gen=_g, max_real=_g, full=False)
    _register(f'kid{_n}k_full', family='kid', num_gen=_g, max_real=1000000, full=True)
    _register(f'pr{_n}k3_full', family='pr', num_gen=_g, max_real=200000, full=True, k=3)
    _register(f'pr{_n}k3', family='pr', num_gen=_g, max_real=_g, full=False, k=3)
    _register(f'prdc{_n}k_full', family='prdc', num_gen=_g, max_real=None, full=True, k=5)
    _register(f'prdc{_n}k', family='prdc', num_gen=_g, max_real=_g, full=False, k=5)
    _register(f'kid{_n}k', family='kid', num_gen=_g, max_real=_g, full=False)

_register('is50k', family='is', num_gen=50000, max_real=None, full=True, num_splits=10)
_register('ppl2_wend', family='ppl', num_gen=50000, max_real=None, full=False, space='w', sampling='end', crop=False)
for _space in ('z', 'w'):
    for _sampling in ('full', 'end'):
        _register(f'ppl_{_space}{_sampling}', family='ppl', num_gen=50000, max_real=None, full=False, space=_space,
                  sampling=_sampling, crop=True)
_register('eqt50k_int', family='eq', num_gen=50000, max_real=None, full=False, kind='int')
_register('eqt50k_frac', family='eq', num_gen=50000, max_real=None, full=False, kind='frac')
_register('eqr50k', family='eq', num_gen=50000, max_real=None, full=False, kind='rot')

PPL_EPSILON = 1e-4
PPL_BATCH = 2  # pairs per batch (noise buffers are drawn once per batch), as NVIDIA
EQ_BATCH = 4
GENERATOR_ONLY_FAMILIES = ('is', 'ppl', 'eq')  # need the dataset only for the labels of a conditional G


def needs_dataset(metric, G=None):
    """Whether ``metric`` reads real images (or, for a conditional ``G``, dataset labels)."""
    spec = _metric_dict[metric]
    return spec.family not in GENERATOR_ONLY_FAMILIES or (G is not None and G.c_dim > 0)


def is_valid_metric(metric):
    return metric in _metric_dict


def list_valid_metrics():
    return list(_metric_dict.keys())


# ---------------------------------------------------------------------------------------------


def _real_dataset_kwargs(spec, dataset_kwargs):
    kwargs = dnnlib.EasyDict(copy.deepcopy(dict(dataset_kwargs)))
    kwargs.max_size = None  # every metric reads the dataset in order; "first N" is max_items
    if spec.full or spec.family == 'prdc':  # the SVS prdc metrics force x-flip off, as *_full do
        kwargs.xflip = False
    return kwargs


def _real_stats(opts, spec, detector):
    capture_mean_cov = detector == 'inception'  # one cache entry serves FID, KID and PRDC
    return feat.compute_dataset_features(
        _real_dataset_kwargs(spec, opts.dataset_kwargs), detector, max_items=spec.max_real,
        allow_fewer=spec.full or opts.allow_fewer_real, capture_all=True, capture_mean_cov=capture_mean_cov,
        num_gpus=opts.num_gpus, rank=opts.rank, device=opts.device, cache=opts.cache,
        detector_dir=opts.detector_dir, progress=opts.progress)


def _gen_stats(opts, spec, detector, capture_all, capture_mean_cov):
    key = (detector, spec.num_gen)
    memo = opts.gen_memo
    if memo is not None:  # share generated features between metrics of one call (e.g. FID + PRDC)
        capture_all = capture_mean_cov = True
        if key in memo:
            return memo[key]
    stats = feat.compute_generator_features(
        opts.G, detector, num_items=spec.num_gen, dataset_kwargs=opts.dataset_kwargs,
        truncation_psi=opts.truncation_psi, noise_mode=opts.noise_mode, seed=opts.seed, G_kwargs=opts.G_kwargs,
        capture_all=capture_all, capture_mean_cov=capture_mean_cov, num_gpus=opts.num_gpus, rank=opts.rank,
        device=opts.device, detector_dir=opts.detector_dir, progress=opts.progress)
    if memo is not None:
        memo[key] = stats
    return stats


def _broadcast_results(results, opts):
    if opts.num_gpus == 1:
        return results
    box = [results]
    torch.distributed.broadcast_object_list(box, src=0, device=torch.device(opts.device) if torch.device(opts.device).type == 'cuda' else None)
    return box[0]


def _label_dataset(opts):
    if opts.dataset_kwargs is None or opts.G.c_dim == 0:
        return None
    return feat.open_dataset(opts.dataset_kwargs)


def _compute_generator_only(opts, spec):
    """is50k, ppl*, eq*: no real images."""
    name, details = spec.name, dnnlib.EasyDict(num_gen=spec.num_gen, num_real=0)
    common = dict(G_kwargs=opts.G_kwargs, seed=opts.seed, num_gpus=opts.num_gpus, rank=opts.rank,
                  device=opts.device, progress=opts.progress)
    if spec.family == 'is':
        from metrics import inception_score
        dataset = _label_dataset(opts)
        gen = feat.compute_generator_features(
            opts.G, 'inception', num_items=spec.num_gen, dataset=dataset, truncation_psi=opts.truncation_psi,
            noise_mode=opts.noise_mode, capture_all=True, detector_dir=opts.detector_dir,
            detector_kwargs=inception_score.IS_DETECTOR_KWARGS, **common)
        mean, std = inception_score.inception_score_from_probs(gen.get_all(), num_splits=spec.num_splits)
        details.update(detector='inception', num_splits=spec.num_splits)
        return dnnlib.EasyDict({f'{name}_mean': mean, f'{name}_std': std}), details
    if spec.family == 'ppl':
        from metrics import perceptual_path_length
        ppl, _scores = perceptual_path_length.compute_ppl(
            opts.G, num_samples=spec.num_gen, epsilon=PPL_EPSILON, space=spec.space, sampling=spec.sampling,
            crop=spec.crop, batch_size=PPL_BATCH, dataset=_label_dataset(opts), detector_dir=opts.detector_dir, **common)
        details.update(detector='vgg16', epsilon=PPL_EPSILON, space=spec.space, sampling=spec.sampling, crop=spec.crop)
        return dnnlib.EasyDict({name: ppl}), details
    from metrics import equivariance
    (psnr,) = equivariance.compute_equivariance(opts.G, num_samples=spec.num_gen, batch_size=EQ_BATCH, kinds=(spec.kind,),
                                                dataset=_label_dataset(opts), **common)
    details.update(kind=spec.kind)
    return dnnlib.EasyDict({name: psnr}), details


def _compute(opts, spec):
    name = spec.name
    if spec.family in GENERATOR_ONLY_FAMILIES:
        return _compute_generator_only(opts, spec)
    if spec.family in ('fid', 'kid', 'prdc'):
        detector = 'inception'
    else:
        detector = 'vgg16'
    real = _real_stats(opts, spec, detector)
    gen = _gen_stats(opts, spec, detector, capture_all=spec.family != 'fid', capture_mean_cov=spec.family == 'fid')
    details = dnnlib.EasyDict(detector=detector, num_real=real.num_items, num_gen=gen.num_items,
                              real_cache_hit=real.cache_hit)
    results = None
    if opts.rank == 0:
        if spec.family == 'fid':
            mu_real, sigma_real = real.get_mean_cov()
            mu_gen, sigma_gen = gen.get_mean_cov()
            results = {name: frechet.fid_from_stats(mu_gen, sigma_gen, mu_real, sigma_real)}
        elif spec.family == 'kid':
            results = {name: frechet.kid_from_features(real.get_all(), gen.get_all(), num_subsets=100, max_subset_size=1000)}
        else:
            strict = spec.family == 'prdc'
            r = knn.compute_prdc(real.get_all(), gen.get_all(), k=spec.k, mode=opts.knn_mode,
                                 device=opts.knn_device or opts.device, strict=strict,
                                 verbose=bool(opts.progress) and not callable(opts.progress))
            keys = ('precision', 'recall', 'density', 'coverage') if spec.family == 'prdc' else ('precision', 'recall')
            results = {f'{name}_{key}': r[key] for key in keys}
            if spec.family == 'prdc':  # the paper's release writes bare keys; ours stay as aliases
                results = dict({key: r[key] for key in keys}, **results)
            details.update(k=spec.k, test='<' if strict else '<=', knn_mode=opts.knn_mode)
    results = _broadcast_results(results, opts)
    return dnnlib.EasyDict(results), details


def calc_metric(metric, G=None, dataset_kwargs=None, num_gpus=1, rank=0, device=None, cache=True,
                detector_dir=None, progress=None, G_kwargs=None, truncation_psi=1, noise_mode='random',
                seed=0, allow_fewer_real=False, knn_mode='f64', knn_device=None, gen_memo=None, num_gen=None):
    """Compute one metric of generator ``G`` against the dataset of ``dataset_kwargs``.

    Returns EasyDict(results=EasyDict(<name>=value, ...), metric, total_time, total_time_str,
    num_gpus, details) where details names the features, set sizes, k and test used.
    ``allow_fewer_real``: a dataset with fewer images than a capped metric needs (fid50k on a 30k
    dataset) uses all of them instead of raising. ``knn_mode``: 'f64' (bit-exact prdc parity) or
    'f32' (centred float32, faster). ``gen_memo``: a dict shared across calls to reuse generated
    features between metrics that need the same detector and sample count.
    """
    if not is_valid_metric(metric):
        raise dnnlib.util.UserError(f'--metrics: unknown metric {metric!r}; valid: {", ".join(list_valid_metrics())}')
    if G is None:
        raise dnnlib.util.UserError(f'{metric}: needs a generator')
    if dataset_kwargs is None and needs_dataset(metric, G):
        raise dnnlib.util.UserError(f'{metric}: needs the dataset (--data, or training_set_kwargs in the snapshot)')
    if knn_mode not in ('f64', 'f32'):
        raise dnnlib.util.UserError(f'knn_mode: expected f64 or f32, got {knn_mode!r}')
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    opts = dnnlib.EasyDict(G=G, dataset_kwargs=dataset_kwargs, num_gpus=num_gpus, rank=rank, device=torch.device(device),
                           cache=cache, detector_dir=detector_dir, progress=progress, G_kwargs=G_kwargs or {},
                           truncation_psi=truncation_psi, noise_mode=noise_mode, seed=seed,
                           allow_fewer_real=allow_fewer_real, knn_mode=knn_mode, knn_device=knn_device, gen_memo=gen_memo)
    spec = _metric_dict[metric]
    if num_gen is not None:
        if int(num_gen) < 1:
            raise dnnlib.util.UserError(f'num_gen: must be positive, got {num_gen}')
        spec = dnnlib.EasyDict(spec, num_gen=int(num_gen))
    start = time.time()
    results, details = _compute(opts, spec)
    total_time = time.time() - start
    return dnnlib.EasyDict(results=results, metric=metric, total_time=total_time,
                           total_time_str=dnnlib.util.format_time(total_time), num_gpus=num_gpus, details=details)


# ---------------------------------------------------------------------------------------------


def _kimg_from_snapshot(snapshot_pkl):
    m = re.search(r'network-snapshot-(\d+)', os.path.basename(snapshot_pkl or ''))
    return int(m.group(1)) if m else None


def format_result(result):
    """One human-readable line: 'fid50k_full 12.3456  (50000 gen, 70000 real, 1m 02s)'."""
    values = '  '.join(f'{k} {v:.6g}' if isinstance(v, float) else f'{k} {v}' for k, v in result.results.items())
    d = result.get('details', {})
    return f'{values}  ({d.get("num_gen", "?")} gen, {d.get("num_real", "?")} real, {result.total_time_str})'


def report_metric(result_dict, run_dir=None, snapshot_pkl=None, kimg=None):
    """Append the result as one JSON line to ``<run_dir>/metric-<name>.jsonl`` (when run_dir is given).

    The line holds the result dict plus ``snapshot_pkl`` (relative to run_dir), ``kimg`` (given or
    parsed from a ``network-snapshot-<kimg>`` name) and ``timestamp``. Returns the line.
    """
    metric = result_dict['metric']
    assert is_valid_metric(metric)
    if kimg is None:
        kimg = _kimg_from_snapshot(snapshot_pkl)
    if run_dir is not None and snapshot_pkl is not None and not dnnlib.util.is_url(snapshot_pkl, allow_file_urls=True):
        snapshot_pkl = os.path.relpath(snapshot_pkl, run_dir)
    record = dict(result_dict, snapshot_pkl=snapshot_pkl, kimg=kimg, timestamp=time.time())
    line = json.dumps(record, default=_json_default)
    if run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, f'metric-{metric}.jsonl'), 'at') as f:
            f.write(line + '\n')  # one write per line, so concurrent readers see whole lines
    return line


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(f'{type(obj).__name__} is not JSON serialisable')
