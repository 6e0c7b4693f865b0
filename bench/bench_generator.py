"""CPU forward time of the 256 px StyleGAN2 teachers and their 70 %-pruned students.

Teachers: the dense ``stylegan2`` ("base") and ``paper256`` ("small") presets. Students: the same
Generator class with every synthesis channel group cut to C - floor(0.7 * C) channels (random
weights: speed does not depend on the values). Prints the forward time of a batch (float32,
noise_mode='const', after warm-up: wall-clock mean and best, and CPU time, the steadier figure
on a shared machine) and the student's speed-up.

    python bench/bench_generator.py                 # batch 4, 3 repeats, all threads torch uses
    python bench/bench_generator.py --threads=1 --repeats=2
"""
import math
import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dnnlib                                   # noqa: E402
from training import presets                    # noqa: E402
from training import networks_stylegan2         # noqa: E402


def pruned_widths(widths, ratio):
    """Keep C - floor(ratio * C) channels of every group."""
    return [c - math.floor(ratio * c) for c in widths]


def build_generator(cfg, resolution, layer_channels=None):
    G_kwargs, _ = presets.network_kwargs(cfg, resolution, fp32=True, layer_channels=layer_channels)
    return dnnlib.util.construct_class_by_name(**G_kwargs).eval().requires_grad_(False)


@torch.no_grad()
def time_forward(G, batch, repeats, warmup, fused_modconv):
    """Mean and best wall-clock seconds and mean CPU seconds (all threads) of one forward pass."""
    z = torch.randn([batch, G.z_dim], generator=torch.Generator().manual_seed(0))
    c = torch.zeros([batch, G.c_dim])
    for _ in range(warmup):
        G(z, c, noise_mode='const', fused_modconv=fused_modconv)
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        G(z, c, noise_mode='const', fused_modconv=fused_modconv)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return dnnlib.EasyDict(mean=sum(wall) / repeats, best=min(wall), cpu=sum(cpu) / repeats)


@click.command()
@click.option('--resolution', type=int, default=256, show_default=True, help='Image resolution.')
@click.option('--batch', type=int, default=4, show_default=True, help='Batch size.')
@click.option('--repeats', type=int, default=3, show_default=True, help='Timed forward passes per model.')
@click.option('--warmup', type=int, default=1, show_default=True, help='Untimed forward passes first.')
@click.option('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s choice).')
@click.option('--ratio', type=float, default=0.7, show_default=True, help='Pruning ratio of the students.')
@click.option('--cfg', 'cfgs', multiple=True, default=['stylegan2', 'paper256'], show_default=True, help='Teacher presets.')
@click.option('--fused/--unfused', default=False, show_default=True,
              help='Modulated convolutions as one grouped conv per layer (fused) or one shared conv with '
                   'activation scaling (unfused, the faster choice on CPU).')
def main(resolution, batch, repeats, warmup, threads, ratio, cfgs, fused):
    """Time generator forward passes of teachers and pruned students on the CPU."""
    if threads is not None:
        torch.set_num_threads(threads)
    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, batch {batch}, {resolution}px, '
          f'float32, noise const, {"fused" if fused else "unfused"} modconv, {repeats} repeats after {warmup} warm-up')
    for cfg in cfgs:
        results = {}
        for role in ('teacher', 'student'):
            widths = None
            if role == 'student':
                widths = pruned_widths(networks_stylegan2.dense_layer_channels(resolution, *_cbase_cmax(cfg, resolution)), ratio)
            G = build_generator(cfg, resolution, widths)
            params = sum(p.numel() for p in G.parameters())
            t = time_forward(G, batch, repeats, warmup, fused_modconv=fused)
            results[role] = t
            print(f'{cfg:10s} {role:8s} params {params / 1e6:7.3f}M  widths {G.synthesis.layer_channels}', flush=True)
            print(f'{"":10s} {role:8s} forward wall mean {t.mean * 1e3:8.1f} ms  best {t.best * 1e3:8.1f} ms  '
                  f'cpu {t.cpu * 1e3:8.1f} ms', flush=True)
        teacher, student = results['teacher'], results['student']
        print(f'{cfg:10s} speed-up of the student: {teacher.best / student.best:.2f}x (best wall), '
              f'{teacher.cpu / student.cpu:.2f}x (cpu time)', flush=True)


def _cbase_cmax(cfg, resolution):
    G_kwargs, _ = presets.network_kwargs(cfg, resolution)
    return G_kwargs.synthesis_kwargs.channel_base, G_kwargs.synthesis_kwargs.channel_max


if __name__ == '__main__':
    main()
