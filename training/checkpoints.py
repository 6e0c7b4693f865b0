"""Load and save networks: one loader for every checkpoint a researcher is likely to hold.

``load_network(path_or_url)`` sniffs the file's contents (never its name) and returns our classes:

- network pickles of NVIDIA stylegan2-ada-pytorch / stylegan3 and our own snapshots (persistence v6).
  By default they are read with a restricted unpickler that never executes the source code embedded
  in them: each persistent object is rebuilt as OUR class from its class name and constructor
  arguments, and its tensors are copied by name, strictly. ``allow_code=True`` runs the embedded
  code instead (trusted files only) and converts the result the same way.
- NVIDIA TensorFlow StyleGAN2 pickles (a tuple ``(G, D, Gs)`` of ``dnnlib.tflib`` networks), without
  TensorFlow.
- rosinality stylegan2-pytorch checkpoints (``torch.save`` dicts with ``g_ema``, optionally ``g``,
  ``d``, ``latent_avg``), pruned students included (widths read from the tensors).
- weights-only exports written by ``export_weights`` (safetensors, or a ``torch.save`` dict read with
  ``weights_only=True``): nothing is unpickled.

``save_snapshot(path, data)`` writes a pickle in NVIDIA's layout (keys ``G``, ``D``, ``G_ema``,
``augment_pipe``, ``training_set_kwargs`` plus extras), so NVIDIA's tools read ours.
"""
import argparse
import copy
import io
import pickle

import torch

import dnnlib
from dnnlib.util import UserError
from training.ckpt_common import (NETWORK_KEYS, OUR_MODULES, SNAPSHOT_KEYS, WEIGHTS_FORMAT, construct,  # noqa: F401
                                  copy_tensors_strict)
from training.ckpt_nvidia import convert_pickle
from training.ckpt_rosinality import (convert_rosinality_checkpoint, convert_rosinality_discriminator,  # noqa: F401
                                      convert_rosinality_generator, estimate_w_avg, rosinality_discriminator_plan,
                                      rosinality_generator_plan)
from training.ckpt_snapshot import export_weights, load_weights_export, read_safetensors, save_snapshot  # noqa: F401
from training.ckpt_tf import convert_tf_discriminator, convert_tf_generator  # noqa: F401
from training.ckpt_unpickler import resolve_safe_global as _resolve_safe_global  # noqa: F401
from training.ckpt_unpickler import unpickle as _unpickle

_TORCH_LEGACY_MAGIC = b'\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'  # pickled magic number of old torch.save


def load_network(path_or_url, allow_code=False, device='cpu', cache_dir=None, verbose=True, w_avg_samples=10000):
    """Load any supported checkpoint; return ``EasyDict(G, D, G_ema, augment_pipe, training_set_kwargs, **extras)``.

    Networks are our classes, in eval mode with ``requires_grad=False``, on ``device``. Missing
    networks (e.g. no discriminator in a rosinality file) are ``None``. ``w_avg_samples``: how many
    z to average when a rosinality file carries no ``latent_avg``.
    """
    source = str(path_or_url)
    with dnnlib.util.open_url(path_or_url, cache_dir=cache_dir, verbose=verbose) as f:
        try:
            data = f.read()
        except OSError as e:
            raise UserError(f'{source}: cannot read ({e})')
    return load_network_bytes(data, source, allow_code=allow_code, device=device, verbose=verbose,
                              w_avg_samples=w_avg_samples)


