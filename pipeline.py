"""Compress a StyleGAN end to end: prune -> fine-tune twice (with and without SVS) -> evaluate -> report.

With no arguments it runs on the built-in default (a 32 px sample dataset the project draws itself
and the small teacher shipped in assets/), on a CPU in a few minutes:

\b
    python pipeline.py                     # or: make demo
    open runs/pipeline/report.html

The same stages run on real inputs, e.g. an official FFHQ teacher on a GPU node:

\b
    python pipeline.py --teacher https://.../stylegan2-ffhq-256x256.pkl --data ffhq256.zip \\
        --config configs/<row>.yaml --n-samples 5000 --outdir runs/ffhq256-dcp70

Stages (each in its own folder of --outdir, finished when its done.json is written):

\b
    data             the dataset (built-in: drawn into data/), checked against the teacher
    prune            prune.py on the teacher's G_ema (DCP by default), and the SVS-scaled copy
    finetune-pruned  train.py distillation from the pruned weights (--init pruned)
    finetune-svs     the same pruned weights, same seed, with SVS first (--init svs)
    evaluate         params, FLOPs, CPU latency; PSNR/SSIM against the teacher on the same latents;
                     FID/KID/P&R/D&C when the detector files can be had; the comparison grid
    report           report.html (and report.md) with the PNGs in report/

Running the same command again resumes: finished stages are skipped, a half-finished fine-tuning
continues from its last snapshot (train.py --resume latest). A failed stage prints one line naming
it and the command to resume, and leaves the finished stages as they are.
"""
import copy
import json
import os
import re
import shlex
import subprocess
import sys
import time

import click
import numpy as np
import torch

import dnnlib
import dnnlib.cli

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TEACHER = os.path.join(ROOT, 'assets', 'teacher-sample32.pkl')
SAMPLE_DATASET = dict(num_images=2000, resolution=32, seed=0)   # what the shipped teacher was trained on
DEFAULT_KIMG = 10            # per fine-tuning on the built-in default (measured: see README)
DEFAULT_BATCH = 16
DEFAULT_N_SAMPLES = 200      # DCP latents on the default; the paper uses 5000 (--n-samples 5000)
DEFAULT_METRICS = ('fid10k_full', 'prdc10k_full')   # real inputs
DEMO_METRICS = ('fid1k_full',)                       # the built-in default: 2000 real images, CPU
DEFAULT_EVAL_SAMPLES = 64    # latents for the PSNR/SSIM agreement
GRID_SEEDS = tuple(range(8))
LATENCY_BATCH = 4
LATENCY_REPEATS = 7
STAGES = ('data', 'prune', 'finetune-pruned', 'finetune-svs', 'evaluate', 'report')
NETWORK_LABELS = dict(teacher='teacher', pruned='pruned (before fine-tuning)',
                      pruned_svs='pruned + SVS (before fine-tuning)', finetuned='pruned, fine-tuned',
                      finetuned_svs='pruned + SVS, fine-tuned')

_SNAPSHOT_RE = re.compile(r'^network-snapshot-(\d{6,})(?:\.(\d{3}))?\.pkl$')

# ---------------------------------------------------------------------------------------------
# Small helpers.


def write_json(path, obj):
    dnnlib.util.atomic_write_bytes(path, (json.dumps(obj, indent=2) + '\n').encode('utf-8'))


def read_json(path):
    with open(path, 'rt') as f:
        return json.load(f)


def banner(index, name, text):
    print(f'\n=== [{index}/{len(STAGES)}] {name}: {text} ===', flush=True)


def is_url(path):
    return dnnlib.util.is_url(str(path), allow_file_urls=True)


def snapshot_nimg(snapshot_pkl):
    m = _SNAPSHOT_RE.match(os.path.basename(snapshot_pkl))
    return int(m.group(1)) * 1000 + (int(m.group(2)) if m.group(2) else 0)


