"""Compute quality metrics (FID, KID, P&R, P/R/D/C, PPL, IS, StyleGAN3 equivariance) of a generator snapshot.

Examples:

    python calc_metrics.py --network runs/00003/network-snapshot-001000.pkl --metrics fid50k_full,prdc50k_full
    python calc_metrics.py --network sg3.pkl --metrics ppl2_wend,is50k,eqt50k_int,eqt50k_frac,eqr50k
    python calc_metrics.py --network ffhq.pkl --data ~/datasets/ffhq-256.zip --mirror 1 --gpus 4 \\
        --detector-dir /shared/detectors --metrics fid50k_full

Prints one result line per metric and appends a JSON line to ``metric-<name>.jsonl`` in the run
directory (the snapshot's folder, or --run-dir), like stylegan2-ada-pytorch.
"""
import copy
import os
import sys
import tempfile

import click
import torch

import dnnlib
import dnnlib.cli
from metrics import metric_main


def _dataset_kwargs(network_data, data, mirror):
    if data is not None:
        kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=data)
    elif network_data is not None and network_data.get('training_set_kwargs'):
        # The snapshot chooses the dataset class: only one of ours may be constructed.
        kwargs = dnnlib.util.check_dataset_kwargs(network_data['training_set_kwargs'], '--network: training_set_kwargs')
        kwargs = dnnlib.EasyDict(copy.deepcopy(dict(kwargs)))
        kwargs.setdefault('class_name', 'training.dataset.ImageFolderDataset')
    else:
        raise dnnlib.util.UserError('--data: needed, the snapshot does not record its training set')
    if mirror is not None:
        kwargs.xflip = bool(mirror)
    return kwargs


def run_metrics(G, metrics, dataset_kwargs, *, num_gpus=1, rank=0, device=None, run_dir=None, snapshot_pkl=None,
                detector_dir=None, cache=True, verbose=True, seed=0, allow_fewer_real=False, knn_mode='f64',
                log=print, num_gen=None):
    """Compute ``metrics`` (list of names) for ``G`` in this process; rank 0 prints and records.

    Returns the list of result EasyDicts (same on every rank).
    """
    for metric in metrics:
        if not metric_main.is_valid_metric(metric):
            raise dnnlib.util.UserError(f'--metrics: unknown metric {metric!r}; valid: {", ".join(metric_main.list_valid_metrics())}')
    gen_memo = dict()  # the same generated features serve e.g. fid50k_full and prdc50k_full
    out = []
    for metric in metrics:
        result = metric_main.calc_metric(metric, G=G, dataset_kwargs=dataset_kwargs, num_gpus=num_gpus, rank=rank,
                                         device=device, cache=cache, detector_dir=detector_dir, progress=verbose,
                                         seed=seed, allow_fewer_real=allow_fewer_real, knn_mode=knn_mode, gen_memo=gen_memo,
                                         num_gen=num_gen)
        if rank == 0:
            metric_main.report_metric(result, run_dir=run_dir, snapshot_pkl=snapshot_pkl)
            log(metric_main.format_result(result))
        out.append(result)
    return out


def _device_for(rank, num_gpus, device):
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device)
    if device.type == 'cuda' and num_gpus > 1:
        device = torch.device('cuda', rank)
    return device


def _load_G(network_pkl, ddim=None):
    from training import checkpoints, ddpm_checkpoints  # noqa: deferred, the CLI is the only user
    if ddpm_checkpoints.is_ddpm_source(network_pkl):  # DDPMs sample by DDIM; z = the initial noise
        data = ddpm_checkpoints.load_generator(network_pkl, **(ddim or {}))
        return data, data.G_ema
    data = checkpoints.load_network(network_pkl, device='cpu')
    G = data.get('G_ema') or data.get('G')
    if G is None:
        raise dnnlib.util.UserError(f'{network_pkl}: holds no generator (G_ema or G)')
    return data, G


def _subprocess_fn(rank, args, temp_dir):
    device = _device_for(rank, args.num_gpus, args.device)
    if args.num_gpus > 1:
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        init_file = os.path.abspath(os.path.join(temp_dir, '.torch_distributed_init'))
        torch.distributed.init_process_group(backend=backend, init_method=f'file://{init_file}', rank=rank,
                                             world_size=args.num_gpus)
        if device.type == 'cuda':
            torch.cuda.set_device(device)
    try:
        G = args.G
        if G is None:
            _, G = _load_G(args.network_pkl, args.get('ddim'))
        return run_metrics(G, args.metrics, args.dataset_kwargs, num_gpus=args.num_gpus, rank=rank, device=device,
                           run_dir=args.run_dir, snapshot_pkl=args.network_pkl, detector_dir=args.detector_dir,
                           cache=args.cache, verbose=args.verbose and rank == 0, seed=args.seed,
                           allow_fewer_real=args.allow_fewer_real, knn_mode=args.knn_mode, num_gen=args.get('num_gen'))
    finally:
        if args.num_gpus > 1:
            torch.distributed.destroy_process_group()


