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
import collections
import copy
import importlib
import io
import json
import math
import pickle
import re
import sys

import numpy as np
import torch

import dnnlib
from dnnlib.util import UserError
from torch_utils import persistence

NETWORK_KEYS = ('G', 'D', 'G_ema', 'augment_pipe')
SNAPSHOT_KEYS = NETWORK_KEYS + ('training_set_kwargs',)
WEIGHTS_FORMAT = 'svs-weights-v1'
OUR_MODULES = ('training.networks_stylegan2', 'training.networks_stylegan3', 'training.augment')

_TORCH_LEGACY_MAGIC = b'\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'  # pickled magic number of old torch.save


def _note(verbose, msg):
    if verbose:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Public API.

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
        result = _load_weights_export(_read_safetensors(data, source), source)
    elif fmt == 'torch':
        result = _load_torch_checkpoint(data, source, verbose=verbose, w_avg_samples=w_avg_samples)
    elif fmt == 'pickle':
        result = _load_pickle(data, source, allow_code=allow_code, verbose=verbose)
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


def save_snapshot(path, data):
    """Pickle a snapshot dict atomically in NVIDIA's layout; modules are stored as CPU eval copies.

    Networks must be persistent classes (they embed their source like NVIDIA's, so NVIDIA's tools
    can read the file); every other value must be plain data (dicts, lists, numbers, strings,
    arrays, tensors) so that ``load_network`` reads it back without running code.
    """
    if not isinstance(data, dict):
        raise TypeError('save_snapshot: data must be a dict')
    snapshot = {}
    for key, value in data.items():
        if isinstance(value, torch.nn.Module):
            if not persistence.is_persistent(value):
                raise TypeError(f'save_snapshot: {key} ({type(value).__name__}) is not a persistent class')
            value = copy.deepcopy(value).eval().requires_grad_(False).cpu()
        else:
            _check_plain_data(value, key)
        snapshot[key] = value
    for key in ('training_set_kwargs', 'augment_pipe'):
        snapshot.setdefault(key, None)
    with dnnlib.util.atomic_open(path, 'wb') as f:
        pickle.dump(snapshot, f, protocol=4)


def export_weights(data, path):
    """Write the networks of a snapshot dict as plain tensors plus a JSON architecture description.

    ``.pt``/``.pth``: a ``torch.save`` dict (readable with ``torch.load(weights_only=True)``);
    anything else: safetensors. Tensors are named ``<key>.<state_dict name>``; the metadata holds
    the class name and constructor arguments of each network, ``training_set_kwargs`` and the
    extras, all as JSON (a value JSON cannot hold is a ``UserError``).
    """
    tensors, architecture = {}, {}
    for key in NETWORK_KEYS:
        net = data.get(key)
        if net is None:
            continue
        architecture[key] = _describe_our_network(net, key)
        for name, value in net.state_dict().items():
            tensors[f'{key}.{name}'] = value.detach().cpu().clone().contiguous()
    extras = {k: v for k, v in data.items() if k not in SNAPSHOT_KEYS}
    metadata = {
        'format': WEIGHTS_FORMAT,
        'architecture': json.dumps(_to_json(architecture, 'architecture')),
        'training_set_kwargs': json.dumps(_to_json(data.get('training_set_kwargs'), 'training_set_kwargs')),
        'extras': json.dumps(_to_json(extras, 'extras')),
    }
    if str(path).endswith(('.pt', '.pth')):
        with dnnlib.util.atomic_open(path, 'wb') as f:
            torch.save({'format': WEIGHTS_FORMAT, 'metadata': metadata, 'tensors': tensors}, f)
    else:
        import safetensors.torch
        dnnlib.util.atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


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
    new = _construct(type(net), net.init_args, kwargs, type(net).__name__)
    _copy_tensors_strict(new, dict(net.state_dict()), type(net).__name__)
    return new.eval().requires_grad_(False).to(next(iter(net.state_dict().values())).device)


# ---------------------------------------------------------------------------------------------
# Restricted unpickling: only names that cannot run code.

class _PersistentMeta:
    """What a persistent object becomes when its embedded code is not run: its ``meta`` dict."""

    def __init__(self, meta):
        self.meta = meta

    def __repr__(self):
        return f'<persistent {self.meta.get("class_name")!r}>'


def _capture_persistent_meta(meta):
    return _PersistentMeta(dict(meta))


class _TFNetworkStub:
    """Stand-in for ``dnnlib.tflib.network.Network``: keeps the pickled state, needs no TensorFlow."""

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self):
        return f'<TF network {self.__dict__.get("name")!r}>'


def _load_storage_from_bytes(b):
    # torch.storage._load_from_bytes runs torch.load(weights_only=False) on the bytes; a storage
    # never needs more than the weights-only unpickler.
    return torch.load(io.BytesIO(b), weights_only=True, map_location='cpu')


_SAFE_GLOBALS = {
    'collections.OrderedDict': collections.OrderedDict,
    'builtins.set': set, 'builtins.frozenset': frozenset, 'builtins.slice': slice,
    'builtins.complex': complex, 'builtins.object': object,
    'copyreg._reconstructor': None,  # resolved lazily below
    '_codecs.encode': None,
    'dnnlib.util.EasyDict': dnnlib.EasyDict, 'dnnlib.EasyDict': dnnlib.EasyDict,
    'torch._utils._rebuild_tensor_v2': None, 'torch._utils._rebuild_tensor': None,
    'torch._utils._rebuild_parameter': None, 'torch._utils._rebuild_parameter_with_state': None,
    'torch._tensor._rebuild_from_type_v2': None, 'torch._utils._rebuild_from_type_v2': None,
    'torch.Tensor': torch.Tensor, 'torch.nn.parameter.Parameter': torch.nn.Parameter,
    'torch.Size': torch.Size, 'torch.device': torch.device,
    'torch.nn.modules.container.ModuleList': torch.nn.ModuleList,
    'torch.nn.modules.container.ModuleDict': torch.nn.ModuleDict,
    'torch.nn.modules.container.Sequential': torch.nn.Sequential,
    'torch.storage._load_from_bytes': _load_storage_from_bytes,
    'torch_utils.persistence._reconstruct_persistent_obj': _capture_persistent_meta,
    'dnnlib.tflib.network.Network': _TFNetworkStub,
}
for _core in ('numpy.core', 'numpy._core'):
    for _name in ('multiarray.scalar', 'multiarray._reconstruct', 'numeric._frombuffer'):
        _SAFE_GLOBALS[f'{_core}.{_name}'] = None
