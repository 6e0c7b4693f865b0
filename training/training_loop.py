"""The one training loop: teachers from scratch today, distilled students through its hooks.

Follows NVIDIA's stylegan2-ada / stylegan3 ``training_loop`` (phases Gmain/Greg/Dmain/Dreg with lazy
regularisation, EMA with ramp-up, ADA, ticks, snapshots, stats.jsonl, TensorBoard, sample grids,
metrics after each network snapshot) with these deliberate differences:

* **Rank-independent randomness.** A global batch is cut into micro-batch *slots* of ``batch_gpu``
  samples; slot ``k`` is run by rank ``k % num_gpus`` (as accumulation round ``k // num_gpus``).
  Before each slot, torch's RNG is seeded from (seed, step, phase, slot) and that slot's latents and
  labels come from a generator with the same seed; the data sampler deals slots the same way. So N
  processes and one process with the same ``batch`` and ``batch_gpu`` run the same micro-batches
  with the same noise, mixing and augmentation draws.
* **Gradient = mean over the global batch.** Each slot's loss is scaled by ``batch_gpu / batch`` and
  gradients are summed over rounds and ranks (one flattened all-reduce per phase, the SG3 way).
  NVIDIA sums rounds and averages ranks instead; Adam makes that a scale difference only.
* **Running averages** (``*_avg``/``*_ema`` buffers such as ``mapping.w_avg``, and the loss's
  ``pl_mean``): every slot starts from the phase's starting value and the slots' updates are summed
  (over ranks too), so the buffers stay identical on every rank and equal to a 1-process run.
* **Exact resume.** Beside each ``network-snapshot-<tag>.pkl`` a ``training-state-<tag>.pt`` holds
  optimizer states, counters, ``pl_mean``, augment ``p``, pending ADA statistics, RNG states, the
  data position and the number of ``stats.jsonl`` lines; resuming from it continues bit-identically.
* **Snapshot tags**: ``<kimg:06d>`` as NVIDIA, except a tick whose integer kimg equals the previous
  tick's (sub-kimg ticks, or a short last tick) is tagged ``<kimg:06d>.<nimg % 1000:03d>`` so a
  snapshot never overwrites another tick's.
* **NaN/Inf**, as NVIDIA: non-finite gradients are sanitised (``nan_to_num``) and training goes
  on, so one fp16 overflow in an R1 or path-length step does not end a multi-day run. A step with
  a non-finite loss term or gradient counts as *sanitised* (``Progress/sanitized_steps`` in
  ``stats.jsonl``: the number in that tick). The run stops (``NonFiniteLossError``, terms and
  first step named) when ``nonfinite_patience`` (10) consecutive steps were sanitised or the
  weights themselves became non-finite. The flags live on the device and are read once every
  ``nonfinite_patience`` steps and at each tick; no snapshot is written while a run of
  sanitised steps is going on, so the last snapshot written is the last good one.
* **Host syncs** on the hot path: latents and labels are drawn on the device (from a generator
  seeded per slot), the non-finite flags ride along in the gradient all-reduce, and nothing else
  reads a device value per step (see ``tests/test_loop_gpu.py``, which counts them).
* **Modulated convolutions** of the trained G are unfused (``fused_modconv_default =
  'inference_only'``, as NVIDIA's presets set it) whatever the checkpoint the architecture came
  from says; G_ema and frozen networks in eval mode still fuse.
* **TF32**: training networks follow ``allow_tf32`` (stylegan2-ada's ``--allow-tf32``, default off
  as in stylegan3); frozen networks (teacher, LPIPS, face parser, detectors) run with TF32 on
  unless ``frozen_tf32=False`` (``torch_utils.misc.frozen_network_scope``); k-NN metrics stay exact.
* **Multi-process**: work that may download (init_fn, extra networks, loss terms) runs on each
  node's local rank 0 first, then on the node's other ranks (``torch_utils.distributed``); an
  exception on any rank ends the other ranks promptly with its message.

Hooks for the distillation issue: ``init_fn`` (student initialisation, before the EMA copy; not
called when resuming), ``extra_networks`` (e.g. a frozen teacher: on the device, eval, no grad, not
trained, not EMA'd, not in snapshots), ``loss_kwargs.terms`` (see ``training/loss.py``) and
``step_hooks`` (called after every optimisation step, before the EMA update, on every rank; they
must be deterministic so that the ranks stay identical; e.g. the spectrum ablations of
``training/student_init.py``).
"""
import copy
import json
import os
import random
import re
import time

import numpy as np
import PIL.Image
import psutil
import torch

import dnnlib
from torch_utils import distributed
from torch_utils import misc
from torch_utils import training_stats
from training import augment
from training import checkpoints
from training import sample_data
from training.loss import NonFiniteLossError

STATE_VERSION = 2  # 2: RNG states as tensors, so the file loads with weights_only=True
_EMA_BUFFER_REGEX = re.compile(r'.*_(avg|ema)$')
_SNAPSHOT_RE = re.compile(r'^network-snapshot-(\d{6,})(?:\.(\d{3}))?\.pkl$')

# ---------------------------------------------------------------------------------------------
# File names.


def snapshot_tag(cur_nimg, prev_tick_nimg=None):
    """``<kimg:06d>``, or ``<kimg:06d>.<nimg%1000:03d>`` when the previous tick had the same kimg."""
    kimg = cur_nimg // 1000
    if prev_tick_nimg is None or prev_tick_nimg // 1000 != kimg:
        return f'{kimg:06d}'
    return f'{kimg:06d}.{cur_nimg % 1000:03d}'


def tag_to_nimg(tag):
    kimg, _, frac = tag.partition('.')
    return int(kimg) * 1000 + (int(frac) if frac else 0)


