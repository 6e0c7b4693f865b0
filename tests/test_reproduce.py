"""reproduce.py: a two-row table end to end on the shipped teacher (report, curves, grid, shared
pruning), SIGKILL mid-row and rerun to the same numbers, dry runs of the real configs, locks."""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml

import dnnlib
from training import reproduce_plan as rp

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / 'assets' / 'teacher-sample32.pkl'
ROWS = (('a-dcp', 'pruned', 'DCP-GAN (tiny)', 30.0, 0.5), ('b-dcp-svs', 'svs', 'DCP-GAN + SVS (tiny)', 25.5, None))


class StandInInception(torch.nn.Module):
    """Called like NVIDIA's TorchScript Inception; a fixed random projection of pooled pixels."""

    def __init__(self, dim: int):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.register_buffer('weight', torch.randn(48, dim, generator=gen) / 7)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(img.to(torch.float32) / 255, [4, 4]).flatten(1)
        return torch.relu((x[:, :, None] * self.weight[None]).sum(1))


def _env(tmp):
    env = dict(os.environ, OMP_NUM_THREADS='1', SVS_OFFLINE='1', SVS_CACHE_DIR=str(tmp / 'cache'))
    env.pop('WORLD_SIZE', None)
    return env


def _cache_file(tmp, url):
    folder = tmp / 'cache' / 'downloads'
    folder.mkdir(parents=True, exist_ok=True)
    return folder / dnnlib.util.url_cache_name(url)


def write_tiny_table(tmp):
    """Two rows of a "Table 1" on the shipped 32 px teacher and the built-in data: one pruning, a few kimg."""
    from metrics import detectors
    from training.sample_data import make_sample_dataset
    make_sample_dataset(str(tmp / 'data.zip'), num_images=64, resolution=32, seed=0)
    torch.jit.save(torch.jit.script(StandInInception(32)), str(_cache_file(tmp, detectors.INCEPTION_URL)))
    configs = tmp / 'configs'
    configs.mkdir()
    for name, init, label, fid, precision in ROWS:
        paper = dict(table=1, row=label, setting='sample32', fid=fid, precision=precision, recall=None, density=None, coverage=None)
        options = dict(data=str(tmp / 'data.zip'), teacher=str(TEACHER), student='students/made-by-prune/student.pkl',
                       cfg='auto', init=init, distill='stylekd', **{'lpips-weight': 0}, mask='uniform', batch=4, kimg=0.016,
                       tick=0.008, snap=1, aug='noaug', mirror=1, workers=0, grid='4x2', gpus=1,
                       metrics='fid1k_full,prdc1k_full', desc=name)
        block = dict(paper=paper, prune={'method': 'dcp', 'ratio': 0.7, 'pca-samples': 200}, **options)
        (configs / f'{name}.yaml').write_text(yaml.safe_dump(block, sort_keys=False))
    # Not a row of table 1: must be ignored.
    (configs / 'other.yaml').write_text(yaml.safe_dump(dict(paper=dict(table=None, row='x'), data='nowhere.zip')))
    return configs


def reproduce_args(configs, outdir, *extra):
    return [sys.executable, str(ROOT / 'reproduce.py'), '--table', '1', '--configs', str(configs), '--outdir', str(outdir),
            '--device', 'cpu', '--n-samples', '2'] + [str(e) for e in extra]


