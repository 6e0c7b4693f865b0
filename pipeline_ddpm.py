"""``pipeline.py --family ddpm``: the same stages, bookkeeping and report as the StyleGAN pipeline, for DDPMs.

Stages (``pipeline.Pipeline`` runs them, resumes them and writes their done.json; only the work
of each stage is DDPM-specific):

\b
    data             the built-in 32 px sample dataset (or --data), checked against the teacher
    prune            Diff-Prune (taylor) of the teacher's EMA UNet -> prune/student, and prune/svs/student
                     (SVS sqrt + GroupNorm reset, the Table 3 default); spectra.png
    finetune-pruned  the DDPM loop (training/ddpm_loop.py) from the pruned weights
    finetune-svs     the same from the SVS weights, same seed; both resume exactly from their last snapshot
    evaluate         params, MACs (ddim's count), CPU latency of one UNet step; PSNR/SSIM against the
                     teacher from identical noise (DDIM, same seeds); metrics when the detectors can be had;
                     the comparison grid
    report           report.html / report.md (training/report.py)

The built-in teacher is assets/ddpm-tiny-sample32.pkl (made by train_ddpm.py; assets/README.md).
"""
import os

import torch

import dnnlib
import dnnlib.cli
import pipeline
from training import ddpm_checkpoints

DEFAULT_TEACHER = os.path.join(pipeline.ROOT, 'assets', 'ddpm-tiny-sample32.pkl')
# The built-in default's small settings (Table 3 itself: configs/table3-*.yaml): a Taylor batch of 8 and thr 0.1
# (the tiny teacher's loss falls below 10 % of its maximum near t = 100), 1 kimg per fine-tuning, DDIM 10 steps.
DEFAULTS = dict(ratio=0.3, kimg=1.0, batch=16, prune_batch=8, thr=0.1, eval_steps=10, eval_samples=32, lr=1e-3,
                ema_beta=0.9, dropout=0.0)  # demo: a short, fast recovery


class OneStep(torch.nn.Module):
    """One denoising step (t = 500) shaped like a generator, for ``pipeline.measure_latency``."""

    def __init__(self, G):
        super().__init__()
        self.unet, self.z_dim, self.c_dim = G.unet, G.z_dim, 0
        self.shape = (G.img_channels, G.img_resolution, G.img_resolution)

    def forward(self, z, c=None, **_kwargs):
        return self.unet(z.reshape(z.shape[0], *self.shape), torch.full((z.shape[0],), 500)).sample


