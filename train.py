"""Train a StyleGAN2 (or StyleGAN3) generator: stylegan2-ada-pytorch's options, plus CPU and exact resume.

Examples:

\b
  # CIFAR-like tiny run on CPU
  python train.py --outdir=runs --data=sample32.zip --cfg=cifar --cbase=2048 --cmax=128 \\
      --batch=8 --kimg=1 --tick=0.2 --snap=1 --metrics=none --device=cpu
\b
  # 2 processes (NCCL on CUDA, gloo on CPU); torchrun works too:
  python train.py --outdir=runs --data=ffhq256.zip --cfg=paper256 --gpus=2 --mirror=1
  torchrun --nproc_per_node=2 train.py --outdir=runs --data=ffhq256.zip --cfg=paper256 --mirror=1
\b
  # continue a run exactly where it stopped (killed or finished), in its own run directory:
  python train.py --outdir=runs/00003-paper256-ffhq256-gpus2-batch64-gamma1 --resume=latest
\b
  # start a new run from a snapshot: exact when its training-state file is beside it,
  # weights only (NVIDIA-style) for any other pickle:
  python train.py --outdir=runs --data=ffhq256.zip --cfg=paper256 --resume=path/network-snapshot-000200.pkl

\b
  # distil a pruned student (prune.py output) with SVS, the paper's recipe (L1 + LPIPS + LD):
  python train.py --outdir=runs --data=ffhq256.zip --teacher=teacher.pkl --student=runs/dcp70/student.pkl \\
      --init=svs --svs-fn=sqrt --distill=stylekd --mask=face --face-parser=79999_iter.pth --cfg=paper256 \\
      --aug=noaug --mirror=1
\b
  # one row of the paper's tables; command-line options override the file:
  python train.py --outdir=runs --config=configs/table1-ffhq256-small-dcp-svs.yaml --data=ffhq256.zip

Run directories are ``<outdir>/<00000>-<desc>`` as in NVIDIA's code. ``--resume latest`` takes its
options from the run directory's ``training_options.json`` (``--kimg``, ``--snap``, ``--tick``,
``--metrics``, ``--gpus``, ``--batch-gpu``, ``--workers``, ``--device``, ``--nobench`` may be
given to override them) and appends to that directory; ``--outdir`` is then the run directory
itself, or a parent whose newest resumable run is taken.

Distillation (``--teacher``): the student G is built from ``--student``'s architecture (or is the
teacher itself) and initialised by ``--init`` (``training/student_init.py``); the teacher's G_ema is a
frozen extra network; ``--distill`` picks the loss terms (``training/distill.py``): stylekd = L1 +
LPIPS + LD, cagan = L1 + LPIPS with the teacher's D, gs-sparse = style L1 + VGG features, gs = VGG
features; D is dense with the teacher's widths, from scratch unless ``--teacher-d``. All of it is
recorded in ``training_options.json`` (init_fn, extra_networks, loss_kwargs.terms, step_hooks).

Extension (distillation issue): ``build_training_kwargs`` returns the loop's keyword bundle; more
loss terms go into ``c.loss_kwargs.terms`` (dicts with ``class_name``, constructed by the loop with
``device`` and ``networks``), frozen networks into ``c.extra_networks``, student initialisation into
``c.init_fn`` (a dict with ``func_name``), before ``launch_training(c, ...)``.
"""
import json
import os
import re
import sys
import tempfile

import click
import torch

import dnnlib
import dnnlib.cli
import svs
from torch_utils import training_stats
from training import config_meta
from training import presets
from training import run_folder
from training import student_init
from training import training_loop

# ---------------------------------------------------------------------------------------------


class _Tee:
    """Copy everything written to stdout/stderr into ``log.txt`` (appending, so resumes continue it)."""

    def __init__(self, file_name):
        self.file = open(file_name, 'a')
        self.stdout, self.stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self, self
        self.at_stderr = False

    def write(self, text):
        if not text:
            return
        self.file.write(text)
        self.stdout.write(text)
        self.flush()

    def flush(self):
        self.file.flush()
        self.stdout.flush()

    def close(self):
        sys.stdout, sys.stderr = self.stdout, self.stderr
        self.file.close()


def _torchrun_env():
    """(rank, world_size, local_rank) under torchrun, else None."""
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ:
        return int(os.environ['RANK']), int(os.environ['WORLD_SIZE']), int(os.environ.get('LOCAL_RANK', 0))
    return None


def _device_for(kind, local_rank):
    return torch.device('cuda', local_rank) if kind == 'cuda' else torch.device('cpu')


def subprocess_fn(rank, c, temp_dir, local_rank=None, torchrun=False):
    """One training process: process group, logging, then the loop."""
    c = dnnlib.EasyDict(c)
    kind = c.pop('device')
    local_rank = rank if local_rank is None else local_rank
    device = _device_for(kind, local_rank)
    if rank == 0:
        tee = _Tee(os.path.join(c.run_dir, 'log.txt'))
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    elif c.num_gpus > 1 and 'OMP_NUM_THREADS' not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // c.num_gpus))

    if c.num_gpus > 1 and not torchrun:
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        init_file = os.path.abspath(os.path.join(temp_dir, '.torch_distributed_init'))
        torch.distributed.init_process_group(backend=backend, init_method=f'file://{init_file}', rank=rank,
                                             world_size=c.num_gpus)
    training_stats.init_multiprocessing(rank=rank, sync_device=device if c.num_gpus > 1 else None)

    try:
        training_loop.training_loop(rank=rank, device=device, **c)
    except dnnlib.util.UserError as e:
        if c.num_gpus == 1 and not torchrun:
            raise  # the CLI wrapper prints one line
        if rank == 0:
            print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
    finally:
        if rank == 0:
            tee.close()
        if c.num_gpus > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

# ---------------------------------------------------------------------------------------------


