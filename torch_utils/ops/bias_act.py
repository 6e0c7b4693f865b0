"""Fused bias + activation + gain + clamp, with NVIDIA's ``bias_act`` call signature.

The PyTorch path (``impl='ref'``, and the default on CPU) is ordinary autograd ops, so gradients
of any order (R1, path length) come for free. The fused path (``impl='cuda'`` on CUDA tensors with
``triton`` installed, ``impl='triton'`` anywhere; see ``fused.py``) is one Triton kernel per call;
as in NVIDIA's CUDA op, its backward is another custom Function whose own backward is built from
the same kernels, so R1 and path-length regularisation can differentiate through it twice.
"""
import numpy as np
import torch
import torch.nn.functional as F

import dnnlib
from . import fused

# func(x, alpha) -> y; def_alpha / def_gain are used when the caller passes None.
activation_funcs = {
    'linear':   dnnlib.EasyDict(func=lambda x, alpha: x,                        def_alpha=0,   def_gain=1,          has_2nd_grad=False),
    'relu':     dnnlib.EasyDict(func=lambda x, alpha: F.relu(x),                def_alpha=0,   def_gain=np.sqrt(2), has_2nd_grad=False),
    'lrelu':    dnnlib.EasyDict(func=lambda x, alpha: F.leaky_relu(x, alpha),   def_alpha=0.2, def_gain=np.sqrt(2), has_2nd_grad=False),
    'tanh':     dnnlib.EasyDict(func=lambda x, alpha: torch.tanh(x),            def_alpha=0,   def_gain=1,          has_2nd_grad=True),
    'sigmoid':  dnnlib.EasyDict(func=lambda x, alpha: torch.sigmoid(x),         def_alpha=0,   def_gain=1,          has_2nd_grad=True),
    'elu':      dnnlib.EasyDict(func=lambda x, alpha: F.elu(x),                 def_alpha=0,   def_gain=1,          has_2nd_grad=True),
    'selu':     dnnlib.EasyDict(func=lambda x, alpha: F.selu(x),                def_alpha=0,   def_gain=1,          has_2nd_grad=True),
    'softplus': dnnlib.EasyDict(func=lambda x, alpha: F.softplus(x),            def_alpha=0,   def_gain=1,          has_2nd_grad=True),
    'swish':    dnnlib.EasyDict(func=lambda x, alpha: torch.sigmoid(x) * x,     def_alpha=0,   def_gain=np.sqrt(2), has_2nd_grad=True),
}


def bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl='cuda'):
    """Compute ``clamp(act(x + b, alpha) * gain, -clamp, clamp)``.

    Args:
        x:     input tensor of any shape.
        b:     optional 1-D bias, broadcast along dimension ``dim`` of ``x``.
        dim:   the dimension of ``x`` that ``b`` runs along.
        act:   a key of ``activation_funcs``.
        alpha: activation parameter (leaky ReLU slope); None = the activation's default.
        gain:  scale applied after the activation; None = the activation's default gain.
        clamp: clamp the output to [-clamp, clamp]; None or negative = no clamping.
        impl:  'ref', 'cuda' or 'triton' (see ``fused.py``).
    """
    assert isinstance(x, torch.Tensor)
    spec = activation_funcs[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = float(-1 if clamp is None else clamp)
    if fused.use_fused(impl, x):
        fused.check_kernel_input(x)
        if b is not None:
            assert isinstance(b, torch.Tensor) and b.ndim == 1
            assert 0 <= dim < x.ndim and b.shape[0] == x.shape[dim]
            b = b.to(x.dtype)
        cfg = (dim, act, alpha, gain, None if clamp < 0 else clamp)
        return _BiasActFused.apply(x, b, cfg)

    owned = False  # does x hold a buffer created here (safe to overwrite)?
    if b is not None:
        assert isinstance(b, torch.Tensor) and b.ndim == 1
        assert 0 <= dim < x.ndim and b.shape[0] == x.shape[dim]
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.to(x.dtype).reshape(shape)
        owned = True

    # Without autograd, the steps after the first one overwrite the buffer that step created.
    inplace = not (torch.is_grad_enabled() and x.requires_grad)
    if act == 'lrelu' and owned and inplace:
        x = F.leaky_relu_(x, alpha)
    elif act != 'linear':
        x = spec.func(x, alpha)
        owned = True
    if gain != 1:
        x = x.mul_(gain) if owned and inplace else x * gain
        owned = True
    if clamp >= 0:
        x = x.clamp_(-clamp, clamp) if owned and inplace else x.clamp(-clamp, clamp)
    return x


# ----------------------------------------------------------------------------------------------
# Fused path. ``cfg`` = (dim, act, alpha, gain, clamp or None).


def _reduce_to_bias(dx, dim):
    return dx.sum([d for d in range(dx.ndim) if d != dim])


def _needs_x(cfg):
    """Smooth activations read their derivative at x + b; piecewise-linear ones at the output."""
    return activation_funcs[cfg[1]].has_2nd_grad


class _BiasActFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, cfg):
        dim, act, alpha, gain, clamp = cfg
        y = fused.load_kernels().bias_act(x, b, dim, act, alpha, gain, clamp)
        keep_y = act in ('relu', 'lrelu') or clamp is not None
        ctx.save_for_backward(x if _needs_x(cfg) else None, b, y if keep_y else None)
        ctx.cfg = cfg
        return y

    @staticmethod
    def backward(ctx, dy):
        x, b, y = ctx.saved_tensors
        dx = _BiasActGradFused.apply(dy, x, b, y, ctx.cfg)
        db = _reduce_to_bias(dx, ctx.cfg[0]) if b is not None and ctx.needs_input_grad[1] else None
        return dx, db, None


class _BiasActGradFused(torch.autograd.Function):
    """dx = dy * act'(x + b) * gain (zero where clamped): linear in dy, so its backward in dy is itself;
    its backward in x needs act'' (zero for the piecewise-linear activations)."""

    @staticmethod
    def forward(ctx, dy, x, b, y, cfg):
        dim, act, alpha, gain, clamp = cfg
        dx = fused.load_kernels().bias_act(dy, b if x is not None else None, dim, act, alpha, gain, clamp,
                                           grad=1, xref=x, yref=y)
        ctx.save_for_backward(dy if _needs_x(cfg) else None, x, b, y)
        ctx.cfg = cfg
        return dx

    @staticmethod
    def backward(ctx, d_dx):
        dy, x, b, y = ctx.saved_tensors
        dim, act, alpha, gain, clamp = ctx.cfg
        d_dy = _BiasActGradFused.apply(d_dx, x, b, y, ctx.cfg) if ctx.needs_input_grad[0] else None
        d_x = d_b = None
        if _needs_x(ctx.cfg) and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            d_x = fused.load_kernels().bias_act(d_dx, b, dim, act, alpha, gain, clamp, grad=2, xref=x, yref=y, dy=dy)
            if b is not None and ctx.needs_input_grad[2]:
                d_b = _reduce_to_bias(d_x, dim)
        return d_dy, d_x, d_b, None, None
