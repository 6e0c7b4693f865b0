"""Triton kernels behind the fused ``bias_act``, ``upfirdn2d`` and ``filtered_lrelu``.

Imported only through ``fused.load_kernels()``. Two kernels:

- ``_upfirdn_pass``: one upsample + pad + FIR-correlate + downsample pass over [N*C, H, W] planes,
  computed directly per output pixel (polyphase: only the taps that meet a real input sample are
  visited, so the zero-inserted image never exists). Optional prologue: add a per-channel bias
  to the input samples. Optional epilogue: leaky ReLU * gain, clamp, and write a 2-bit-per-pixel
  code (0 negative, 1 positive, 2 clamped), four to a byte, into a sign map; or read such a map and
  scale by the leaky ReLU's derivative (the backward of the activation without its input).
- ``_bias_act``: elementwise bias + activation * gain + clamp, its first derivative times an
  incoming gradient, and its second derivative times two incoming tensors.

Accumulation is float32 (float64 for float64 tensors); results are stored in the tensor's dtype.
Only long-standing Triton APIs are used (``tl.load``/``tl.store``/``tl.where``/``tl.static_range``/
``tl.reshape``/``tl.sum``), so the same source runs on Triton 3.x for a GPU and under
``TRITON_INTERPRET=1`` on CPU tensors.
"""
import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get('TRITON_INTERPRET', '0') == '1'

# Activation ids of ``_bias_act`` (the keys of bias_act.activation_funcs).
ACT_IDS = {'linear': 0, 'relu': 1, 'lrelu': 2, 'tanh': 3, 'sigmoid': 4, 'elu': 5, 'selu': 6, 'softplus': 7, 'swish': 8}

# Pixels per program. The interpreter's cost is per program and per op, not per pixel: bigger blocks.
_BLOCK = 1024 if INTERPRETED else 256

_params_cache = {}


