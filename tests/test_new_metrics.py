"""NVIDIA's generator-only metrics on tiny networks, each against an independent re-computation:
PPL (ppl2_wend, ppl_{z,w}{full,end}), is50k, the StyleGAN3 equivariance metrics, kid{N}k and the
bare P/R/D/C keys; calc_metrics.py on the shipped teacher; the training loop's JSON metric line."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import torch
from click.testing import CliRunner

import dnnlib
from metrics import equivariance as eq
from metrics import inception_score, metric_main
from metrics import perceptual_path_length as ppl
from metrics.sample_rng import batch_rng
from tests.test_metrics import write_stand_in_detectors
from training import networks_stylegan2, networks_stylegan3
from training.checkpoints import save_snapshot

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / 'assets' / 'teacher-sample32.pkl'


@pytest.fixture(scope='module')
def det_dir(tmp_path_factory):
    return write_stand_in_detectors(str(tmp_path_factory.mktemp('detectors')))


def tiny_sg2(seed=0):
    torch.manual_seed(seed)
    return networks_stylegan2.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                                        mapping_kwargs=dict(num_layers=1), channel_base=128, channel_max=16,
                                        num_fp16_res=0).eval()


def tiny_sg3(seed=0):
    torch.manual_seed(seed)
    return networks_stylegan3.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                                        mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=16, num_layers=4,
                                        num_critical=1, margin_size=2, num_fp16_res=0, conv_clamp=None).eval()

# ---------------------------------------------------------------------------------------------
# PPL


def _slerp_textbook(a, b, t):
    """sin((1-t)W)/sin(W) a + sin(tW)/sin(W) b on the unit sphere, float64 numpy."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    omega = np.arccos(np.clip(a @ b, -1, 1))
    out = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
    return out / np.linalg.norm(out)