class DDPMPipeline(pipeline.Pipeline):

    def stage_inputs(self, name):
        o = self.opts
        common = dict(family='ddpm', teacher=os.path.abspath(o.teacher), data=None if o.data is None else os.path.abspath(o.data))
        if name == 'data':
            return dict(common, sample=None if o.data else o.sample_dataset)
        if name == 'prune':
            return dict(common, ratio=o.ratio, importance='taylor', thr=o.thr, prune_batch=o.prune_batch, svs=o.svs, seed=o.seed)
        if name.startswith('finetune'):
            return dict(self.stage_inputs('prune'), kimg=o.kimg, batch=o.batch, lr=o.lr, ema_beta=o.ema_beta, dropout=o.dropout)
        if name == 'evaluate':
            return dict(self.stage_inputs('finetune-pruned'), metrics=list(o.metrics), eval_samples=o.eval_samples,
                        eval_steps=o.eval_steps, detector_dir=o.detector_dir)
        return dict(self.stage_inputs('evaluate'))

    def generator(self, source):
        return ddpm_checkpoints.load_generator(source, steps=self.opts.eval_steps, skip_type='uniform').G_ema

    def stage_data(self, index, name):
        from train import open_dataset
        from training.sample_data import make_sample_dataset
        o = self.opts
        if o.data is None:
            pipeline.banner(index, name, 'drawing the built-in sample dataset')
            data = self.path(name, f'sample{o.sample_dataset["resolution"]}.zip')
            make_sample_dataset(data, **o.sample_dataset)
        else:
            pipeline.banner(index, name, f'checking {o.data}')
            data = os.path.abspath(o.data)
        kwargs, info = open_dataset(data)
        G = self.generator(o.teacher)
        if G.img_resolution != info.resolution or G.img_channels != info.num_channels:
            raise dnnlib.util.UserError(f'--data {data}: {info.resolution} px x {info.num_channels} channels, but the teacher '
                                        f'makes {G.img_resolution} px x {G.img_channels} channels')
        print(f'dataset: {data} ({info.name}, {info.resolution} px); teacher: DDPM UNet, {G.img_resolution} px', flush=True)
        return dict(data=data, resolution=info.resolution, builtin=o.data is None,
                    num_images=len(dnnlib.util.construct_class_by_name(**kwargs)))

    def stage_prune(self, index, name):
        from pruning import diffprune
        o = self.opts
        pipeline.banner(index, name, f'Diff-Prune (taylor), ratio {o.ratio}, then SVS ({o.svs}) of a copy')
        stage = self.path(name)
        result = diffprune.prune_ddpm(o.teacher, stage, ratio=o.ratio, importance='taylor', data=self.results.data.data,
                                      batch=o.prune_batch, thr=o.thr, seed=o.seed, overwrite=True)
        diffprune.svs_ddpm(result.student, os.path.join(stage, 'svs'), fn=o.svs, reset_norm=True, overwrite=True)
        return dict(student=self.rel(result.student), student_svs=self.rel(os.path.join(stage, 'svs', 'student')),
                    pruning_json=self.rel(os.path.join(stage, 'pruning.json')),
                    spectra_png=self.rel(os.path.join(stage, 'svs', 'spectra.png')))

    def _finetune(self, index, name, init):
        from train import open_dataset
        from training import ddpm_loop
        from training import training_loop
        o = self.opts
        run_dir = self.path(name, '00000-ddpm')
        source = self.path(self.results.prune.student if init == 'pruned' else self.results.prune.student_svs)
        snapshot = training_loop.find_latest_snapshot(run_dir)
        if snapshot is not None and pipeline.snapshot_nimg(snapshot) >= o.kimg * 1000:
            pipeline.banner(index, name, 'training had finished')
        else:
            what = f'resuming from {os.path.basename(snapshot)}' if snapshot else f'fine-tuning the {init} weights'
            pipeline.banner(index, name, f'{what}: {o.kimg:g} kimg, batch {o.batch}')
            kwargs, _info = open_dataset(self.results.data.data)
            tick = max(o.kimg / 10, o.batch / 1000)
            ddpm_loop.ddpm_training_loop(
                run_dir=run_dir, training_set_kwargs=kwargs, network=source, random_seed=o.seed, batch_size=o.batch,
                batch_gpu=o.batch, lr=o.lr, ema_beta=o.ema_beta, dropout=o.dropout, total_kimg=o.kimg, kimg_per_tick=tick,
                network_snapshot_ticks=1, image_snapshot_ticks=None, device=dnnlib.cli.resolve_device(o.device),
                resume_pkl=snapshot, resume_state=training_loop.state_path_for(snapshot) if snapshot else None)
            snapshot = training_loop.find_latest_snapshot(run_dir)
        note = (f'fine-tuning as: python train_ddpm.py --outdir {self.rel(self.path(name))} --data {self.results.data.data} '
                f'--network {self.rel(source)} --kimg {o.kimg:g} --batch {o.batch} --lr {o.lr:g} --ema-beta {o.ema_beta:g} '
                f'--dropout {o.dropout:g} --seed {o.seed}')
        return dict(run_dir=self.rel(run_dir), snapshot=self.rel(snapshot), kimg=pipeline.snapshot_nimg(snapshot) / 1000,
                    command=None, notes=[note, f'DDIM {o.eval_steps} steps (uniform, eta 0) for every sample and metric'])

    def stage_evaluate(self, index, name):
        from metrics import agreement
        from pruning import diffprune
        o = self.opts
        pipeline.banner(index, name, 'params, MACs, CPU latency, agreement from identical noise, metrics, sample grid')
        stage = self.path(name)
        device = dnnlib.cli.resolve_device(o.device)
        sources = dict(teacher=o.teacher, pruned=self.path(self.results.prune.student),
                       pruned_svs=self.path(self.results.prune.student_svs),
                       finetuned=self.path(self.results['finetune-pruned'].snapshot),
                       finetuned_svs=self.path(self.results['finetune-svs'].snapshot))
        nets = {key: self.generator(src) for key, src in sources.items()}
        result = dict(networks={}, agreement={}, metrics={},
                      sources={k: (self.rel(v) if v.startswith(self.outdir) else v) for k, v in sources.items()})
        for key, G in nets.items():
            macs, params = diffprune.count_ddim_macs(G.unet)
            stats = dict(params=params, macs=macs, latency=pipeline.measure_latency(OneStep(G)),
                         widths=[m.conv1.out_channels for m in G.unet.modules() if hasattr(m, 'time_emb_proj')])
            result['networks'][key] = stats
            print(f'{pipeline.NETWORK_LABELS[key]:<34s} params {params:>12,}  MACs {macs:>15,}  '
                  f'CPU latency {stats["latency"]["median_sec"] * 1e3:8.2f} ms (one UNet step, batch {pipeline.LATENCY_BATCH})', flush=True)
        seeds = list(range(o.eval_samples))
        for key in ('pruned', 'pruned_svs', 'finetuned', 'finetuned_svs'):
            a = agreement.generator_agreement(nets['teacher'], nets[key], seeds=seeds, device=device)
            result['agreement'][key] = a
            print(f'{pipeline.NETWORK_LABELS[key]:<34s} PSNR {a.psnr["mean"]:6.2f} dB  SSIM {a.ssim["mean"]:.4f}  '
                  f'({a.num_images} seeds, identical x_T, DDIM {o.eval_steps} steps)', flush=True)
        result['agreement_settings'] = dict(seeds=f'0-{o.eval_samples - 1}', noise_mode=f'identical x_T, DDIM {o.eval_steps} steps',
                                            truncation_psi=1, data_range=255, ssim_window=agreement.SSIM_WINDOW,
                                            ssim_sigma=agreement.SSIM_SIGMA)
        result['metrics'] = self._metrics_or_reason(nets, device)
        grid_keys = ('teacher', 'pruned', 'finetuned', 'finetuned_svs')
        rows = [agreement.generate_for_seeds(nets[k], list(pipeline.GRID_SEEDS), device=device) for k in grid_keys]
        grid_png = os.path.join(stage, 'samples.png')
        pipeline.save_png(pipeline.labelled_grid(rows, [pipeline.NETWORK_LABELS[k] for k in grid_keys]), grid_png)
        result['grid'] = dict(png=self.rel(grid_png), rows=list(grid_keys), seeds=list(pipeline.GRID_SEEDS), noise_mode='identical x_T')
        pipeline.write_json(os.path.join(stage, 'evaluate.json'), result)
        return dict(evaluate_json=self.rel(os.path.join(stage, 'evaluate.json')), grid_png=self.rel(grid_png))