def _params(x, *values):
    """The scalars a kernel needs, as a cached tensor on ``x``'s device (float64 for float64 input,
    so that a float64 call matches the float64 reference to the last bits)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    values = tuple(-1.0 if v is None else float(v) for v in values)
    key = (values, x.device, dtype)
    t = _params_cache.get(key)
    if t is None:
        if len(_params_cache) > 4096:
            _params_cache.clear()
        t = _params_cache[key] = torch.tensor(values, dtype=dtype, device=x.device)
    return t

# ----------------------------------------------------------------------------------------------
# upfirdn pass.


@triton.jit
def _upfirdn_pass(x_ptr, f_ptr, y_ptr, b_ptr, s_ptr,
                  TOTAL, C, H, W, OH, OW, PADX0, PADY0, OFFX, OFFY, p_ptr,
                  UPX: tl.constexpr, UPY: tl.constexpr, DOWNX: tl.constexpr, DOWNY: tl.constexpr,
                  KW: tl.constexpr, KH: tl.constexpr, TX: tl.constexpr, TY: tl.constexpr,
                  HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr, HAS_CLAMP: tl.constexpr,
                  IS_F64: tl.constexpr, BIG_INDEX: tl.constexpr, BLOCK: tl.constexpr):
    # One flat index over all planes' output pixels. Output pixel (oy, ox) is sum_k f[k] * P[o * down + k],
    # where the padded, zero-inserted image P holds input sample i at i * up + pad0.
    pid = tl.program_id(0)
    if BIG_INDEX:  # int64 only where needed: 64-bit division is slow on a GPU
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    omask = offs < TOTAL
    plane = offs // (OH * OW)
    pix = offs % (OH * OW)
    oy = pix // OW
    ox = pix % OW
    bx = ox * DOWNX - PADX0
    by = oy * DOWNY - PADY0
    # First tap meeting a real sample: k = (pad0 - o * down) mod up. OFF* (multiples of up) keep
    # the operands of // and % non-negative, where C and Python rounding agree.
    kx0 = (UPX - (bx + OFFX) % UPX) % UPX
    ky0 = (UPY - (by + OFFY) % UPY) % UPY
    x_plane = x_ptr + plane * H * W
    if IS_F64:
        acc = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + plane % C, mask=omask, other=0.0).to(acc.dtype)
    for j in tl.static_range(TY):
        ky = ky0 + j * UPY
        iy = (by + ky + OFFY) // UPY - OFFY // UPY
        my = omask & (ky < KH) & (iy >= 0) & (iy < H)
        for i in tl.static_range(TX):
            kx = kx0 + i * UPX
            ix = (bx + kx + OFFX) // UPX - OFFX // UPX
            m = my & (kx < KW) & (ix >= 0) & (ix < W)
            xv = tl.load(x_plane + iy * W + ix, mask=m, other=0.0).to(acc.dtype)
            if HAS_BIAS:
                xv = tl.where(m, xv + bias, 0.0)
            fv = tl.load(f_ptr + ky * KW + kx, mask=m, other=0.0).to(acc.dtype)
            acc += xv * fv
    out_offs = offs
    if EPILOGUE != 0:  # [slope, gain, clamp] in the accumulator's precision
        slope = tl.load(p_ptr).to(acc.dtype)
        act_gain = tl.load(p_ptr + 1).to(acc.dtype)
        clamp = tl.load(p_ptr + 2).to(acc.dtype)
    if EPILOGUE == 1:  # leaky ReLU * gain, clamp; remember which branch each pixel took
        pos = acc > 0
        acc = tl.where(pos, acc, acc * slope) * act_gain
        code = tl.where(pos, 1, 0)
        if HAS_CLAMP:
            code = tl.where((acc > clamp) | (acc < -clamp), 2, code)
            acc = tl.minimum(tl.maximum(acc, -clamp), clamp)
        # Four 2-bit codes per byte, pixel 4k + j in bits 2j..2j+1 of byte k (blocks are 4-aligned).
        packed = tl.sum(tl.reshape(code, [BLOCK // 4, 4]) << (tl.arange(0, 4) * 2)[None, :], axis=1)
        byte_offs = pid * (BLOCK // 4) + tl.arange(0, BLOCK // 4)
        tl.store(s_ptr + byte_offs, packed.to(tl.uint8), mask=byte_offs < (TOTAL + 3) // 4)
    if EPILOGUE == 2:  # times the derivative of that activation, read from the sign map
        byte = tl.load(s_ptr + out_offs // 4, mask=omask, other=0).to(tl.int32)
        code = (byte >> ((out_offs % 4) * 2).to(tl.int32)) & 3
        acc = acc * tl.where(code == 1, act_gain, tl.where(code == 0, act_gain * slope, 0.0))
    tl.store(y_ptr + out_offs, acc.to(y_ptr.dtype.element_ty), mask=omask)


def upfirdn_pass(x, corr, up, down, pad0, out_size, bias=None, epilogue=0, signs=None, slope=0.2, act_gain=1.0,
                 clamp=None):
    """One pass on [N, C, H, W] ``x`` with the 2-D correlation kernel ``corr`` [KH, KW] (gain included).

    ``up``, ``down``, ``pad0`` and ``out_size`` are (x, y) pairs. ``epilogue``: 0 none, 1 leaky ReLU
    writing a new sign map (returned as second value: uint8, 2 bits per output pixel), 2 scale by the
    derivative read from ``signs``.
    """
    (upx, upy), (downx, downy), (px0, py0), (ow, oh) = up, down, pad0, out_size
    n, c, h, w = x.shape
    x = x.contiguous()
    kh, kw = corr.shape
    corr = corr.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    y = torch.empty([n, c, oh, ow], dtype=x.dtype, device=x.device)
    packed_bytes = (n * c * oh * ow + 3) // 4
    if epilogue == 1:
        signs = torch.empty([packed_bytes], dtype=torch.uint8, device=x.device)
    elif epilogue == 2:
        assert signs is not None and signs.shape == (packed_bytes,) and signs.dtype == torch.uint8
        signs = signs.contiguous()
    if n * c == 0 or oh * ow == 0:
        return (y, signs) if epilogue == 1 else y
    offx = upx * ((abs(px0) + kw + downx * ow) // upx + 1)
    offy = upy * ((abs(py0) + kh + downy * oh) // upy + 1)
    b = bias.contiguous() if bias is not None else x
    s = signs if epilogue else x
    params = _params(x, slope, act_gain, clamp)
    total = n * c * oh * ow
    grid = (triton.cdiv(total, _BLOCK),)
    _upfirdn_pass[grid](x, corr, y, b, s, total, c, h, w, oh, ow, px0, py0, offx, offy, params,
                        UPX=upx, UPY=upy, DOWNX=downx, DOWNY=downy, KW=kw, KH=kh,
                        TX=triton.cdiv(kw, upx), TY=triton.cdiv(kh, upy),
                        HAS_BIAS=bias is not None, EPILOGUE=epilogue, HAS_CLAMP=clamp is not None,
                        IS_F64=x.dtype == torch.float64, BIG_INDEX=max(x.numel(), total) >= 2 ** 31 - _BLOCK,
                        BLOCK=_BLOCK)
    return (y, signs) if epilogue == 1 else y

# ----------------------------------------------------------------------------------------------
# bias_act.


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _bias_act(a_ptr, b_ptr, xref_ptr, yref_ptr, dy_ptr, out_ptr, numel, C, INNER, p_ptr,
              ACT: tl.constexpr, GRAD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
              IS_F64: tl.constexpr, BIG_INDEX: tl.constexpr, BLOCK: tl.constexpr):
    # GRAD 0: out = clamp(act(a + b) * gain). GRAD 1: out = a * d/dx of that, at x = xref (y = yref).
    # GRAD 2: out = a * dy * d2/dx2 of it. Piecewise-linear activations read their branch from yref.
    pid = tl.program_id(0)
    if BIG_INDEX:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    if IS_F64:
        a = tl.load(a_ptr + offs, mask=m, other=0.0).to(tl.float64)
    else:
        a = tl.load(a_ptr + offs, mask=m, other=0.0).to(tl.float32)
    alpha = tl.load(p_ptr).to(a.dtype)  # [alpha, gain, clamp] in the accumulator's precision
    gain = tl.load(p_ptr + 1).to(a.dtype)
    clamp = tl.load(p_ptr + 2).to(a.dtype)
    if GRAD == 0:
        z = a
    else:
        z = tl.load(xref_ptr + offs, mask=m, other=0.0).to(a.dtype)
    if HAS_BIAS:
        z = z + tl.load(b_ptr + (offs // INNER) % C, mask=m, other=0.0).to(a.dtype)
    if GRAD == 0:
        if ACT == 0:
            v = z
        elif ACT == 1:
            v = tl.where(z > 0, z, 0.0)
        elif ACT == 2:
            v = tl.where(z > 0, z, z * alpha)
        elif ACT == 3:
            v = 2.0 * _sigmoid(2.0 * z) - 1.0
        elif ACT == 4:
            v = _sigmoid(z)
        elif ACT == 5:
            v = tl.where(z > 0, z, tl.exp(z) - 1.0)
        elif ACT == 6:
            v = 1.0507009873554805 * tl.where(z > 0, z, 1.6732632423543772 * (tl.exp(z) - 1.0))
        elif ACT == 7:
            v = tl.where(z > 20.0, z, tl.log(1.0 + tl.exp(tl.minimum(z, 20.0))))
        else:
            v = z * _sigmoid(z)
        v = v * gain
        if HAS_CLAMP:
            v = tl.minimum(tl.maximum(v, -clamp), clamp)
        tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=m)
    else:
        if ACT <= 2 or HAS_CLAMP:
            y = tl.load(yref_ptr + offs, mask=m, other=0.0).to(a.dtype)
        if GRAD == 1:
            if ACT == 0:
                d = z * 0.0 + 1.0
            elif ACT == 1:
                d = tl.where(y > 0, 1.0, 0.0)
            elif ACT == 2:
                d = tl.where(y > 0, 1.0, alpha)
            elif ACT == 3:
                t = 2.0 * _sigmoid(2.0 * z) - 1.0
                d = 1.0 - t * t
            elif ACT == 4:
                s = _sigmoid(z)
                d = s * (1.0 - s)
            elif ACT == 5:
                d = tl.where(z > 0, 1.0, tl.exp(z))
            elif ACT == 6:
                d = 1.0507009873554805 * tl.where(z > 0, 1.0, 1.6732632423543772 * tl.exp(z))
            elif ACT == 7:
                d = _sigmoid(z)
            else:
                s = _sigmoid(z)
                d = s * (1.0 + z * (1.0 - s))
            v = a * d * gain
        else:
            dy = tl.load(dy_ptr + offs, mask=m, other=0.0).to(a.dtype)
            if ACT <= 2:
                d2 = z * 0.0
            elif ACT == 3:
                t = 2.0 * _sigmoid(2.0 * z) - 1.0
                d2 = -2.0 * t * (1.0 - t * t)
            elif ACT == 4:
                s = _sigmoid(z)
                d2 = s * (1.0 - s) * (1.0 - 2.0 * s)
            elif ACT == 5:
                d2 = tl.where(z > 0, 0.0, tl.exp(z))
            elif ACT == 6:
                d2 = tl.where(z > 0, 0.0, 1.0507009873554805 * 1.6732632423543772 * tl.exp(z))
            elif ACT == 7:
                s = _sigmoid(z)
                d2 = s * (1.0 - s)
            else:
                s = _sigmoid(z)
                d2 = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
            v = a * dy * d2 * gain
        if HAS_CLAMP:  # no gradient where the output was clamped
            v = tl.where((y < clamp) & (y > -clamp), v, 0.0)
        tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=m)


def bias_act(a, b, dim, act, alpha, gain, clamp, grad=0, xref=None, yref=None, dy=None):
    """Launch ``_bias_act`` on contiguous tensors of ``a``'s shape; returns a new tensor."""
    a = a.contiguous()
    out = torch.empty_like(a, memory_format=torch.contiguous_format)
    numel = a.numel()
    if numel == 0:
        return out
    c = a.shape[dim] if b is not None else 1
    inner = 1
    for s in a.shape[dim + 1:]:
        inner *= s
    b_arg = b.contiguous() if b is not None else a
    xref = xref.contiguous() if xref is not None else a
    yref = yref.contiguous() if yref is not None else a
    dy = dy.contiguous() if dy is not None else a
    params = _params(a, alpha, gain, clamp)
    grid = (triton.cdiv(numel, _BLOCK),)
    _bias_act[grid](a, b_arg, xref, yref, dy, out, numel, c, inner, params,
                    ACT=ACT_IDS[act], GRAD=grad, HAS_BIAS=b is not None, HAS_CLAMP=clamp is not None,
                    IS_F64=a.dtype == torch.float64, BIG_INDEX=numel >= 2 ** 31 - _BLOCK, BLOCK=_BLOCK)
    return out
