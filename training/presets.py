"""Configuration presets of stylegan2-ada-pytorch (``--cfg``) and StyleGAN3, as data.

``PRESETS_SG2ADA`` is stylegan2-ada-pytorch's ``--cfg`` table; ``stylegan2`` is the SVS paper's
StyleGAN2 "base" (30.0M generator parameters at 256 px) and ``paper256`` its "small" (24.8M).
``PRESETS_SG3`` holds StyleGAN3's ``stylegan3-t``, ``stylegan3-r`` and its own ``stylegan2``
(reached here as ``sg3-stylegan2``).

``network_kwargs()`` turns a preset into constructor keyword bundles for G and D (with
``class_name``, ready for ``dnnlib.util.construct_class_by_name``), ``training_kwargs()`` into the
optimisation hyper-parameters.
"""
import dnnlib

# Columns of stylegan2-ada-pytorch's table. -1 = derived from resolution and GPU count ('auto').
#   ref_gpus: GPUs the batch was tuned for (batch_gpu = mb // ref_gpus), kimg: training length,
#   mb: batch, mbstd: minibatch-std group size, fmaps: channel_base / 32768, lrate: G and D
#   learning rate, gamma: R1 weight, ema: G_ema half-life in kimg, ramp: EMA ramp-up, map: mapping
#   depth.
PRESETS_SG2ADA = {
    'auto':      dict(ref_gpus=-1, kimg=25000,  mb=-1, mbstd=-1, fmaps=-1,  lrate=-1,     gamma=-1,   ema=-1,  ramp=0.05, map=2),
    'stylegan2': dict(ref_gpus=8,  kimg=25000,  mb=32, mbstd=4,  fmaps=1,   lrate=0.002,  gamma=10,   ema=10,  ramp=None, map=8),
    'paper256':  dict(ref_gpus=8,  kimg=25000,  mb=64, mbstd=8,  fmaps=0.5, lrate=0.0025, gamma=1,    ema=20,  ramp=None, map=8),
    'paper512':  dict(ref_gpus=8,  kimg=25000,  mb=64, mbstd=8,  fmaps=1,   lrate=0.0025, gamma=0.5,  ema=20,  ramp=None, map=8),
    'paper1024': dict(ref_gpus=8,  kimg=25000,  mb=32, mbstd=4,  fmaps=1,   lrate=0.002,  gamma=2,    ema=10,  ramp=None, map=8),
    'cifar':     dict(ref_gpus=2,  kimg=100000, mb=64, mbstd=32, fmaps=1,   lrate=0.0025, gamma=0.01, ema=500, ramp=0.05, map=2),
}

# StyleGAN3's train.py: batch and gamma have no defaults there (--batch, --gamma are required);
# cbase/cmax/mbstd are its CLI defaults. ema = batch * 10 / 32 kimg with ramp-up 0.05.
PRESETS_SG3 = {
    'stylegan3-t':   dict(map=2, glr=0.0025, dlr=0.002, cbase=32768, cmax=512, mbstd=4, conv_kernel=3, radial=False,
                          style_mixing=0, pl_weight=0, G_reg_interval=None),
    'stylegan3-r':   dict(map=2, glr=0.0025, dlr=0.002, cbase=32768, cmax=512, mbstd=4, conv_kernel=1, radial=True,
                          style_mixing=0, pl_weight=0, G_reg_interval=None),
    'sg3-stylegan2': dict(map=8, glr=0.002,  dlr=0.002, cbase=32768, cmax=512, mbstd=4,
                          style_mixing=0.9, pl_weight=2, G_reg_interval=4),
}

PRESET_NAMES = sorted(PRESETS_SG2ADA) + sorted(PRESETS_SG3)

_G_SG2 = 'training.networks_stylegan2.Generator'
_G_SG3 = 'training.networks_stylegan3.Generator'
_D = 'training.networks_stylegan2.Discriminator'


