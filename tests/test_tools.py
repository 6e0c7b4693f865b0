"""The image tools a stylegan2-ada / stylegan3 user reaches for: gen_images.py (incl. --translate,
--rotate, --projected-w), style_mixing.py, gen_video.py, projector.py on the shipped teacher, and
legacy.py --to rosinality / --drop G / --force-fp16=BOOL."""
import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from training import ckpt_rosinality, export_rosinality, image_synthesis, networks_stylegan2, networks_stylegan3
from training.checkpoints import load_network, save_snapshot

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / 'assets' / 'teacher-sample32.pkl'


def _png(path):
    return np.asarray(PIL.Image.open(path))


@pytest.fixture(scope='module')
def teacher():
    return load_network(str(TEACHER), verbose=False).G_ema


@pytest.fixture(scope='module')
def sg3_pkl(tmp_path_factory):
    torch.manual_seed(0)
    G = networks_stylegan3.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                                     mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=16, num_layers=4,
                                     num_critical=1, margin_size=2, num_fp16_res=0, conv_clamp=None).eval()
    path = tmp_path_factory.mktemp('sg3') / 'sg3.pkl'
    save_snapshot(str(path), dict(G=G, G_ema=G, D=None, augment_pipe=None, training_set_kwargs=None))
    return path, G

# ---------------------------------------------------------------------------------------------
# gen_images.py / generate.py


def test_gen_images_seeds_match_nvidia_latents_and_generate_py(tmp_path, teacher):
    import gen_images
    import generate
    r = CliRunner().invoke(gen_images.main, ['--network', str(TEACHER), '--seeds', '5', '--outdir', str(tmp_path / 'a'),
                                             '--trunc', '0.7', '--device', 'cpu'])
    assert r.exit_code == 0, r.output
    z = torch.from_numpy(np.random.RandomState(5).randn(1, teacher.z_dim)).float()  # NVIDIA's seed -> z
    with torch.no_grad():
        img = teacher(z, torch.zeros([1, 0]), truncation_psi=0.7, noise_mode='const')
    expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy()
    assert np.array_equal(_png(tmp_path / 'a' / 'seed0005.png'), expected)
    r = CliRunner().invoke(generate.main, ['--network', str(TEACHER), '--seeds', '5', '--outdir', str(tmp_path / 'b'),
                                           '--trunc', '0.7'])
    assert r.exit_code == 0, r.output
    assert np.array_equal(_png(tmp_path / 'b' / 'seed0005.png'), expected)  # one implementation behind both


def test_make_transform_is_stylegan3s_matrix():
    a = 25.0
    m = image_synthesis.make_transform((0.3, -0.2), a)
    c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
    np.testing.assert_allclose(m, [[c, s, 0.3], [-s, c, -0.2], [0, 0, 1]], atol=1e-12)


