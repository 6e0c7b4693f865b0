"""train.py: bad input gives one clear line and exit 1 before training; --help and --dry-run work."""
import io
import os
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import train
from training.sample_data import make_sample_dataset

TINY = ['--cfg', 'cifar', '--cbase', '256', '--cmax', '32', '--map-depth', '2', '--mbstd-group', '2',
        '--batch', '4', '--batch-gpu', '2', '--kimg', '0.004', '--tick', '0.004', '--snap', '1', '--metrics', 'none',
        '--device', 'cpu', '--grid', '2x2', '--workers', '0', '--aug', 'noaug']


@pytest.fixture(scope='module')
def data_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp('data') / 'sample32.zip'
    make_sample_dataset(str(path), num_images=8, resolution=32, seed=0)
    return str(path)


def _png(size):
    buf = io.BytesIO()
    PIL.Image.fromarray(np.zeros([size, size, 3], np.uint8)).save(buf, format='png')
    return buf.getvalue()


def _run(args):
    result = CliRunner().invoke(train.main, args)
    return result.exit_code, result.output


def _assert_one_line_error(code, output, needle):
    assert code == 1, output
    errors = [line for line in output.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and needle in errors[0], output
    assert 'Traceback' not in output


def test_help_lists_the_nvidia_options():
    code, output = _run(['--help'])
    assert code == 0
    for opt in ['--outdir', '--data', '--cfg', '--gpus', '--batch', '--batch-gpu', '--gamma', '--kimg', '--snap',
                '--mirror', '--aug', '--p', '--target', '--augpipe', '--resume', '--seed', '--fp32', '--metrics',
                '--cond', '--subset', '--glr', '--dlr', '--map-depth', '--mbstd-group', '--cbase', '--cmax', '--tick',
                '--workers', '--nobench', '--dry-run', '--device']:
        assert opt in output, opt


def test_dry_run_prints_options_and_creates_nothing(data_zip, tmp_path):
    code, output = _run(['--outdir', str(tmp_path / 'runs'), '--data', data_zip, '--dry-run'] + TINY)
    assert code == 0, output
    assert '"batch_size": 4' in output and 'Dry run' in output
    assert not (tmp_path / 'runs').exists()


def test_empty_dataset(tmp_path):
    empty = tmp_path / 'empty.zip'
    with zipfile.ZipFile(empty, 'w') as zf:
        zf.writestr('README.txt', 'no images here')
    _assert_one_line_error(*_run(['--outdir', str(tmp_path / 'runs'), '--data', str(empty)] + TINY), 'no images')
    assert not (tmp_path / 'runs').exists()


def test_missing_dataset(tmp_path):
    _assert_one_line_error(*_run(['--outdir', str(tmp_path), '--data', str(tmp_path / 'nope.zip')] + TINY), 'nope.zip')


def test_mixed_resolutions(tmp_path):
    mixed = tmp_path / 'mixed.zip'
    with zipfile.ZipFile(mixed, 'w') as zf:
        zf.writestr('a.png', _png(32))
        zf.writestr('b.png', _png(64))
    _assert_one_line_error(*_run(['--outdir', str(tmp_path / 'runs'), '--data', str(mixed)] + TINY), 'b.png')


def test_cond_without_labels(tmp_path):
    plain = tmp_path / 'plain.zip'
    with zipfile.ZipFile(plain, 'w') as zf:
        zf.writestr('a.png', _png(32))
    _assert_one_line_error(*_run(['--outdir', str(tmp_path / 'runs'), '--data', str(plain), '--cond', '1'] + TINY), '--cond')


def test_batch_not_divisible(data_zip, tmp_path):
    args = ['--outdir', str(tmp_path / 'runs'), '--data', data_zip] + TINY + ['--batch', '6', '--batch-gpu', '4']
    _assert_one_line_error(*_run(args), '--batch')
    assert not (tmp_path / 'runs').exists()


def test_resume_from_another_architecture(data_zip, tmp_path):
    code, output = _run(['--outdir', str(tmp_path / 'a'), '--data', data_zip] + TINY)
    assert code == 0, output
    (run_dir,) = list((tmp_path / 'a').iterdir())
    pkl = run_dir / 'network-snapshot-000000.pkl'
    assert pkl.exists()
    # Weights only (no training state beside the file): trains, and says what it could not restore.
    foreign = tmp_path / 'foreign.pkl'
    foreign.write_bytes(pkl.read_bytes())
    code, output = _run(['--outdir', str(tmp_path / 'c'), '--data', data_zip, '--resume', str(foreign)] + TINY)
    assert code == 0, output
    assert '(weights only)' in output and 'not restored (no training state): optimizer states' in output
    args = ['--outdir', str(tmp_path / 'b'), '--data', data_zip, '--resume', str(pkl)] + TINY + ['--cmax', '16']
    code, output = _run(args)
    _assert_one_line_error(code, output, 'another architecture')
    assert not list((tmp_path / 'b').iterdir())  # stopped before any snapshot: no orphan run folder left


def test_resume_latest_without_a_run(tmp_path):
    _assert_one_line_error(*_run(['--outdir', str(tmp_path), '--resume', 'latest']), 'resumable')


def test_fixed_aug_needs_p(data_zip, tmp_path):
    args = ['--outdir', str(tmp_path), '--data', data_zip] + TINY[:-2] + ['--aug', 'fixed']
    _assert_one_line_error(*_run(args), '--p')
