"""Option parity with NVIDIA's CLIs: every option of stylegan2-ada-pytorch's and stylegan3's scripts
exists here under the same name (or --help says why not), BOOL options take --x=True/False, and the
train.py / dataset_tool.py parity options work (--freezed, --nhwc, --resume shortcuts, stylegan3-r
blur off on resume, --width/--height, CIFAR-10 and MNIST archives)."""
import gzip
import io
import json
import os
import pickle
import tarfile
import zipfile

import click
import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

# NVIDIA's option names, read from stylegan2-ada-pytorch (d72cc7d) and stylegan3 (c233a91).
NVIDIA_OPTIONS = {
    'train': {
        'sg2ada': ['--outdir', '--gpus', '--snap', '--metrics', '--seed', '--dry-run', '--data', '--cond', '--subset',
                   '--mirror', '--cfg', '--gamma', '--kimg', '--batch', '--aug', '--p', '--target', '--augpipe', '--resume',
                   '--freezed', '--fp32', '--nhwc', '--nobench', '--allow-tf32', '--workers'],
        'sg3': ['--outdir', '--cfg', '--data', '--gpus', '--batch', '--gamma', '--cond', '--mirror', '--aug', '--resume',
                '--freezed', '--p', '--target', '--batch-gpu', '--cbase', '--cmax', '--glr', '--dlr', '--map-depth',
                '--mbstd-group', '--desc', '--metrics', '--kimg', '--tick', '--snap', '--seed', '--fp32', '--nobench',
                '--workers', '--dry-run'],
    },
    'calc_metrics': {'sg2ada': ['--network', '--metrics', '--data', '--mirror', '--gpus', '--verbose'],
                     'sg3': ['--network', '--metrics', '--data', '--mirror', '--gpus', '--verbose']},
    'generate': {'sg2ada': ['--network', '--seeds', '--trunc', '--class', '--noise-mode', '--projected-w', '--outdir']},
    'gen_images': {'sg3': ['--network', '--seeds', '--trunc', '--class', '--noise-mode', '--translate', '--rotate', '--outdir']},
    'dataset_tool': {'sg2ada': ['--source', '--dest', '--max-images', '--resize-filter', '--transform', '--width', '--height'],
                     'sg3': ['--source', '--dest', '--max-images', '--transform', '--resolution']},
    'legacy': {'sg2ada': ['--source', '--dest', '--force-fp16'], 'sg3': ['--source', '--dest', '--force-fp16']},
    'projector': {'sg2ada': ['--network', '--target', '--num-steps', '--seed', '--save-video', '--outdir']},
    'style_mixing': {'sg2ada': ['--network', '--rows', '--cols', '--styles', '--trunc', '--noise-mode', '--outdir']},
    'gen_video': {'sg3': ['--network', '--seeds', '--shuffle-seed', '--grid', '--num-keyframes', '--w-frames', '--trunc', '--output']},
}

# Options that take a BOOL upstream: --x=True / --x=False must parse.
NVIDIA_BOOLS = {
    'train': ['--cond', '--mirror', '--fp32', '--nhwc', '--nobench', '--allow-tf32'],
    'calc_metrics': ['--mirror', '--verbose'],
    'legacy': ['--force-fp16'],
    'projector': ['--save-video'],
}

# Options NVIDIA requires that ours make optional would still be accepted; nothing is left out today.
# An NVIDIA option missing here must be named in the tool's --help with the reason.
EXPLAINED_IN_HELP = {}

# (tool, option) pairs being added by a change in flight, reported as xfail until they land. Empty:
# every NVIDIA option is checked.
PENDING = set()


def _command(tool):
    return __import__(tool).main


def _option_names(cmd):
    return {name for p in cmd.params if isinstance(p, click.Option) for name in p.opts + p.secondary_opts}


