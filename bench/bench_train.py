"""Seconds per kimg of the training loop: cfg cifar at 32 px, channel_base 2048, channel_max 128,
batch 8, ADA (bgc) on, fp32 -- the configuration NVIDIA's stylegan2-ada-pytorch was timed at
(66-74 s/kimg with one CPU thread, stylegan-reference.md §3).

    python bench/bench_train.py                 # CPU, 1 thread
    python bench/bench_train.py --threads 2 --kimg 0.4
    python bench/bench_train.py --device cuda

The number is the mean of the loop's own Timing/sec_per_kimg over the ticks after tick 0 (tick 0
is one warm-up step). Snapshots, sample grids and metrics are off; the data is the project's
sample dataset, generated into a temporary folder.
"""
import json
import os
import sys
import tempfile
import time

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@click.command()
@click.option('--threads', help='torch CPU threads', type=int, default=1, show_default=True)
@click.option('--kimg', help='images to train, in kimg (after the warm-up step)', type=float, default=0.16, show_default=True)
@click.option('--tick', help='tick length in kimg', type=float, default=0.04, show_default=True)
@click.option('--device', type=click.Choice(['cpu', 'cuda']), default='cpu', show_default=True)
@click.option('--cbase', type=int, default=2048, show_default=True)
@click.option('--cmax', type=int, default=128, show_default=True)
@click.option('--batch', type=int, default=8, show_default=True)
def main(threads, kimg, tick, device, cbase, cmax, batch):
    """Time the training loop (seconds per kimg)."""
    os.environ.setdefault('OMP_NUM_THREADS', str(threads))
    import torch
    torch.set_num_threads(threads)
    import train
    from training import training_loop
    from training.sample_data import make_sample_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'sample32.zip')
        make_sample_dataset(data, num_images=256, resolution=32, seed=0)
        c, _desc = train.build_training_kwargs(data=data, cfg='cifar', batch=batch, kimg=kimg + batch / 1000, tick=tick,
                                               snap=1, metrics=[], cbase=cbase, cmax=cmax, fp32=True, aug='ada',
                                               workers=0, device=device)
        c.pop('device')
        c.image_snapshot_ticks = c.network_snapshot_ticks = None
        run_dir = os.path.join(tmp, 'run')
        G_params = None
        print(f'device {device}, torch threads {torch.get_num_threads()}, cfg cifar 32px, cbase {cbase}, cmax {cmax}, '
              f'batch {batch}, batch_gpu {c.batch_gpu}, ADA bgc, fp32, {kimg:g} kimg after warm-up', flush=True)
        start = time.time()
        out = training_loop.training_loop(run_dir=run_dir, rank=0, device=torch.device(device), **c)
        wall = time.time() - start
        G_params = sum(p.numel() for p in out.G.parameters())
        D_params = sum(p.numel() for p in out.D.parameters())
        with open(os.path.join(run_dir, 'stats.jsonl')) as f:
            lines = [json.loads(line) for line in f]
        per_tick = [line['Timing/sec_per_kimg']['mean'] for line in lines[1:]]
        phases = {k[len('Timing/'):]: round(v['mean'], 3) for k, v in lines[-1].items()
                  if k.startswith('Timing/') and k[len('Timing/'):] in ('Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth')}
    sec_per_kimg = sum(per_tick) / len(per_tick)
    print(f'G {G_params / 1e6:.2f}M params, D {D_params / 1e6:.2f}M params; phase means (s, last tick): {phases}')
    print(f'sec/kimg per tick: {", ".join(f"{v:.1f}" for v in per_tick)}')
    print(f'RESULT: {sec_per_kimg:.1f} s/kimg  ({threads} thread{"s" if threads != 1 else ""}, {device}; '
          f'NVIDIA stylegan2-ada-pytorch: 66-74 s/kimg with 1 thread)  wall {wall:.0f}s')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