def _next_run_dir(outdir, desc):
    prev = []
    if os.path.isdir(outdir):
        prev = [int(m.group()) for x in os.listdir(outdir) if os.path.isdir(os.path.join(outdir, x))
                for m in [re.match(r'^\d+', x)] if m is not None]
    run_id = max(prev, default=-1) + 1
    return os.path.join(outdir, f'{run_id:05d}-{desc}')


def find_resumable_run(outdir):
    """``outdir`` itself when it is a run directory, else its newest run with a resumable snapshot."""
    if os.path.isfile(os.path.join(outdir, 'training_options.json')):
        return outdir
    runs = []
    if os.path.isdir(outdir):
        for name in os.listdir(outdir):
            m = re.match(r'^(\d+)-', name)
            path = os.path.join(outdir, name)
            if m and os.path.isfile(os.path.join(path, 'training_options.json')) and training_loop.find_latest_snapshot(path):
                runs.append((int(m.group(1)), path))
    if not runs:
        raise dnnlib.util.UserError(f'--resume=latest: {outdir} is not a run directory and holds no resumable run')
    return max(runs)[1]


def open_dataset(data, cond=False, subset=None, mirror=False, seed=0):
    """Training-set kwargs for ``data``, checked by constructing the dataset once (UserError on bad input)."""
    if data is None:
        raise dnnlib.util.UserError('--data: required (a zip or folder of images)')
    kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=data, use_labels=True,
                             max_size=None, xflip=False)
    dataset = dnnlib.util.construct_class_by_name(**kwargs)
    if dataset.num_channels not in (1, 3):  # as NVIDIA's loop: grids, metrics and augment know gray and RGB only
        kind = {2: 'grayscale + alpha', 4: 'RGBA'}.get(dataset.num_channels, f'{dataset.num_channels}-channel')
        raise dnnlib.util.UserError(f'--data: {data} has {kind} images; training needs grayscale or RGB '
                                    f'(drop the alpha channel, e.g. convert the images to RGB)')
    kwargs.resolution = dataset.resolution
    kwargs.use_labels = bool(cond)
    if cond and not dataset.has_labels:
        raise dnnlib.util.UserError(f'--cond=1: {data} has no labels (dataset.json)')
    kwargs.max_size = len(dataset)
    if subset is not None:
        if not 1 <= subset <= len(dataset):
            raise dnnlib.util.UserError(f'--subset: must be between 1 and {len(dataset)}, got {subset}')
        kwargs.max_size = subset
        kwargs.random_seed = seed
    kwargs.xflip = bool(mirror)
    info = dnnlib.EasyDict(name=dataset.name, resolution=dataset.resolution, num_channels=dataset.num_channels,
                           label_dim=dataset.label_dim if cond else 0)
    return kwargs, info


def build_training_kwargs(data, cfg='auto', gpus=1, batch=None, batch_gpu=None, gamma=None, kimg=None, snap=50,
                          mirror=False, aug='ada', p=None, target=None, augpipe='bgc', seed=0, fp32=False,
                          metrics=('fid50k_full',), cond=False, subset=None, glr=None, dlr=None, map_depth=None,
                          mbstd_group=None, cbase=None, cmax=None, tick=None, workers=3, nobench=False,
                          device='auto', grid=None):
    """The keyword bundle for ``training_loop`` (without run_dir/resume), validated; plus a run description."""
    from training import augment
    if gpus < 1:
        raise dnnlib.util.UserError(f'--gpus: must be at least 1, got {gpus}')
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda':
        if not torch.cuda.is_available():
            raise dnnlib.util.UserError('--device=cuda: no CUDA device is available')
        if gpus > torch.cuda.device_count() and 'WORLD_SIZE' not in os.environ:
            raise dnnlib.util.UserError(f'--gpus={gpus}: only {torch.cuda.device_count()} CUDA devices are visible')

    c = dnnlib.EasyDict()
    c.training_set_kwargs, info = open_dataset(data, cond=cond, subset=subset, mirror=mirror, seed=seed)
    res = info.resolution
    tk = presets.training_kwargs(cfg, res, gpus=gpus, batch=batch, gamma=gamma)
    c.batch_size = tk.batch_size
    c.batch_gpu = batch_gpu if batch_gpu is not None else tk.batch_gpu
    if c.batch_gpu < 1 or c.batch_size % (gpus * c.batch_gpu) != 0:
        raise dnnlib.util.UserError(f'--batch: {c.batch_size} is not a multiple of --gpus ({gpus}) times --batch-gpu ({c.batch_gpu})')
    G_kwargs, D_kwargs = presets.network_kwargs(cfg, res, c_dim=info.label_dim, img_channels=info.num_channels,
                                                channel_base=cbase, channel_max=cmax, map_depth=map_depth, fp32=fp32,
                                                gpus=gpus, batch=c.batch_size, mbstd_group=mbstd_group)
    mbstd = D_kwargs.epilogue_kwargs.get('mbstd_group_size')
    if mbstd and c.batch_gpu % min(mbstd, c.batch_gpu) != 0:
        raise dnnlib.util.UserError(f'--mbstd-group: {mbstd} does not divide --batch-gpu {c.batch_gpu}')
    c.G_kwargs, c.D_kwargs = G_kwargs, D_kwargs
    c.G_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=tk.G_lr if glr is None else glr,
                                     betas=[float(b) for b in tk.betas], eps=tk.eps)
    c.D_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=tk.D_lr if dlr is None else dlr,
                                     betas=[float(b) for b in tk.betas], eps=tk.eps)
    c.loss_kwargs = dnnlib.EasyDict(class_name='training.loss.StyleGAN2Loss', r1_gamma=tk.r1_gamma,
                                    style_mixing_prob=tk.style_mixing_prob, pl_weight=tk.pl_weight,
                                    pl_no_weight_grad=(cfg == 'sg3-stylegan2'), terms=[])
    if 'blur_init_sigma' in tk:
        c.loss_kwargs.update(blur_init_sigma=tk.blur_init_sigma, blur_fade_kimg=tk.blur_fade_kimg)
    c.total_kimg = tk.total_kimg if kimg is None else kimg
    c.ema_kimg, c.ema_rampup = tk.ema_kimg, tk.ema_rampup
    c.G_reg_interval, c.D_reg_interval = tk.G_reg_interval, tk.D_reg_interval
    c.kimg_per_tick = 4 if tick is None else tick
    if c.kimg_per_tick <= 0 or c.total_kimg <= 0:
        raise dnnlib.util.UserError('--tick and --kimg: must be positive')
    if snap is None or snap < 1:
        raise dnnlib.util.UserError(f'--snap: must be at least 1, got {snap}')
    c.image_snapshot_ticks = c.network_snapshot_ticks = snap
    c.random_seed = seed
    c.num_gpus = gpus
    c.device = device
    c.cudnn_benchmark = not nobench
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=(device == 'cuda'), num_workers=workers)
    if workers > 0:
        c.data_loader_kwargs.prefetch_factor = 2

    # Augmentation.
    c.augment_kwargs = None
    c.augment_p = 0
    c.ada_target = None
    if aug != 'noaug':
        if augpipe not in augment.augpipe_specs:
            raise dnnlib.util.UserError(f'--augpipe: unknown pipe {augpipe!r}')
        c.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', **augment.augpipe_specs[augpipe])
    if aug == 'ada':
        c.ada_target = 0.6 if target is None else target
        if p is not None:
            raise dnnlib.util.UserError('--p: can only be given with --aug=fixed')
    elif target is not None:
        raise dnnlib.util.UserError('--target: can only be given with --aug=ada')
    if aug == 'fixed':
        if p is None:
            raise dnnlib.util.UserError('--aug=fixed: needs --p')
        if not 0 <= p <= 1:
            raise dnnlib.util.UserError(f'--p: must be in [0, 1], got {p}')
        c.augment_p = p
    elif aug == 'noaug' and p is not None:
        raise dnnlib.util.UserError('--p: can only be given with --aug=fixed')

    # Metrics.
    c.metrics = [m for m in metrics if m and m != 'none']
    if c.metrics:
        from metrics import metric_main
        for metric in c.metrics:
            if not metric_main.is_valid_metric(metric):
                raise dnnlib.util.UserError(f'--metrics: unknown metric {metric!r}')

    if grid is not None:
        m = re.fullmatch(r'(\d+)x(\d+)', grid)
        if m is None or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise dnnlib.util.UserError(f'--grid: expected WxH, e.g. 8x4, got {grid!r}')
        c.image_grid_size = [int(m.group(1)), int(m.group(2))]

    desc = f'{cfg}-{info.name}-gpus{gpus}-batch{c.batch_size}-gamma{c.loss_kwargs.r1_gamma:g}'
    return c, desc


