"""DDPM fine-tuning: the loss, and a bit-identical resume after SIGKILL (CPU, micro UNet), compared with an
uninterrupted run in two processes (so N processes = 1 process is checked too)."""
import json
import os
import signal
import subprocess
import sys

import torch

from training import ddpm_checkpoints as dc
from training import diffusion as diff
from training import sample_data
from training import training_loop as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r'''
import os, signal, sys
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from training import ddpm_loop, training_loop as tl
kill_at = int(sys.argv[2])
def progress(cur_kimg, total_kimg, _seen=[0]):
    _seen[0] += 1
    if kill_at and _seen[0] == kill_at:  # before this tick's training state is written
        os.kill(os.getpid(), signal.SIGKILL)
run_dir = sys.argv[1]
resume = tl.find_latest_snapshot(run_dir) if sys.argv[3] == 'resume' else None
c = dict(run_dir=run_dir, training_set_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path={data!r}),
    arch='micro', batch_size=8, batch_gpu=4, total_kimg=0.048, kimg_per_tick=0.008, image_snapshot_ticks=None,
    network_snapshot_ticks=1, random_seed=5, resume_pkl=resume, resume_state=tl.state_path_for(resume) if resume else None)
if sys.argv[3] == 'two-processes':  # gloo, through train_ddpm.py's process launcher
    import tempfile
    sys.path.insert(0, {root!r} )
    import train_ddpm
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.spawn(train_ddpm._run_process, args=(dict(c, num_gpus=2, device_kind='cpu'), tmp), nprocs=2)
else:
    ddpm_loop.ddpm_training_loop(device='cpu', progress_fn=progress, **c)
'''


def _run(script, run_dir, kill_at, mode):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-c', script, str(run_dir), str(kill_at), mode], env=env,
                          capture_output=True, text=True, timeout=300)


def _losses(run_dir):
    rows = [json.loads(line) for line in open(os.path.join(run_dir, 'stats.jsonl'))]
    return [(r['Progress/kimg']['mean'], r['Loss/diffusion']['mean']) for r in rows]


def test_sigkill_resume_is_bit_identical(tmp_path):
    data = tmp_path / 'data.zip'
    sample_data.make_sample_dataset(str(data), num_images=32, resolution=16)
    script = _CHILD.format(root=ROOT, data=str(data))
    full, killed = tmp_path / 'full', tmp_path / 'killed'
    r = _run(script, full, 0, 'two-processes')  # the reference: 2 processes, never interrupted
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run(script, killed, 4, 'fresh')
    assert r.returncode == -signal.SIGKILL
    latest = tl.find_latest_snapshot(str(killed))
    assert latest is not None and tl.tag_to_nimg(os.path.basename(latest)[17:-4]) < 48
    r = _run(script, killed, 0, 'resume')
    assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(full / 'network-snapshot-000000.048.pkl', weights_only=True)
    b = torch.load(killed / 'network-snapshot-000000.048.pkl', weights_only=True)
    for key in ('unet', 'unet_ema'):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert not torch.equal(a['unet']['conv_in.weight'], a['unet_ema']['conv_in.weight'])
    assert _losses(full) == _losses(killed)  # stats.jsonl continues exactly (no lost or doubled lines)
    assert os.listdir(killed / '') and any(f.startswith('events.out.tfevents') for f in os.listdir(killed))
    assert dc.load_ddpm(str(killed / 'network-snapshot-000000.048.pkl')).net is not None


def test_loss_is_summed_over_pixels_and_timesteps_antithetic():
    gen = torch.Generator().manual_seed(0)
    t = diff.antithetic_timesteps(6, 1000, gen)
    assert torch.equal(t[4:], 999 - t[:2])  # ddim: n//2+1 draws t, then T-1-t, cut to n

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return type('Out', (), {'sample': torch.zeros_like(x)})()
    noise = torch.randn(2, 3, 4, 4, generator=gen)
    loss = diff.diffusion_loss(Zero(), diff.make_schedule(), torch.zeros(2, 3, 4, 4), torch.tensor([0, 5]), noise)
    torch.testing.assert_close(loss, noise.square().sum(dim=(1, 2, 3)))


def test_ddim_timesteps_match_ddim_repo():
    assert diff.ddim_timesteps(1000, 100, 'uniform')[:3] == [0, 10, 20]
    quad = diff.ddim_timesteps(1000, 100, 'quad')
    assert len(quad) == 100 and quad[:5] == [0, 0, 0, 0, 1] and quad[-1] in (799, 800)  # ddim's repeats kept
