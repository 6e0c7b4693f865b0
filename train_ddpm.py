"""Train or fine-tune a DDPM (the Table 3 recipe of Diff-Pruning / ddim) with our loop conventions.

Examples:
    # Fine-tune a Diff-Pruned CIFAR-10 student (Table 3 row), 4 GPUs.
    python train_ddpm.py --outdir runs --data cifar10.zip --network runs/prune30/student --gpus 4 \\
        --config configs/table3-cifar10-diffprune30.yaml

    # Continue the newest run in runs/00003-ddpm exactly where it stopped.
    python train_ddpm.py --outdir runs/00003-ddpm --resume latest

    # The built-in tiny teacher of assets/ (see assets/README.md for the exact command).
    python train_ddpm.py --outdir runs --data sample32.zip --arch tiny --kimg 10 --batch 32

Writes, like train.py: network-snapshot-<tag>.pkl (weights-only DDPM snapshots: UNet, EMA, schedule),
training-state-<tag>.pt, stats.jsonl, TensorBoard events, fakes<tag>.png (DDIM samples of the EMA),
training_options.json and log.txt. Several processes: --gpus N (spawned; gloo on CPU) or torchrun.
"""
import json
import os
import re
import sys
import tempfile

import click
import torch

import dnnlib
from training import ddpm_checkpoints, run_folder, training_loop

# Table 3 fine-tuning recipe (Diff-Pruning): see training/ddpm_loop.py.
RECIPE = dict(lr=2e-4, batch=128, ema_beta=0.9999, dropout=0.1, grad_clip=1.0)
CONFIG_KEYS = ('data', 'network', 'arch', 'kimg', 'batch', 'batch_gpu', 'lr', 'ema_beta', 'dropout', 'grad_clip', 'mirror',
               'tick', 'snap', 'img_snap', 'seed', 'sample_steps', 'skip_type', 'svs', 'svs_reset_norm')
META_KEYS = ('paper', 'prune', 'teacher', 'student', 'family', 'description', 'eval')


def _run_process(rank, c, temp_dir):
    from torch_utils import training_stats
    from training import ddpm_loop
    c = dnnlib.EasyDict(c)
    device = torch.device('cuda', rank) if c.pop('device_kind') == 'cuda' else torch.device('cpu')
    if c.num_gpus > 1:
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        torch.distributed.init_process_group(backend=backend, init_method=f'file://{os.path.join(temp_dir, ".init")}',
                                             rank=rank, world_size=c.num_gpus)
        if device.type == 'cpu' and 'OMP_NUM_THREADS' not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // c.num_gpus))
    training_stats.init_multiprocessing(rank=rank, sync_device=device if c.num_gpus > 1 else None)
    try:
        ddpm_loop.ddpm_training_loop(rank=rank, device=device, **c)
    finally:
        if c.num_gpus > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def read_config(path):
    """A table3-*.yaml: training options (CONFIG_KEYS) and metadata (META_KEYS); UserError otherwise."""
    import yaml
    try:
        with open(path, 'rt') as f:
            cfg = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise dnnlib.util.UserError(f'--config {path}: cannot read ({str(err).splitlines()[0]})')
    if not isinstance(cfg, dict):
        raise dnnlib.util.UserError(f'--config {path}: expected a mapping of options')
    unknown = sorted(k for k in cfg if k.replace('-', '_') not in CONFIG_KEYS + META_KEYS)
    if unknown:
        raise dnnlib.util.UserError(f'--config {path}: unknown option {unknown[0]!r}')
    from training import config_meta
    if cfg.get('family', 'ddpm') != 'ddpm':
        raise dnnlib.util.UserError(f'--config {path}: family is {cfg["family"]!r}; train_ddpm.py trains ddpm configs')
    if cfg.get('paper') is not None:
        config_meta.check_paper(cfg['paper'], f'--config {path}')
    if cfg.get('prune') is not None:
        config_meta.check_prune(cfg['prune'], f'--config {path}')
    return {k.replace('-', '_'): v for k, v in cfg.items()}


