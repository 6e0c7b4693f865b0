"""Small tensor and module helpers (name-compatible with NVIDIA's ``torch_utils.misc``)."""
import contextlib
import re
import warnings

import numpy as np
import torch

import dnnlib

_constant_cache = dict()


def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """A cached constant tensor (avoids re-creating small tensors every call)."""
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if device is None:
        device = torch.device('cpu')
    if memory_format is None:
        memory_format = torch.contiguous_format
    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key, None)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor, _ = torch.broadcast_tensors(tensor, torch.empty(shape))
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor


def nan_to_num(input, nan=0.0, posinf=None, neginf=None, *, out=None):
    return torch.nan_to_num(input, nan=nan, posinf=posinf, neginf=neginf, out=out)


@contextlib.contextmanager
def suppress_tracer_warnings():
    """Silence TracerWarnings, so shape asserts stay quiet under tracing."""
    flt = ('ignore', None, torch.jit.TracerWarning, None, 0)
    warnings.filters.insert(0, flt)
    try:
        yield
    finally:
        if flt in warnings.filters:
            warnings.filters.remove(flt)


def assert_shape(tensor, ref_shape):
    """Check ``tensor.shape`` against ``ref_shape``; ``None`` entries match any size."""
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f'Wrong number of dimensions: got {tensor.ndim}, expected {len(ref_shape)}')
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is None:
            pass
        elif isinstance(ref_size, torch.Tensor):
            with suppress_tracer_warnings():
                symbolic_assert(torch.equal(torch.as_tensor(size), ref_size), f'Wrong size for dimension {idx}')
        elif isinstance(size, torch.Tensor):
            with suppress_tracer_warnings():
                symbolic_assert(torch.equal(size, torch.as_tensor(ref_size)), f'Wrong size for dimension {idx}: expected {ref_size}')
        elif size != ref_size:
            raise AssertionError(f'Wrong size for dimension {idx}: got {size}, expected {ref_size}')


def symbolic_assert(cond, msg):
    if not cond:
        raise AssertionError(msg)


def profiled_function(fn):
    """Label a function in the PyTorch profiler with its own name."""
    def decorator(*args, **kwargs):
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)
    decorator.__name__ = fn.__name__
    decorator.__doc__ = fn.__doc__
    return decorator


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless, windowed-shuffle sampler over a dataset shard (one per rank).

    ``start_idx`` (a count of samples drawn by all ranks) makes a resumed run continue the exact
    sequence: the shuffle is replayed up to that point.
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5):
        super().__init__()
        assert len(dataset) > 0
        assert num_replicas > 0 and 0 <= rank < num_replicas
        assert 0 <= window_size <= 1
        self.dataset_len = len(dataset)
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size
        self.start_idx = 0

    def __iter__(self):
        order = np.arange(self.dataset_len)
        rnd = None
        window = 0
        if self.shuffle:
            rnd = np.random.RandomState(self.seed)
            rnd.shuffle(order)
            window = int(np.rint(order.size * self.window_size))
        # Replay the random swaps up to the start index so that resuming is exact.
        idx = 0
        while True:
            i = idx % order.size
            if idx % self.num_replicas == self.rank and idx >= self.start_idx:
                yield order[i]
            if window >= 2:
                j = (i - rnd.randint(window)) % order.size
                order[i], order[j] = order[j], order[i]
            idx += 1


def params_and_buffers(module):
    assert isinstance(module, torch.nn.Module)
    return list(module.parameters()) + list(module.buffers())


def named_params_and_buffers(module):
    assert isinstance(module, torch.nn.Module)
    return list(module.named_parameters()) + list(module.named_buffers())


@torch.no_grad()
def copy_params_and_buffers(src_module, dst_module, require_all=False):
    """Copy tensors by name; returns the names of ``dst_module`` that got no value."""
    assert isinstance(src_module, torch.nn.Module)
    assert isinstance(dst_module, torch.nn.Module)
    src_tensors = dict(named_params_and_buffers(src_module))
    missing = []
    for name, tensor in named_params_and_buffers(dst_module):
        if name in src_tensors and src_tensors[name].shape == tensor.shape:
            tensor.copy_(src_tensors[name].detach()).requires_grad_(tensor.requires_grad)
        else:
            if require_all:
                raise KeyError(f'{name}: missing or shape mismatch in source module')
            missing.append(name)
    return missing


@contextlib.contextmanager
def ddp_sync(module, sync):
    """Skip the DDP gradient all-reduce on all but the last accumulation round."""
    assert isinstance(module, torch.nn.Module)
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield


