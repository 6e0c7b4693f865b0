"""Acceptance checks of the fused ops against the PyTorch reference (used by tests and bench/gpu_check.py).

Each check is a named case; ``run_case`` returns a result row (passed, error, tolerance, note).
Every op runs in three forms against ``impl='ref'``:
  fp32 / fp64   forward, gradient (x and bias) and gradient of gradient (in x, bias and the incoming
                gradient), max abs error <= tol * max(1, max |reference|);
  gradcheck     ``torch.autograd.gradcheck`` and ``gradgradcheck`` of the fused op in float64;
  fp16          the fused op in float16 against the fused op in float32 on the same (fp16-rounded)
                inputs: relative error ||a - b|| / ||b|| <= 1e-2 for the output and every gradient
                (a norm, because a handful of pixels whose leaky-ReLU branch or clamp flips under
                fp16 rounding legitimately differ by a large amount).
The same cases run on a GPU (compiled kernels) or on CPU tensors under ``TRITON_INTERPRET=1``.
"""
import dataclasses
import functools
import json
import sys

import numpy as np
import torch

from . import bias_act, filtered_lrelu, upfirdn2d

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
FP16_REL_TOL = 1e-2


@dataclasses.dataclass
class Case:
    name: str
    op: str
    kind: str             # 'compare' (fp32/fp64 vs ref), 'gradcheck', 'fp16'
    make: object          # (device, dtype, generator) -> (fn(x, b, impl), x, b or None)
    dtype: torch.dtype = torch.float32


def _randn(shape, gen, device, dtype):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

# ----------------------------------------------------------------------------------------------
# The op configurations StyleGAN2/3 use, at small sizes.


def _bias_act_maker(act, clamp, shape):
    def make(device, dtype, gen):
        x = _randn(shape, gen, device, dtype)
        b = _randn([shape[1]], gen, device, dtype)
        fn = lambda x, b, impl: bias_act.bias_act(x, b, act=act, clamp=clamp, impl=impl)  # noqa: E731
        return fn, x, b
    return make


def _upfirdn_maker(up, down, taps, separable, padding, flip, gain, shape):
    def make(device, dtype, gen):
        f = upfirdn2d.setup_filter(taps, device=device, separable=separable)
        x = _randn(shape, gen, device, dtype)
        fn = lambda x, b, impl: upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding,  # noqa: E731
                                                    flip_filter=flip, gain=gain, impl=impl)
        return fn, x, None
    return make


def _resample_maker(kind, shape):
    """The wrappers StyleGAN2 calls: upsample2d / downsample2d / filter2d with [1, 3, 3, 1]."""
    def make(device, dtype, gen):
        f = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
        x = _randn(shape, gen, device, dtype)
        op = {'upsample2d': upfirdn2d.upsample2d, 'downsample2d': upfirdn2d.downsample2d,
              'filter2d': upfirdn2d.filter2d}[kind]
        fn = lambda x, b, impl: op(x, f, impl=impl)  # noqa: E731
        return fn, x, None
    return make


def _lowpass(taps, cutoff):
    """A windowed-sinc low-pass (as StyleGAN3 designs them), normalised to unit DC gain."""
    n = np.arange(taps) - (taps - 1) / 2
    f = np.sinc(2 * cutoff * n) * np.kaiser(taps, 4.0)
    return f / f.sum()