def launch(args):
    """Run the metrics in one process, or spawn ``args.num_gpus`` processes (gloo on CPU, nccl on CUDA)."""
    with tempfile.TemporaryDirectory() as temp_dir:
        if args.num_gpus == 1:
            return _subprocess_fn(0, args, temp_dir)
        torch.multiprocessing.spawn(fn=_subprocess_fn, args=(args, temp_dir), nprocs=args.num_gpus)
        return None


@click.command()
@click.option('--network', 'network_pkl', required=True, help='Network snapshot: path or URL.')
@click.option('--metrics', default='fid50k_full', show_default=True,
              help='Comma-separated metric names: ' + ', '.join(metric_main.list_valid_metrics()))
@click.option('--data', default=None, help='Dataset (folder or zip); default: the snapshot\'s training set.')
@click.option('--mirror', type=bool, default=None, help='Count x-flipped reals (non-*_full metrics) [default: as trained].')
@click.option('--gpus', 'num_gpus', type=click.IntRange(min=1), default=1, show_default=True,
              help='Processes (one per GPU; gloo processes on CPU).')
@click.option('--device', type=click.Choice(['cpu', 'cuda']), default=None, help='Device [default: cuda when available].')
@click.option('--detector-dir', type=click.Path(file_okay=False), default=None,
              help='Folder with inception-2015-12-05.pt / vgg16.pt for offline machines.')
@click.option('--run-dir', type=dnnlib.cli.OutputDir(), default=None, help='Where metric-*.jsonl go [default: the snapshot\'s folder].')
@click.option('--seed', type=int, default=0, show_default=True, help='Seed of the generated latents and labels.')
@click.option('--allow-fewer-real', is_flag=True, help='Use all reals when the dataset is smaller than a capped metric needs.')
@click.option('--knn-mode', type=click.Choice(['f64', 'f32']), default='f64', show_default=True,
              help='P/R/D/C distances: f64 = bit-exact prdc parity, f32 = centred float32 (faster).')
@click.option('--num-gen', type=click.IntRange(min=1), default=None,
              help='Override the number of generated samples (smoke tests; the result is then not the named metric).')
@click.option('--cache/--no-cache', default=True, show_default=True, help='Cache dataset features on disk.')
@click.option('--verbose', type=bool, is_flag=False, flag_value=True, default=True, show_default=True, metavar='[BOOL]',
              help='Progress on stderr (NVIDIA\'s --verbose=BOOL).')
@click.option('--quiet', is_flag=True, help='Same as --verbose=False.')
@click.option('--ddim-steps', type=click.IntRange(min=1), default=100, show_default=True, help='DDPM networks: DDIM sampling steps.')
@click.option('--skip-type', type=click.Choice(['uniform', 'quad']), default='uniform', show_default=True,
              help='DDPM networks: DDIM timestep spacing (Table 3: quad for CIFAR-10, uniform for CelebA).')
@click.option('--eta', type=click.FloatRange(min=0), default=0.0, show_default=True, help='DDPM networks: DDIM eta.')
@dnnlib.util.exit_on_user_error
def main(network_pkl, metrics, data, mirror, num_gpus, device, detector_dir, run_dir, seed, allow_fewer_real,
         knn_mode, cache, verbose, quiet, num_gen, ddim_steps, skip_type, eta):
    """Calculate quality metrics of a generator snapshot."""
    verbose = verbose and not quiet
    metrics = [m.strip() for m in metrics.split(',') if m.strip()]
    if not metrics:
        raise dnnlib.util.UserError('--metrics: no metric given')
    for metric in metrics:
        if not metric_main.is_valid_metric(metric):
            raise dnnlib.util.UserError(f'--metrics: unknown metric {metric!r}; valid: {", ".join(metric_main.list_valid_metrics())}')
    if device == 'cuda' and not torch.cuda.is_available():
        raise dnnlib.util.UserError('--device cuda: no CUDA device available')
    if device == 'cuda' and num_gpus > torch.cuda.device_count():
        raise dnnlib.util.UserError(f'--gpus {num_gpus}: only {torch.cuda.device_count()} CUDA devices')

    ddim = dict(steps=ddim_steps, skip_type=skip_type, eta=eta)
    network_data, G = _load_G(network_pkl, ddim)  # validate early, and read training_set_kwargs
    if run_dir is None and os.path.isfile(network_pkl):
        run_dir = os.path.dirname(os.path.abspath(network_pkl))
    if data is None and not any(metric_main.needs_dataset(m, G) for m in metrics) and not network_data.get('training_set_kwargs'):
        dataset_kwargs = None  # is50k, ppl*, eq* of an unconditional G read no dataset
    else:
        dataset_kwargs = _dataset_kwargs(network_data, data, mirror)
    args = dnnlib.EasyDict(G=None, network_pkl=network_pkl, metrics=metrics, dataset_kwargs=dataset_kwargs,
                           num_gpus=num_gpus, device=device, detector_dir=detector_dir, run_dir=run_dir, seed=seed,
                           allow_fewer_real=allow_fewer_real, knn_mode=knn_mode, cache=cache, verbose=verbose,
                           num_gen=num_gen, ddim=ddim)
    if verbose:
        print(f'Calculating {", ".join(metrics)} for {network_pkl} on {num_gpus} process(es)...', file=sys.stderr)
    launch(args)


if __name__ == '__main__':
    main()
