"""configs/: every StyleGAN config dry-runs unchanged (stand-in files at its own paths) and resolves to
the recipe that configs/README.md, the table of record, lists for it; every row agrees with the
paper row it declares.

StyleGAN configs are selected by their ``cfg`` key (a StyleGAN preset); other families' configs
(e.g. DDPM Table 3) are left to their own tests. The recipe is read from the dry run's printed
options, not from the YAML, so a train.py default that drifts from the table fails here.
"""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import dnnlib
import prune
import train
from pruning import channels
from training import config_meta, presets, student_init
from training import lpips as lpips_mod
from training.checkpoints import save_snapshot
from training.networks_stylegan2 import Discriminator
from training.sample_data import make_sample_dataset

from test_lpips import make_lin_state, make_vgg_state
from test_pruning import random_masks, tiny_sg2, tiny_sg3

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'configs' / 'README.md'


def _load(path):
    return yaml.safe_load(Path(path).read_text())


def stylegan_configs():
    """configs/*.yaml whose ``cfg`` is a StyleGAN preset (the family this test covers)."""
    found = []
    for path in sorted((ROOT / 'configs').glob('*.yaml')):
        data = _load(path)
        if isinstance(data, dict) and data.get('cfg') in presets.PRESET_NAMES and data.get('cfg') != 'auto':
            found.append(path)
    return found


CONFIGS = stylegan_configs()

# ---------------------------------------------------------------------------------------------
# The table of record.

NUMBER_COLUMNS = ('FID', 'P', 'R', 'D', 'C', 'SSIM')
PAPER_COLUMN_KEYS = dict(FID='fid', P='precision', R='recall', D='density', C='coverage', SSIM='ssim')
RECIPE_COLUMNS = ('teacher', 'prune', 'mask', 'init', 'SVS', 'losses', 'batch', 'lr G/D', 'betas', 'gamma',
                  'EMA', 'kimg', 'precision', 'mirror', 'aug')


def _cells(line):
    """The cells of a Markdown table line; ``\\|`` is a literal pipe inside a cell."""
    inner = line.strip()[1:-1] if line.strip().endswith('|') else line.strip()[1:]
    return [c.strip().replace('\\|', '|') for c in re.split(r'(?<!\\)\|', inner)]


def readme_rows():
    """{config name: {column: cell}} from every table of README.md whose first column is ``config``."""
    rows, header = {}, None
    for line in README.read_text().splitlines():
        if not line.startswith('|'):
            header = None
            continue
        cells = _cells(line)
        if cells[0] == 'config':
            header = cells
            continue
        if header is None or set(''.join(cells)) <= set('-: '):
            continue
        m = re.match(r'\[`([^`]+)`\]\(([^)]+)\.yaml\)', cells[0])
        assert m and m.group(1) == m.group(2), f'README row without a config link: {line}'
        assert len(cells) == len(header), f'{m.group(1)}: {len(cells)} cells, the header has {len(header)}'
        assert m.group(1) not in rows, f'{m.group(1)} listed twice'
        rows[m.group(1)] = dict(zip(header, cells))
    return rows

# ---------------------------------------------------------------------------------------------
# What a dry run prints, turned into table cells.


def _num(v):
    return f'{v:g}'


def _precision(kwargs):
    p = student_init.precision_of(kwargs)
    return f'fp16 res {p["num_fp16_res"]}, clamp {p["conv_clamp"]}' if p['num_fp16_res'] else f'fp32, clamp {p["conv_clamp"]}'


def parse_dry_run(output):
    c = json.loads(output[output.index('{'):output.index('\nOutput directory')], object_hook=dnnlib.EasyDict)
    lines = dict(re.findall(r'(?m)^([A-Z][A-Za-z ]+):\s+(.*)$', output))
    meta = dnnlib.EasyDict(paper=json.loads(lines['Paper row']) if 'Paper row' in lines else None,
                           prune=json.loads(lines['Student made by']) if 'Student made by' in lines else None)
    return c, meta, lines


