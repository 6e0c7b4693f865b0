"""Crafted files against every CLI that reads a network, a resume or a config: nothing runs.

Each payload would create a marker file (or patch one of our classes) if any of our tools ran the
code it names: pickles (REDUCE and BUILD), torch zip and legacy ``.pt`` files, safetensors metadata,
snapshots whose ``training_set_kwargs`` name ``torch.hub.load`` with a local ``hubconf.py``,
``training_options.json`` of a run, training-state files and YAML configs. Every CLI must refuse
each one with one ``error:`` line, a non-zero exit, no traceback, and the marker must not exist.
The CLIs run in-process through click's runner (same code path as the command line, much faster).
"""
import json
import os
import pickle
import shutil

import pytest
import torch
from click.testing import CliRunner

import dnnlib
from training import checkpoints, networks_stylegan2
from training.sample_data import make_sample_dataset

TRAIN_TINY = ['--cfg', 'cifar', '--cbase', '256', '--cmax', '32', '--map-depth', '2', '--mbstd-group', '2',
              '--batch', '4', '--batch-gpu', '2', '--kimg', '0.004', '--tick', '0.004', '--snap', '1',
              '--metrics', 'none', '--device', 'cpu', '--grid', '2x2', '--workers', '0', '--aug', 'noaug']
_EASYDICT_GETATTR = dnnlib.EasyDict.__getattr__


def run_cli(main, args):
    """(exit code, stdout, stderr, exception) of a click command run in-process."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr, result.exception


def assert_refused(main, args, marker, needle=None):
    code, out, err, exc = run_cli(main, args)
    assert code != 0, f'{args}: exit 0\n{out}\n{err}'
    assert exc is None or isinstance(exc, SystemExit), f'{args}: raised {exc!r}'  # no traceback
    assert 'Traceback' not in out + err
    errors = [line for line in err.splitlines() if line.lower().startswith('error')]
    assert len(errors) == 1, f'{args}: stderr was\n{err}'
    if needle is not None:
        assert needle in errors[0], errors[0]
    assert not marker.exists(), f'{args}: the payload ran'
    assert dnnlib.EasyDict.__getattr__ is _EASYDICT_GETATTR, f'{args}: EasyDict was patched'
    return errors[0]


class _Shell:
    """Unpickling this runs a shell command (what a hostile network pickle does)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _tiny_generator():
    return networks_stylegan2.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                                        mapping_kwargs=dict(num_layers=1),
                                        synthesis_kwargs=dict(channel_base=64, channel_max=8))


def _hub_kwargs(tmp, marker):
    """training_set_kwargs that would make torch.hub run a local hubconf.py creating ``marker``."""
    hub = tmp / 'hub'
    hub.mkdir(exist_ok=True)
    (hub / 'hubconf.py').write_text(f'def evil(**kwargs):\n    open({str(marker)!r}, "w").write("ran")\n')
    return dict(class_name='torch.hub.load', repo_or_dir=str(hub), model='evil', source='local')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('security')
    marker = tmp / 'MARKER'
    data_zip = tmp / 'sample32.zip'
    make_sample_dataset(str(data_zip), num_images=8, resolution=32, seed=0)
    G = _tiny_generator()
    files = {}

    shell = _Shell(f'touch {marker}')
    files['pickle-reduce'] = pickle.dumps(dict(G=shell, D=None, G_ema=shell))
    # GLOBAL dnnlib.util.EasyDict, then BUILD (None, {'__getattr__': object}): setattr on the class itself.
    files['pickle-build'] = b"cdnnlib.util\nEasyDict\n(N(dS'__getattr__'\ncbuiltins\nobject\nstb."
    # A persistent object whose class name is an attribute of our module that is not a network class.
    def bad_class(obj, meta):
        meta['class_name'] = 'torch'
    files['pickle-class-name'] = _v6_with_meta_edit(G, bad_class)
    files['pickle-dataset-hub'] = _snapshot_bytes(tmp, dict(G=G, D=None, G_ema=G, training_set_kwargs=_hub_kwargs(tmp, marker)))
    for name, zipfile in [('torch-zip', True), ('torch-legacy', False)]:
        path = tmp / f'{name}.pt'
        torch.save(dict(g_ema=shell), path, _use_new_zipfile_serialization=zipfile)
        files[name] = path.read_bytes()
    # Weights-only exports: metadata naming torch.hub.load as the dataset, or os.system as the network.
    files['safetensors-dataset-hub'] = _export_bytes(tmp, dict(G=G, G_ema=G, training_set_kwargs=_hub_kwargs(tmp, marker)))
    files['safetensors-class'] = _edit_safetensors(_export_bytes(tmp, dict(G_ema=G)), lambda arch: arch['G_ema'].update(module='os', class_name='system'))
    files['safetensors-module-attr'] = _edit_safetensors(_export_bytes(tmp, dict(G_ema=G)), lambda arch: arch['G_ema'].update(class_name='torch'))
    paths = {}
    for name, data in files.items():
        paths[name] = tmp / f'{name}.bin'
        paths[name].write_bytes(data)
    return dnnlib.EasyDict(tmp=tmp, marker=marker, data_zip=data_zip, files=paths)


