"""Bad input through every CLI: non-zero exit, one ``error`` line naming the problem, no traceback,
no file the user did not ask for.

One table row per bad input of the robustness issue (NaN options, unwritable or not-a-directory
paths, directories given as files, RGBA/LA datasets, binary configs, unknown devices, unconditional
networks given --class, a dataset converted onto itself, doctored safetensors files, a full disk).
Disk-full and read-only rows use small tmpfs mounts and are skipped, with the reason, where this
process cannot mount one. The CLIs run in-process through click's runner. Then the run-folder
behaviours: finished runs stay finished, stale temporaries go, one process per run folder.
"""
import json
import os
import shutil
import subprocess

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dnnlib
from training import checkpoints, networks_stylegan2, run_folder
from training.sample_data import make_sample_dataset

TRAIN_TINY = ['--cfg', 'cifar', '--cbase', '256', '--cmax', '32', '--map-depth', '2', '--mbstd-group', '2',
              '--batch', '4', '--batch-gpu', '2', '--tick', '0.004', '--snap', '1', '--metrics', 'none',
              '--device', 'cpu', '--grid', '2x2', '--workers', '0', '--aug', 'noaug']


def _mains():
    import calc_metrics
    import dataset_tool
    import generate
    import legacy
    import pipeline
    import prune
    import train
    return dict(train=train.main, prune=prune.main, generate=generate.main, legacy=legacy.main,
                dataset_tool=dataset_tool.main, calc_metrics=calc_metrics.main, pipeline=pipeline.main)


def _files(root):
    return {str(p.relative_to(root)) for p in root.rglob('*') if p.is_file()} if root.exists() else set()