def resolved_recipe(c, meta):
    """The recipe columns of the table, from the resolved training options of a dry run."""
    terms = {t['class_name'].rsplit('.', 1)[-1]: t for t in c.loss_kwargs.terms}
    hooks = [h['class_name'].rsplit('.', 1)[-1] for h in c.get('step_hooks') or []]
    init = c.init_fn['init']
    dt = terms.get('DistillTerm')
    losses = []
    if dt is not None:
        for key, label in (('l1_weight', 'L1'), ('lpips_weight', 'LPIPS'), ('ld_weight', 'LD'), ('vgg_weight', 'GS-VGG')):
            if dt[key]:
                losses.append(f'{label} {_num(dt[key])}' + (f' (offset {_num(dt["ld_offset"])})' if key == 'ld_weight' else ''))
    if 'StyleSparsityTerm' in terms:
        losses.append(f'style L1 {_num(terms["StyleSparsityTerm"]["eta"])}')
    svs_fn = c.init_fn['svs_fn'] if (init == 'svs' or 'PeriodicSVSHook' in hooks) else '—'
    if 'PeriodicSVSHook' in hooks:
        every = next(h for h in c.step_hooks if h['class_name'].endswith('PeriodicSVSHook'))['every_kimg']
        svs_fn += f', again every {_num(every)} kimg (first half)'
    teacher = c.extra_networks['teacher']
    precisions = {_precision(c.G_kwargs), _precision(c.D_kwargs), _precision(teacher['precision'])}
    prune_cell = '—'
    if meta.prune is not None:
        prune_cell = f'{meta.prune["method"]} {_num(meta.prune["ratio"])}'
        if meta.prune.get('mask', 'uniform') != 'uniform':
            prune_cell += f', mask {meta.prune["mask"]}'
    b1, b2 = c.G_opt_kwargs['betas']
    assert c.D_opt_kwargs['betas'] == c.G_opt_kwargs['betas']
    return {
        'teacher': f'`{teacher["path"].rsplit("/", 1)[-1]}`',
        'prune': prune_cell,
        'mask': dt['mask'] if dt is not None else '—',
        'init': init + (', D from the teacher' if c.init_fn['teacher_d'] else '')
                + (', spectral norm every step' if 'SpectralNormHook' in hooks else ''),
        'SVS': svs_fn,
        'losses': ', '.join(losses),
        'batch': f'{c.batch_size}/{c.batch_gpu}',
        'lr G/D': f'{_num(c.G_opt_kwargs["lr"])}/{_num(c.D_opt_kwargs["lr"])}',
        'betas': f'{_num(b1)}, {_num(b2)}',
        'gamma': _num(c.loss_kwargs['r1_gamma']),
        'EMA': f'{_num(c.ema_kimg)} kimg',
        'kimg': _num(c.total_kimg),
        'precision': precisions.pop() if len(precisions) == 1 else 'G/D/teacher differ',
        'mirror': str(int(c.training_set_kwargs['xflip'])),
        'aug': 'noaug' if c.augment_kwargs is None else ('ada' if c.ada_target is not None else f'fixed p={_num(c.augment_p)}'),
    }


def _check_paper_cells(name, row, paper):
    assert row['table'] == ('—' if paper['table'] is None else str(paper['table'])), name
    assert row['row'] == paper['row'], name
    assert row['setting'] == paper['setting'], name
    for col in NUMBER_COLUMNS:
        value = paper.get(PAPER_COLUMN_KEYS[col])
        cell = row[col]
        if value is None:
            assert cell == '—', f'{name}: {col} is {cell} in the README, null in the config'
        else:
            assert cell != '—' and abs(float(cell) - value) < 1e-9, f'{name}: {col} is {cell} in the README, {value} in the config'

# ---------------------------------------------------------------------------------------------
# Stand-ins for every file a config names, at the paths it names (32 px, random weights).