def state_path_for(snapshot_pkl):
    """``.../network-snapshot-<tag>.pkl`` -> ``.../training-state-<tag>.pt`` (or None for other names)."""
    m = _SNAPSHOT_RE.match(os.path.basename(snapshot_pkl))
    if m is None:
        return None
    tag = m.group(1) + ('.' + m.group(2) if m.group(2) else '')
    return os.path.join(os.path.dirname(snapshot_pkl), f'training-state-{tag}.pt')


def find_latest_snapshot(run_dir, require_state=True):
    """Newest ``network-snapshot-*.pkl`` in ``run_dir`` (with a training state beside it), or None."""
    best = None
    if not os.path.isdir(run_dir):
        return None
    for fname in os.listdir(run_dir):
        m = _SNAPSHOT_RE.match(fname)
        if m is None:
            continue
        path = os.path.join(run_dir, fname)
        if require_state and not os.path.isfile(state_path_for(path)):
            continue
        nimg = int(m.group(1)) * 1000 + (int(m.group(2)) if m.group(2) else 0)
        if best is None or nimg > best[0]:
            best = (nimg, path)
    return None if best is None else best[1]

# ---------------------------------------------------------------------------------------------
# Data order: slots of batch_gpu consecutive samples, dealt round-robin to the ranks.


class SlotSampler(torch.utils.data.Sampler):
    """``misc.InfiniteSampler``'s global sequence, where rank r takes slots r, r+N, r+2N, ...

    ``start_idx``: number of samples (all ranks together) already consumed; resuming replays it.
    """

    def __init__(self, dataset, rank=0, num_replicas=1, batch_gpu=1, shuffle=True, seed=0, window_size=0.5):
        super().__init__()
        self.inner = misc.InfiniteSampler(dataset, rank=0, num_replicas=1, shuffle=shuffle, seed=seed,
                                          window_size=window_size)
        self.rank, self.num_replicas, self.batch_gpu = rank, num_replicas, batch_gpu
        self.start_idx = 0

    def __iter__(self):
        self.inner.start_idx = self.start_idx
        pos = self.start_idx
        for idx in self.inner:
            if (pos // self.batch_gpu) % self.num_replicas == self.rank:
                yield idx
            pos += 1


def slot_seed(random_seed, batch_idx, phase_idx, slot):
    """A 63-bit seed as a function of the global position only (never of the rank)."""
    words = np.random.SeedSequence([int(random_seed) & 0xffffffff, int(batch_idx), int(phase_idx), int(slot)]).generate_state(2)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)

# ---------------------------------------------------------------------------------------------
# Sample grids.


