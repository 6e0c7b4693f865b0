"""Snapshot I/O: our pickles in NVIDIA's layout, and weights-only exports (safetensors or ``torch.save``).

A weights-only file is tensors plus JSON metadata naming one of our classes and its constructor
arguments; reading it unpickles nothing, and its tensors are checked for dtype, shape and finite
values before they are copied.
"""
import collections
import copy
import json
import pickle

import numpy as np
import torch

import dnnlib
from dnnlib.util import UserError
from torch_utils import persistence
from training.ckpt_common import (NETWORK_KEYS, OUR_MODULES, SNAPSHOT_KEYS, WEIGHTS_FORMAT, construct,
                                  copy_tensors_strict, our_class)


def save_snapshot(path, data):
    """Pickle a snapshot dict atomically in NVIDIA's layout; modules are stored as CPU eval copies.

    Networks must be persistent classes (they embed their source like NVIDIA's, so NVIDIA's tools
    can read the file); every other value must be plain data (dicts, lists, numbers, strings,
    arrays, tensors) so that ``load_network`` reads it back without running code.
    """
    if not isinstance(data, dict):
        raise TypeError('save_snapshot: data must be a dict')
    snapshot = {}
    memo = {}  # one deepcopy memo: a network stored under two keys (G is G_ema) stays one object in the file
    for key, value in data.items():
        if isinstance(value, torch.nn.Module):
            if not persistence.is_persistent(value):
                raise TypeError(f'save_snapshot: {key} ({type(value).__name__}) is not a persistent class')
            value = copy.deepcopy(value, memo).eval().requires_grad_(False).cpu()
        else:
            check_plain_data(value, key)
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
        architecture[key] = describe_our_network(net, key)
        for name, value in net.state_dict().items():
            tensors[f'{key}.{name}'] = value.detach().cpu().clone().contiguous()
    extras = {k: v for k, v in data.items() if k not in SNAPSHOT_KEYS}
    metadata = {
        'format': WEIGHTS_FORMAT,
        'architecture': json.dumps(to_json(architecture, 'architecture')),
        'training_set_kwargs': json.dumps(to_json(data.get('training_set_kwargs'), 'training_set_kwargs')),
        'extras': json.dumps(to_json(extras, 'extras')),
    }
    if str(path).endswith(('.pt', '.pth')):
        with dnnlib.util.atomic_open(path, 'wb') as f:
            torch.save({'format': WEIGHTS_FORMAT, 'metadata': metadata, 'tensors': tensors}, f)
    else:
        import safetensors.torch
        dnnlib.util.atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def describe_our_network(net, key):
    cls = type(net)
    if not persistence.is_persistent(net) or cls.__mro__[1].__module__ not in OUR_MODULES:
        raise UserError(f'{key}: {cls.__name__} is not one of our network classes; cannot export its architecture')
    return dict(module=cls.__mro__[1].__module__, class_name=cls.__name__,
                init_args=list(net.init_args), init_kwargs=dict(net.init_kwargs))