def _next_run_dir(outdir, desc):
    prev = [int(m.group(1)) for m in (re.match(r'^(\d+)-', x) for x in (os.listdir(outdir) if os.path.isdir(outdir) else [])) if m]
    return os.path.join(outdir, f'{max(prev, default=-1) + 1:05d}-{desc}')


@click.command(help=__doc__)
@click.option('--outdir', required=True, metavar='DIR', help='Where to make the run directory (the run directory with --resume latest)')
@click.option('--data', metavar='ZIP|DIR', help='Training images')
@click.option('--network', metavar='PATH', help='Starting network: diffusers folder (e.g. prune.py ddpm student), ddim ckpt, snapshot')
@click.option('--arch', type=click.Choice(sorted(ddpm_checkpoints.PRESETS)), help='Train from scratch with this architecture')
@click.option('--config', metavar='FILE', help='YAML of options (configs/table3-*.yaml); command-line options override it')
@click.option('--kimg', type=click.FloatRange(min=0, min_open=True), help='Training length in kimg')
@click.option('--batch', type=click.IntRange(min=1), help=f'Total batch [{RECIPE["batch"]}]')
@click.option('--batch-gpu', type=click.IntRange(min=1), help='Micro-batch per process [batch / gpus]')
@click.option('--lr', type=click.FloatRange(min=0, min_open=True), help=f'Adam learning rate [{RECIPE["lr"]}]')
@click.option('--ema-beta', type=click.FloatRange(0, 1), help=f'EMA decay per step [{RECIPE["ema_beta"]}]')
@click.option('--dropout', type=click.FloatRange(0, 1, max_open=True), help=f'Dropout of the resnets [{RECIPE["dropout"]}]')
@click.option('--mirror', type=bool, help='Random horizontal flips [1]')
@click.option('--tick', type=click.FloatRange(min=0, min_open=True), help='Progress-line interval in kimg [4]')
@click.option('--snap', type=click.IntRange(min=1), help='Snapshot interval in ticks [50]')
@click.option('--img-snap', type=click.IntRange(min=0), help='Sample-grid interval in ticks, 0 = off [= --snap]')
@click.option('--sample-steps', type=click.IntRange(min=1), help='DDIM steps of the sample grids [100]')
@click.option('--seed', type=click.IntRange(min=0), help='Random seed [0]')
@click.option('--gpus', type=click.IntRange(min=1), default=1, show_default=True, help='Processes (GPUs, or CPU processes)')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@click.option('--workers', type=click.IntRange(min=0), default=0, show_default=True, help='DataLoader worker processes')
@click.option('--resume', metavar='latest', help='"latest": continue the run in --outdir exactly')
@click.option('--desc', default='ddpm', show_default=True, help='Run directory suffix')
@click.option('--dry-run', is_flag=True, help='Print the options and exit')
@dnnlib.util.exit_on_user_error
def main(**kw):
    given = {k: v for k, v in kw.items() if v is not None}
    if kw['resume'] is not None:
        if kw['resume'] != 'latest':
            raise dnnlib.util.UserError('--resume: only "latest" (continue the run in --outdir)')
        run_dir = kw['outdir']
        snapshot = training_loop.find_latest_snapshot(run_dir)
        if snapshot is None:
            raise dnnlib.util.UserError(f'--outdir {run_dir}: no snapshot with a training state to resume')
        c = run_folder.read_training_options(run_dir)  # class names checked against the allow-list
        c.resume_pkl, c.resume_state = snapshot, training_loop.state_path_for(snapshot)
        if kw['kimg'] is not None:
            c.total_kimg = kw['kimg']
        return launch(c, run_dir, kw['dry_run'], new_run=False)
    opts = dict(read_config(kw['config'])) if kw['config'] else {}
    meta = {k: opts.pop(k) for k in list(opts) if k in META_KEYS}
    opts.update({k: v for k, v in given.items() if k in CONFIG_KEYS})
    if not opts.get('data'):
        raise dnnlib.util.UserError('--data: required')
    if not opts.get('network') and meta.get('student'):
        opts['network'] = meta['student']  # the schema's student path: the network to fine-tune
    if not opts.get('network') and not opts.get('arch'):
        if kw['config'] and meta.get('teacher'):
            raise dnnlib.util.UserError(f'--config {kw["config"]}: this row has no student (it evaluates the teacher; '
                                        f'see the calc_metrics.py command in its comments)')
        raise dnnlib.util.UserError('give --network (fine-tune) or --arch (from scratch)')
    from train import open_dataset
    set_kwargs, _info = open_dataset(opts['data'])
    gpus = kw['gpus']
    batch = int(opts.get('batch', RECIPE['batch']))
    batch_gpu = int(opts.get('batch_gpu', max(batch // gpus, 1)))
    snap = int(opts.get('snap', 50))
    kind = 'cuda' if (kw['device'] == 'cuda' or (kw['device'] == 'auto' and torch.cuda.is_available())) else 'cpu'
    c = dnnlib.EasyDict(
        training_set_kwargs=set_kwargs, data_loader_kwargs=dict(num_workers=kw['workers']),
        network=os.path.abspath(opts['network']) if opts.get('network') else None, arch=opts.get('arch'),
        random_seed=int(opts.get('seed', 0)), num_gpus=gpus, batch_size=batch, batch_gpu=batch_gpu,
        lr=float(opts.get('lr', RECIPE['lr'])), ema_beta=float(opts.get('ema_beta', RECIPE['ema_beta'])),
        dropout=float(opts.get('dropout', RECIPE['dropout'])), grad_clip=float(opts.get('grad_clip', RECIPE['grad_clip'])),
        xflip=bool(opts.get('mirror', True)), total_kimg=float(opts.get('kimg', 1000)), kimg_per_tick=float(opts.get('tick', 4)),
        network_snapshot_ticks=snap, image_snapshot_ticks=int(opts.get('img_snap', snap)) or None,
        sample_steps=int(opts.get('sample_steps', 100)), skip_type=opts.get('skip_type', 'uniform'), device_kind=kind)
    if batch % (batch_gpu * gpus):
        raise dnnlib.util.UserError(f'--batch {batch}: not a multiple of --batch-gpu {batch_gpu} x --gpus {gpus}')
    if meta.get('paper'):
        print(f'Paper row: {json.dumps(meta["paper"])}')
    if meta.get('prune'):
        print(f'Student made by: {json.dumps(meta["prune"])}')
    return launch(c, _next_run_dir(kw['outdir'], kw['desc']), kw['dry_run'])


def launch(c, run_dir, dry_run=False, new_run=True):
    c.run_dir = run_dir
    print(json.dumps(c, indent=2))
    print(f'Output directory: {run_dir}')
    if dry_run:
        print('Dry run; exiting.')
        return run_dir
    os.makedirs(run_dir, exist_ok=True)
    if new_run:
        stored = {k: v for k, v in c.items() if k not in ('resume_pkl', 'resume_state')}
        with dnnlib.util.atomic_open(os.path.join(run_dir, 'training_options.json'), 'wt') as f:
            json.dump(stored, f, indent=2)
    with tempfile.TemporaryDirectory() as temp_dir:
        if c.num_gpus == 1:
            _run_process(0, c, temp_dir)
        else:
            torch.multiprocessing.set_start_method('spawn', force=True)
            try:
                torch.multiprocessing.spawn(fn=_run_process, args=(c, temp_dir), nprocs=c.num_gpus)
            except torch.multiprocessing.ProcessRaisedException as e:
                print(str(e), file=sys.stderr)
                raise dnnlib.util.UserError('training stopped: a process raised an exception (traceback above)')
    return run_dir


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
