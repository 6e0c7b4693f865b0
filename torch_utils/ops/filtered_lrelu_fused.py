"""The fused path of ``filtered_lrelu``: Triton kernels, keeping a sign map instead of the intermediate.

Forward: the upsampling passes (bias added as samples are read; on the last pass, leaky ReLU, gain
and clamp, writing a 2-bit code per intermediate pixel: negative, positive or clamped), then the
downsampling passes. The upsampled intermediate exists only inside the forward call.

The backward is linear in the incoming gradient once the codes are fixed: the adjoint of the
downsampling passes, times the activation's derivative read from the codes, then the adjoint of
the upsampling passes. That map's own adjoint (the backward of the backward) is the forward chain
with the activation replaced by the same derivative, so both are one Function, ``_SignedChain``,
and gradients of every order exist (those through the sign map itself are zero, as in the
reference: leaky ReLU and clamp are piecewise linear).
"""
import torch

from . import fused
from .upfirdn2d import fused_passes, run_passes, transpose_passes


def filtered_lrelu_fused(x, b, fu, fd, up, down, padding, gain, slope, clamp, flip_filter):
    """Arguments as in ``filtered_lrelu._filtered_lrelu_ref`` (already parsed)."""
    fused.check_kernel_input(x)
    px0, px1, py0, py1 = padding
    in_h, in_w = x.shape[2], x.shape[3]
    up_passes = fused_passes(fu, in_w, in_h, (up, up), (1, 1), (px0, px1, py0, py1), flip_filter, up ** 2)
    mid_w, mid_h = up_passes[-1][5]
    down_passes = fused_passes(fd, mid_w, mid_h, (1, 1), (down, down), (0, 0, 0, 0), flip_filter, 1)
    act = (float(slope), float(gain), clamp)
    return _FilteredLReluFused.apply(x, b, up_passes, down_passes, act)


def _run(x, passes, act, bias=None, signs=None):
    """Run ``passes``; the last one applies the activation (``signs`` None: computes and returns
    the sign map too) or its derivative read from ``signs``."""
    kernels = fused.load_kernels()
    slope, gain, clamp = act
    new_signs = None
    for i, (corr, up, down, pad0, _in_size, out_size) in enumerate(passes):
        last = i == len(passes) - 1
        epilogue = 0 if not last else (1 if signs is None else 2)
        out = kernels.upfirdn_pass(x, corr, up, down, pad0, out_size, bias=bias if i == 0 else None,
                                   epilogue=epilogue, signs=signs, slope=slope, act_gain=gain, clamp=clamp)
        x, new_signs = out if epilogue == 1 else (out, new_signs)
    return x, new_signs


class _FilteredLReluFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, up_passes, down_passes, act):
        mid, signs = _run(x, up_passes, act, bias=b)
        y = run_passes(mid, down_passes)
        del mid
        ctx.save_for_backward(signs)
        ctx.config = (up_passes, down_passes, act)
        ctx.has_bias = b is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        signs, = ctx.saved_tensors
        up_passes, down_passes, act = ctx.config
        dx = _SignedChain.apply(dy, signs, transpose_passes(down_passes), transpose_passes(up_passes), act)
        db = dx.sum([0, 2, 3]) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return dx, db, None, None, None


class _SignedChain(torch.autograd.Function):
    """g -> second(first(g) * act'(codes)): ``first`` ends at the intermediate's resolution."""

    @staticmethod
    def forward(ctx, g, signs, first, second, act):
        mid, _ = _run(g, first, act, signs=signs)
        out = run_passes(mid, second)
        ctx.save_for_backward(signs)
        ctx.config = (first, second, act)
        return out

    @staticmethod
    def backward(ctx, d_out):
        signs, = ctx.saved_tensors
        first, second, act = ctx.config
        d_g = _SignedChain.apply(d_out, signs, transpose_passes(second), transpose_passes(first), act)
        return d_g, None, None, None, None
