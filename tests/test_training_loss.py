"""StyleGAN2Loss: phases, reported statistics, the extra-term hooks distillation uses, NaN flags."""
import numpy as np
import pytest
import torch

import dnnlib
from torch_utils import training_stats
from training import networks_stylegan2
from training.loss import StyleGAN2Loss, gaussian_blur


def _nets():
    torch.manual_seed(0)
    G = networks_stylegan2.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                                     mapping_kwargs=dict(num_layers=2),
                                     synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0))
    D = networks_stylegan2.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
                                         epilogue_kwargs=dict(mbstd_group_size=2))
    return G, D


def _batch(n=4):
    return torch.randn([n, 3, 16, 16]), torch.zeros([n, 0]), torch.randn([n, 16]), torch.zeros([n, 0])


def test_phases_report_and_produce_gradients():
    G, D = _nets()
    loss = StyleGAN2Loss('cpu', G, D, r1_gamma=1, pl_weight=2, style_mixing_prob=0.9)
    col = training_stats.Collector(regex='Loss/.*')
    real, real_c, z, c = _batch()
    for phase, module in [('Gmain', G), ('Greg', G), ('Dmain', D), ('Dreg', D)]:
        module.requires_grad_(True)
        loss.accumulate_gradients(phase, real, real_c, z, c, gain=1, cur_nimg=0)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), phase
        module.requires_grad_(False)
    assert loss.pl_mean > 0  # path-length running mean was updated
    col.update()
    for key in ['Loss/G/loss', 'Loss/G/reg', 'Loss/pl_penalty', 'Loss/D/loss', 'Loss/D/reg', 'Loss/r1_penalty',
                'Loss/scores/fake', 'Loss/scores/real', 'Loss/signs/fake', 'Loss/signs/real']:
        assert col.num(key) > 0, key
    flags = loss.pop_finite_flags()
    assert set(flags) == {'Loss/G/loss', 'Loss/pl_penalty', 'Loss/D/loss', 'Loss/r1_penalty'}
    assert all(bool(f) for f in flags.values())
    assert loss.pop_finite_flags() == {}


class _OffsetTerm:
    """What a distillation term does: widen the synthesis batch with offset copies, ask for
    features, and re-run 'a teacher' (here: G itself) with the same z and mixing draws."""

    def __init__(self):
        self.seen = None

    def prepare(self, ctx):
        offsets = torch.randn([ctx.ws.shape[0], 1, ctx.ws.shape[2]])
        ctx.offsets = offsets
        ctx.synthesis_ws = torch.cat([ctx.ws, ctx.ws + offsets])
        ctx.return_features = True

    def __call__(self, ctx):
        teacher_ws = ctx.loss.mapping(ctx.G, ctx.z, ctx.c, mixing=ctx.mixing)
        self.seen = dnnlib.EasyDict(n_img=ctx.img.shape[0], n_all=ctx.synthesis_img.shape[0],
                                    feature_res=sorted(ctx.features), ws_match=torch.equal(teacher_ws, ctx.ws),
                                    mixing=ctx.mixing, logits=ctx.gen_logits.shape[0])
        return {'probe': (ctx.synthesis_img[ctx.img.shape[0]:] - ctx.img).abs().mean() * 0.5}


def test_terms_hook_shares_inputs_and_adds_weighted_loss():
    G, D = _nets()
    term = _OffsetTerm()
    loss = StyleGAN2Loss('cpu', G, D, style_mixing_prob=1.0, terms=[term])
    col = training_stats.Collector(regex='Loss/G/.*')
    real, real_c, z, c = _batch()
    G.requires_grad_(True)
    loss.accumulate_gradients('Gmain', real, real_c, z, c, gain=1, cur_nimg=0)
    s = term.seen
    assert s.n_img == 4 and s.n_all == 8 and s.logits == 4          # only the un-offset images go to D
    assert s.feature_res == [4, 8, 16] and s.ws_match                 # same z, same cutoff and z2
    assert s.mixing is not None and 1 <= int(s.mixing.cutoff) <= G.num_ws
    col.update()
    assert col.num('Loss/G/probe') == 1 and col.mean('Loss/G/probe') > 0
    assert col.mean('Loss/G/total') == pytest.approx(col.mean('Loss/G/loss') + col.mean('Loss/G/probe'), rel=1e-6)
    assert 'Loss/G/probe' in loss.pop_finite_flags()


def test_nonfinite_term_is_flagged():
    G, D = _nets()
    loss = StyleGAN2Loss('cpu', G, D, style_mixing_prob=0, terms=[lambda ctx: {'bad': ctx.img.mean() * float('inf')}])
    real, real_c, z, c = _batch()
    G.requires_grad_(True)
    loss.accumulate_gradients('Gmain', real, real_c, z, c, gain=1, cur_nimg=0)
    flags = loss.pop_finite_flags()
    assert bool(flags['Loss/G/loss']) and not bool(flags['Loss/G/bad'])


def test_blur_schedule_and_kernel():
    G, D = _nets()
    loss = StyleGAN2Loss('cpu', G, D, blur_init_sigma=10, blur_fade_kimg=100)
    assert loss.blur_sigma(0) == 10 and loss.blur_sigma(50_000) == pytest.approx(5) and loss.blur_sigma(200_000) == 0
    img = torch.zeros([1, 3, 33, 33])
    img[:, :, 16, 16] = 1
    out = gaussian_blur(img, 2.0)
    taps = np.exp2(-np.square(np.arange(-6, 7) / 2.0))
    taps /= taps.sum()
    expected = np.outer(taps, taps)
    np.testing.assert_allclose(out[0, 0, 10:23, 10:23].numpy(), expected, rtol=1e-5, atol=1e-7)
    assert gaussian_blur(img, 0.2) is img  # radius 0: no blur
