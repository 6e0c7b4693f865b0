"""Fused bias + activation + gain + clamp, with NVIDIA's ``bias_act`` call signature.

One pure PyTorch path serves every device and dtype. Each step is an ordinary autograd op, so
gradients of any order (R1, path length) come for free; ``impl`` is accepted for compatibility
with code written against NVIDIA's CUDA kernel and otherwise ignored.
"""
import numpy as np
import torch
import torch.nn.functional as F

import dnnlib

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
        impl:  ignored ('cuda' or 'ref'); the PyTorch path is used everywhere.
    """
    assert isinstance(x, torch.Tensor)
    assert impl in ('cuda', 'ref')
    spec = activation_funcs[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = float(-1 if clamp is None else clamp)

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