@pytest.fixture(scope='module')
def table_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('table')
    configs = write_tiny_table(tmp)
    out = tmp / 'out'
    proc = subprocess.run(reproduce_args(configs, out), cwd=tmp, env=_env(tmp), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(tmp=tmp, configs=configs, out=out, stdout=proc.stdout)


def _final_record(run_dir, metric):
    final = sorted(run_dir.glob('network-snapshot-*.pkl'), key=lambda p: rp.snapshot_nimg(p.name))[-1]
    lines = [json.loads(x) for x in (run_dir / f'metric-{metric}.jsonl').read_text().splitlines() if x.strip()]
    return final, [r for r in lines if os.path.basename(r['snapshot_pkl']) == final.name][-1]['results']


def _png(path):
    with PIL.Image.open(path) as img:
        return np.asarray(img.convert('RGB'))


def test_two_row_table_end_to_end(table_run):
    from training import image_synthesis
    from training.checkpoints import load_network
    out, log = table_run['out'], table_run['stdout']
    md = (out / 'table1.md').read_text()
    page = (out / 'table1.html').read_text()
    assert 'reduced scale' in md.splitlines()[0] and '2 pruning latents' in md.splitlines()[0]
    assert 'not the paper' in page
    for title in ('FID', 'P', 'R', 'D', 'C'):
        assert f'| {title} paper | {title} ours | Δ{title} |' in md

    # One pruning shared by both rows (same student file in both training runs).
    students = list((out / 'students').iterdir())
    assert len(students) == 1 and (students[0] / 'student.pkl').is_file()
    assert log.count('$ python prune.py') == 1 and 'finished earlier, reused' in log
    for name, init, label, fid, precision in ROWS:
        done = json.loads((out / 'rows' / name / 'done.json').read_text())
        run_dir = out / 'rows' / name / done['run_dir']
        options = json.loads((run_dir / 'training_options.json').read_text())
        assert options['init_fn']['student'] == str(students[0] / 'student.pkl') and options['init_fn']['init'] == init
        assert options['total_kimg'] == pytest.approx(0.016)

        # Our numbers are those train.py and calc_metrics.py wrote for the last snapshot.
        final, fid_results = _final_record(run_dir, 'fid1k_full')
        _final, prdc = _final_record(run_dir, 'prdc1k_full')
        ours = fid_results['fid1k_full']
        line = next(x for x in md.splitlines() if x.startswith(f'| [`{name}`]'))
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert cells[0] == f'[`{name}`](rows/{name}/{done["run_dir"]})' and cells[1] == label
        assert cells[5:8] == [f'{fid:.2f}', f'{ours:.2f}', f'{ours - fid:+.2f}']
        assert cells[9] == f'{prdc["precision"]:.3f}'
        assert cells[8] == ('—' if precision is None else f'{precision:.3f}')
        assert cells[10] == ('—' if precision is None else f'{prdc["precision"] - precision:+.3f}')
        assert cells[18] == f'{prdc["coverage"]:.3f}' and cells[14:16] == ['—', f'{prdc["density"]:.3f}']
        assert f'href="rows/{name}/{done["run_dir"]}"' in page and label in page
        # The curve is the FID of every snapshot, read back from the run.
        snaps = sorted(run_dir.glob('network-snapshot-*.pkl'), key=lambda p: rp.snapshot_nimg(p.name))
        assert done['curve']['kimg'] == [rp.snapshot_nimg(p.name) / 1000 for p in snaps] and len(snaps) >= 3
        assert done['curve']['values'][-1] == ours

        # Its sample strip is the last snapshot's G_ema on seeds 0-7 (constant noise).
        G = load_network(str(final), verbose=False).G_ema
        expect = image_synthesis.generate_for_seeds(G, range(8), noise_mode='const')
        np.testing.assert_array_equal(_png(out / 'rows' / name / 'samples.png'), image_synthesis.image_grid([expect]))

    # Figures of the setting: curves (both rows on one plot) and the same-seed grid (teacher + 2 rows).
    curves, grid = out / 'table1' / 'curves-sample32.png', out / 'table1' / 'samples-sample32.png'
    assert 'table1/curves-sample32.png' in md and 'table1/samples-sample32.png' in page
    assert _png(curves).std() > 5
    g = _png(grid)
    assert g.shape == (3 * 64, 8 * 64, 3)  # 32 px upscaled to 64
    teacher = image_synthesis.generate_for_seeds(load_network(str(TEACHER), verbose=False).G_ema, range(8), noise_mode='const')
    np.testing.assert_array_equal(g[:64], image_synthesis.image_grid([image_synthesis.upscale_to(teacher, 64)]))
    assert 'Rows from the top: teacher; DCP-GAN (tiny); DCP-GAN + SVS (tiny).' in md
    assert 'table1/losses-sample32.png' in md and _png(out / 'table1' / 'losses-sample32.png').std() > 5


def test_killed_mid_row_rerun_finishes_with_the_same_numbers(table_run, tmp_path):
    tmp, ref = table_run['tmp'], table_run['out']
    out = tmp_path / 'out'
    shutil.copytree(ref, out)
    shutil.rmtree(out / 'rows' / 'b-dcp-svs')  # row a finished, pruning reused; row b starts from nothing
    with open(tmp_path / 'log1.txt', 'w') as log:
        proc = subprocess.Popen(reproduce_args(table_run['configs'], out), cwd=tmp, env=_env(tmp), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        try:
            while proc.poll() is None and time.time() < deadline:
                # Mid-row: a snapshot after the first, with its training state, and the row not done.
                if glob.glob(str(out / 'rows' / 'b-dcp-svs' / '*' / 'training-state-000000.*.pt')):
                    break
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / 'log1.txt').read_text()[-3000:]
    assert not (out / 'rows' / 'b-dcp-svs' / 'done.json').exists()

    proc = subprocess.run(reproduce_args(table_run['configs'], out), cwd=tmp, env=_env(tmp), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'a-dcp: finished earlier, skipped' in proc.stdout and 'resuming ' in proc.stdout
    assert '$ python prune.py' not in proc.stdout and '--resume latest' in proc.stdout
    for name in ('a-dcp', 'b-dcp-svs'):
        again = json.loads((out / 'rows' / name / 'done.json').read_text())
        first = json.loads((ref / 'rows' / name / 'done.json').read_text())
        assert again['results'] == first['results'] and again['curve'] == first['curve']
    strip = lambda md: [re.sub(r'done \([^)]*\)', 'done', x) for x in md.splitlines() if x.startswith('| [')]
    assert strip((out / 'table1.md').read_text()) == strip((ref / 'table1.md').read_text())


def _run(args, cwd, tmp):
    return subprocess.run([sys.executable, str(ROOT / 'reproduce.py')] + [str(a) for a in args], cwd=cwd, env=_env(tmp),
                          capture_output=True, text=True, timeout=120)


def test_dry_run_of_table1_real_configs(tmp_path):
    # Our own reading of the configs: the table-1 rows and every file they name.
    rows, files = {}, set()
    for path in sorted((ROOT / 'configs').glob('*.yaml')):
        data = yaml.safe_load(path.read_text())
        if (data.get('paper') or {}).get('table') == 1:
            rows[path.stem] = data
    assert len(rows) == 14
    for data in [yaml.safe_load(p.read_text()) for p in (ROOT / 'configs').glob('*.yaml')]:
        for key in ('data', 'teacher', 'face-parser'):
            if data.get(key):
                files.add(data[key])
    proc = _run(['--table', '1', '--dry-run'], tmp_path, tmp_path)
    assert proc.returncode == 1 and proc.stderr.count('\n') == 1 and proc.stderr.startswith('error: ')
    assert 'Traceback' not in proc.stderr and 'no such file' in proc.stderr

    for f in files:  # stand-ins at the configs' own paths (relative to the current folder), URLs in the cache
        target = _cache_file(tmp_path, f) if '://' in f else tmp_path / f
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b'stand-in')
    proc = _run(['--table', '1', '--dry-run'], tmp_path, tmp_path)
    assert proc.returncode == 0, proc.stderr
    log = proc.stdout
    assert len(re.findall(r'^\[\d+/14\] ', log, re.M)) == 14
    for name, data in rows.items():
        block = log[log.index(f'] {name}: '):]
        block = block[:block.index('\n[') if '\n[' in block else len(block)]
        assert f'"{data["paper"]["row"]}"' in block.splitlines()[0]
        fid = data['paper'].get('fid')
        assert (f'FID {fid:g}' if fid is not None else 'FID —') in block
        assert f'--config {ROOT}/configs/{name}.yaml' in block and '--kimg ' in block
        assert 'prune.py' in block and '--method ' + data['prune']['method'] in block
    # A DCP row and its SVS row share one pruning.
    assert 'shared with table1-ffhq256-small-dcp' in log
    assert not (tmp_path / 'runs').exists()  # nothing was run
    assert 'at the paper\'s setting' in log.splitlines()[0]

    proc = _run(['--table', '1', '--dry-run', '--dataset', 'ffhq', '--kimg-scale', '0.1', '--metrics', 'fid10k_full'],
                tmp_path, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 'kimg × 0.1, metrics fid10k_full' in proc.stdout.splitlines()[0]
    assert len(re.findall(r'^\[\d+/8\] table1-ffhq256-', proc.stdout, re.M)) == 8
    assert proc.stdout.count('--kimg 2500 --metrics fid10k_full') == 5  # the small rows (25000 kimg)
    assert proc.stdout.count('--kimg 1500 --metrics fid10k_full') == 3  # the base rows (15000 kimg)
    assert '--kimg 2500 --metrics none' in proc.stdout  # GS's sparsity training, scaled alike

    (tmp_path / 'checkpoints' / '79999_iter.pth').unlink()
    proc = _run(['--table', '1', '--dry-run'], tmp_path, tmp_path)
    assert proc.returncode == 1 and proc.stderr.count('\n') == 1
    assert f'face-parser {tmp_path}/checkpoints/79999_iter.pth: no such file' in proc.stderr


def test_bad_options_are_one_line(tmp_path):
    configs = tmp_path / 'configs'
    configs.mkdir()
    for args, message in ((['--table', '9'], 'no config'), (['--table', '1', '--rows', 'nope*'], 'matches no row'),
                          (['--table', '1', '--metrics', 'fid3k'], 'unknown metric')):
        proc = _run(args + (['--configs', ROOT / 'configs'] if args[1] != '9' else ['--configs', configs]), tmp_path, tmp_path)
        assert proc.returncode != 0 and message in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr
    helped = _run(['--help'], tmp_path, tmp_path)
    assert helped.returncode == 0 and all(o in helped.stdout for o in ('--table', '--rows', '--kimg-scale', '--dry-run', '--gpus'))


def test_row_lock_is_exclusive_and_released_when_the_holder_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, '-c', f'import sys, time; sys.path.insert(0, {str(ROOT)!r})\n'
                               'from training import reproduce_plan as rp\n'
                               f'with rp.step_lock({str(tmp_path)!r}, "row") as got:\n'
                               '    print(got, flush=True); time.sleep(60)'], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'True'
        with rp.step_lock(str(tmp_path), 'row') as got:
            assert got is False
        with rp.step_lock(str(tmp_path), 'other') as got:
            assert got is True
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with rp.step_lock(str(tmp_path), 'row') as got:
        assert got is True


def test_plan_of_the_real_table1_shares_pruning_by_what_it_computes():
    configs = rp.read_configs(str(ROOT / 'configs'))
    rows = rp.table_rows(configs, 1)
    plan = rp.make_plan(configs, rows, '/tmp/nowhere', kimg_scale=0.1)
    # Our own grouping from the YAML files: teacher (or GS's sparsity run), method, ratio, other options.
    groups = {}
    for path in sorted((ROOT / 'configs').glob('table1-*.yaml')):
        data = yaml.safe_load(path.read_text())
        if data['paper']['table'] != 1:
            continue
        prune = dict(data['prune'])
        key = (prune.pop('network', data['teacher']), prune.pop('method'), prune.pop('ratio'), tuple(sorted(prune.items())))
        groups.setdefault(key, set()).add(path.stem)
    assert sorted(map(sorted, groups.values())) == sorted(sorted(s.rows) for s in plan.prunes.values())
    by_name = {r.name: r for r in plan.rows}
    assert by_name['table1-ffhq256-small-dcp'].student == by_name['table1-ffhq256-small-dcp-svs'].student
    assert by_name['table1-ffhq256-small-dcp'].student != by_name['table1-ffhq256-small-cagan'].student
    assert by_name['table1-ffhq256-small-dcp'].kimg == 2500 and by_name['table1-ffhq256-base-dcp'].kimg == 1500
    # GS prunes the last snapshot of its sparsity-training config, which runs first as a helper.
    gs = plan.prunes[by_name['table1-ffhq256-small-gs'].prune]
    assert gs.helper == 'table1-ffhq256-small-gs-sparse' and list(plan.helpers) == [gs.helper]
    # --dataset and --rows pick rows; other --n-samples make another student.
    church = rp.select_rows(rows, dataset='church')
    assert {r.name for r in church} == {n for n in by_name if n.startswith('table1-church')} and len(church) == 6
    assert [r.name for r in rp.select_rows(rows, ['table1-ffhq256-small-dcp*'])] == ['table1-ffhq256-small-dcp-svs', 'table1-ffhq256-small-dcp']
    other = rp.make_plan(configs, rows, '/tmp/nowhere', n_samples=100)
    assert set(other.prunes).isdisjoint(plan.prunes)


def test_plan_of_ddpm_rows_uses_the_ddpm_tools():
    configs = rp.read_configs(str(ROOT / 'configs'))
    rows = rp.table_rows(configs, 3)
    if not rows:
        pytest.skip('no Table 3 configs in this checkout')
    settings = dnnlib.EasyDict(gpus=None, device=None, snap=None)
    plan = rp.make_plan(configs, rows, '/tmp/nowhere')
    for row in plan.rows:
        data = yaml.safe_load(open(row.config.config))
        assert data.get('family') == 'ddpm'
        assert row.trains == bool(data.get('student') or data.get('prune'))
        if not row.trains:  # "Pretrained": the teacher is evaluated, nothing is pruned or trained
            assert row.prune is None
            continue
        step = plan.prunes[row.prune]
        cmd = rp.prune_command(step, step.network, settings)
        assert cmd[2:4] == ['ddpm', '--network'] and '--method' not in cmd and cmd[cmd.index('--ratio') + 1] == f'{data["prune"]["ratio"]:g}'
        assert ('--svs' in cmd) == ('svs' in data['prune']) and cmd[cmd.index('--data') + 1] == rp.resolve_path(data['data'])
        train = rp.train_command(row, settings, student=row.student)
        assert train[1].endswith('train_ddpm.py') and train[train.index('--network') + 1] == os.path.join(step.dir, 'student')
        assert '--metrics' not in train
        ev = rp.metrics_command('snap.pkl', row.metrics, row.data, settings, row.config)
        assert ev[ev.index('--ddim-steps') + 1] == str(data.get('sample-steps', 100))
