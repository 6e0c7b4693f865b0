"""Teacher-student agreement: PSNR and SSIM between images generated from the same latents.

Both networks get the same z (one per seed, as ``generate.py``: ``training.image_synthesis``), the same label and constant noise,
and their outputs are quantised to uint8 exactly as image files and metrics see them. PSNR and SSIM
are then computed per image on [0, 255] and averaged over the images.

SSIM follows Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
evaluated at every position where the window fits inside the image ("valid", as the authors' MATLAB
code), per colour channel, then averaged over positions and channels.
"""
import numpy as np
import torch

import dnnlib
from training import image_synthesis

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_nchw_float64(images):
    """uint8/float NHWC (numpy or torch) -> float64 NCHW torch tensor on the CPU."""
    x = torch.as_tensor(np.array(images)).to(torch.float64)  # a copy: PNG arrays are read-only
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f'expected NHWC images, got shape {tuple(x.shape)}')
    return x.permute(0, 3, 1, 2)


def psnr(a, b, data_range=255.0):
    """Per-image PSNR in dB of two NHWC batches (inf where an image pair is identical)."""
    x, y = _as_nchw_float64(a), _as_nchw_float64(b)
    if x.shape != y.shape:
        raise ValueError(f'psnr: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}')
    mse = (x - y).square().flatten(1).mean(dim=1)
    with np.errstate(divide='ignore'):
        return (10 * np.log10(data_range ** 2 / mse.numpy())).astype(np.float64)


def gaussian_window(size=SSIM_WINDOW, sigma=SSIM_SIGMA):
    """Normalised 1-D Gaussian (float64) whose outer product is the SSIM window."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a, b, data_range=255.0, window=SSIM_WINDOW, sigma=SSIM_SIGMA):
    """Per-image SSIM of two NHWC batches (float64 numpy array of length N)."""
    x, y = _as_nchw_float64(a), _as_nchw_float64(b)
    if x.shape != y.shape:
        raise ValueError(f'ssim: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}')
    n, c, h, w = x.shape
    if h < window or w < window:
        raise ValueError(f'ssim: images of {h}x{w} px are smaller than the {window}x{window} window')
    g = gaussian_window(window, sigma)
    # The 2-D Gaussian is separable: filter rows, then columns, every channel on its own.
    gh = g.reshape(1, 1, 1, window).repeat(c, 1, 1, 1)
    gv = g.reshape(1, 1, window, 1).repeat(c, 1, 1, 1)

    def blur(t):
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(t, gh, groups=c), gv, groups=c)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1).numpy()


def _summary(values):
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return dict(mean=float(values.mean()), std=float(finite.std()) if finite.size else 0.0,
                min=float(values.min()), max=float(values.max()))


def image_agreement(reference, images):
    """PSNR and SSIM summaries (mean, std, min, max) of uint8 NHWC ``images`` against ``reference``."""
    return dnnlib.EasyDict(psnr=_summary(psnr(reference, images)), ssim=_summary(ssim(reference, images)),
                           num_images=int(len(images)))


def generate_for_seeds(G, seeds, noise_mode='const', truncation_psi=1.0, batch=8, device='cpu'):
    """uint8 NHWC images of ``G`` for ``seeds`` (the z of ``image_synthesis.latents_for_seeds``; classes cycle)."""
    return image_synthesis.generate_for_seeds(G, seeds, noise_mode=noise_mode, truncation_psi=truncation_psi,
                                              batch=batch, device=device)


def generator_agreement(teacher, student, seeds=range(64), noise_mode='const', batch=8, device='cpu'):
    """PSNR/SSIM of ``student`` against ``teacher`` on the same latents, labels and constant noise."""
    seeds = list(seeds)
    for attr in ('z_dim', 'c_dim', 'img_resolution', 'img_channels'):
        if getattr(teacher, attr) != getattr(student, attr):
            raise dnnlib.util.UserError(f'agreement: teacher and student differ in {attr} '
                                        f'({getattr(teacher, attr)} vs {getattr(student, attr)})')
    ref = generate_for_seeds(teacher, seeds, noise_mode=noise_mode, batch=batch, device=device)
    out = generate_for_seeds(student, seeds, noise_mode=noise_mode, batch=batch, device=device)
    return image_agreement(ref, out)
