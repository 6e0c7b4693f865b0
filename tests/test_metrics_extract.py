"""Feature extraction: dataset and generator features, quantisation, the on-disk cache, clear errors,
2-process sharding equal to 1 process, and calc_metric / calc_metrics end to end (stand-in detectors)."""
import json
import os
import tempfile

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
from metrics import detectors, features, metric_main
from tests.test_metrics import write_stand_in_detectors

NUM_IMAGES = 40


class TinyG(torch.nn.Module):
    """Stand-in generator with the attributes and call signature metrics rely on."""

    def __init__(self, resolution=32, z_dim=8, c_dim=0, scale=1.0):
        super().__init__()
        self.z_dim, self.c_dim, self.img_resolution, self.img_channels = z_dim, c_dim, resolution, 3
        gen = torch.Generator().manual_seed(0)
        self.register_buffer('weight', torch.randn(z_dim + c_dim, 3 * 4 * 4, generator=gen) * scale)

    def forward(self, z, c, truncation_psi=1, noise_mode='const'):
        x = torch.cat([z, c], dim=1) if self.c_dim else z
        img = torch.tanh(x @ self.weight * truncation_psi).reshape(-1, 3, 4, 4)
        if noise_mode == 'random':
            img = img + 0.01 * torch.randn_like(img)
        return torch.nn.functional.interpolate(img, size=self.img_resolution, mode='nearest') * 1.05


def _write_dataset(folder, n=NUM_IMAGES, res=32, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        PIL.Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)).save(os.path.join(folder, f'img{i:04d}.png'))
    return folder


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp('metrics_env')
    det_dir = write_stand_in_detectors(str(root / 'detectors'))
    data = _write_dataset(str(root / 'data'))
    return dnnlib.EasyDict(det_dir=det_dir, det=os.path.join(det_dir, 'inception-2015-12-05.pt'),
                           dataset_kwargs=dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=data))


def _direct_features(det_path, images_uint8):
    return detectors.run_detector(torch.jit.load(det_path), torch.from_numpy(images_uint8), return_features=True).numpy()


def test_dataset_features_in_order_first_n_and_xflip(env):
    stats = features.compute_dataset_features(env.dataset_kwargs, env.det, max_items=25, capture_all=True,
                                              capture_mean_cov=True, batch_size=8, cache=False)
    images = np.stack([np.asarray(PIL.Image.open(os.path.join(env.dataset_kwargs.path, f'img{i:04d}.png'))).transpose(2, 0, 1)
                       for i in range(25)])
    expected = _direct_features(env.det, images)
    np.testing.assert_allclose(stats.get_all(), expected, rtol=1e-6, atol=1e-6)
    mean, cov = stats.get_mean_cov()
    np.testing.assert_allclose(mean, expected.astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cov, np.cov(expected.astype(np.float64), rowvar=False, bias=True), rtol=1e-5, atol=1e-7)

    flipped = features.compute_dataset_features(dict(env.dataset_kwargs, xflip=True), env.det, capture_all=True, cache=False)
    assert flipped.num_items == 2 * NUM_IMAGES
    np.testing.assert_allclose(flipped.get_all()[NUM_IMAGES:NUM_IMAGES + 3],
                               _direct_features(env.det, np.ascontiguousarray(images[:3, :, :, ::-1])), rtol=1e-6, atol=1e-6)


def test_dataset_feature_cache_hit_and_miss(env, monkeypatch):
    kwargs = dict(capture_all=True, capture_mean_cov=True, max_items=30)
    first = features.compute_dataset_features(env.dataset_kwargs, env.det, **kwargs)
    assert first.cache_hit is False
    files = os.listdir(dnnlib.util.make_cache_dir_path('gan-metrics'))
    assert len(files) == 1 and files[0].startswith('data-inception-2015-12-05-') and files[0].endswith('.npz')

    def no_detector(*args, **kw):
        raise AssertionError('the detector ran on a cache hit')
    with monkeypatch.context() as patch:
        patch.setattr(detectors, 'run_detector', no_detector)
        second = features.compute_dataset_features(env.dataset_kwargs, env.det, **kwargs)
    assert second.cache_hit is True
    np.testing.assert_array_equal(second.get_all(), first.get_all())
    for a, b in zip(second.get_mean_cov(), first.get_mean_cov()):
        np.testing.assert_array_equal(a, b)

    other = features.compute_dataset_features(env.dataset_kwargs, env.det, **dict(kwargs, max_items=20))
    assert other.cache_hit is False  # different settings, different entry
    assert len(os.listdir(dnnlib.util.make_cache_dir_path('gan-metrics'))) == 2


