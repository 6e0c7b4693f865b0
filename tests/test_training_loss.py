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


# ---- Hand-computed oracles on fixed tiny networks -------------------------------------------
# A generator and a discriminator small enough to write every loss formula out by hand in float64
# (StyleGAN2 paper / NVIDIA's loss.py): no code of training/loss.py is reused by the oracles.

class _TinyMapping(torch.nn.Module):
    def __init__(self, z_dim, w_dim, num_ws):
        super().__init__()
        self.num_ws = num_ws
        self.M = torch.nn.Parameter(torch.linspace(-1, 1, z_dim * w_dim).reshape(z_dim, w_dim))

    def forward(self, z, c, update_emas=False):
        return torch.tanh(z @ self.M).unsqueeze(1).repeat(1, self.num_ws, 1)


class _TinySynthesis(torch.nn.Module):
    def __init__(self, w_dim, num_ws):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.S = torch.nn.Parameter(torch.randn([num_ws, w_dim, 3 * 4 * 4], generator=g) * 0.5)

    def forward(self, ws, update_emas=False, return_features=False):
        img = torch.tanh(torch.einsum('nlw,lwk->nk', ws, self.S)).reshape(-1, 3, 4, 4)
        return (img, {}) if return_features else img


class _TinyG(torch.nn.Module):
    z_dim, w_dim, num_ws, c_dim = 4, 3, 5, 0

    def __init__(self):
        super().__init__()
        self.mapping = _TinyMapping(self.z_dim, self.w_dim, self.num_ws)
        self.synthesis = _TinySynthesis(self.w_dim, self.num_ws)


