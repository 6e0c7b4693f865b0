"""Unpickling network pickles without running code: only names that cannot run code resolve.

A persistent object (NVIDIA's ``torch_utils.persistence``) becomes a ``PersistentMeta`` holding its
class name, constructor arguments and state, never its embedded source; a TensorFlow network
becomes a ``TFNetworkStub``. BUILD (``__setstate__``/attribute updates) is only applied to
instances of the few container types the allow-list produces, never to a class or module, so a
pickle cannot patch one of our classes for the rest of the process.
"""
import collections
import importlib
import io
import pickle

import numpy as np
import torch

import dnnlib
from dnnlib.util import UserError


class PersistentMeta:
    """What a persistent object becomes when its embedded code is not run: its ``meta`` dict."""

    def __init__(self, meta):
        self.meta = meta

    def __repr__(self):
        return f'<persistent {self.meta.get("class_name")!r}>'


def _capture_persistent_meta(meta):
    return PersistentMeta(dict(meta))


class TFNetworkStub:
    """Stand-in for ``dnnlib.tflib.network.Network``: keeps the pickled state, needs no TensorFlow."""

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self):
        return f'<TF network {self.__dict__.get("name")!r}>'


def _load_storage_from_bytes(b):
    # torch.storage._load_from_bytes runs an unrestricted torch.load on the bytes; a storage never
    # needs more than the weights-only unpickler.
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
    'dnnlib.tflib.network.Network': TFNetworkStub,
}


for _core in ('numpy.core', 'numpy._core'):
    for _name in ('multiarray.scalar', 'multiarray._reconstruct', 'numeric._frombuffer'):
        _SAFE_GLOBALS[f'{_core}.{_name}'] = None
_SAFE_GLOBALS.update({'numpy.dtype': np.dtype, 'numpy.ndarray': np.ndarray})
for _dtype in ('float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8', 'uint8', 'bool_'):
    _SAFE_GLOBALS[f'numpy.{_dtype}'] = getattr(np, _dtype)


_PY2_MODULES = {'__builtin__': 'builtins', 'copy_reg': 'copyreg'}


def resolve_safe_global(module, name):
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


def _buildable(inst):
    """May BUILD (``__setstate__`` or an attribute update) be applied to ``inst``?

    Only to instances of the containers the allowed globals create; never to a class, a module or
    a function, whose attributes would outlive the load (e.g. ``EasyDict.__getattr__``).
    """
    if isinstance(inst, type) or callable(inst) and not isinstance(inst, torch.nn.Module):
        return False
    if isinstance(inst, (np.ndarray, np.dtype, TFNetworkStub)):
        return True
    return type(inst) in (collections.OrderedDict, dnnlib.EasyDict, torch.nn.ModuleList, torch.nn.ModuleDict,
                          torch.nn.Sequential)


class _RestrictedUnpickler(pickle._Unpickler):  # the Python implementation, so that BUILD can be checked
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        module = _PY2_MODULES.get(module, module)
        if f'{module}.{name}' in _SAFE_GLOBALS:
            return resolve_safe_global(module, name)
        if module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UserError(f'{self.source}: refusing to load: the pickle references {module}.{name}, which could run '
                        f'code (pass allow_code=True / --allow-code only for files you trust)')

    def load_build(self):
        inst = self.stack[-2] if len(self.stack) >= 2 else None
        if not _buildable(inst):
            what = inst.__name__ if isinstance(inst, type) else type(inst).__name__
            raise UserError(f'{self.source}: refusing to load: the pickle sets the state of {what}, which could change '
                            f'code (pass allow_code=True / --allow-code only for files you trust)')
        super().load_build()
    dispatch[pickle.BUILD[0]] = load_build


class _CodeUnpickler(pickle.Unpickler):
    """Plain unpickling (embedded code runs), except TF networks, which become stubs."""

    def find_class(self, module, name):
        if module == 'dnnlib.tflib.network' and name == 'Network':
            return TFNetworkStub
        return super().find_class(module, name)


def unpickle(data, source, allow_code):
    unpickler = _CodeUnpickler(io.BytesIO(data)) if allow_code else _RestrictedUnpickler(io.BytesIO(data), source)
    try:
        return unpickler.load()
    except UserError:
        raise
    except EOFError:
        raise UserError(f'{source}: truncated file (the pickle ends early)')
    except pickle.UnpicklingError as e:
        if 'truncated' in str(e) or 'exhausted' in str(e):
            raise UserError(f'{source}: truncated file (the pickle ends early)')
        raise UserError(f'{source}: not a readable pickle ({e})')
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, ImportError, RuntimeError,
            MemoryError, UnicodeDecodeError) as e:
        raise UserError(f'{source}: cannot unpickle ({type(e).__name__}: {e}); the file is corrupt or not a network pickle')

