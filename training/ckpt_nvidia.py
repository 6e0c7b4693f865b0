"""NVIDIA stylegan2-ada-pytorch / stylegan3 network pickles (and ours) -> our classes."""
import ast
import copy
import functools
import importlib
import re

import torch

import dnnlib
from dnnlib.util import UserError
from torch_utils import persistence
from training.ckpt_common import NETWORK_KEYS, OUR_MODULES, construct, copy_tensors_strict, note, our_class
from training.ckpt_tf import convert_tf_discriminator, convert_tf_generator
from training.ckpt_unpickler import PersistentMeta, TFNetworkStub


def convert_pickle(obj, source, verbose=True):
    """An unpickled network pickle (see ``ckpt_unpickler.unpickle``) -> dict of our networks and plain data."""

    if isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(x, TFNetworkStub) for x in obj):
        note(verbose, f'{source}: TensorFlow StyleGAN2 pickle, converting')
        tf_G, tf_D, tf_Gs = obj
        return dict(G=convert_tf_generator(tf_G, f'{source}: G'), D=convert_tf_discriminator(tf_D, f'{source}: D'),
                    G_ema=convert_tf_generator(tf_Gs, f'{source}: Gs'))
    if isinstance(obj, TFNetworkStub):
        note(verbose, f'{source}: TensorFlow StyleGAN2 generator pickle, converting')
        return dict(G_ema=convert_tf_generator(obj, f'{source}: Gs'))

    if not isinstance(obj, dict) or not any(k in obj for k in ('G', 'D', 'G_ema')):
        what = type(obj).__name__ if not isinstance(obj, dict) else f'dict with keys {sorted(map(str, obj))[:8]}'
        raise UserError(f'{source}: not a network pickle (expected a dict with G, D, G_ema; found {what})')
    result = {}
    for key, value in obj.items():
        where = f'{source}: {key}'
        if isinstance(value, PersistentMeta):
            value = build_from_meta(value, where)
        elif isinstance(value, torch.nn.Module):
            value = convert_live_module(value, where)
        elif key in NETWORK_KEYS and value is not None:
            raise UserError(f'{where}: expected a network, found {type(value).__name__}')
        result[key] = value
    if result.get('training_set_kwargs') is not None and not isinstance(result['training_set_kwargs'], dict):
        raise UserError(f'{source}: training_set_kwargs is a {type(result["training_set_kwargs"]).__name__}, expected a dict')
    return result


def our_module_for(module_src, class_name, where):
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


# Constructor arguments whose defaults differ between source trees: stylegan2-ada-pytorch's classes
# default to conv_clamp=None, num_fp16_res=0, w_avg_beta=0.995; stylegan3's to 256, 4 and 0.998;
# ours to 256, 4, 0.995. A pickle stores only the arguments its author passed, so the rest must take
# the defaults of the tree it came from. Per class: (where the arguments sit, the classes whose
# signatures declare them, first declaring class wins, the arguments).
_TREE_DEFAULTED = {
    'Generator': [('mapping_kwargs', ('MappingNetwork',), ('w_avg_beta',)),
                  ('synthesis', ('SynthesisNetwork', 'SynthesisBlock', 'SynthesisLayer'), ('num_fp16_res', 'conv_clamp'))],
    'Discriminator': [(None, ('Discriminator',), ('num_fp16_res', 'conv_clamp'))],
}


@functools.lru_cache(maxsize=16)
def source_defaults(module_src):
    """``{class name: {argument: default}}`` of the constructors in a module's source, read with
    ``ast`` (nothing is executed); only literal defaults are kept."""
    try:
        tree = ast.parse(module_src)
    except (SyntaxError, ValueError):
        return {}
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for fn in node.body:
            if isinstance(fn, ast.FunctionDef) and fn.name == '__init__':
                args = fn.args.posonlyargs + fn.args.args
                pairs = list(zip(args[len(args) - len(fn.args.defaults):], fn.args.defaults))
                pairs += [(a, d) for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d is not None]
                defaults = {}
                for arg, default in pairs:
                    try:
                        defaults[arg.arg] = ast.literal_eval(default)
                    except (ValueError, SyntaxError, TypeError):
                        pass
                defaults['*args'] = [a.arg for a in args]
                out[node.name] = defaults
    return out