# stylegan2-ada-pytorch's --resume shortcuts (transfer-learning source networks); downloaded once
# through dnnlib's cached open_url like any URL.
RESUME_SHORTCUTS = {
    'ffhq256': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl',
    'ffhq512': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res512-mirror-stylegan2-noaug.pkl',
    'ffhq1024': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res1024-mirror-stylegan2-noaug.pkl',
    'celebahq256': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl',
    'lsundog256': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/lsundog-res256-paper256-kimg100000-noaug.pkl',
}


def resolve_resume(c, resume):
    """Set c.resume_pkl / c.resume_state for ``--resume <pkl>``; weights only -> NVIDIA's resume settings."""
    c.resume_pkl = None
    c.resume_state = None
    if resume == 'noresume':
        resume = None
    resume = RESUME_SHORTCUTS.get(resume, resume)
    if resume is None:
        return
    if not dnnlib.util.is_url(resume, allow_file_urls=True) and not os.path.isfile(resume):
        raise dnnlib.util.UserError(f'--resume: {resume}: no such file')
    c.resume_pkl = resume
    state = training_loop.state_path_for(resume) if not dnnlib.util.is_url(resume, allow_file_urls=True) else None
    if state is not None and os.path.isfile(state):
        c.resume_state = state
    else:
        c.ada_kimg = 100          # as NVIDIA: p adapts faster, no EMA ramp-up for a trained model
        c.ema_rampup = None
        if c.get('loss_kwargs', {}).get('blur_init_sigma'):
            c.loss_kwargs.blur_init_sigma = 0  # as stylegan3: no image blur when fine-tuning a trained stylegan3-r


def _precision_text(kwargs):
    p = student_init.precision_of(kwargs)
    return (f'fp16 in the {p["num_fp16_res"]} highest-resolution blocks' if p['num_fp16_res'] else 'fp32') + \
        f', conv_clamp {p["conv_clamp"]}'


