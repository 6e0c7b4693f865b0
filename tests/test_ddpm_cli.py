"""DDPM command lines: prune.py ddpm, train_ddpm.py (fresh and --resume latest), generate.py; bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from training import ddpm_checkpoints as dc
from training import sample_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(script, *args):
    """Run a CLI in this process (click's runner): exit code and output as a subprocess would give them."""
    from click.testing import CliRunner
    sys.path.insert(0, ROOT)
    module = __import__(script[:-3])
    result = CliRunner().invoke(module.main, list(args))
    return subprocess.CompletedProcess(script, 1 if result.exit_code else 0, result.stdout, result.stderr or result.output) \
        if result.exit_code in (0, 1) else pytest.fail(f'{script} crashed: {result.exception!r}\n{result.output[-2000:]}')


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp('ddpm_cli')
    data = str(root / 'data.zip')
    sample_data.make_sample_dataset(data, num_images=16, resolution=16)
    torch.manual_seed(0)
    folder = dc.save_diffusers(dc.build_unet('micro'), root / 'teacher', diffusion=dict(num_timesteps=50, beta_start=1e-4, beta_end=0.2))  # short schedule: a short Taylor pass
    return root, data, folder


def test_prune_finetune_resume_generate(teacher):
    root, data, folder = teacher
    out = root / 'pruned'
    r = _cli('prune.py', 'ddpm', '--network', folder, '--outdir', str(out), '--ratio', '0.5', '--data', data,
             '--batch', '4', '--thr', '0.5', '--svs', 'sqrt')
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.load(open(out / 'pruning.json'))
    assert info['params']['student'] < info['params']['teacher'] and info['svs']['fn'] == 'sqrt'
    assert info['svs']['reset_group_norms'] and info['taylor_steps'] >= 1
    student = dc.load_ddpm(str(out / 'student'))
    for m in student.unet.modules():
        if isinstance(m, torch.nn.GroupNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))

    r = _cli('train_ddpm.py', '--outdir', str(root / 'runs'), '--data', data, '--network', str(out / 'student'),
             '--kimg', '0.016', '--batch', '4', '--tick', '0.008', '--snap', '1', '--img-snap', '0')
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = root / 'runs' / '00000-ddpm'
    assert (run_dir / 'network-snapshot-000000.016.pkl').is_file()
    r = _cli('train_ddpm.py', '--outdir', str(run_dir), '--resume', 'latest', '--kimg', '0.024')
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run_dir / 'network-snapshot-000000.024.pkl').is_file()
    assert len(open(run_dir / 'stats.jsonl').readlines()) == 4  # ticks at 4, 8, 16 and 24 images

    # A run folder whose training_options.json names code: refused before anything is constructed.
    import shutil
    crafted, marker = root / 'crafted', root / 'ran'
    shutil.copytree(run_dir, crafted)
    (crafted / '.train.lock').unlink(missing_ok=True)
    options = json.load(open(crafted / 'training_options.json'))
    options['training_set_kwargs'] = dict(class_name='os.system', command=f'touch {marker}')
    json.dump(options, open(crafted / 'training_options.json', 'w'))
    r = _cli('train_ddpm.py', '--outdir', str(crafted), '--resume', 'latest', '--kimg', '0.032')
    assert r.returncode == 1 and 'training_options.json' in r.stderr and not marker.exists()

    grid = root / 'grid.png'
    r = _cli('generate.py', '--network', folder, '--network', str(run_dir / 'network-snapshot-000000.024.pkl'),
             '--seeds', '0-2', '--grid', str(grid), '--ddim-steps', '3')
    assert r.returncode == 0, r.stderr[-2000:]
    img = np.asarray(PIL.Image.open(grid))
    assert img.shape[:2] == (32, 48)


def test_bad_input_one_line(teacher):
    root, data, folder = teacher
    r = _cli('prune.py', 'ddpm', '--network', folder, '--outdir', str(root / 'x'), '--ratio', '0.99', '--importance', 'random')
    assert r.returncode != 0 and 'every channel' in r.stderr and 'Traceback' not in r.stderr and r.stderr.startswith('error: ')
    assert not os.path.exists(root / 'x' / 'student')
    r = _cli('prune.py', 'ddpm', '--network', str(root / 'nope'), '--outdir', str(root / 'y'), '--importance', 'random')
    assert r.returncode != 0 and 'nope' in r.stderr and 'Traceback' not in r.stderr
    r = _cli('prune.py', 'ddpm', '--network', folder, '--outdir', str(root / 'z'))
    assert r.returncode != 0 and '--data' in r.stderr and 'Traceback' not in r.stderr