@pytest.mark.parametrize('tool', sorted(NVIDIA_OPTIONS))
def test_every_nvidia_option_exists_or_help_says_why(tool):
    cmd = _command(tool)
    ours = _option_names(cmd)
    help_text = CliRunner().invoke(cmd, ['--help']).output
    pending = []
    for repo, names in NVIDIA_OPTIONS[tool].items():
        for name in names:
            if name in ours or (name in EXPLAINED_IN_HELP.get(tool, ()) and name in help_text):
                continue
            assert (tool, name) in PENDING, f'{tool}.py lacks {repo} option {name}'
            pending.append(name)
    if pending:
        pytest.xfail(f'{tool}.py: {", ".join(sorted(set(pending)))} not added yet')


def _parse(cmd, args):
    with cmd.make_context(cmd.name or 'cmd', list(args), resilient_parsing=False) as ctx:
        return ctx.params


REQUIRED = {'train': ['--outdir', 'o'], 'calc_metrics': ['--network', 'n.pkl'], 'legacy': ['--source', 'a', '--dest', 'b'],
            'projector': ['--network', 'n', '--target', 't', '--outdir', 'o']}


@pytest.mark.parametrize('tool', sorted(NVIDIA_BOOLS))
def test_bool_options_take_true_and_false(tool):
    cmd = _command(tool)
    pending = [name for name in NVIDIA_BOOLS[tool] if (tool, name) in PENDING and name not in _option_names(cmd)]
    for name in NVIDIA_BOOLS[tool]:
        if name in pending:
            continue
        dest = next(p.name for p in cmd.params if isinstance(p, click.Option) and name in p.opts)
        for text, value in (('True', True), ('False', False), ('1', True), ('0', False)):
            params = _parse(cmd, REQUIRED[tool] + [f'{name}={text}'])
            assert params[dest] is value, (tool, name, text)
    if pending:
        pytest.xfail(f'{tool}.py: {", ".join(pending)} not added yet')


def test_flag_spellings_of_our_bools_still_work():
    import calc_metrics
    import legacy
    assert _parse(legacy.main, REQUIRED['legacy'] + ['--force-fp16'])['force_fp16'] is True
    assert _parse(legacy.main, REQUIRED['legacy'])['force_fp16'] is False
    assert _parse(calc_metrics.main, REQUIRED['calc_metrics'] + ['--quiet'])['quiet'] is True

# ---------------------------------------------------------------------------------------------
# train.py: --freezed, --nhwc, --resume shortcuts, stylegan3-r blur, the --cfg rule


@pytest.fixture(scope='module')
def data_zip(tmp_path_factory):
    from training.sample_data import make_sample_dataset
    path = tmp_path_factory.mktemp('data') / 'sample32.zip'
    make_sample_dataset(str(path), num_images=8, resolution=32, seed=0)
    return str(path)


def _dry_run(args):
    import train
    r = CliRunner().invoke(train.main, args + ['--dry-run', '--device', 'cpu'])
    assert r.exit_code == 0, r.output
    return r.output


def _options_json(output):
    start = output.index('{')
    return json.JSONDecoder().raw_decode(output[start:])[0]


def test_train_freezed_nhwc_and_the_cfg_note(data_zip, tmp_path):
    out = _dry_run(['--outdir', str(tmp_path), '--data', data_zip, '--cfg', 'stylegan2', '--freezed', '3', '--nhwc', 'True'])
    c = _options_json(out)
    assert c['D_kwargs']['block_kwargs']['freeze_layers'] == 3
    assert c['D_kwargs']['block_kwargs']['fp16_channels_last'] is True
    assert c['G_kwargs']['synthesis_kwargs']['fp16_channels_last'] is True
    assert 'sg3-stylegan2' in out  # plain "stylegan2" is never silent about which preset it is
    import dnnlib
    kwargs = dict(c['D_kwargs'])
    kwargs.update({k: v for k, v in dict(c_dim=0, img_resolution=32, img_channels=3).items() if k not in kwargs})
    D = dnnlib.util.construct_class_by_name(**kwargs)
    full = dnnlib.util.construct_class_by_name(**dict(kwargs, block_kwargs=dict(kwargs['block_kwargs'], freeze_layers=0)))
    assert 0 < sum(p.numel() for p in D.parameters()) < sum(p.numel() for p in full.parameters())  # layers became buffers