def test_gen_images_translate_rotate_on_stylegan3_and_refused_on_stylegan2(tmp_path, sg3_pkl):
    import gen_images
    path, G = sg3_pkl
    r = CliRunner().invoke(gen_images.main, ['--network', str(path), '--seeds', '1', '--outdir', str(tmp_path / 'o'),
                                             '--translate', '0.1,-0.05', '--rotate', '10', '--device', 'cpu'])
    assert r.exit_code == 0, r.output
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    inverse = np.linalg.inv(np.array([[c, s, 0.1], [-s, c, -0.05], [0, 0, 1]]))
    G2 = load_network(str(path), verbose=False).G_ema
    z = torch.from_numpy(np.random.RandomState(1).randn(1, G.z_dim)).float()
    with torch.no_grad():
        plain = G2(z, torch.zeros([1, 0]), noise_mode='const')
        G2.synthesis.input.transform.copy_(torch.from_numpy(inverse).float())
        moved = G2(z, torch.zeros([1, 0]), noise_mode='const')
    as_uint8 = lambda x: (x.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy()  # noqa: E731
    out = _png(tmp_path / 'o' / 'seed0001.png')
    assert np.array_equal(out, as_uint8(moved)) and not np.array_equal(out, as_uint8(plain))
    r = CliRunner().invoke(gen_images.main, ['--network', str(TEACHER), '--seeds', '1', '--outdir', str(tmp_path / 'x'),
                                             '--rotate', '5'])
    assert r.exit_code == 1 and 'StyleGAN3' in r.output and 'Traceback' not in r.output
    for bad in (['--translate', '0.1'], ['--translate', 'nan,0']):
        r = CliRunner().invoke(gen_images.main, ['--network', str(path), '--seeds', '1', '--outdir', str(tmp_path / 'y')] + bad)
        assert r.exit_code == 1 and '--translate' in r.output


def test_projected_w_renders_in_both_tools(tmp_path, teacher):
    import gen_images
    import generate
    ws = torch.randn(2, teacher.num_ws, teacher.w_dim) * 0.3 + teacher.mapping.w_avg
    np.savez(tmp_path / 'w.npz', w=ws.numpy())
    for tool, sub in ((gen_images, 'g'), (generate, 'h')):
        r = CliRunner().invoke(tool.main, ['--network', str(TEACHER), '--projected-w', str(tmp_path / 'w.npz'),
                                           '--outdir', str(tmp_path / sub)])
        assert r.exit_code == 0, r.output
        with torch.no_grad():
            ref = teacher.synthesis(ws[1:2], noise_mode='const')
        assert np.array_equal(_png(tmp_path / sub / 'proj01.png'),
                              (ref.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy())
    np.savez(tmp_path / 'bad.npz', w=np.zeros((1, 3, 7), np.float32))
    r = CliRunner().invoke(gen_images.main, ['--network', str(TEACHER), '--projected-w', str(tmp_path / 'bad.npz'),
                                             '--outdir', str(tmp_path / 'z')])
    assert r.exit_code == 1 and 'expected shape' in r.output

# ---------------------------------------------------------------------------------------------
# style_mixing.py, gen_video.py


def test_style_mixing_cells_and_grid(tmp_path, teacher):
    import style_mixing
    r = CliRunner().invoke(style_mixing.main, ['--network', str(TEACHER), '--rows', '1,2', '--cols', '3-5',
                                               '--styles', '0-3', '--outdir', str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = teacher.img_resolution
    grid = _png(tmp_path / 'grid.png')
    assert grid.shape == (3 * res, 4 * res, 3) and not grid[:res, :res].any()
    z = {s: torch.from_numpy(np.random.RandomState(s).randn(1, teacher.z_dim)).float() for s in (2, 4)}
    with torch.no_grad():
        w2, w4 = teacher.mapping(z[2], None), teacher.mapping(z[4], None)
        mixed = torch.cat([w4[:, :4], w2[:, 4:]], dim=1)  # layers 0-3 from the column seed
        img = teacher.synthesis(mixed, noise_mode='const')
    cell = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy()
    assert np.array_equal(_png(tmp_path / '2-4.png'), cell)
    assert np.array_equal(grid[2 * res:3 * res, 2 * res:3 * res], cell)  # row seed 2, column seed 4
    assert np.array_equal(grid[:res, 2 * res:3 * res], _png(tmp_path / '4-4.png'))
    r = CliRunner().invoke(style_mixing.main, ['--network', str(TEACHER), '--rows', '1', '--cols', '2', '--styles', '0-99',
                                               '--outdir', str(tmp_path / 'bad')])
    assert r.exit_code == 1 and '--styles' in r.output


class _FakeWriter:
    frames = []

    def __init__(self, path):
        self.path = path

    def append_data(self, frame):
        _FakeWriter.frames.append(np.array(frame))

    def close(self):
        Path(self.path).write_bytes(b'mp4')


def test_gen_video_frames_with_a_recording_writer_and_a_clear_line_without_imageio(tmp_path, teacher, monkeypatch):
    import gen_video
    monkeypatch.setitem(sys.modules, 'imageio', None)  # as if not installed
    out = tmp_path / 'v.mp4'
    r = CliRunner().invoke(gen_video.main, ['--network', str(TEACHER), '--seeds', '0-3', '--grid', '2x1', '--output', str(out)])
    assert r.exit_code == 1 and 'imageio' in r.output and 'Traceback' not in r.output and not out.exists()

    fake = types.SimpleNamespace(get_writer=lambda path, **kwargs: _FakeWriter(path))
    monkeypatch.setitem(sys.modules, 'imageio', fake)
    monkeypatch.setitem(sys.modules, 'imageio_ffmpeg', types.SimpleNamespace())
    _FakeWriter.frames = []
    r = CliRunner().invoke(gen_video.main, ['--network', str(TEACHER), '--seeds', '0-3', '--grid', '2x1', '--w-frames', '3',
                                            '--output', str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == b'mp4' and not [p for p in tmp_path.iterdir() if 'tmp' in p.name]
    frames = _FakeWriter.frames
    res = teacher.img_resolution
    assert len(frames) == 2 * 3 and frames[0].shape == (res, 2 * res, 3)  # 2 keyframes x 3 frames, 2x1 grid
    keys = image_synthesis.generate_for_seeds(teacher, [0, 1, 2, 3])
    # Cell (0, 0) runs through seeds 0, 1 and cell (0, 1) through 2, 3; frame k * w_frames is keyframe k.
    assert np.array_equal(frames[0], np.concatenate([keys[0], keys[2]], axis=1))
    assert np.array_equal(frames[3], np.concatenate([keys[1], keys[3]], axis=1))
    assert not np.array_equal(frames[1], frames[0])

# ---------------------------------------------------------------------------------------------
# projector.py


class PixelEmbedding(torch.nn.Module):
    """A stand-in for NVIDIA's vgg16.pt LPIPS embedding: multi-scale pixels (no download in tests)."""

    def forward(self, img: torch.Tensor, resize_images: bool = True, return_lpips: bool = False,
                return_features: bool = False) -> torch.Tensor:
        x = img.to(torch.float32) / 255
        feats = [x.flatten(1)]
        for k in [2, 4, 8]:
            feats.append(torch.nn.functional.avg_pool2d(x, k).flatten(1) * k)
        f = torch.cat(feats, 1)
        return f / f.shape[1] ** 0.5 * 10


def test_projector_recovers_a_teacher_image(tmp_path, teacher, monkeypatch):
    import gen_images
    import projector
    from metrics.agreement import psnr
    det = tmp_path / 'det'
    det.mkdir()
    torch.jit.save(torch.jit.script(PixelEmbedding()), str(det / 'vgg16.pt'))
    target = image_synthesis.generate_for_seeds(teacher, [5])[0]
    image_synthesis.save_image(target, str(tmp_path / 'target_in.png'))
    out = tmp_path / 'out'
    monkeypatch.setitem(sys.modules, 'imageio', types.SimpleNamespace(get_writer=lambda path, **kwargs: _FakeWriter(path)))
    monkeypatch.setitem(sys.modules, 'imageio_ffmpeg', types.SimpleNamespace())
    _FakeWriter.frames = []
    r = CliRunner().invoke(projector.main, ['--network', str(TEACHER), '--target', str(tmp_path / 'target_in.png'),
                                            '--num-steps', '100', '--outdir', str(out), '--detector-dir', str(det),
                                            '--device', 'cpu'])
    assert r.exit_code == 0, r.output
    assert np.array_equal(_png(out / 'target.png'), target)
    w = np.load(out / 'projected_w.npz')['w']
    assert w.shape == (1, teacher.num_ws, teacher.w_dim) and np.allclose(w[0, 0], w[0, -1])  # one w, every layer
    proj = _png(out / 'proj.png')
    start = image_synthesis.synthesize_ws(teacher, teacher.mapping.w_avg.reshape(1, 1, -1).repeat(1, teacher.num_ws, 1))
    # Stated result (32 px teacher, 100 steps, CPU): PSNR about 26 dB, from about 12 dB at the mean w.
    assert psnr(target[None], proj[None])[0] > 22 and psnr(target[None], start)[0] < 16
    # proj.mp4: one frame per step, target | projection.
    res = teacher.img_resolution
    frames = _FakeWriter.frames
    assert (out / 'proj.mp4').read_bytes() == b'mp4' and len(frames) == 100
    assert np.array_equal(frames[-1], np.concatenate([target, proj], axis=1)) and frames[0].shape == (res, 2 * res, 3)
    r = CliRunner().invoke(gen_images.main, ['--network', str(TEACHER), '--projected-w', str(out / 'projected_w.npz'),
                                             '--outdir', str(tmp_path / 'again')])
    assert r.exit_code == 0 and np.array_equal(_png(tmp_path / 'again' / 'proj00.png'), proj)
    # Without imageio the video is skipped with one line and the rest is written.
    monkeypatch.setitem(sys.modules, 'imageio', None)
    r = CliRunner().invoke(projector.main, ['--network', str(TEACHER), '--target', str(tmp_path / 'target_in.png'),
                                            '--num-steps', '2', '--outdir', str(tmp_path / 'nov'), '--detector-dir', str(det)])
    assert r.exit_code == 0 and 'proj.mp4 skipped' in r.output and 'imageio' in r.output
    assert (tmp_path / 'nov' / 'proj.png').is_file() and not (tmp_path / 'nov' / 'proj.mp4').exists()
    r = CliRunner().invoke(projector.main, ['--network', str(TEACHER), '--target', str(tmp_path / 'missing.png'),
                                            '--outdir', str(tmp_path / 'o2'), '--detector-dir', str(det)])
    assert r.exit_code == 1 and 'missing.png' in r.output and not (tmp_path / 'o2').exists()

# ---------------------------------------------------------------------------------------------
# legacy.py


def test_rosinality_export_is_the_exact_inverse_of_the_converter(fixtures_dir):
    data = np.load(fixtures_dir / 'rosinality_g32.npz')
    sd = {k[len('g_ema/'):]: torch.from_numpy(data[k]) for k in data.files if k.startswith('g_ema/')}
    G, _notes = ckpt_rosinality.convert_rosinality_generator(sd)
    back = export_rosinality.generator_state_dict(G)
    assert sorted(back) == sorted(sd)
    for key in sd:  # bit-exact, the blur kernels included (rosinality's 1/16 [1,3,3,1]^2 scale)
        assert back[key].dtype == sd[key].dtype and torch.equal(back[key], sd[key]), key


def test_rosinality_export_names_and_shapes_of_a_full_size_checkpoint(fixtures_dir):
    ref = json.loads((fixtures_dir / 'rosinality_stylegan2_keys.json').read_text())
    torch.manual_seed(0)
    G = networks_stylegan2.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                                     mapping_kwargs=dict(num_layers=8), channel_base=32768, channel_max=512,
                                     num_fp16_res=0, conv_clamp=None)
    shapes = {k: list(v.shape) for k, v in export_rosinality.generator_state_dict(G).items()}
    assert shapes == {k: v for k, v in ref['g_ema_size256_cm2'].items() if k in shapes} and set(ref['g_ema_size256_cm2']) - set(shapes) <= {k for k in ref['g_ema_size256_cm2'] if k.startswith('noises.')}
    D = networks_stylegan2.Discriminator(c_dim=0, img_resolution=256, img_channels=3, architecture='resnet',
                                         channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=None,
                                         epilogue_kwargs=dict(mbstd_group_size=4, mbstd_num_channels=1))
    assert {k: list(v.shape) for k, v in export_rosinality.discriminator_state_dict(D).items()} == ref['d_size256_cm2']


def test_legacy_to_rosinality_roundtrip_and_refusals(tmp_path, teacher, sg3_pkl):
    import legacy
    dest = tmp_path / 'teacher.pt'
    r = CliRunner().invoke(legacy.main, ['--source', str(TEACHER), '--dest', str(dest), '--to', 'rosinality'])
    assert r.exit_code == 0, r.output
    ckpt = torch.load(str(dest), weights_only=True)
    assert set(ckpt) == {'g_ema', 'd', 'latent_avg'}  # the shipped teacher has no raw G
    back = load_network(str(dest), verbose=False)  # our rosinality converter reads it back
    z = torch.randn(3, teacher.z_dim)
    with torch.no_grad():
        a = teacher(z, None, noise_mode='const', truncation_psi=0.5)
        b = back.G_ema(z, None, noise_mode='const', truncation_psi=0.5)
        real = torch.rand(4, 3, 32, 32) * 2 - 1
        d_a = load_network(str(TEACHER), verbose=False).D(real, None)
        d_b = back.D(real, None)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(d_a, d_b, atol=1e-5)
    r = CliRunner().invoke(legacy.main, ['--source', str(sg3_pkl[0]), '--dest', str(tmp_path / 'x.pt'), '--to', 'rosinality'])
    assert r.exit_code == 1 and 'StyleGAN3' in r.output and not (tmp_path / 'x.pt').exists()


def test_legacy_drop_G_is_readable_by_nvidias_loader_checks_and_force_fp16_takes_a_bool(tmp_path):
    import legacy
    dest = tmp_path / 'small.pkl'
    r = CliRunner().invoke(legacy.main, ['--source', str(TEACHER), '--dest', str(dest), '--drop', 'G', '--force-fp16=False'])
    assert r.exit_code == 0, r.output
    with open(dest, 'rb') as f:
        data = pickle.load(f)  # what NVIDIA's legacy.load_network_pkl does, then it asserts these:
    for key in ('G', 'D', 'G_ema'):
        assert isinstance(data[key], torch.nn.Module), key
    assert isinstance(data['training_set_kwargs'], (dict, type(None))) and data.get('augment_pipe') is None
    assert data['G'] is data['G_ema'] and os.path.getsize(dest) < 1.05 * os.path.getsize(TEACHER)  # stored once
    fp16 = tmp_path / 'fp16.pkl'
    r = CliRunner().invoke(legacy.main, ['--source', str(TEACHER), '--dest', str(fp16), '--force-fp16=True'])
    assert r.exit_code == 0, r.output
    assert load_network(str(fp16), verbose=False).G_ema.synthesis.num_fp16_res == 4
