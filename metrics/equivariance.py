"""StyleGAN3 equivariance metrics EQ-T (``eqt50k_int``), EQ-T_frac (``eqt50k_frac``) and EQ-R
(``eqr50k``) of Karras et al. 2021, "Alias-Free Generative Adversarial Networks", Appendix E.

Per sample: render the reference image with the identity input transform; render again with the
input transformed (integer-pixel or fractional translation up to 1/8 of the image, or a rotation up
to +-180 degrees); apply the same transformation to the reference image with an ideal band-limited
(windowed-sinc / Lanczos-3) resampler; compare inside the mask of pixels both images define. For
EQ-R both images are re-filtered by the rotation's band-limit filter ("pseudo-rotation") before
comparing. Sums of squared errors and mask sizes run over every sample (float64); the result is
``PSNR = 20 log10(2) - 10 log10(MSE)`` in dB for the [-1, 1] range. The generator must have
``G.synthesis.input.transform`` (StyleGAN3). Random draws per batch come from ``batch_rng``.
"""
import copy

import numpy as np
import torch

import dnnlib
from metrics import features
from metrics.sample_rng import batch_rng, random_labels, randomize_noise_buffers
from torch_utils.ops import upfirdn2d

# ---------------------------------------------------------------------------------------------
# Ideal resampling.


def sinc(x):
    y = (x * np.pi).abs()
    z = torch.sin(y) / y.clamp(1e-30, float('inf'))
    return torch.where(y < 1e-30, torch.ones_like(x), z)


def lanczos_window(x, a):
    x = x.abs() / a
    return torch.where(x < 1, sinc(x), torch.zeros_like(x))


def rotation_matrix(angle):
    """3x3 matrix rotating by ``angle`` radians (counter-clockwise in image coordinates)."""
    angle = torch.as_tensor(angle).to(torch.float32)
    mat = torch.eye(3, device=angle.device)
    mat[0, 0], mat[0, 1] = angle.cos(), angle.sin()
    mat[1, 0], mat[1, 1] = -angle.sin(), angle.cos()
    return mat


def apply_integer_translation(x, tx, ty):
    """Shift NCHW ``x`` by round(tx * W), round(ty * H) pixels; zeros and a zero mask where nothing lands."""
    _n, _c, h, w = x.shape
    ix = int(round(float(tx) * w))
    iy = int(round(float(ty) * h))
    z = torch.zeros_like(x)
    m = torch.zeros_like(x)
    if abs(ix) < w and abs(iy) < h:
        src = x[:, :, max(-iy, 0):h + min(-iy, 0), max(-ix, 0):w + min(-ix, 0)]
        z[:, :, max(iy, 0):h + min(iy, 0), max(ix, 0):w + min(ix, 0)] = src
        m[:, :, max(iy, 0):h + min(iy, 0), max(ix, 0):w + min(ix, 0)] = 1
    return z, m


def apply_fractional_translation(x, tx, ty, a=3):
    """Shift by (tx * W, ty * H) pixels with a separable Lanczos-``a`` filter; mask = pixels whose whole
    filter support lies inside the image."""
    _n, _c, h, w = x.shape
    tx = torch.as_tensor(tx * w).to(dtype=torch.float32, device=x.device)
    ty = torch.as_tensor(ty * h).to(dtype=torch.float32, device=x.device)
    ix, iy = int(tx.floor()), int(ty.floor())
    fx, fy = tx - ix, ty - iy
    b = a - 1

    z = torch.zeros_like(x)
    zx0, zy0 = max(ix - b, 0), max(iy - b, 0)
    zx1, zy1 = min(ix + a, 0) + w, min(iy + a, 0) + h
    if zx0 < zx1 and zy0 < zy1:
        taps = torch.arange(a * 2, device=x.device) - b
        filter_x = (sinc(taps - fx) * sinc((taps - fx) / a)).unsqueeze(0)
        filter_y = (sinc(taps - fy) * sinc((taps - fy) / a)).unsqueeze(1)
        y = upfirdn2d.filter2d(x, filter_x / filter_x.sum(), padding=[b, a, 0, 0])
        y = upfirdn2d.filter2d(y, filter_y / filter_y.sum(), padding=[0, 0, b, a])
        y = y[:, :, max(b - iy, 0):h + b + a + min(-iy - a, 0), max(b - ix, 0):w + b + a + min(-ix - a, 0)]
        z[:, :, zy0:zy1, zx0:zx1] = y

    m = torch.zeros_like(x)
    mx0, my0 = max(ix + a, 0), max(iy + a, 0)
    mx1, my1 = min(ix - b, 0) + w, min(iy - b, 0) + h
    if mx0 < mx1 and my0 < my1:
        m[:, :, my0:my1, mx0:mx1] = 1
    return z, m