def test_train_resume_shortcuts_and_stylegan3r_blur(data_zip, tmp_path):
    import train
    c = _options_json(_dry_run(['--outdir', str(tmp_path), '--data', data_zip, '--resume', 'ffhq256']))
    assert c['resume_pkl'] == train.RESUME_SHORTCUTS['ffhq256'] and c['ada_kimg'] == 100
    assert set(train.RESUME_SHORTCUTS) == {'ffhq256', 'ffhq512', 'ffhq1024', 'celebahq256', 'lsundog256'}
    c = _options_json(_dry_run(['--outdir', str(tmp_path), '--data', data_zip, '--resume', 'noresume']))
    assert c.get('resume_pkl') is None
    c = _options_json(_dry_run(['--outdir', str(tmp_path), '--data', data_zip, '--cfg', 'stylegan3-r', '--batch', '4', '--gamma', '1']))
    assert c['loss_kwargs']['blur_init_sigma'] == 10
    c = _options_json(_dry_run(['--outdir', str(tmp_path), '--data', data_zip, '--cfg', 'stylegan3-r', '--batch', '4', '--gamma', '1', '--resume', 'ffhq256']))
    assert c['loss_kwargs']['blur_init_sigma'] == 0

# ---------------------------------------------------------------------------------------------
# dataset_tool.py: --width/--height, CIFAR-10, MNIST, the box-filter note


def _read_zip(path):
    with zipfile.ZipFile(path) as zf:
        labels = json.loads(zf.read('dataset.json'))['labels']
        images = [np.asarray(PIL.Image.open(io.BytesIO(zf.read(name)))) for name, _label in labels]
    return images, [label for _name, label in labels]


def test_dataset_tool_cifar10_archive(tmp_path):
    import dataset_tool
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (5, 4, 3072), dtype=np.uint8)  # 5 batches of 4 images, CHW rows as CIFAR stores them
    labels = rng.integers(0, 10, (5, 4))
    src = tmp_path / 'cifar-10-python.tar.gz'
    with tarfile.open(src, 'w:gz') as tar:
        for b in range(5):
            raw = pickle.dumps({'batch_label': f'batch {b + 1}', 'labels': [int(x) for x in labels[b]], 'data': data[b],
                                'filenames': [f'{i}.png' for i in range(4)]}, protocol=2)
            info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{b + 1}')
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    r = CliRunner().invoke(dataset_tool.main, ['--source', str(src), '--dest', str(tmp_path / 'c.zip')])
    assert r.exit_code == 0, r.output
    images, got = _read_zip(tmp_path / 'c.zip')
    assert len(images) == 20 and got == [int(x) for x in labels.reshape(-1)]
    assert np.array_equal(images[6], data[1, 2].reshape(3, 32, 32).transpose(1, 2, 0))

    # A "CIFAR" batch that names another callable is refused without running it.
    evil = tmp_path / 'evil' / 'cifar-10-python.tar.gz'
    evil.parent.mkdir()
    with tarfile.open(evil, 'w:gz') as tar:
        raw = pickle.dumps({'data': os.system}, protocol=2)
        for b in range(5):
            info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{b + 1}')
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    r = CliRunner().invoke(dataset_tool.main, ['--source', str(evil), '--dest', str(tmp_path / 'e.zip')])
    assert r.exit_code == 1 and 'not allowed' in r.output and not (tmp_path / 'e.zip').exists()


