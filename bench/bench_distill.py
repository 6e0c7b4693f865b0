"""Seconds per kimg of a distillation step: teacher forward, student forward and backward, LPIPS,
the latent-direction loss, D, path length and R1 -- the paper's recipe (``--distill stylekd``,
``--init svs``) in the one training loop.

    python bench/bench_distill.py                        # CPU, 1 thread: 32 px, cbase 2048, cmax 128
    python bench/bench_distill.py --threads 2 --kimg 0.08
    python bench/bench_distill.py --device cuda --preset small256   # the paper's 256 px small (paper256)

The teacher is randomly initialised (the speed does not depend on its weights) and pruned at 70 %
(l1 scorer, the same widths DCP gives); LPIPS uses random stand-in weight files in the official
formats. The number is the mean of the loop's Timing/sec_per_kimg over the ticks after tick 0
(one warm-up step). Snapshots, grids and metrics are off.
"""
import json
import os
import sys
import tempfile
import time

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESETS = {
    'tiny32':   dict(res=32, cfg='stylegan2', cbase=2048, cmax=128, map=2, batch=8, batch_gpu=4),
    'small256': dict(res=256, cfg='paper256', cbase=None, cmax=None, map=None, batch=64, batch_gpu=8),
}


def _standin_lpips(folder):
    """Random VGG16 / LPIPS-head state_dicts in torchvision's and LPIPS v0.1's formats."""
    import torch
    gen = torch.Generator().manual_seed(0)
    vgg, idx, in_ch = {}, 0, 3
    for stage in [(64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)]:
        for out_ch in stage:
            vgg[f'features.{idx}.weight'] = torch.randn([out_ch, in_ch, 3, 3], generator=gen) * (2 / (in_ch * 9)) ** 0.5
            vgg[f'features.{idx}.bias'] = torch.zeros([out_ch])
            idx, in_ch = idx + 2, out_ch
        idx += 1
    lin = {f'lin{k}.model.1.weight': torch.rand([1, c, 1, 1], generator=gen) * 0.1 for k, c in enumerate([64, 128, 256, 512, 512])}
    paths = os.path.join(folder, 'vgg16.pth'), os.path.join(folder, 'vgg.pth')
    torch.save(vgg, paths[0])
    torch.save(lin, paths[1])
    return paths


@click.command()
@click.option('--threads', help='torch CPU threads', type=int, default=1, show_default=True)
@click.option('--kimg', help='images to train, in kimg (after the warm-up step)', type=float, default=0.04, show_default=True)
@click.option('--tick', help='tick length in kimg', type=float, default=0.008, show_default=True)
@click.option('--device', type=click.Choice(['cpu', 'cuda']), default='cpu', show_default=True)
@click.option('--preset', type=click.Choice(sorted(PRESETS)), default='tiny32', show_default=True)
@click.option('--ratio', type=float, default=0.7, show_default=True, help='pruning ratio of the student')
def main(threads, kimg, tick, device, preset, ratio):
    """Time a distillation run (seconds per kimg)."""
    os.environ.setdefault('OMP_NUM_THREADS', str(threads))
    import torch
    torch.set_num_threads(threads)
    import dnnlib
    import prune
    import train
    from training import presets, training_loop
    from training.checkpoints import save_snapshot
    from training.sample_data import make_sample_dataset

    p = dnnlib.EasyDict(PRESETS[preset])
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'data.zip')
        make_sample_dataset(data, num_images=64, resolution=p.res, seed=0)
        G_kwargs, D_kwargs = presets.network_kwargs(p.cfg, p.res, channel_base=p.cbase, channel_max=p.cmax, map_depth=p.map)
        torch.manual_seed(0)
        teacher = dnnlib.util.construct_class_by_name(**G_kwargs).eval().requires_grad_(False)
        D = dnnlib.util.construct_class_by_name(**D_kwargs).eval().requires_grad_(False)
        teacher_pkl = os.path.join(tmp, 'teacher.pkl')
        save_snapshot(teacher_pkl, dict(G=teacher, G_ema=teacher, D=D))
        prune.prune(teacher_pkl, os.path.join(tmp, 'pruned'), method='l1', ratio=ratio, device='cpu', progress=False)
        vgg, lin = _standin_lpips(tmp)

        c, desc = train.build_training_kwargs(data=data, cfg=p.cfg, batch=p.batch, batch_gpu=p.batch_gpu,
                                              kimg=kimg + p.batch / 1000, tick=tick, snap=1, metrics=[], aug='noaug',
                                              workers=0, device=device)
        opts = dnnlib.EasyDict(teacher=teacher_pkl, student=os.path.join(tmp, 'pruned', 'student.pkl'), init='svs',
                               distill='stylekd', lpips_vgg=vgg, lpips_lin=lin, mask='uniform')
        desc = train.add_distillation(c, opts, desc)
        c.pop('device')
        c.image_snapshot_ticks = c.network_snapshot_ticks = None
        run_dir = os.path.join(tmp, 'run')
        print(f'device {device}, torch threads {torch.get_num_threads()}, preset {preset} ({p.cfg}, {p.res} px), '
              f'student at ratio {ratio}, batch {c.batch_size} (micro-batch {c.batch_gpu}), stylekd (L1 + LPIPS + LD), '
              f'{kimg:g} kimg after warm-up', flush=True)
        start = time.time()
        out = training_loop.training_loop(run_dir=run_dir, rank=0, device=torch.device(device), **c)
        wall = time.time() - start
        with open(os.path.join(run_dir, 'stats.jsonl')) as f:
            lines = [json.loads(line) for line in f]
    per_tick = [line['Timing/sec_per_kimg']['mean'] for line in lines[1:]]
    phases = {k[len('Timing/'):]: round(v['mean'], 3) for k, v in lines[-1].items()
              if k.startswith('Timing/') and k[len('Timing/'):] in ('Gmain', 'Greg', 'Dmain', 'Dreg')}
    sec_per_kimg = sum(per_tick) / len(per_tick)
    params = lambda m: sum(t.numel() for t in m.parameters()) / 1e6
    print(f'teacher {params(teacher):.2f}M, student {params(out.G):.2f}M, D {params(out.D):.2f}M params; '
          f'phase means (s, last tick{"" if device == "cpu" else ", CPU only"}): {phases}')
    print(f'sec/kimg per tick: {", ".join(f"{v:.1f}" for v in per_tick)}')
    print(f'RESULT: {sec_per_kimg:.1f} s/kimg  ({preset}, {threads} thread{"s" if threads != 1 else ""}, {device})  wall {wall:.0f}s')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