def launch_training(c, run_dir, dry_run=False, new_run=True, meta=None):
    """Print the options, create the run directory, run 1..N processes (spawn or torchrun).
    ``meta``: the config's ``paper``/``prune`` blocks, printed (one JSON line each) after the summary."""
    c.run_dir = run_dir
    tr = _torchrun_env()
    rank = 0 if tr is None else tr[0]
    if rank == 0:
        print()
        print('Training options:')
        print(json.dumps(c, indent=2))
        print()
        print(f'Output directory:    {run_dir}')
        print(f'Number of processes: {c.num_gpus}  ({c.device}{", torchrun" if tr else ""})')
        print(f'Batch size:          {c.batch_size} images ({c.batch_gpu} per micro-batch)')
        print(f'Training duration:   {c.total_kimg:g} kimg')
        print(f'Dataset path:        {c.training_set_kwargs.path}')
        print(f'Dataset resolution:  {c.training_set_kwargs.resolution}')
        print(f'Dataset labels:      {c.training_set_kwargs.use_labels}')
        print(f'Dataset x-flips:     {c.training_set_kwargs.xflip}')
        print(f'G precision:         {_precision_text(c.G_kwargs)}')
        print(f'D precision:         {_precision_text(c.D_kwargs)}')
        teacher_spec = (c.get('extra_networks') or {}).get('teacher') or {}
        if teacher_spec.get('precision') is not None:
            print(f'Teacher precision:   {_precision_text(teacher_spec["precision"])}')
        if (meta or {}).get('paper') is not None:
            print(f'Paper row:           {json.dumps(meta.paper)}')
        if (meta or {}).get('prune') is not None:
            print(f'Student made by:     {json.dumps(meta.prune)}')
        print()
    if dry_run:
        print('Dry run; exiting.')
        return
    if rank != 0:
        return _launch_processes(c, tr)
    if new_run and os.path.exists(run_dir):
        raise dnnlib.util.UserError(f'--outdir: {run_dir} already exists')
    dnnlib.cli.check_output_dir(run_dir, '--outdir')
    os.makedirs(run_dir, exist_ok=True)
    # One process per run folder; a new run that fails before its first snapshot leaves no folder.
    with run_folder.removed_on_failure(run_dir, enabled=new_run), run_folder.locked(run_dir):
        stale = dnnlib.util.remove_stale_temporaries(run_dir)
        if stale:
            print(f'Removed {len(stale)} temporary file(s) a killed run left behind: {", ".join(stale)}')
        with dnnlib.util.atomic_open(os.path.join(run_dir, 'training_options.json'), 'wt') as f:
            json.dump(c, f, indent=2)
        print('Launching processes...')
        _launch_processes(c, tr)


def _launch_processes(c, tr):
    if tr is not None:
        rank, world, local_rank = tr
        c.num_gpus = world
        kind = c.device
        backend = 'nccl' if kind == 'cuda' else 'gloo'
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend=backend, init_method='env://')
        subprocess_fn(rank=rank, c=c, temp_dir=None, local_rank=local_rank, torchrun=True)
        return

    torch.multiprocessing.set_start_method('spawn', force=True)
    with tempfile.TemporaryDirectory() as temp_dir:
        if c.num_gpus == 1:
            subprocess_fn(rank=0, c=c, temp_dir=temp_dir)
        else:
            try:
                torch.multiprocessing.spawn(fn=subprocess_fn, args=(c, temp_dir), nprocs=c.num_gpus)
            except torch.multiprocessing.ProcessExitedException as e:
                raise dnnlib.util.UserError(f'training stopped: a process exited with code {e.exit_code}')
            except torch.multiprocessing.ProcessRaisedException as e:
                print(str(e), file=sys.stderr)
                raise dnnlib.util.UserError('training stopped: a process raised an exception (traceback above)')

# ---------------------------------------------------------------------------------------------
# Distillation: teacher, student, initialisation, loss terms, ablation hooks.

DISTILL_RECIPES = ('none', 'stylekd', 'cagan', 'gs-sparse', 'gs')
RECIPE_TERMS = {'none': (), 'stylekd': ('l1', 'lpips', 'ld'), 'cagan': ('l1', 'lpips'), 'gs-sparse': ('vgg', 'sparse'),
                'gs': ('vgg',)}
DISTILL_DEFAULTS = dict(init='pruned', svs_fn='sqrt', l1_weight=3.0, lpips_weight=3.0, ld_weight=30.0, ld_offset=5.0,
                        sparse_eta=1e-5, vgg_weight=3.0, mask='uniform')
_TEACHER_ONLY_OPTIONS = ('student', 'init', 'teacher_d', 'distill', 'l1_weight', 'lpips_weight', 'ld_weight', 'ld_offset',
                         'sparse_eta', 'vgg_weight', 'mask', 'face_parser', 'lpips_vgg', 'lpips_lin')


def _check_weight_file(option, path_or_url):
    try:
        dnnlib.util.open_url(str(path_or_url), return_filename=True, verbose=False, num_attempts=1)
    except dnnlib.util.UserError as e:
        raise dnnlib.util.UserError(f'{option}: {e}') from None