def test_feature_stats_accumulation_independent_of_batching():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((700, 16)) + 5).astype(np.float32)
    a = features.FeatureStats(capture_mean_cov=True)
    a.append(x)
    b = features.FeatureStats(capture_mean_cov=True, max_items=700)
    for start in range(0, 800, 33):
        b.append(x[start:start + 33])
    assert b.is_full() and b.num_items == 700
    for u, v in zip(a.get_mean_cov(), b.get_mean_cov()):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(dnnlib.util.UserError, match='NaN'):
        features.FeatureStats(capture_all=True).append(np.full((2, 3), np.nan, dtype=np.float32))


def test_generator_features_quantise_like_the_field(env):
    G = TinyG()
    stats = features.compute_generator_features(G, env.det, num_items=10, dataset_kwargs=env.dataset_kwargs,
                                                noise_mode='const', capture_all=True, batch_size=4, batch_gen=2)
    z, c = features._SampleInputs(G.z_dim, 0, 0).get(range(10))
    img = (G(z, c, noise_mode='const') * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    assert img.min() == 0 and img.max() == 255  # the clamp matters for this G
    np.testing.assert_allclose(stats.get_all(), _direct_features(env.det, img.numpy()), rtol=1e-6, atol=1e-6)
    again = features.compute_generator_features(G, env.det, num_items=10, dataset_kwargs=env.dataset_kwargs,
                                                capture_all=True, batch_size=8)
    assert not np.array_equal(again.get_all(), stats.get_all())  # random noise by default
    np.testing.assert_array_equal(again.get_all(), features.compute_generator_features(
        G, env.det, num_items=10, dataset_kwargs=env.dataset_kwargs, capture_all=True, batch_size=8).get_all())


def test_extraction_errors(env):
    with pytest.raises(dnnlib.util.UserError, match='64x64 images but the dataset data is 32x32'):
        features.compute_generator_features(TinyG(resolution=64), env.det, num_items=4, dataset_kwargs=env.dataset_kwargs)
    with pytest.raises(dnnlib.util.UserError, match='conditional'):
        features.compute_generator_features(TinyG(c_dim=3), env.det, num_items=4, dataset_kwargs=env.dataset_kwargs)
    with pytest.raises(dnnlib.util.UserError, match='has 40 images, fewer than the 50 requested'):
        features.compute_dataset_features(env.dataset_kwargs, env.det, max_items=50, allow_fewer=False, capture_all=True)
    with pytest.raises(dnnlib.util.UserError, match='has 40 images'):
        metric_main.calc_metric('fid1k', G=TinyG(), dataset_kwargs=env.dataset_kwargs, detector_dir=env.det_dir)

# ---------------------------------------------------------------------------------------------
# 2 processes == 1 process


def _extract(rank, num_gpus, env, out_dir, init_file):
    torch.set_num_threads(1)
    if num_gpus > 1:
        torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=num_gpus)
    try:
        real = features.compute_dataset_features(env.dataset_kwargs, env.det, max_items=37, capture_all=True,
                                                 capture_mean_cov=True, batch_size=5, num_gpus=num_gpus, rank=rank, cache=False)
        gen = features.compute_generator_features(TinyG(), env.det, num_items=29, dataset_kwargs=env.dataset_kwargs,
                                                  noise_mode='const', capture_all=True, capture_mean_cov=True,
                                                  batch_size=4, num_gpus=num_gpus, rank=rank)
        mean, cov = real.get_mean_cov()
        gmean, gcov = gen.get_mean_cov()
        np.savez(os.path.join(out_dir, f'w{num_gpus}_r{rank}.npz'), real=real.get_all(), mean=mean, cov=cov,
                 gen=gen.get_all(), gmean=gmean, gcov=gcov)
    finally:
        if num_gpus > 1:
            torch.distributed.destroy_process_group()


def test_two_process_sharded_extraction_equals_one_process(env, tmp_path):
    init_file = str(tmp_path / 'init')
    _extract(0, 1, env, str(tmp_path), init_file)
    torch.multiprocessing.spawn(_extract, args=(2, env, str(tmp_path), init_file), nprocs=2)
    one = np.load(tmp_path / 'w1_r0.npz')
    assert one['real'].shape == (37, 64) and one['gen'].shape == (29, 64)
    for rank in (0, 1):
        two = np.load(tmp_path / f'w2_r{rank}.npz')
        for key in one.files:
            np.testing.assert_array_equal(two[key], one[key], err_msg=key)

# ---------------------------------------------------------------------------------------------
# calc_metric / calc_metrics.py


