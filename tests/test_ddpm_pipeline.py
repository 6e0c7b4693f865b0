"""pipeline.py --family ddpm in a small setting: every stage, the report, and a rerun that resumes."""
import json
import os
import subprocess
import sys

import torch

from training import ddpm_checkpoints as dc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ddpm_pipeline_small(tmp_path, capsys):
    sys.path.insert(0, ROOT)
    import pipeline_ddpm
    torch.manual_seed(0)
    teacher = dc.save_diffusers(dc.build_unet('micro'), tmp_path / 'teacher',  # a short schedule keeps the Taylor pass short
                                diffusion=dict(num_timesteps=50, beta_start=1e-4, beta_end=0.2))
    kw = dict(outdir=str(tmp_path / 'run'), teacher=teacher, ratio=0.5, kimg=0.008, batch=4, prune_batch=4, thr=0.9, metrics=[],
              eval_samples=3, eval_steps=2, device='cpu', sample_dataset=dict(num_images=8, resolution=16, seed=0))
    pipeline_ddpm.run_ddpm_pipeline(**kw)
    run = tmp_path / 'run'
    ev = json.load(open(run / 'evaluate' / 'evaluate.json'))
    nets = ev['networks']
    assert nets['pruned']['params'] < nets['teacher']['params'] and nets['pruned']['params'] == nets['finetuned_svs']['params']
    assert nets['pruned']['macs'] < nets['teacher']['macs']
    for key in ('pruned', 'pruned_svs', 'finetuned', 'finetuned_svs'):
        assert -1 <= ev['agreement'][key]['ssim']['mean'] <= 1 and ev['agreement'][key]['num_images'] == 3
    assert ev['agreement']['pruned']['ssim']['mean'] != ev['agreement']['pruned_svs']['ssim']['mean']
    assert ev['metrics']['skipped']
    html = (run / 'report.html').read_text()
    assert 'diffprune' in html and 'Loss/diffusion' in html or 'curves.png' in html
    for png in ('samples.png', 'spectra.png', 'curves.png'):
        assert (run / 'report' / png).stat().st_size > 1000
    pruning = json.load(open(run / 'prune' / 'pruning.json'))
    assert pruning['widths'] != pruning['teacher_widths'] and pruning['svs'] is None
    capsys.readouterr()
    pipeline_ddpm.run_ddpm_pipeline(**kw)  # rerun: every stage is skipped
    assert capsys.readouterr().out.count('skipped') == 6


def test_family_ddpm_rejects_stylegan_options():
    r = subprocess.run([sys.executable, 'pipeline.py', '--family', 'ddpm', '--method', 'cagan'], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and 'does not use --method' in r.stderr and 'Traceback' not in r.stderr