def to_json(value, where):
    """Plain-JSON version of init kwargs / extras (numpy scalars -> numbers, tuples -> lists)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [to_json(v, where) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_json(v, f'{where}.{k}') for k, v in value.items()}
    raise UserError(f'{where}: cannot store a {type(value).__name__} in a weights-only export')


def easydicts(value):
    if isinstance(value, dict):
        return dnnlib.EasyDict({k: easydicts(v) for k, v in value.items()})
    if isinstance(value, list):
        return [easydicts(v) for v in value]
    return value


_SAFETENSORS_ITEMSIZE = {'F64': 8, 'F32': 4, 'F16': 2, 'BF16': 2, 'I64': 8, 'I32': 4, 'I16': 2, 'I8': 1, 'U8': 1,
                         'BOOL': 1}


def _check_safetensors_header(header, data_len, source):
    """Every entry names a known dtype, a shape and a byte range inside the file that fits that shape,
    so a crafted header cannot make the reader allocate more than the file holds."""
    if not isinstance(header, dict):
        raise UserError(f'{source}: corrupt safetensors file (the header is not a JSON object)')
    metadata = header.get('__metadata__') or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise UserError(f'{source}: corrupt safetensors file (__metadata__ must map strings to strings)')
    for name, entry in header.items():
        if name == '__metadata__':
            continue
        ok = isinstance(entry, dict) and entry.get('dtype') in _SAFETENSORS_ITEMSIZE
        shape, offsets = (entry.get('shape'), entry.get('data_offsets')) if isinstance(entry, dict) else (None, None)
        ok = ok and isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)
        if not ok:
            raise UserError(f'{source}: corrupt safetensors file (bad header entry for tensor {name})')
        nbytes = _SAFETENSORS_ITEMSIZE[entry['dtype']]
        for n in shape:
            nbytes *= n
        begin, end = offsets
        if not 0 <= begin <= end <= data_len or end - begin != nbytes:
            raise UserError(f'{source}: corrupt safetensors file (tensor {name} {shape} {entry["dtype"]} needs '
                            f'{nbytes} bytes; the file gives bytes {begin}..{end} of {data_len})')
    return metadata


def read_safetensors(data, source):
    import safetensors.torch
    header_len = int.from_bytes(data[:8], 'little')
    try:
        header = json.loads(bytes(data[8:8 + header_len]))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f'{source}: corrupt safetensors file (header: {e})') from None
    metadata = _check_safetensors_header(header, len(data) - 8 - header_len, source)
    try:
        tensors = safetensors.torch.load(bytes(data))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f'{source}: corrupt safetensors file ({type(e).__name__}: {e})')
    return dict(metadata=metadata, tensors=tensors)


def load_weights_export(export, source):
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
    if not isinstance(architecture, dict) or not isinstance(extras, dict) or not isinstance(training_set_kwargs, (dict, type(None))):
        raise UserError(f'{source}: damaged architecture metadata (architecture and extras must be JSON objects)')
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise UserError(f'{source}: damaged weights-only file (tensors must be a dict of tensors)')
    result = dict(easydicts(extras))
    result['training_set_kwargs'] = easydicts(training_set_kwargs)
    claimed = set()
    for key, desc in architecture.items():
        where = f'{source}: {key}'
        if key not in NETWORK_KEYS:
            raise UserError(f'{where}: unexpected network key')
        if not isinstance(desc, dict) or not isinstance(desc.get('init_args', []), list) or not isinstance(desc.get('init_kwargs', {}), dict):
            raise UserError(f'{where}: damaged architecture metadata (expected module, class_name, init_args, init_kwargs)')
        if desc.get('module') not in OUR_MODULES:
            raise UserError(f'{where}: unknown network module {desc.get("module")!r}')
        cls = our_class(desc['module'], desc.get('class_name'), where)
        net = construct(cls, tuple(desc.get('init_args', ())), easydicts(desc.get('init_kwargs', {})), where)
        prefix = key + '.'
        sub = {n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}
        claimed.update(prefix + n for n in sub)
        copy_tensors_strict(net, sub, where, exact_dtype=True)
        result[key] = net
    stray = sorted(set(tensors) - claimed)
    if stray:
        raise UserError(f'{source}: tensor {stray[0]} belongs to no network in the architecture metadata')
    return result


def check_plain_data(value, where):
    """Extras must unpickle without code: plain containers, numbers, strings, arrays, tensors."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, np.generic, np.ndarray, torch.Tensor,
                                           torch.dtype, torch.Size, torch.device)):
        if isinstance(value, np.ndarray) and value.dtype == object:
            raise TypeError(f'save_snapshot: {where} is an object array')
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            check_plain_data(v, f'{where}[{i}]')
        return
    if isinstance(value, dict) and type(value) in (dict, dnnlib.EasyDict, collections.OrderedDict):
        for k, v in value.items():
            check_plain_data(k, f'{where} key')
            check_plain_data(v, f'{where}.{k}')
        return
    raise TypeError(f'save_snapshot: {where} is a {type(value).__name__}; snapshots hold networks and plain data only')

