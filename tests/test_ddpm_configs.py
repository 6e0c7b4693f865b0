"""configs/table3-*.yaml: one per Table 3 row, schema-checked, one README row each, dry-run resolves them."""
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from training import config_meta
from training import sample_data

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / 'configs').glob('table3-*.yaml'))
HEADER = ('| config | table | row | setting | FID | P | R | D | C | SSIM | teacher | prune | mask | init | SVS | losses | '
          'batch | lr G/D | betas | gamma | EMA | kimg | precision | mirror | aug |')


def _load(path):
    return yaml.safe_load(Path(path).read_text())


def _num(v):
    return '—' if v is None else f'{v:g}'


def _train_ddpm(*args):
    """train_ddpm.py in this process (click's runner) -> (exit code, stdout, stderr)."""
    from click.testing import CliRunner
    sys.path.insert(0, str(ROOT))
    import train_ddpm
    result = CliRunner().invoke(train_ddpm.main, list(args))
    return result.exit_code, result.stdout, result.stderr


def row_cells(name, cfg):
    """The README row of a Table 3 config, cell by cell (the format at the top of configs/README.md)."""
    p, pr = cfg['paper'], cfg.get('prune')
    trained = pr is not None
    cells = [f'[`{name}`]({name}.yaml)', str(p['table']), p['row'], p['setting']]
    cells += [_num(p.get(k)) for k in ('fid', 'precision', 'recall', 'density', 'coverage', 'ssim')]
    cells += [f'`{os.path.basename(cfg["teacher"])}`']
    if trained:
        cells += [f'{pr["method"]} {pr["ratio"]:g} ({pr["importance"]}, thr {pr["thr"]:g}, batch {pr["batch"]}, {pr["rounding"]} rounding)',
                  '—', 'svs' if pr.get('svs') else 'pruned',
                  f'{pr["svs"]}, GroupNorm reset' if pr.get('svs') and pr.get('svs-reset-norm') else (pr.get('svs') or '—'),
                  'eps MSE (sum over pixels)', f'{cfg["batch"]}/{cfg["batch-gpu"]}', f'{cfg["lr"]:g}/—', '0.9, 0.999', '—',
                  f'{cfg["ema-beta"]:g}/step', str(cfg['kimg']), 'fp32', str(cfg['mirror']), '—']
    else:
        cells += ['—'] * 14
    return cells


def readme_rows():
    text = (ROOT / 'configs' / 'README.md').read_text()
    section = text.split('## Table 3:', 1)[1].split('\n## ', 1)[0]
    lines = [l for l in section.splitlines() if l.startswith('|')]
    assert lines[0] == HEADER
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip('|').split(' | ')]
        rows[re.search(r'`([^`]+)`', cells[0]).group(1)] = cells
    return rows


def test_one_config_per_row_schema_and_readme():
    assert len(CONFIGS) == 14  # 2 settings x (pretrained + Diff-Prune 30/50/70 with and without SVS)
    rows = readme_rows()
    assert sorted(rows) == sorted(p.stem for p in CONFIGS)
    for path in CONFIGS:
        cfg = _load(path)
        assert cfg['family'] == 'ddpm'
        paper = config_meta.check_paper(cfg['paper'], path.name)
        assert paper.table == 3
        if 'prune' in cfg:
            config_meta.check_prune(cfg['prune'], path.name)
            ratio = cfg['prune']['ratio']
            assert path.stem.endswith(f'diffprune{int(ratio * 100)}' + ('-svs' if cfg['prune'].get('svs') else ''))
            # Length: the best-FID checkpoints of Table 3, in steps x batch.
            steps = {('cifar10', 0.3): 160, ('cifar10', 0.5): 360, ('cifar10', 0.7): 600,
                     ('celeba64', 0.3): 100, ('celeba64', 0.5): 200, ('celeba64', 0.7): 240}[(paper.setting, ratio)]
            assert cfg['kimg'] == steps * cfg['batch'] and cfg['batch'] == {'cifar10': 128, 'celeba64': 96}[paper.setting]
            assert cfg['skip-type'] == {'cifar10': 'quad', 'celeba64': 'uniform'}[paper.setting]
            assert cfg['prune']['thr'] == {'cifar10': 0.05, 'celeba64': 0}[paper.setting]
        assert rows[path.stem] == row_cells(path.stem, cfg), path.stem


def test_dry_run_resolves_the_recipe(tmp_path, monkeypatch):
    for name, res in (('cifar10-32x32', 32), ('celeba-64x64', 64)):
        os.makedirs(tmp_path / 'datasets', exist_ok=True)
        sample_data.make_sample_dataset(str(tmp_path / 'datasets' / f'{name}.zip'), num_images=2, resolution=res)
    picks = [ROOT / 'configs' / 'table3-cifar10-diffprune30-svs.yaml', ROOT / 'configs' / 'table3-celeba64-diffprune70.yaml']
    for path in picks:
        cfg = _load(path)
        monkeypatch.chdir(tmp_path)
        code, out, err = _train_ddpm('--outdir', 'runs', '--config', str(path), '--gpus', '4', '--dry-run')
        assert code == 0, err[-1500:]
        resolved = json.loads(out[out.index('{\n'):out.index('\n}') + 2])
        assert resolved['network'] == str(tmp_path / cfg['student'])
        assert (resolved['batch_size'], resolved['batch_gpu'], resolved['total_kimg']) == (cfg['batch'], cfg['batch-gpu'], cfg['kimg'])
        assert (resolved['lr'], resolved['ema_beta'], resolved['dropout'], resolved['grad_clip']) == (2e-4, 0.9999, 0.1, 1.0)
        assert resolved['skip_type'] == cfg['skip-type'] and 'Paper row:' in out
        assert not (tmp_path / 'runs').exists()
    code, _out, err = _train_ddpm('--outdir', 'runs', '--config', str(ROOT / 'configs' / 'table3-cifar10-pretrained.yaml'))
    assert code != 0 and 'no student' in err


@pytest.mark.parametrize('bad', [{'paper': {'table': 'three', 'row': 'x'}}, {'lr_g': 1}, {'family': 'stylegan'}])
def test_bad_config_is_one_line(tmp_path, bad):
    cfg = dict(_load(ROOT / 'configs' / 'table3-cifar10-diffprune30.yaml'), **bad)
    path = tmp_path / 'bad.yaml'
    path.write_text(yaml.safe_dump(cfg))
    code, _out, err = _train_ddpm('--outdir', str(tmp_path / 'runs'), '--config', str(path), '--dry-run')
    assert code == 1 and err.count('\n') == 1 and err.startswith('error: ') and 'bad.yaml' in err
