"""train.py distillation: bad input fails in one line before training, and a tiny
prune.py -> train.py --init svs run ends in a snapshot (CPU)."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import dnnlib
import prune
import train
from pruning import channels
from training.checkpoints import load_network, save_snapshot
from training.networks_stylegan2 import Discriminator
from training.sample_data import make_sample_dataset

from test_lpips import make_lin_state, make_vgg_state
from test_pruning import random_masks, tiny_sg2, tiny_sg3

ROOT = Path(__file__).resolve().parents[1]
FAST = ['--batch', '4', '--batch-gpu', '2', '--tick', '0.004', '--snap', '1', '--metrics', 'none', '--device', 'cpu',
        '--grid', '2x2', '--workers', '0', '--aug', 'noaug', '--seed', '0']


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('distill_cli')
    f = dnnlib.EasyDict(dir=d)
    f.data = str(d / 'data32.zip')
    make_sample_dataset(f.data, num_images=8, resolution=32, seed=0)
    teacher = tiny_sg2(channel_base=256, channel_max=16)
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16)
    f.teacher = str(d / 'teacher.pkl')
    save_snapshot(f.teacher, dict(G=teacher, G_ema=teacher, D=D))
    student = channels.slice_generator(teacher, random_masks(teacher, 0.5, seed=2))
    f.student = str(d / 'student.pkl')
    save_snapshot(f.student, dict(G=student, G_ema=student, D=D,
                                  pruning=dict(teacher_widths=channels.group_widths(teacher), svs=None)))
    t3 = tiny_sg3()
    s3 = channels.slice_generator(t3, random_masks(t3, 0.5, seed=3))
    f.teacher3, f.student3 = str(d / 'teacher3.pkl'), str(d / 'student3.pkl')
    save_snapshot(f.teacher3, dict(G=t3, G_ema=t3))
    save_snapshot(f.student3, dict(G=s3, G_ema=s3))
    f.vgg, f.lin = str(d / 'vgg16.pth'), str(d / 'vgg.pth')
    torch.save(make_vgg_state(), f.vgg)
    torch.save(make_lin_state(), f.lin)
    f.parser = str(d / '79999_iter.pth')
    f.parser_bytes = b'stand-in: dry runs only check that the file exists'
    Path(f.parser).write_bytes(f.parser_bytes)
    f.teacher_G = teacher
    return f


def _run(main, args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _one_line_error(code, output, needle):
    assert code == 1, output
    errors = [line for line in output.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and needle in errors[0], output
    assert 'Traceback' not in output


def _distill_args(files, outdir, student=None, init='pruned'):
    return ['--outdir', outdir, '--data', files.data, '--teacher', files.teacher, '--student', student or files.student,
            '--init', init, '--lpips-vgg', files.vgg, '--lpips-lin', files.lin, '--cfg', 'auto', '--kimg', '0.008'] + FAST

# ---------------------------------------------------------------------------------------------


# Every configs/*.yaml is dry-run against the table of record in tests/test_configs.py.


def test_command_line_overrides_config_and_unknown_keys(files, tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text(yaml.safe_dump({'data': files.data, 'teacher': files.teacher, 'student': files.student,
                                      'lpips-vgg': files.vgg, 'lpips_lin': files.lin, 'kimg': 5, 'ld-weight': 7,
                                      'mirror': True, 'metrics': ['none'], 'device': 'cpu', 'outdir': str(tmp_path / 'r')}))
    code, output = _run(train.main, ['--config', config, '--kimg', '0.5', '--dry-run'])
    assert code == 0, output
    assert '"total_kimg": 0.5' in output and '"ld_weight": 7.0' in output and '"xflip": true' in output
    bad = tmp_path / 'bad.yaml'
    bad.write_text('data: x.zip\nlearning-rate: 1\nkimgs: 3\n')
    _one_line_error(*_run(train.main, ['--config', bad, '--outdir', tmp_path]), 'unknown keys learning-rate, kimgs')
    bad.write_text('kimg: many\n')
    _one_line_error(*_run(train.main, ['--config', bad, '--outdir', tmp_path]), 'kimg')


def test_bad_students_and_weight_files_fail_before_training(files, tmp_path):
    d = files.dir
    other_res = tiny_sg2(channel_base=256, channel_max=16, res=16)
    from training.networks_stylegan2 import Generator
    other_map = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=3),
                          synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0, conv_clamp=None))
    wider = tiny_sg2(channel_base=512, channel_max=32)
    for name, G in (('res16', other_res), ('map3', other_map), ('wider', wider)):
        save_snapshot(str(d / f'{name}.pkl'), dict(G=G, G_ema=G))
    out = tmp_path / 'runs'
    _one_line_error(*_run(train.main, _distill_args(files, out, d / 'res16.pkl')), 'resolution is 16')
    _one_line_error(*_run(train.main, _distill_args(files, out, d / 'map3.pkl')), 'mapping network differs')
    _one_line_error(*_run(train.main, _distill_args(files, out, d / 'wider.pkl')), 'not a pruned form of the teacher')
    _one_line_error(*_run(train.main, _distill_args(files, out, files.student3)), 'the teacher is SG2')
    # He and StyleKD inits only need the widths: the wider student is accepted with --init random.
    code, output = _run(train.main, _distill_args(files, out, d / 'wider.pkl', init='random') + ['--dry-run'])
    assert code == 0, output
    args = _distill_args(files, out)
    _one_line_error(*_run(train.main, args + ['--lpips-lin', d / 'missing-vgg.pth']), 'missing-vgg.pth')
    _one_line_error(*_run(train.main, args + ['--mask', 'face']), '--face-parser')
    _one_line_error(*_run(train.main, args + ['--mask', 'face', '--face-parser', d / 'nope.pth']), 'nope.pth')
    _one_line_error(*_run(train.main, ['--outdir', out, '--data', files.data, '--student', files.student] + FAST), 'needs --teacher')
    code, output = _run(train.main, args + ['--lpips-weight', '0', '--lpips-lin', d / 'missing-vgg.pth', '--dry-run'])
    assert code == 0, output  # LPIPS off: its weights are not needed
    assert not out.exists()


def test_lpips_weights_available(files, tmp_path):
    from training.distill import lpips_weights_available
    assert lpips_weights_available(files.vgg, files.lin) == (True, '')
    ok, reason = lpips_weights_available(files.vgg, str(tmp_path / 'none.pth'))
    assert not ok and '--lpips-lin' in reason and 'none.pth' in reason


def test_prune_then_distill_with_svs_end_to_end(files, tmp_path):
    code, output = _run(prune.main, ['--network', files.teacher, '--method', 'l1', '--ratio', '0.5', '--outdir', tmp_path / 'p'])
    assert code == 0, output
    student = tmp_path / 'p' / 'student.pkl'
    out = tmp_path / 'runs'
    args = _distill_args(files, out, student, init='svs') + ['--svs-fn', 'sqrt', '--distill', 'stylekd', '--l1-weight', '3',
                                                             '--ld-weight', '30', '--mask', 'uniform', '--mirror', '1',
                                                             '--spectral-norm', '1', '--desc', 'e2e']
    code, output = _run(train.main, args)
    assert code == 0, output
    assert 'SVS (sqrt) applied' in output
    (run_dir,) = list(out.iterdir())
    assert run_dir.name.endswith('-stylekd-svs-e2e')
    snaps = sorted(run_dir.glob('network-snapshot-*.pkl'))
    assert snaps
    data = load_network(str(snaps[-1]), verbose=False)
    widths = json.loads((tmp_path / 'p' / 'pruning.json').read_text())['widths']
    assert list(data.G_ema.synthesis.layer_channels) == widths
    assert 'teacher' not in data  # the frozen teacher is not part of the snapshot
    w = data.G.synthesis.b8.conv0.weight.double().flatten(1)
    # the spectral-norm hook ran after the last step (sigma from one power iteration per step: ~1e-4 off)
    assert abs(torch.linalg.matrix_norm(w, ord=2).item() - 1) < 1e-3
    stats = [json.loads(line) for line in (run_dir / 'stats.jsonl').read_text().splitlines()]
    for key in ('Loss/G/l1', 'Loss/G/lpips', 'Loss/G/ld'):
        assert key in stats[-1] and stats[-1][key]['mean'] > 0, key
    options = json.loads((run_dir / 'training_options.json').read_text())
    assert options['init_fn']['init'] == 'svs' and options['init_fn']['student'] == str(student)
    assert options['extra_networks']['teacher']['path'] == files.teacher
    assert options['step_hooks'] == [{'class_name': 'training.student_init.SpectralNormHook'}]