@pytest.fixture(scope='module')
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp('config_root')
    cache = root / 'cache'
    downloads = cache / 'downloads'
    downloads.mkdir(parents=True)
    zip_path = root / 'sample32.zip'
    make_sample_dataset(str(zip_path), num_images=8, resolution=32, seed=0)
    # Built as the converters write them (fp32, no clamp): the runs' precision must come from the config.
    t2 = tiny_sg2(channel_base=256, channel_max=16)
    t3 = tiny_sg3()
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16,
                      num_fp16_res=0, conv_clamp=None)
    s2 = channels.slice_generator(t2, random_masks(t2, 0.5, seed=2))
    s3 = channels.slice_generator(t3, random_masks(t3, 0.5, seed=3))
    files = {}
    for config in CONFIGS:
        cfg = _load(config)
        sg3 = str(cfg['cfg']).startswith('stylegan3')
        files[cfg['data']] = ('data', None)
        files[cfg['teacher']] = ('teacher', sg3)
        if cfg.get('student'):
            files[cfg['student']] = ('student', sg3)
        if cfg.get('face-parser'):
            files[cfg['face-parser']] = ('bytes', None)
    for where, (kind, sg3) in files.items():
        path = downloads / dnnlib.util.url_cache_name(where) if dnnlib.util.is_url(where) else root / where
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == 'data':
            shutil.copyfile(zip_path, path)
        elif kind == 'teacher':
            save_snapshot(str(path), dict(G=t3, G_ema=t3) if sg3 else dict(G=t2, G_ema=t2, D=D))
        elif kind == 'student':
            G, T = (s3, t3) if sg3 else (s2, t2)
            save_snapshot(str(path), dict(G=G, G_ema=G, D=None if sg3 else D,
                                          pruning=dict(teacher_widths=channels.group_widths(T), svs=None)))
        else:
            path.write_bytes(b'stand-in: dry runs only check that the file opens')
    torch.save(make_vgg_state(), downloads / dnnlib.util.url_cache_name(lpips_mod.VGG16_URL))
    torch.save(make_lin_state(), downloads / dnnlib.util.url_cache_name(lpips_mod.LPIPS_VGG_URL))
    return dnnlib.EasyDict(root=root, cache=cache)


def dry_run(standins, monkeypatch, config, *extra):
    monkeypatch.chdir(standins.root)
    monkeypatch.setenv('SVS_CACHE_DIR', str(standins.cache))
    monkeypatch.setenv('SVS_OFFLINE', '1')
    result = CliRunner().invoke(train.main, ['--config', str(config), '--outdir', 'runs', '--dry-run', *extra])
    assert result.exit_code == 0, result.output
    assert not (standins.root / 'runs').exists()
    return result.output

# ---------------------------------------------------------------------------------------------


def test_every_config_has_one_row_of_record():
    rows = readme_rows()
    names = [p.stem for p in CONFIGS]
    assert names and all(n in rows for n in names), sorted(set(names) - set(rows))
    stylegan_rows = [n for n in rows if (ROOT / 'configs' / f'{n}.yaml').is_file() and
                     (ROOT / 'configs' / f'{n}.yaml') in CONFIGS]
    assert sorted(stylegan_rows) == sorted(names)
    for n in rows:  # every row links an existing file
        assert (ROOT / 'configs' / f'{n}.yaml').is_file(), n
    for table in (1, 2, 4, 5, 6, 7, 8):  # every StyleGAN table of the paper has rows
        assert any(_load(p)['paper']['table'] == table for p in CONFIGS), table
    for p in CONFIGS:  # names say the table: tableN-* (N or a helper step without a row), extra-* (none)
        table = _load(p)['paper']['table']
        assert (table is None) if p.stem.startswith('extra-') else re.match(rf'table{table or ""}\d*[a-z]?-', p.stem), p.stem