def _lookup(cfg):
    if cfg in PRESETS_SG2ADA:
        return 'sg2ada', dict(PRESETS_SG2ADA[cfg])
    if cfg in PRESETS_SG3:
        return 'sg3', dict(PRESETS_SG3[cfg])
    raise dnnlib.util.UserError(f'--cfg: unknown preset {cfg!r}; choose from {", ".join(PRESET_NAMES)}')


def sg2ada_spec(cfg, resolution, gpus=1):
    """One row of the stylegan2-ada table with the 'auto' entries resolved (as its train.py does)."""
    family, spec = _lookup(cfg)
    if family != 'sg2ada':
        raise dnnlib.util.UserError(f'--cfg: {cfg!r} is not a stylegan2-ada preset')
    spec = dnnlib.EasyDict(spec)
    if cfg == 'auto':
        spec.ref_gpus = gpus
        spec.mb = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
        spec.mbstd = min(spec.mb // gpus, 4)
        spec.fmaps = 1 if resolution >= 512 else 0.5
        spec.lrate = 0.002 if resolution >= 1024 else 0.0025
        spec.gamma = 0.0002 * (resolution ** 2) / spec.mb
        spec.ema = spec.mb * 10 / 32
    return spec


def network_kwargs(cfg, resolution, c_dim=0, img_channels=3, channel_base=None, channel_max=None, map_depth=None,
                   fp32=False, gpus=1, batch=None, mbstd_group=None, layer_channels=None):
    """Constructor kwargs ``(G_kwargs, D_kwargs)`` of a preset, each with its ``class_name``.

    Args:
        cfg:            a key of ``PRESETS_SG2ADA`` or ``PRESETS_SG3``.
        resolution:     image resolution (power of two).
        c_dim:          label dimensionality (0 = unconditional).
        img_channels:   image channels.
        channel_base, channel_max, map_depth: override the preset's widths / mapping depth.
        fp32:           disable mixed precision (num_fp16_res=0, conv_clamp=None) in G and D.
        gpus:           GPU count ('auto' derives batch and minibatch-std group from it).
        batch:          total batch; StyleGAN3's G needs it for magnitude_ema_beta (default 32).
        mbstd_group:    override the minibatch-std group size.
        layer_channels: per-group synthesis widths (StyleGAN2 generators: see networks_stylegan2).
    """
    family, spec = _lookup(cfg)
    common = dict(c_dim=c_dim, img_resolution=resolution, img_channels=img_channels)
    mixed = dict(num_fp16_res=0, conv_clamp=None) if fp32 else dict(num_fp16_res=4, conv_clamp=256)

    if family == 'sg2ada':
        spec = sg2ada_spec(cfg, resolution, gpus)
        cbase = int(spec.fmaps * 32768) if channel_base is None else channel_base
        cmax = 512 if channel_max is None else channel_max
        mbstd = spec.mbstd if mbstd_group is None else mbstd_group
        G_kwargs = dnnlib.EasyDict(class_name=_G_SG2, z_dim=512, w_dim=512, **common,
                                   mapping_kwargs=dnnlib.EasyDict(num_layers=spec.map if map_depth is None else map_depth),
                                   synthesis_kwargs=dnnlib.EasyDict(channel_base=cbase, channel_max=cmax,
                                                                    fused_modconv_default='inference_only', **mixed))
        if layer_channels is not None:
            G_kwargs.synthesis_kwargs.layer_channels = list(layer_channels)
        D_kwargs = dnnlib.EasyDict(class_name=_D, **common, architecture=('orig' if cfg == 'cifar' else 'resnet'),
                                   channel_base=cbase, channel_max=cmax, **mixed,
                                   block_kwargs=dnnlib.EasyDict(), mapping_kwargs=dnnlib.EasyDict(),
                                   epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=mbstd))
        return G_kwargs, D_kwargs

    # StyleGAN3 family: flat synthesis kwargs, as its train.py builds them.
    batch = 32 if batch is None else batch
    cbase = spec['cbase'] if channel_base is None else channel_base
    cmax = spec['cmax'] if channel_max is None else channel_max
    mapping_kwargs = dnnlib.EasyDict(num_layers=spec['map'] if map_depth is None else map_depth)
    if cfg == 'sg3-stylegan2':
        mapping_kwargs.w_avg_beta = 0.998  # StyleGAN3's networks_stylegan2 default
        G_kwargs = dnnlib.EasyDict(class_name=_G_SG2, z_dim=512, w_dim=512, **common, mapping_kwargs=mapping_kwargs,
                                   channel_base=cbase, channel_max=cmax, fused_modconv_default='inference_only', **mixed)
    else:
        G_kwargs = dnnlib.EasyDict(class_name=_G_SG3, z_dim=512, w_dim=512, **common, mapping_kwargs=mapping_kwargs,
                                   channel_base=cbase, channel_max=cmax, magnitude_ema_beta=0.5 ** (batch / (20 * 1e3)),
                                   **mixed)
        if cfg == 'stylegan3-r':
            G_kwargs.update(conv_kernel=1, channel_base=cbase * 2, channel_max=cmax * 2, use_radial_filters=True)
    if layer_channels is not None:
        G_kwargs.layer_channels = list(layer_channels)
    D_kwargs = dnnlib.EasyDict(class_name=_D, **common, channel_base=cbase, channel_max=cmax, **mixed,
                               block_kwargs=dnnlib.EasyDict(freeze_layers=0), mapping_kwargs=dnnlib.EasyDict(),
                               epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=spec['mbstd'] if mbstd_group is None else mbstd_group))
    return G_kwargs, D_kwargs