def add_distillation(c, opts, desc):
    """Turn the distillation options into the loop's ``G_kwargs``/``D_kwargs``, ``init_fn``,
    ``extra_networks``, ``loss_kwargs.terms`` and ``step_hooks``; everything is validated here,
    before training. Returns the run description."""
    from training import distill
    from training import lpips as lpips_mod
    o = dnnlib.EasyDict({k: opts.get(k) for k in ('teacher', 'student', 'init', 'svs_fn', 'teacher_d', 'distill',
                                                  'l1_weight', 'lpips_weight', 'ld_weight', 'ld_offset', 'sparse_eta',
                                                  'vgg_weight', 'mask', 'face_parser', 'lpips_vgg', 'lpips_lin',
                                                  'spectral_norm', 'svs_every', 'cbase', 'cmax', 'fp32')})
    for key, value in DISTILL_DEFAULTS.items():
        if o[key] is None:
            o[key] = value
    svs_fn = svs.parse_fn(o.svs_fn)[0]
    hooks = []
    if o.spectral_norm:
        hooks.append(dict(class_name='training.student_init.SpectralNormHook'))
    if o.svs_every is not None:
        hooks.append(dict(class_name='training.student_init.PeriodicSVSHook', every_kimg=o.svs_every, fn=svs_fn))
    if hooks:
        c.step_hooks = hooks

    if o.teacher is None:
        given = [k for k in _TEACHER_ONLY_OPTIONS if opts.get(k) is not None and not (k == 'distill' and opts[k] == 'none')]
        if given:
            raise dnnlib.util.UserError(f'--{given[0].replace("_", "-")}: needs --teacher')
        if o.spectral_norm:
            c.init_fn = dict(func_name='training.student_init.spectral_normalize_init')
        return desc

    recipe = o.distill if o.distill is not None else 'stylekd'
    terms = RECIPE_TERMS[recipe]
    teacher_d = o.teacher_d if o.teacher_d is not None else (recipe == 'cagan')

    # Teacher and student: shapes first, so that a wrong file fails before anything heavy.
    teacher_data = student_init.load_generators(o.teacher, '--teacher')
    teacher = teacher_data.G_ema
    family = distill.generator_family(teacher)
    res = c.training_set_kwargs.resolution
    if teacher.img_resolution != res:
        raise dnnlib.util.UserError(f'--teacher: {teacher.img_resolution}x{teacher.img_resolution} generator, '
                                    f'the training set is {res}x{res}')
    if teacher.c_dim != c.G_kwargs.c_dim:
        raise dnnlib.util.UserError(f'--teacher: c_dim is {teacher.c_dim}, the training set gives {c.G_kwargs.c_dim} '
                                    f'(use --cond=1 for a conditional teacher)')
    sg3_cfg = c.G_kwargs.class_name.endswith('networks_stylegan3.Generator')
    if (family == 'sg3') != sg3_cfg:
        raise dnnlib.util.UserError(f'--cfg: a {family.upper()} teacher needs ' +
                                    ('--cfg stylegan3-t or stylegan3-r' if family == 'sg3' else 'a StyleGAN2 preset'))
    student_data = student_init.load_generators(o.student, '--student') if o.student is not None else teacher_data
    student_init.check_student(teacher, student_data.G, o.init, pruning=student_data.pruning,
                               student_path=f'--student {o.student}' if o.student else '--teacher')
    # Precision comes from the options (preset, --fp32), as NVIDIA's train.py, not from the checkpoint;
    # the official code builds student, teacher and D with num_fp16_res=4, conv_clamp=256 for every cfg.
    precision = student_init.precision_of(c.G_kwargs)
    c.G_kwargs = student_init.generator_kwargs(student_data.G, precision=precision)

    # Discriminator: the pickle's (CAGAN), or dense from the teacher's widths, from scratch.
    if teacher_d:
        D_src = student_data.D if student_data.D is not None else teacher_data.D
        if D_src is None:
            raise dnnlib.util.UserError(f'--teacher-d: neither {o.student or o.teacher} nor {o.teacher} holds a discriminator')
        c.D_kwargs = student_init.generator_kwargs(D_src, precision=student_init.precision_of(c.D_kwargs))
        if c.D_kwargs.get('img_resolution') != res:
            raise dnnlib.util.UserError(f'--teacher-d: the discriminator is for {c.D_kwargs.get("img_resolution")} px, not {res}')
    else:
        cbase, cmax = student_init.teacher_channel_base(teacher)
        c.D_kwargs.channel_base = cbase if o.cbase is None else o.cbase
        c.D_kwargs.channel_max = cmax if o.cmax is None else o.cmax
    mbstd = (c.D_kwargs.get('epilogue_kwargs') or {}).get('mbstd_group_size')
    if mbstd and c.batch_gpu % min(mbstd, c.batch_gpu) != 0:
        raise dnnlib.util.UserError(f'--batch-gpu: {c.batch_gpu} is not a multiple of the discriminator\'s minibatch-std group {mbstd}')

    # Loss terms; every weight file they need must exist now.
    weights = dict(l1=o.l1_weight, lpips=o.lpips_weight, ld=o.ld_weight, vgg=o.vgg_weight, sparse=o.sparse_eta)
    active = [t for t in terms if weights[t] > 0]
    lpips_vgg = o.lpips_vgg or lpips_mod.VGG16_URL
    lpips_lin = o.lpips_lin or lpips_mod.LPIPS_VGG_URL
    if 'lpips' in active:
        ok, reason = distill.lpips_weights_available(lpips_vgg, lpips_lin)
        if not ok:
            raise dnnlib.util.UserError(f'{reason} (LPIPS needs both files; --lpips-weight=0 switches it off)')
    if 'vgg' in active:
        _check_weight_file('--lpips-vgg', lpips_vgg)
    if o.mask == 'face':
        if not any(t in active for t in ('l1', 'lpips', 'vgg')):
            raise dnnlib.util.UserError(f'--mask=face: the {recipe} recipe has no masked term')
        if not o.face_parser:
            raise dnnlib.util.UserError('--face-parser: --mask=face needs a BiSeNet checkpoint (79999_iter.pth), give its path or URL')
        _check_weight_file('--face-parser', o.face_parser)
    teacher_terms = [t for t in active if t in ('l1', 'lpips', 'ld', 'vgg')]
    if teacher_terms:
        c.loss_kwargs.terms.append(dict(
            class_name='training.distill.DistillTerm', teacher='teacher',
            l1_weight=weights['l1'] if 'l1' in teacher_terms else 0, lpips_weight=weights['lpips'] if 'lpips' in teacher_terms else 0,
            ld_weight=weights['ld'] if 'ld' in teacher_terms else 0, ld_offset=o.ld_offset,
            vgg_weight=weights['vgg'] if 'vgg' in teacher_terms else 0, mask=o.mask,
            face_parser=o.face_parser if o.mask == 'face' else None,
            lpips_vgg=lpips_vgg if ('lpips' in teacher_terms or 'vgg' in teacher_terms) else None,
            lpips_lin=lpips_lin if 'lpips' in teacher_terms else None))
        c.extra_networks = dict(teacher=dict(func_name='training.distill.load_teacher', path=o.teacher,
                                             precision=precision))
    if 'sparse' in active:
        c.loss_kwargs.terms.append(dict(class_name='training.distill.StyleSparsityTerm', eta=weights['sparse']))

    c.init_fn = dict(func_name='training.student_init.init_student', teacher=o.teacher, student=o.student, init=o.init,
                     svs_fn=svs_fn, teacher_d=bool(teacher_d), spectral_norm=bool(o.spectral_norm))
    return f'{desc}-{recipe}-{o.init}'


