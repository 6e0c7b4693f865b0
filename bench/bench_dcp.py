"""Time of DCP-GAN channel scoring per 100 samples (batch 5, 10 directions, fp32).

Default runs: a small StyleGAN2 config on the CPU (64 px, channel_max 64, random weights: speed
does not depend on the values), and, when CUDA is available, the 256 px "base" teacher
(``stylegan2`` preset, 30.0M parameters). Prints seconds per 100 samples and the projected time of
the paper's setting (5000 samples; target on one modern GPU: under 10 minutes).

    python bench/bench_dcp.py                          # CPU small config (+ GPU base if present)
    python bench/bench_dcp.py --device cuda --cfg stylegan2 --resolution 256 --n-samples 100
    python bench/bench_dcp.py --device cuda --noise-mode const --allow-tf32
"""
import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dnnlib                                   # noqa: E402
from pruning import dcp, flops                  # noqa: E402
from training import presets                    # noqa: E402


def build(cfg, resolution, channel_max=None, fp32=True):
    G_kwargs, _ = presets.network_kwargs(cfg, resolution, fp32=fp32, channel_max=channel_max)
    return dnnlib.util.construct_class_by_name(**G_kwargs).eval().requires_grad_(False)


def bench_one(label, G, device, n_samples, batch, n_directions, noise_mode, allow_tf32, pca_samples):
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    device = torch.device(device)
    # Warm-up (kernel selection, allocator), not timed.
    dcp.score(G, n_samples=batch, batch=batch, n_directions=2, pca_samples=pca_samples, device=device,
              noise_mode=noise_mode, progress=False)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    dcp.score(G, n_samples=n_samples, batch=batch, n_directions=n_directions, pca_samples=pca_samples,
              device=device, noise_mode=noise_mode, progress=True)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    per100 = seconds / n_samples * 100
    print(f'{label}: {flops.format_count(flops.count_params(G))} params, {flops.format_count(flops.count_macs(G))} MACs/img | '
          f'{device}, noise {noise_mode}, tf32 {allow_tf32}, batch {batch}, {n_directions} directions | '
          f'{n_samples} samples in {seconds:.1f} s -> {per100:.1f} s per 100 samples, '
          f'projected 5000 samples: {dnnlib.util.format_time(per100 * 50)}', flush=True)
    return per100


@click.command()
@click.option('--device', help='cpu or cuda; default: the CPU small config, plus the GPU base teacher if CUDA is available')
@click.option('--cfg', default=None, help='Preset for a single run (default: small CPU config / stylegan2 on GPU)')
@click.option('--resolution', type=int, default=None, help='Resolution for a single run')
@click.option('--channel-max', type=int, default=None, help='Override channel_max')
@click.option('--n-samples', type=int, default=None, help='Samples to time [CPU 10, GPU 100]')
@click.option('--batch', type=int, default=5, show_default=True)
@click.option('--n-directions', type=int, default=10, show_default=True)
@click.option('--noise-mode', type=click.Choice(dcp.NOISE_MODES), default='random', show_default=True)
@click.option('--allow-tf32', is_flag=True, help='Allow TF32 on Ampere+ GPUs')
@click.option('--pca-samples', type=int, default=10000, show_default=True)
@click.option('--threads', type=int, default=None, help='torch CPU threads')
def main(device, cfg, resolution, channel_max, n_samples, batch, n_directions, noise_mode, allow_tf32, pca_samples, threads):
    if threads:
        torch.set_num_threads(threads)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} CPU threads'
          + (f', {torch.cuda.get_device_name()}' if torch.cuda.is_available() else ', no CUDA'))
    runs = []
    if device is not None:
        dev = torch.device(device)
        runs.append((cfg or ('stylegan2' if dev.type == 'cuda' else 'paper256'),
                     resolution or (256 if dev.type == 'cuda' else 64),
                     channel_max if channel_max is not None else (None if dev.type == 'cuda' else 64), dev))
    else:
        runs.append(('paper256', 64, 64, torch.device('cpu')))
        if torch.cuda.is_available():
            runs.append(('stylegan2', 256, None, torch.device('cuda')))
    for run_cfg, res, cmax, dev in runs:
        G = build(run_cfg, res, channel_max=cmax)
        n = n_samples or (100 if dev.type == 'cuda' else 10)
        label = f'{run_cfg} {res}px' + (f' channel_max {cmax}' if cmax else '')
        bench_one(label, G, dev, n, batch, n_directions, noise_mode, allow_tf32, pca_samples)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