def _v6_with_meta_edit(G, edit):
    import io

    from torch_utils import persistence

    class MetaPickler(pickle.Pickler):
        def reducer_override(self, obj):
            if not persistence.is_persistent(obj):
                return NotImplemented
            func, (meta,), *rest = obj.__reduce__()
            meta = dict(meta)
            edit(obj, meta)
            return (func, (meta,), *rest)
    buf = io.BytesIO()
    MetaPickler(buf, protocol=4).dump(dict(G=G, D=None, G_ema=G))
    return buf.getvalue()


def _snapshot_bytes(tmp, data):
    path = tmp / 'snapshot.tmp.pkl'
    checkpoints.save_snapshot(str(path), data)
    return path.read_bytes()


def _export_bytes(tmp, data):
    path = tmp / 'export.tmp.safetensors'
    checkpoints.export_weights(data, str(path))
    return path.read_bytes()


def _edit_safetensors(data, edit_architecture):
    """Rewrite the JSON header of a safetensors file (same tensors, edited metadata)."""
    n = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8:8 + n])
    arch = json.loads(header['__metadata__']['architecture'])
    edit_architecture(arch)
    header['__metadata__']['architecture'] = json.dumps(arch)
    raw = json.dumps(header).encode()
    raw += b' ' * (-len(raw) % 8)
    return len(raw).to_bytes(8, 'little') + raw + data[8 + n:]


def _network_clis(env, path):
    """Every CLI invocation that reads ``path`` as a network."""
    import calc_metrics
    import generate
    import legacy
    import pipeline
    import prune
    import train
    out = env.tmp / 'out'
    return [
        ('generate', generate.main, ['--network', path, '--seeds', '0', '--outdir', out / 'gen']),
        ('calc_metrics', calc_metrics.main, ['--network', path, '--metrics', 'fid50k_full', '--device', 'cpu', '--quiet']),
        ('prune', prune.main, ['--network', path, '--outdir', out / 'prune', '--method', 'l1', '--device', 'cpu']),
        ('prune svs', prune.main, ['svs', '--network', path, '--outdir', out / 'svs']),
        ('legacy', legacy.main, ['--source', path, '--dest', out / 'legacy.pkl']),
        ('train --teacher', train.main, ['--outdir', out / 'train', '--data', env.data_zip, '--teacher', path] + TRAIN_TINY),
        ('train --resume', train.main, ['--outdir', out / 'train', '--data', env.data_zip, '--resume', path] + TRAIN_TINY),
        ('pipeline', pipeline.main, ['--teacher', path, '--data', env.data_zip, '--outdir', env.tmp / 'pipeline',
                                     '--n-samples', '2', '--kimg', '0.004', '--batch', '4', '--device', 'cpu']),
    ]


NETWORK_PAYLOADS = ['pickle-reduce', 'pickle-build', 'pickle-class-name', 'pickle-dataset-hub', 'torch-zip',
                    'torch-legacy', 'safetensors-dataset-hub', 'safetensors-class', 'safetensors-module-attr']


@pytest.mark.parametrize('payload', NETWORK_PAYLOADS)
def test_crafted_network_files_are_refused_by_every_cli(env, payload):
    for name, main, args in _network_clis(env, env.files[payload]):
        line = assert_refused(main, args, env.marker)
        assert str(env.files[payload]) in line or payload in line, f'{name}: {line}'
        # Nothing half-written: no run folder, no student, no converted file (the pipeline keeps its
        # own progress record in its --outdir, outside this folder).
        out = env.tmp / 'out'
        left = [p for p in out.rglob('*') if p.is_file()] if out.exists() else []
        assert not left, f'{name}: left {left}'