def check_config_file(path):
    """The ``--config`` checks that need no command line (readable YAML, known keys, values of the
    options' types), so that pipeline.py can refuse a bad config before its first stage."""
    apply_config(dnnlib.EasyDict(), path, click.Context(main))


def apply_config(opts, path, ctx):
    """Fill ``opts`` from a YAML file whose keys are option names ('-' or '_'); options given on the
    command line win. Values go through the options' own click types. The metadata blocks
    ``paper:`` and ``prune:`` (training/config_meta.py) are checked and returned, not applied."""
    import yaml
    try:
        with open(path, 'rt') as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise dnnlib.util.UserError(f'--config: {path}: cannot read it ({e.strerror})') from None
    except yaml.YAMLError as e:
        raise dnnlib.util.UserError(f'--config: {path}: not valid YAML ({str(e).splitlines()[0]})') from None
    except UnicodeDecodeError:
        raise dnnlib.util.UserError(f'--config: {path}: not a text file (expected YAML)') from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise dnnlib.util.UserError(f'--config: {path}: expected a mapping of option names to values')
    data, meta = config_meta.split_config(data, f'--config: {path}')
    params = {p.name: p for p in ctx.command.params if p.name != 'config'}
    unknown = [str(k) for k in data if str(k).replace('-', '_') not in params]
    if unknown:
        raise dnnlib.util.UserError(f'--config: {path}: unknown keys {", ".join(unknown)} (keys are train.py option names)')
    for key, value in data.items():
        name = str(key).replace('-', '_')
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE or value is None:
            continue
        if isinstance(value, bool):
            text = 'true' if value else 'false'
        elif isinstance(value, (list, tuple)):
            text = ','.join(str(v) for v in value)
        else:
            text = str(value)
        try:
            opts[name] = params[name].type_cast_value(ctx, text)
        except click.BadParameter as e:
            raise dnnlib.util.UserError(f'--config: {path}: {key}: {e.message}') from None
    return meta

# ---------------------------------------------------------------------------------------------


def _parse_comma_list(s):
    if isinstance(s, list):
        return s
    if s is None or s.lower() == 'none' or s == '':
        return []
    return s.split(',')