def construct_affine_bandlimit_filter(mat, a=3, amax=16, aflt=64, up=4, cutoff_in=1, cutoff_out=1):
    """2-D FIR filter (upsampled by ``up``) that band-limits both before and after the affine ``mat``:
    the convolution of the input- and output-space sinc filters, windowed by the convolution of
    their Lanczos windows, normalised per polyphase component."""
    assert a <= amax < aflt
    mat = torch.as_tensor(mat).to(torch.float32)
    taps = ((torch.arange(aflt * up * 2 - 1, device=mat.device) + 1) / up - aflt).roll(1 - aflt * up)
    yi, xi = torch.meshgrid(taps, taps, indexing='ij')
    xo, yo = (torch.stack([xi, yi], dim=2) @ mat[:2, :2].t()).unbind(2)

    fi = sinc(xi * cutoff_in) * sinc(yi * cutoff_in)
    fo = sinc(xo * cutoff_out) * sinc(yo * cutoff_out)
    f = torch.fft.ifftn(torch.fft.fftn(fi) * torch.fft.fftn(fo)).real
    wi = lanczos_window(xi, a) * lanczos_window(yi, a)
    wo = lanczos_window(xo, a) * lanczos_window(yo, a)
    win = torch.fft.ifftn(torch.fft.fftn(wi) * torch.fft.fftn(wo)).real
    f = f * win

    c = (aflt - amax) * up
    f = f.roll([aflt * up - 1] * 2, dims=[0, 1])[c:-c, c:-c]
    f = torch.nn.functional.pad(f, [0, 1, 0, 1]).reshape(amax * 2, up, amax * 2, up)
    f = f / f.sum([0, 2], keepdim=True) / (up ** 2)
    return f.reshape(amax * 2 * up, amax * 2 * up)[:-1, :-1]


def apply_affine_transformation(x, mat, up=4, **filter_kwargs):
    """Resample NCHW ``x`` under the affine ``mat``: band-limited upsampling by ``up``, then bilinear
    sampling; the mask marks output pixels whose source lies away from the border."""
    _n, _c, h, w = x.shape
    mat = torch.as_tensor(mat).to(dtype=torch.float32, device=x.device)
    f = construct_affine_bandlimit_filter(mat, up=up, **filter_kwargs)
    assert f.ndim == 2 and f.shape[0] == f.shape[1] and f.shape[0] % 2 == 1
    p = f.shape[0] // 2

    theta = mat.inverse()
    theta[:2, 2] *= 2
    theta[0, 2] += 1 / up / w
    theta[1, 2] += 1 / up / h
    theta[0, :] *= w / (w + p / up * 2)
    theta[1, :] *= h / (h + p / up * 2)
    theta = theta[:2, :3].unsqueeze(0).repeat([x.shape[0], 1, 1])
    g = torch.nn.functional.affine_grid(theta, x.shape, align_corners=False)

    y = upfirdn2d.upsample2d(x=x, f=f, up=up, padding=p)
    z = torch.nn.functional.grid_sample(y, g, mode='bilinear', padding_mode='zeros', align_corners=False)
    m = torch.zeros_like(y)
    c = p * 2 + 1
    m[:, :, c:-c, c:-c] = 1
    m = torch.nn.functional.grid_sample(m, g, mode='nearest', padding_mode='zeros', align_corners=False)
    return z, m


def apply_fractional_rotation(x, angle, a=3, **filter_kwargs):
    angle = torch.as_tensor(angle).to(dtype=torch.float32, device=x.device)
    return apply_affine_transformation(x, rotation_matrix(angle), a=a, amax=a * 2, **filter_kwargs)


def apply_fractional_pseudo_rotation(x, angle, a=3, **filter_kwargs):
    """Filter (without moving) by the band-limit filter of the rotation, as the rotated image was."""
    angle = torch.as_tensor(angle).to(dtype=torch.float32, device=x.device)
    f = construct_affine_bandlimit_filter(rotation_matrix(-angle), a=a, amax=a * 2, up=1, **filter_kwargs)
    y = upfirdn2d.filter2d(x=x, f=f)
    m = torch.zeros_like(y)
    c = f.shape[0] // 2
    m[:, :, c:-c, c:-c] = 1
    return y, m