@torch.no_grad()
def _ppl_oracle(G, vgg, num_samples, batch_size, epsilon, space, sampling, crop, seed=0):
    """Sample by sample: the same draws (batch_rng), explicit interpolation, crop, LPIPS distance."""
    G = __import__('copy').deepcopy(G)
    scores = []
    for b in range(-(-num_samples // batch_size)):
        gen = batch_rng(seed, b)
        t = torch.rand([batch_size], generator=gen).numpy().astype(np.float64) * (1 if sampling == 'full' else 0)
        z = torch.randn([batch_size * 2, G.z_dim], generator=gen)
        for name, buf in G.named_buffers():  # one noise draw per batch, shared by both images of a pair
            if name.endswith('.noise_const'):
                buf.copy_(torch.randn(buf.shape, generator=gen))
        for i in range(batch_size):
            z0, z1 = z[i], z[batch_size + i]
            if space == 'w':
                w0 = G.mapping(z0[None], None).double()
                w1 = G.mapping(z1[None], None).double()
                ws = [(w0 + tt * (w1 - w0)).float() for tt in (t[i], t[i] + epsilon)]
            else:
                a, bb = z0.double().numpy(), z1.double().numpy()
                ws = [G.mapping(torch.from_numpy(_slerp_textbook(a, bb, tt)).float()[None], None) for tt in (t[i], t[i] + epsilon)]
            emb = []
            for w in ws:
                img = G.synthesis(w, noise_mode='const')
                if crop:  # 16 px: rows 6..13, columns 4..11
                    img = img[:, :, 6:14, 4:12]
                emb.append(vgg((img + 1) * 127.5, resize_images=False, return_lpips=True).double())
            scores.append(float((emb[0] - emb[1]).square().sum() / epsilon ** 2))
    scores = np.sort(np.array(scores[:num_samples]))
    n = len(scores)
    lo, hi = scores[int(np.floor(0.01 * (n - 1)))], scores[int(np.ceil(0.99 * (n - 1)))]
    return scores[(scores >= lo) & (scores <= hi)].mean()


@pytest.mark.parametrize('space,sampling,crop', [('w', 'end', False), ('z', 'full', True), ('w', 'full', True), ('z', 'end', True)])
def test_ppl_matches_sample_by_sample_recomputation(det_dir, space, sampling, crop):
    G = tiny_sg2()
    vgg = torch.jit.load(os.path.join(det_dir, 'vgg16.pt'))
    # eps 1e-2 keeps float32 rounding out of the difference quotient; the definition is the same.
    ours, scores = ppl.compute_ppl(G, num_samples=10, epsilon=1e-2, space=space, sampling=sampling, crop=crop,
                                   batch_size=2, detector_dir=det_dir)
    ref = _ppl_oracle(G, vgg, 10, 2, 1e-2, space, sampling, crop)
    assert len(scores) == 10 and np.all(scores > 0)
    assert ours == pytest.approx(ref, rel=1e-3)


def test_ppl_percentile_filter_and_registered_names(det_dir):
    scores = np.arange(1, 201, dtype=np.float64)  # 1st 'lower' = 2, 99th 'higher' = 199
    assert ppl.filtered_mean(scores) == pytest.approx(np.arange(2, 200).mean())
    G = tiny_sg2()
    for name, space, sampling, crop in [('ppl2_wend', 'w', 'end', False), ('ppl_zfull', 'z', 'full', True),
                                        ('ppl_wfull', 'w', 'full', True), ('ppl_zend', 'z', 'end', True),
                                        ('ppl_wend', 'w', 'end', True)]:
        r = metric_main.calc_metric(name, G=G, dataset_kwargs=None, detector_dir=det_dir, num_gen=4, device='cpu')
        assert list(r.results) == [name] and r.details.num_gen == 4
        assert (r.details.space, r.details.sampling, r.details.crop, r.details.epsilon) == (space, sampling, crop, 1e-4)
        direct, _ = ppl.compute_ppl(G, num_samples=4, space=space, sampling=sampling, crop=crop, detector_dir=det_dir)
        assert r.results[name] == pytest.approx(direct, rel=1e-12) and np.isfinite(direct)

# ---------------------------------------------------------------------------------------------
# Inception score


def test_inception_score_formula_against_scipy_entropy():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(12, 0.3), size=100)
    mean, std = inception_score.inception_score_from_probs(probs, num_splits=10)
    per_split = []
    for part in np.split(probs, 10):
        marginal = part.mean(0)
        per_split.append(np.exp(np.mean([scipy.special.rel_entr(p, marginal).sum() for p in part])))
    assert mean == pytest.approx(np.mean(per_split), rel=1e-12) and std == pytest.approx(np.std(per_split), rel=1e-10)
    # Analytic cases: N distinct one-hot classes per split -> N; one repeated distribution -> 1.
    onehot = np.tile(np.eye(10) * (1 - 1e-12) + 1e-13, (2, 1))
    assert inception_score.inception_score_from_probs(onehot, num_splits=2)[0] == pytest.approx(10, rel=1e-6)
    assert inception_score.inception_score_from_probs(np.tile(probs[:1], (20, 1)), num_splits=2) == pytest.approx((1, 0))


def test_is50k_uses_the_softmax_without_output_bias(det_dir):
    from metrics import features
    G = tiny_sg2()
    r = metric_main.calc_metric('is50k', G=G, dataset_kwargs=None, detector_dir=det_dir, num_gen=20, device='cpu')
    assert set(r.results) == {'is50k_mean', 'is50k_std'}
    probs = features.compute_generator_features(G, 'inception', num_items=20, capture_all=True, detector_dir=det_dir,
                                                detector_kwargs=dict(no_output_bias=True), noise_mode='random').get_all()
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)  # class probabilities, not pool features
    per_split = [np.exp(np.mean([scipy.special.rel_entr(p, part.mean(0)).sum() for p in part])) for part in np.split(probs.astype(np.float64), 10)]
    assert r.results.is50k_mean == pytest.approx(np.mean(per_split), rel=1e-6)

