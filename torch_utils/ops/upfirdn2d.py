"""Upsample, FIR-filter and downsample 2-D images (NVIDIA's ``upfirdn2d`` call signature).

``upfirdn2d`` computes, per channel:
  1. upsample by inserting ``up - 1`` zeros after every pixel,
  2. pad (negative padding crops),
  3. convolve with the FIR filter ``f`` (a true convolution unless ``flip_filter``), 'valid' mode,
  4. keep every ``down``-th pixel.
The implementation never materialises the zero-inserted image: upsampling is a depthwise
transposed convolution with stride ``up`` and downsampling a depthwise convolution with stride
``down``. Separable (1-D) filters run as two 1-D passes. Everything is ordinary autograd, so
gradients of any order work on every device and dtype.

``impl='cuda'`` on CUDA tensors (with ``triton`` installed) and ``impl='triton'`` anywhere run the
fused Triton kernel instead (see ``fused.py``): one pass per filter axis, computed per output pixel;
its backward is the same kernel with the transposed parameters, so every order of gradient works.
"""
import numpy as np
import torch
import torch.nn.functional as F

from . import fused


def _parse_scaling(scaling):
    """int or [x, y] -> (sx, sy)."""
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    assert isinstance(scaling, (list, tuple)) and len(scaling) == 2
    assert all(isinstance(s, int) and s >= 1 for s in scaling)
    sx, sy = scaling
    return sx, sy


def _parse_padding(padding):
    """int, [x, y] or [x0, x1, y0, y1] -> (x0, x1, y0, y1)."""
    if isinstance(padding, (int, np.integer)):
        padding = [padding, padding]
    assert isinstance(padding, (list, tuple)) and all(isinstance(p, (int, np.integer)) for p in padding)
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        padx, pady = padding
        padding = [padx, padx, pady, pady]
    assert len(padding) == 4
    padx0, padx1, pady0, pady1 = padding
    return padx0, padx1, pady0, pady1


def _get_filter_size(f):
    """Filter width and height (1, 1 for None)."""
    if f is None:
        return 1, 1
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2)
    fw = f.shape[-1]
    fh = f.shape[0]
    return int(fw), int(fh)


def setup_filter(f, device=torch.device('cpu'), normalize=True, flip_filter=False, gain=1, separable=None):
    """Turn a filter description into the float32 tensor ``upfirdn2d`` expects.

    Args:
        f:           None (identity), a scalar, a 1-D list (separable, or expanded to its outer
                     product) or a 2-D array.
        device:      where to put the result.
        normalize:   scale so that the taps sum to 1.
        flip_filter: flip the taps (only matters for asymmetric filters).
        gain:        overall gain of the filter (spread over both axes for 1-D filters).
        separable:   keep a 1-D filter 1-D; None = only when it has at least 8 taps.
    Returns:
        float32 tensor [fh, fw] (non-separable) or [fw] (separable).
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    assert f.ndim in (0, 1, 2) and f.numel() > 0
    if f.ndim == 0:
        f = f[np.newaxis]
    if separable is None:
        separable = (f.ndim == 1 and f.numel() >= 8)
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    assert f.ndim == (1 if separable else 2)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Pad, upsample, filter and downsample a batch of images.

    Args:
        x:           [N, C, H, W] images.
        f:           float32 FIR filter [fh, fw] or separable [fw] (see ``setup_filter``);
                     None = identity.
        up:          integer upsampling factor, or [x, y].
        down:        integer downsampling factor, or [x, y].
        padding:     padding of the upsampled image: int, [x, y] or [x0, x1, y0, y1]; negative
                     values crop.
        flip_filter: False = convolution, True = correlation.
        gain:        overall scaling of the signal magnitude.
        impl:        'ref', 'cuda' or 'triton' (see ``fused.py``).
    Returns:
        [N, C, H_out, W_out] with H_out = ceil((H * upy + pady0 + pady1 - fh + 1) / downy).
    """
    assert isinstance(x, torch.Tensor) and x.ndim == 4
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    if fused.use_fused(impl, x) and not (f is not None and f.requires_grad):
        fused.check_kernel_input(x)
        passes = fused_passes(f, x.shape[3], x.shape[2], (upx, upy), (downx, downy),
                              (padx0, padx1, pady0, pady1), flip_filter, gain)
        return _UpFirDn2dFused.apply(x, passes)
    if f is None and upx == 1 and upy == 1:  # no filter: pad/crop and subsample only
        x = _pad(x, padx0, padx1, pady0, pady1)[:, :, ::downy, ::downx]
        return x * gain if gain != 1 else x
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32

    # The filter as a correlation kernel, with the gain folded in.
    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 1:
        passes = [(f.reshape(1, -1), upx, downx, padx0, padx1, 1, 1, 0, 0),
                  (f.reshape(-1, 1), 1, 1, 0, 0, upy, downy, pady0, pady1)]
    else:
        passes = [(f, upx, downx, padx0, padx1, upy, downy, pady0, pady1)]
    for kernel, ux, dx, px0, px1, uy, dy, py0, py1 in passes:
        x = _filter_pass(x, kernel, ux, dx, px0, px1, uy, dy, py0, py1)
    return x