def test_calc_metric_end_to_end_and_report(env, tmp_path):
    G = TinyG(scale=0.5)
    memo = dict()
    fid = metric_main.calc_metric('fid1k_full', G=G, dataset_kwargs=env.dataset_kwargs, device='cpu',
                                  detector_dir=env.det_dir, gen_memo=memo)
    assert set(fid.results) == {'fid1k_full'} and fid.results.fid1k_full > 0
    assert fid.details.num_real == NUM_IMAGES and fid.details.num_gen == 1000 and fid.details.real_cache_hit is False
    prdc = metric_main.calc_metric('prdc1k_full', G=G, dataset_kwargs=env.dataset_kwargs, device='cpu',
                                   detector_dir=env.det_dir, gen_memo=memo)
    assert prdc.details.real_cache_hit is True  # one cache entry serves FID and PRDC
    keys = ('precision', 'recall', 'density', 'coverage')  # bare keys as the paper's release, ours as aliases
    assert set(prdc.results) == set(keys) | {f'prdc1k_full_{k}' for k in keys}
    assert all(0 <= v for v in prdc.results.values()) and prdc.details.test == '<' and prdc.details.k == 5
    pr = metric_main.calc_metric('pr1k3_full', G=G, dataset_kwargs=env.dataset_kwargs, detector_dir=env.det_dir)
    assert set(pr.results) == {'pr1k3_full_precision', 'pr1k3_full_recall'} and pr.details.test == '<='
    assert pr.details.detector == 'vgg16'

    # A generator that copies no structure of the data scores worse than one closer to it.
    worse = metric_main.calc_metric('fid1k_full', G=TinyG(scale=20), dataset_kwargs=env.dataset_kwargs,
                                    detector_dir=env.det_dir)
    assert worse.results.fid1k_full > fid.results.fid1k_full

    import calc_metrics
    lines = []
    results = calc_metrics.run_metrics(G, ['fid1k_full', 'kid1k_full'], env.dataset_kwargs, device='cpu',
                                       run_dir=str(tmp_path), snapshot_pkl=str(tmp_path / 'network-snapshot-000120.pkl'),
                                       detector_dir=env.det_dir, verbose=False, log=lines.append)
    assert results[0].results.fid1k_full == pytest.approx(fid.results.fid1k_full, rel=1e-9)
    assert lines[0].startswith('fid1k_full ') and lines[1].startswith('kid1k_full ')
    record = json.loads((tmp_path / 'metric-kid1k_full.jsonl').read_text())
    assert record['kimg'] == 120 and record['snapshot_pkl'] == 'network-snapshot-000120.pkl'
    assert record['results']['kid1k_full'] == results[1].results.kid1k_full


def test_calc_metrics_cli_help_and_errors(tmp_path):
    from click.testing import CliRunner
    import calc_metrics
    runner = CliRunner()
    res = runner.invoke(calc_metrics.main, ['--help'])
    assert res.exit_code == 0 and '--detector-dir' in res.output and 'prdc50k_full' in res.output
    res = runner.invoke(calc_metrics.main, ['--network', str(tmp_path / 'x.pkl'), '--metrics', 'nope'])
    assert res.exit_code == 1 and 'unknown metric' in res.output


def test_calc_metrics_cli_on_a_snapshot(env, tmp_path):
    # A real (tiny) StyleGAN2 snapshot through the CLI: result line, jsonl next to the snapshot.
    from click.testing import CliRunner
    import calc_metrics
    from training import checkpoints, networks_stylegan2
    G = networks_stylegan2.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
                                     mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=32)
    run_dir = tmp_path / 'run'
    snapshot = run_dir / 'network-snapshot-000040.pkl'
    checkpoints.save_snapshot(str(snapshot), dict(G=G, G_ema=G, training_set_kwargs=dict(env.dataset_kwargs)))
    res = CliRunner().invoke(calc_metrics.main, ['--network', str(snapshot), '--metrics', 'fid1k_full,prdc1k_full',
                                                 '--detector-dir', env.det_dir, '--device', 'cpu', '--quiet'])
    assert res.exit_code == 0, res.output
    assert 'fid1k_full ' in res.output and 'prdc1k_full_coverage ' in res.output
    record = json.loads((run_dir / 'metric-fid1k_full.jsonl').read_text())
    assert record['kimg'] == 40 and record['results']['fid1k_full'] > 0 and record['details']['num_real'] == NUM_IMAGES
    assert (run_dir / 'metric-prdc1k_full.jsonl').is_file()

    res = CliRunner().invoke(calc_metrics.main, ['--network', str(snapshot), '--metrics', 'fid1k_full', '--quiet',
                                                 '--detector-dir', str(tmp_path / 'nowhere')])
    assert res.exit_code == 1 and 'nowhere: no such folder' in res.output