# ---------------------------------------------------------------------------------------------
# Equivariance


def test_integer_and_fractional_translation_against_numpy():
    x = torch.randn(2, 3, 12, 12)
    z, m = eq.apply_integer_translation(x, 2 / 12, -3 / 12)
    ref = np.zeros((2, 3, 12, 12), np.float32)
    ref[:, :, :9, 2:] = x.numpy()[:, :, 3:, :10]  # content moves 2 px right, 3 px up
    np.testing.assert_array_equal(z.numpy(), ref)
    assert m.sum() == 2 * 3 * 9 * 10
    # A whole-pixel shift through the Lanczos path is the integer shift inside its mask.
    zf, mf = eq.apply_fractional_translation(x, 2 / 12, -3 / 12)
    assert mf.sum() > 0
    np.testing.assert_allclose((zf * mf).numpy(), (z * mf).numpy(), atol=1e-5)
    # A low-frequency sinusoid shifted by 0.4 px comes out as the analytically shifted sinusoid.
    xs = torch.arange(32, dtype=torch.float32)
    wave = torch.cos(2 * np.pi * 0.05 * xs)[None, None, None, :].repeat(1, 1, 32, 1)
    zs, ms = eq.apply_fractional_translation(wave, 0.4 / 32, 0)
    expected = torch.cos(2 * np.pi * 0.05 * (xs - 0.4))[None, None, None, :].repeat(1, 1, 32, 1)
    assert (((zs - expected) * ms).abs().max()) < 5e-3  # Lanczos-3 ripple at 0.05 cycles/px


class FakeSG3(torch.nn.Module):
    """An ideally equivariant (or, with follow=False, transform-blind) 'generator': it renders a fixed
    band-limited pattern at the input coordinates u = A x + b of its user transform [A | b]."""

    def __init__(self, res=32, follow=True):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.img_resolution, self.img_channels = 4, 0, 4, 1, res, 3
        self.follow = follow
        self.synthesis = torch.nn.Module()
        self.synthesis.input = torch.nn.Module()
        self.synthesis.input.register_buffer('transform', torch.eye(3))
        self.mapping = lambda z, c: z[:, None, :]

    def _render(self, ws, **_kwargs):
        res = self.img_resolution
        coords = (torch.arange(res, dtype=torch.float64) + 0.5) / res - 0.5
        y, x = torch.meshgrid(coords, coords, indexing='ij')
        m = self.synthesis.input.transform.to(torch.float64) if self.follow else torch.eye(3, dtype=torch.float64)
        u = m[0, 0] * x + m[0, 1] * y + m[0, 2]
        v = m[1, 0] * x + m[1, 1] * y + m[1, 2]
        imgs = []
        for w in ws[:, 0].to(torch.float64):
            r2 = u.square() + v.square()
            imgs.append(torch.stack([torch.exp(-r2 * (6 + w[0].abs())) * torch.cos(3 * u + w[1]),
                                     torch.exp(-r2 * 5) * torch.sin(2 * v + w[2]), torch.exp(-r2 * 8) * 0.5]))
        return torch.stack(imgs).float()

    def __getattr__(self, name):
        return super().__getattr__(name)


def _fake(follow):
    G = FakeSG3(follow=follow)
    G.synthesis.forward = G._render
    return G