_SAFE_GLOBALS.update({'numpy.dtype': np.dtype, 'numpy.ndarray': np.ndarray})
for _dtype in ('float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8', 'uint8', 'bool_'):
    _SAFE_GLOBALS[f'numpy.{_dtype}'] = getattr(np, _dtype)

_PY2_MODULES = {'__builtin__': 'builtins', 'copy_reg': 'copyreg'}


def _resolve_safe_global(module, name):
    obj = _SAFE_GLOBALS[f'{module}.{name}']
    if obj is None:
        # numpy 2 renamed numpy.core to numpy._core; official pickles use the old name.
        candidates = [module]
        if module.startswith('numpy.core.'):
            candidates.insert(0, 'numpy._core.' + module[len('numpy.core.'):])
        elif module.startswith('numpy._core.'):
            candidates.append('numpy.core.' + module[len('numpy._core.'):])
        for candidate in candidates:
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise ImportError(f'{module}.{name}')
    return obj


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        module = _PY2_MODULES.get(module, module)
        if f'{module}.{name}' in _SAFE_GLOBALS:
            return _resolve_safe_global(module, name)
        if module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UserError(f'{self.source}: refusing to load: the pickle references {module}.{name}, which could run '
                        f'code (pass allow_code=True / --allow-code only for files you trust)')


class _CodeUnpickler(pickle.Unpickler):
    """Plain unpickling (embedded code runs), except TF networks, which become stubs."""

    def find_class(self, module, name):
        if module == 'dnnlib.tflib.network' and name == 'Network':
            return _TFNetworkStub
        return super().find_class(module, name)


def _unpickle(data, source, allow_code):
    unpickler = _CodeUnpickler(io.BytesIO(data)) if allow_code else _RestrictedUnpickler(io.BytesIO(data), source)
    try:
        return unpickler.load()
    except UserError:
        raise
    except EOFError:
        raise UserError(f'{source}: truncated file (the pickle ends early)')
    except pickle.UnpicklingError as e:
        if 'truncated' in str(e):
            raise UserError(f'{source}: truncated file (the pickle ends early)')
        raise UserError(f'{source}: not a readable pickle ({e})')
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, ImportError, RuntimeError,
            MemoryError, UnicodeDecodeError) as e:
        raise UserError(f'{source}: cannot unpickle ({type(e).__name__}: {e}); the file is corrupt or not a network pickle')


# ---------------------------------------------------------------------------------------------
# Network pickles (NVIDIA stylegan2-ada / stylegan3, ours).

def _load_pickle(data, source, allow_code, verbose):
    obj = _unpickle(data, source, allow_code)

    if isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(x, _TFNetworkStub) for x in obj):
        _note(verbose, f'{source}: TensorFlow StyleGAN2 pickle, converting')
        tf_G, tf_D, tf_Gs = obj
        return dict(G=convert_tf_generator(tf_G, f'{source}: G'), D=convert_tf_discriminator(tf_D, f'{source}: D'),
                    G_ema=convert_tf_generator(tf_Gs, f'{source}: Gs'))
    if isinstance(obj, _TFNetworkStub):
        _note(verbose, f'{source}: TensorFlow StyleGAN2 generator pickle, converting')
        return dict(G_ema=convert_tf_generator(obj, f'{source}: Gs'))

    if not isinstance(obj, dict) or not any(k in obj for k in ('G', 'D', 'G_ema')):
        what = type(obj).__name__ if not isinstance(obj, dict) else f'dict with keys {sorted(map(str, obj))[:8]}'
        raise UserError(f'{source}: not a network pickle (expected a dict with G, D, G_ema; found {what})')
    result = {}
    for key, value in obj.items():
        where = f'{source}: {key}'
        if isinstance(value, _PersistentMeta):
            value = _build_from_meta(value, where)
        elif isinstance(value, torch.nn.Module):
            value = _convert_live_module(value, where)
        elif key in NETWORK_KEYS and value is not None:
            raise UserError(f'{where}: expected a network, found {type(value).__name__}')
        result[key] = value
    if result.get('training_set_kwargs') is not None and not isinstance(result['training_set_kwargs'], dict):
        raise UserError(f'{source}: training_set_kwargs is a {type(result["training_set_kwargs"]).__name__}, expected a dict')
    return result


def _our_module_for(module_src, class_name, where):
    """Which of our modules implements a class that came with this embedded source."""
    def has(pattern):
        return re.search(pattern, module_src, flags=re.MULTILINE) is not None
    if has(r'^class SynthesisInput\b') or has(r'^def filtered_lrelu\b'):
        return 'training.networks_stylegan3'
    if has(r'^class AugmentPipe\b'):
        return 'training.augment'
    if has(r'^class SynthesisBlock\b') or has(r'^class DiscriminatorBlock\b'):
        return 'training.networks_stylegan2'
    raise UserError(f'{where}: unknown network class {class_name!r} (its embedded source is not a StyleGAN2/3 '
                    f'network or augment module)')


def _our_class(module_name, class_name, where):
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise UserError(f'{where}: unknown network class {class_name!r} (not in {module_name})')
    return cls


