"""DDPM networks: diffusers ``UNet2DModel`` built from a checked config, and every way to load one.

- ``PRESETS``: the two architectures of the paper's Table 3 (ermongroup/ddim's CIFAR-10 32 px and
  CelebA 64 px UNets, expressed as ``UNet2DModel`` configs; same parameters) and ``tiny`` (the
  built-in demo teacher).
- ``load_ddpm(path)``: a diffusers folder (``save_pretrained`` layout, or a pipeline folder with
  ``unet/`` and ``scheduler/``), a ddim-format checkpoint (``ckpt.pth`` list or plain state dict),
  or one of our fine-tuning snapshots. Widths are read from the tensors, so pruned models load.
- ``save_diffusers(unet, folder)``: diffusers' ``save_pretrained``, written to a temporary folder and
  renamed; unpruned models reload with diffusers' own ``from_pretrained``.

Nothing read from a file chooses code: config keys and block types are checked against allow-lists,
``torch.load`` is weights-only, safetensors never unpickle.
"""
import copy
import inspect
import json
import os
import re
import shutil
import tempfile

import torch

import dnnlib
from dnnlib.util import UserError

SNAPSHOT_FORMAT = 'svs-ddpm-snapshot'

_COMMON = dict(in_channels=3, out_channels=3, layers_per_block=2, attention_head_dim=None, norm_num_groups=32,
               norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, act_fn='silu',
               center_input_sample=False, mid_block_scale_factor=1, time_embedding_type='positional')