def setup_snapshot_image_grid(training_set, random_seed=0, grid_size=None):
    rnd = np.random.RandomState(random_seed)
    if grid_size is None:
        gw = int(np.clip(7680 // training_set.image_shape[2], 7, 32))
        gh = int(np.clip(4320 // training_set.image_shape[1], 4, 32))
    else:
        gw, gh = grid_size
    if not training_set.has_labels:
        order = list(range(len(training_set)))
        rnd.shuffle(order)
        grid_indices = [order[i % len(order)] for i in range(gw * gh)]
    else:
        # One label per row, cycling through the images of that label.
        groups = dict()
        for idx in range(len(training_set)):
            groups.setdefault(tuple(training_set.get_details(idx).raw_label.flatten().tolist())
                              if hasattr(training_set, 'get_details') else tuple(training_set.get_label(idx).flatten().tolist()), []).append(idx)
        keys = sorted(groups)
        for key in keys:
            rnd.shuffle(groups[key])
        grid_indices = []
        for y in range(gh):
            members = groups[keys[y % len(keys)]]
            grid_indices += [members[x % len(members)] for x in range(gw)]
            groups[keys[y % len(keys)]] = members[gw % len(members):] + members[:gw % len(members)]
    images, labels = zip(*[training_set[i] for i in grid_indices])
    return (gw, gh), np.stack(images), np.stack(labels)


def save_image_grid(img, fname, drange, grid_size):
    """NCHW images in ``drange`` -> one PNG of gw x gh tiles (NVIDIA's call signature)."""
    lo, hi = drange
    img = np.asarray(img, dtype=np.float32)
    img = np.rint((img - lo) * (255 / (hi - lo))).clip(0, 255).astype(np.uint8)
    assert img.shape[1] in [1, 3] and img.shape[0] == grid_size[0] * grid_size[1]
    sample_data.save_image_grid(img, fname, grid_w=grid_size[0])


@torch.no_grad()
def generate_grid(G_ema, grid_z, grid_c, batch_gpu):
    images = [G_ema(z=z, c=c, noise_mode='const').cpu() for z, c in zip(grid_z.split(batch_gpu), grid_c.split(batch_gpu))]
    return torch.cat(images).numpy()

# ---------------------------------------------------------------------------------------------
# Helpers.


def _call_spec(spec, **kwargs):
    """A callable, or a dict with ``func_name``/``class_name`` (picklable across spawn)."""
    if spec is None:
        return None
    if callable(spec):
        return spec(**kwargs)
    spec = dict(spec)
    if 'class_name' in spec:
        return dnnlib.util.construct_class_by_name(**spec, **kwargs)
    return dnnlib.util.call_func_by_name(**spec, **kwargs)


def _with_dataset_shape(net_kwargs, common_kwargs, where):
    """Network kwargs completed with the dataset's c_dim / resolution / channels (which must agree)."""
    out = dict(net_kwargs)
    for key, value in common_kwargs.items():
        if key in out and out[key] != value:
            raise dnnlib.util.UserError(f'{where}.{key} is {out[key]} but the training set has {value}')
        out[key] = value
    return out


def _ema_buffers(module):
    return [b for name, b in module.named_buffers() if b.is_floating_point() and _EMA_BUFFER_REGEX.fullmatch(name)]


def _broadcast_module(module):
    for tensor in misc.params_and_buffers(module):
        torch.distributed.broadcast(tensor.data, src=0)


def _rng_state(device):
    """RNG states as tensors and plain containers, so that the state file loads with weights_only=True."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = dict(kind=str(kind), keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                       has_gauss=int(has_gauss), cached_gaussian=float(cached_gaussian))
    state = dict(python=random.getstate(), numpy=numpy_state, torch=torch.get_rng_state())
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device):
    random.setstate(_python_rng_state(state['python']))
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def _python_rng_state(value):
    """``random.getstate()`` as torch.load gives it back (the tuples may come back as lists)."""
    version, internal, gauss = value
    return (int(version), tuple(int(x) for x in internal), gauss)


def load_training_state(path):
    """A ``training-state-*.pt`` file: read with ``weights_only=True`` (tensors and plain containers only)."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise dnnlib.util.UserError(f'{path}: no such file') from None
    except Exception as e:  # weights-only refusals and corrupt files surface as several exception types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise dnnlib.util.UserError(f'{path}: not a readable training state ({first})') from None
    if not isinstance(state, dict) or state.get('version') != STATE_VERSION:
        version = state.get('version') if isinstance(state, dict) else type(state).__name__
        raise dnnlib.util.UserError(f'{path}: unknown training-state version {version}')
    return state


def _restore_weights(resume_pkl, modules, log):
    """Copy G/D/G_ema/augment_pipe tensors by name; UserError when the architecture differs."""
    data = checkpoints.load_network(resume_pkl, device='cpu')
    not_restored = []
    for name, module in modules.items():
        if module is None:
            continue
        src = data.get(name, None)
        if src is None and name == 'G_ema':
            src = data.get('G', None)
        if src is None:
            not_restored.append(f'{name} (not in file; kept its initialisation)')
            continue
        dst_params = dict(module.named_parameters())
        src_tensors = dict(misc.named_params_and_buffers(src))
        bad = [n for n, p in dst_params.items() if n not in src_tensors or src_tensors[n].shape != p.shape]
        if name in ('G', 'G_ema', 'D') and bad:
            example = bad[0]
            got = tuple(src_tensors[example].shape) if example in src_tensors else 'missing'
            raise dnnlib.util.UserError(
                f'{resume_pkl}: {name} is from another architecture ({len(bad)} of {len(dst_params)} parameters '
                f'differ, e.g. {example}: file {got}, run {tuple(dst_params[example].shape)})')
        missing = misc.copy_params_and_buffers(src, module, require_all=False)
        if missing:
            not_restored.append(f'{name}: {len(missing)} tensors ({", ".join(missing[:4])}{", ..." if len(missing) > 4 else ""})')
    for line in not_restored:
        log(f'  not restored from {resume_pkl}: {line}')
    return data

def unfused_modconv_for_training(module):
    """Every submodule with a ``fused_modconv_default`` fuses in inference only (NVIDIA's setting).

    Checkpoints converted from NVIDIA / TF / rosinality files do not carry the key, and our default
    is True (grouped per-sample convolutions, slower to train and holding per-sample weights)."""
    changed = 0
    for sub in module.modules():
        if getattr(sub, 'fused_modconv_default', None) is True:
            sub.fused_modconv_default = 'inference_only'
            changed += 1
    return changed


class NonFiniteMonitor:
    """Device-side bookkeeping of sanitised steps; ``check()`` is the only host read."""

    def __init__(self, device):
        self.device = device
        self.consecutive = torch.zeros([], dtype=torch.int64, device=device)
        self.streak_start = torch.full([], -1, dtype=torch.int64, device=device)
        self.total = torch.zeros([], dtype=torch.int64, device=device)
        self.tick_count = torch.zeros([], dtype=torch.float32, device=device)
        self.last_bad = dict()  # (phase, names) -> int64 [len(names)]: last step each one was non-finite
        self._step_bad = None

    def record(self, phase, names, bad, step):
        key = (phase, tuple(names))
        last = self.last_bad.get(key)
        if last is None:
            last = torch.full([len(names)], -1, dtype=torch.int64, device=self.device)
        self.last_bad[key] = torch.where(bad, step, last)
        any_bad = bad.any()
        self._step_bad = any_bad if self._step_bad is None else (self._step_bad | any_bad)

    def end_step(self, step):
        if self._step_bad is None:
            return
        bad, self._step_bad = self._step_bad, None
        self.consecutive = (self.consecutive + 1) * bad
        self.streak_start = torch.where(self.consecutive == 1, step, self.streak_start)
        self.total += bad
        self.tick_count += bad

    def check(self, modules):
        """One host read: EasyDict(consecutive, streak_start, total, weights_finite, names)."""
        params = [p for m in modules for p in m.parameters()]
        norms = torch.stack([torch.linalg.vector_norm(p.detach()) for p in params]) if params else self.total.new_zeros([1])
        parts = [torch.stack([self.consecutive, self.streak_start, self.total]).to(torch.float64),
                 torch.isfinite(norms).all().to(torch.float64).reshape(1)]
        parts += [v.to(torch.float64) for v in self.last_bad.values()]
        values = torch.cat(parts).tolist()
        out = dnnlib.EasyDict(consecutive=int(values[0]), streak_start=int(values[1]), total=int(values[2]),
                              weights_finite=bool(values[3]), names=[])
        pos = 4
        for (phase, names), _v in self.last_bad.items():
            for name, last in zip(names, values[pos:pos + len(names)]):
                if out.streak_start >= 0 and last >= out.streak_start:
                    out.names.append(f'{name} ({phase})')
            pos += len(names)
        return out

    def state_dict(self):
        return dict(consecutive=int(self.consecutive), streak_start=int(self.streak_start), total=int(self.total))

    def load_state_dict(self, state):
        self.consecutive.fill_(int(state['consecutive']))
        self.streak_start.fill_(int(state['streak_start']))
        self.total.fill_(int(state['total']))

def open_stats_outputs(run_dir, resume_state, stats_lines, cur_nimg, log):
    """stats.jsonl (on a resume: the first ``stats_lines`` lines of the resumed run's file, nothing
    after them) opened for appending, and the TensorBoard writer (purged past the resumed kimg).
    Returns (stats_jsonl, stats_tfevents or None, stats_lines)."""
    stats_path = os.path.join(run_dir, 'stats.jsonl')
    prefix = []
    if resume_state is not None:
        src = os.path.join(os.path.dirname(os.path.abspath(resume_state)), 'stats.jsonl')
        if os.path.isfile(src):
            with open(src, 'rt') as f:
                prefix = f.readlines()[:stats_lines]
        if len(prefix) < stats_lines:
            log(f'  note: {src} has {len(prefix)} of the {stats_lines} lines the state expects')
    with dnnlib.util.atomic_open(stats_path, 'wt') as f:
        f.writelines(prefix)
    stats_jsonl = open(stats_path, 'at')
    stats_tfevents = None
    try:
        import torch.utils.tensorboard as tensorboard
        purge = int(cur_nimg / 1e3) + 1 if resume_state is not None else None
        stats_tfevents = tensorboard.SummaryWriter(run_dir, purge_step=purge)
    except ImportError as err:
        log(f'Skipping tfevents export: {err}')
    return stats_jsonl, stats_tfevents, len(prefix)


def write_tick_stats(stats_jsonl, stats_tfevents, stats_dict, cur_nimg, start_time, scalars=None):
    """One tick's statistics: a line of stats.jsonl and the TensorBoard scalars (plus ``scalars``,
    e.g. metric results, under ``Metrics/``). Returns the number of stats.jsonl lines written (0 or 1)."""
    timestamp = time.time()
    if stats_tfevents is not None:
        global_step, walltime = int(cur_nimg / 1e3), timestamp - start_time
        for name, value in stats_dict.items():
            stats_tfevents.add_scalar(name, value.mean, global_step=global_step, walltime=walltime)
        for name, value in (scalars or {}).items():
            stats_tfevents.add_scalar(f'Metrics/{name}', value, global_step=global_step, walltime=walltime)
        stats_tfevents.flush()
    if stats_jsonl is None:
        return 0
    stats_jsonl.write(json.dumps(dict(stats_dict, timestamp=timestamp)) + '\n')
    stats_jsonl.flush()
    return 1

# ---------------------------------------------------------------------------------------------


@distributed.stop_all_ranks_on_error
def training_loop(
    run_dir                 = '.',      # Output directory.
    training_set_kwargs     = {},       # Options for the training set.
    data_loader_kwargs      = {},       # Options for torch.utils.data.DataLoader.
    G_kwargs                = {},       # Options for the generator network.
    D_kwargs                = {},       # Options for the discriminator network.
    G_opt_kwargs            = {},       # Options for the generator optimizer.
    D_opt_kwargs            = {},       # Options for the discriminator optimizer.
    augment_kwargs          = None,     # Options for the augmentation pipeline; None = disable.
    loss_kwargs             = {},       # Options for the loss (class_name, ..., terms=[...]).
    metrics                 = [],       # Metrics to evaluate after each network snapshot.
    random_seed             = 0,        # Global random seed.
    num_gpus                = 1,        # Number of processes taking part.
    rank                    = 0,        # Rank of this process in [0, num_gpus).
    batch_size              = 4,        # Total batch over all processes.
    batch_gpu               = 4,        # Micro-batch (slot) size.
    ema_kimg                = 10,       # Half-life of the G_ema weights.
    ema_rampup              = 0.05,     # EMA ramp-up coefficient; None = no ramp-up.
    G_reg_interval          = None,     # Lazy G regularisation interval; None = Gboth.
    D_reg_interval          = 16,       # Lazy D regularisation interval; None = Dboth.
    augment_p               = 0,        # Initial augmentation probability.
    ada_target              = None,     # ADA target for E[sign(D(real))]; None = fixed p.
    ada_interval            = 4,        # Iterations between ADA adjustments.
    ada_kimg                = 500,      # kimg for p to go 0 -> 1 at the fastest.
    total_kimg              = 25000,    # Length of training (may be fractional).
    kimg_per_tick           = 4,        # Progress-line interval (may be fractional).
    image_snapshot_ticks    = 50,       # Sample-grid interval; None = off.
    network_snapshot_ticks  = 50,       # Snapshot (+ training state, metrics) interval; None = off.
    resume_pkl              = None,     # Network pickle to take the weights from.
    resume_state            = None,     # training-state-*.pt for an exact resume (needs resume_pkl).
    cudnn_benchmark         = True,     # torch.backends.cudnn.benchmark.
    abort_fn                = None,     # Callback: True = stop after this tick.
    progress_fn             = None,     # Callback: progress_fn(cur_kimg, total_kimg).
    device                  = None,     # torch.device; None = cuda:<rank> when available, else cpu.
    init_fn                 = None,     # init_fn(G, D, training_set, device, rank, num_gpus, extra_networks); not on resume.
    extra_networks          = None,     # {name: Module or spec}: frozen networks for the loss terms.
    image_grid_size         = None,     # (gw, gh) of the sample grids; None = NVIDIA's size.
    step_hooks              = None,     # [spec]: hook(cur_nimg=, batch_size=, total_kimg=, rank=) after each step, before the EMA.
    allow_tf32              = False,    # TF32 for the trained networks (stylegan2-ada's --allow-tf32).
    frozen_tf32             = True,     # TF32 for frozen networks (teacher, LPIPS, face parser, detectors).
    nonfinite_patience      = 10,       # Stop after this many consecutive sanitised (non-finite) steps.
):
    start_time = time.time()
    if device is None:
        device = torch.device('cuda', rank % max(torch.cuda.device_count(), 1)) if torch.cuda.is_available() else torch.device('cpu')
    device = torch.device(device)
    is_main = (rank == 0)
    log = print if is_main else (lambda *_args, **_kwargs: None)
    assert batch_size % (batch_gpu * num_gpus) == 0, 'batch_size must be a multiple of batch_gpu * num_gpus'
    rounds = batch_size // (batch_gpu * num_gpus)

    # Same seed on every rank (and for any process count), so initial weights do not depend on num_gpus.
    np.random.seed(random_seed % (1 << 31))
    torch.manual_seed(random_seed)
    random.seed(random_seed)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = cudnn_benchmark
    misc.set_tf32(allow_tf32)
    misc.set_frozen_tf32(frozen_tf32)

    # Training set.
    log('Loading training set...')
    training_set = dnnlib.util.construct_class_by_name(**training_set_kwargs)
    sampler = SlotSampler(training_set, rank=rank, num_replicas=num_gpus, batch_gpu=batch_gpu, seed=random_seed)
    log(f'Num images:  {len(training_set)}')
    log(f'Image shape: {training_set.image_shape}')
    log(f'Label shape: {training_set.label_shape}')
    log()

    # Networks.
    log('Constructing networks...')
    common_kwargs = dict(c_dim=training_set.label_dim, img_resolution=training_set.resolution,
                         img_channels=training_set.num_channels)
    G = dnnlib.util.construct_class_by_name(**_with_dataset_shape(G_kwargs, common_kwargs, 'G_kwargs')).train().requires_grad_(False).to(device)
    D = dnnlib.util.construct_class_by_name(**_with_dataset_shape(D_kwargs, common_kwargs, 'D_kwargs')).train().requires_grad_(False).to(device)
    unfused_modconv_for_training(G)

    augment_pipe = None
    if augment_kwargs is not None and (augment_p > 0 or ada_target is not None):
        augment_pipe = dnnlib.util.construct_class_by_name(**augment_kwargs).train().requires_grad_(False).to(device)
        augment_pipe.p.copy_(torch.as_tensor(augment_p))

    state = None
    if resume_state is not None:
        assert resume_pkl is not None, 'resume_state needs resume_pkl'
        state = load_training_state(resume_state)

    G_ema = None
    if resume_pkl is not None:
        log(f'Resuming from "{resume_pkl}"' + (f' with training state "{resume_state}"' if state else ' (weights only)'))
        G_ema = copy.deepcopy(G).eval()
        with distributed.node_leader_first(rank):
            _restore_weights(resume_pkl, dict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe), log)
        if state is None:
            log('  not restored (no training state): optimizer states, kimg/tick counters, pl_mean, ADA statistics, '
                'RNG states, data position; they start fresh')
    else:
        with distributed.node_leader_first(rank):
            _call_spec(init_fn, G=G, D=D, training_set=training_set, device=device, rank=rank, num_gpus=num_gpus,
                       extra_networks=None)
        G_ema = copy.deepcopy(G).eval()

    extra = dnnlib.EasyDict()
    with distributed.node_leader_first(rank):
        for name, spec in (extra_networks or dict()).items():
            net = spec if isinstance(spec, torch.nn.Module) else _call_spec(spec, device=device)
            extra[name] = copy.deepcopy(net).eval().requires_grad_(False).to(device)

    # Same start on every rank.
    if num_gpus > 1:
        for module in [G, D, G_ema, augment_pipe]:
            if module is not None:
                _broadcast_module(module)

    # Loss, with its extra terms built against the networks.
    loss_kwargs = dnnlib.EasyDict(loss_kwargs)
    nets = dnnlib.EasyDict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe, training_set=training_set, **extra)
    with distributed.node_leader_first(rank):
        terms = [t if not isinstance(t, dict) else dnnlib.util.construct_class_by_name(**t, device=device, networks=nets)
                 for t in loss_kwargs.pop('terms', [])]
        loss = dnnlib.util.construct_class_by_name(device=device, G=G, D=D, augment_pipe=augment_pipe, terms=terms,
                                                   **loss_kwargs)
        hooks = [h if not isinstance(h, dict) else dnnlib.util.construct_class_by_name(**h, device=device, networks=nets)
                 for h in (step_hooks or [])]

    # Optimizers and phases (lazy regularisation scales lr and betas by k/(k+1)).
    phases = []
    optimizers = dnnlib.EasyDict()
    for name, module, opt_kwargs, reg_interval in [('G', G, G_opt_kwargs, G_reg_interval), ('D', D, D_opt_kwargs, D_reg_interval)]:
        opt_kwargs = dnnlib.EasyDict(opt_kwargs)
        if reg_interval is None:
            opt = dnnlib.util.construct_class_by_name(params=module.parameters(), **opt_kwargs)
            phases += [dnnlib.EasyDict(name=name + 'both', module=module, opt=opt, interval=1)]
        else:
            ratio = reg_interval / (reg_interval + 1)
            opt_kwargs.lr = opt_kwargs.lr * ratio
            if 'betas' in opt_kwargs:
                opt_kwargs.betas = tuple(float(beta) ** ratio for beta in opt_kwargs.betas)
            opt = dnnlib.util.construct_class_by_name(params=module.parameters(), **opt_kwargs)
            phases += [dnnlib.EasyDict(name=name + 'main', module=module, opt=opt, interval=1)]
            phases += [dnnlib.EasyDict(name=name + 'reg', module=module, opt=opt, interval=reg_interval)]
        optimizers[name] = opt
    ema_bufs = _ema_buffers(G) + _ema_buffers(D) + list(loss.ema_buffers())

    # Counters (restored below on an exact resume).
    cur_nimg = 0
    cur_tick = 0
    batch_idx = 0
    tick_start_nimg = 0
    prev_tick_nimg = None
    elapsed_before = 0.0
    stats_lines = 0
    ada_stats = training_stats.Collector(regex='Loss/signs/real') if (augment_pipe is not None and ada_target is not None) else None
    stats_collector = training_stats.Collector(regex='.*')
    nonfinite = NonFiniteMonitor(device)

    if state is not None:
        _check_config(state.get('config', {}), _config_of(locals()), log)
        for name, opt in optimizers.items():
            opt.load_state_dict(state['optimizers'][name])
        loss.load_state_dict(state['loss'])
        if augment_pipe is not None and state.get('augment_p') is not None:
            augment_pipe.p.copy_(torch.as_tensor(state['augment_p']))
        if ada_stats is not None and state.get('ada_stats') is not None:
            ada_stats.load_state_dict(state['ada_stats'], restore_pending=is_main)
        if state.get('stats') is not None:
            stats_collector.load_state_dict(state['stats'], restore_pending=is_main)
        for term, term_state in zip(terms, state.get('terms', [])):
            if term_state is not None and hasattr(term, 'load_state_dict'):
                term.load_state_dict(term_state)
        for hook, hook_state in zip(hooks, state.get('hooks', [])):
            if hook_state is not None and hasattr(hook, 'load_state_dict'):
                hook.load_state_dict(hook_state)
        if state.get('nonfinite') is not None:
            nonfinite.load_state_dict(state['nonfinite'])
        cur_nimg, cur_tick, batch_idx = state['cur_nimg'], state['cur_tick'], state['batch_idx']
        tick_start_nimg, prev_tick_nimg = state['tick_start_nimg'], state['prev_tick_nimg']
        elapsed_before = state.get('elapsed_sec', 0.0)
        stats_lines = state['stats_lines']
        if is_main:
            _set_rng_state(state['rng'], device)
        log(f'  restored: kimg {cur_nimg / 1000:g}, tick {cur_tick}, step {batch_idx}, optimizer states, pl_mean, '
            f'augment p, RNG states, data position')
    sampler.start_idx = batch_idx * batch_size

    data_loader = torch.utils.data.DataLoader(dataset=training_set, sampler=sampler, batch_size=batch_gpu,
                                              **data_loader_kwargs)
    training_set_iterator = iter(data_loader)

    # Sample grids and log files (rank 0).
    grid_size = grid_z = grid_c = None
    if is_main:
        os.makedirs(run_dir, exist_ok=True)
    if is_main and image_snapshot_ticks:
        log('Exporting sample images...')
        grid_size, images, labels = setup_snapshot_image_grid(training_set, random_seed, image_grid_size)
        save_image_grid(images, os.path.join(run_dir, 'reals.png'), drange=[0, 255], grid_size=grid_size)
        gen = torch.Generator().manual_seed(random_seed)
        grid_z = torch.randn([labels.shape[0], G.z_dim], generator=gen).to(device)
        grid_c = torch.from_numpy(labels).to(device)
        if state is None:
            images = generate_grid(G_ema, grid_z, grid_c, batch_gpu)
            save_image_grid(images, os.path.join(run_dir, 'fakes_init.png'), drange=[-1, 1], grid_size=grid_size)

    stats_jsonl = None
    stats_tfevents = None
    if is_main:
        stats_jsonl, stats_tfevents, stats_lines = open_stats_outputs(
            run_dir, resume_state if state is not None else None, stats_lines, cur_nimg, log)

    metric_main = None
    if metrics:
        from metrics import metric_main

    # Labels for the generated images, on the device once (drawn per slot by index, no host copy).
    all_gen_c = torch.from_numpy(np.stack([training_set.get_label(i) for i in range(len(training_set))])).to(device)
    slot_gen = torch.Generator(device=device)

    # Train.
    log(f'Training for {total_kimg:g} kimg...')
    log()
    stats_metrics = dict()
    tick_start_time = time.time()
    maintenance_time = tick_start_time - start_time
    start_time = tick_start_time - elapsed_before
    last_snapshot = None
    if progress_fn is not None:
        progress_fn(cur_nimg // 1000, total_kimg)

    while True:
        # Real images of this step: `rounds` slots for this rank.
        with torch.autograd.profiler.record_function('data_fetch'):
            reals = []
            for _ in range(rounds):
                img, c = next(training_set_iterator)
                reals.append(((img.to(device).to(torch.float32) / 127.5 - 1), c.to(device)))

        for phase_idx, phase in enumerate(phases):
            if batch_idx % phase.interval != 0:
                continue
            t0 = time.perf_counter()
            phase.module.requires_grad_(True)
            phase.opt.zero_grad(set_to_none=True)
            start_bufs = [b.detach().clone() for b in ema_bufs]
            deltas = [torch.zeros_like(b) for b in ema_bufs]
            for round_idx, (real_img, real_c) in enumerate(reals):
                slot = round_idx * num_gpus + rank
                seed = slot_seed(random_seed, batch_idx, phase_idx, slot)
                slot_gen.manual_seed(seed)
                gen_z = torch.randn([batch_gpu, G.z_dim], generator=slot_gen, device=device)
                gen_c = all_gen_c[torch.randint(len(training_set), [batch_gpu], generator=slot_gen, device=device)]
                torch.manual_seed(seed)
                for b, b0 in zip(ema_bufs, start_bufs):
                    b.copy_(b0)
                loss.accumulate_gradients(phase=phase.name, real_img=real_img, real_c=real_c, gen_z=gen_z,
                                          gen_c=gen_c, gain=phase.interval * batch_gpu / batch_size, cur_nimg=cur_nimg)
                for d, b, b0 in zip(deltas, ema_bufs, start_bufs):
                    d.add_(b.detach() - b0)
                # Each slot's gradient is summed separately (0 + g0 + g1 + ...), so that the rounds of
                # one process add up exactly like the all-reduce over processes.
                if len(reals) > 1:
                    round_params = [p for p in phase.module.parameters() if p.grad is not None]
                    if round_idx == 0:
                        params = round_params
                        grad_sum = [p.grad for p in params]
                    else:
                        assert len(round_params) == len(params)
                        for acc, p in zip(grad_sum, params):
                            acc.add_(p.grad)
                    for p in params:
                        p.grad = None
            phase.module.requires_grad_(False)
            if len(reals) > 1:
                for p, g in zip(params, grad_sum):
                    p.grad = g

            # Sum gradients, running-average updates and the loss terms' non-finite flags over ranks
            # (one all-reduce), sanitise the gradients as NVIDIA does, then step.
            params = [p for p in phase.module.parameters() if p.grad is not None]
            pieces = [p.grad.flatten() for p in params] + [d.flatten() for d in deltas]
            flags = loss.pop_finite_flags()
            names = sorted(flags)
            if names:
                pieces.append(torch.stack([flags[n] for n in names]).logical_not().to(pieces[0].dtype if pieces else torch.float32))
            if pieces:
                flat = torch.cat(pieces)
                if num_gpus > 1:
                    torch.distributed.all_reduce(flat)
                num_values = flat.numel() - len(names)
                values_finite = torch.isfinite(flat[:num_values].sum())  # NaN/Inf anywhere (or an overflowing sum)
                nonfinite.record(phase.name, names + ['gradients'],
                                 torch.cat([flat[num_values:] > 0, values_finite.logical_not().reshape(1)]), batch_idx)
                torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
                chunks = flat.split([t.numel() for t in pieces])
                for p, g in zip(params, chunks[:len(params)]):
                    p.grad.copy_(g.reshape(p.shape))
                for b, b0, d in zip(ema_bufs, start_bufs, chunks[len(params):len(params) + len(deltas)]):
                    b.copy_(b0 + d.reshape(b.shape))
            phase.opt.step()
            if device.type != 'cuda':  # on CUDA this would need events or a sync; tick timings cover it
                training_stats.report('Timing/' + phase.name, time.perf_counter() - t0)

        nonfinite.end_step(batch_idx)

        # Step hooks (e.g. weight projections of ablations); identical on every rank.
        for hook in hooks:
            hook(cur_nimg=cur_nimg + batch_size, batch_size=batch_size, total_kimg=total_kimg, rank=rank)

        # G_ema.
        with torch.autograd.profiler.record_function('Gema'):
            ema_nimg = ema_kimg * 1000
            if ema_rampup is not None:
                ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
            ema_beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
            for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, ema_beta))
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)

        cur_nimg += batch_size
        batch_idx += 1

        # ADA.
        if ada_stats is not None and batch_idx % ada_interval == 0:
            ada_stats.update()
            augment.adjust_p(augment_pipe, ada_stats['Loss/signs/real'], batch_size=batch_size, interval=ada_interval,
                             ada_target=ada_target, ada_kimg=ada_kimg)

        done = cur_nimg >= total_kimg * 1000
        tick_due = done or cur_tick == 0 or cur_nimg >= tick_start_nimg + kimg_per_tick * 1000

        # Non-finite values: read the device flags every `nonfinite_patience` steps and at each tick
        # (identical on every rank: the flags went through the all-reduce).
        if tick_due or batch_idx % nonfinite_patience == 0:
            health = nonfinite.check([G, D])
            problem = None
            if not health.weights_finite:
                problem = f'non-finite weights after step {batch_idx - 1} (kimg {cur_nimg / 1000:g})'
            elif health.consecutive >= nonfinite_patience:
                problem = (f'non-finite values in {health.consecutive} consecutive steps from step {health.streak_start} '
                           f'(kimg {health.streak_start * batch_size / 1000:g}), gradients sanitised')
            if problem is not None:
                named = f': {", ".join(health.names)}' if health.names else ''
                msg = f'{problem}{named}; last good snapshot: {last_snapshot or "none"}'
                log(msg)
                if stats_jsonl is not None:
                    stats_jsonl.close()
                if stats_tfevents is not None:
                    stats_tfevents.close()
                raise NonFiniteLossError(msg)
        if not tick_due:
            continue

        # Tick: progress line.
        tick_end_time = time.time()
        kimg_fmt = '.1f' if kimg_per_tick >= 1 else '.3f'
        sec_per_kimg = (tick_end_time - tick_start_time) / max(cur_nimg - tick_start_nimg, 1) * 1e3
        eta = (total_kimg * 1000 - cur_nimg) * sec_per_kimg / 1e3
        fields = []
        fields += [f"tick {training_stats.report0('Progress/tick', cur_tick):<5d}"]
        fields += [f"kimg {training_stats.report0('Progress/kimg', cur_nimg / 1e3):<8{kimg_fmt}}"]
        fields += [f"time {dnnlib.util.format_time(training_stats.report0('Timing/total_sec', tick_end_time - start_time)):<12s}"]
        fields += [f"sec/tick {training_stats.report0('Timing/sec_per_tick', tick_end_time - tick_start_time):<7.1f}"]
        fields += [f"sec/kimg {training_stats.report0('Timing/sec_per_kimg', sec_per_kimg):<7.2f}"]
        fields += [f"maintenance {training_stats.report0('Timing/maintenance_sec', maintenance_time):<6.1f}"]
        fields += [f"eta {dnnlib.util.format_time(max(eta, 0)):<10s}"]
        fields += [f"cpumem {training_stats.report0('Resources/cpu_mem_gb', psutil.Process(os.getpid()).memory_info().rss / 2**30):<6.2f}"]
        if device.type == 'cuda':
            fields += [f"gpumem {training_stats.report0('Resources/peak_gpu_mem_gb', torch.cuda.max_memory_allocated(device) / 2**30):<6.2f}"]
            fields += [f"reserved {training_stats.report0('Resources/peak_gpu_mem_reserved_gb', torch.cuda.max_memory_reserved(device) / 2**30):<6.2f}"]
            torch.cuda.reset_peak_memory_stats()
        fields += [f"augment {training_stats.report0('Progress/augment', float(augment_pipe.p.cpu()) if augment_pipe is not None else 0):.3f}"]
        training_stats.report0('Progress/sanitized_steps', nonfinite.tick_count)
        nonfinite.tick_count = torch.zeros_like(nonfinite.tick_count)
        training_stats.report0('Timing/total_hours', (tick_end_time - start_time) / (60 * 60))
        training_stats.report0('Timing/total_days', (tick_end_time - start_time) / (24 * 60 * 60))
        log(' '.join(fields))

        if not done and abort_fn is not None and abort_fn():
            done = True
            log()
            log('Aborting...')

        tag = snapshot_tag(cur_nimg, prev_tick_nimg)

        # Sample grid.
        if is_main and image_snapshot_ticks and (done or cur_tick % image_snapshot_ticks == 0):
            images = generate_grid(G_ema, grid_z, grid_c, batch_gpu)
            save_image_grid(images, os.path.join(run_dir, f'fakes{tag}.png'), drange=[-1, 1], grid_size=grid_size)

        # Network snapshot.
        snapshot_pkl = None
        snapshot_data = None
        snapshot_due = network_snapshot_ticks and (done or cur_tick % network_snapshot_ticks == 0)
        if snapshot_due and not done and health.consecutive > 0:
            snapshot_due = False  # in a run of sanitised steps: the previous snapshot stays the last good one
            log(f'  no snapshot: the last {health.consecutive} steps had non-finite values (sanitised)')
        if snapshot_due:
            snapshot_data = dict(training_set_kwargs=dict(training_set_kwargs))
            for name, module in [('G', G), ('D', D), ('G_ema', G_ema), ('augment_pipe', augment_pipe)]:
                if module is not None:
                    if num_gpus > 1:
                        misc.check_ddp_consistency(module)
                    module = copy.deepcopy(module).eval().requires_grad_(False).cpu()
                snapshot_data[name] = module
            snapshot_data['progress'] = dict(cur_nimg=cur_nimg, cur_tick=cur_tick, batch_idx=batch_idx)
            snapshot_pkl = os.path.join(run_dir, f'network-snapshot-{tag}.pkl')
            if is_main:
                checkpoints.save_snapshot(snapshot_pkl, snapshot_data)

        # Metrics.
        if snapshot_data is not None and metric_main is not None:
            if is_main:
                log('Evaluating metrics...')
            for metric in metrics:
                result_dict = metric_main.calc_metric(metric=metric, G=snapshot_data['G_ema'],
                                                      dataset_kwargs=training_set_kwargs, num_gpus=num_gpus,
                                                      rank=rank, device=device)
                if is_main:  # NVIDIA's JSON line, printed (train.py tees stdout into log.txt) and in metric-*.jsonl
                    log(metric_main.report_metric(result_dict, run_dir=run_dir, snapshot_pkl=snapshot_pkl, kimg=cur_nimg / 1000))
                stats_metrics.update(result_dict.results)
        del snapshot_data

        # Statistics of the tick.
        stats_collector.update()
        stats_dict = stats_collector.as_dict()
        stats_lines += write_tick_stats(stats_jsonl, stats_tfevents, stats_dict, cur_nimg, start_time, stats_metrics)
        if progress_fn is not None:
            progress_fn(cur_nimg // 1000, total_kimg)

        # Training state beside the snapshot (written last: `--resume latest` needs both files).
        if snapshot_pkl is not None:
            ada_state = ada_stats.state_dict() if ada_stats is not None else None
            stats_state = stats_collector.state_dict()  # kept-previous values; nothing pending here
            nonfinite_state = nonfinite.state_dict()
            if is_main:
                train_state = dict(
                    version=STATE_VERSION,
                    config=_config_of(locals()),
                    optimizers={name: opt.state_dict() for name, opt in optimizers.items()},
                    loss=loss.state_dict(),
                    augment_p=float(augment_pipe.p.cpu()) if augment_pipe is not None else None,
                    ada_stats=ada_state,
                    stats=stats_state,
                    terms=[term.state_dict() if hasattr(term, 'state_dict') else None for term in terms],
                    hooks=[hook.state_dict() if hasattr(hook, 'state_dict') else None for hook in hooks],
                    nonfinite=nonfinite_state,
                    cur_nimg=cur_nimg, cur_tick=cur_tick + 1, batch_idx=batch_idx,
                    tick_start_nimg=cur_nimg, prev_tick_nimg=cur_nimg,
                    elapsed_sec=time.time() - start_time,
                    stats_lines=stats_lines,
                    rng=_rng_state(device),
                    snapshot_pkl=os.path.basename(snapshot_pkl),
                )
                with dnnlib.util.atomic_open(state_path_for(snapshot_pkl), 'wb') as f:
                    torch.save(train_state, f)
            last_snapshot = snapshot_pkl

        # Next tick.
        cur_tick += 1
        tick_start_nimg = cur_nimg
        prev_tick_nimg = cur_nimg
        tick_start_time = time.time()
        maintenance_time = tick_start_time - tick_end_time
        if done:
            break

    if stats_jsonl is not None:
        stats_jsonl.close()
    if stats_tfevents is not None:
        stats_tfevents.close()
    log()
    log('Exiting...')
    return dnnlib.EasyDict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe, cur_nimg=cur_nimg, last_snapshot=last_snapshot)


_CONFIG_KEYS = ('batch_size', 'batch_gpu', 'random_seed', 'G_reg_interval', 'D_reg_interval', 'ema_kimg', 'ema_rampup',
                'ada_target', 'ada_interval', 'ada_kimg', 'kimg_per_tick')


def _config_of(scope):
    return {k: scope[k] for k in _CONFIG_KEYS}


def _check_config(saved, current, log):
    for key in _CONFIG_KEYS:
        if key in saved and saved[key] != current[key]:
            log(f'  warning: {key} was {saved[key]} in the saved run, now {current[key]}; the resume is not exact')
