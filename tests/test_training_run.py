"""End-to-end training runs on CPU: outputs, 1 vs 2 gloo processes, SIGKILL + exact resume (the NaN
policy is tested in test_loop_gpu.py).

One tiny configuration (32 px sample data, channel_base 256, channel_max 32, mapping depth 2,
batch 4 in micro-batches of 2, ticks of 8 images) is trained once in-process as the reference; the
other runs are compared against its snapshots.
"""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import dnnlib
from training import training_loop
from training.sample_data import make_sample_dataset

ROOT = Path(__file__).resolve().parents[1]

# cfg stylegan2 keeps style mixing and path length on; a fixed augment p exercises the pipe's RNG.
TINY = ['--cfg', 'stylegan2', '--cbase', '256', '--cmax', '32', '--map-depth', '2', '--mbstd-group', '2',
        '--batch', '4', '--batch-gpu', '2', '--gamma', '1', '--aug', 'fixed', '--p', '0.3',
        '--tick', '0.008', '--snap', '1', '--metrics', 'none', '--device', 'cpu', '--grid', '2x2',
        '--workers', '0', '--seed', '3']
TOTAL_KIMG = '0.032'   # 8 steps; ticks end at 4, 12, 20, 28, 32 images


@pytest.fixture(scope='module')
def data_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp('data') / 'sample32.zip'
    make_sample_dataset(str(path), num_images=16, resolution=32, seed=0)
    return str(path)


@pytest.fixture(scope='module')
def reference_run(data_zip, tmp_path_factory):
    outdir = tmp_path_factory.mktemp('ref')
    result = CliRunner().invoke(_train_main(), ['--outdir', str(outdir), '--data', data_zip, '--kimg', TOTAL_KIMG] + TINY)
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in outdir.iterdir() if p.is_dir()]
    return run_dir


def _train_main():
    import train
    return train.main


def _env():
    env = dict(os.environ)
    env['OMP_NUM_THREADS'] = str(torch.get_num_threads())  # same thread count as the in-process reference
    env['PYTHONPATH'] = str(ROOT)
    return env


def _train_cmd(*args):
    return [sys.executable, str(ROOT / 'train.py'), *args]


def _networks(pkl):
    with open(pkl, 'rb') as f:
        data = pickle.load(f)
    return {name: {k: v.clone() for k, v in data[name].state_dict().items()} for name in ('G', 'D', 'G_ema')}


def _max_diff(a, b):
    worst = 0.0
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            worst = max(worst, (a[name][key].double() - b[name][key].double()).abs().max().item())
    return worst


def _stats_values(path):
    """stats.jsonl without the wall-clock fields (Timing/*, Resources/*, timestamp)."""
    lines = []
    for line in Path(path).read_text().splitlines():
        d = json.loads(line)
        lines.append({k: v for k, v in d.items() if k.startswith(('Loss/', 'Progress/'))})
    return lines


def test_cpu_run_writes_outputs(reference_run):
    names = sorted(os.listdir(reference_run))
    for fname in ['log.txt', 'training_options.json', 'stats.jsonl', 'reals.png', 'fakes_init.png',
                  'network-snapshot-000000.pkl', 'training-state-000000.pt',
                  'network-snapshot-000000.032.pkl', 'training-state-000000.032.pt', 'fakes000000.032.png']:
        assert fname in names, fname
    assert any(n.startswith('events.out.tfevents') for n in names)
    # Sub-kimg ticks get unique names instead of overwriting snapshot 000000.
    assert {'network-snapshot-000000.012.pkl', 'network-snapshot-000000.020.pkl', 'network-snapshot-000000.028.pkl'} <= set(names)
    lines = _stats_values(reference_run / 'stats.jsonl')
    assert len(lines) == 5
    assert [line['Progress/kimg']['mean'] for line in lines] == [0.004, 0.012, 0.02, 0.028, 0.032]
    for key in ['Loss/G/loss', 'Loss/D/loss', 'Loss/r1_penalty', 'Loss/pl_penalty', 'Loss/scores/real', 'Loss/signs/fake']:
        assert key in lines[-1], key
    state = torch.load(reference_run / 'training-state-000000.032.pt', weights_only=True)
    assert state['cur_nimg'] == 32 and state['batch_idx'] == 8 and state['stats_lines'] == 5
    assert set(state['optimizers']) == {'G', 'D'} and state['augment_p'] == pytest.approx(0.3)
    with open(reference_run / 'network-snapshot-000000.032.pkl', 'rb') as f:
        snap = pickle.load(f)
    assert snap['training_set_kwargs']['resolution'] == 32 and snap['augment_pipe'] is not None
    # The snapshot's G differs from the initial one: training happened.
    first = _networks(reference_run / 'network-snapshot-000000.pkl')
    last = _networks(reference_run / 'network-snapshot-000000.032.pkl')
    assert _max_diff(first, last) > 1e-4
    # TensorBoard events hold the same scalars.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(reference_run))
    events.Reload()
    assert 'Loss/G/loss' in events.Tags()['scalars']