def _construct(cls, init_args, init_kwargs, where):
    try:
        return cls(*init_args, **init_kwargs)
    except TypeError as e:
        raise UserError(f'{where}: {cls.__name__} cannot be built from the stored arguments ({e})')
    except (ValueError, AssertionError, KeyError) as e:
        raise UserError(f'{where}: {cls.__name__}(**{dict(init_kwargs)}) failed ({type(e).__name__}: {e})')


def _translate_kwargs(module_name, class_name, init_kwargs):
    """Official constructor kwargs -> ours. Our classes take NVIDIA's names in both the sg2ada
    nested and the SG3 flat form, so there is nothing to rename; kept as the one place to do it."""
    return dnnlib.EasyDict(copy.deepcopy(dict(init_kwargs)))


def _build_from_meta(meta_obj, where):
    meta = meta_obj.meta
    if meta.get('type') != 'class' or meta.get('version') != 6:
        raise UserError(f'{where}: unsupported persistence format (type {meta.get("type")!r}, version {meta.get("version")!r})')
    class_name = meta.get('class_name')
    state = meta.get('state') or {}
    module_name = _our_module_for(meta.get('module_src') or '', class_name, where)
    cls = _our_class(module_name, class_name, where)
    kwargs = _translate_kwargs(module_name, class_name, state.get('_init_kwargs', {}))
    net = _construct(cls, tuple(state.get('_init_args', ())), kwargs, where)
    tensors = {}
    _flatten_state(meta_obj, '', tensors, where)
    _copy_tensors_strict(net, tensors, where)
    return net


