"""The StyleGAN2/3 objective: non-saturating logistic loss, lazy R1, path length, style mixing, blur.

Same phases and reported statistics as NVIDIA's ``training/loss.py`` (stylegan3 version):
``accumulate_gradients(phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg)`` for phase in
Gmain / Greg / Gboth / Dmain / Dreg / Dboth.

Extension points (for distillation, without copying this class):

* ``terms``: objects called in Gmain/Gboth after the generator and D forward. A term is
  ``term(ctx) -> {name: scalar loss tensor, already weighted}``; each value is added to the G loss,
  reported as ``Loss/G/<name>`` (or ``<name>`` when it already starts with ``Loss/``) and checked for
  NaN/Inf. A term may also define ``prepare(ctx)``, called after mapping and style mixing but before
  synthesis: it may replace ``ctx.synthesis_ws`` (e.g. append latent-offset copies of the batch) and
  set ``ctx.return_features = True``. Only the first ``len(gen_z)`` synthesised images go to D.
* ``ctx`` (an EasyDict) holds: ``loss`` (this object), ``G``, ``phase``, ``cur_nimg``, ``gain``,
  ``z``, ``c``, ``mixing`` (EasyDict ``cutoff`` (int64 scalar tensor), ``z2``, or None without
  mixing), ``ws`` (after mixing), ``synthesis_ws``, ``return_features``, ``synthesis_img`` (all
  synthesised images), ``features`` (dict from ``G.synthesis(..., return_features=True)`` or None),
  ``img`` (the first ``len(z)`` images), ``gen_logits``. A term that runs a frozen teacher on the
  same inputs calls ``ctx.loss.mapping(teacher, ctx.z, ctx.c, mixing=ctx.mixing)`` (same z, same
  mixing cut-off and second z) and applies the same offsets it put into ``synthesis_ws``.

NaN/Inf: every reported loss value is checked on the device without a host sync;
``pop_finite_flags()`` hands the flags to the training loop, which sends them through its gradient
all-reduce, sanitises non-finite gradients (as NVIDIA) and raises ``NonFiniteLossError``, naming
the terms and the first step, only when they persist (10 consecutive steps) or reach the weights.
"""
import contextlib

import numpy as np
import torch
import torch.nn.functional as F

import dnnlib
from torch_utils import training_stats


class NonFiniteLossError(dnnlib.util.UserError):
    """Non-finite values persisted or reached the weights; the message names the terms and the step."""


def _no_weight_gradients(enabled):
    try:
        from torch_utils.ops import conv2d_gradfix
        return conv2d_gradfix.no_weight_gradients(enabled)
    except (ImportError, AttributeError):
        return contextlib.nullcontext()


