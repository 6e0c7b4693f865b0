"""DDPM networks through calc_metrics.py and the shared feature/k-NN engine (stand-in detector)."""
import json
import math
import os
import sys

import torch
from click.testing import CliRunner

from tests.test_metrics_extract import env  # noqa: F401  (fixture: stand-in detectors and a 32 px dataset)
from training import ddpm_checkpoints as dc
from training import diffusion as diff

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_calc_metrics_samples_ddpm_by_ddim(env, tmp_path):  # noqa: F811
    sys.path.insert(0, ROOT)
    import calc_metrics
    from metrics import metric_main
    torch.manual_seed(0)
    unet = dc.build_unet('micro', sample_size=32)
    folder = dc.save_diffusers(unet, tmp_path / 'unet')
    args = ['--network', folder, '--data', env.dataset_kwargs.path, '--metrics', 'fid1k_full,prdc1k_full', '--num-gen', '8',
            '--detector-dir', env.det_dir, '--ddim-steps', '2', '--no-cache', '--run-dir', str(tmp_path), '--quiet']
    result = CliRunner().invoke(calc_metrics.main, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(l) for l in open(tmp_path / 'metric-fid1k_full.jsonl')]
    fid = lines[-1]['results']['fid1k_full']
    assert math.isfinite(fid) and fid > 0
    # The same number from the engine directly, with the generator built by hand (z = x_T, DDIM 2 steps).
    G = diff.DDIMGenerator(unet.eval(), diff.make_schedule(), steps=2)
    direct = metric_main.calc_metric('fid1k_full', G=G, dataset_kwargs=env.dataset_kwargs, device='cpu', cache=False,
                                     detector_dir=env.det_dir, num_gen=8)
    assert direct.results.fid1k_full == fid
    bad = CliRunner().invoke(calc_metrics.main, args[:-2] + ['--skip-type', 'cubic'])
    assert bad.exit_code != 0
