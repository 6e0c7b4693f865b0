"""Distillation loss terms for fine-tuning a pruned student against a frozen teacher.

Plugged into ``training.loss.StyleGAN2Loss`` through ``loss_kwargs.terms`` (the loop constructs each
dict with ``device`` and ``networks``; see the docstring of ``training/loss.py``). Formulas live in
``training/distill_math.py``; the recipe is method-svs-distillation.md §2 (SG2) and §6 (SG3).

``DistillTerm`` — everything that needs the teacher, with ONE teacher forward per micro-batch:

* ``l1``:    masked pixel L1, mean over all B·3·H·W entries of |x_T·m − x_S·m| (λ = 3);
* ``lpips``: LPIPS v0.1 (VGG) of the masked images, batch mean (λ = 3); images above 256 px are
             reduced to 256 first: average pooling (StyleGAN2), bilinear (StyleGAN3);
* ``ld``:    latent-direction relation loss (λ = 30): ``prepare`` appends a copy of the batch moved
             by δ = 5·ε·d̂ (d a direction of the teacher's bank, the same δ for every w of a sample),
             and the KL of the row softmaxes of the cross-view cosine matrices is summed over the
             LD layers (blocks 16..128 of StyleGAN2, layers 2/4/6/9 of StyleGAN3), features in fp32;
* ``vgg``:   GAN-Slimming's perceptual distillation as the official StyleGAN code computes it
             (``gs_perceptual_loss``): L1 of the relu1_2 features plus 1e5 x the sum over relu1_2,
             relu2_2, relu3_3, relu4_3 of the MSE of their Gram matrices (F·Fᵀ / (C·H·W)), on the
             full-resolution images mapped to [0, 1] WITHOUT ImageNet normalisation (as theirs).

The teacher runs under ``no_grad`` in eval mode, through its OWN mapping, on the same z, the same
style-mixing cut-off and second z, and the same offsets; its per-pixel noise is drawn
independently (``noise_mode='random'``), as in the official code. The direction bank is computed
in the constructor from the loaded teacher, so every rank builds the same bank (the official
StyleGAN2 code computed it from a randomly initialised teacher on ranks > 0).

``StyleSparsityTerm`` — GAN-Slimming's sparsity training: η·Σ_layers ‖mean_batch(s_layer)‖₁ over the
styles (affine outputs) of every synthesis layer and toRGB of the student, read by forward hooks
that exist only between ``prepare`` and the call (so they never reach a snapshot or a deepcopy).

The content mask (``mask='face'``) is the BiSeNet parse of the teacher's image (labels other than
background and cloth), bilinearly resized and thresholded at 0.5; ``uniform`` is no mask.
"""
import torch

import dnnlib
from torch_utils import misc
from torch_utils import vgg16
from training import distill_math

LPIPS_SIZE = 256
SG2_LD_RES_RANGE = (16, 128)     # mimic layers 2..5 of the official code: blocks 16, 32, 64, 128
SG3_LD_LAYERS = (2, 4, 6, 9)     # L2_36_512, L4_52_512, L6_84_512, L9_148_181 at 256 px
GS_VGG_TAPS = (3, 8, 15, 22)     # relu1_2, relu2_2, relu3_3, relu4_3
GS_STYLE_WEIGHT = 1e5           # weight of the Gram-matrix (style) part of the GS loss

# ---------------------------------------------------------------------------------------------
# Helpers shared with train.py.


def generator_family(G):
    """'sg2' or 'sg3' (UserError for anything else)."""
    from pruning import channels
    return channels.generator_family(G)


def lpips_weights_available(vgg, lin):
    """(True, '') when both LPIPS weight files (VGG16 trunk, v0.1 heads) can be opened (path, file://
    URL, cached or downloadable URL); else (False, one-line reason)."""
    for what, src in (('--lpips-vgg', vgg), ('--lpips-lin', lin)):
        if src is None or str(src) == '':
            return False, f'{what}: no weight file given'
        try:
            dnnlib.util.open_url(str(src), return_filename=True, verbose=False, num_attempts=1)
        except dnnlib.util.UserError as e:
            return False, f'{what}: {e}'
    return True, ''