def fused_passes(f, in_w, in_h, up, down, padding, flip_filter, gain):
    """The kernel passes computing ``upfirdn2d`` on [*, *, in_h, in_w] images, as tuples
    (correlation kernel [kh, kw] with the gain folded in, up, down, pad0, in_size, out_size), each an
    (x, y) pair: one 2-D pass, or an x pass then a y pass for a separable filter."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, padding
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32)
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32
    corr = (f if flip_filter else f.flip(list(range(f.ndim)))).float() * (gain ** (f.ndim / 2))

    def out_len(n, u, d, p0, p1, k):
        full = n * u + p0 + p1 - k
        assert full >= 0, 'upfirdn2d: the filter is larger than the padded image'
        return full // d + 1

    if f.ndim == 2:
        kh, kw = corr.shape
        out = (out_len(in_w, upx, downx, px0, px1, kw), out_len(in_h, upy, downy, py0, py1, kh))
        return ((corr, (upx, upy), (downx, downy), (px0, py0), (in_w, in_h), out),)
    k = corr.shape[0]
    out_w = out_len(in_w, upx, downx, px0, px1, k)
    out_h = out_len(in_h, upy, downy, py0, py1, k)
    return ((corr.reshape(1, k), (upx, 1), (downx, 1), (px0, 0), (in_w, in_h), (out_w, in_h)),
            (corr.reshape(k, 1), (1, upy), (1, downy), (0, py0), (out_w, in_h), (out_w, out_h)))


def transpose_passes(passes):
    """The adjoint of a chain of passes (each pass's adjoint, in reverse order).

    Output n of a pass is sum_i x[i] g[i * up + p0 - n * down]; the adjoint sums over n instead,
    which is again a pass: filter flipped, up and down swapped, p0 -> k - 1 - p0, sizes swapped.
    """
    out = []
    for corr, (ux, uy), (dx, dy), (px0, py0), in_size, out_size in reversed(passes):
        kh, kw = corr.shape
        out.append((corr.flip([0, 1]), (dx, dy), (ux, uy), (kw - 1 - px0, kh - 1 - py0), out_size, in_size))
    return tuple(out)


def run_passes(x, passes):
    kernels = fused.load_kernels()
    for corr, pass_up, pass_down, pad0, _in_size, out_size in passes:
        x = kernels.upfirdn_pass(x, corr, pass_up, pass_down, pad0, out_size)
    return x


class _UpFirDn2dFused(torch.autograd.Function):
    """A linear map whose backward is its adjoint, again this Function: differentiable to any order."""

    @staticmethod
    def forward(ctx, x, passes):
        ctx.passes = passes
        return run_passes(x, passes)

    @staticmethod
    def backward(ctx, dy):
        return _UpFirDn2dFused.apply(dy, transpose_passes(ctx.passes)), None


def _filter_pass(x, kernel, upx, downx, padx0, padx1, upy, downy, pady0, pady1):
    """One depthwise pass of upfirdn2d; ``kernel`` is a 2-D correlation kernel [kh, kw]."""
    channels = x.shape[1]
    kh, kw = kernel.shape
    weight = kernel[None, None].expand(channels, 1, kh, kw)
    if upx == 1 and upy == 1:
        if padx0 == padx1 and pady0 == pady1 and padx0 >= 0 and pady0 >= 0:
            return F.conv2d(x, weight, stride=(downy, downx), padding=(pady0, padx0), groups=channels)
        x = _pad(x, padx0, padx1, pady0, pady1)
        return F.conv2d(x, weight, stride=(downy, downx), groups=channels)

    # Zero insertion followed by a correlation equals a transposed convolution with the flipped
    # kernel; its full output starts k - 1 samples before the padded, zero-inserted image and
    # ends k - up samples after it, so only the difference in padding remains to be applied.
    left_x, right_x = padx0 - (kw - 1), padx1 - (kw - upx)
    left_y, right_y = pady0 - (kh - 1), pady1 - (kh - upy)
    crop_x = max(0, min(-left_x, -right_x))
    crop_y = max(0, min(-left_y, -right_y))
    weight = weight.flip([2, 3])
    x = F.conv_transpose2d(x, weight, stride=(upy, upx), padding=(crop_y, crop_x), groups=channels)
    x = _pad(x, left_x + crop_x, right_x + crop_x, left_y + crop_y, right_y + crop_y)
    if downx > 1 or downy > 1:
        x = x[:, :, ::downy, ::downx]
    return x


def _pad(x, x0, x1, y0, y1):
    """Zero-pad (negative values crop); a no-op without padding."""
    if x0 == 0 and x1 == 0 and y0 == 0 and y1 == 0:
        return x
    return F.pad(x, [x0, x1, y0, y1])


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Filter images with ``f``; the output has the input's size plus ``padding``."""
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Upsample by ``up`` with filter ``f``, keeping the signal magnitude (gain * up^2)."""
    upx, upy = _parse_scaling(up)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + (fw + upx - 1) // 2, padx1 + (fw - upx) // 2,
         pady0 + (fh + upy - 1) // 2, pady1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Filter with ``f`` and downsample by ``down``."""
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2,
         pady0 + (fh - downy + 1) // 2, pady1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
