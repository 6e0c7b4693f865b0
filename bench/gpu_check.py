"""One-command GPU acceptance check: fused ops against the reference, then timed training steps.

    python bench/gpu_check.py                          # one GPU, about 5-8 minutes
    python bench/gpu_check.py --nvidia-repo ~/stylegan3 # + NVIDIA's train.py on the same configs
    python bench/gpu_check.py --device cpu --tiny       # CI: tiny sizes, fused ops via the Triton interpreter

Parts (``--parts``, comma-separated):
  ops      every fused op (bias_act, upfirdn2d, filtered_lrelu) against ``impl='ref'``: forward,
           gradient, gradient of gradient in fp32, fp16 against fp32, gradcheck/gradgradcheck in fp64,
           the up/down factors 1/2/4 and StyleGAN's paddings; and the bytes filtered_lrelu keeps for backward.
  net      small StyleGAN2 and StyleGAN3-T G and D, fused vs PyTorch path: the image and all parameter
           gradients of a loss with path-length and R1 terms (second order through the whole network).
  train    (a) ``paper256`` teacher training at 256 px,
  distill  (b) the table-1 FFHQ small DCP+SVS distillation step (L1 + LPIPS + LD; random stand-in
           teacher and LPIPS weights; uniform mask instead of the face parser),
  sg3      (c) StyleGAN3-T at 256 px,
           each with the fused ops and with the PyTorch path (``fused.set_enabled(False)``): s/kimg,
           images/s and peak GPU memory, from the training loop's own tick timings (tick 0, one
           warm-up step with the kernels' compilation, is left out);
  dcp      (d) DCP scoring rate (samples/s) on the 256 px "base" teacher, projected to 5000 samples
           (target: under 10 minutes on one GPU).
With ``--nvidia-repo PATH`` (a checkout of NVlabs/stylegan3 or stylegan2-ada-pytorch, never part of
this repository) NVIDIA's own ``train.py`` is timed on the same configs and batch, in a subprocess,
with small torch-2.x shims kept here; targets: our fused s/kimg and peak memory <= NVIDIA's.

On CPU the training parts run the PyTorch path only (the interpreter is for correctness, not
speed) and all sizes are tiny. Exit status: 1 when any correctness check fails.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

PARTS = ('ops', 'net', 'train', 'distill', 'sg3', 'dcp')

# Per size: (resolution, channel_base, channel_max, mapping depth, batch, steps per tick, ticks).
SIZES = {
    'gpu':  dict(res=256, cbase=None, cmax=None, map=None, batch=8, steps=6, ticks=2),
    'tiny': dict(res=32, cbase=1024, cmax=32, map=2, batch=4, steps=1, ticks=1),
}


class Table:
    """Rows of (part, check, status, numbers), printed as they come and again at the end."""

    def __init__(self):
        self.rows = []

    def add(self, part, check, status, numbers=''):
        self.rows.append((part, check, status, numbers))
        print(f'  [{status}] {part} {check}  {numbers}', flush=True)

    def print(self):
        w = [max(len(str(r[i])) for r in self.rows + [('part', 'check', 'status', '')]) for i in range(3)]
        print('\n' + 'part'.ljust(w[0]) + '  ' + 'check'.ljust(w[1]) + '  ' + 'status'.ljust(w[2]) + '  numbers')
        print('-' * (sum(w) + 6 + 40))
        for part, check, status, numbers in self.rows:
            print(f'{part.ljust(w[0])}  {check.ljust(w[1])}  {status.ljust(w[2])}  {numbers}')

    def failed(self):
        return [r for r in self.rows if r[2] == 'FAIL']

# ----------------------------------------------------------------------------------------------
# Ops.


def check_ops(table, device, tiny):
    from torch_utils.ops import fused, fused_checks
    if not fused.triton_available():
        table.add('ops', 'triton import', 'FAIL', 'triton is not installed (pip install -r requirements-test.txt)')
        return
    start = time.time()
    rows = fused_checks.run_all(device, tiny=tiny)
    for r in rows:
        numbers = r['note'] if r['error'] is None else f'{r["error"]:.3g} (tol {r["tol"]:.3g}); {r["note"]}'
        table.add('ops', r['name'], 'PASS' if r['passed'] else 'FAIL', numbers)
    n_pass = sum(r['passed'] for r in rows)
    table.add('ops', 'all', 'PASS' if n_pass == len(rows) else 'FAIL',
              f'{n_pass}/{len(rows)} checks passed in {time.time() - start:.0f} s')

def check_networks(table, device, tiny):
    """Whole networks, fused vs PyTorch path: image, and every parameter's gradient of a loss holding
    path-length (G) and R1 (D) terms, i.e. second-order gradients through every fused op."""
    import torch
    import dnnlib
    from torch_utils.ops import fused
    from training import presets
    res, cbase, cmax = (16, 512, 16) if tiny else (64, 16384, 256)
    # StyleGAN3's big filters at 4x upsampling take minutes in the interpreter: its ops are checked
    # one by one there, the whole network on a GPU.
    for cfg in ('paper256',) if device.type == 'cpu' else ('paper256', 'stylegan3-t'):
        G_kwargs, D_kwargs = presets.network_kwargs(cfg, res, channel_base=cbase, channel_max=cmax, map_depth=2,
                                                    fp32=True, batch=2)
        torch.manual_seed(0)
        G = dnnlib.util.construct_class_by_name(**G_kwargs).to(device)
        D = dnnlib.util.construct_class_by_name(**D_kwargs).to(device)
        gen = torch.Generator().manual_seed(1)
        z = torch.randn([2, G.z_dim], generator=gen).to(device)
        pl_dir = torch.randn([2, 3, res, res], generator=gen).to(device)
        params = [p for p in list(G.parameters()) + list(D.parameters()) if p.requires_grad]
        outputs = {}
        start = time.time()
        fused_mode = 'always' if device.type == 'cpu' else True  # 'always': CPU tensors too (interpreter)
        for mode in (fused_mode, False):
            previous = fused.set_enabled(mode)
            try:
                ws = G.mapping(z, None).detach().requires_grad_(True)
                img = G.synthesis(ws, noise_mode='const')
                pl = torch.autograd.grad((img * pl_dir).sum(), ws, create_graph=True)[0].square().sum()
                real = img.detach().requires_grad_(True)
                logits = D(real, None)
                r1 = torch.autograd.grad(logits.sum(), real, create_graph=True)[0].square().sum()
                loss = img.square().mean() + pl + r1 + torch.nn.functional.softplus(logits).sum()
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                outputs[mode] = [img.detach()] + [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
            finally:
                fused.set_enabled(previous)
        a, b = torch.cat([t.flatten() for t in outputs[fused_mode]]), torch.cat([t.flatten() for t in outputs[False]])
        err = ((a - b).norm() / b.norm()).item()
        table.add('net', f'{cfg} {res} px: image + all grads of PL and R1 losses', 'PASS' if err <= 1e-3 else 'FAIL',
                  f'||fused - ref|| / ||ref|| = {err:.2e} (tol 1e-3), {len(params)} parameters, {time.time() - start:.0f} s')

# ----------------------------------------------------------------------------------------------
# Training steps.


def _peak_reset(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device):
    import torch
    if device.type != 'cuda':
        return None
    return torch.cuda.max_memory_allocated(device) / 2 ** 30


def _run_loop(c, device, tmp, label):
    """Run the training loop on kwargs ``c``; returns (s/kimg over ticks >= 1, peak GPU GB)."""
    from training import training_loop
    c = dict(c)
    c.pop('device', None)
    c['image_snapshot_ticks'] = c['network_snapshot_ticks'] = None
    run_dir = os.path.join(tmp, f'run-{label}')
    _peak_reset(device)
    training_loop.training_loop(run_dir=run_dir, rank=0, device=device, **c)
    peak = _peak_gb(device)
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        lines = [json.loads(line) for line in f]
    per_tick = [line['Timing/sec_per_kimg']['mean'] for line in lines[1:]]
    if not per_tick:
        raise RuntimeError('the training loop reported no timed tick')
    return sum(per_tick) / len(per_tick), peak


def _time_both(table, part, label, make_kwargs, device, tmp, results):
    """Time the loop with the fused ops and with the PyTorch path (fused ones only on a GPU)."""
    from torch_utils.ops import fused
    modes = ['fused', 'ref'] if device.type == 'cuda' and fused.triton_available() else ['ref']
    for mode in modes:
        previous = fused.set_enabled(mode == 'fused')
        try:
            c, batch = make_kwargs()
            sec_per_kimg, peak = _run_loop(c, device, tmp, f'{part}-{mode}')
            numbers = (f'{sec_per_kimg:.2f} s/kimg, {1000 / sec_per_kimg:.1f} img/s, batch {batch}, peak '
                       + ('n/a (CPU)' if peak is None else f'{peak:.2f} GB'))
            results[(part, mode)] = dict(sec_per_kimg=sec_per_kimg, peak_gb=peak)
            table.add(part, f'{label} [{mode}]', 'PASS', numbers)
        except Exception as e:
            table.add(part, f'{label} [{mode}]', 'FAIL', f'{type(e).__name__}: {e}')
        finally:
            fused.set_enabled(previous)
    if ('%s' % part, 'fused') in results and (part, 'ref') in results:
        f, r = results[(part, 'fused')], results[(part, 'ref')]
        table.add(part, f'{label} fused vs ref', 'INFO',
                  f'speed-up {r["sec_per_kimg"] / f["sec_per_kimg"]:.2f}x, peak memory {f["peak_gb"]:.2f} / '
                  f'{r["peak_gb"]:.2f} GB')


def _dataset(tmp, res, n=64):
    from training.sample_data import make_sample_dataset
    path = os.path.join(tmp, f'data{res}.zip')
    if not os.path.exists(path):
        make_sample_dataset(path, num_images=n, resolution=res, seed=0)
    return path


def _loop_kwargs(data, cfg, size, device, gamma=None):
    import train
    kimg_tick = size['batch'] * size['steps'] / 1000
    c, _desc = train.build_training_kwargs(
        data=data, cfg=cfg, batch=size['batch'], batch_gpu=size['batch'], gamma=gamma,
        kimg=size['batch'] / 1000 + kimg_tick * size['ticks'], tick=kimg_tick, snap=1, metrics=[], aug='noaug',
        workers=0, device=device.type, cbase=size['cbase'], cmax=size['cmax'], map_depth=size['map'])
    return c


def check_train(table, device, size, tmp, results):
    data = _dataset(tmp, size['res'])
    _time_both(table, 'train', f'(a) paper256 {size["res"]} px', lambda: (_loop_kwargs(data, 'paper256', size, device),
                                                                           size['batch']), device, tmp, results)


def check_sg3(table, device, size, tmp, results):
    data = _dataset(tmp, size['res'])
    _time_both(table, 'sg3', f'(c) stylegan3-t {size["res"]} px',
               lambda: (_loop_kwargs(data, 'stylegan3-t', size, device, gamma=2), size['batch']), device, tmp, results)


def check_distill(table, device, size, tmp, results):
    import torch
    import dnnlib
    import prune
    import train
    from bench_distill import _standin_lpips
    from training import presets
    from training.checkpoints import save_snapshot
    data = _dataset(tmp, size['res'])
    G_kwargs, D_kwargs = presets.network_kwargs('paper256', size['res'], channel_base=size['cbase'],
                                                channel_max=size['cmax'], map_depth=size['map'])
    torch.manual_seed(0)
    teacher = dnnlib.util.construct_class_by_name(**G_kwargs).eval().requires_grad_(False)
    D = dnnlib.util.construct_class_by_name(**D_kwargs).eval().requires_grad_(False)
    teacher_pkl = os.path.join(tmp, 'teacher.pkl')
    save_snapshot(teacher_pkl, dict(G=teacher, G_ema=teacher, D=D))
    start = time.time()
    # DCP widths at ratio 0.7 (few samples: only the widths matter for the speed), then SVS at init.
    prune.prune(teacher_pkl, os.path.join(tmp, 'pruned'), method='dcp', ratio=0.7, n_samples=5, batch=5,
                n_directions=2, pca_samples=64, device=device.type, progress=False)
    table.add('distill', 'DCP pruning of the stand-in teacher', 'PASS', f'{time.time() - start:.1f} s')
    vgg, lin = _standin_lpips(tmp)

    def make():
        c = _loop_kwargs(data, 'paper256', size, device)
        opts = dnnlib.EasyDict(teacher=teacher_pkl, student=os.path.join(tmp, 'pruned', 'student.pkl'), init='svs',
                               svs_fn='sqrt', distill='stylekd', l1_weight=3, lpips_weight=3, ld_weight=30,
                               ld_offset=5, lpips_vgg=vgg, lpips_lin=lin, mask='uniform', cbase=size['cbase'],
                               cmax=size['cmax'])
        train.add_distillation(c, opts, 'gpu-check')
        return c, size['batch']
    _time_both(table, 'distill', f'(b) table-1 ffhq small DCP+SVS {size["res"]} px', make, device, tmp, results)


def check_dcp(table, device, tiny):
    import torch
    import dnnlib
    from pruning import dcp
    from training import presets
    res, cmax, n = (32, 32, 5) if tiny else (256, None, 100)
    G_kwargs, _ = presets.network_kwargs('stylegan2', res, channel_max=cmax, fp32=True)
    G = dnnlib.util.construct_class_by_name(**G_kwargs).eval().requires_grad_(False)
    dcp.score(G, n_samples=5, batch=5, n_directions=2, pca_samples=64, device=device, progress=False)  # warm-up
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    dcp.score(G, n_samples=n, batch=5, n_directions=10, device=device, progress=False)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    rate = n / (time.perf_counter() - start)
    projected = 5000 / rate
    status = 'PASS' if projected < 600 else ('MISS' if device.type == 'cuda' else 'INFO')
    table.add('dcp', f'(d) DCP scoring, {"base" if not tiny else "tiny"} teacher {res} px', status,
              f'{rate:.2f} samples/s, 5000 samples in {dnnlib.util.format_time(projected)} (target < 10 min on a GPU)')

# ----------------------------------------------------------------------------------------------
# NVIDIA's train.py, for the comparison.

# Run inside the subprocess: torch-2.x shims for NVIDIA's code, then its click CLI.
_NVIDIA_SHIM = r'''
import sys
repo = sys.argv[1]
sys.path.insert(0, repo)
sys.argv = [repo + '/train.py'] + sys.argv[2:]
# torch 2.x: the gradfix custom ops check versions and private ops that no longer exist; the stock
# conv2d / grid_sample have double backward since torch 1.8.
import torch_utils.ops.conv2d_gradfix as _c
_c._should_use_custom_op = lambda *a, **k: False
try:
    import torch_utils.ops.grid_sample_gradfix as _g
    _g._should_use_custom_op = lambda *a, **k: False
except ImportError:
    pass
import numpy as _np
for _name, _alias in (('float', float), ('int', int), ('bool', bool)):
    if not hasattr(_np, _name):
        setattr(_np, _name, _alias)
import train
train.main()
'''


def _nvidia_runs(repo, size):
    """(part, label, argument list) for the configs the NVIDIA checkout supports. NVIDIA's --kimg and
    --tick are whole kimg: tick 0 is its first step, the ticks after it are timed."""
    with open(os.path.join(repo, 'train.py')) as f:
        source = f.read()
    common = ['--gpus=1', f'--batch={size["batch"]}', '--snap=1000', '--metrics=none', '--aug=noaug']
    runs = []
    if 'stylegan3-t' in source:  # NVlabs/stylegan3
        common += ['--tick=1', '--kimg=2']
        runs.append(('train', '(a) stylegan2 (paper256 widths)', common + ['--cfg=stylegan2', '--gamma=1',
                                                                           '--cbase=16384']))
        runs.append(('sg3', '(c) stylegan3-t', common + ['--cfg=stylegan3-t', '--gamma=2']))
    else:  # stylegan2-ada-pytorch: no --tick option; 4 kimg per tick
        runs.append(('train', '(a) paper256', common + ['--cfg=paper256', '--kimg=8']))
    return runs


def check_nvidia(table, repo, device, size, tmp, results):
    if device.type != 'cuda':
        table.add('nvidia', 'NVIDIA train.py', 'SKIP', 'needs a GPU')
        return
    data = _dataset(tmp, size['res'])
    for part, label, args in _nvidia_runs(repo, size):
        outdir = os.path.join(tmp, f'nvidia-{part}')
        cmd = [sys.executable, '-c', _NVIDIA_SHIM, repo, f'--outdir={outdir}', f'--data={data}'] + args
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo)
            log = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            log = (e.stdout or b'').decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
        ticks = [(float(a), float(b)) for a, b in re.findall(r'sec/kimg\s+([\d.]+).*?gpumem\s+([\d.]+)', log)]
        if len(ticks) < 2:
            tail = log.strip().splitlines()[-1] if log.strip() else 'no output'
            table.add('nvidia', label, 'FAIL', f'no timed tick in NVIDIA\'s log: {tail[:200]}')
            continue
        sec = sum(t[0] for t in ticks[1:]) / len(ticks[1:])
        mem = max(t[1] for t in ticks)
        fallback = 'Falling back' in log or 'slow reference' in log
        table.add('nvidia', label, 'INFO', f'{sec:.2f} s/kimg, {1000 / sec:.1f} img/s, peak {mem:.2f} GB'
                  + (' (NVIDIA fell back to its reference ops)' if fallback else ''))
        ours = results.get((part, 'fused'))
        if ours is not None:
            ok = ours['sec_per_kimg'] <= sec and ours['peak_gb'] <= mem
            table.add('nvidia', f'{label}: ours (fused) <= NVIDIA', 'PASS' if ok else 'MISS',
                      f'{ours["sec_per_kimg"]:.2f} vs {sec:.2f} s/kimg, {ours["peak_gb"]:.2f} vs {mem:.2f} GB')

# ----------------------------------------------------------------------------------------------


@click.command()
@click.option('--device', type=click.Choice(['cuda', 'cpu']), default=None, help='default: cuda when available')
@click.option('--tiny', is_flag=True, help='tiny sizes (CI); implied on CPU')
@click.option('--parts', default=','.join(PARTS), show_default=True, help='comma-separated subset of ' + ', '.join(PARTS))
@click.option('--nvidia-repo', type=click.Path(exists=True, file_okay=False), default=None,
              help="a checkout of NVIDIA's stylegan3 or stylegan2-ada-pytorch to time its train.py")
@click.option('--batch', type=int, default=None, help='batch for the training parts [GPU 8, tiny 4]')
@click.option('--json-out', type=click.Path(dir_okay=False), default=None, help='also write the table as JSON')
@click.option('--budget', type=float, default=8, show_default=True,
              help='minutes; parts not yet started when it is spent are skipped (SKIP rows)')
def main(device, tiny, parts, nvidia_repo, batch, json_out, budget):
    """Fused ops against the reference, and training / DCP timings, in one pass/fail table."""
    parts = [p.strip() for p in parts.split(',') if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise click.UsageError(f'--parts: unknown {", ".join(unknown)} (choose from {", ".join(PARTS)})')
    if not budget > 0:
        raise click.UsageError(f'--budget: must be a positive number of minutes, got {budget}')
    if batch is not None and batch < 1:
        raise click.UsageError(f'--batch: must be at least 1, got {batch}')
    if nvidia_repo is not None and not os.path.isfile(os.path.join(nvidia_repo, 'train.py')):
        raise click.UsageError(f'--nvidia-repo: no train.py in {nvidia_repo}')
    if device == 'cpu' or (device is None and not _cuda_available()):
        device, tiny = 'cpu', True
        # Fused kernels on CPU tensors run in Triton's interpreter, decided when triton is first imported.
        os.environ['TRITON_INTERPRET'] = '1'
    import torch
    if device is None:
        device = 'cuda'
    device = torch.device(device)
    size = dict(SIZES['tiny' if tiny else 'gpu'])
    if batch is not None:
        size['batch'] = batch

    print(f'gpu_check: torch {torch.__version__}, '
          + (f'{torch.cuda.get_device_name(device)}' if device.type == 'cuda' else 'CPU (Triton interpreter for the ops)')
          + f', triton {_triton_version()}, sizes {"tiny" if tiny else "full"}', flush=True)
    table = Table()
    results = {}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        steps = dict(ops=lambda: check_ops(table, device.type, tiny),
                     net=lambda: check_networks(table, device, tiny),
                     train=lambda: check_train(table, device, size, tmp, results),
                     distill=lambda: check_distill(table, device, size, tmp, results),
                     sg3=lambda: check_sg3(table, device, size, tmp, results),
                     dcp=lambda: check_dcp(table, device, tiny))
        for part in PARTS:
            if part not in parts:
                continue
            if time.time() - start > budget * 60:
                table.add(part, 'all', 'SKIP', f'time budget of {budget:g} min spent')
                continue
            print(f'== {part}', flush=True)
            try:
                steps[part]()
            except Exception as e:  # one broken part is a FAIL row; the others still run
                table.add(part, 'setup', 'FAIL', f'{type(e).__name__}: {e}')
        if nvidia_repo is not None:  # outside the budget: it is asked for explicitly
            print('== nvidia', flush=True)
            check_nvidia(table, os.path.abspath(nvidia_repo), device, size, tmp, results)
    table.print()
    failed = table.failed()
    print(f'\n{"FAILED" if failed else "PASSED"}: {len(failed)} failing rows; {time.time() - start:.0f} s in all')
    if json_out:
        import dnnlib
        with dnnlib.util.atomic_open(json_out, 'w') as f:
            json.dump([dict(zip(('part', 'check', 'status', 'numbers'), r)) for r in table.rows], f, indent=1)
    sys.exit(1 if failed else 0)


def _cuda_available():
    # Without importing torch at module level (TRITON_INTERPRET must be decided first).
    import torch
    return torch.cuda.is_available()


def _triton_version():
    try:
        import triton
        return triton.__version__
    except Exception:
        return 'not installed'


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
