"""Filtered leaky ReLU of StyleGAN3 (NVIDIA's ``filtered_lrelu`` call signature).

Per channel, with the semantics of NVIDIA's reference implementation:
  1. add the bias ``b``,
  2. upsample by ``up`` (zero insertion), pad by ``padding`` and filter with ``fu`` at gain ``up**2``,
  3. leaky ReLU with ``slope``, multiply by ``gain``, clamp to [-clamp, clamp],
  4. filter with ``fd`` and keep every ``down``-th pixel.

Three paths:
- ``impl='ref'`` composes ``bias_act`` and ``upfirdn2d`` exactly as NVIDIA's reference does.
- ``impl='cuda'`` on CUDA tensors with ``triton`` installed, and ``impl='triton'`` anywhere (see
  ``fused.py``): the fused Triton kernels of ``filtered_lrelu_fused.py``. They keep only a 2-bit
  sign map of the upsampled intermediate for backward (as NVIDIA's kernel), not the intermediate.
- ``impl='cuda'`` elsewhere (the CPU default) is the fast PyTorch path, ordinary autograd.
  It computes the same function with fewer operations: on small images each 1-D upsampling pass
  (zero insertion, padding and the FIR filter together) is one matrix product with a banded
  matrix, which a CPU does far faster than a depthwise convolution on the zero-inserted image;
  ``gain`` is folded into that matrix (leaky ReLU is positively homogeneous, so this is exact up
  to rounding); downsampling is a strided depthwise convolution that never computes the
  discarded pixels. Results agree with the reference to float rounding (different summation
  order).
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F

from . import bias_act
from . import fused
from . import upfirdn2d
from .upfirdn2d import _get_filter_size, _parse_padding  # noqa: F401 (also part of the NVIDIA API)

# Largest input length along an axis for which the matrix-product upsampling pays; above it the
# banded matrix is mostly zeros and the transposed convolution of ``upfirdn2d`` wins.
_MATMUL_MAX_SIZE = 144

# Elements of the upsampled intermediate processed at once on a CPU (about 4 MB in float32).
_CHUNK_ELEMENTS = 1 << 20


def filtered_lrelu(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=np.sqrt(2), slope=0.2, clamp=None,
                   flip_filter=False, impl='cuda'):
    """Bias, upsample, leaky ReLU, clamp and downsample a batch of images.

    Args:
        x:           [N, C, H, W] images.
        fu:          upsampling FIR filter: float32 [fh, fw], separable [fw], or None (identity).
        fd:          downsampling FIR filter, same forms as ``fu``.
        b:           optional bias [C] with the dtype of ``x``.
        up:          integer upsampling factor.
        down:        integer downsampling factor.
        padding:     padding of the upsampled image: int, [x, y] or [x0, x1, y0, y1]; negative crops.
        gain:        scale after the leaky ReLU.
        slope:       leaky ReLU slope (1 = linear).
        clamp:       clamp the activations to [-clamp, clamp] before downsampling; None = off.
        flip_filter: False = convolution, True = correlation.
        impl:        'cuda' (fastest path for the device), 'triton' (fused kernels) or 'ref' (NVIDIA's
                     reference composition).
    Returns:
        [N, C, H_out, W_out] in the dtype of ``x``, with
        W_out = (W * up + px0 + px1 - (fu_w - 1) - (fd_w - 1) + (down - 1)) // down (same for H).
    """
    assert isinstance(x, torch.Tensor) and x.ndim == 4
    fu_w, fu_h = _get_filter_size(fu)
    fd_w, fd_h = _get_filter_size(fd)
    if b is not None:
        assert isinstance(b, torch.Tensor) and b.dtype == x.dtype
        assert b.ndim == 1 and b.shape[0] == x.shape[1]
    assert isinstance(up, (int, np.integer)) and up >= 1
    assert isinstance(down, (int, np.integer)) and down >= 1
    up, down = int(up), int(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    assert gain == float(gain) and gain > 0
    assert slope == float(slope) and slope >= 0
    assert clamp is None or (clamp == float(clamp) and clamp >= 0)
    gain, slope = float(gain), float(slope)
    clamp = None if clamp is None else float(clamp)

    batch_size, channels, in_h, in_w = x.shape
    out_w = (in_w * up + (px0 + px1) - (fu_w - 1) - (fd_w - 1) + (down - 1)) // down
    out_h = (in_h * up + (py0 + py1) - (fu_h - 1) - (fd_h - 1) + (down - 1)) // down
    assert out_w >= 1 and out_h >= 1, 'filtered_lrelu: output would be empty'

    args = (fu, fd, up, down, (px0, px1, py0, py1), gain, slope, clamp, flip_filter)
    if fused.use_fused(impl, x) and not any(t is not None and t.requires_grad for t in (fu, fd)):
        from .filtered_lrelu_fused import filtered_lrelu_fused
        y = filtered_lrelu_fused(x, b, *args)
    elif impl == 'ref':
        y = _filtered_lrelu_ref(x, b, *args)
    elif x.device.type == 'cpu':
        y = _filtered_lrelu_chunked(x, b, *args)
    else:
        y = _filtered_lrelu_fast(x, b, *args)
    assert y.shape == (batch_size, channels, out_h, out_w) and y.dtype == x.dtype
    return y


def _filtered_lrelu_ref(x, b, fu, fd, up, down, padding, gain, slope, clamp, flip_filter):
    """NVIDIA's reference order of operations, built from ``bias_act`` and ``upfirdn2d``."""
    x = bias_act.bias_act(x=x, b=b, impl='ref')
    x = upfirdn2d.upfirdn2d(x=x, f=fu, up=up, padding=list(padding), gain=up ** 2, flip_filter=flip_filter, impl='ref')
    x = bias_act.bias_act(x=x, act='lrelu', alpha=slope, gain=gain, clamp=clamp, impl='ref')
    x = upfirdn2d.upfirdn2d(x=x, f=fd, down=down, flip_filter=flip_filter, impl='ref')
    return x