def _filtered_lrelu_maker(up, down, taps, separable, clamp, shape):
    def make(device, dtype, gen):
        fu = upfirdn2d.setup_filter(_lowpass(taps * up, 0.5 / up), device=device, separable=separable) if up > 1 else None
        fd = upfirdn2d.setup_filter(_lowpass(taps * down, 0.5 / down), device=device, separable=separable) \
            if down > 1 else None
        fu_w = 1 if fu is None else fu.shape[-1]
        fd_w = 1 if fd is None else fd.shape[-1]
        # StyleGAN3's padding: the intermediate covers the output plus the down filter's support.
        pad_total = (shape[3] - 1) * up + 1 - shape[3] * up + fu_w - 1 + fd_w - 1 + (down - 1) + 2 * up
        pad = [pad_total // 2, pad_total - pad_total // 2, pad_total // 2, pad_total - pad_total // 2]
        x = _randn(shape, gen, device, dtype)
        b = _randn([shape[1]], gen, device, dtype)
        fn = lambda x, b, impl: filtered_lrelu.filtered_lrelu(x, fu, fd, b, up=up, down=down,  # noqa: E731
                                                              padding=pad, gain=np.sqrt(2), slope=0.2,
                                                              clamp=clamp, impl=impl)
        return fn, x, b
    return make


@functools.lru_cache(maxsize=2)
def cases(tiny=True):
    """Every check; ``tiny`` keeps shapes small enough for the Triton interpreter."""
    s = [2, 3, 5, 6] if tiny else [4, 32, 32, 32]  # compare and fp16 cases
    g = [1, 2, 3, 4]  # gradcheck shapes stay small everywhere (float64 finite differences)
    out = []

    def add(name, op, make, kinds):
        for kind, dtype in kinds:
            out.append(Case(f'{op}/{name}/{kind}', op, 'compare' if kind in ('fp32', 'fp64') else kind,
                            make, dtype))

    full = [('fp32', torch.float32), ('fp16', torch.float16), ('gradcheck', torch.float64)]
    light = [('fp32', torch.float32)]
    for act in ('linear', 'lrelu', 'relu', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus', 'swish'):
        big = act in ('linear', 'lrelu', 'tanh', 'swish')
        add(f'{act}', 'bias_act', _bias_act_maker(act, None, s), full if big else light)
        add(f'{act}-clamp', 'bias_act', _bias_act_maker(act, 0.7, s), full if act == 'lrelu' else light)
    for up, down in ((1, 1), (2, 1), (4, 1), (1, 2), (1, 4), (2, 2), (4, 4)):
        for separable in (False, True):
            taps = [1, 3, 3, 1] if not separable else [1, 2, 5, 2, 1]
            pad = [2, 1, 2, 1] if up > 1 else [1, 1, 1, 1]
            make = _upfirdn_maker(up, down, taps, separable, pad, False, 1.5, s)
            name = f'up{up}-down{down}-{"sep" if separable else "2d"}'
            add(name, 'upfirdn2d', make, full[:2] if (up, down) in ((2, 1), (1, 2)) else light)
    add('crop-flip', 'upfirdn2d', _upfirdn_maker(2, 1, [1, 3, 3, 1], False, [-1, 2, 3, -2], True, 1, s), light)
    for kind in ('upsample2d', 'downsample2d', 'filter2d'):
        add(kind, 'upfirdn2d', _resample_maker(kind, s), light)
    for up, down in ((2, 1), (1, 2), (2, 2)):
        add(f'up{up}-down{down}-gradcheck', 'upfirdn2d',
            _upfirdn_maker(up, down, [1, 3, 3, 1], False, [2, 1, 2, 1], False, 1, g), [('gradcheck', torch.float64)])
    # StyleGAN3: up 4 / down 2 where the sampling rate doubles, 2 / 2 elsewhere, 1 / 1 or 2 / 1 at
    # the critically sampled end; radial (2-D) filters in the R config.
    fs = [1, 2, 5, 6] if tiny else s
    for up, down in ((1, 1), (2, 1), (1, 2), (2, 2), (4, 2), (2, 4), (4, 4)):
        for separable in (True, False):
            if not separable and (up, down) not in ((2, 2), (4, 2)):
                continue
            for clamp in (None, 0.7):
                name = f'up{up}-down{down}-{"sep" if separable else "2d"}{"-clamp" if clamp else ""}'
                main = (up, down) == (2, 2) and separable and clamp
                add(name, 'filtered_lrelu', _filtered_lrelu_maker(up, down, 3, separable, clamp, fs),
                    full[:2] if main else light)
    for separable in (True, False):
        add(f'up2-down2-{"sep" if separable else "2d"}-clamp-gradcheck', 'filtered_lrelu',
            _filtered_lrelu_maker(2, 2, 2, separable, 0.7, g), [('gradcheck', torch.float64)])
    return tuple(out)

# ----------------------------------------------------------------------------------------------
# Running a case.


def _forward_and_grads(fn, x, b, impl, w=None, w2=None):
    """y, then dL/dx, dL/db of L = <y, w>, then the gradients of <dL/dx, w2x> + <dL/db, w2b> in x, b and w."""
    x = x.detach().requires_grad_(True)
    b = None if b is None else b.detach().requires_grad_(True)
    y = fn(x, b, impl)
    w = w.detach().requires_grad_(True)
    inputs = [x] if b is None else [x, b]
    grads = torch.autograd.grad((y * w).sum(), inputs, create_graph=True)
    second = sum((g * v).sum() for g, v in zip(grads, w2))
    gg = torch.autograd.grad(second, inputs + [w], allow_unused=True)
    gg = [torch.zeros_like(t) if g is None else g for g, t in zip(gg, inputs + [w])]
    return [y.detach()] + [g.detach() for g in grads] + [g.detach() for g in gg]


def _labels(b):
    return ['y', 'dx'] + ([] if b is None else ['db']) + ['ddx'] + ([] if b is None else ['ddb']) + ['ddy']


def run_case(case, device):
    """Run one check on ``device``; returns a dict (name, passed, error, tol, note)."""
    gen = torch.Generator().manual_seed(sum(map(ord, case.name)))
    if case.kind == 'gradcheck':
        fn, x, b = case.make(device, torch.float64, gen)
        inputs = (x.requires_grad_(True),) + (() if b is None else (b.requires_grad_(True),))
        f = lambda *t: fn(t[0], t[1] if len(t) > 1 else None, 'triton')  # noqa: E731
        ok1 = torch.autograd.gradcheck(f, inputs, fast_mode=True)
        ok2 = torch.autograd.gradgradcheck(f, inputs, fast_mode=True)
        return dict(name=case.name, passed=bool(ok1 and ok2), error=None, tol=None, note='gradcheck+gradgradcheck fp64')

    dtype = case.dtype if case.kind == 'compare' else torch.float16
    fn, x, b = case.make(device, dtype, gen)
    with torch.no_grad():
        y_shape = fn(x, b, 'ref' if dtype != torch.float16 else 'triton').shape
    w = _randn(y_shape, gen, device, dtype)
    w2 = [_randn(x.shape, gen, device, dtype)] + ([] if b is None else [_randn(b.shape, gen, device, dtype)])
    if case.kind == 'compare':
        ref = _forward_and_grads(fn, x, b, 'ref', w, w2)
        out = _forward_and_grads(fn, x, b, 'triton', w, w2)
        tol = TOL[dtype]
        errs = [(a - r).abs().max().item() / max(1.0, r.abs().max().item()) for a, r in zip(out, ref)]
        worst = int(np.argmax(errs))
        return dict(name=case.name, passed=bool(max(errs) <= tol), error=max(errs), tol=tol,
                    note=f'max abs err / max(1, |ref|), worst: {_labels(b)[worst]}')
    # fp16: the fused op in float16 against the fused op in float32 on the same inputs.
    up = lambda t: None if t is None else t.float()  # noqa: E731
    out16 = _forward_and_grads(fn, x, b, 'triton', w, w2)
    out32 = _forward_and_grads(fn, up(x), up(b), 'triton', up(w), [up(t) for t in w2])
    errs = [((a.float() - r).norm() / r.norm().clamp_min(1e-12)).item() for a, r in zip(out16, out32)]
    dtypes_ok = all(t.dtype == torch.float16 for t in out16)
    worst = int(np.argmax(errs))
    return dict(name=case.name, passed=bool(max(errs) <= FP16_REL_TOL and dtypes_ok), error=max(errs),
                tol=FP16_REL_TOL, note=f'||fp16 - fp32|| / ||fp32||, worst: {_labels(b)[worst]}'
                + ('' if dtypes_ok else ', NOT fp16 outputs'))


def check_saved_memory(device, tiny=True):
    """The fused filtered_lrelu keeps 2 bits per intermediate pixel (the sign map) and nothing in float;
    the intermediate's size is that of the largest tensor the reference keeps."""
    shape = [2, 3, 5, 6] if tiny else [4, 64, 64, 64]
    gen = torch.Generator().manual_seed(0)
    fn, x, b = _filtered_lrelu_maker(2, 2, 3, True, 0.7, shape)(device, torch.float32, gen)
    fused_bytes, fused_dtypes, _ = saved_for_backward(lambda x, b: fn(x, b, 'triton'), x, b)
    ref_bytes, _, ref_largest = saved_for_backward(lambda x, b: fn(x, b, 'ref'), x, b)
    ok = fused_dtypes == ['torch.uint8'] and fused_bytes == (ref_largest + 3) // 4
    return dict(name='filtered_lrelu/saved-for-backward', passed=bool(ok), error=fused_bytes, tol=ref_bytes,
                note=f'bytes kept for backward: fused {fused_bytes} ({", ".join(fused_dtypes)}), ref {ref_bytes}; '
                     f'intermediate {ref_largest} pixels')


def run_all(device, tiny=True, names=None):
    # TF32 would put the reference's convolutions ~1e-3 off on a GPU: compare in true float32.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _run_all(device, tiny, names)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _run_all(device, tiny, names):
    rows = []
    if names is None or 'filtered_lrelu/saved-for-backward' in names:
        rows.append(check_saved_memory(device, tiny))
    for case in cases(tiny):
        if names is not None and case.name not in names:
            continue
        try:
            rows.append(run_case(case, device))
        except Exception as e:  # a failing case is a row in the table, not the end of the check
            rows.append(dict(name=case.name, passed=False, error=None, tol=None, note=f'{type(e).__name__}: {e}'))
    return rows


def saved_for_backward(fn, x, b):
    """(total bytes of the tensors autograd keeps for backward, their dtypes, the largest one's numel)
    for one forward of ``fn``."""
    saved = []

    def pack(t):
        saved.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x.detach().requires_grad_(True), None if b is None else b.detach().requires_grad_(True))
    unique = {(t.data_ptr(), t.dtype, tuple(t.shape)): t for t in saved}
    return (sum(t.numel() * t.element_size() for t in unique.values()), sorted({str(t.dtype) for t in unique.values()}),
            max((t.numel() for t in unique.values()), default=0))


def main():
    """``python -m torch_utils.ops.fused_checks DEVICE`` prints the rows as JSON (tests use it)."""
    device = sys.argv[1] if len(sys.argv) > 1 else 'cpu'
    print(json.dumps(run_all(device, tiny=True)))


if __name__ == '__main__':
    main()