@pytest.mark.parametrize('config', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_dry_run_resolves_the_recipe_of_record(standins, monkeypatch, config):
    cfg = _load(config)
    output = dry_run(standins, monkeypatch, config)
    c, meta, lines = parse_dry_run(output)
    row = readme_rows()[config.stem]
    # The metadata blocks reach the dry run unchanged, and match the table.
    assert meta.paper == cfg['paper'] and meta.prune == cfg.get('prune')
    _check_paper_cells(config.stem, row, meta.paper)
    recipe = resolved_recipe(c, meta)
    for col in RECIPE_COLUMNS:
        assert row[col] == recipe[col], f'{config.stem}: {col}: README says {row[col]!r}, the dry run resolves {recipe[col]!r}'
    # Precision comes from the config (the stand-ins were fp32 without clamp): the official 4 / 256.
    assert lines['G precision'] == lines['D precision'] == lines['Teacher precision'] == \
        'fp16 in the 4 highest-resolution blocks, conv_clamp 256'
    assert c.extra_networks['teacher']['precision'] == dict(num_fp16_res=4, conv_clamp=256)


@pytest.mark.parametrize('config', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_agrees_with_the_declared_row(config):
    """A config that contradicts its own row (label, table, method) is rejected here, not at run time."""
    cfg = _load(config)
    paper, pr = config_meta.check_paper(cfg['paper'], config.name), cfg.get('prune')
    label, table = paper['row'], paper['table']
    sg3 = cfg['cfg'].startswith('stylegan3')
    prune_options = {p.name.replace('_', '-') for p in prune.main.params} | {p.name for p in prune.main.params}
    if pr is not None:
        config_meta.check_prune(pr, config.name)
        assert set(pr) <= prune_options, f'{config.stem}: not prune.py options: {set(pr) - prune_options}'
        assert not pr.get('torgb-compensation') and not pr.get('torgb_compensation'), \
            f'{config.stem}: toRGB compensation is ours, not the official recipe'
        assert pr['ratio'] == (0.9 if '90 %' in label else 0.7), config.stem
    else:
        assert 'student' not in cfg, config.stem
    init = cfg.get('init', 'pruned')
    scaled = '+ SVS' in label or '(scaled)' in label or label.startswith('SVS') or label.startswith('f(σ)') or \
        label[:3] in ('(a)', '(b)', '(c)', '(e)')
    assert (init == 'svs') == scaled, f'{config.stem}: init {init} for row "{label}"'
    if 'StyleKD' in label:
        assert init == ('he' if 'He' in label else 'random'), config.stem
    if 'CAGAN' in label:
        assert cfg['distill'] == 'cagan' and pr['method'] == 'cagan' and cfg.get('teacher-d') is True, config.stem
    elif 'GS' in label:
        assert cfg['distill'] in ('gs', 'gs-sparse') and (pr is None or pr['method'] == 'gs'), config.stem
    else:
        assert cfg['distill'] == 'stylekd' and pr['method'] == 'dcp', config.stem
    if table == 5:
        fn = {'√σ': 'sqrt', 'log(σ + 1)': 'log1p', '|log σ|': 'abslog', 'σ^(1/4)': 'pow:0.25'}[label.split('= ', 1)[1].replace(' (ours)', '')]
        assert cfg['svs-fn'] == fn, config.stem
    assert cfg['mirror'] == (0 if sg3 else 1), f'{config.stem}: the official effective --mirror'
    assert not cfg.get('fp32'), f'{config.stem}: the official runs use fp16 res 4, clamp 256'
    assert cfg['desc'] == config.stem


def test_config_metadata_bad_input_is_one_line(standins, monkeypatch, tmp_path):
    base = _load(ROOT / 'configs' / 'table1-ffhq256-small-dcp-svs.yaml')
    cases = [(dict(paper=dict(base['paper'], fid='six')), 'paper: fid must be a number'),
             (dict(paper=dict(base['paper'], table=1.5)), 'paper: table must be a positive integer'),
             (dict(paper=dict(base['paper'], gpus=4)), 'paper: unknown keys gpus'),
             (dict(paper='row 3'), 'paper: expected a mapping'),
             (dict(prune=dict(method='dcp')), 'prune: needs "ratio"'),
             (dict(prune=dict(method='dcp', ratio=1.5)), 'prune: ratio must be a number in (0, 1)'),
             (dict(prune=dict(method='dcp', ratio=0.7, mask=['face'])), 'prune: mask must be a single value')]
    for change, needle in cases:
        path = tmp_path / 'bad.yaml'
        path.write_text(yaml.safe_dump(dict(base, **change)))
        monkeypatch.chdir(standins.root)
        result = CliRunner().invoke(train.main, ['--config', str(path), '--outdir', 'runs', '--dry-run'])
        errors = [line for line in result.output.splitlines() if line.startswith('error:')]
        assert result.exit_code == 1 and len(errors) == 1 and needle in errors[0], (needle, result.output)
        assert 'Traceback' not in result.output


def test_fp32_option_and_no_metadata(standins, monkeypatch, tmp_path):
    """--fp32 on the command line wins over the config; a config without blocks prints none."""
    config = ROOT / 'configs' / 'table1-ffhq256-base-dcp.yaml'
    _c, _meta, lines = parse_dry_run(dry_run(standins, monkeypatch, config, '--fp32', '1'))
    assert lines['G precision'] == lines['D precision'] == lines['Teacher precision'] == 'fp32, conv_clamp None'
    plain = tmp_path / 'plain.yaml'
    plain.write_text(yaml.safe_dump({k: v for k, v in _load(config).items() if k not in ('paper', 'prune')}))
    output = dry_run(standins, monkeypatch, plain)
    assert 'Paper row:' not in output and 'Student made by:' not in output
    assert 'G precision:         fp16 in the 4 highest-resolution blocks, conv_clamp 256' in output