def check_ddp_consistency(module, ignore_regex=None):
    """Assert that every parameter and buffer is identical on all ranks."""
    assert isinstance(module, torch.nn.Module)
    for name, tensor in named_params_and_buffers(module):
        fullname = type(module).__name__ + '.' + name
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = torch.nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        assert (tensor == other).all(), fullname


def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    """Print a table of submodules with their parameter and buffer counts and output shapes."""
    assert isinstance(module, torch.nn.Module)
    assert not isinstance(module, torch.jit.ScriptModule)
    assert isinstance(inputs, (tuple, list))

    entries = []
    nesting = [0]

    def pre_hook(_mod, _inputs):
        nesting[0] += 1

    def post_hook(mod, _inputs, outputs):
        nesting[0] -= 1
        if nesting[0] <= max_nesting:
            outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            outputs = [t for t in outputs if isinstance(t, torch.Tensor)]
            entries.append(dnnlib.EasyDict(mod=mod, outputs=outputs))

    hooks = [mod.register_forward_pre_hook(pre_hook) for mod in module.modules()]
    hooks += [mod.register_forward_hook(post_hook) for mod in module.modules()]
    outputs = module(*inputs)
    for hook in hooks:
        hook.remove()

    tensors_seen = set()
    for e in entries:
        e.unique_params = [t for t in e.mod.parameters() if id(t) not in tensors_seen]
        e.unique_buffers = [t for t in e.mod.buffers() if id(t) not in tensors_seen]
        e.unique_outputs = [t for t in e.outputs if id(t) not in tensors_seen]
        tensors_seen |= {id(t) for t in e.unique_params + e.unique_buffers + e.unique_outputs}
    if skip_redundant:
        entries = [e for e in entries if len(e.unique_params) or len(e.unique_buffers) or len(e.unique_outputs)]

    rows = [[type(module).__name__, 'Parameters', 'Buffers', 'Output shape', 'Datatype']]
    rows += [['---'] * len(rows[0])]
    param_total = buffer_total = 0
    submodule_names = {mod: name for name, mod in module.named_modules()}
    for e in entries:
        name = '<top-level>' if e.mod is module else submodule_names[e.mod]
        param_size = sum(t.numel() for t in e.unique_params)
        buffer_size = sum(t.numel() for t in e.unique_buffers)
        output_shapes = [str(list(t.shape)) for t in e.outputs]
        output_dtypes = [str(t.dtype).split('.')[-1] for t in e.outputs]
        rows += [[
            name + (':0' if len(e.outputs) >= 2 else ''),
            str(param_size) if param_size else '-',
            str(buffer_size) if buffer_size else '-',
            (output_shapes + ['-'])[0],
            (output_dtypes + ['-'])[0],
        ]]
        for idx in range(1, len(e.outputs)):
            rows += [[name + f':{idx}', '-', '-', output_shapes[idx], output_dtypes[idx]]]
        param_total += param_size
        buffer_total += buffer_size
    rows += [['---'] * len(rows[0])]
    rows += [['Total', str(param_total), str(buffer_total), '-', '-']]
    widths = [max(len(cell) for cell in column) for column in zip(*rows)]
    print()
    for row in rows:
        print('  '.join(cell + ' ' * (width - len(cell)) for cell, width in zip(row, widths)))
    print()
    return outputs

# ---------------------------------------------------------------------------------------------
# TF32. NVIDIA's loops turn it off for training (stylegan2-ada: ``--allow-tf32``, default off;
# stylegan3: always off). Frozen networks (teacher, LPIPS VGG16, face parser, metric detectors)
# need no exact gradients, so they run with TF32 on unless the user says no (``frozen_tf32``).
# The k-NN metrics force exact float32 themselves (``metrics/knn.py``). Only the two
# ``allow_tf32`` flags change: they act on CUDA alone, CPU results stay bit-identical.

_frozen_tf32 = True


def set_tf32(allow):
    """Set the process-wide TF32 flags of matmuls and cuDNN convolutions (training networks)."""
    torch.backends.cuda.matmul.allow_tf32 = bool(allow)
    torch.backends.cudnn.allow_tf32 = bool(allow)


def set_frozen_tf32(allow):
    """Whether ``frozen_network_scope`` enables TF32 (default True)."""
    global _frozen_tf32
    _frozen_tf32 = bool(allow)


@contextlib.contextmanager
def tf32_scope(allow):
    """TF32 flags set to ``allow`` for the duration, restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    set_tf32(allow)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def frozen_network_scope():
    """Where a frozen network runs: TF32 on (unless ``set_frozen_tf32(False)``)."""
    return tf32_scope(_frozen_tf32)