@click.command(context_settings=dict(max_content_width=120))
# Required (except when resuming in place).
@click.option('--outdir',       help='Where to make the run directory (or the run directory, with --resume=latest)  [required]', metavar='DIR')
@click.option('--data',         help='Training data (zip or folder of images)', metavar='[ZIP|DIR]')
@click.option('--gpus',         help='Number of processes (GPUs, or CPU processes with --device=cpu)', metavar='INT', type=click.IntRange(min=1))
# Base configuration.
@click.option('--cfg',          help='Base configuration: stylegan2-ada names (stylegan2 = its preset) plus stylegan3-t/-r; stylegan3\'s "stylegan2" config is sg3-stylegan2', type=click.Choice(presets.PRESET_NAMES), default='auto', show_default=True)
@click.option('--batch',        help='Total batch size', metavar='INT', type=click.IntRange(min=1))
@click.option('--batch-gpu',    help='Micro-batch size per process and accumulation round', metavar='INT', type=click.IntRange(min=1))
@click.option('--gamma',        help='R1 regularisation weight', metavar='FLOAT', type=dnnlib.cli.FiniteFloat(min=0))
@click.option('--kimg',         help='Training duration in kimg (may be fractional)', metavar='KIMG', type=dnnlib.cli.FiniteFloat(min=0, min_open=True))
@click.option('--snap',         help='Snapshot interval in ticks [default: 50]', metavar='TICKS', type=click.IntRange(min=1))
@click.option('--tick',         help='Progress-line interval in kimg (may be fractional) [default: 4]', metavar='KIMG', type=dnnlib.cli.FiniteFloat(min=0, min_open=True))
@click.option('--mirror',       help='Enable dataset x-flips', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--cond',         help='Train a conditional model', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--subset',       help='Train on only N images', metavar='INT', type=click.IntRange(min=1))
# Augmentation.
@click.option('--aug',          help='Augmentation mode', type=click.Choice(['noaug', 'ada', 'fixed']), default='ada', show_default=True)
@click.option('--p',            help='Augmentation probability for --aug=fixed', metavar='FLOAT', type=dnnlib.cli.FiniteFloat())
@click.option('--target',       help='ADA target value for --aug=ada [default: 0.6]', metavar='FLOAT', type=dnnlib.cli.FiniteFloat(min=0, max=1))
@click.option('--augpipe',      help='Augmentation pipeline', type=click.Choice(['blit', 'geom', 'color', 'filter', 'noise', 'cutout', 'bg', 'bgc', 'bgcf', 'bgcfn', 'bgcfnc']), default='bgc', show_default=True)
# Networks and optimisation.
@click.option('--resume',       help='Resume from a network pickle or URL, a stylegan2-ada shortcut (ffhq256, ffhq512, ffhq1024, celebahq256, lsundog256; noresume = none), or "latest" (continue the run in --outdir exactly)', metavar='[PKL|URL|NAME|latest]')
@click.option('--freezed',      help='Freeze the first N layers of D (Freeze-D)  [default: 0]', metavar='INT', type=click.IntRange(min=0))
@click.option('--fp32',         help='Disable mixed precision', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--glr',          help='G learning rate [default: preset]', metavar='FLOAT', type=dnnlib.cli.FiniteFloat(min=0))
@click.option('--dlr',          help='D learning rate [default: preset]', metavar='FLOAT', type=dnnlib.cli.FiniteFloat(min=0))
@click.option('--map-depth',    help='Mapping network depth [default: preset]', metavar='INT', type=click.IntRange(min=1))
@click.option('--mbstd-group',  help='Minibatch std group size [default: preset]', metavar='INT', type=click.IntRange(min=1))
@click.option('--cbase',        help='Capacity multiplier (channel_base) [default: preset]', metavar='INT', type=click.IntRange(min=1))
@click.option('--cmax',         help='Max. feature maps (channel_max) [default: preset]', metavar='INT', type=click.IntRange(min=1))
# Misc.
@click.option('--metrics',      help='Quality metrics after each snapshot, or "none" [default: fid50k_full]', metavar='[NAME|A,B,C|none]', type=_parse_comma_list)
@click.option('--seed',         help='Random seed', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--workers',      help='DataLoader worker processes', metavar='INT', type=click.IntRange(min=0))
@click.option('--nobench',      help='Disable cuDNN benchmarking', metavar='BOOL', type=bool)
@click.option('--allow-tf32',   help='Allow TF32 for the trained networks (as stylegan2-ada; stylegan3 never does)', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--frozen-tf32',  help='TF32 for frozen networks: teacher, LPIPS, face parser, metric detectors (k-NN metrics stay exact)', metavar='BOOL', type=bool, default=True, show_default=True)
@click.option('--nhwc',         help='Use NHWC (channels_last) memory format in the FP16 layers', metavar='BOOL', type=bool)
@click.option('--device',       help='Device', type=click.Choice(['auto', 'cpu', 'cuda']))
@click.option('--grid',         help='Sample-grid size WxH [default: as NVIDIA, up to 32x32]', metavar='WxH')
@click.option('--desc',         help='String to append to the run directory name', metavar='STR')
# Distillation (a pruned student against a frozen teacher).
@click.option('--teacher',      help='Teacher network (any checkpoint load_network reads; its G_ema)', metavar='PKL|URL')
@click.option('--student',      help='Student network (a prune.py student.pkl) [default: the teacher itself]', metavar='PKL|URL')
@click.option('--init',         help='Student initialisation [default: pruned]', type=click.Choice(student_init.INIT_MODES))
@click.option('--svs-fn',       help='SVS function for --init=svs and --svs-every [default: sqrt]', metavar='FN')
@click.option('--teacher-d',    help='Start D from the student/teacher pickle\'s D (CAGAN) [default: from scratch; cagan: 1]', metavar='BOOL', type=bool)
@click.option('--distill',      help='Distillation recipe [default: stylekd with --teacher, else none]', type=click.Choice(DISTILL_RECIPES))
@click.option('--l1-weight',    help='Masked pixel L1 weight [default: 3]', metavar='FLOAT', type=dnnlib.cli.FiniteFloat(min=0))
@click.option('--lpips-weight', help='LPIPS weight [default: 3]', metavar='FLOAT', type=dnnlib.cli.FiniteFloat(min=0))
@click.option('--ld-weight',    help='Latent-direction relation loss weight [default: 30]', metavar='FLOAT', type=dnnlib.cli.FiniteFloat(min=0))
@click.option('--ld-offset',    help='Latent offset strength of the LD loss [default: 5]', metavar='FLOAT', type=dnnlib.cli.FiniteFloat(min=0))
@click.option('--sparse-eta',   help='GAN-Slimming style-sparsity weight (gs-sparse) [default: 1e-5]', metavar='FLOAT', type=dnnlib.cli.FiniteFloat(min=0))
@click.option('--vgg-weight',   help='GAN-Slimming VGG-feature distillation weight (gs, gs-sparse) [default: 3]', metavar='FLOAT', type=dnnlib.cli.FiniteFloat(min=0))
@click.option('--mask',         help='Content mask of L1/LPIPS [default: uniform]', type=click.Choice(['uniform', 'face']))
@click.option('--face-parser',  help='BiSeNet checkpoint (79999_iter.pth) for --mask=face', metavar='PATH|URL')
@click.option('--lpips-vgg',    help='VGG16 ImageNet weights (torchvision vgg16-397923af.pth) [default: its URL]', metavar='PATH|URL')
@click.option('--lpips-lin',    help='LPIPS v0.1 vgg heads (vgg.pth) [default: its URL]', metavar='PATH|URL')
@click.option('--spectral-norm', help='Spectral normalisation of the synthesis weights every step (Table 6d)', metavar='BOOL', type=bool)
@click.option('--svs-every',    help='Re-apply SVS every KIMG during the first half of training (Table 6e)', metavar='KIMG', type=dnnlib.cli.FiniteFloat(min=0, min_open=True))
@click.option('--config',       help='YAML file of options (keys = option names); command-line options override it', metavar='FILE')
@click.option('--dry-run', '-n', help='Print the options and exit', is_flag=True)
@dnnlib.util.exit_on_user_error
def main(**kwargs):
    """Train a GAN (stylegan2-ada-pytorch options; --device=cpu and exact --resume added), or
    distil a pruned student from a teacher (--teacher, --student, --init, --distill)."""
    opts = dnnlib.EasyDict(kwargs)
    meta = None
    if opts.config is not None:
        meta = apply_config(opts, opts.config, click.get_current_context())
    if not opts.outdir:
        raise click.UsageError("Missing option '--outdir'.")
    if opts.resume != 'latest' and not opts.dry_run:
        dnnlib.cli.check_output_dir(opts.outdir, '--outdir')  # before any heavy work
    if opts.resume == 'latest':
        ctx = click.get_current_context()
        given = {name for name in kwargs if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
        return _resume_latest(opts, given)

    tr = _torchrun_env()
    gpus = _default(opts.gpus, 1)
    if tr is not None:
        if opts.gpus is not None and opts.gpus != tr[1]:
            raise dnnlib.util.UserError(f'--gpus={opts.gpus}: torchrun started {tr[1]} processes')
        gpus = tr[1]
    c, desc = build_training_kwargs(
        data=opts.data, cfg=opts.cfg, gpus=gpus, batch=opts.batch, batch_gpu=opts.batch_gpu,
        gamma=opts.gamma, kimg=opts.kimg, snap=_default(opts.snap, 50), mirror=opts.mirror, aug=opts.aug, p=opts.p,
        target=opts.target, augpipe=opts.augpipe, seed=opts.seed, fp32=opts.fp32,
        metrics=_default(opts.metrics, ['fid50k_full']), cond=opts.cond, subset=opts.subset, glr=opts.glr,
        dlr=opts.dlr, map_depth=opts.map_depth, mbstd_group=opts.mbstd_group, cbase=opts.cbase, cmax=opts.cmax,
        tick=opts.tick, workers=_default(opts.workers, 3), nobench=_default(opts.nobench, False),
        device=_default(opts.device, 'auto'), grid=opts.grid)
    desc = add_distillation(c, opts, desc)
    c.allow_tf32 = bool(opts.allow_tf32)
    c.frozen_tf32 = bool(opts.frozen_tf32)
    resolve_resume(c, opts.resume)
    if opts.resume is not None:
        desc += '-noresume' if opts.resume == 'noresume' else f'-resume{opts.resume}' if opts.resume in RESUME_SHORTCUTS else '-resume'
    if opts.cfg == 'stylegan2':
        print('note: --cfg=stylegan2 is stylegan2-ada-pytorch\'s preset; stylegan3\'s "stylegan2" config is --cfg=sg3-stylegan2')
    if opts.freezed:
        c.D_kwargs.setdefault('block_kwargs', dnnlib.EasyDict()).freeze_layers = opts.freezed
        desc += f'-freezed{opts.freezed:d}'
    if opts.nhwc:
        c.D_kwargs.setdefault('block_kwargs', dnnlib.EasyDict()).fp16_channels_last = True
        if c.G_kwargs.class_name.endswith('networks_stylegan2.Generator'):  # StyleGAN3 layers have no NHWC option
            c.G_kwargs.setdefault('synthesis_kwargs', dnnlib.EasyDict()).fp16_channels_last = True
    if opts.desc:
        desc += f'-{opts.desc}'
    run_dir = _agree_run_dir(opts.outdir, desc, tr, opts.dry_run)
    launch_training(c, run_dir, dry_run=opts.dry_run, meta=meta)


def _default(value, default):
    return default if value is None else value


def _agree_run_dir(outdir, desc, tr, dry_run):
    """Rank 0 picks the next run directory; under torchrun the others receive its name."""
    if tr is None:
        return _next_run_dir(outdir, desc)
    rank, world, local_rank = tr
    kind_cuda = torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        if kind_cuda:
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend='nccl' if kind_cuda else 'gloo', init_method='env://')
    name = [_next_run_dir(outdir, desc) if rank == 0 else None]
    torch.distributed.broadcast_object_list(name, src=0)
    return name[0]


def _resume_latest(opts, given=None):
    """``--resume latest``: continue the newest resumable snapshot of a run, in that run directory."""
    run_dir = find_resumable_run(opts.outdir)
    snapshot = training_loop.find_latest_snapshot(run_dir)
    if snapshot is None:
        raise dnnlib.util.UserError(f'--resume=latest: {run_dir} has no snapshot with a training state yet')
    c = run_folder.read_training_options(run_dir)  # class names in it checked against the allow-list
    ignored = [k for k in ('data', 'cfg', 'batch', 'gamma', 'mirror', 'p', 'target', 'fp32', 'glr', 'dlr', 'map_depth',
                           'mbstd_group', 'cbase', 'cmax', 'cond', 'subset', 'grid', 'teacher', 'student', 'init',
                           'svs_fn', 'teacher_d', 'distill', 'l1_weight', 'lpips_weight', 'ld_weight', 'ld_offset',
                           'sparse_eta', 'vgg_weight', 'mask', 'face_parser', 'lpips_vgg', 'lpips_lin', 'spectral_norm',
                           'svs_every', 'aug', 'augpipe', 'seed', 'freezed', 'nhwc')
               if (k in given if given is not None else opts.get(k) not in (None, False))]
    if ignored:
        print(f'--resume=latest: options come from {run_dir}/training_options.json; ignoring --{", --".join(ignored)}')
    if opts.kimg is not None:
        c.total_kimg = opts.kimg
    if opts.snap is not None:
        c.image_snapshot_ticks = c.network_snapshot_ticks = opts.snap
    if opts.tick is not None:
        c.kimg_per_tick = opts.tick
    if opts.metrics is not None:
        c.metrics = [m for m in opts.metrics if m != 'none']
    if opts.workers is not None:
        c.data_loader_kwargs.num_workers = opts.workers
    if opts.nobench is not None:
        c.cudnn_benchmark = not opts.nobench
    if opts.device is not None:
        c.device = 'cuda' if opts.device == 'auto' and torch.cuda.is_available() else ('cpu' if opts.device == 'auto' else opts.device)
    if opts.gpus is not None:
        c.num_gpus = opts.gpus
    if opts.batch_gpu is not None:
        c.batch_gpu = opts.batch_gpu
    if c.batch_size % (c.num_gpus * c.batch_gpu) != 0:
        raise dnnlib.util.UserError(f'--batch: {c.batch_size} is not a multiple of --gpus ({c.num_gpus}) times --batch-gpu ({c.batch_gpu})')
    c.resume_pkl = snapshot
    c.resume_state = training_loop.state_path_for(snapshot)
    done_nimg = training_loop.load_training_state(c.resume_state)['cur_nimg']
    if done_nimg >= c.total_kimg * 1000:
        # A requeued job must not train on: a finished run stays finished unless --kimg grows.
        print(f'{run_dir}: already finished ({done_nimg / 1000:g} of {c.total_kimg:g} kimg); nothing to do '
              f'(give a larger --kimg to train longer)')
        return
    tr = _torchrun_env()
    if tr is not None:
        c.num_gpus = tr[1]
    print(f'Resuming {run_dir} from {os.path.basename(snapshot)}')
    launch_training(c, run_dir, dry_run=opts.dry_run, new_run=False)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
