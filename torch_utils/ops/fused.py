"""When the fused Triton kernels are used, and loading them (compiled or under the interpreter).

``impl`` of ``bias_act``, ``upfirdn2d`` and ``filtered_lrelu`` means:
  'ref'    the plain PyTorch path (ordinary autograd), on every device;
  'cuda'   NVIDIA's name for "fast": the fused Triton kernels for CUDA tensors when ``triton``
           imports (and ``SVS_FUSED_OPS`` is not 0), otherwise the PyTorch path (so the CPU default
           never changes);
  'triton' the fused kernels whatever the device; CPU tensors need the Triton interpreter
           (``TRITON_INTERPRET=1`` set before ``triton`` is first imported).

``triton`` is imported only when a fused kernel is first needed, so CPU-only use never pays for it.
"""
import importlib
import os

import torch

IMPLS = ('ref', 'cuda', 'triton')
KERNEL_DTYPES = (torch.float16, torch.float32, torch.float64)  # others (bfloat16) take the PyTorch path

_kernels = None          # the loaded torch_utils.ops.triton_kernels module
_triton_ok = None        # cached result of triton_available()
_enabled = os.environ.get('SVS_FUSED_OPS', '1') != '0'  # SVS_FUSED_OPS=0: impl='cuda' never fuses


def set_enabled(enabled):
    """Let ``impl='cuda'`` use the fused kernels (True, the default), not (False), or use them on every
    device ('always': checks of whole networks under the interpreter); returns the previous setting.
    Benchmarks use it to time both paths in one process; ``impl='triton'`` is not affected."""
    global _enabled
    assert enabled in (True, False, 'always')
    previous, _enabled = _enabled, enabled
    return previous


def triton_available():
    """True when ``triton`` imports (its kernels may still need a GPU or the interpreter)."""
    global _triton_ok
    if _triton_ok is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401  (a broken install fails here)
            _triton_ok = True
        except Exception:  # ImportError, or a broken install raising anything else
            _triton_ok = False
    return _triton_ok


def load_kernels():
    """The kernels module (imports ``triton`` on first use).

    Triton decides at import time whether kernels are interpreted (``TRITON_INTERPRET=1``), for
    ``triton.language`` itself as much as for our kernels, so the variable must be set before the
    process first imports ``triton``: tests run the interpreter in a subprocess.
    """
    global _kernels
    if _kernels is None:
        if not triton_available():
            raise RuntimeError('fused ops: triton is not installed (pip install -r requirements-test.txt)')
        _kernels = importlib.import_module('torch_utils.ops.triton_kernels')
    return _kernels


def interpreted():
    """True when Triton runs kernels on CPU tensors through its interpreter."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def use_fused(impl, x):
    """Should an op called with ``impl`` on tensor ``x`` run the fused kernels?"""
    assert impl in IMPLS, f'impl must be one of {IMPLS}, got {impl!r}'
    if impl == 'ref':
        return False
    if impl == 'triton':
        return True
    if _enabled == 'always':
        return True
    return (_enabled and x.device.type == 'cuda' and getattr(x, 'dtype', None) in KERNEL_DTYPES
            and triton_available())


def check_kernel_input(x):
    assert x.device.type == 'cuda' or interpreted(), \
        'fused ops on CPU tensors need TRITON_INTERPRET=1 (set before triton is first imported)'
    assert x.dtype in KERNEL_DTYPES, \
        f'fused ops: unsupported dtype {x.dtype}'
