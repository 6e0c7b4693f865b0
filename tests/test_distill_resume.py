"""A distillation run killed with SIGKILL and resumed with ``--resume latest`` equals an
uninterrupted one bit for bit: student, D and G_ema, the loss statistics, with the LD offsets'
RNG, the periodic-SVS schedule and the spectral-norm hook's power-iteration vectors in play."""
import subprocess

import pytest
import torch
from click.testing import CliRunner

import dnnlib
from pruning import channels
from training.checkpoints import save_snapshot
from training.networks_stylegan2 import Discriminator
from training.sample_data import make_sample_dataset

from test_lpips import make_lin_state, make_vgg_state
from test_pruning import random_masks, tiny_sg2
from test_training_run import _env, _kill_at_first_state, _max_diff, _networks, _stats_values, _train_cmd

TOTAL_KIMG = '0.024'  # 6 steps of 4 images; ticks at 4, 12, 20, 24 images; SVS re-applied at 4 and 8 (< half)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('distill_resume')
    f = dnnlib.EasyDict(data=str(d / 'data32.zip'), teacher=str(d / 'teacher.pkl'), student=str(d / 'student.pkl'),
                        vgg=str(d / 'vgg16.pth'), lin=str(d / 'vgg.pth'))
    make_sample_dataset(f.data, num_images=8, resolution=32, seed=0)
    teacher = tiny_sg2(channel_base=256, channel_max=16)
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16)
    save_snapshot(f.teacher, dict(G=teacher, G_ema=teacher, D=D))
    student = channels.slice_generator(teacher, random_masks(teacher, 0.5, seed=2))
    save_snapshot(f.student, dict(G=student, G_ema=student, D=D,
                                  pruning=dict(teacher_widths=channels.group_widths(teacher), svs=None)))
    torch.save(make_vgg_state(), f.vgg)
    torch.save(make_lin_state(), f.lin)
    return f


def _args(files, outdir):
    return ['--outdir', str(outdir), '--data', files.data, '--teacher', files.teacher, '--student', files.student,
            '--init', 'svs', '--distill', 'stylekd', '--l1-weight', '3', '--lpips-weight', '3', '--ld-weight', '30',
            '--lpips-vgg', files.vgg, '--lpips-lin', files.lin, '--spectral-norm', '1', '--svs-every', '0.004',
            '--cfg', 'auto', '--kimg', TOTAL_KIMG, '--batch', '4', '--batch-gpu', '2', '--tick', '0.008', '--snap', '1',
            '--metrics', 'none', '--device', 'cpu', '--grid', '2x2', '--workers', '0', '--aug', 'noaug', '--seed', '5']


def test_distillation_sigkill_then_resume_is_exact(files, tmp_path):
    import train
    ref_out = tmp_path / 'ref'
    result = CliRunner().invoke(train.main, _args(files, ref_out))
    assert result.exit_code == 0, result.output
    (ref_dir,) = [p for p in ref_out.iterdir() if p.is_dir()]
    final = 'network-snapshot-000000.024.pkl'
    assert (ref_dir / final).exists()

    out = tmp_path / 'killed'
    run_dir = _kill_at_first_state(_train_cmd(*_args(files, out)), out)
    assert not (run_dir / final).exists(), 'killed too late to test anything'

    resume = subprocess.run(_train_cmd('--outdir', str(run_dir), '--resume', 'latest'), env=_env(),
                            capture_output=True, text=True, timeout=1200)
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    assert 'Resuming' in resume.stdout
    assert _max_diff(_networks(ref_dir / final), _networks(run_dir / final)) == 0.0
    ref_stats = _stats_values(ref_dir / 'stats.jsonl')
    assert _stats_values(run_dir / 'stats.jsonl') == ref_stats
    assert all(line['Loss/G/ld']['mean'] > 0 for line in ref_stats)  # the LD term (its offsets' RNG) was active
