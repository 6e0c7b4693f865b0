"""2-D convolution with optional up/downsampling (NVIDIA's ``conv2d_resample`` call signature).

The function computed is always the reference chain
    upfirdn2d(x, f, up, padding', gain=up^2)  ->  conv2d(w)  ->  upfirdn2d(f, down)
where ``padding'`` is ``padding`` plus what keeps the resampled image aligned. Since every step
is linear and shift-invariant, the steps may be reordered; each path below picks the cheapest
order (strided convolution for downsampling, transposed convolution for upsampling, 1x1
convolutions at the lower resolution), giving the same result up to rounding.
"""
import torch
import torch.nn.functional as F

from . import upfirdn2d


def _conv2d(x, w, stride=1, padding=0, groups=1, flip_weight=True, transpose=False):
    """conv2d / conv_transpose2d with the flip convention of ``conv2d_resample``."""
    if not flip_weight:  # true convolution: flip the kernel for PyTorch's correlation
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def _transpose_weight(w, groups):
    """[out, in/groups, kh, kw] conv weight -> [in, out/groups, kh, kw] transposed-conv weight."""
    out_channels, in_per_group, kh, kw = w.shape
    if groups == 1:
        return w.transpose(0, 1)
    w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
    return w.reshape(groups * in_per_group, out_channels // groups, kh, kw)


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """Convolve ``x`` with ``w``, upsampling/downsampling with the FIR filter ``f``.

    Args:
        x:           [N, in_channels, H, W].
        w:           [out_channels, in_channels // groups, kh, kw], same dtype as ``x``.
        f:           float32 FIR filter from ``upfirdn2d.setup_filter`` (None = box).
        up, down:    integer up/downsampling factors.
        padding:     padding relative to the upsampled image: int, [x, y] or [x0, x1, y0, y1].
        groups:      convolution groups.
        flip_weight: False = true convolution, True = correlation (PyTorch's conv2d).
        flip_filter: False = convolve with ``f``, True = correlate.
    Returns:
        [N, out_channels, H', W'].
    """
    assert isinstance(x, torch.Tensor) and x.ndim == 4
    assert isinstance(w, torch.Tensor) and w.ndim == 4 and w.dtype == x.dtype
    assert f is None or (isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32)
    assert isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1
    assert isinstance(groups, int) and groups >= 1
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = upfirdn2d._get_filter_size(f)
    px0, px1, py0, py1 = upfirdn2d._parse_padding(padding)

    # Extra padding that keeps the image centred through the resampling filter.
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    pad = [px0, px1, py0, py1]

    # 1x1 kernels commute with resampling: run them at the lower resolution.
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv2d(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv2d(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d.upfirdn2d(x, f, up=up, padding=pad, gain=up ** 2, flip_filter=flip_filter)

    # Downsampling: filter first, then a strided convolution.
    if down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv2d(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling: zero insertion + convolution is a transposed convolution. Its full output
    # starts kh - 1 rows before the zero-inserted image and ends kh - up rows after it, which
    # shifts the padding the filter step must apply; a symmetric crop is left to the transposed
    # convolution itself.
    if up > 1:
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        crop_x = max(0, min(-px0, -px1))
        crop_y = max(0, min(-py0, -py1))
        # conv_transpose2d does not flip its kernel, so a correlation needs an explicit flip.
        x = _conv2d(x, _transpose_weight(w, groups), stride=up, padding=[crop_y, crop_x], groups=groups,
                    flip_weight=(not flip_weight), transpose=True)
        x = upfirdn2d.upfirdn2d(x, f, padding=[px0 + crop_x, px1 + crop_x, py0 + crop_y, py1 + crop_y],
                                gain=up ** 2, flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling: a plain convolution, with PyTorch's padding when it is symmetric.
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv2d(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d.upfirdn2d(x, None, padding=pad)
    return _conv2d(x, w, groups=groups, flip_weight=flip_weight)
