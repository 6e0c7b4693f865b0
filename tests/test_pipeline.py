"""pipeline.py end to end on a tiny teacher: stages, report, resume after an interruption, failures."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--n-samples', '2', '--kimg', '0.008', '--batch', '4', '--eval-samples', '4', '--device', 'cpu']


def _env(tmp):
    env = dict(os.environ, OMP_NUM_THREADS='1', SVS_OFFLINE='1', SVS_CACHE_DIR=str(tmp / 'cache'))
    env.pop('WORLD_SIZE', None)
    return env


def run_pipeline(args, tmp):
    return subprocess.run([sys.executable, str(ROOT / 'pipeline.py')] + [str(a) for a in args], cwd=ROOT,
                          env=_env(tmp), capture_output=True, text=True, timeout=300)


def run_in_process(args):
    from click.testing import CliRunner
    import pipeline
    result = CliRunner().invoke(pipeline.main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    import torch
    from training.checkpoints import save_snapshot
    from training.networks_stylegan2 import Discriminator, Generator
    from training.sample_data import make_sample_dataset
    tmp = tmp_path_factory.mktemp('inputs')
    torch.manual_seed(0)
    G = Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=512, channel_max=16, num_fp16_res=0, conv_clamp=None))
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=512, channel_max=16,
                      epilogue_kwargs=dict(mbstd_group_size=2))
    teacher = tmp / 'teacher.pkl'
    save_snapshot(str(teacher), dict(G=G, G_ema=G, D=D, augment_pipe=None, training_set_kwargs=None))
    data = tmp / 'data.zip'
    make_sample_dataset(str(data), num_images=24, resolution=32, seed=1)
    return dict(teacher=teacher, data=data, tmp=tmp)


@pytest.fixture(scope='module')
def finished_run(inputs):
    outdir = inputs['tmp'] / 'run'
    args = ['--teacher', inputs['teacher'], '--data', inputs['data'], '--outdir', outdir] + TINY
    proc = run_pipeline(args, inputs['tmp'])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(outdir=outdir, args=args, stdout=proc.stdout)


def test_pipeline_writes_report_from_the_run(finished_run, inputs):
    from metrics import agreement
    from pruning import flops
    from training.checkpoints import load_network
    out, log = finished_run['outdir'], finished_run['stdout']
    for i, stage in enumerate(['data', 'prune', 'finetune-pruned', 'finetune-svs', 'evaluate', 'report'], 1):
        assert f'=== [{i}/6] {stage}:' in log
        assert (out / stage / 'done.json').is_file()
    assert re.search(r'^tick 0 ', log, re.M)  # train.py's own progress lines are shown
    html = (out / 'report.html').read_text()
    assert (out / 'report.md').is_file()
    for name in ('samples.png', 'spectra.png', 'curves.png'):
        assert f'report/{name}' in html
        with PIL.Image.open(out / 'report' / name) as img:
            assert img.size[0] > 100 and img.size[1] > 50
            assert np.asarray(img.convert('L')).std() > 5  # not a blank image

    ev = json.loads((out / 'evaluate' / 'evaluate.json').read_text())
    done = {s: json.loads((out / s / 'done.json').read_text()) for s in ('prune', 'finetune-pruned', 'finetune-svs')}
    teacher = load_network(str(inputs['teacher']), verbose=False).G_ema
    pruned = load_network(str(out / done['prune']['outputs']['student']), verbose=False).G_ema
    tuned_svs = load_network(str(out / done['finetune-svs']['outputs']['snapshot']), verbose=False).G_ema
    assert done['finetune-svs']['outputs']['kimg'] >= 0.008
    for key, G in (('teacher', teacher), ('pruned', pruned), ('finetuned_svs', tuned_svs)):
        stats = ev['networks'][key]
        assert stats['params'] == flops.count_params(G) and stats['macs'] == flops.count_macs(G)
        assert f'{stats["params"]:,}' in html and f'{stats["macs"]:,}' in html
        assert stats['latency']['median_sec'] > 0 and len(stats['latency']['times_sec']) == stats['latency']['repeats']
    assert ev['networks']['pruned']['params'] < ev['networks']['teacher']['params']

    # Agreement numbers are those of the saved networks on the stated latents.
    again = agreement.generator_agreement(teacher, tuned_svs, seeds=range(4), noise_mode='const')
    got = ev['agreement']['finetuned_svs']
    assert got['psnr']['mean'] == pytest.approx(again.psnr['mean']) and got['ssim']['mean'] == pytest.approx(again.ssim['mean'])
    assert f'{got["psnr"]["mean"]:.2f}' in html and f'{got["ssim"]["mean"]:.4f}' in html
    # Fine-tuning with and without SVS started from the same pruned weights but are different runs.
    assert ev['agreement']['finetuned']['psnr']['mean'] != got['psnr']['mean']

    # Offline: the metrics are skipped with the reason, and no number stands in for them.
    assert ev['metrics']['skipped'] and not ev['metrics']['results']
    assert 'were skipped' in html and 'SVS_OFFLINE' in html
    # The curves come from the two runs' stats.jsonl.
    for stage in ('finetune-pruned', 'finetune-svs'):
        assert (out / done[stage]['outputs']['run_dir'] / 'stats.jsonl').stat().st_size > 0


def test_rerun_skips_finished_stages_and_resumes_training(finished_run, inputs, tmp_path):
    from training import training_loop
    src = finished_run['outdir']
    out = tmp_path / 'run'
    shutil.copytree(src, out)
    # Interrupt the SVS fine-tuning after its first snapshot: later snapshots and markers are gone.
    run_dir = out / json.loads((src / 'finetune-svs' / 'done.json').read_text())['outputs']['run_dir']
    snaps = sorted(run_dir.glob('network-snapshot-*.pkl'), key=lambda p: training_loop.tag_to_nimg(p.stem.split('-')[-1]))
    assert len(snaps) >= 2
    for snap in snaps[1:]:
        snap.unlink()
        Path(training_loop.state_path_for(str(snap))).unlink()
    for stage in ('finetune-svs', 'evaluate', 'report'):
        (out / stage / 'done.json').unlink()
    (out / 'report.html').unlink()
    pruned_mtime = (out / 'prune' / 'student.pkl').stat().st_mtime_ns

    # This time the detector files are at hand (stand-ins): the evaluation computes the metric.
    from test_metrics import write_stand_in_detectors
    det_dir = write_stand_in_detectors(str(tmp_path / 'detectors'))
    args = [a if a != src else out for a in finished_run['args']] + ['--metrics', 'fid1k_full', '--detector-dir', det_dir]
    proc = run_pipeline(args, inputs['tmp'])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ('data', 'prune', 'finetune-pruned'):
        assert re.search(rf'{stage}: finished earlier', proc.stdout)
    assert f'resuming {run_dir.relative_to(out)} from {snaps[0].name}' in proc.stdout
    assert 'restored: kimg' in proc.stdout  # train.py --resume latest continued the same run exactly
    assert (out / 'prune' / 'student.pkl').stat().st_mtime_ns == pruned_mtime
    assert (out / 'report.html').is_file()
    assert sorted(p.name for p in run_dir.glob('network-snapshot-*.pkl')) == sorted(p.name for p in snaps)
    ev = json.loads((out / 'evaluate' / 'evaluate.json').read_text())
    html = (out / 'report.html').read_text()
    assert ev['metrics']['skipped'] is None and 'were skipped' not in html
    for key in ('teacher', 'finetuned', 'finetuned_svs'):
        fid = ev['metrics']['results'][key]['fid1k_full']['results']['fid1k_full']
        assert fid > 0 and f'{fid:.4f}' in html

    # A finished run skips everything; other settings in the same folder are refused (in-process: quicker).
    code, output, err = run_in_process(args)
    assert code == 0 and output.count('finished earlier') == 6
    code, output, err = run_in_process(args + ['--ratio', '0.5'])
    assert code == 1 and 'stage prune was finished with other settings (ratio)' in err


def test_failed_stage_prints_one_line_and_keeps_finished_stages(inputs, tmp_path):
    # An unknown key is refused before any stage runs.
    unknown = tmp_path / 'unknown.yaml'
    unknown.write_text('no_such_option: 1\n')
    proc = run_pipeline(['--teacher', inputs['teacher'], '--data', inputs['data'], '--outdir', tmp_path / 'run0',
                         '--config', unknown] + TINY, inputs['tmp'])
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith('error: --config') \
        and 'no_such_option' in proc.stderr and not (tmp_path / 'run0').exists()
    # A config that only train.py can find wrong fails in its stage, after prune.
    bad_config = tmp_path / 'bad.yaml'
    bad_config.write_text('batch: 4\nbatch_gpu: 3\n')
    outdir = tmp_path / 'run'
    args = ['--teacher', inputs['teacher'], '--data', inputs['data'], '--outdir', outdir, '--config', bad_config] + TINY
    proc = run_pipeline(args, inputs['tmp'])
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: stage finetune-pruned failed: train.py exited with status 1: --batch')
    assert '--batch-gpu (3)' in last
    assert 'resume with: python pipeline.py --teacher' in last
    assert (outdir / 'prune' / 'done.json').is_file() and (outdir / 'prune' / 'student.pkl').is_file()
    assert not (outdir / 'finetune-pruned' / 'done.json').exists()

    # An error of the data stage: one line on stderr, nothing else, naming the stage.
    from training.sample_data import make_sample_dataset
    big = tmp_path / 'big.zip'
    make_sample_dataset(str(big), num_images=2, resolution=64)
    code, _output, err = run_in_process(['--teacher', inputs['teacher'], '--data', big, '--outdir', tmp_path / 'run2'] + TINY)
    assert code == 1
    assert err.count('\n') == 1 and err.startswith('error: stage data failed: --data')
    assert '64 px' in err and not (tmp_path / 'run2' / 'data' / 'done.json').exists()