def load_network_bytes(data, source='<bytes>', allow_code=False, device='cpu', verbose=True, w_avg_samples=10000):
    """``load_network`` for a file already in memory; ``source`` names it in messages."""
    if len(data) == 0:
        raise UserError(f'{source}: empty file')
    fmt = sniff_format(data)
    if fmt == 'safetensors':
        result = load_weights_export(read_safetensors(data, source), source)
    elif fmt == 'torch':
        result = _load_torch_checkpoint(data, source, verbose=verbose, w_avg_samples=w_avg_samples)
    elif fmt == 'pickle':
        result = convert_pickle(_unpickle(data, source, allow_code), source, verbose=verbose)
    else:
        raise UserError(f'{source}: not a network checkpoint (unrecognised file format)')

    out = dnnlib.EasyDict(result)
    for key in SNAPSHOT_KEYS:
        out.setdefault(key, None)
    for key in NETWORK_KEYS:
        if isinstance(out[key], torch.nn.Module):
            out[key] = out[key].eval().requires_grad_(False).to(device)
    if out.G_ema is None:
        raise UserError(f'{source}: the checkpoint holds no generator')
    if out.training_set_kwargs is not None:  # a tool may construct it: it must name one of our dataset classes
        dnnlib.util.check_dataset_kwargs(out.training_set_kwargs, f'{source}: training_set_kwargs')
    return out


def sniff_format(data):
    """'safetensors', 'torch' (torch.save zip or legacy), 'pickle', or None."""
    if len(data) >= 10 and data[8:9] == b'{' and int.from_bytes(data[:8], 'little') <= len(data) - 8:
        return 'safetensors'
    if data[:4] == b'PK\x03\x04':
        return 'torch'
    if data[:1] == b'\x80' and data[2:2 + len(_TORCH_LEGACY_MAGIC)] == _TORCH_LEGACY_MAGIC:
        return 'torch'
    if data[:1] == b'\x80' or data[:1] in (b'(', b'}', b']', b'c'):
        return 'pickle'
    return None


def rebuild_network(net, **kwarg_changes):
    """A new instance of ``net``'s class with some constructor kwargs changed and all tensors copied.

    Keys are looked up at the top level first, then inside ``synthesis_kwargs`` (sg2ada nested form),
    so ``rebuild_network(G, num_fp16_res=4, conv_clamp=256)`` works for both kwarg forms.
    """
    kwargs = copy.deepcopy(dict(net.init_kwargs))
    for key, value in kwarg_changes.items():
        if key not in kwargs and isinstance(kwargs.get('synthesis_kwargs'), dict):
            kwargs['synthesis_kwargs'] = dnnlib.EasyDict(kwargs['synthesis_kwargs'])
            kwargs['synthesis_kwargs'][key] = value
        else:
            kwargs[key] = value
    new = construct(type(net), net.init_args, kwargs, type(net).__name__)
    copy_tensors_strict(new, dict(net.state_dict()), type(net).__name__)
    return new.eval().requires_grad_(False).to(next(iter(net.state_dict().values())).device)


def _load_torch_checkpoint(data, source, verbose, w_avg_samples):
    try:
        # rosinality's train.py stores its argparse.Namespace; it holds options only and is harmless.
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        raise UserError(f'{source}: refusing to load a torch checkpoint that needs code to unpickle '
                        f'({first[0] if first else e})')
    except (RuntimeError, EOFError, ValueError) as e:
        raise UserError(f'{source}: cannot read the torch checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}); '
                        f'truncated or corrupt')
    if isinstance(ckpt, dict) and ckpt.get('format') == WEIGHTS_FORMAT:
        return load_weights_export(dict(metadata=ckpt.get('metadata') or {}, tensors=ckpt.get('tensors') or {}), source)
    if isinstance(ckpt, dict) and 'g_ema' in ckpt:
        return convert_rosinality_checkpoint(ckpt, source, verbose=verbose, w_avg_samples=w_avg_samples)
    if isinstance(ckpt, dict) and 'style.1.weight' in ckpt and 'input.input' in ckpt:
        return convert_rosinality_checkpoint({'g_ema': ckpt}, source, verbose=verbose, w_avg_samples=w_avg_samples)
    what = f'keys {sorted(map(str, ckpt))[:8]}' if isinstance(ckpt, dict) else type(ckpt).__name__
    raise UserError(f'{source}: unrecognised torch checkpoint ({what}); expected a rosinality checkpoint '
                    f'(g_ema, g, d) or a weights-only export')