PRESETS = {
    # ddim configs/cifar10.yml: ch 128, ch_mult (1,2,2,2), attention at 16 px.
    'cifar10': dict(_COMMON, sample_size=32, block_out_channels=(128, 256, 256, 256),
                    down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
                    up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D')),
    # ddim configs/celeba.yml: ch 128, ch_mult (1,2,2,2,4), attention at 16 px.
    'celeba64': dict(_COMMON, sample_size=64, block_out_channels=(128, 256, 256, 256, 512),
                     down_block_types=('DownBlock2D', 'DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
                     up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D', 'UpBlock2D')),
    # The built-in demo teacher (assets/): 32 px, about 1.1 M parameters.
    'tiny': dict(_COMMON, sample_size=32, block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
                 down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'),
                 up_block_types=('UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D')),
    # Tests and the quick pipeline setting: 16 px, two levels, attention at 8 px.
    'micro': dict(_COMMON, sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                  down_block_types=('DownBlock2D', 'AttnDownBlock2D'), up_block_types=('AttnUpBlock2D', 'UpBlock2D')),
}
_BLOCK_TYPES = {'DownBlock2D', 'AttnDownBlock2D', 'UpBlock2D', 'AttnUpBlock2D'}
_META_KEYS = {'_class_name', '_diffusers_version', '_name_or_path', '_use_default_values'}
SCHEDULERS = ('DDPMScheduler', 'DDIMScheduler')


def _unet_class():
    from diffusers import UNet2DModel
    return UNet2DModel


def _init_keys():
    return set(inspect.signature(_unet_class().__init__).parameters) - {'self'}


def check_config(config, where):
    """A plain dict of UNet2DModel kwargs from a JSON/preset config; UserError on anything unexpected."""
    if not isinstance(config, dict):
        raise UserError(f'{where}: the config is not a JSON object')
    cls = config.get('_class_name', 'UNet2DModel')
    if cls != 'UNet2DModel':
        raise UserError(f'{where}: _class_name is {cls!r}; only UNet2DModel is supported')
    out = {}
    allowed = _init_keys()
    for key, value in config.items():
        if key in _META_KEYS:
            continue
        if key not in allowed:
            raise UserError(f'{where}: unknown UNet2DModel config key {key!r}')
        out[key] = list(value) if isinstance(value, tuple) else value
    for key in ('down_block_types', 'up_block_types', 'block_out_channels'):
        if key not in out:
            raise UserError(f'{where}: the config lacks {key}')
    for name in list(out['down_block_types']) + list(out['up_block_types']):
        if name not in _BLOCK_TYPES:
            raise UserError(f'{where}: unsupported block type {name!r} (supported: {", ".join(sorted(_BLOCK_TYPES))})')
    if out.get('mid_block_type', 'UNetMidBlock2D') not in ('UNetMidBlock2D',):
        raise UserError(f'{where}: unsupported mid_block_type {out["mid_block_type"]!r}')
    if len(out['block_out_channels']) != len(out['down_block_types']):
        raise UserError(f'{where}: block_out_channels and down_block_types differ in length')
    return out


def build_unet(config, where='config', **overrides):
    """A randomly initialised UNet2DModel from a preset name or a config dict (checked)."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise UserError(f'unknown DDPM architecture {config!r} (known: {", ".join(PRESETS)})')
        config = PRESETS[config]
    config = check_config(dict(config, **overrides), where)
    try:
        return _unet_class()(**config)
    except (ValueError, TypeError, AssertionError) as err:
        raise UserError(f'{where}: cannot build UNet2DModel ({err})')


def unet_config(unet):
    """The JSON-able constructor config of a UNet2DModel (widths as built, before any pruning)."""
    return json.loads(json.dumps({k: v for k, v in dict(unet.config).items() if not k.startswith('_')}))

# ---------------------------------------------------------------------------------------------
# Pruned widths: modules resized to the tensors, attributes of the resampling/attention blocks fixed.


def sync_block_attributes(unet):
    """After channels were removed: the attributes diffusers checks or uses at run time follow the convs.

    ``Upsample2D/Downsample2D.channels`` are asserted in forward. ``Attention.scale`` is set to
    1/sqrt(head dim) of the pruned width: what ddim's attention computes from its runtime shape and
    what diffusers' default processor uses anyway (the classic processor would read ``scale``).
    """
    from diffusers.models.attention_processor import Attention
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.upsampling import Upsample2D
    for m in unet.modules():
        if isinstance(m, (Upsample2D, Downsample2D)) and isinstance(getattr(m, 'conv', None), torch.nn.Conv2d):
            m.channels, m.out_channels = m.conv.in_channels, m.conv.out_channels
        elif isinstance(m, Attention):
            m.query_dim = m.to_q.in_features
            m.inner_dim = m.to_q.out_features
            m.inner_kv_dim = m.to_k.out_features
            m.out_dim = m.to_out[0].out_features
            m.scale = (m.inner_dim // m.heads) ** -0.5
    return unet


def fit_to_tensors(unet, tensors, where):
    """Resize Conv2d/Linear/GroupNorm modules of ``unet`` to the shapes in ``tensors`` (pruned widths)."""
    modules = dict(unet.named_modules())
    changed = False
    for name, module in list(modules.items()):
        w = tensors.get(f'{name}.weight' if name else 'weight')
        if w is None or not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm)):
            continue
        if tuple(w.shape) == tuple(module.weight.shape):
            continue
        if isinstance(module, torch.nn.Conv2d):
            if w.ndim != 4 or tuple(w.shape[2:]) != module.kernel_size or module.groups != 1:
                raise UserError(f'{where}: {name}.weight has shape {tuple(w.shape)}, not a {module.kernel_size} conv')
            new = torch.nn.Conv2d(w.shape[1], w.shape[0], module.kernel_size, module.stride, module.padding,
                                  bias=module.bias is not None)
        elif isinstance(module, torch.nn.Linear):
            if w.ndim != 2:
                raise UserError(f'{where}: {name}.weight has shape {tuple(w.shape)}, expected a matrix')
            new = torch.nn.Linear(w.shape[1], w.shape[0], bias=module.bias is not None)
        else:
            if w.ndim != 1 or w.shape[0] % module.num_groups:
                raise UserError(f'{where}: {name}.weight has {tuple(w.shape)} channels, not a multiple of '
                                f'its {module.num_groups} GroupNorm groups')
            new = torch.nn.GroupNorm(module.num_groups, w.shape[0], eps=module.eps, affine=module.affine)
        parent_name, _, child = name.rpartition('.')
        setattr(modules[parent_name] if parent_name else unet, child, new)
        changed = True
    if changed:
        sync_block_attributes(unet)
    return unet


def load_tensors_strict(unet, tensors, where):
    """Copy ``tensors`` into ``unet``: every tensor of both sides accounted for, shapes equal."""
    own = unet.state_dict()
    unknown = sorted(set(tensors) - set(own))
    missing = sorted(set(own) - set(tensors))
    if unknown:
        raise UserError(f'{where}: unexpected tensor {unknown[0]} ({len(unknown)} unknown in all)')
    if missing:
        raise UserError(f'{where}: missing tensor {missing[0]} ({len(missing)} missing in all)')
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f'{where}: {key} is not a tensor')
        if tuple(value.shape) != tuple(own[key].shape):
            raise UserError(f'{where}: {key} has shape {tuple(value.shape)}, the network expects {tuple(own[key].shape)}')
        if not torch.isfinite(value).all():
            raise UserError(f'{where}: {key} holds NaN or Inf')
    unet.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=True)
    return unet


def unet_from_tensors(config, tensors, where):
    unet = build_unet(config, where)
    fit_to_tensors(unet, tensors, where)
    return load_tensors_strict(unet, tensors, where).eval().requires_grad_(False)

# ---------------------------------------------------------------------------------------------
# diffusers folders.


def _read_json(path):
    try:
        with open(path, 'rt', encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f'{path}: missing')
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f'{path}: not a readable JSON file ({str(err).splitlines()[0]})')


def read_scheduler_config(path):
    """diffusers scheduler_config.json -> EasyDict(num_timesteps, beta_start, beta_end, beta_schedule)."""
    cfg = _read_json(path)
    name = cfg.get('_class_name') if isinstance(cfg, dict) else None
    if name not in SCHEDULERS:
        raise UserError(f'{path}: unknown scheduler {name!r} (supported: {", ".join(SCHEDULERS)})')
    schedule = cfg.get('beta_schedule', 'linear')
    if schedule != 'linear' or cfg.get('trained_betas') is not None:
        raise UserError(f'{path}: unsupported beta_schedule {schedule!r} (only linear)')
    if cfg.get('prediction_type', 'epsilon') != 'epsilon':
        raise UserError(f'{path}: unsupported prediction_type {cfg.get("prediction_type")!r} (only epsilon)')
    return dnnlib.EasyDict(num_timesteps=int(cfg.get('num_train_timesteps', 1000)), beta_start=float(cfg.get('beta_start', 1e-4)),
                           beta_end=float(cfg.get('beta_end', 0.02)), beta_schedule='linear')


def load_diffusers_folder(folder):
    """A ``save_pretrained`` folder (or a pipeline folder with unet/ and scheduler/) -> EasyDict."""
    unet_dir = os.path.join(folder, 'unet') if os.path.isdir(os.path.join(folder, 'unet')) else folder
    config = _read_json(os.path.join(unet_dir, 'config.json'))
    st = os.path.join(unet_dir, 'diffusion_pytorch_model.safetensors')
    binf = os.path.join(unet_dir, 'diffusion_pytorch_model.bin')
    if os.path.isfile(st):
        import safetensors.torch
        try:
            tensors = safetensors.torch.load_file(st)
        except Exception as err:  # safetensors raises its own error types
            raise UserError(f'{st}: not a readable safetensors file ({str(err).splitlines()[0]})')
    elif os.path.isfile(binf):
        tensors = _torch_load(binf)
        if not isinstance(tensors, dict):
            raise UserError(f'{binf}: expected a state dict')
    else:
        raise UserError(f'{unet_dir}: no diffusion_pytorch_model.safetensors (or .bin)')
    unet = unet_from_tensors(config, tensors, unet_dir)
    sched = os.path.join(folder, 'scheduler', 'scheduler_config.json')
    if not os.path.isfile(sched):
        sched = os.path.join(unet_dir, 'scheduler_config.json')
    diffusion = read_scheduler_config(sched) if os.path.isfile(sched) else None
    return dnnlib.EasyDict(unet=unet, unet_ema=None, config=check_config(config, unet_dir), diffusion=diffusion,
                           kind='diffusers', source=folder)


def save_diffusers(unet, folder, diffusion=None):
    """``unet.save_pretrained(folder)`` (+ scheduler/ config), written to a temporary folder and renamed."""
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(folder)}.', suffix='.tmp', dir=parent)
    except OSError as err:
        raise UserError(f'{folder}: cannot write ({err.strerror})')
    try:
        unet.save_pretrained(tmp, safe_serialization=True)
        if diffusion is not None:
            from diffusers import DDPMScheduler
            diffusion = dnnlib.EasyDict(diffusion)
            DDPMScheduler(num_train_timesteps=diffusion.num_timesteps, beta_start=diffusion.beta_start,
                          beta_end=diffusion.beta_end, beta_schedule='linear').save_pretrained(os.path.join(tmp, 'scheduler'))
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f'{folder}: cannot write ({err.strerror or err})')
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder

# ---------------------------------------------------------------------------------------------
# ermongroup/ddim checkpoints (also Diff-Pruning's ddpm_exp state dicts).

_DDIM_RESNET = {'norm1': 'norm1', 'conv1': 'conv1', 'temb_proj': 'time_emb_proj', 'norm2': 'norm2',
                'conv2': 'conv2', 'nin_shortcut': 'conv_shortcut'}
_DDIM_ATTN = {'norm': 'group_norm', 'q': 'to_q', 'k': 'to_k', 'v': 'to_v', 'proj_out': 'to_out.0'}


def ddim_key_map(key, num_levels):
    """ddim state-dict key -> (diffusers key, is_attention_projection) or None if unknown."""
    m = re.fullmatch(r'temb\.dense\.([01])\.(weight|bias)', key)
    if m:
        return f'time_embedding.linear_{int(m.group(1)) + 1}.{m.group(2)}', False
    if re.fullmatch(r'(conv_in|conv_out)\.(weight|bias)', key):
        return key, False
    m = re.fullmatch(r'norm_out\.(weight|bias)', key)
    if m:
        return f'conv_norm_out.{m.group(1)}', False

    def sub(kind, rest, prefix):
        m2 = re.fullmatch(r'(\w+)\.(weight|bias)', rest)
        if m2 is None:
            return None
        table = _DDIM_RESNET if kind == 'block' else _DDIM_ATTN
        if m2.group(1) not in table:
            return None
        return f'{prefix}.{table[m2.group(1)]}.{m2.group(2)}', kind == 'attn' and m2.group(1) != 'norm'

    m = re.fullmatch(r'down\.(\d+)\.(block|attn)\.(\d+)\.(.+)', key)
    if m:
        return sub(m.group(2), m.group(4), f'down_blocks.{m.group(1)}.{"resnets" if m.group(2) == "block" else "attentions"}.{m.group(3)}')
    m = re.fullmatch(r'up\.(\d+)\.(block|attn)\.(\d+)\.(.+)', key)
    if m:
        level = num_levels - 1 - int(m.group(1))  # ddim numbers up levels by resolution, diffusers by order
        return sub(m.group(2), m.group(4), f'up_blocks.{level}.{"resnets" if m.group(2) == "block" else "attentions"}.{m.group(3)}')
    m = re.fullmatch(r'down\.(\d+)\.downsample\.conv\.(weight|bias)', key)
    if m:
        return f'down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}', False
    m = re.fullmatch(r'up\.(\d+)\.upsample\.conv\.(weight|bias)', key)
    if m:
        return f'up_blocks.{num_levels - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}', False
    m = re.fullmatch(r'mid\.(block_1|block_2|attn_1)\.(.+)', key)
    if m:
        idx = {'block_1': 0, 'block_2': 1, 'attn_1': 0}[m.group(1)]
        return sub('attn' if m.group(1) == 'attn_1' else 'block', m.group(2),
                   f'mid_block.{"attentions" if m.group(1) == "attn_1" else "resnets"}.{idx}')
    return None


def _ddim_config(sd, where, resolution=None, norm_groups=32):
    levels = sorted({int(k.split('.')[1]) for k in sd if k.startswith('down.')})
    if not levels or levels != list(range(len(levels))) or 'conv_in.weight' not in sd:
        raise UserError(f'{where}: not a ddim UNet state dict (no conv_in / down.* tensors)')
    n = len(levels)
    blocks = sorted({int(k.split('.')[3]) for k in sd if k.startswith('down.0.block.')})
    widths, attn = [], []
    for i in range(n):
        last = max(int(k.split('.')[3]) for k in sd if k.startswith(f'down.{i}.block.'))
        widths.append(int(sd[f'down.{i}.block.{last}.conv2.weight'].shape[0]))
        attn.append(any(k.startswith(f'down.{i}.attn.') for k in sd))
    if resolution is None:
        resolution = {4: 32, 5: 64, 6: 256}.get(n, 2 ** (n + 2))
    return dict(_COMMON, sample_size=int(resolution), block_out_channels=widths, layers_per_block=len(blocks),
                norm_num_groups=int(norm_groups), down_block_types=['AttnDownBlock2D' if a else 'DownBlock2D' for a in attn],
                up_block_types=['AttnUpBlock2D' if a else 'UpBlock2D' for a in reversed(attn)],
                in_channels=int(sd['conv_in.weight'].shape[1]), out_channels=int(sd['conv_out.weight'].shape[0]))


def convert_ddim_state_dict(sd, where='<ddim>', resolution=None, norm_groups=32):
    """ddim ``Model`` state dict -> UNet2DModel (every tensor mapped; attention 1x1 convs -> linears).
    ddim's ``Normalize`` is always GroupNorm(32); ``norm_groups`` is for other users of its layout."""
    sd = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in sd.items()}
    config = _ddim_config(sd, where, resolution, norm_groups)
    tensors = {}
    for key, value in sd.items():
        mapped = ddim_key_map(key, len(config['block_out_channels']))
        if mapped is None:
            raise UserError(f'{where}: unknown ddim tensor {key}')
        new_key, is_proj = mapped
        if not isinstance(value, torch.Tensor):
            raise UserError(f'{where}: {key} is not a tensor')
        if is_proj and key.endswith('.weight'):
            if value.ndim != 4 or value.shape[2:] != (1, 1):
                raise UserError(f'{where}: {key} has shape {tuple(value.shape)}, expected a 1x1 conv')
            value = value[:, :, 0, 0]
        tensors[new_key] = value
    return config, unet_from_tensors(config, tensors, where)


def _torch_load(path):
    try:
        with open(path, 'rb') as f:
            return torch.load(f, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise UserError(f'{path}: no such file')
    except IsADirectoryError:
        raise UserError(f'{path}: is a folder without a diffusers config.json')
    except Exception as err:  # unpickling errors come in many types; all mean "not a safe torch file"
        first = str(err).strip().splitlines()
        raise UserError(f'{path}: cannot read as a weights-only torch file ({type(err).__name__}: {first[0] if first else ""})')


def load_ddim_checkpoint(path, resolution=None, norm_groups=32):
    """ddim ``ckpt.pth`` ([model, optimizer, epoch, step, ema]) or a plain state dict -> EasyDict."""
    obj = _torch_load(path)
    model_sd, ema_sd = None, None
    if isinstance(obj, dict):
        model_sd = obj
    elif isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], dict):
        model_sd = obj[0]
        if len(obj) >= 5 and isinstance(obj[-1], dict) and any(k.endswith('conv_in.weight') for k in obj[-1]):
            ema_sd = obj[-1]
    else:
        raise UserError(f'{path}: not a ddim checkpoint (expected a state dict or a [model, optimizer, ...] list)')
    config, unet = convert_ddim_state_dict(model_sd, path, resolution, norm_groups)
    unet_ema = convert_ddim_state_dict(ema_sd, f'{path} (ema)', resolution, norm_groups)[1] if ema_sd is not None else None
    return dnnlib.EasyDict(unet=unet, unet_ema=unet_ema, config=check_config(config, path), diffusion=None,
                           kind='ddim', source=path)

# ---------------------------------------------------------------------------------------------
# Our snapshots (weights-only torch files; see training/ddpm_loop.py).


def snapshot_dict(unet, unet_ema=None, diffusion=None, **extras):
    """What a DDPM snapshot holds: config, state dicts (CPU), schedule and extras; no code."""
    out = dict(format=SNAPSHOT_FORMAT, version=1, config=unet_config(unet),
               unet={k: v.detach().cpu().clone() for k, v in unet.state_dict().items()},
               unet_ema=None if unet_ema is None else {k: v.detach().cpu().clone() for k, v in unet_ema.state_dict().items()},
               diffusion=None if diffusion is None else dict(diffusion))
    out.update(extras)
    return out


def save_snapshot(path, **kwargs):
    with dnnlib.util.atomic_open(path, 'wb') as f:
        torch.save(snapshot_dict(**kwargs), f)


def is_ddpm_source(path):
    """True if ``path`` is a diffusers folder, a ddim checkpoint or one of our DDPM snapshots."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, 'config.json')) or os.path.isdir(os.path.join(path, 'unet'))
    if not os.path.isfile(path):
        return False
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception:  # not a weights-only torch file: not ours to judge
        return False
    if isinstance(obj, dict):
        return obj.get('format') == SNAPSHOT_FORMAT or any(str(k).endswith('conv_in.weight') for k in obj)
    return isinstance(obj, (list, tuple)) and bool(obj) and isinstance(obj[0], dict) and \
        any(str(k).endswith('conv_in.weight') for k in obj[0])


def load_ddpm(path, resolution=None, norm_groups=32):
    """Any DDPM source -> EasyDict(unet, unet_ema (or None), config, diffusion (or None), kind, source).

    ``net`` is added: the network to sample with (EMA weights when there are any)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        out = load_diffusers_folder(path)
    else:
        obj = _torch_load(path)
        if isinstance(obj, dict) and obj.get('format') == SNAPSHOT_FORMAT:
            if obj.get('version') != 1:
                raise UserError(f'{path}: unknown DDPM snapshot version {obj.get("version")}')
            if not isinstance(obj.get('unet'), dict) or not isinstance(obj.get('config'), dict):
                raise UserError(f'{path}: DDPM snapshot without unet/config')
            unet = unet_from_tensors(obj['config'], obj['unet'], path)
            ema = unet_from_tensors(obj['config'], obj['unet_ema'], f'{path} (unet_ema)') if obj.get('unet_ema') else None
            diffusion = dnnlib.EasyDict(obj['diffusion']) if isinstance(obj.get('diffusion'), dict) else None
            out = dnnlib.EasyDict(unet=unet, unet_ema=ema, config=check_config(obj['config'], path), diffusion=diffusion,
                                  kind='snapshot', source=path, progress=obj.get('progress'),
                                  training_set_kwargs=obj.get('training_set_kwargs'))
        else:
            out = load_ddim_checkpoint(path, resolution, norm_groups)
    out.net = out.unet_ema if out.unet_ema is not None else out.unet
    return out


def copy_unet(unet):
    return copy.deepcopy(unet)


def load_generator(path, steps=100, skip_type='uniform', eta=0.0):
    """A DDPM source as ``load_network`` returns generators: EasyDict(G_ema=G, G=G, training_set_kwargs).

    G is a ``diffusion.DDIMGenerator`` over the EMA weights (if any): z = x_T, DDIM ``steps``."""
    from training import diffusion
    data = load_ddpm(path)
    G = diffusion.DDIMGenerator(data.net, data.diffusion, steps=steps, skip_type=skip_type, eta=eta)
    return dnnlib.EasyDict(G_ema=G, G=G, training_set_kwargs=data.get('training_set_kwargs'), ddpm=data)