def test_equivariance_of_an_ideal_and_a_transform_blind_generator():
    ideal = eq.compute_equivariance(_fake(True), num_samples=8, kinds=('int', 'frac', 'rot'))
    blind = eq.compute_equivariance(_fake(False), num_samples=8, kinds=('int', 'frac', 'rot'))
    assert ideal[0] > 60 and ideal[1] > 40 and ideal[2] > 35, ideal  # conventions of t and angle match
    assert all(b < a - 10 for a, b in zip(ideal, blind)), (ideal, blind)
    # The transform-blind EQ-T: recompute from the same draws with numpy shifts and masks.
    G = _fake(False)
    err = count = 0.0
    for b in range(2):
        d = eq.draw_batch(G, batch_rng(0, b), 4)
        img = G.synthesis(d.z[:, None, :]).double().numpy()
        ix, iy = int(round(float(d.t_int[0]) * 32)), int(round(float(d.t_int[1]) * 32))
        ref = np.zeros_like(img)
        mask = np.zeros_like(img)
        ref[:, :, max(iy, 0):32 + min(iy, 0), max(ix, 0):32 + min(ix, 0)] = img[:, :, max(-iy, 0):32 + min(-iy, 0), max(-ix, 0):32 + min(-ix, 0)]
        mask[:, :, max(iy, 0):32 + min(iy, 0), max(ix, 0):32 + min(ix, 0)] = 1
        err += (((ref - img) * mask) ** 2).sum()
        count += mask.sum()
    assert blind[0] == pytest.approx(20 * np.log10(2) - 10 * np.log10(err / count), abs=1e-4)


def test_equivariance_metric_names_on_a_tiny_stylegan3_and_stylegan2_refused():
    G = tiny_sg3()
    values = {}
    for name in ('eqt50k_int', 'eqt50k_frac', 'eqr50k'):
        r = metric_main.calc_metric(name, G=G, dataset_kwargs=None, num_gen=8, device='cpu')
        assert list(r.results) == [name] and np.isfinite(r.results[name]) and 5 < r.results[name] < 120
        values[name] = r.results[name]
    assert values == {k: v for k, v in zip(values, eq.compute_equivariance(G, num_samples=8, kinds=('int', 'frac', 'rot')))}
    with pytest.raises(dnnlib.util.UserError, match='StyleGAN3'):
        metric_main.calc_metric('eqt50k_int', G=tiny_sg2(), dataset_kwargs=None, num_gen=4, device='cpu')

# ---------------------------------------------------------------------------------------------
# Registry, calc_metrics.py on the shipped teacher, the training loop's JSON line


def test_registry_has_nvidia_names_and_kid_and_bare_prdc_keys(tmp_path, det_dir):
    for name in ['fid50k_full', 'kid50k_full', 'pr50k3_full', 'ppl2_wend', 'eqt50k_int', 'eqt50k_frac', 'eqr50k',
                 'fid50k', 'kid50k', 'pr50k3', 'is50k', 'ppl_zfull', 'ppl_wfull', 'ppl_zend', 'ppl_wend']:
        assert metric_main.is_valid_metric(name), name
    from tests.test_metrics_extract import TinyG, _write_dataset
    data = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=_write_dataset(str(tmp_path / 'd'), n=24))
    r = metric_main.calc_metric('prdc1k', G=TinyG(), dataset_kwargs=data, detector_dir=det_dir, num_gen=20,
                                allow_fewer_real=True)
    for key in ('precision', 'recall', 'density', 'coverage'):
        assert r.results[key] == r.results[f'prdc1k_{key}']
    kid = metric_main.calc_metric('kid1k', G=TinyG(), dataset_kwargs=data, detector_dir=det_dir, num_gen=20,
                                  allow_fewer_real=True)
    assert list(kid.results) == ['kid1k'] and kid.details.num_real == 24