def _flatten_state(obj, prefix, out, where):
    """Collect the state_dict entries of a captured module tree (persistent metas and containers)."""
    if isinstance(obj, _PersistentMeta):
        state = obj.meta.get('state') or {}
    elif isinstance(obj, torch.nn.Module):
        state = obj.__dict__
    else:
        raise UserError(f'{where}: sub-module {prefix[:-1] or "<root>"} is a {type(obj).__name__}, not a network module')
    skip = set(state.get('_non_persistent_buffers_set', ()) or ())
    for name, value in (state.get('_parameters') or {}).items():
        if value is not None:
            out[prefix + name] = value
    for name, value in (state.get('_buffers') or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in (state.get('_modules') or {}).items():
        if child is not None:
            _flatten_state(child, f'{prefix}{name}.', out, where)


def _copy_tensors_strict(net, tensors, where, allow_missing=()):
    """Copy ``tensors`` (name -> tensor/array) into ``net``: every tensor on both sides accounted for.

    ``allow_missing``: regexes of our tensor names that may keep their constructed values.
    """
    ours = net.state_dict(keep_vars=True)
    missing = [n for n in ours if n not in tensors and not any(re.fullmatch(p, n) for p in allow_missing)]
    unexpected = [n for n in tensors if n not in ours]
    if unexpected:
        raise UserError(f'{where}: tensor {unexpected[0]} {_shape(tensors[unexpected[0]])} has no counterpart in our '
                        f'{type(net).__name__}' + (f' (and {len(unexpected) - 1} more)' if len(unexpected) > 1 else ''))
    if missing:
        raise UserError(f'{where}: tensor {missing[0]} {list(ours[missing[0]].shape)} is missing from the checkpoint'
                        + (f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''))
    with torch.no_grad():
        for name, src in tensors.items():
            dst = ours[name]
            src = torch.from_numpy(np.array(src, order='C')) if isinstance(src, np.ndarray) else src
            if tuple(src.shape) != tuple(dst.shape):
                raise UserError(f'{where}: tensor {name} has shape {list(src.shape)} in the checkpoint, '
                                f'but our {type(net).__name__} expects {list(dst.shape)}')
            dst.copy_(src.detach().to(dst.dtype))


def _shape(x):
    return list(getattr(x, 'shape', []))


def _convert_live_module(module, where):
    """A module made by executing embedded code (allow_code=True) -> our class."""
    if not persistence.is_persistent(module):
        raise UserError(f'{where}: {type(module).__name__} is not a persistent network class')
    cls = type(module)
    orig = cls.__mro__[1]
    if orig.__module__ in OUR_MODULES and getattr(importlib.import_module(orig.__module__), cls.__name__, None) is cls:
        return module  # already our class (its source matched ours, so nothing was executed)
    class_name = cls._orig_class_name
    module_name = _our_module_for(cls._orig_module_src, class_name, where)
    ours = _our_class(module_name, class_name, where)
    kwargs = _translate_kwargs(module_name, class_name, module.init_kwargs)
    net = _construct(ours, tuple(module.init_args), kwargs, where)
    _copy_tensors_strict(net, dict(module.state_dict()), where)
    return net


# ---------------------------------------------------------------------------------------------
# Weights-only exports.

def _describe_our_network(net, key):
    cls = type(net)
    if not persistence.is_persistent(net) or cls.__mro__[1].__module__ not in OUR_MODULES:
        raise UserError(f'{key}: {cls.__name__} is not one of our network classes; cannot export its architecture')
    return dict(module=cls.__mro__[1].__module__, class_name=cls.__name__,
                init_args=list(net.init_args), init_kwargs=dict(net.init_kwargs))


def _to_json(value, where):
    """Plain-JSON version of init kwargs / extras (numpy scalars -> numbers, tuples -> lists)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_to_json(v, where) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _to_json(v, f'{where}.{k}') for k, v in value.items()}
    raise UserError(f'{where}: cannot store a {type(value).__name__} in a weights-only export')


def _easydicts(value):
    if isinstance(value, dict):
        return dnnlib.EasyDict({k: _easydicts(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_easydicts(v) for v in value]
    return value


def _read_safetensors(data, source):
    import safetensors.torch
    try:
        header_len = int.from_bytes(data[:8], 'little')
        header = json.loads(data[8:8 + header_len])
        tensors = safetensors.torch.load(bytes(data))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f'{source}: corrupt safetensors file ({type(e).__name__}: {e})')
    return dict(metadata=header.get('__metadata__') or {}, tensors=tensors)


def _load_weights_export(export, source):
    metadata, tensors = export['metadata'], export['tensors']
    if metadata.get('format') != WEIGHTS_FORMAT:
        raise UserError(f'{source}: not a weights-only network export (format {metadata.get("format")!r}, '
                        f'expected {WEIGHTS_FORMAT!r})')
    try:
        architecture = json.loads(metadata['architecture'])
        training_set_kwargs = json.loads(metadata.get('training_set_kwargs', 'null'))
        extras = json.loads(metadata.get('extras', '{}'))
    except (KeyError, json.JSONDecodeError) as e:
        raise UserError(f'{source}: damaged architecture metadata ({type(e).__name__}: {e})')
    result = dict(_easydicts(extras))
    result['training_set_kwargs'] = _easydicts(training_set_kwargs)
    claimed = set()
    for key, desc in architecture.items():
        where = f'{source}: {key}'
        if key not in NETWORK_KEYS:
            raise UserError(f'{where}: unexpected network key')
        if desc.get('module') not in OUR_MODULES:
            raise UserError(f'{where}: unknown network module {desc.get("module")!r}')
        cls = _our_class(desc['module'], desc.get('class_name'), where)
        net = _construct(cls, tuple(desc.get('init_args', ())), _easydicts(desc.get('init_kwargs', {})), where)
        prefix = key + '.'
        sub = {n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}
        claimed.update(prefix + n for n in sub)
        _copy_tensors_strict(net, sub, where)
        result[key] = net
    stray = sorted(set(tensors) - claimed)
    if stray:
        raise UserError(f'{source}: tensor {stray[0]} belongs to no network in the architecture metadata')
    return result


# ---------------------------------------------------------------------------------------------
# torch.save checkpoints: rosinality stylegan2-pytorch, or our weights-only .pt export.

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
        return _load_weights_export(dict(metadata=ckpt.get('metadata') or {}, tensors=ckpt.get('tensors') or {}), source)
    if isinstance(ckpt, dict) and 'g_ema' in ckpt:
        return convert_rosinality_checkpoint(ckpt, source, verbose=verbose, w_avg_samples=w_avg_samples)
    if isinstance(ckpt, dict) and 'style.1.weight' in ckpt and 'input.input' in ckpt:
        return convert_rosinality_checkpoint({'g_ema': ckpt}, source, verbose=verbose, w_avg_samples=w_avg_samples)
    what = f'keys {sorted(map(str, ckpt))[:8]}' if isinstance(ckpt, dict) else type(ckpt).__name__
    raise UserError(f'{source}: unrecognised torch checkpoint ({what}); expected a rosinality checkpoint '
                    f'(g_ema, g, d) or a weights-only export')


def _blur_kernel_ok(kernel):
    k1 = torch.tensor([1., 3., 3., 1.])
    ref = torch.outer(k1, k1)
    kernel = torch.as_tensor(kernel, dtype=torch.float32)
    return tuple(kernel.shape) == (4, 4) and bool(torch.allclose(kernel / kernel.sum(), ref / ref.sum(), atol=1e-6))


def _dense_channels(widths_by_res):
    """(channel_base, channel_max) whose table min(base // res, max) gives exactly these widths, or None."""
    max_res = max(widths_by_res)
    base, cmax = widths_by_res[max_res] * max_res, max(widths_by_res.values())
    if all(min(base // r, cmax) == c for r, c in widths_by_res.items()):
        return base, cmax
    return None


def rosinality_generator_plan(sd, where='g_ema'):
    """Map a rosinality ``Generator`` state dict to our StyleGAN2 ``Generator``.

    Returns ``(init_kwargs, tensors, accounting)``: constructor kwargs for our Generator, a dict of our
    tensor names -> tensors, and for every key of ``sd`` what it became (our name, or
    ``'resample_filter (rebuilt; kernel checked)'``). Widths are read from the tensors, so pruned
    students load too (``layer_channels`` when they are not a dense channel table).
    """
    sd = {k: v for k, v in sd.items()}
    tensors, accounting = {}, {}

    def take(key, ours, value=None):
        tensors[ours] = sd[key] if value is None else value
        accounting[key] = ours

    def need(key):
        if key not in sd:
            raise UserError(f'{where}: tensor {key} is missing (not a complete rosinality generator)')
        return sd[key]

    style_ids = sorted(int(m.group(1)) for k in sd for m in [re.fullmatch(r'style\.(\d+)\.weight', k)] if m)
    if not style_ids or style_ids != list(range(1, len(style_ids) + 1)):
        raise UserError(f'{where}: mapping layers style.N.weight are missing or not numbered 1..n_mlp')
    n_mlp = len(style_ids)
    style_dim = int(need('style.1.weight').shape[1])
    num_convs = len({m.group(1) for k in sd for m in [re.fullmatch(r'convs\.(\d+)\..*', k)] if m})
    if num_convs % 2:
        raise UserError(f'{where}: odd number of synthesis convs ({num_convs})')
    size = 4 * 2 ** (num_convs // 2)
    img_channels = int(need('to_rgb1.conv.weight').shape[1])

    # Channel groups in forward order: const, b4.conv1, then conv0/conv1 of each block.
    widths = [int(need('input.input').shape[1]), int(need('conv1.conv.weight').shape[1])]
    widths += [int(need(f'convs.{k}.conv.weight').shape[1]) for k in range(num_convs)]
    widths_by_res = {4: widths[1]}
    for k in range(num_convs):
        res = 8 * 2 ** (k // 2)
        if k % 2 == 1 and widths[k + 2] != widths[k + 1]:
            widths_by_res = None
        if widths_by_res is not None:
            widths_by_res[res] = widths[k + 2]
    if widths[0] != widths[1]:
        widths_by_res = None
    dense = _dense_channels(widths_by_res) if widths_by_res else None

    synthesis_kwargs = dnnlib.EasyDict(channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=None,
                                       architecture='skip')
    if dense is not None:
        synthesis_kwargs.channel_base, synthesis_kwargs.channel_max = dense
    else:
        synthesis_kwargs.layer_channels = widths
    init_kwargs = dnnlib.EasyDict(z_dim=style_dim, c_dim=0, w_dim=style_dim, img_resolution=size,
                                  img_channels=img_channels, mapping_kwargs=dnnlib.EasyDict(num_layers=n_mlp),
                                  synthesis_kwargs=synthesis_kwargs)

    def layer(src, dst):
        for key in [k for k in sd if k.startswith(src + '.')]:
            field = key[len(src) + 1:]
            if field == 'conv.weight':
                take(key, f'{dst}.weight', sd[key][0])
            elif field == 'conv.modulation.weight':
                take(key, f'{dst}.affine.weight')
            elif field == 'conv.modulation.bias':
                take(key, f'{dst}.affine.bias')
            elif field == 'noise.weight':
                take(key, f'{dst}.noise_strength', sd[key].reshape([]))
            elif field == 'activate.bias':
                take(key, f'{dst}.bias')
            elif field == 'bias':  # ToRGB
                take(key, f'{dst}.bias', sd[key].reshape(-1))
            elif field in ('conv.blur.kernel', 'upsample.kernel'):
                if not _blur_kernel_ok(sd[key]):
                    raise UserError(f'{where}: tensor {key} is not the [1,3,3,1] resampling kernel our networks use')
                accounting[key] = 'resample_filter (rebuilt; kernel checked)'
            else:
                raise UserError(f'{where}: tensor {key} {_shape(sd[key])} has no counterpart in our Generator')

    for i in style_ids:
        take(f'style.{i}.weight', f'mapping.fc{i - 1}.weight')
        if f'style.{i}.bias' in sd:
            take(f'style.{i}.bias', f'mapping.fc{i - 1}.bias')
    take('input.input', 'synthesis.b4.const', sd['input.input'][0])
    layer('conv1', 'synthesis.b4.conv1')
    layer('to_rgb1', 'synthesis.b4.torgb')
    for k in range(num_convs):
        layer(f'convs.{k}', f'synthesis.b{8 * 2 ** (k // 2)}.conv{k % 2}')
    for j in range(num_convs // 2):
        layer(f'to_rgbs.{j}', f'synthesis.b{8 * 2 ** j}.torgb')
    for key in sd:
        m = re.fullmatch(r'noises\.noise_(\d+)', key)
        if m:
            n = int(m.group(1))
            dst = 'synthesis.b4.conv1' if n == 0 else f'synthesis.b{8 * 2 ** ((n - 1) // 2)}.conv{(n - 1) % 2}'
            take(key, f'{dst}.noise_const', sd[key].reshape(sd[key].shape[-2:]))
    stray = [k for k in sd if k not in accounting]
    if stray:
        raise UserError(f'{where}: tensor {stray[0]} {_shape(sd[stray[0]])} has no counterpart in our Generator')
    return init_kwargs, tensors, accounting


def rosinality_discriminator_plan(sd, where='d'):
    """Map a rosinality ``Discriminator`` state dict to our resnet ``Discriminator`` (see the G plan)."""
    tensors, accounting = {}, {}
    if 'convs.0.0.weight' not in sd:
        raise UserError(f'{where}: tensor convs.0.0.weight is missing (not a rosinality discriminator)')
    num_blocks = len({m.group(1) for k in sd for m in [re.fullmatch(r'convs\.(\d+)\.conv1\..*', k)] if m})
    size = 4 * 2 ** num_blocks
    img_channels = int(sd['convs.0.0.weight'].shape[1])
    widths_by_res = {size: int(sd['convs.0.0.weight'].shape[0])}
    for k in range(1, num_blocks + 1):
        res = size // 2 ** (k - 1)
        key = f'convs.{k}.conv2.1.weight'
        if key not in sd:
            raise UserError(f'{where}: tensor {key} is missing (not a complete rosinality discriminator)')
        widths_by_res[res // 2] = int(sd[key].shape[0])
    dense = _dense_channels(widths_by_res)
    if dense is None:
        raise UserError(f'{where}: discriminator widths {widths_by_res} are not a dense channel table; '
                        f'pruned discriminators are not supported')
    init_kwargs = dnnlib.EasyDict(c_dim=0, img_resolution=size, img_channels=img_channels, architecture='resnet',
                                  channel_base=dense[0], channel_max=dense[1], num_fp16_res=0, conv_clamp=None,
                                  epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=4, mbstd_num_channels=1))
    fixed = {'convs.0.0.weight': f'b{size}.fromrgb.weight', 'convs.0.1.bias': f'b{size}.fromrgb.bias',
             'final_conv.0.weight': 'b4.conv.weight', 'final_conv.1.bias': 'b4.conv.bias',
             'final_linear.0.weight': 'b4.fc.weight', 'final_linear.0.bias': 'b4.fc.bias',
             'final_linear.1.weight': 'b4.out.weight', 'final_linear.1.bias': 'b4.out.bias'}
    fields = {'conv1.0.weight': 'conv0.weight', 'conv1.1.bias': 'conv0.bias', 'conv2.1.weight': 'conv1.weight',
              'conv2.2.bias': 'conv1.bias', 'skip.1.weight': 'skip.weight'}
    for key, value in sd.items():
        m = re.fullmatch(r'convs\.(\d+)\.(.*)', key)
        if key in fixed:
            tensors[fixed[key]] = value
            accounting[key] = fixed[key]
        elif m and int(m.group(1)) >= 1 and m.group(2) in fields:
            ours = f'b{size // 2 ** (int(m.group(1)) - 1)}.{fields[m.group(2)]}'
            tensors[ours] = value
            accounting[key] = ours
        elif m and int(m.group(1)) >= 1 and m.group(2) in ('conv2.0.kernel', 'skip.0.kernel'):
            if not _blur_kernel_ok(value):
                raise UserError(f'{where}: tensor {key} is not the [1,3,3,1] resampling kernel our networks use')
            accounting[key] = 'resample_filter (rebuilt; kernel checked)'
        else:
            raise UserError(f'{where}: tensor {key} {_shape(value)} has no counterpart in our Discriminator')
    return init_kwargs, tensors, accounting


def _networks_stylegan2():
    return importlib.import_module('training.networks_stylegan2')


def convert_rosinality_generator(sd, where='g_ema', latent_avg=None):
    """Our ``Generator`` from a rosinality ``g``/``g_ema`` state dict; returns ``(G, notes)``."""
    init_kwargs, tensors, _accounting = rosinality_generator_plan(sd, where)
    G = _construct(_networks_stylegan2().Generator, (), init_kwargs, where)
    notes = []
    allow = [r'.*\.resample_filter', r'mapping\.w_avg']
    if not any(n.endswith('noise_const') for n in tensors):
        allow.append(r'.*\.noise_const')
        notes.append('no noise buffers in the file: noise_const stays random')
    if latent_avg is not None:
        tensors['mapping.w_avg'] = torch.as_tensor(latent_avg).reshape(-1)
    _copy_tensors_strict(G, tensors, where, allow_missing=allow)
    return G, notes


def convert_rosinality_discriminator(sd, where='d'):
    init_kwargs, tensors, _accounting = rosinality_discriminator_plan(sd, where)
    D = _construct(_networks_stylegan2().Discriminator, (), init_kwargs, where)
    _copy_tensors_strict(D, tensors, where, allow_missing=[r'.*\.resample_filter'])
    return D


@torch.no_grad()
def estimate_w_avg(G, num_samples=10000, seed=0, batch_size=1000):
    """Mean of the mapping output over ``num_samples`` z drawn with a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros([G.w_dim], dtype=torch.float64)
    done = 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        z = torch.randn([n, G.z_dim], generator=gen)
        c = torch.zeros([n, G.c_dim])
        ws = G.mapping(z, c, truncation_psi=1)
        total += ws[:, 0].double().sum(dim=0)
        done += n
    return (total / num_samples).float()


def convert_rosinality_checkpoint(ckpt, source='<checkpoint>', verbose=True, w_avg_samples=10000):
    """A rosinality checkpoint dict -> ``dict(G, D, G_ema, augment_pipe=None, training_set_kwargs=None)``."""
    def state_dict(key):
        sd = ckpt[key]
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise UserError(f'{source}: {key} is not a state dict of tensors')
        return sd

    latent_avg = ckpt.get('latent_avg')
    G_ema, notes = convert_rosinality_generator(state_dict('g_ema'), f'{source}: g_ema', latent_avg)
    if latent_avg is None:
        G_ema.mapping.w_avg.copy_(estimate_w_avg(G_ema, num_samples=w_avg_samples))
        notes.append(f'no latent_avg in the file: w_avg estimated as the mean of {w_avg_samples} mapped z (seed 0)')
    if 'g' in ckpt:
        G, _ = convert_rosinality_generator(state_dict('g'), f'{source}: g', G_ema.mapping.w_avg.clone())
    else:
        G = copy.deepcopy(G_ema)
        notes.append('no g in the file: G is a copy of g_ema')
    D = convert_rosinality_discriminator(state_dict('d'), f'{source}: d') if 'd' in ckpt else None
    if D is None:
        notes.append('no d in the file: D is None')
    _note(verbose, f'{source}: rosinality checkpoint, converted' + ''.join(f'; {n}' for n in notes))
    return dict(G=G, D=D, G_ema=G_ema, augment_pipe=None, training_set_kwargs=None)


# ---------------------------------------------------------------------------------------------
# NVIDIA TensorFlow StyleGAN2 pickles.

def _tf_params(stub):
    params = {}

    def recurse(prefix, net):
        for name, value in getattr(net, 'variables', []):
            params[prefix + name] = np.asarray(value)
        for name, comp in (getattr(net, 'components', None) or {}).items():
            recurse(f'{prefix}{name}/', comp)
    recurse('', stub)
    return params


class _TFKwargs:
    """Reads TF static kwargs, remembering which were understood."""

    def __init__(self, stub, where):
        version = getattr(stub, 'version', None)
        if not isinstance(version, int) or version < 4:
            raise UserError(f'{where}: TensorFlow network pickle version {version!r} is too old (need 4 or newer)')
        self.kwargs, self.known, self.where = dict(getattr(stub, 'static_kwargs', None) or {}), set(), where

    def __call__(self, name, default=None):
        self.known.add(name)
        value = self.kwargs.get(name, default)
        return default if value is None else value

    def check(self, ignored):
        self.known.update(ignored)
        unknown = sorted(set(self.kwargs) - self.known)
        if unknown:
            raise UserError(f'{self.where}: unknown TensorFlow kwarg(s) {unknown}')


def _hwio_to_oihw(w, flip=False):
    w = np.asarray(w)
    if flip:  # TF's transposed conv vs our conv_transpose2d: the kernel is mirrored
        w = w[::-1, ::-1]
    return w.transpose(3, 2, 0, 1)


def _tf_copy(net, rules, params, where, ignore=(r'(.*/)?lod',)):
    """Fill every tensor of ``net`` from TF ``params`` by the first matching (regex, fn) rule."""
    used = set()

    def get(name):
        if name not in params:
            raise UserError(f'{where}: TensorFlow variable {name} is missing')
        used.add(name)
        return params[name]

    tensors = {}
    for name in net.state_dict():
        for pattern, fn in rules:
            m = re.fullmatch(pattern, name)
            if m:
                if fn is not None:
                    tensors[name] = torch.from_numpy(np.array(fn(get, *m.groups()), dtype=np.float32, order='C'))
                break
        else:
            raise UserError(f'{where}: no TensorFlow variable maps to our tensor {name}')
    stray = sorted(n for n in params if n not in used and not any(re.fullmatch(p, n) for p in ignore))
    if stray:
        raise UserError(f'{where}: TensorFlow variable {stray[0]} {list(params[stray[0]].shape)} has no counterpart in our '
                        f'{type(net).__name__}')
    _copy_tensors_strict(net, tensors, where, allow_missing=[r'.*\.resample_filter'])


def convert_tf_generator(stub, where='G'):
    """Our StyleGAN2 ``Generator`` from a TF ``G_main`` network stub."""
    kw = _TFKwargs(stub, where)
    mapping_kwargs = dnnlib.EasyDict(num_layers=kw('mapping_layers', 8))
    synthesis_kwargs = dnnlib.EasyDict(channel_base=kw('fmap_base', 16384) * 2, channel_max=kw('fmap_max', 512),
                                       num_fp16_res=kw('num_fp16_res', 0), conv_clamp=kw('conv_clamp', None),
                                       architecture=kw('architecture', 'skip'))
    # The rest only when it differs from our defaults, so init_kwargs stay short.
    for tf_name, ours, default, target in [('label_fmaps', 'embed_features', None, mapping_kwargs),
                                           ('mapping_fmaps', 'layer_features', None, mapping_kwargs),
                                           ('mapping_nonlinearity', 'activation', 'lrelu', mapping_kwargs),
                                           ('mapping_lrmul', 'lr_multiplier', 0.01, mapping_kwargs),
                                           ('resample_kernel', 'resample_filter', [1, 3, 3, 1], synthesis_kwargs),
                                           ('use_noise', 'use_noise', True, synthesis_kwargs),
                                           ('nonlinearity', 'activation', 'lrelu', synthesis_kwargs)]:
        value = kw(tf_name, default)
        if value != default and not (isinstance(value, (list, tuple)) and list(value) == default):
            target[ours] = list(value) if isinstance(value, tuple) else value
    # TF "no tracking" (None) becomes beta 1: w_avg kept, never updated.
    kw.known.update(['w_avg_beta', 'dlatent_avg_beta'])
    w_avg_beta = kw.kwargs.get('w_avg_beta', kw.kwargs.get('dlatent_avg_beta', 0.995))
    w_avg_beta = 1 if w_avg_beta is None else w_avg_beta
    if w_avg_beta != 0.995:
        mapping_kwargs.w_avg_beta = w_avg_beta
    init_kwargs = dnnlib.EasyDict(z_dim=kw('latent_size', 512), c_dim=kw('label_size', 0), w_dim=kw('dlatent_size', 512),
                                  img_resolution=kw('resolution', 1024), img_channels=kw('num_channels', 3),
                                  mapping_kwargs=mapping_kwargs, synthesis_kwargs=synthesis_kwargs)
    kw.check(['truncation_psi', 'truncation_cutoff', 'style_mixing_prob', 'structure', 'conditioning', 'fused_modconv',
              'dtype', 'is_training', 'is_validation', 'return_dlatents', 'randomize_noise'])

    params = _tf_params(stub)
    for name in list(params):
        m = re.fullmatch(r'(?:synthesis/)?ToRGB_lod(\d+)/(.*)', name)
        if m:  # old progressive-growing layout: one ToRGB per resolution, 'orig' architecture
            r = init_kwargs.img_resolution // 2 ** int(m.group(1))
            params[f'synthesis/{r}x{r}/ToRGB/{m.group(2)}'] = params.pop(name)
            synthesis_kwargs.architecture = 'orig'

    G = _construct(_networks_stylegan2().Generator, (), init_kwargs, where)

    def noise(get, r, offset):
        return get(f'synthesis/noise{int(math.log2(int(r))) * 2 - offset}')[0, 0]
    s = 'synthesis/{0}x{0}/{1}/'
    rules = [
        (r'.*\.resample_filter', None),
        (r'mapping\.w_avg', lambda get: get('dlatent_avg')),
        (r'mapping\.embed\.weight', lambda get: get('mapping/LabelEmbed/weight').T),
        (r'mapping\.embed\.bias', lambda get: get('mapping/LabelEmbed/bias')),
        (r'mapping\.fc(\d+)\.weight', lambda get, i: get(f'mapping/Dense{i}/weight').T),
        (r'mapping\.fc(\d+)\.bias', lambda get, i: get(f'mapping/Dense{i}/bias')),
        (r'synthesis\.b4\.const', lambda get: get('synthesis/4x4/Const/const')[0]),
        (r'synthesis\.b4\.conv1\.noise_const', lambda get: get('synthesis/noise0')[0, 0]),
        (r'synthesis\.b4\.conv1\.(.*)', lambda get, f: _tf_layer(get, s.format(4, 'Conv'), f)),
        (r'synthesis\.b(\d+)\.conv0\.noise_const', lambda get, r: noise(get, r, 5)),
        (r'synthesis\.b(\d+)\.conv1\.noise_const', lambda get, r: noise(get, r, 4)),
        (r'synthesis\.b(\d+)\.conv0\.(.*)', lambda get, r, f: _tf_layer(get, s.format(r, 'Conv0_up'), f, flip=True)),
        (r'synthesis\.b(\d+)\.conv1\.(.*)', lambda get, r, f: _tf_layer(get, s.format(r, 'Conv1'), f)),
        (r'synthesis\.b(\d+)\.torgb\.(.*)', lambda get, r, f: _tf_layer(get, s.format(r, 'ToRGB'), f)),
        (r'synthesis\.b(\d+)\.skip\.weight', lambda get, r: _hwio_to_oihw(get(s.format(r, 'Skip') + 'weight'), flip=True)),
    ]
    _tf_copy(G, rules, params, where)
    return G


def _tf_layer(get, prefix, field, flip=False):
    """One modulated TF layer (Conv, Conv0_up, Conv1, ToRGB) -> our SynthesisLayer/ToRGBLayer field."""
    if field == 'weight':
        return _hwio_to_oihw(get(prefix + 'weight'), flip=flip)
    if field == 'bias':
        return get(prefix + 'bias')
    if field == 'noise_strength':
        return get(prefix + 'noise_strength')
    if field == 'affine.weight':
        return get(prefix + 'mod_weight').T
    if field == 'affine.bias':
        return get(prefix + 'mod_bias') + 1  # TF adds the 1 at run time; our affine bias_init=1 stores it
    raise UserError(f'{prefix}: no TensorFlow variable maps to our field {field}')


def convert_tf_discriminator(stub, where='D'):
    """Our StyleGAN2 ``Discriminator`` from a TF ``D_stylegan2`` network stub."""
    kw = _TFKwargs(stub, where)
    init_kwargs = dnnlib.EasyDict(
        c_dim=kw('label_size', 0), img_resolution=kw('resolution', 1024), img_channels=kw('num_channels', 3),
        architecture=kw('architecture', 'resnet'), channel_base=kw('fmap_base', 16384) * 2,
        channel_max=kw('fmap_max', 512), num_fp16_res=kw('num_fp16_res', 0), conv_clamp=kw('conv_clamp', None),
        # D_stylegan2's own default group size is 4 (NVIDIA's legacy.py falls back to the whole batch).
        epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=kw('mbstd_group_size', 4),
                                        mbstd_num_channels=kw('mbstd_num_features', 1)))
    cmap_dim = kw('mapping_fmaps', None)
    if cmap_dim is not None:
        init_kwargs.cmap_dim = cmap_dim
    mapping_kwargs = dnnlib.EasyDict(num_layers=kw('mapping_layers', 0), lr_multiplier=kw('mapping_lrmul', 0.1))
    if cmap_dim is not None:
        mapping_kwargs.embed_features = mapping_kwargs.layer_features = cmap_dim
    if init_kwargs.c_dim:
        init_kwargs.mapping_kwargs = mapping_kwargs
    block_kwargs = dnnlib.EasyDict()
    for tf_name, ours, default in [('nonlinearity', 'activation', 'lrelu'), ('resample_kernel', 'resample_filter', [1, 3, 3, 1]),
                                   ('freeze_layers', 'freeze_layers', 0)]:
        value = kw(tf_name, default)
        if value != default and not (isinstance(value, (list, tuple)) and list(value) == default):
            block_kwargs[ours] = list(value) if isinstance(value, tuple) else value
    if block_kwargs:
        init_kwargs.block_kwargs = block_kwargs
    kw.check(['structure', 'conditioning', 'dtype', 'is_training', 'is_validation'])

    params = _tf_params(stub)
    for name in list(params):
        m = re.fullmatch(r'FromRGB_lod(\d+)/(.*)', name)
        if m:
            r = init_kwargs.img_resolution // 2 ** int(m.group(1))
            params[f'{r}x{r}/FromRGB/{m.group(2)}'] = params.pop(name)
            init_kwargs.architecture = 'orig'

    D = _construct(_networks_stylegan2().Discriminator, (), init_kwargs, where)
    rules = [
        (r'b(\d+)\.fromrgb\.weight', lambda get, r: _hwio_to_oihw(get(f'{r}x{r}/FromRGB/weight'))),
        (r'b(\d+)\.fromrgb\.bias', lambda get, r: get(f'{r}x{r}/FromRGB/bias')),
        (r'b(\d+)\.conv0\.weight', lambda get, r: _hwio_to_oihw(get(f'{r}x{r}/Conv0/weight'))),
        (r'b(\d+)\.conv0\.bias', lambda get, r: get(f'{r}x{r}/Conv0/bias')),
        # Down-sampling convs are plain correlations in both codebases: no flip.
        (r'b(\d+)\.conv1\.weight', lambda get, r: _hwio_to_oihw(get(f'{r}x{r}/Conv1_down/weight'))),
        (r'b(\d+)\.conv1\.bias', lambda get, r: get(f'{r}x{r}/Conv1_down/bias')),
        (r'b(\d+)\.skip\.weight', lambda get, r: _hwio_to_oihw(get(f'{r}x{r}/Skip/weight'))),
        (r'mapping\.embed\.weight', lambda get: get('LabelEmbed/weight').T),
        (r'mapping\.embed\.bias', lambda get: get('LabelEmbed/bias')),
        (r'mapping\.fc(\d+)\.weight', lambda get, i: get(f'Mapping{i}/weight').T),
        (r'mapping\.fc(\d+)\.bias', lambda get, i: get(f'Mapping{i}/bias')),
        (r'b4\.conv\.weight', lambda get: _hwio_to_oihw(get('4x4/Conv/weight'))),
        (r'b4\.conv\.bias', lambda get: get('4x4/Conv/bias')),
        (r'b4\.fc\.weight', lambda get: get('4x4/Dense0/weight').T),
        (r'b4\.fc\.bias', lambda get: get('4x4/Dense0/bias')),
        (r'b4\.out\.weight', lambda get: get('Output/weight').T),
        (r'b4\.out\.bias', lambda get: get('Output/bias')),
        (r'.*\.resample_filter', None),
    ]
    _tf_copy(D, rules, params, where)
    return D


# ---------------------------------------------------------------------------------------------
# Snapshot content checks.

def _check_plain_data(value, where):
    """Extras must unpickle without code: plain containers, numbers, strings, arrays, tensors."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, np.generic, np.ndarray, torch.Tensor,
                                           torch.dtype, torch.Size, torch.device)):
        if isinstance(value, np.ndarray) and value.dtype == object:
            raise TypeError(f'save_snapshot: {where} is an object array')
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            _check_plain_data(v, f'{where}[{i}]')
        return
    if isinstance(value, dict) and type(value) in (dict, dnnlib.EasyDict, collections.OrderedDict):
        for k, v in value.items():
            _check_plain_data(k, f'{where} key')
            _check_plain_data(v, f'{where}.{k}')
        return
    raise TypeError(f'save_snapshot: {where} is a {type(value).__name__}; snapshots hold networks and plain data only')