def training_kwargs(cfg, resolution, gpus=1, batch=None, gamma=None):
    """Optimisation hyper-parameters of a preset (what stylegan2-ada / StyleGAN3 train.py set).

    Returns an EasyDict: total_kimg, batch_size, batch_gpu, G_lr, D_lr, betas, eps, r1_gamma,
    ema_kimg, ema_rampup, pl_weight, style_mixing_prob, G_reg_interval, D_reg_interval
    (plus blur_init_sigma / blur_fade_kimg for stylegan3-r).
    """
    family, spec = _lookup(cfg)
    if family == 'sg2ada':
        spec = sg2ada_spec(cfg, resolution, gpus)
        # The preset batch is split as if on ref_gpus GPUs; an explicit batch over the GPUs used.
        batch_gpu = spec.mb // spec.ref_gpus if batch is None else batch // gpus
        batch = spec.mb if batch is None else batch
        args = dnnlib.EasyDict(
            total_kimg=spec.kimg, batch_size=batch, batch_gpu=max(batch_gpu, 1),
            G_lr=spec.lrate, D_lr=spec.lrate, betas=(0.0, 0.99), eps=1e-8,
            r1_gamma=spec.gamma if gamma is None else gamma, ema_kimg=spec.ema, ema_rampup=spec.ramp,
            pl_weight=0 if cfg == 'cifar' else 2, style_mixing_prob=0 if cfg == 'cifar' else 0.9,
            G_reg_interval=4, D_reg_interval=16)
        return args

    if batch is None or gamma is None:
        raise dnnlib.util.UserError(f'--cfg={cfg}: StyleGAN3 presets need an explicit --batch and --gamma')
    args = dnnlib.EasyDict(
        total_kimg=25000, batch_size=batch, batch_gpu=batch // gpus,
        G_lr=spec['glr'], D_lr=spec['dlr'], betas=(0.0, 0.99), eps=1e-8,
        r1_gamma=gamma, ema_kimg=batch * 10 / 32, ema_rampup=0.05,
        pl_weight=spec['pl_weight'], style_mixing_prob=spec['style_mixing'],
        G_reg_interval=spec['G_reg_interval'], D_reg_interval=16)
    if cfg == 'stylegan3-r':
        args.update(blur_init_sigma=10, blur_fade_kimg=batch * 200 / 32)
    return args