# ---------------------------------------------------------------------------------------------


def psnr_from_sums(sq_err_sum, mask_sum):
    """dB for the [-1, 1] range (peak-to-peak 2) from float64 sums; inf for a perfect match."""
    mse = np.float64(sq_err_sum) / np.float64(mask_sum)
    with np.errstate(divide='ignore'):
        return float(np.log10(2) * 20 - np.log10(mse) * 10)


def draw_batch(G, gen, batch_size, translate_max=0.125, rotate_max=1):
    """One batch's draws in a fixed order: noise buffers, z, integer t, fractional t, angle."""
    randomize_noise_buffers(G, gen)
    z = torch.randn([batch_size, G.z_dim], generator=gen)
    t_int = (torch.rand(2, generator=gen) * 2 - 1) * translate_max
    t_int = (t_int * G.img_resolution).round() / G.img_resolution
    t_frac = (torch.rand(2, generator=gen) * 2 - 1) * translate_max
    angle = (torch.rand([], generator=gen) * 2 - 1) * (rotate_max * np.pi)
    return dnnlib.EasyDict(z=z, t_int=t_int, t_frac=t_frac, angle=angle)


@torch.no_grad()
def compute_equivariance(G, *, num_samples, batch_size=4, kinds=('int',), translate_max=0.125, rotate_max=1,
                         dataset=None, G_kwargs=None, seed=0, num_gpus=1, rank=0, device='cpu', progress=None):
    """PSNRs in dB, one per entry of ``kinds`` ('int', 'frac', 'rot'), over ``num_samples`` samples."""
    device = torch.device(device)
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    transform = getattr(getattr(getattr(G, 'synthesis', None), 'input', None), 'transform', None)
    if not isinstance(transform, torch.Tensor):
        raise dnnlib.util.UserError('equivariance metrics: the generator takes no input transform '
                                    '(G.synthesis.input.transform); they apply to StyleGAN3 generators only')
    G_kwargs = dict(G_kwargs or {}, force_fp32=True)
    eye = torch.eye(3, device=device)
    sums = torch.zeros([len(kinds), 2], dtype=torch.float64, device=device)
    monitor = features.Progress('eq sampling', num_samples, progress, rank)
    num_batches = -(-num_samples // batch_size)
    for step in range(-(-num_batches // num_gpus)):
        b = step * num_gpus + rank
        if b >= num_batches:
            break  # nothing left for this process; the all_reduce below adds zeros
        d = draw_batch(G, batch_rng(seed, b), batch_size, translate_max, rotate_max)
        n = min(batch_size, num_samples - b * batch_size)  # the last batch may be partial
        ws = G.mapping(z=d.z[:n].to(device), c=random_labels(dataset, G.c_dim, seed, b, batch_size)[:n].to(device))
        transform[:] = eye
        orig = G.synthesis(ws=ws, noise_mode='const', **G_kwargs)
        for k, kind in enumerate(kinds):
            if kind in ('int', 'frac'):
                t = (d.t_int if kind == 'int' else d.t_frac).to(device)
                transform[:] = eye
                transform[:2, 2] = -t
                img = G.synthesis(ws=ws, noise_mode='const', **G_kwargs)
                shift = apply_integer_translation if kind == 'int' else apply_fractional_translation
                ref, mask = shift(orig, t[0], t[1])
            elif kind == 'rot':
                angle = d.angle.to(device)
                transform[:] = rotation_matrix(-angle)
                img = G.synthesis(ws=ws, noise_mode='const', **G_kwargs)
                ref, ref_mask = apply_fractional_rotation(orig, angle)
                img, img_mask = apply_fractional_pseudo_rotation(img, angle)
                mask = ref_mask * img_mask
            else:
                raise ValueError(f'unknown equivariance kind {kind!r}')
            sums[k, 0] += ((ref - img).square() * mask).to(torch.float64).sum()
            sums[k, 1] += mask.to(torch.float64).sum()
        monitor.update(min((b + 1) * batch_size, num_samples))
    if num_gpus > 1:
        torch.distributed.all_reduce(sums)
    sums = sums.cpu().numpy()
    return tuple(psnr_from_sums(s[0], s[1]) for s in sums)