def gaussian_blur(img, sigma):
    """Separable Gaussian blur with a kernel of radius floor(3·sigma), zero padding (SG3's D blur)."""
    radius = int(np.floor(sigma * 3))
    if radius <= 0:
        return img
    taps = torch.arange(-radius, radius + 1, device=img.device, dtype=torch.float32).div(sigma).square().neg().exp2()
    taps = (taps / taps.sum()).to(img.dtype)
    channels = img.shape[1]
    kx = taps.reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    ky = taps.reshape(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    img = F.conv2d(img, kx, padding=(0, radius), groups=channels)
    img = F.conv2d(img, ky, padding=(radius, 0), groups=channels)
    return img


class StyleGAN2Loss:
    def __init__(self, device, G, D, augment_pipe=None, r1_gamma=10, style_mixing_prob=0.9, pl_weight=2,
                 pl_batch_shrink=2, pl_decay=0.01, pl_no_weight_grad=False, blur_init_sigma=0, blur_fade_kimg=0,
                 terms=()):
        self.device = torch.device(device)
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.r1_gamma = float(r1_gamma)
        self.style_mixing_prob = float(style_mixing_prob)
        self.pl_weight = float(pl_weight)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.pl_decay = float(pl_decay)
        self.pl_no_weight_grad = bool(pl_no_weight_grad)
        self.pl_mean = torch.zeros([], device=self.device)
        self.blur_init_sigma = float(blur_init_sigma)
        self.blur_fade_kimg = float(blur_fade_kimg)
        self.terms = list(terms)
        self._finite = dict()

    # ---- state that an exact resume needs -------------------------------------------------------
    def state_dict(self):
        return dict(pl_mean=self.pl_mean.detach().cpu().clone())

    def load_state_dict(self, state):
        self.pl_mean.copy_(state['pl_mean'].to(self.device))

    def ema_buffers(self):
        """Running averages updated during a phase (the loop keeps them identical on every rank)."""
        return [self.pl_mean]

    # ---- NaN / Inf bookkeeping ----------------------------------------------------------------
    def _track(self, name, value):
        training_stats.report(name, value)
        ok = torch.isfinite(value.detach()).all()
        prev = self._finite.get(name)
        self._finite[name] = ok if prev is None else (prev & ok)

    def pop_finite_flags(self):
        """``{name: bool tensor}`` (True = all finite) since the last call; no host sync."""
        flags, self._finite = self._finite, dict()
        return flags

    # ---- generator side -------------------------------------------------------------------------
    def draw_mixing(self, z, num_ws):
        """Style-mixing draws like NVIDIA's: cutoff in [1, num_ws) with probability p, else num_ws."""
        if self.style_mixing_prob <= 0:
            return None
        cutoff = torch.empty([], dtype=torch.int64, device=z.device).random_(1, num_ws)
        cutoff = torch.where(torch.rand([], device=z.device) < self.style_mixing_prob, cutoff,
                             torch.full_like(cutoff, num_ws))
        z2 = torch.randn_like(z)
        return dnnlib.EasyDict(cutoff=cutoff, z2=z2)

    def mapping(self, G, z, c, update_emas=False, mixing=None):
        """``G.mapping`` with the given style mixing applied (any generator: student or teacher)."""
        ws = G.mapping(z, c, update_emas=update_emas)
        if mixing is not None:
            ws2 = G.mapping(mixing.z2, c, update_emas=False)
            layer = torch.arange(ws.shape[1], device=ws.device).reshape(1, -1, 1)
            ws = torch.where(layer >= mixing.cutoff, ws2, ws)
        return ws

    def run_G(self, z, c, update_emas=False, terms=(), ctx=None):
        """Generator forward through the hooks; returns the context (``ctx.img`` = images for D)."""
        ctx = dnnlib.EasyDict() if ctx is None else ctx
        ctx.update(loss=self, G=self.G, z=z, c=c, update_emas=update_emas)
        ctx.mixing = self.draw_mixing(z, self.G.num_ws)
        ctx.ws = self.mapping(self.G, z, c, update_emas=update_emas, mixing=ctx.mixing)
        ctx.synthesis_ws = ctx.ws
        ctx.return_features = False
        for term in terms:
            prepare = getattr(term, 'prepare', None)
            if prepare is not None:
                prepare(ctx)
        if ctx.return_features:
            ctx.synthesis_img, ctx.features = self.G.synthesis(ctx.synthesis_ws, update_emas=update_emas,
                                                               return_features=True)
        else:
            ctx.synthesis_img = self.G.synthesis(ctx.synthesis_ws, update_emas=update_emas)
            ctx.features = None
        ctx.img = ctx.synthesis_img[:z.shape[0]]
        return ctx

    # ---- discriminator side ---------------------------------------------------------------------
    def blur_sigma(self, cur_nimg):
        if self.blur_fade_kimg <= 0:
            return 0.0
        return max(1 - cur_nimg / (self.blur_fade_kimg * 1e3), 0) * self.blur_init_sigma

    def run_D(self, img, c, blur_sigma=0, update_emas=False):
        if blur_sigma > 0:
            img = gaussian_blur(img, blur_sigma)
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c, update_emas=update_emas)

    # ---- the phases -----------------------------------------------------------------------------
    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg):
        assert phase in ['Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth']
        if self.pl_weight == 0:
            phase = {'Greg': 'none', 'Gboth': 'Gmain'}.get(phase, phase)
        if self.r1_gamma == 0:
            phase = {'Dreg': 'none', 'Dboth': 'Dmain'}.get(phase, phase)
        blur_sigma = self.blur_sigma(cur_nimg)

        # Gmain: make G's images look real to D, plus the extra terms.
        if phase in ['Gmain', 'Gboth']:
            ctx = dnnlib.EasyDict(phase=phase, cur_nimg=cur_nimg, gain=gain)
            ctx = self.run_G(gen_z, gen_c, terms=self.terms, ctx=ctx)
            gen_logits = self.run_D(ctx.img, gen_c, blur_sigma=blur_sigma)
            ctx.gen_logits = gen_logits
            training_stats.report('Loss/scores/fake', gen_logits)
            training_stats.report('Loss/signs/fake', gen_logits.sign())
            loss_Gmain = F.softplus(-gen_logits)
            self._track('Loss/G/loss', loss_Gmain)
            total = loss_Gmain.mean()
            if self.terms:
                for term in self.terms:
                    for name, value in term(ctx).items():
                        key = name if name.startswith('Loss/') else f'Loss/G/{name}'
                        self._track(key, value)
                        total = total + value.mean()
                training_stats.report('Loss/G/total', total)
            total.mul(gain).backward()

        # Greg: path-length regularisation on a shrunk batch.
        if phase in ['Greg', 'Gboth']:
            batch = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
            ctx = self.run_G(gen_z[:batch], gen_c[:batch])
            gen_img, gen_ws = ctx.img, ctx.synthesis_ws
            pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
            with _no_weight_gradients(self.pl_no_weight_grad):
                pl_grads = torch.autograd.grad(outputs=[(gen_img * pl_noise).sum()], inputs=[gen_ws],
                                               create_graph=True, only_inputs=True)[0]
            pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
            pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
            self.pl_mean.copy_(pl_mean.detach())
            pl_penalty = (pl_lengths - pl_mean).square()
            self._track('Loss/pl_penalty', pl_penalty)
            loss_Gpl = pl_penalty * self.pl_weight
            training_stats.report('Loss/G/reg', loss_Gpl)
            loss_Gpl.mean().mul(gain).backward()

        # Dmain: push D(fake) down.
        loss_Dgen = 0
        if phase in ['Dmain', 'Dboth']:
            ctx = self.run_G(gen_z, gen_c, update_emas=True)
            gen_logits = self.run_D(ctx.img, gen_c, blur_sigma=blur_sigma, update_emas=True)
            training_stats.report('Loss/scores/fake', gen_logits)
            training_stats.report('Loss/signs/fake', gen_logits.sign())
            loss_Dgen = F.softplus(gen_logits)
            loss_Dgen.mean().mul(gain).backward()

        # Dmain: push D(real) up; Dreg: R1 on the reals.
        if phase in ['Dmain', 'Dreg', 'Dboth']:
            real_img_tmp = real_img.detach().requires_grad_(phase in ['Dreg', 'Dboth'])
            real_logits = self.run_D(real_img_tmp, real_c, blur_sigma=blur_sigma)
            training_stats.report('Loss/scores/real', real_logits)
            training_stats.report('Loss/signs/real', real_logits.sign())
            loss_Dreal = 0
            if phase in ['Dmain', 'Dboth']:
                loss_Dreal = F.softplus(-real_logits)
                self._track('Loss/D/loss', loss_Dgen + loss_Dreal)
            loss_Dr1 = 0
            if phase in ['Dreg', 'Dboth']:
                r1_grads = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_img_tmp],
                                               create_graph=True, only_inputs=True)[0]
                r1_penalty = r1_grads.square().sum([1, 2, 3])
                loss_Dr1 = r1_penalty * (self.r1_gamma / 2)
                self._track('Loss/r1_penalty', r1_penalty)
                training_stats.report('Loss/D/reg', loss_Dr1)
            (loss_Dreal + loss_Dr1).mean().mul(gain).backward()