def _tree_default(defaults, classes, arg):
    for name in classes:
        if arg in defaults.get(name, {}):
            return True, defaults[name][arg]
    return False, None


def translate_kwargs(cls, class_name, init_kwargs, module_src):
    """Official constructor kwargs -> ours. Our classes take NVIDIA's names in both the sg2ada
    nested and the SG3 flat form; what needs doing is giving the arguments a pickle left out the
    defaults of its own source tree (``_TREE_DEFAULTED``) where they differ from ours."""
    kwargs = dnnlib.EasyDict(copy.deepcopy(dict(init_kwargs)))
    theirs, ours = source_defaults(module_src), source_defaults(cls._orig_module_src)
    for group, classes, args in _TREE_DEFAULTED.get(class_name, []):
        for arg in args:
            found, value = _tree_default(theirs, classes, arg)
            found_ours, our_value = _tree_default(ours, classes, arg)
            if not found or not found_ours or value == our_value:
                continue
            if group == 'synthesis':
                nested = 'synthesis_kwargs' in kwargs or 'synthesis_kwargs' in theirs.get(class_name, {}).get('*args', [])
                group_name = 'synthesis_kwargs' if nested else None
            else:
                group_name = group
            target = kwargs if group_name is None else dnnlib.EasyDict(kwargs.get(group_name) or {})
            if arg in target or (group_name is not None and arg in kwargs):
                continue
            target[arg] = value
            if group_name is not None:
                kwargs[group_name] = target
    return kwargs


def build_from_meta(meta_obj, where):
    meta = meta_obj.meta
    if meta.get('type') != 'class' or meta.get('version') != 6:
        raise UserError(f'{where}: unsupported persistence format (type {meta.get("type")!r}, version {meta.get("version")!r})')
    class_name = meta.get('class_name')
    state = meta.get('state') or {}
    if not isinstance(class_name, str) or not isinstance(state, dict) or not isinstance(meta.get('module_src') or '', str):
        raise UserError(f'{where}: damaged persistent object (class_name, state or module_src of the wrong type)')
    if not isinstance(state.get('_init_kwargs', {}), dict) or not isinstance(state.get('_init_args', ()), (list, tuple)):
        raise UserError(f'{where}: damaged persistent object (constructor arguments of the wrong type)')
    module_name = our_module_for(meta.get('module_src') or '', class_name, where)
    cls = our_class(module_name, class_name, where)
    kwargs = translate_kwargs(cls, class_name, state.get('_init_kwargs', {}), meta.get('module_src') or '')
    net = construct(cls, tuple(state.get('_init_args', ())), kwargs, where)
    tensors = {}
    flatten_state(meta_obj, '', tensors, where)
    copy_tensors_strict(net, tensors, where)
    return net


def flatten_state(obj, prefix, out, where):
    """Collect the state_dict entries of a captured module tree (persistent metas and containers)."""
    if isinstance(obj, PersistentMeta):
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
            flatten_state(child, f'{prefix}{name}.', out, where)


def convert_live_module(module, where):
    """A module made by executing embedded code (allow_code=True) -> our class."""
    if not persistence.is_persistent(module):
        raise UserError(f'{where}: {type(module).__name__} is not a persistent network class')
    cls = type(module)
    orig = cls.__mro__[1]
    if orig.__module__ in OUR_MODULES and getattr(importlib.import_module(orig.__module__), cls.__name__, None) is cls:
        return module  # already our class (its source matched ours, so nothing was executed)
    class_name = cls._orig_class_name
    module_name = our_module_for(cls._orig_module_src, class_name, where)
    ours = our_class(module_name, class_name, where)
    kwargs = translate_kwargs(ours, class_name, module.init_kwargs, cls._orig_module_src)
    net = construct(ours, tuple(module.init_args), kwargs, where)
    copy_tensors_strict(net, dict(module.state_dict()), where)
    return net

