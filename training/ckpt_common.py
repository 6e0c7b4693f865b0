"""What every checkpoint reader shares: the snapshot keys, building our classes, strict tensor copies."""
import importlib
import re
import sys

import numpy as np
import torch

from dnnlib.util import UserError
from torch_utils import persistence

NETWORK_KEYS = ('G', 'D', 'G_ema', 'augment_pipe')
SNAPSHOT_KEYS = NETWORK_KEYS + ('training_set_kwargs',)
WEIGHTS_FORMAT = 'svs-weights-v1'
OUR_MODULES = ('training.networks_stylegan2', 'training.networks_stylegan3', 'training.augment')


def note(verbose, msg):
    if verbose:
        print(msg, file=sys.stderr, flush=True)


def our_class(module_name, class_name, where):
    """One of our persistent network classes, by a module of ``OUR_MODULES`` and a class name from a file."""
    if module_name not in OUR_MODULES:
        raise UserError(f'{where}: unknown network module {module_name!r}')
    module = importlib.import_module(module_name)
    cls = module.__dict__.get(class_name) if isinstance(class_name, str) and not class_name.startswith('_') else None
    if (not isinstance(cls, type) or not issubclass(cls, torch.nn.Module) or not persistence.is_persistent(cls)
            or cls.__mro__[1].__module__ != module_name):
        raise UserError(f'{where}: unknown network class {class_name!r} (not a network class of {module_name})')
    return cls


def construct(cls, init_args, init_kwargs, where):
    try:
        return cls(*init_args, **init_kwargs)
    except TypeError as e:
        raise UserError(f'{where}: {cls.__name__} cannot be built from the stored arguments ({e})')
    except (ValueError, AssertionError, KeyError) as e:
        raise UserError(f'{where}: {cls.__name__}(**{dict(init_kwargs)}) failed ({type(e).__name__}: {e})')


def copy_tensors_strict(net, tensors, where, allow_missing=(), exact_dtype=False):
    """Copy ``tensors`` (name -> tensor/array) into ``net``: every tensor on both sides accounted for.

    ``allow_missing``: regexes of our tensor names that may keep their constructed values. A tensor
    must have our shape, a floating dtype where ours is floating (``exact_dtype``: our very dtype,
    for weights-only files whose header could have been edited), and finite values.
    """
    ours = net.state_dict(keep_vars=True)
    missing = [n for n in ours if n not in tensors and not any(re.fullmatch(p, n) for p in allow_missing)]
    unexpected = [n for n in tensors if n not in ours]
    if unexpected:
        raise UserError(f'{where}: tensor {unexpected[0]} {shape_of(tensors[unexpected[0]])} has no counterpart in our '
                        f'{type(net).__name__}' + (f' (and {len(unexpected) - 1} more)' if len(unexpected) > 1 else ''))
    if missing:
        raise UserError(f'{where}: tensor {missing[0]} {list(ours[missing[0]].shape)} is missing from the checkpoint'
                        + (f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''))
    with torch.no_grad():
        for name, src in tensors.items():
            dst = ours[name]
            if isinstance(src, np.ndarray) and src.dtype != object:
                src = torch.from_numpy(np.array(src, order='C'))
            if not isinstance(src, torch.Tensor):
                raise UserError(f'{where}: tensor {name} is a {type(src).__name__} in the checkpoint, not a tensor')
            if tuple(src.shape) != tuple(dst.shape):
                raise UserError(f'{where}: tensor {name} has shape {list(src.shape)} in the checkpoint, '
                                f'but our {type(net).__name__} expects {list(dst.shape)}')
            if (exact_dtype and src.dtype != dst.dtype) or src.is_floating_point() != dst.is_floating_point():
                raise UserError(f'{where}: tensor {name} is {str(src.dtype)[6:]} in the checkpoint, '
                                f'but our {type(net).__name__} stores {str(dst.dtype)[6:]}')
            if src.is_floating_point() and not bool(torch.isfinite(src).all()):
                raise UserError(f'{where}: tensor {name} holds NaN or infinite values')
            dst.copy_(src.detach().to(dst.dtype))


def shape_of(x):
    return list(getattr(x, 'shape', []))


def networks_stylegan2():
    return importlib.import_module('training.networks_stylegan2')