def load_G(source):
    from training.checkpoints import load_network
    G = load_network(source, device='cpu', verbose=is_url(source)).G_ema
    if G is None:
        raise dnnlib.util.UserError(f'{source}: holds no generator')
    return G


# ---------------------------------------------------------------------------------------------
# Measurements.


@torch.no_grad()
def measure_latency(G, batch=LATENCY_BATCH, repeats=LATENCY_REPEATS, warmup=2):
    """Median seconds of one forward pass (mapping + synthesis, constant noise) on the CPU."""
    G = copy.deepcopy(G).cpu().eval().requires_grad_(False)
    z = torch.randn([batch, G.z_dim], generator=torch.Generator().manual_seed(0))
    c = torch.zeros([batch, G.c_dim])
    if G.c_dim:
        c[:, 0] = 1
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        G(z, c, noise_mode='const', force_fp32=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return dict(median_sec=float(np.median(times)), times_sec=[float(t) for t in times], batch=batch,
                repeats=repeats, threads=torch.get_num_threads())


def metric_detectors(metrics):
    from metrics import metric_main
    names = set()
    for m in metrics:
        if not metric_main.is_valid_metric(m):
            raise dnnlib.util.UserError(f'--metrics: unknown metric {m!r}; valid: {", ".join(metric_main.list_valid_metrics())}')
        names.add('vgg16' if m.startswith('pr') and not m.startswith('prdc') else 'inception')
    return sorted(names)


def detectors_unavailable(metrics, detector_dir, allow_download=True):
    """None when every detector file the metrics need can be had, else the reason (one line).
    Without ``allow_download`` only --detector-dir and the download cache are looked at."""
    from metrics import detectors
    for name in metric_detectors(metrics):
        if detector_dir is None and not allow_download:
            url = detectors.detector_url(name)
            cached = os.path.join(dnnlib.util.make_cache_dir_path('downloads'), dnnlib.util.url_cache_name(url))
            if not os.path.isfile(cached):
                return (f'the {name} detector file {detectors.detector_file_name(url)} is not on this machine (no '
                        f'--detector-dir, not in the download cache) and the built-in demo does not download it; '
                        f'give --detector-dir DIR holding it (from {url})')
            continue
        try:
            detectors.resolve_detector_file(name, detector_dir=detector_dir)
        except dnnlib.util.UserError as e:
            return str(e)
    return None


def labelled_grid(rows, labels, cell=None):
    """One PNG-ready uint8 image: each row of images (N, H, W, C) preceded by its label."""
    import PIL.Image
    import PIL.ImageDraw
    import PIL.ImageFont
    size = max(r.shape[1] for r in rows)
    cell = cell or (64 if size < 64 else min(size, 256))
    tiles = []
    for r in rows:
        row = [PIL.Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).convert('RGB')
               .resize((cell, cell), PIL.Image.NEAREST if cell >= img.shape[0] else PIL.Image.LANCZOS) for img in r]
        tiles.append(row)
    font_size = max(12, min(20, cell // 4))
    try:
        font = PIL.ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1
        font = PIL.ImageFont.load_default()
    measure = PIL.ImageDraw.Draw(PIL.Image.new('RGB', (1, 1)))
    label_w = 12 + max(measure.textbbox((0, 0), text, font=font)[2] for text in labels)
    gap = 2
    cols = max(len(r) for r in tiles)
    canvas = PIL.Image.new('RGB', (label_w + cols * (cell + gap), len(tiles) * (cell + gap)), 'white')
    draw = PIL.ImageDraw.Draw(canvas)
    for i, (row, text) in enumerate(zip(tiles, labels)):
        y = i * (cell + gap)
        box = draw.textbbox((0, 0), text, font=font)
        draw.text((6, y + (cell - (box[3] - box[1])) // 2 - box[1]), text, fill='black', font=font)
        for j, tile in enumerate(row):
            canvas.paste(tile, (label_w + j * (cell + gap), y))
    return np.asarray(canvas)


def save_png(array, path):
    import io
    import PIL.Image
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format='png')
    dnnlib.util.atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# The pipeline.


class Pipeline:
    """Runs the stages in ``opts.outdir``; every stage's result is its ``done.json``."""

    def __init__(self, opts, resume_command):
        self.opts = opts
        self.outdir = os.path.abspath(opts.outdir)
        self.resume_command = resume_command
        self.results = dnnlib.EasyDict()

    def path(self, *parts):
        return os.path.join(self.outdir, *parts)

    def rel(self, path):
        return os.path.relpath(path, self.outdir)

    # Stage bookkeeping.

    def stage_inputs(self, name):
        o = self.opts
        teacher = o.teacher if is_url(o.teacher) else os.path.abspath(o.teacher)
        data = None if o.data is None else os.path.abspath(o.data)
        common = dict(teacher=teacher, data=data)
        if name == 'data':
            return dict(common, sample=None if o.data else SAMPLE_DATASET)
        if name == 'prune':
            return dict(common, method=o.method, ratio=o.ratio, svs=o.svs, n_samples=o.n_samples, seed=o.seed)
        if name.startswith('finetune'):
            return dict(self.stage_inputs('prune'), kimg=o.kimg, batch=o.batch, config=o.config,
                        lpips_vgg=o.lpips_vgg, lpips_lin=o.lpips_lin)
        if name == 'evaluate':
            return dict(self.stage_inputs('finetune-pruned'), metrics=list(o.metrics), eval_samples=o.eval_samples,
                        detector_dir=o.detector_dir)
        return dict(self.stage_inputs('evaluate'))

    def run(self):
        os.makedirs(self.outdir, exist_ok=True)
        write_json(self.path('pipeline.json'), dict(options=dict(self.opts), command=self.resume_command))
        start = time.time()
        for index, name in enumerate(STAGES, 1):
            marker = self.path(name, 'done.json')
            inputs = self.stage_inputs(name)
            if os.path.isfile(marker):
                done = read_json(marker)
                if done.get('inputs') != inputs:
                    changed = sorted(k for k in set(inputs) | set(done.get('inputs', {}))
                                     if inputs.get(k) != done.get('inputs', {}).get(k))
                    raise dnnlib.util.UserError(
                        f'{self.outdir}: stage {name} was finished with other settings ({", ".join(changed)}); '
                        f'give another --outdir, or delete {self.path(name)} and the stages after it')
                self.results[name] = dnnlib.EasyDict(done['outputs'])
                banner(index, name, f'finished earlier ({done["seconds"]:.0f} s), skipped')
                continue
            os.makedirs(self.path(name), exist_ok=True)
            t0 = time.time()
            try:
                outputs = getattr(self, 'stage_' + name.replace('-', '_'))(index, name)
            except KeyboardInterrupt:
                print(f'\nInterrupted in stage {name}; finished stages are kept in {self.outdir}; resume with: '
                      f'{self.resume_command}', file=sys.stderr, flush=True)
                raise SystemExit(130) from None
            except Exception as e:  # pylint: disable=broad-except
                if not isinstance(e, dnnlib.util.UserError):
                    import traceback
                    traceback.print_exc()
                msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise dnnlib.util.UserError(f'stage {name} failed: {msg} -- finished stages are kept in {self.outdir}; '
                                            f'resume with: {self.resume_command}') from None
            seconds = time.time() - t0
            write_json(marker, dict(stage=name, inputs=inputs, outputs=outputs, seconds=seconds,
                                    finished=time.strftime('%Y-%m-%d %H:%M:%S')))
            self.results[name] = dnnlib.EasyDict(outputs)
            print(f'--- {name} done in {dnnlib.util.format_time(seconds)}', flush=True)
        print(f'\nPipeline finished ({dnnlib.util.format_time(time.time() - start)} this time). '
              f'Report: {self.path("report.html")}', flush=True)
        return self.results

    # Stages.

    def stage_data(self, index, name):
        from train import open_dataset
        o = self.opts
        if o.data is None:
            banner(index, name, 'drawing the built-in sample dataset')
            from training.sample_data import make_sample_dataset
            data = self.path(name, f'sample{SAMPLE_DATASET["resolution"]}.zip')
            make_sample_dataset(data, **SAMPLE_DATASET)
        else:
            banner(index, name, f'checking {o.data}')
            data = os.path.abspath(o.data)
        _kwargs, info = open_dataset(data)
        print(f'teacher: {o.teacher}', flush=True)
        G = load_G(o.teacher)
        if G.img_resolution != info.resolution or G.img_channels != info.num_channels:
            raise dnnlib.util.UserError(f'--data {data}: {info.resolution} px x {info.num_channels} channels, but the teacher '
                                        f'makes {G.img_resolution} px x {G.img_channels} channels')
        print(f'dataset: {data} ({info.name}, {info.resolution} px); teacher: {G.img_resolution} px, '
              f'{"StyleGAN3" if hasattr(G.synthesis, "layer_names") else "StyleGAN2"}', flush=True)
        return dict(data=data, resolution=info.resolution, builtin=o.data is None,
                    num_images=len(dnnlib.util.construct_class_by_name(**_kwargs)))

    def stage_prune(self, index, name):
        import prune
        o = self.opts
        banner(index, name, f'{o.method}, ratio {o.ratio}, {o.n_samples} latents, then SVS ({o.svs}) of a copy')
        stage = self.path(name)
        device = dnnlib.cli.resolve_device(o.device)
        prune.prune(o.teacher, stage, method=o.method, ratio=o.ratio, n_samples=o.n_samples, seed=o.seed,
                    device=device, overwrite=True)
        prune.svs_snapshot(os.path.join(stage, 'student.pkl'), os.path.join(stage, 'svs'), fn=o.svs, overwrite=True)
        return dict(student=self.rel(os.path.join(stage, 'student.pkl')),
                    student_svs=self.rel(os.path.join(stage, 'svs', 'student.pkl')),
                    pruning_json=self.rel(os.path.join(stage, 'pruning.json')),
                    spectra_png=self.rel(os.path.join(stage, 'svs', 'spectra.png')))

    def stage_finetune_pruned(self, index, name):
        return self._finetune(index, name, 'pruned')

    def stage_finetune_svs(self, index, name):
        return self._finetune(index, name, 'svs')

    def _lpips_setting(self):
        """(--lpips-weight value, note): the LPIPS term is on when its two weight files can be had.
        The built-in demo never downloads them (VGG16 is half a gigabyte)."""
        from training import distill
        from training import lpips as lpips_mod
        o = self.opts
        if o.builtin_teacher and not (o.lpips_vgg and o.lpips_lin):
            return '0', ('LPIPS term off (weight 0): the built-in demo does not download the VGG16 and LPIPS weights; '
                         'give --lpips-vgg and --lpips-lin to turn it on')
        ok, reason = distill.lpips_weights_available(o.lpips_vgg or lpips_mod.VGG16_URL, o.lpips_lin or lpips_mod.LPIPS_VGG_URL)
        if ok:
            return '3', 'LPIPS term on (weight 3)'
        return '0', f'LPIPS term off (weight 0): {reason}'

    def train_command(self, stage, init):
        o = self.opts
        cmd = [sys.executable, os.path.join(ROOT, 'train.py'), '--outdir', stage, '--data', self.results.data.data,
               '--teacher', o.teacher if is_url(o.teacher) else os.path.abspath(o.teacher),
               '--student', self.path(self.results.prune.student), '--init', init, '--svs-fn', o.svs,
               '--metrics', 'none', '--device', o.device, '--seed', str(o.seed), '--desc', f'init-{init}']
        notes = []
        if o.config is not None:
            cmd += ['--config', o.config]
            if o.kimg_given:
                cmd += ['--kimg', f'{o.kimg:g}']
        else:
            lpips_weight, note = self._lpips_setting()
            notes.append(note)
            tick = max(o.kimg / 10, o.batch / 1000)
            cmd += ['--distill', 'stylekd', '--l1-weight', '3', '--lpips-weight', lpips_weight, '--ld-weight', '30',
                    '--mask', 'uniform', '--cfg', 'auto', '--batch', str(o.batch), '--kimg', f'{o.kimg:g}',
                    '--tick', f'{tick:g}', '--snap', '1', '--aug', 'noaug', '--mirror', '1', '--grid', '8x8']
            if dnnlib.cli.resolve_device(o.device) == 'cpu':
                cmd += ['--workers', '0']  # tiny images: loader processes would only take cores from training
        if o.lpips_vgg:
            cmd += ['--lpips-vgg', o.lpips_vgg]
        if o.lpips_lin:
            cmd += ['--lpips-lin', o.lpips_lin]
        return cmd, notes

    def _finetune(self, index, name, init):
        from training import training_loop
        stage = self.path(name)
        run_dir = newest_run_with_snapshot(stage)
        if run_dir is not None:
            options = read_json(os.path.join(run_dir, 'training_options.json'))
            snapshot = training_loop.find_latest_snapshot(run_dir)
            if snapshot_nimg(snapshot) >= options['total_kimg'] * 1000:
                banner(index, name, f'training had finished in {self.rel(run_dir)}')
                cmd = None
            else:
                banner(index, name, f'resuming {self.rel(run_dir)} from {os.path.basename(snapshot)}')
                cmd = [sys.executable, os.path.join(ROOT, 'train.py'), '--outdir', run_dir, '--resume', 'latest']
                if self.opts.config is None or self.opts.kimg_given:
                    cmd += ['--kimg', f'{self.opts.kimg:g}']
            notes = read_json(os.path.join(stage, 'notes.json')) if os.path.isfile(os.path.join(stage, 'notes.json')) else []
        else:
            cmd, notes = self.train_command(stage, init)
            write_json(os.path.join(stage, 'notes.json'), notes)
            banner(index, name, f'distillation from the pruned weights, --init {init}' +
                   (f', SVS {self.opts.svs}' if init == 'svs' else ''))
        if cmd is not None:
            print(' '.join(shlex.quote(c) for c in cmd), flush=True)
            returncode, last_error = run_echoing_stderr(cmd)
            if returncode != 0:
                raise dnnlib.util.UserError(f'train.py exited with status {returncode}'
                                            + (f': {last_error}' if last_error else ' (its messages are above)'))
            run_dir = newest_run_with_snapshot(stage)
            if run_dir is None:
                raise dnnlib.util.UserError(f'train.py finished but {stage} holds no snapshot')
        snapshot = training_loop.find_latest_snapshot(run_dir)
        return dict(run_dir=self.rel(run_dir), snapshot=self.rel(snapshot), kimg=snapshot_nimg(snapshot) / 1000,
                    command=None if cmd is None else cmd[1:], notes=notes)

    def stage_evaluate(self, index, name):
        from metrics import agreement
        from pruning import flops
        o = self.opts
        banner(index, name, 'params, FLOPs, CPU latency, teacher-student agreement, metrics, sample grid')
        stage = self.path(name)
        device = dnnlib.cli.resolve_device(o.device)
        sources = dict(teacher=o.teacher, pruned=self.path(self.results.prune.student),
                       pruned_svs=self.path(self.results.prune.student_svs),
                       finetuned=self.path(self.results['finetune-pruned'].snapshot),
                       finetuned_svs=self.path(self.results['finetune-svs'].snapshot))
        nets = {key: load_G(src) for key, src in sources.items()}
        result = dict(networks={}, agreement={}, metrics={}, sources={k: (v if is_url(v) else self.rel(v) if v.startswith(self.outdir) else v)
                                                                     for k, v in sources.items()})

        for key, G in nets.items():
            stats = flops.generator_stats(G)
            stats['latency'] = measure_latency(G)
            stats['widths'] = list(getattr(G.synthesis, 'layer_channels', []) or [])
            result['networks'][key] = stats
            print(f'{NETWORK_LABELS[key]:<34s} params {stats["params"]:>12,}  MACs {stats["macs"]:>15,}  '
                  f'CPU latency {stats["latency"]["median_sec"] * 1e3:8.2f} ms (batch {LATENCY_BATCH})', flush=True)

        seeds = list(range(o.eval_samples))
        for key in ('pruned', 'pruned_svs', 'finetuned', 'finetuned_svs'):
            a = agreement.generator_agreement(nets['teacher'], nets[key], seeds=seeds, noise_mode='const', device=device)
            result['agreement'][key] = a
            print(f'{NETWORK_LABELS[key]:<34s} PSNR {a.psnr["mean"]:6.2f} dB  SSIM {a.ssim["mean"]:.4f}  '
                  f'({a.num_images} latents, constant noise)', flush=True)
        result['agreement_settings'] = dict(seeds=f'0-{o.eval_samples - 1}', noise_mode='const', truncation_psi=1,
                                            data_range=255, ssim_window=agreement.SSIM_WINDOW, ssim_sigma=agreement.SSIM_SIGMA)

        result['metrics'] = self._metrics_or_reason(nets, device)

        grid_keys = ('teacher', 'pruned', 'finetuned', 'finetuned_svs')
        rows = [agreement.generate_for_seeds(nets[k], list(GRID_SEEDS), noise_mode='const', device=device) for k in grid_keys]
        grid_png = os.path.join(stage, 'samples.png')
        save_png(labelled_grid(rows, [NETWORK_LABELS[k] for k in grid_keys]), grid_png)
        result['grid'] = dict(png=self.rel(grid_png), rows=list(grid_keys), seeds=list(GRID_SEEDS), noise_mode='const')
        write_json(os.path.join(stage, 'evaluate.json'), result)
        return dict(evaluate_json=self.rel(os.path.join(stage, 'evaluate.json')), grid_png=self.rel(grid_png))

    def _metrics_or_reason(self, nets, device):
        """The requested metrics of every network, or the reason they were skipped (no detector offline)."""
        o, metrics = self.opts, list(self.opts.metrics)
        out = dict(requested=metrics, skipped=None, results={})
        if not metrics:
            out['skipped'] = 'no metrics were requested (--metrics none)'
            return out
        reason = detectors_unavailable(metrics, o.detector_dir, allow_download=not o.builtin_teacher)
        if reason is not None:
            out['skipped'] = reason
            print(f'metrics skipped: {reason}', flush=True)
        else:
            out['results'] = self._metrics(nets, metrics, device)
        return out

    def _metrics(self, nets, metrics, device):
        from metrics import metric_main
        from train import open_dataset
        dataset_kwargs, _info = open_dataset(self.results.data.data)
        out = {}
        for key in ('teacher', 'finetuned', 'finetuned_svs'):
            memo = {}
            out[key] = {}
            for metric in metrics:
                print(f'{metric} of {NETWORK_LABELS[key]}...', flush=True)
                r = metric_main.calc_metric(metric, G=nets[key], dataset_kwargs=dataset_kwargs, device=device,
                                            detector_dir=self.opts.detector_dir, allow_fewer_real=True, gen_memo=memo)
                print(metric_main.format_result(r), flush=True)
                out[key][metric] = dict(results=dict(r.results), details=dict(r.details), seconds=r.total_time)
        return out

    def stage_report(self, index, name):
        from training import report
        banner(index, name, 'writing report.html')
        paths = report.build_report(self.outdir)
        return {k: self.rel(v) for k, v in paths.items()}


def run_echoing_stderr(cmd):
    """Run ``cmd`` with its stdout shown as is and its stderr passed through line by line; returns
    (exit status, its last ``error: ...`` line without the prefix, or None)."""
    last_error = None
    with subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, errors='replace') as proc:
        for line in proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.startswith('error: '):
                last_error = line[len('error: '):].strip()
    return proc.returncode, last_error


def newest_run_with_snapshot(stage):
    """The highest-numbered ``<id>-<desc>`` run of train.py in ``stage`` that has a resumable snapshot."""
    from training import training_loop
    best = None
    if os.path.isdir(stage):
        for entry in os.listdir(stage):
            m = re.match(r'^(\d+)-', entry)
            path = os.path.join(stage, entry)
            if m and os.path.isfile(os.path.join(path, 'training_options.json')) and training_loop.find_latest_snapshot(path):
                if best is None or int(m.group(1)) > best[0]:
                    best = (int(m.group(1)), path)
    return None if best is None else best[1]


def run_pipeline(outdir='runs/pipeline', teacher=None, data=None, method='dcp', ratio=0.7, svs='sqrt', kimg=None,
                 config=None, n_samples=None, batch=DEFAULT_BATCH, device='auto', seed=0, detector_dir=None,
                 lpips_vgg=None, lpips_lin=None, metrics=None, eval_samples=DEFAULT_EVAL_SAMPLES,
                 resume_command=None):
    """Run (or resume) every stage; returns the stages' outputs. Raises UserError naming a failed stage."""
    import svs as svs_module
    from pruning import channels, scorers
    builtin_teacher = teacher is None
    if metrics is None:
        metrics = DEMO_METRICS if builtin_teacher else DEFAULT_METRICS
    if teacher is None:
        teacher = DEFAULT_TEACHER
        if not os.path.isfile(teacher):
            raise dnnlib.util.UserError(f'{teacher}: the built-in teacher is missing from this checkout')
    elif not is_url(teacher) and not os.path.isfile(teacher):
        raise dnnlib.util.UserError(f'--teacher {teacher}: no such file')
    if data is not None and not os.path.exists(data):
        raise dnnlib.util.UserError(f'--data {data}: no such file or folder')
    if config is not None and not os.path.isfile(config):
        raise dnnlib.util.UserError(f'--config {config}: no such file')
    if config is not None:
        import train  # train.py's own option table decides what a config may hold; checked before any stage
        train.check_config_file(config)
    scorers.get_scorer(method)
    channels.check_ratio(ratio)
    svs = svs_module.parse_fn(svs)[0]
    if kimg is not None and kimg <= 0:
        raise dnnlib.util.UserError(f'--kimg: must be positive, got {kimg}')
    if eval_samples < 1:
        raise dnnlib.util.UserError(f'--eval-samples: must be at least 1, got {eval_samples}')
    metrics = [m for m in (metrics or []) if m and m != 'none']
    metric_detectors(metrics)  # unknown names fail here, before any work
    opts = dnnlib.EasyDict(outdir=outdir, teacher=teacher, data=data, method=method, ratio=ratio, svs=svs,
                           kimg=DEFAULT_KIMG if kimg is None else kimg, kimg_given=kimg is not None, config=config,
                           n_samples=DEFAULT_N_SAMPLES if n_samples is None else n_samples, batch=batch,
                           device=device, seed=seed, detector_dir=detector_dir, lpips_vgg=lpips_vgg,
                           lpips_lin=lpips_lin, metrics=metrics, eval_samples=eval_samples,
                           builtin_teacher=builtin_teacher)
    if resume_command is None:
        resume_command = 'python pipeline.py --outdir ' + shlex.quote(outdir) + ' ...(the same options)'
    return Pipeline(opts, resume_command).run()


def _parse_metrics(_ctx, _param, value):
    if value is None:
        return None
    return [] if value.lower() == 'none' else [m.strip() for m in value.split(',') if m.strip()]


@click.command(help=__doc__, context_settings=dict(max_content_width=120))
@click.option('--teacher', metavar='PATH|URL', help='Teacher network pickle [default: the shipped assets/teacher-sample32.pkl]')
@click.option('--data', metavar='ZIP|DIR', help='Training data of the teacher [default: the built-in sample dataset]')
@click.option('--method', type=click.Choice(['dcp', 'cagan', 'gs', 'random', 'l1']), default='dcp', show_default=True, help='Pruning method (prune.py --method)')
@click.option('--ratio', type=float, default=0.7, show_default=True, help='Fraction of channels removed per layer')
@click.option('--svs', default='sqrt', show_default=True, help='SVS function of the second fine-tuning')
@click.option('--kimg', type=dnnlib.cli.FiniteFloat(min=0, min_open=True), help=f'kimg per fine-tuning [default: {DEFAULT_KIMG}; with --config: the config\'s]')
@click.option('--config', metavar='FILE', help='train.py --config for both fine-tunings (replaces the built-in small recipe)')
@click.option('--outdir', default='runs/pipeline', show_default=True, help='Run directory (rerun the same command to resume)')
@click.option('--n-samples', type=click.IntRange(min=1), help=f'Latents for pruning scores [default: {DEFAULT_N_SAMPLES}; the paper: 5000]')
@click.option('--batch', type=click.IntRange(min=1), default=DEFAULT_BATCH, show_default=True, help='Fine-tuning batch (without --config)')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True, help='Device for pruning, training and metrics (latency is always measured on the CPU)')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True, help='Random seed of pruning and both fine-tunings')
@click.option('--detector-dir', metavar='DIR', help='Folder with inception-2015-12-05.pt / vgg16.pt for offline metrics')
@click.option('--lpips-vgg', metavar='PATH|URL', help='VGG16 weights for the LPIPS distillation term')
@click.option('--lpips-lin', metavar='PATH|URL', help='LPIPS v0.1 linear heads for the LPIPS distillation term')
@click.option('--metrics', callback=_parse_metrics, metavar='A,B|none', help=f'Metrics of the evaluation [default: {",".join(DEFAULT_METRICS)}; built-in demo: {",".join(DEMO_METRICS)}, never downloading the detector]')
@click.option('--eval-samples', type=click.IntRange(min=1), default=DEFAULT_EVAL_SAMPLES, show_default=True, help='Latents for the PSNR/SSIM agreement')
@click.option('--family', type=click.Choice(['stylegan', 'ddpm']), default='stylegan', show_default=True,
              help='Model family; ddpm: Diff-Prune + SVS + DDPM fine-tuning on the built-in tiny UNet (pipeline_ddpm.py)')
@click.pass_context
@dnnlib.util.exit_on_user_error
def main(ctx, family, **kwargs):
    resume_command = ' '.join(['python', 'pipeline.py'] + [shlex.quote(a) for a in sys.argv[1:]])
    if family == 'ddpm':
        import pipeline_ddpm
        given = {k for k in kwargs if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
        unused = sorted(given & {'method', 'config', 'n_samples', 'lpips_vgg', 'lpips_lin'})
        if unused:
            raise dnnlib.util.UserError(f'--family ddpm does not use --{unused[0].replace("_", "-")}')
        pick = lambda k: kwargs[k] if k in given else None
        pipeline_ddpm.run_ddpm_pipeline(outdir=kwargs['outdir'] if 'outdir' in given else 'runs/pipeline-ddpm',
                                        teacher=kwargs['teacher'], data=kwargs['data'], ratio=pick('ratio'), svs=kwargs['svs'],
                                        kimg=kwargs['kimg'], batch=pick('batch'), device=kwargs['device'], seed=kwargs['seed'],
                                        detector_dir=kwargs['detector_dir'], metrics=kwargs['metrics'],
                                        eval_samples=pick('eval_samples'), resume_command=resume_command)
        return
    run_pipeline(resume_command=resume_command, **kwargs)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