def test_two_gloo_processes_match_one(reference_run, data_zip, tmp_path):
    # Same total batch (4) and micro-batch (2): one process runs 2 rounds, two processes 1 each.
    cmd = _train_cmd('--outdir', str(tmp_path), '--data', data_zip, '--kimg', '0.012', '--gpus', '2', *TINY)
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    names = os.listdir(run_dir)
    for fname in ['stats.jsonl', 'training-state-000000.012.pt', 'fakes000000.012.png', 'reals.png']:
        assert fname in names
    assert any(n.startswith('events.out.tfevents') for n in names)
    # After 3 steps (12 images) the weights agree. Bit-identical in practice on CPU: same micro-batches,
    # same RNG per slot, gradients summed in the same order (0 + g0 + g1); the bound allows for
    # a different reduction order inside a multi-threaded all-reduce.
    two = _networks(run_dir / 'network-snapshot-000000.012.pkl')
    one = _networks(reference_run / 'network-snapshot-000000.012.pkl')
    assert _max_diff(one, two) <= 1e-6
    assert _max_diff(two, _networks(reference_run / 'network-snapshot-000000.pkl')) > 1e-5  # it did train


def _kill_at_first_state(cmd, outdir):
    """Start ``cmd``, SIGKILL it as soon as a training state appears under ``outdir``; the run folder."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 1200  # generous: the machine may be shared; the run ends by itself anyway
    state_seen = None
    while time.time() < deadline and proc.poll() is None:
        states = list(outdir.glob('*/training-state-*.pt'))
        if states:
            state_seen = states[0]
            break
        time.sleep(0.02)
    assert state_seen is not None, 'no training state appeared'
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return state_seen.parent


def test_sigkill_then_resume_is_exact(reference_run, data_zip, tmp_path):
    cmd = _train_cmd('--outdir', str(tmp_path), '--data', data_zip, '--kimg', TOTAL_KIMG, *TINY)
    run_dir = _kill_at_first_state(cmd, tmp_path)
    assert not (run_dir / 'network-snapshot-000000.032.pkl').exists(), 'killed too late to test anything'

    resume = subprocess.run(_train_cmd('--outdir', str(run_dir), '--resume', 'latest'), env=_env(),
                            capture_output=True, text=True, timeout=1200)
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    assert 'Resuming' in resume.stdout
    resumed = _networks(run_dir / 'network-snapshot-000000.032.pkl')
    reference = _networks(reference_run / 'network-snapshot-000000.032.pkl')
    assert _max_diff(reference, resumed) == 0.0
    assert _stats_values(run_dir / 'stats.jsonl') == _stats_values(reference_run / 'stats.jsonl')


def _init_student(G, D, **_kwargs):
    """An init_fn (what the distillation issue's student init / SVS plugs in)."""
    with torch.no_grad():
        G.mapping.w_avg.fill_(7.0)


class _TeacherTerm:
    """A term built by the loop from a dict spec, seeing the frozen extra network."""
    calls = []

    def __init__(self, device, networks, weight=1.0):
        self.teacher = networks.teacher
        self.weight = weight
        assert networks.G is not self.teacher

    def __call__(self, ctx):
        with torch.no_grad():
            target = self.teacher.synthesis(ctx.loss.mapping(self.teacher, ctx.z, ctx.c, mixing=ctx.mixing))
        _TeacherTerm.calls.append((self.teacher.training, any(p.requires_grad for p in self.teacher.parameters())))
        return {'l1': (ctx.img - target).abs().mean() * self.weight}


def test_init_fn_extra_networks_and_terms(data_zip, tmp_path):
    import train
    c, _desc = train.build_training_kwargs(data=data_zip, cfg='cifar', batch=4, batch_gpu=2, kimg=0.004, tick=0.004,
                                           snap=1, metrics=[], cbase=256, cmax=32, map_depth=2, mbstd_group=2,
                                           aug='noaug', workers=0, device='cpu', grid='2x2')
    c.pop('device')
    teacher = dnnlib.util.construct_class_by_name(**dict(c.G_kwargs, c_dim=0, img_resolution=32, img_channels=3))
    c.init_fn = _init_student
    c.extra_networks = dict(teacher=teacher)
    c.loss_kwargs.terms = [dict(class_name=f'{__name__}._TeacherTerm', weight=3.0)]
    _TeacherTerm.calls.clear()
    out = training_loop.training_loop(run_dir=str(tmp_path), rank=0, device=torch.device('cpu'), **c)
    assert _TeacherTerm.calls and all(call == (False, False) for call in _TeacherTerm.calls)  # eval, frozen
    assert abs(out.G_ema.mapping.w_avg.mean().item() - 7.0) < 0.2  # init_fn ran before the EMA copy
    with open(tmp_path / 'network-snapshot-000000.pkl', 'rb') as f:
        snap = pickle.load(f)
    assert 'teacher' not in snap
    lines = _stats_values(tmp_path / 'stats.jsonl')
    assert lines[-1]['Loss/G/l1']['num'] == 2