def test_calc_metrics_on_the_shipped_teacher_and_a_tiny_sg3(tmp_path, det_dir):
    import calc_metrics
    run = tmp_path / 'run'
    result = CliRunner().invoke(calc_metrics.main, ['--network', str(TEACHER), '--metrics', 'ppl2_wend,is50k',
                                                    '--num-gen', '10', '--detector-dir', det_dir, '--run-dir', str(run),
                                                    '--device', 'cpu', '--quiet'])
    assert result.exit_code == 0, result.output
    line = json.loads((run / 'metric-ppl2_wend.jsonl').read_text())
    assert line['metric'] == 'ppl2_wend' and np.isfinite(line['results']['ppl2_wend'])
    sg3 = tmp_path / 'sg3.pkl'
    G = tiny_sg3()
    save_snapshot(str(sg3), dict(G=G, G_ema=G, D=None, augment_pipe=None, training_set_kwargs=None))
    result = CliRunner().invoke(calc_metrics.main, ['--network', str(sg3), '--metrics', 'eqt50k_int,eqt50k_frac,eqr50k',
                                                    '--num-gen', '4', '--device', 'cpu', '--quiet'])
    assert result.exit_code == 0, result.output
    assert all((tmp_path / f'metric-{m}.jsonl').is_file() for m in ('eqt50k_int', 'eqt50k_frac', 'eqr50k'))


def test_training_prints_the_metric_json_line_into_log_txt(tmp_path, det_dir, monkeypatch):
    import train
    from metrics import detectors
    from training.sample_data import make_sample_dataset
    data = str(tmp_path / 'sample.zip')
    make_sample_dataset(data, num_images=8, resolution=32, seed=0)
    monkeypatch.setitem(metric_main._metric_dict, 'ppl2_wend', dnnlib.EasyDict(metric_main._metric_dict['ppl2_wend'], num_gen=4))
    monkeypatch.setitem(detectors.DETECTORS, 'vgg16', dnnlib.EasyDict(detectors.DETECTORS['vgg16'], url=os.path.join(det_dir, 'vgg16.pt')))
    args = ['--outdir', str(tmp_path / 'runs'), '--data', data, '--cfg', 'stylegan2', '--cbase', '256', '--cmax', '32',
            '--map-depth', '2', '--mbstd-group', '2', '--batch', '4', '--batch-gpu', '2', '--gamma', '1', '--aug', 'noaug',
            '--kimg', '0.004', '--tick', '0.004', '--snap', '1', '--metrics', 'ppl2_wend', '--device', 'cpu', '--workers', '0']
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in (tmp_path / 'runs').iterdir() if p.is_dir()]
    lines = [json.loads(s) for s in (run_dir / 'log.txt').read_text().splitlines() if s.startswith('{"results"')]
    assert lines and lines[-1]['metric'] == 'ppl2_wend' and 'ppl2_wend' in lines[-1]['results']
    assert lines[-1]['snapshot_pkl'].startswith('network-snapshot-')


def _sharded(rank, num_gpus, det_dir, out_dir, init_file):
    torch.set_num_threads(1)
    if num_gpus > 1:
        torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=num_gpus)
    try:
        value, scores = ppl.compute_ppl(tiny_sg2(), num_samples=7, space='z', sampling='full', crop=True, batch_size=2,
                                        detector_dir=det_dir, num_gpus=num_gpus, rank=rank)
        psnrs = eq.compute_equivariance(tiny_sg3(), num_samples=10, kinds=('int', 'rot'), num_gpus=num_gpus, rank=rank)
        np.savez(os.path.join(out_dir, f'w{num_gpus}_r{rank}.npz'), ppl=value, scores=scores, eq=np.array(psnrs))
    finally:
        if num_gpus > 1:
            torch.distributed.destroy_process_group()


def test_two_processes_give_the_one_process_ppl_and_equivariance(det_dir, tmp_path):
    init_file = str(tmp_path / 'init')
    _sharded(0, 1, det_dir, str(tmp_path), init_file)
    torch.multiprocessing.spawn(_sharded, args=(2, det_dir, str(tmp_path), init_file), nprocs=2)
    one = np.load(tmp_path / 'w1_r0.npz')
    assert one['scores'].shape == (7,)
    for rank in (0, 1):
        two = np.load(tmp_path / f'w2_r{rank}.npz')
        np.testing.assert_array_equal(two['scores'], one['scores'])
        np.testing.assert_allclose(two['eq'], one['eq'], rtol=1e-9)
