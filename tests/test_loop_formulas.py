"""The training loop's bookkeeping against its formulas (StyleGAN2-ADA's training_loop.py), not
run-vs-run: G_ema with ramp-up, lazy-regularisation intervals with their gains and the lr/beta
rescaling, and the ADA p update.

A recording loss stands in for StyleGAN2Loss (cheap quadratic losses, 'Loss/signs/real' set by the
test), so every quantity the loop derives can be predicted by hand.
"""
import pickle

import numpy as np
import pytest
import torch

import dnnlib
from torch_utils import training_stats
from training import training_loop
from training.sample_data import make_sample_dataset

BATCH, BATCH_GPU = 4, 2


class RecordingLoss:
    calls = []        # (phase, gain, cur_nimg) per accumulate_gradients call
    sign_of = None    # cur_nimg -> the value reported as 'Loss/signs/real'

    def __init__(self, device, G, D, augment_pipe=None, terms=()):
        self.G, self.D = G, D

    def state_dict(self):
        return dict()

    def load_state_dict(self, state):
        pass

    def ema_buffers(self):
        return []

    def pop_finite_flags(self):
        return dict()

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg):
        RecordingLoss.calls.append((phase, gain, cur_nimg))
        if phase.startswith('G'):
            img = self.G(gen_z, gen_c)
            (img.square().mean() * gain).backward()
        else:
            logits = self.D(real_img, real_c)
            sign = RecordingLoss.sign_of(cur_nimg) if RecordingLoss.sign_of else 1.0
            training_stats.report('Loss/signs/real', torch.full([real_img.shape[0]], float(sign)))
            (logits.square().mean() * gain).backward()


class ParamRecorder:
    """Step hook: G's parameters after each optimiser step, before the EMA update."""
    steps = []

    def __init__(self, device, networks):
        self.G = networks.G
        ParamRecorder.steps = []

    def __call__(self, cur_nimg, batch_size, total_kimg, **_kwargs):
        ParamRecorder.steps.append([p.detach().clone() for p in self.G.parameters()])


@pytest.fixture(scope='module')
def data_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp('data') / 'sample32.zip'
    make_sample_dataset(str(path), num_images=8, resolution=32, seed=0)
    return str(path)


def _kwargs(data_zip, kimg, **overrides):
    import train
    c, _desc = train.build_training_kwargs(data=data_zip, cfg='stylegan2', batch=BATCH, batch_gpu=BATCH_GPU, kimg=kimg,
                                           tick=1000, snap=1, metrics=[], cbase=128, cmax=16, map_depth=1,
                                           mbstd_group=2, aug='noaug', workers=0, device='cpu', grid='2x2')
    c.pop('device')
    c.loss_kwargs = dnnlib.EasyDict(class_name=f'{__name__}.RecordingLoss')
    c.image_snapshot_ticks = None
    c.update(overrides)
    return c


def _run(tmp_path, c):
    RecordingLoss.calls = []
    return training_loop.training_loop(run_dir=str(tmp_path), rank=0, device=torch.device('cpu'), **c)


def test_g_ema_ramp_up_lazy_intervals_and_optimizer_rescaling(data_zip, tmp_path):
    steps = 7
    ema_kimg, rampup = 0.01, 0.5  # half-life min(10 images, 0.5 * cur_nimg): ramp, then the cap
    c = _kwargs(data_zip, kimg=steps * BATCH / 1000, ema_kimg=ema_kimg, ema_rampup=rampup, G_reg_interval=4,
                D_reg_interval=16, step_hooks=[dict(class_name=f'{__name__}.ParamRecorder')])
    base = dict(G=dict(c.G_opt_kwargs), D=dict(c.D_opt_kwargs))
    out = _run(tmp_path, c)
    assert len(ParamRecorder.steps) == steps

    # Lazy regularisation: main phases every step (gain batch_gpu / batch per micro-batch), reg
    # phases when batch_idx % interval == 0 (gain interval · batch_gpu / batch).
    expected = []
    for b in range(steps):
        for phase, interval in (('Gmain', 1), ('Greg', 4), ('Dmain', 1), ('Dreg', 16)):
            if b % interval == 0:
                expected += [(phase, interval * BATCH_GPU / BATCH, b * BATCH)] * (BATCH // BATCH_GPU)
    assert RecordingLoss.calls == expected

    # Adam lr and betas rescaled by k / (k + 1) for lazy regularisation (StyleGAN2 appendix B).
    state = torch.load(training_loop.state_path_for(out.last_snapshot), weights_only=True)
    for name, k in (('G', 4), ('D', 16)):
        group = state['optimizers'][name]['param_groups'][0]
        assert group['lr'] == pytest.approx(base[name]['lr'] * k / (k + 1), rel=1e-12)
        np.testing.assert_allclose(group['betas'], [b ** (k / (k + 1)) for b in base[name]['betas']], rtol=1e-12)

    # G_ema: ema <- theta + beta (ema - theta), beta = 0.5 ** (batch / max(min(ema_kimg·1000, cur_nimg·rampup), 1e-8)),
    # starting from the initial G (first step: half-life 0, so G_ema = G).
    ema = None
    for b, theta in enumerate(ParamRecorder.steps):
        half_life = max(min(ema_kimg * 1000, b * BATCH * rampup), 1e-8)
        beta = 0.5 ** (BATCH / half_life)
        ema = [t.double() for t in theta] if ema is None else [t.double() + beta * (e - t.double()) for e, t in zip(ema, theta)]
        if b == 0:
            assert beta == 0.0
    for e, p in zip(ema, out.G_ema.parameters()):
        np.testing.assert_allclose(p.detach().double().numpy(), e.numpy(), rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(p, q) for p, q in zip(out.G_ema.parameters(), out.G.parameters()))  # really averaged


def test_ada_p_follows_the_sign_rule(data_zip, tmp_path):
    steps, interval, ada_kimg, target = 16, 4, 0.5, 0.6
    c = _kwargs(data_zip, kimg=steps * BATCH / 1000, ada_interval=interval, ada_kimg=ada_kimg)
    c.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', xflip=1)
    c.augment_p, c.ada_target = 0.0, target
    # E[sign(D(real))] = +1 for the first 8 steps (p up), then 0.2 (< target: p down), clamped at 0.
    RecordingLoss.sign_of = lambda cur_nimg: 1.0 if cur_nimg < 8 * BATCH else 0.2
    try:
        out = _run(tmp_path, c)
    finally:
        RecordingLoss.sign_of = None
    step = BATCH * interval / (ada_kimg * 1000)   # images per adjustment / images for p: 0 -> 1
    p = 0.0
    for b in range(1, steps + 1):
        if b % interval == 0:
            mean = 1.0 if b <= 8 else 0.2
            p = max(p + np.sign(mean - target) * step, 0.0)
    assert p == 0.0 and float(out.augment_pipe.p) == pytest.approx(p, abs=1e-9)
    # Stop after the rise: p = 2 steps up.
    c = _kwargs(data_zip, kimg=8 * BATCH / 1000, ada_interval=interval, ada_kimg=ada_kimg)
    c.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', xflip=1)
    c.augment_p, c.ada_target = 0.0, target
    out = _run(tmp_path / 'b', c)
    assert float(out.augment_pipe.p) == pytest.approx(2 * step, rel=1e-6)
    with open(out.last_snapshot, 'rb') as f:  # the snapshot keeps the adapted p
        assert float(pickle.load(f)['augment_pipe'].p) == pytest.approx(2 * step, rel=1e-6)