class _TinyD(torch.nn.Module):
    """D(x) = <A, x> + k·|x|² + b, so ∇ₓD = A + 2k·x."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(6)
        self.A = torch.nn.Parameter(torch.randn([3, 4, 4], generator=g))
        self.k = torch.nn.Parameter(torch.tensor(0.3))
        self.b = torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, img, c, update_emas=False):
        return ((img * self.A).sum([1, 2, 3]) + self.k * img.square().sum([1, 2, 3]) + self.b).unsqueeze(1)


def _np_softplus(x):
    return np.logaddexp(0, x)


def _f64(t):
    return t.detach().double().clone().requires_grad_(True)


def _ref_G_img(G, z, M, S):
    w = torch.tanh(z.double() @ M)
    ws = w.unsqueeze(1).repeat(1, G.num_ws, 1)
    return torch.tanh(torch.einsum('nlw,lwk->nk', ws, S)).reshape(-1, 3, 4, 4)


def _ref_D(x, A, k, b):
    return (x * A).sum([1, 2, 3]) + k * x.square().sum([1, 2, 3]) + b


def _tiny_setup(**kwargs):
    G, D = _TinyG(), _TinyD()
    kwargs.setdefault('style_mixing_prob', 0)
    loss = StyleGAN2Loss('cpu', G, D, **kwargs)
    g = torch.Generator().manual_seed(7)
    real = torch.randn([6, 3, 4, 4], generator=g) * 0.5
    z = torch.randn([6, G.z_dim], generator=g)
    return G, D, loss, real, z, torch.zeros([6, 0])


def test_generator_logistic_loss_by_hand():
    G, D, loss, real, z, c = _tiny_setup()
    col = training_stats.Collector(regex='Loss/.*')
    G.requires_grad_(True)
    D.requires_grad_(False)
    loss.accumulate_gradients('Gmain', real, c, z, c, gain=3, cur_nimg=0)
    col.update()
    M, S = _f64(G.mapping.M), _f64(G.synthesis.S)
    logits = _ref_D(_ref_G_img(G, z, M, S), D.A.double(), D.k.double(), D.b.double())
    ref = torch.log1p(torch.exp(-logits))  # non-saturating: softplus(-D(G(z)))
    np.testing.assert_allclose(col.mean('Loss/G/loss'), ref.mean().item(), rtol=1e-5)
    np.testing.assert_allclose(col.mean('Loss/scores/fake'), logits.mean().item(), rtol=1e-5)
    np.testing.assert_allclose(col.mean('Loss/signs/fake'), np.sign(logits.detach().numpy()).mean(), atol=1e-7)
    (ref.mean() * 3).backward()
    np.testing.assert_allclose(G.mapping.M.grad.numpy(), M.grad.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(G.synthesis.S.grad.numpy(), S.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_discriminator_logistic_loss_by_hand():
    G, D, loss, real, z, c = _tiny_setup()
    col = training_stats.Collector(regex='Loss/.*')
    G.requires_grad_(False)
    D.requires_grad_(True)
    loss.accumulate_gradients('Dmain', real, c, z, c, gain=2, cur_nimg=0)
    col.update()
    A, k, b = _f64(D.A), _f64(D.k), _f64(D.b)
    fake = _ref_G_img(G, z, G.mapping.M.double(), G.synthesis.S.double()).detach()
    lf, lr = _ref_D(fake, A, k, b), _ref_D(real.double(), A, k, b)
    per_image = torch.log1p(torch.exp(lf)) + torch.log1p(torch.exp(-lr))  # softplus(D(fake)) + softplus(-D(real))
    np.testing.assert_allclose(col.mean('Loss/D/loss'), per_image.mean().item(), rtol=1e-5)
    np.testing.assert_allclose(col.mean('Loss/scores/real'), lr.mean().item(), rtol=1e-5)
    (per_image.mean() * 2).backward()
    for p, ref in ((D.A, A), (D.k, k), (D.b, b)):
        np.testing.assert_allclose(p.grad.numpy(), ref.grad.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('gamma,interval', [(10.0, 16), (0.5, 1)])
def test_lazy_r1_is_half_gamma_grad_norm_times_interval(gamma, interval):
    G, D, loss, real, z, c = _tiny_setup(r1_gamma=gamma)
    col = training_stats.Collector(regex='Loss/.*')
    D.requires_grad_(True)
    # The loop passes gain = the lazy-regularisation interval (d_reg_interval).
    loss.accumulate_gradients('Dreg', real, c, z, c, gain=interval, cur_nimg=0)
    col.update()
    A, k, b = _f64(D.A), _f64(D.k), _f64(D.b)
    x = real.double()
    grad_x = A.unsqueeze(0) + 2 * k * x  # ∇ₓD by hand
    r1 = grad_x.square().sum([1, 2, 3])
    np.testing.assert_allclose(col.mean('Loss/r1_penalty'), r1.mean().item(), rtol=1e-5)
    np.testing.assert_allclose(col.mean('Loss/D/reg'), (gamma / 2) * r1.mean().item(), rtol=1e-5)
    ((gamma / 2) * r1.mean() * interval).backward()
    np.testing.assert_allclose(D.A.grad.numpy(), A.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(D.k.grad.numpy(), k.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert D.b.grad is None or float(D.b.grad.abs().max()) == 0  # the Dreg phase has no logistic term


def test_path_length_penalty_and_its_ema_by_hand():
    pl_weight, pl_decay, shrink, gain = 2.0, 0.25, 2, 4
    G, D, loss, real, z, c = _tiny_setup(pl_weight=pl_weight, pl_decay=pl_decay, pl_batch_shrink=shrink)
    col = training_stats.Collector(regex='Loss/.*')
    G.requires_grad_(True)
    M, S = _f64(G.mapping.M), _f64(G.synthesis.S)
    pl_mean, ref_loss_total = 0.0, 0
    for step in range(2):
        torch.manual_seed(100 + step)
        loss.accumulate_gradients('Greg', real, c, z, c, gain=gain, cur_nimg=0)
        col.update()
        torch.manual_seed(100 + step)  # the same noise draw: randn of the image shape, / sqrt(H·W)
        n = z.shape[0] // shrink
        noise = torch.randn([n, 3, 4, 4]).double() / 4.0
        w = torch.tanh(z[:n].double() @ M)
        ws = w.unsqueeze(1).repeat(1, G.num_ws, 1)
        img = torch.tanh(torch.einsum('nlw,lwk->nk', ws, S)).reshape(-1, 3, 4, 4)
        (jac,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = jac.square().sum(2).mean(1).sqrt()
        # NVIDIA's EMA: the stored mean is detached, but this step's lerp (and so the gradient
        # through lengths.mean()) is part of the penalty.
        pl_mean_t = pl_mean + pl_decay * (lengths.mean() - pl_mean)
        pl_mean = float(pl_mean_t.detach())
        penalty = (lengths - pl_mean_t).square()
        np.testing.assert_allclose(float(loss.pl_mean), pl_mean, rtol=1e-5)
        np.testing.assert_allclose(col.mean('Loss/pl_penalty'), penalty.mean().item(), rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(col.mean('Loss/G/reg'), pl_weight * penalty.mean().item(), rtol=1e-4, atol=1e-9)
        ref_loss_total = ref_loss_total + penalty.mean() * pl_weight * gain
    ref_loss_total.backward()
    np.testing.assert_allclose(G.synthesis.S.grad.numpy(), S.grad.numpy(), rtol=1e-3, atol=1e-8)
    np.testing.assert_allclose(G.mapping.M.grad.numpy(), M.grad.numpy(), rtol=1e-3, atol=1e-8)


def test_style_mixing_cutoff_distribution_and_layers():
    G, _D, loss, _real, z, c = _tiny_setup(style_mixing_prob=0.6)
    torch.manual_seed(0)
    draws = np.array([int(loss.draw_mixing(z, G.num_ws).cutoff) for _ in range(4000)])
    # cutoff = num_ws (no mixing) with probability 1 - p, else uniform on {1, ..., num_ws - 1}.
    counts = np.bincount(draws, minlength=G.num_ws + 1)
    assert counts[0] == 0 and counts[G.num_ws + 1:].sum() == 0
    np.testing.assert_allclose(counts[G.num_ws] / 4000, 0.4, atol=0.03)
    np.testing.assert_allclose(counts[1:G.num_ws] / 4000, [0.6 / (G.num_ws - 1)] * (G.num_ws - 1), atol=0.025)
    assert StyleGAN2Loss('cpu', G, None, style_mixing_prob=0).draw_mixing(z, G.num_ws) is None
    mixing = dnnlib.EasyDict(cutoff=torch.tensor(2), z2=torch.randn_like(z))
    ws = loss.mapping(G, z, c, mixing=mixing)
    with torch.no_grad():
        w1, w2 = torch.tanh(z @ G.mapping.M), torch.tanh(mixing.z2 @ G.mapping.M)
    for layer in range(G.num_ws):
        assert torch.allclose(ws[:, layer], w1 if layer < 2 else w2), layer


def test_nonfinite_flag_persists_until_popped():
    # The flag of a term is the AND over every call since the last pop: one bad step is not
    # forgotten by a later good one (the loop reads the flags once per step or tick).
    G, D = _nets()
    bad = [True]
    loss = StyleGAN2Loss('cpu', G, D, style_mixing_prob=0,
                         terms=[lambda ctx: {'maybe': ctx.img.mean() * (float('nan') if bad[0] else 1.0)}])
    real, real_c, z, c = _batch()
    G.requires_grad_(True)
    loss.accumulate_gradients('Gmain', real, real_c, z, c, gain=1, cur_nimg=0)
    bad[0] = False
    loss.accumulate_gradients('Gmain', real, real_c, z, c, gain=1, cur_nimg=0)
    flags = loss.pop_finite_flags()
    assert not bool(flags['Loss/G/maybe']) and bool(flags['Loss/G/loss'])
    loss.accumulate_gradients('Gmain', real, real_c, z, c, gain=1, cur_nimg=0)
    assert bool(loss.pop_finite_flags()['Loss/G/maybe'])