def _mount_tmpfs(path, options):
    path.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)], capture_output=True, text=True)
    except OSError as e:  # no mount program
        return f'cannot run mount ({e})'
    if proc.returncode != 0:
        return (proc.stderr or proc.stdout or 'mount failed').strip().splitlines()[0]
    return None


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('bad')
    e = dnnlib.EasyDict(tmp=tmp)
    e.data = tmp / 'sample32.zip'
    make_sample_dataset(str(e.data), num_images=8, resolution=32, seed=0)
    for mode, name in [('RGBA', 'rgba'), ('LA', 'la')]:
        folder = tmp / name
        folder.mkdir()
        for i in range(4):
            pixels = np.random.RandomState(i).randint(0, 255, (32, 32, len(mode)), dtype=np.uint8)
            PIL.Image.fromarray(pixels, mode).save(folder / f'{i}.png')
        e[name] = folder
    e.a_file = tmp / 'a_file.txt'
    e.a_file.write_text('not a folder\n')
    e.a_dir = tmp / 'a_dir'
    e.a_dir.mkdir()
    e.binary_config = tmp / 'config.yaml'
    e.binary_config.write_bytes(bytes(range(128, 256)) * 8)
    e.unknown_config = tmp / 'unknown.yaml'
    e.unknown_config.write_text('kimg: 1\nno_such_option: 2\n')

    # Networks: RGB and grayscale, unconditional.
    def generator(channels):
        return networks_stylegan2.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=channels,
                                            mapping_kwargs=dict(num_layers=1),
                                            synthesis_kwargs=dict(channel_base=64, channel_max=8)).eval()
    G = generator(3)
    e.net = tmp / 'net.pkl'
    checkpoints.save_snapshot(str(e.net), dict(G=G, D=None, G_ema=G, training_set_kwargs=None))
    e.gray_net = tmp / 'gray.pkl'
    G1 = generator(1)
    checkpoints.save_snapshot(str(e.gray_net), dict(G=G1, D=None, G_ema=G1, training_set_kwargs=None))
    export = tmp / 'net.safetensors'
    checkpoints.export_weights(dict(G_ema=G), str(export))
    data = export.read_bytes()
    n = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8:8 + n])
    name = 'G_ema.mapping.fc0.weight'

    def doctored(edit, fname, body=None):
        h = json.loads(json.dumps(header))
        edit(h)
        raw = json.dumps(h).encode()
        raw += b' ' * (-len(raw) % 8)
        path = tmp / fname
        path.write_bytes(len(raw).to_bytes(8, 'little') + raw + (data[8 + n:] if body is None else body))
        return path
    e.st_huge = doctored(lambda h: h[name].update(shape=[1 << 20, 1 << 19]), 'huge.safetensors')
    e.st_dtype = doctored(lambda h: h[name].update(dtype='I32'), 'dtype.safetensors')
    begin, end = header[name]['data_offsets']
    body = bytearray(data[8 + n:])
    body[begin:end] = np.full((end - begin) // 4, np.nan, dtype=np.float32).tobytes()
    e.st_nan = doctored(lambda h: None, 'nan.safetensors', bytes(body))

    # Small file systems: full, and read-only.
    e.full = tmp / 'full'
    e.full_skip = _mount_tmpfs(e.full, 'size=256k')
    if e.full_skip is None:
        with open(e.full / 'filler', 'wb') as f:
            try:
                f.write(b'\0' * (1 << 20))
                f.flush()
            except OSError:
                pass
    e.ro = tmp / 'ro'
    e.ro_skip = _mount_tmpfs(e.ro, 'size=64k,ro')
    yield e
    for mounted, skip in [(e.full, e.full_skip), (e.ro, e.ro_skip)]:
        if skip is None:
            subprocess.run(['umount', str(mounted)], check=False)


# (id, cli, args (callable of env and an output folder), text the error line must contain, mount needed)
ROWS = [
    ('train-kimg-nan', 'train', lambda e, o: ['--outdir', o, '--data', e.data, '--kimg', 'nan'], 'finite', None),
    ('train-glr-nan', 'train', lambda e, o: ['--outdir', o, '--data', e.data, '--glr', 'nan'], 'finite', None),
    ('train-gamma-nan', 'train', lambda e, o: ['--outdir', o, '--data', e.data, '--gamma', 'nan'], 'finite', None),
    ('train-tick-inf', 'train', lambda e, o: ['--outdir', o, '--data', e.data, '--tick', 'inf'], 'finite', None),
    ('train-binary-config', 'train', lambda e, o: ['--outdir', o, '--config', e.binary_config], 'not a text file', None),
    ('train-rgba', 'train', lambda e, o: ['--outdir', o, '--data', e.rgba, '--kimg', '0.004'] + TRAIN_TINY, 'RGBA', None),
    ('train-la', 'train', lambda e, o: ['--outdir', o, '--data', e.la, '--kimg', '0.004'] + TRAIN_TINY, 'grayscale + alpha', None),
    ('train-outdir-under-file', 'train', lambda e, o: ['--outdir', e.a_file / 'runs', '--data', e.data, '--kimg', '0.004'] + TRAIN_TINY,
     'not a directory', None),
    ('train-outdir-readonly', 'train', lambda e, o: ['--outdir', e.ro / 'runs', '--data', e.data, '--kimg', '0.004'] + TRAIN_TINY,
     'Read-only', 'ro'),
    ('train-disk-full', 'train', lambda e, o: ['--outdir', e.full / 'runs', '--data', e.data, '--kimg', '0.004'] + TRAIN_TINY,
     'no space left', 'full'),
    ('prune-alpha-nan', 'prune', lambda e, o: ['--network', e.net, '--outdir', o, '--alpha', 'nan'], 'finite', None),
    ('prune-ratio-nan', 'prune', lambda e, o: ['--network', e.net, '--outdir', o, '--ratio', 'nan'], 'finite', None),
    ('prune-device-tpu', 'prune', lambda e, o: ['--network', e.net, '--outdir', o, '--method', 'l1', '--device', 'tpu'], 'tpu', None),
    ('prune-outdir-file', 'prune', lambda e, o: ['--network', e.net, '--outdir', e.a_file, '--method', 'l1', '--device', 'cpu'],
     'not a directory', None),
    ('prune-disk-full', 'prune', lambda e, o: ['--network', e.net, '--outdir', e.full / 'prune', '--method', 'l1', '--device', 'cpu'],
     'no space left', 'full'),
    ('generate-trunc-nan', 'generate', lambda e, o: ['--network', e.net, '--outdir', o, '--trunc', 'nan'], 'finite', None),
    ('generate-class-uncond', 'generate', lambda e, o: ['--network', e.net, '--outdir', o, '--class', '3'], 'unconditional', None),
    ('generate-grid-dir', 'generate', lambda e, o: ['--network', e.net, '--grid', e.a_dir], 'is a directory', None),
    ('generate-outdir-file', 'generate', lambda e, o: ['--network', e.net, '--outdir', e.a_file], 'not a directory', None),
    ('generate-network-dir', 'generate', lambda e, o: ['--network', e.a_dir, '--outdir', o], 'is a directory', None),
    ('generate-disk-full', 'generate', lambda e, o: ['--network', e.net, '--grid', e.full / 'grid.png'], 'no space left', 'full'),
    ('generate-safetensors-2tb', 'generate', lambda e, o: ['--network', e.st_huge, '--outdir', o], 'corrupt safetensors', None),
    ('generate-safetensors-dtype', 'generate', lambda e, o: ['--network', e.st_dtype, '--outdir', o], 'int32', None),
    ('generate-safetensors-nan', 'generate', lambda e, o: ['--network', e.st_nan, '--outdir', o], 'NaN', None),
    ('legacy-dest-dir', 'legacy', lambda e, o: ['--source', e.net, '--dest', e.a_dir], 'is a directory', None),
    ('legacy-source-dir', 'legacy', lambda e, o: ['--source', e.a_dir, '--dest', o / 'x.pkl'], 'is a directory', None),
    ('legacy-disk-full', 'legacy', lambda e, o: ['--source', e.net, '--dest', e.full / 'x.pkl'], 'no space left', 'full'),
    ('dataset-onto-itself', 'dataset_tool', lambda e, o: ['--source', e.data, '--dest', e.data], 'same', None),
    ('dataset-dest-under-file', 'dataset_tool', lambda e, o: ['--source', e.data, '--dest', e.a_file / 'd.zip'], 'not a directory', None),
    ('dataset-disk-full', 'dataset_tool', lambda e, o: ['--source', e.data, '--dest', e.full / 'd.zip'], 'no space left', 'full'),
    ('metrics-network-dir', 'calc_metrics', lambda e, o: ['--network', e.a_dir, '--device', 'cpu'], 'is a directory', None),
    ('pipeline-unknown-key', 'pipeline', lambda e, o: ['--outdir', o, '--config', e.unknown_config], 'unknown keys', None),
]


@pytest.mark.parametrize('row', ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line(env, row):
    row_id, cli, make_args, needle, mount = row
    if mount is not None and env[f'{mount}_skip'] is not None:
        pytest.skip(f'cannot mount a {mount} tmpfs here: {env[f"{mount}_skip"]}')
    out = env.tmp / 'out' / row_id
    before = _files(env.tmp)
    data_before = env.data.read_bytes() if cli == 'dataset_tool' else None
    result = CliRunner().invoke(_mains()[cli], [str(a) for a in make_args(env, out)])
    text = result.stdout + result.stderr
    assert result.exit_code not in (0, None), text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert 'Traceback' not in text
    errors = [line for line in result.stderr.splitlines() if line.lower().startswith('error')]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert _files(env.tmp) == before  # nothing written, no temporary left (also not on the full disk)
    if data_before is not None:
        assert env.data.read_bytes() == data_before


def test_grid_of_gray_and_rgb_networks(env, tmp_path):
    grid = tmp_path / 'grid.png'
    result = CliRunner().invoke(_mains()['generate'], ['--network', str(env.net), '--network', str(env.gray_net),
                                                        '--seeds', '0-1', '--grid', str(grid)])
    assert result.exit_code == 0, result.stdout + result.stderr
    image = np.asarray(PIL.Image.open(grid))
    assert image.shape == (16, 16, 3)
    gray_row = image[8:]
    assert (gray_row[..., 0] == gray_row[..., 1]).all() and (gray_row[..., 1] == gray_row[..., 2]).all()


def test_exit_codes_of_the_cli_wrapper():
    @dnnlib.util.exit_on_user_error
    def interrupted():
        raise KeyboardInterrupt

    @dnnlib.util.exit_on_user_error
    def full():
        raise OSError(28, 'No space left on device')
    with pytest.raises(SystemExit) as info:
        interrupted()
    assert info.value.code == 130
    with pytest.raises(SystemExit) as info:
        full()
    assert info.value.code == 1


def test_atomic_open_leaves_nothing_when_close_fails(env):
    if env.full_skip is not None:
        pytest.skip(f'cannot mount a tmpfs here: {env.full_skip}')
    before = _files(env.full)
    with pytest.raises(OSError) as info:
        with dnnlib.util.atomic_open(str(env.full / 'big.bin'), 'wb') as f:
            f.write(b'x' * 4000)  # fits the write buffer: the failure comes at close
    assert info.value.filename == str(env.full / 'big.bin')
    assert _files(env.full) == before


def test_strict_json_and_stale_temporaries(tmp_path):
    assert json.loads(json.dumps(dnnlib.util.strict_json(dict(a=[1.0, float('nan')], b=float('inf'))), allow_nan=False)) \
        == dict(a=[1.0, None], b=None)
    (tmp_path / '.network-snapshot-000004.pkl.ab_cd123.tmp').write_bytes(b'half')
    (tmp_path / 'keep.tmp').write_bytes(b'not ours')
    (tmp_path / 'stats.jsonl').write_text('')
    assert dnnlib.util.remove_stale_temporaries(str(tmp_path)) == ['.network-snapshot-000004.pkl.ab_cd123.tmp']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['keep.tmp', 'stats.jsonl']


@pytest.fixture(scope='module')
def finished_run(env):
    outdir = env.tmp / 'runs'
    result = CliRunner().invoke(_mains()['train'], [str(a) for a in ['--outdir', outdir, '--data', env.data, '--kimg', '0.004'] + TRAIN_TINY])
    assert result.exit_code == 0, result.stdout + result.stderr
    (run_dir,) = [p for p in outdir.iterdir() if p.is_dir()]
    return run_dir


def test_finished_run_stays_finished_and_resume_cleans_up(env, finished_run, tmp_path):
    run_dir = tmp_path / finished_run.name
    shutil.copytree(finished_run, run_dir)
    before = _files(run_dir)
    train = _mains()['train']
    for _ in range(2):  # a requeued job, twice
        result = CliRunner().invoke(train, ['--outdir', str(run_dir), '--resume', 'latest'])
        assert result.exit_code == 0, result.stdout + result.stderr
        assert 'already finished (0.004 of 0.004 kimg)' in result.stdout
        assert _files(run_dir) == before
    stale = run_dir / '.network-snapshot-000000.008.pkl.k1ll3d_x.tmp'
    stale.write_bytes(b'half a snapshot')
    result = CliRunner().invoke(train, ['--outdir', str(run_dir), '--resume', 'latest', '--kimg', '0.008'])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert not stale.exists() and 'Removed 1 temporary file' in result.stdout
    state = torch.load(run_dir / 'training-state-000000.008.pt', weights_only=True)
    assert state['cur_nimg'] == 8


def test_second_process_on_a_run_folder_is_refused(env, finished_run, tmp_path):
    run_dir = tmp_path / finished_run.name
    shutil.copytree(finished_run, run_dir)
    before = _files(run_dir)
    with run_folder.locked(str(run_dir)):
        result = CliRunner().invoke(_mains()['train'], ['--outdir', str(run_dir), '--resume', 'latest', '--kimg', '0.008'])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith('error')]
    assert len(errors) == 1 and f'pid {os.getpid()}' in errors[0], result.stderr
    assert _files(run_dir) - {'.train.lock'} == before - {'.train.lock'}