def test_dataset_tool_mnist_archive_width_height_and_filter_note(tmp_path):
    import dataset_tool
    rng = np.random.default_rng(1)
    digits = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 6).astype(np.uint8)
    with gzip.open(tmp_path / 'train-images-idx3-ubyte.gz', 'wb') as f:
        f.write(np.array([0, 0, 8, 3, 0, 0, 0, 6, 0, 0, 0, 28, 0, 0, 0, 28], np.uint8).tobytes() + digits.tobytes())
    with gzip.open(tmp_path / 'train-labels-idx1-ubyte.gz', 'wb') as f:
        f.write(np.array([0, 0, 8, 1, 0, 0, 0, 6], np.uint8).tobytes() + labels.tobytes())
    r = CliRunner().invoke(dataset_tool.main, ['--source', str(tmp_path / 'train-images-idx3-ubyte.gz'),
                                               '--dest', str(tmp_path / 'm.zip')])
    assert r.exit_code == 0, r.output
    images, got = _read_zip(tmp_path / 'm.zip')
    assert got == [int(x) for x in labels] and images[0].shape == (32, 32)
    assert np.array_equal(images[4][2:30, 2:30], digits[4]) and not images[4][:2].any()  # padded to 32 as NVIDIA
    # --width/--height: the stylegan2-ada spelling of --resolution (box filter: exact 2x2 means).
    r = CliRunner().invoke(dataset_tool.main, ['--source', str(tmp_path / 'train-images-idx3-ubyte.gz'),
                                               '--dest', str(tmp_path / 'm16.zip'), '--width', '16', '--height', '16'])
    assert r.exit_code == 0, r.output
    small, _ = _read_zip(tmp_path / 'm16.zip')
    padded = np.pad(digits[0], 2).astype(np.float64)
    assert np.abs(small[0] - padded.reshape(16, 2, 16, 2).mean((1, 3))).max() <= 0.5 + 1e-9
    r = CliRunner().invoke(dataset_tool.main, ['--source', str(tmp_path / 'train-images-idx3-ubyte.gz'),
                                               '--dest', str(tmp_path / 'x.zip'), '--width', '16'])
    assert r.exit_code != 0 and '--height' in r.output
    help_text = CliRunner().invoke(dataset_tool.main, ['--help']).output
    assert 'lanczos' in help_text and "NVIDIA" in help_text

# ---------------------------------------------------------------------------------------------
# environment.yml


def test_environment_yml_uses_live_channels_and_pins_a_supported_torch():
    import yaml
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / 'environment.yml').read_text()
    env = yaml.safe_load(text)
    assert env['channels'] == ['conda-forge']  # the `pytorch` channel stopped publishing after 2.5
    conda = [d for d in env['dependencies'] if isinstance(d, str)]
    pip = next(d['pip'] for d in env['dependencies'] if isinstance(d, dict))
    assert not any(d.startswith(('pytorch', 'pytorch-cuda')) for d in conda)
    torch_pin = next(p for p in pip if p.startswith('torch=='))
    triton_pin = next(p for p in pip if p.startswith('triton=='))
    assert f'{torch_pin.split("==")[1]} + CUDA 13.0, {triton_pin.replace("==", " ")}' in text  # the stated support

# ---------------------------------------------------------------------------------------------
# Choice values: NVIDIA's values are accepted with the same spelling.

NVIDIA_CHOICES = {
    ('train', '--cfg'): ['auto', 'stylegan2', 'paper256', 'paper512', 'paper1024', 'cifar', 'stylegan3-t', 'stylegan3-r'],
    ('train', '--aug'): ['noaug', 'ada', 'fixed'],
    ('train', '--augpipe'): ['blit', 'geom', 'color', 'filter', 'noise', 'cutout', 'bg', 'bgc', 'bgcf', 'bgcfn', 'bgcfnc'],
    ('generate', '--noise-mode'): ['const', 'random', 'none'],
    ('gen_images', '--noise-mode'): ['const', 'random', 'none'],
    ('style_mixing', '--noise-mode'): ['const', 'random', 'none'],
    ('dataset_tool', '--transform'): ['center-crop', 'center-crop-wide'],
    ('dataset_tool', '--resize-filter'): ['box', 'lanczos'],
}


@pytest.mark.parametrize('tool,option', sorted(NVIDIA_CHOICES))
def test_nvidia_choice_values_are_accepted(tool, option):
    cmd = _command(tool)
    param = next(p for p in cmd.params if isinstance(p, click.Option) and option in p.opts)
    assert isinstance(param.type, click.Choice)
    assert set(NVIDIA_CHOICES[(tool, option)]) <= set(param.type.choices), (tool, option)