def test_restricted_unpickler_refuses_build_on_classes():
    with pytest.raises(dnnlib.util.UserError, match='sets the state of EasyDict'):
        checkpoints.load_network_bytes(b"cdnnlib.util\nEasyDict\n(N(dS'__getattr__'\ncbuiltins\nobject\nstb.", 'x.pkl')
    assert dnnlib.EasyDict.__getattr__ is _EASYDICT_GETATTR
    assert dnnlib.EasyDict(a=1).a == 1


@pytest.fixture(scope='module')
def finished_run(env):
    """A real run folder (one snapshot plus its training state), made by train.py."""
    import train
    outdir = env.tmp / 'runs'
    code, out, err, exc = run_cli(train.main, ['--outdir', outdir, '--data', env.data_zip] + TRAIN_TINY)
    assert code == 0, out + err
    (run_dir,) = [p for p in outdir.iterdir() if p.is_dir()]
    return run_dir


def _copy_run(finished_run, tmp_path):
    run_dir = tmp_path / finished_run.name
    shutil.copytree(finished_run, run_dir)
    (run_dir / '.train.lock').unlink(missing_ok=True)
    return run_dir


@pytest.mark.parametrize('zipfile', [True, False])
def test_crafted_training_state_is_refused(env, finished_run, tmp_path, zipfile):
    import train
    run_dir = _copy_run(finished_run, tmp_path)
    for state in run_dir.glob('training-state-*.pt'):
        torch.save(dict(version=2, cur_nimg=_Shell(f'touch {env.marker}')), state, _use_new_zipfile_serialization=zipfile)
    before = sorted(p.name for p in run_dir.iterdir())
    assert_refused(train.main, ['--outdir', run_dir, '--resume', 'latest', '--kimg', '1'], env.marker, 'training state')
    snapshot = sorted(run_dir.glob('network-snapshot-*.pkl'))[-1]
    assert_refused(train.main, ['--outdir', tmp_path / 'new', '--data', env.data_zip, '--resume', snapshot] + TRAIN_TINY,
                   env.marker, 'training state')
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert not (tmp_path / 'new').exists() or not list((tmp_path / 'new').iterdir())


@pytest.mark.parametrize('where,spec', [
    ('G_kwargs', 'hub'),
    ('training_set_kwargs', dict(class_name='os.system', command='touch MARKER')),
    ('init_fn', dict(func_name='builtins.exec', source='open("MARKER", "w")')),
    ('loss_kwargs', dict(class_name='training.dataset.os.system', command='touch MARKER')),
])
def test_crafted_training_options_are_refused(env, finished_run, tmp_path, where, spec):
    import train
    run_dir = _copy_run(finished_run, tmp_path)
    options_path = run_dir / 'training_options.json'
    options = json.loads(options_path.read_text())
    if spec == 'hub':
        options[where] = _hub_kwargs(tmp_path, env.marker)
    else:
        options[where] = {k: v.replace('MARKER', str(env.marker)) for k, v in spec.items()}
    options_path.write_text(json.dumps(options))
    line = assert_refused(train.main, ['--outdir', run_dir, '--resume', 'latest', '--kimg', '1'], env.marker)
    assert 'refusing' in line and 'training_options.json' in line


def test_crafted_yaml_configs_are_refused(env, tmp_path):
    import pipeline
    import train
    config = tmp_path / 'evil.yaml'
    config.write_text(f'kimg: !!python/object/apply:os.system ["touch {env.marker}"]\n')
    assert_refused(train.main, ['--outdir', tmp_path / 'runs', '--config', config], env.marker, 'YAML')
    assert_refused(pipeline.main, ['--outdir', tmp_path / 'pipe', '--config', config], env.marker, 'YAML')
    assert not (tmp_path / 'pipe').exists() and not (tmp_path / 'runs').exists()  # refused before any stage


def test_hub_payload_is_live(env, tmp_path):
    # The oracle for the dataset payloads above: constructed by name, it does run code.
    marker = tmp_path / 'ran'
    dnnlib.util.construct_class_by_name(**_hub_kwargs(tmp_path, marker))
    assert marker.exists()
    with pytest.raises(dnnlib.util.UserError, match='refusing'):
        dnnlib.util.check_dataset_kwargs(_hub_kwargs(tmp_path, marker))