def load_teacher(path, device='cpu', allow_code=False, force_fp32=False, precision=None):
    """The teacher's ``G_ema`` (``G`` when a file has no G_ema) from any checkpoint ``load_network``
    reads, frozen and in eval mode. Used as an ``extra_networks`` spec by the training loop, which
    calls it on every rank: every rank holds the same, loaded, teacher. ``precision``
    (``dict(num_fp16_res, conv_clamp)``, train.py's options) rebuilds it with the run's mixed
    precision, as the official code builds teacher and student alike; ``force_fp32``: all fp32."""
    from training import checkpoints
    data = checkpoints.load_network(path, allow_code=allow_code, device='cpu', verbose=False)
    G = data.get('G_ema') if data.get('G_ema') is not None else data.get('G')
    if G is None:
        raise dnnlib.util.UserError(f'--teacher: {path} holds no generator')
    if precision is not None:
        G = checkpoints.rebuild_network(G, num_fp16_res=int(precision['num_fp16_res']), conv_clamp=precision['conv_clamp'])
    if force_fp32:
        G = checkpoints.rebuild_network(G, num_fp16_res=0)
    return G.eval().requires_grad_(False).to(device)


def default_ld_layers(G):
    """Feature keys of the LD layers of generator G: block resolutions (SG2) or layer indices (SG3)."""
    if generator_family(G) == 'sg2':
        lo, hi = SG2_LD_RES_RANGE
        layers = [int(r) for r in G.synthesis.block_resolutions if lo <= r <= hi]
        if not layers:  # tiny generators (< 16 px): the blocks above 4 px
            layers = [int(r) for r in G.synthesis.block_resolutions if r >= 8]
        return layers
    num = len(G.synthesis.layer_names)
    return [i for i in SG3_LD_LAYERS if i < num]


def direction_bank(G_teacher, ld_layers, k=5):
    """The LD direction bank of the loaded teacher: SG2 pools conv0+conv1 affines of blocks
    8..max(ld_layers) (25 directions at 256 px), SG3 takes each LD layer's affine (20)."""
    if generator_family(G_teacher) == 'sg2':
        return distill_math.sg2_direction_bank(G_teacher, max(ld_layers), k=k)
    return distill_math.sg3_direction_bank(G_teacher, ld_layers, k=k)