def _filtered_lrelu_chunked(x, b, *args):
    """The fast path over cache-sized pieces (samples, then channel groups): the upsampled
    intermediate is several times larger than the input, and on a CPU streaming it through memory
    costs more than the arithmetic."""
    batch_size, channels, in_h, in_w = x.shape
    fu, _fd, up, _down, (px0, px1, py0, py1) = args[:5]
    fu_w, fu_h = _get_filter_size(fu)
    tmp_elems = max(in_h * up + py0 + py1 - fu_h + 1, 1) * max(in_w * up + px0 + px1 - fu_w + 1, 1)
    chunk_channels = max(_CHUNK_ELEMENTS // tmp_elems, 1)
    if chunk_channels >= channels:
        chunk_batch = max(chunk_channels // channels, 1)
        if chunk_batch >= batch_size:
            return _filtered_lrelu_fast(x, b, *args)
        return torch.cat([_filtered_lrelu_fast(xs, b, *args) for xs in x.split(chunk_batch)])
    b_parts = [None] * channels if b is None else b.split(chunk_channels)
    rows = []
    for xs in x.split(1):
        parts = [_filtered_lrelu_fast(xc, bc, *args) for xc, bc in zip(xs.split(chunk_channels, dim=1), b_parts)]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows)


def _filtered_lrelu_fast(x, b, fu, fd, up, down, padding, gain, slope, clamp, flip_filter):
    px0, px1, py0, py1 = padding
    x_in = x
    if b is not None:
        x = x + b.reshape(1, -1, 1, 1)

    # Upsample, pad and filter; the leaky ReLU gain rides along (lrelu(g * v) = g * lrelu(v), g > 0).
    up_gain = up * up * gain
    separable = fu is None or fu.ndim == 1
    in_h, in_w = x.shape[2], x.shape[3]
    if fu is None and up == 1:
        x = _pad(x, px0, px1, py0, py1)
        if up_gain != 1:
            x = x * up_gain
    elif separable and max(in_h, in_w) <= _MATMUL_MAX_SIZE:
        taps = 1 if fu is None else fu.shape[0]
        kernel = torch.ones([1], dtype=torch.float32, device=x.device) if fu is None else fu
        kernel = kernel.to(torch.float64 if x.dtype == torch.float64 else torch.float32) * np.sqrt(up_gain)
        if not flip_filter:
            kernel = kernel.flip([0])  # the matrices apply a correlation
        mat_w = _upfir_matrix(kernel, in_w, taps, up, px0, px1).to(x.dtype)
        mat_h = _upfir_matrix(kernel, in_h, taps, up, py0, py1).to(x.dtype)
        x = torch.matmul(mat_h.t(), torch.matmul(x, mat_w))
    else:
        x = upfirdn2d.upfirdn2d(x=x, f=fu, up=up, padding=[px0, px1, py0, py1], gain=up_gain,
                                flip_filter=flip_filter)

    # In place where ``x`` is a fresh tensor of ours: fewer large buffers to allocate and fault in.
    # (Autograd saves the in-place leaky ReLU's result, so a clamp after it must then copy.)
    fresh = x is not x_in
    if slope != 1:
        if fresh and slope > 0:
            x = F.leaky_relu_(x, slope)
            fresh = not x.requires_grad
        else:
            x = F.leaky_relu(x, slope)
            fresh = True
    if clamp is not None:
        x = x.clamp_(-clamp, clamp) if fresh else x.clamp(-clamp, clamp)

    # Filter and downsample; ``upfirdn2d`` without upsampling is a strided depthwise convolution.
    if fd is not None or down > 1:
        x = upfirdn2d.upfirdn2d(x=x, f=fd, down=down, flip_filter=flip_filter)
    return x


def _pad(x, x0, x1, y0, y1):
    if x0 == 0 and x1 == 0 and y0 == 0 and y1 == 0:
        return x
    return F.pad(x, [x0, x1, y0, y1])


@functools.lru_cache(maxsize=512)
def _upfir_taps(n_in, taps, up, pad0, pad1, device):
    """For each (input sample, output sample) pair, the correlation tap joining them (``taps`` = none).

    Output sample ``n`` of zero insertion + padding + correlation with kernel ``g`` is
    ``sum_k g[k] * P[n + k]`` where input sample ``i`` sits at ``P[i * up + pad0]``; so input ``i``
    meets output ``n`` through tap ``k = i * up + pad0 - n``. Negative padding (cropping) needs no
    special case: samples cropped away never meet a valid tap.
    """
    n_out = n_in * up + pad0 + pad1 - taps + 1
    assert n_out >= 1
    k = np.arange(n_in)[:, None] * up + pad0 - np.arange(n_out)[None, :]
    k = np.where((k >= 0) & (k < taps), k, taps)
    return torch.as_tensor(k, dtype=torch.int64, device=device)


def _upfir_matrix(kernel, n_in, taps, up, pad0, pad1):
    """[n_in, n_out] matrix of one 1-D upsample + pad + correlate pass (differentiable in ``kernel``)."""
    index = _upfir_taps(n_in, taps, up, pad0, pad1, kernel.device)
    padded = torch.cat([kernel, kernel.new_zeros([1])])
    return padded[index]
