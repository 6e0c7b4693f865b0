"""prune.py end to end on CPU with a tiny teacher: every method, the svs subcommand, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import prune
from pruning import channels, flops
from test_pruning import render, tiny_sg2

ROOT = Path(__file__).resolve().parents[1]
FAST = {'dcp': ['--n-samples', '2', '--batch', '2', '--n-directions', '2', '--pca-samples', '16'],
        'cagan': ['--n-samples', '2', '--batch', '2'], 'gs': ['--n-samples', '2', '--batch', '2'],
        'random': [], 'l1': []}


@pytest.fixture(scope='module')
def teacher_pkl(tmp_path_factory):
    from training.checkpoints import save_snapshot
    from training.networks_stylegan2 import Discriminator
    G = tiny_sg2(channel_base=256, channel_max=16)
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16)
    path = tmp_path_factory.mktemp('teacher') / 'teacher.pkl'
    save_snapshot(str(path), dict(G=G, G_ema=G, D=D, augment_pipe=None,
                                  training_set_kwargs=dict(path='ffhq.zip', resolution=32)))
    return str(path)


def run(args):
    result = CliRunner().invoke(prune.main, args, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.parametrize('method', ['dcp', 'cagan', 'gs', 'random', 'l1'])
def test_prune_every_method_writes_the_outputs(teacher_pkl, tmp_path, method):
    from training.checkpoints import load_network
    out = tmp_path / 'run'
    code, output = run(['--network', teacher_pkl, '--method', method, '--ratio', '0.5', '--outdir', str(out),
                        '--device', 'cpu'] + (['--svs', 'sqrt'] if method == 'dcp' else ['--torgb-compensation'])
                       + FAST[method])
    assert code == 0, output
    assert 'FLOPs' in output and 'params' in output
    for name in prune.OUTPUT_FILES:
        assert (out / name).stat().st_size > 0
    info = json.loads((out / 'pruning.json').read_text())
    assert info['method'] == method and info['ratio'] == 0.5
    assert info['widths'] == [c - int(0.5 * c) for c in info['teacher_widths']]
    assert [len(m) for m in info['masks']] == info['widths']
    assert [len(s) for s in info['scores']] == info['teacher_widths']
    assert info['params']['student']['params'] < info['params']['teacher']['params']
    assert info['svs'] == ({'fn': 'sqrt', 'include': None, 'exclude': None} if method == 'dcp' else None)
    assert info['versions']['torch'] == torch.__version__

    data = load_network(str(out / 'student.pkl'), verbose=False)
    teacher = load_network(teacher_pkl, verbose=False)
    assert data.G is not data.G_ema and data.D is not None
    assert data.training_set_kwargs['path'] == 'ffhq.zip'
    assert list(data.G_ema.synthesis.layer_channels) == info['widths']
    assert data.pruning['masks'] == info['masks'] and data.pruning['D'] == 'teacher'
    assert flops.count_params(data.G_ema) == info['params']['student']['params']
    assert data.pruning['compensate_torgb'] is (method != 'dcp')
    if method != 'dcp':  # no SVS, toRGB compensated: the student is exactly the masked teacher
        masks = channels.indices_to_masks(info['masks'], info['teacher_widths'])
        oracle = channels.masked_dense(teacher.G_ema, masks)
        assert torch.allclose(render(data.G_ema), render(oracle), atol=1e-5)


def test_svs_subcommand_scales_an_existing_student_once(teacher_pkl, tmp_path):
    from training.checkpoints import load_network
    code, output = run(['--network', teacher_pkl, '--method', 'l1', '--ratio', '0.5', '--outdir', str(tmp_path / 'a')])
    assert code == 0, output
    student = str(tmp_path / 'a' / 'student.pkl')
    code, output = run(['svs', '--network', student, '--fn', 'sqrt', '--outdir', str(tmp_path / 'b')])
    assert code == 0, output
    before, after = load_network(student, verbose=False), load_network(str(tmp_path / 'b' / 'student.pkl'), verbose=False)
    for key in ('G', 'G_ema'):
        w0 = before[key].synthesis.b8.conv0.weight.double().flatten(1)
        w1 = after[key].synthesis.b8.conv0.weight.double().flatten(1)
        assert torch.allclose(torch.linalg.svdvals(w1), torch.linalg.svdvals(w0).sqrt(), rtol=1e-5)
        assert torch.equal(before[key].synthesis.b4.const, after[key].synthesis.b4.const)
        assert torch.equal(before[key].mapping.fc0.weight, after[key].mapping.fc0.weight)
    assert after.pruning['svs']['fn'] == 'sqrt' and after.pruning['masks'] == before.pruning['masks']
    assert json.loads((tmp_path / 'b' / 'svs.json').read_text())['fn'] == 'sqrt'
    # Applying it twice is refused, unless forced.
    code, output = run(['svs', '--network', str(tmp_path / 'b' / 'student.pkl'), '--outdir', str(tmp_path / 'c')])
    assert code == 1 and 'already applied' in output and not (tmp_path / 'c').exists()
    code, output = run(['svs', '--network', str(tmp_path / 'b' / 'student.pkl'), '--outdir', str(tmp_path / 'c'), '--force'])
    assert code == 0, output


@pytest.mark.parametrize('args,message', [
    (['--ratio', '1.5'], '--ratio: 1.5 is outside (0, 1)'),
    (['--ratio', '0'], '--ratio: 0.0 is outside (0, 1)'),
    (['--svs', 'cube'], 'unknown scaling function'),
    (['--method', 'cagan', '--mask', 'face'], '--face-parser'),
    (['--method', 'cagan', '--mask', 'face', '--face-parser', '/nonexistent/79999_iter.pth'], '79999_iter.pth'),
    (['--method', 'dcp', '--mask', 'face'], 'only the cagan scorer'),
    (['--method', 'dcp', '--n-directions', '1'], '--n-directions'),
])
def test_bad_input_is_one_line_and_writes_nothing(teacher_pkl, tmp_path, args, message):
    out = tmp_path / 'run'
    code, output = run(['--network', teacher_pkl, '--outdir', str(out), '--method', 'random'] + args)
    assert code == 1
    assert message in output and 'Traceback' not in output
    assert len(output.strip().splitlines()) <= 2
    assert not out.exists() or not any(out.iterdir())


def test_missing_network_and_existing_outputs(teacher_pkl, tmp_path):
    code, output = run(['--network', str(tmp_path / 'nope.pkl'), '--outdir', str(tmp_path / 'o'), '--method', 'l1'])
    assert code == 1 and 'nope.pkl' in output and 'Traceback' not in output
    assert run(['--network', teacher_pkl, '--outdir', str(tmp_path / 'o'), '--method', 'l1'])[0] == 0
    code, output = run(['--network', teacher_pkl, '--outdir', str(tmp_path / 'o'), '--method', 'l1'])
    assert code == 1 and '--overwrite' in output
    assert run(['--network', teacher_pkl, '--outdir', str(tmp_path / 'o'), '--method', 'l1', '--overwrite'])[0] == 0


def test_cli_help_and_error_in_a_real_process(tmp_path):
    code, output = run(['--help'])
    assert code == 0 and '--method' in output and 'svs' in output
    code, output = run(['svs', '--help'])
    assert code == 0 and '--fn' in output
    code, output = run(['--ratio', '0.5', 'svs', '--network', 'x', '--outdir', 'y'])
    assert code == 2 and 'not used by it: ratio' in output
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable, 'prune.py', '--network', str(tmp_path / 'x.pkl'), '--outdir', str(tmp_path / 'o')],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert res.returncode == 1 and res.stderr.count('\n') == 1 and 'x.pkl' in res.stderr


def test_prune_sg3_teacher_with_svs(tmp_path):
    from test_pruning import _sg3_available, tiny_sg3
    if not _sg3_available():
        pytest.skip('training/networks_stylegan3.py not available')
    from training.checkpoints import load_network, save_snapshot
    G = tiny_sg3()
    save_snapshot(str(tmp_path / 't.pkl'), dict(G=G, G_ema=G, D=None))
    code, output = run(['--network', str(tmp_path / 't.pkl'), '--method', 'l1', '--ratio', '0.7',
                        '--svs', 'sqrt', '--outdir', str(tmp_path / 'o')])
    assert code == 0, output
    info = json.loads((tmp_path / 'o' / 'pruning.json').read_text())
    assert info['family'] == 'sg3' and info['D'] is None
    assert info['widths'] == [max(int((1 - 0.7) * c), 3) for c in info['teacher_widths']]
    student = load_network(str(tmp_path / 'o' / 'student.pkl'), verbose=False).G_ema
    assert list(student.synthesis.layer_channels) == info['widths']
    names = {l['name'] for l in info['spectra']['layers']}
    assert 'synthesis.input.weight' in names and f'synthesis.{G.synthesis.layer_names[-1]}.weight' in names