def gram_matrix(feat):
    """[B, C, H, W] -> [B, C, C]: F·Fᵀ / (C·H·W) in float32."""
    b, ch, h, w = feat.shape
    f = feat.to(torch.float32).reshape(b, ch, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (ch * h * w)


def gs_perceptual_loss(feats_student, feats_teacher, style_weight=GS_STYLE_WEIGHT):
    """GAN-Slimming's loss on VGG16 features [relu1_2, relu2_2, relu3_3, relu4_3]: mean |Δ relu1_2|
    plus ``style_weight`` x the sum over the layers of the mean squared Gram-matrix difference."""
    content = (feats_student[0].to(torch.float32) - feats_teacher[0].to(torch.float32)).abs().mean()
    style = sum((gram_matrix(fs) - gram_matrix(ft)).square().mean() for fs, ft in zip(feats_student, feats_teacher))
    return content + style_weight * style


_vgg_cache = dict()


def _get_vgg(path_or_url, device):
    key = (str(path_or_url), str(torch.device(device)))
    if key not in _vgg_cache:
        _vgg_cache[key] = vgg16.load_vgg16_features(path_or_url, device=device)
    return _vgg_cache[key]

# ---------------------------------------------------------------------------------------------


class DistillTerm:
    """Teacher-based terms (l1, lpips, ld, vgg); a weight of 0 switches a term off entirely."""

    def __init__(self, device, networks, teacher='teacher', l1_weight=3.0, lpips_weight=3.0, ld_weight=30.0,
                 ld_offset=5.0, ld_layers=None, ld_directions=5, vgg_weight=0.0, mask='uniform', face_parser=None,
                 lpips_vgg=None, lpips_lin=None, lpips_downsample=None, teacher_noise='random'):
        from pruning import content_mask as content_mask_mod
        self.device = torch.device(device)
        self.G = networks.G
        self.teacher = networks[teacher]
        self.l1_weight, self.lpips_weight = float(l1_weight), float(lpips_weight)
        self.ld_weight, self.ld_offset = float(ld_weight), float(ld_offset)
        self.vgg_weight = float(vgg_weight)
        self.teacher_noise = teacher_noise
        family = generator_family(self.G)
        if generator_family(self.teacher) != family:
            raise dnnlib.util.UserError('--teacher: the teacher and the student are different generator families')
        for attr in ('img_resolution', 'img_channels', 'z_dim', 'w_dim', 'c_dim', 'num_ws'):
            if getattr(self.G, attr) != getattr(self.teacher, attr):
                raise dnnlib.util.UserError(f'--student: {attr} is {getattr(self.G, attr)}, the teacher has {getattr(self.teacher, attr)}')

        if mask not in content_mask_mod.MODES:
            raise dnnlib.util.UserError(f'--mask: unknown content mask "{mask}", expected one of {", ".join(content_mask_mod.MODES)}')
        self.mask_mode = mask
        self.parser = None
        if mask == 'face':
            from pruning.face_parsing import get_face_parser
            self.parser = get_face_parser(face_parser, device=self.device)

        self.lpips = None
        if self.lpips_weight != 0:
            from training import lpips as lpips_mod
            self.lpips = lpips_mod.make_lpips(vgg_weights=lpips_vgg or lpips_mod.VGG16_URL,
                                              lin_weights=lpips_lin or lpips_mod.LPIPS_VGG_URL, device=self.device)
        self.lpips_downsample = lpips_downsample or ('avgpool' if family == 'sg2' else 'bilinear')

        self.vgg = None
        if self.vgg_weight != 0:
            self.vgg = _get_vgg(lpips_vgg or vgg16.VGG16_URL, self.device)

        self.ld_layers = None
        self.bank = None
        if self.ld_weight != 0:
            self.ld_layers = [int(k) for k in (ld_layers if ld_layers is not None else default_ld_layers(self.teacher))]
            self.bank = direction_bank(self.teacher, self.ld_layers, k=int(ld_directions)).to(self.device)

    # ---- hooks of StyleGAN2Loss -----------------------------------------------------------------
    def prepare(self, ctx):
        ctx.distill_teacher = None
        ctx.latent_offsets = None
        if self.bank is None:
            return
        batch = ctx.ws.shape[0]
        delta = distill_math.latent_offsets(self.bank, batch, strength=self.ld_offset).to(ctx.ws.dtype)
        ctx.latent_offsets = delta
        ctx.synthesis_ws = torch.cat([ctx.synthesis_ws, ctx.synthesis_ws + delta[:, None, :]])
        ctx.return_features = True

    @torch.no_grad()
    def teacher_forward(self, ctx):
        """Teacher images (and LD features) on the same z / mixing / offsets; once per micro-batch."""
        if ctx.get('distill_teacher') is not None:
            return ctx.distill_teacher
        self.teacher.eval()
        with misc.frozen_network_scope():  # TF32 unless the user said no (frozen network)
            ws = ctx.loss.mapping(self.teacher, ctx.z, ctx.c, mixing=ctx.mixing)
            if ctx.get('latent_offsets') is not None:
                ws = torch.cat([ws, ws + ctx.latent_offsets[:, None, :].to(ws.dtype)])
            if self.bank is not None:
                img, feats = self.teacher.synthesis(ws, return_features=True, noise_mode=self.teacher_noise)
            else:
                img, feats = self.teacher.synthesis(ws, noise_mode=self.teacher_noise), None
        ctx.distill_teacher = dnnlib.EasyDict(img=img.to(torch.float32), features=feats, mask=None)
        return ctx.distill_teacher

    def content_mask(self, ctx, teacher_img):
        from pruning import content_mask as content_mask_mod
        if self.mask_mode == 'uniform':
            return None
        if ctx.distill_teacher.mask is None:
            ctx.distill_teacher.mask = content_mask_mod.content_mask(self.parser, teacher_img, 'face', resize='bilinear')
        return ctx.distill_teacher.mask

    def __call__(self, ctx):
        out = dict()
        batch = ctx.z.shape[0]
        teacher = self.teacher_forward(ctx)
        t_img = teacher.img[:batch]
        s_img = ctx.img.to(torch.float32)
        mask = self.content_mask(ctx, t_img)
        if self.l1_weight != 0:
            out['l1'] = distill_math.masked_l1(s_img, t_img, mask) * self.l1_weight
        if self.lpips is not None:
            s_in, t_in = (s_img, t_img) if mask is None else (s_img * mask, t_img * mask)
            s_in = distill_math.downsample_for_lpips(s_in, LPIPS_SIZE, self.lpips_downsample)
            t_in = distill_math.downsample_for_lpips(t_in, LPIPS_SIZE, self.lpips_downsample)
            with torch.no_grad():  # the teacher's half needs no gradient (nor its activations kept)
                t_feats = self.lpips.features(t_in)
            out['lpips'] = self.lpips.distance_to_features(s_in, t_feats).mean() * self.lpips_weight
        if self.vgg is not None:  # full resolution, [-1, 1] -> [0, 1], no ImageNet normalisation
            s_in, t_in = (s_img, t_img) if mask is None else (s_img * mask, t_img * mask)
            with misc.frozen_network_scope():
                fs = self.vgg((s_in + 1) / 2, taps=GS_VGG_TAPS)
                with torch.no_grad():  # the teacher's half: no gradient, no activations kept
                    ft = self.vgg((t_in + 1) / 2, taps=GS_VGG_TAPS)
            out['vgg'] = gs_perceptual_loss(fs, ft) * self.vgg_weight
        if self.bank is not None:
            ld = 0
            for key in self.ld_layers:
                ld = ld + distill_math.relation_kl(ctx.features[key], teacher.features[key])
            out['ld'] = ld * self.ld_weight
        return out

# ---------------------------------------------------------------------------------------------


def style_modules(G):
    """[(name, affine module, gain)] of every style the student computes: each SynthesisLayer and
    ToRGB of StyleGAN2 (toRGB styles carry their runtime weight_gain, as GAN-Slimming's code
    returns them), each SynthesisLayer of StyleGAN3 (the toRGB layer with its gain; not the input's
    transform affine)."""
    family = generator_family(G)
    found = []
    for name, module in G.synthesis.named_modules():
        affine = getattr(module, 'affine', None)
        if affine is None or name == 'input':
            continue
        gain = 1.0
        if family == 'sg2' and type(module).__name__ == 'ToRGBLayer':
            gain = float(module.weight_gain)
        if family == 'sg3' and getattr(module, 'is_torgb', False):
            gain = float(1 / (module.in_channels * module.conv_kernel ** 2) ** 0.5)
        found.append((f'synthesis.{name}.affine', affine, gain))
    return found


class StyleSparsityTerm:
    """GAN-Slimming: η·Σ_layers ‖mean over the batch of the style vector‖₁ (η = 1e-5)."""

    def __init__(self, device, networks, eta=1e-5):
        self.eta = float(eta)
        self.G = networks.G
        self.modules = style_modules(self.G)
        self._handles = []
        self._styles = []

    def _remove_hooks(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def prepare(self, ctx):
        self._remove_hooks()
        self._styles = []
        for _name, module, gain in self.modules:
            def hook(_module, _inputs, output, gain=gain):
                self._styles.append(output * gain)
            self._handles.append(module.register_forward_hook(hook))

    def __call__(self, ctx):
        self._remove_hooks()
        batch = ctx.z.shape[0]
        styles = [s[:batch].to(torch.float32) for s in self._styles]  # without the LD-offset copies
        self._styles = []
        if not styles:
            return {}
        return {'sparse': distill_math.style_l1(styles) * self.eta}

# ---------------------------------------------------------------------------------------------