def run_ddpm_pipeline(outdir='runs/pipeline-ddpm', teacher=None, data=None, ratio=None, svs='sqrt', kimg=None, batch=None,
                      device='auto', seed=0, detector_dir=None, metrics=None, eval_samples=None, eval_steps=None,
                      prune_batch=None, thr=None, resume_command=None, sample_dataset=None):
    """Run (or resume) the DDPM stages; returns their outputs. UserError names a failed stage."""
    import shlex
    import svs as svs_module
    builtin = teacher is None
    teacher = DEFAULT_TEACHER if teacher is None else teacher
    if not os.path.exists(teacher):
        raise dnnlib.util.UserError(f'--teacher {teacher}: no such file or folder')
    if data is not None and not os.path.exists(data):
        raise dnnlib.util.UserError(f'--data {data}: no such file or folder')
    ratio = DEFAULTS['ratio'] if ratio is None else ratio
    if not 0 < ratio < 1:
        raise dnnlib.util.UserError(f'--ratio: expected a number in (0, 1), got {ratio}')
    if metrics is None:
        metrics = pipeline.DEMO_METRICS if builtin else pipeline.DEFAULT_METRICS
    metrics = [m for m in metrics if m and m != 'none']
    pipeline.metric_detectors(metrics)
    opts = dnnlib.EasyDict(outdir=outdir, teacher=os.path.abspath(teacher), data=data, ratio=ratio, svs=svs_module.parse_fn(svs)[0],
                           kimg=DEFAULTS['kimg'] if kimg is None else kimg, kimg_given=kimg is not None,
                           batch=batch or DEFAULTS['batch'], prune_batch=prune_batch or DEFAULTS['prune_batch'],
                           thr=DEFAULTS['thr'] if thr is None else thr,
                           lr=DEFAULTS['lr'], ema_beta=DEFAULTS['ema_beta'], dropout=DEFAULTS['dropout'], device=device, seed=seed,
                           detector_dir=detector_dir, metrics=metrics, eval_samples=eval_samples or DEFAULTS['eval_samples'],
                           eval_steps=eval_steps or DEFAULTS['eval_steps'], builtin_teacher=builtin, config=None,
                           method='diffprune', family='ddpm', sample_dataset=sample_dataset or dict(pipeline.SAMPLE_DATASET))
    if resume_command is None:
        resume_command = 'python pipeline.py --family ddpm --outdir ' + shlex.quote(outdir) + ' ...(the same options)'
    return DDPMPipeline(opts, resume_command).run()

