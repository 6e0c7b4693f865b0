"""Adaptive discriminator augmentation (ADA): the augmentation pipeline of StyleGAN2-ADA.

``AugmentPipe`` takes NVIDIA's constructor arguments and keeps its buffer names (``p``,
``Hz_geom``, ``Hz_fbank``), so official pickles map onto it. Each augmentation is applied to an
image with probability ``strength * p``; the random draws happen in NVIDIA's order, so for the
same torch RNG state the same transforms are chosen.

Geometric transforms (flip, 90-degree rotations, integer and fractional translation, scaling,
rotation, anisotropy) are combined into one inverse matrix per image and executed as: reflect-pad,
2x upsample with the sym6 wavelet, bilinear ``grid_sample``, 2x downsample with the mirrored
filter. Colour transforms (brightness, contrast, luma flip, hue, saturation) are one 4x4 matrix
per image. Image-space filtering, additive noise and cutout complete the set.

A stage whose transforms were chosen for no image in the batch is skipped, so ``p = 0`` returns
the input exactly. Everything is plain autograd: gradients of any order flow through it (R1 is
computed through augmented reals).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import misc
from torch_utils import persistence
from torch_utils.ops import upfirdn2d

# Low-pass decomposition filters of two Symlet wavelets (PyWavelets' coefficients).
wavelets = {
    'sym2': [-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025],
    'sym6': [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
             0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
             -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148],
}

# The --aug pipelines of train.py: name -> AugmentPipe kwargs.
augpipe_specs = {
    'blit':   dict(xflip=1, rotate90=1, xint=1),
    'geom':   dict(scale=1, rotate=1, aniso=1, xfrac=1),
    'color':  dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    'filter': dict(imgfilter=1),
    'noise':  dict(noise=1),
    'cutout': dict(cutout=1),
    'bg':     dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1),
    'bgc':    dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                   brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    'bgcf':   dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                   brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1, imgfilter=1),
    'bgcfn':  dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                   brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1, imgfilter=1, noise=1),
    'bgcfnc': dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                   brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1, imgfilter=1, noise=1, cutout=1),
}

# ---------------------------------------------------------------------------------------------
# Homogeneous matrices. Entries are Python numbers or [batch] tensors; the result is [3, 3] /
# [4, 4] for constants and [batch, 3, 3] / [batch, 4, 4] otherwise.


def _matrix(rows, device):
    # Python numbers become cached device constants: no host-to-device copy per call.
    entries = [x if isinstance(x, torch.Tensor) else misc.constant(x, dtype=torch.float32, device=device)
               for row in rows for x in row]
    batch_shape = torch.broadcast_shapes(*[e.shape for e in entries])
    stacked = torch.stack([e.expand(batch_shape) for e in entries], dim=-1)
    return stacked.reshape(*batch_shape, len(rows), len(rows[0]))


def translate2d(tx, ty, device=None):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], device)


def scale2d(sx, sy, device=None):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], device)


def _angle(theta, device):
    return theta.to(torch.float32) if isinstance(theta, torch.Tensor) else misc.constant(theta, dtype=torch.float32, device=device)


def rotate2d(theta, device=None):
    theta = _angle(theta, device)
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], device)


def translate3d(tx, ty, tz, device=None):
    return _matrix([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]], device)


def scale3d(sx, sy, sz, device=None):
    return _matrix([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]], device)


def rotate3d(axis, theta, device=None):
    """Rotation by ``theta`` about the unit ``axis`` (Rodrigues' formula), as a 4x4 matrix."""
    theta = _angle(theta, device)
    x, y, z = [float(a) for a in axis[:3]]
    c, s = torch.cos(theta), torch.sin(theta)
    k = 1 - c
    return _matrix([
        [x * x * k + c,     x * y * k - z * s, x * z * k + y * s, 0],
        [y * x * k + z * s, y * y * k + c,     y * z * k - x * s, 0],
        [z * x * k - y * s, z * y * k + x * s, z * z * k + c,     0],
        [0, 0, 0, 1]], device)


def translate2d_inv(tx, ty, device=None):
    return translate2d(-tx, -ty, device)


def scale2d_inv(sx, sy, device=None):
    return scale2d(1 / sx, 1 / sy, device)


def rotate2d_inv(theta, device=None):
    return rotate2d(-theta, device)


def _make_filter_bank(wavelet='sym2', num_bands=4):
    """Band-pass filters (octaves of the wavelet's half-band pair) that sum to a unit impulse."""
    lo = np.asarray(wavelets[wavelet], dtype=np.float64)
    hi = lo * (-1.0) ** np.arange(lo.size)
    lo2 = np.convolve(lo, lo[::-1]) / 2  # power-complementary: lo2 + hi2 = impulse
    hi2 = np.convolve(hi, hi[::-1]) / 2
    bank = np.zeros([num_bands, 1])
    bank[0, 0] = 1
    for band in range(1, num_bands):
        dilated = np.zeros([num_bands, bank.shape[1] * 2 - 1])
        dilated[:, ::2] = bank  # each step halves the frequencies of the bands found so far
        bank = np.stack([np.convolve(row, lo2) for row in dilated])
        start = (bank.shape[1] - hi2.size) // 2
        bank[band, start:start + hi2.size] += hi2
    return bank


def _fold_batch(op, images, **kwargs):
    """Run a per-channel filter op on [1, N*C, H, W]: the same result, several times faster on CPU."""
    n, c = images.shape[:2]
    out = op(images.reshape(1, n * c, *images.shape[2:]), **kwargs)
    return out.reshape(n, c, *out.shape[2:])

# ---------------------------------------------------------------------------------------------


@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    def __init__(self,
        xflip=0, rotate90=0, xint=0, xint_max=0.125,
        scale=0, rotate=0, aniso=0, xfrac=0, scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125,
        brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0, brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1,
        imgfilter=0, imgfilter_bands=[1, 1, 1, 1], imgfilter_std=1,
        noise=0, cutout=0, noise_std=0.1, cutout_size=0.5,
    ):
        super().__init__()
        self.register_buffer('p', torch.zeros([]))  # overall probability multiplier, set by ADA

        # Pixel blitting.
        self.xflip = float(xflip)          # probability multiplier for x-flip
        self.rotate90 = float(rotate90)    # ... for rotations by a multiple of 90 degrees
        self.xint = float(xint)            # ... for integer translation
        self.xint_max = float(xint_max)    # largest integer translation, fraction of image size

        # General geometric transforms.
        self.scale = float(scale)          # isotropic scaling
        self.rotate = float(rotate)        # arbitrary rotation
        self.aniso = float(aniso)          # anisotropic scaling
        self.xfrac = float(xfrac)          # fractional translation
        self.scale_std = float(scale_std)  # log2 std of isotropic scaling
        self.rotate_max = float(rotate_max)  # largest rotation, in units of pi
        self.aniso_std = float(aniso_std)  # log2 std of anisotropic scaling
        self.xfrac_std = float(xfrac_std)  # std of fractional translation, fraction of image size

        # Colour transforms.
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)  # std of the brightness offset
        self.contrast_std = float(contrast_std)      # log2 std of contrast
        self.hue_max = float(hue_max)                # largest hue rotation, in units of pi
        self.saturation_std = float(saturation_std)  # log2 std of saturation

        # Image-space filtering.
        self.imgfilter = float(imgfilter)
        self.imgfilter_bands = list(imgfilter_bands)  # strength of each frequency band
        self.imgfilter_std = float(imgfilter_std)     # log2 std of the band amplification

        # Corruptions.
        self.noise = float(noise)
        self.cutout = float(cutout)
        self.noise_std = float(noise_std)      # std of the additive noise's std
        self.cutout_size = float(cutout_size)  # cutout rectangle size, fraction of image size

        self.register_buffer('Hz_geom', upfirdn2d.setup_filter(wavelets['sym6']))
        self.register_buffer('Hz_fbank', torch.as_tensor(_make_filter_bank('sym2', 4), dtype=torch.float32))

    def extra_repr(self):
        on = [k for k in augpipe_specs['bgcfnc'] if getattr(self, k) != 0]
        return f'p={float(self.p):g}, enabled={on}'

    # -- random draws -----------------------------------------------------------------------

    def _chosen(self, shape, strength, device):
        """Which images get an augmentation of this ``strength``: a bool tensor of ``shape``."""
        return torch.rand(shape, device=device) < strength * self.p

    def _draw_geometry(self, batch_size, width, height, device):
        """Inverse geometric transform per image ([batch, 3, 3], output -> input pixel coords)."""
        G_inv = torch.eye(3, device=device)
        chosen = torch.zeros([batch_size], dtype=torch.bool, device=device)

        def draw(value, strength, default):
            nonlocal chosen
            mask = self._chosen(value.shape, strength, device)
            chosen = chosen | mask.reshape(batch_size, -1).any(dim=1)
            return torch.where(mask, value, torch.full_like(value, default))

        if self.xflip > 0:
            i = draw(torch.floor(torch.rand([batch_size], device=device) * 2), self.xflip, 0)
            G_inv = G_inv @ scale2d_inv(1 - 2 * i, 1, device)
        if self.rotate90 > 0:
            i = draw(torch.floor(torch.rand([batch_size], device=device) * 4), self.rotate90, 0)
            G_inv = G_inv @ rotate2d_inv(-math.pi / 2 * i, device)
        if self.xint > 0:
            t = (torch.rand([batch_size, 2], device=device) * 2 - 1) * self.xint_max
            mask = self._chosen([batch_size, 1], self.xint, device)
            chosen = chosen | mask[:, 0]
            t = torch.where(mask, t, torch.zeros_like(t))
            G_inv = G_inv @ translate2d_inv(torch.round(t[:, 0] * width), torch.round(t[:, 1] * height), device)

        if self.scale > 0:
            s = draw(torch.exp2(torch.randn([batch_size], device=device) * self.scale_std), self.scale, 1)
            G_inv = G_inv @ scale2d_inv(s, s, device)
        # Rotation is split in two (before and after anisotropy), each with this probability,
        # so that the chance of any rotation matches rotate * p.
        p_rot = 1 - torch.sqrt((1 - self.rotate * self.p).clamp(0, 1))

        def random_rotation(G_inv, chosen):
            theta = (torch.rand([batch_size], device=device) * 2 - 1) * math.pi * self.rotate_max
            mask = torch.rand([batch_size], device=device) < p_rot
            theta = torch.where(mask, theta, torch.zeros_like(theta))
            return G_inv @ rotate2d_inv(-theta, device), chosen | mask

        if self.rotate > 0:
            G_inv, chosen = random_rotation(G_inv, chosen)
        if self.aniso > 0:
            s = draw(torch.exp2(torch.randn([batch_size], device=device) * self.aniso_std), self.aniso, 1)
            G_inv = G_inv @ scale2d_inv(s, 1 / s, device)
        if self.rotate > 0:
            G_inv, chosen = random_rotation(G_inv, chosen)
        if self.xfrac > 0:
            t = torch.randn([batch_size, 2], device=device) * self.xfrac_std
            mask = self._chosen([batch_size, 1], self.xfrac, device)
            chosen = chosen | mask[:, 0]
            t = torch.where(mask, t, torch.zeros_like(t))
            G_inv = G_inv @ translate2d_inv(t[:, 0] * width, t[:, 1] * height, device)
        return G_inv, chosen.any()

    def _draw_color(self, batch_size, num_channels, device):
        """Colour matrix per image ([batch, 4, 4], acting on homogeneous RGB)."""
        C = torch.eye(4, device=device)
        chosen = torch.zeros([], dtype=torch.bool, device=device)
        luma = misc.constant([1, 1, 1, 0], dtype=torch.float32, device=device) / math.sqrt(3)
        luma_outer = torch.outer(luma, luma)  # projection onto the luma axis

        if self.brightness > 0:
            b = torch.randn([batch_size], device=device) * self.brightness_std
            mask = self._chosen([batch_size], self.brightness, device)
            chosen = chosen | mask.any()
            b = torch.where(mask, b, torch.zeros_like(b))
            C = translate3d(b, b, b, device) @ C
        if self.contrast > 0:
            c = torch.exp2(torch.randn([batch_size], device=device) * self.contrast_std)
            mask = self._chosen([batch_size], self.contrast, device)
            chosen = chosen | mask.any()
            c = torch.where(mask, c, torch.ones_like(c))
            C = scale3d(c, c, c, device) @ C
        if self.lumaflip > 0:
            i = torch.floor(torch.rand([batch_size, 1, 1], device=device) * 2)
            mask = self._chosen([batch_size, 1, 1], self.lumaflip, device)
            chosen = chosen | mask.any()
            i = torch.where(mask, i, torch.zeros_like(i))
            C = (torch.eye(4, device=device) - 2 * luma_outer * i) @ C  # mirror along the luma axis
        if self.hue > 0 and num_channels > 1:
            theta = (torch.rand([batch_size], device=device) * 2 - 1) * math.pi * self.hue_max
            mask = self._chosen([batch_size], self.hue, device)
            chosen = chosen | mask.any()
            theta = torch.where(mask, theta, torch.zeros_like(theta))
            C = rotate3d([1 / math.sqrt(3)] * 3, theta, device) @ C  # rotate about the luma axis
        if self.saturation > 0 and num_channels > 1:
            s = torch.exp2(torch.randn([batch_size, 1, 1], device=device) * self.saturation_std)
            mask = self._chosen([batch_size, 1, 1], self.saturation, device)
            chosen = chosen | mask.any()
            s = torch.where(mask, s, torch.ones_like(s))
            C = (luma_outer + (torch.eye(4, device=device) - luma_outer) * s) @ C
        return C, chosen

    def _draw_filter(self, batch_size, device):
        """Per-image gains of the frequency bands ([batch, num_bands])."""
        num_bands = self.Hz_fbank.shape[0]
        assert len(self.imgfilter_bands) == num_bands
        expected_power = misc.constant([10, 1, 1, 1], dtype=torch.float32, device=device) / 13  # of natural images
        chosen = torch.zeros([], dtype=torch.bool, device=device)
        g = torch.ones([batch_size, num_bands], device=device)
        for band, band_strength in enumerate(self.imgfilter_bands):
            t_band = torch.exp2(torch.randn([batch_size], device=device) * self.imgfilter_std)
            mask = self._chosen([batch_size], self.imgfilter * band_strength, device)
            chosen = chosen | mask.any()
            t_band = torch.where(mask, t_band, torch.ones_like(t_band))
            t = torch.ones([batch_size, num_bands], device=device)
            t[:, band] = t_band
            t = t / (expected_power * t.square()).sum(dim=-1, keepdim=True).sqrt()  # keep the expected power
            g = g * t
        return g, chosen

    def _draw_noise(self, shape, device):
        sigma = torch.randn([shape[0], 1, 1, 1], device=device).abs() * self.noise_std
        mask = self._chosen([shape[0], 1, 1, 1], self.noise, device)
        sigma = torch.where(mask, sigma, torch.zeros_like(sigma))
        return torch.randn(shape, device=device) * sigma, mask.any()

    def _draw_cutout(self, batch_size, device):
        size = torch.full([batch_size, 2, 1, 1, 1], self.cutout_size, device=device)
        mask = self._chosen([batch_size, 1, 1, 1, 1], self.cutout, device)
        size = torch.where(mask, size, torch.zeros_like(size))
        center = torch.rand([batch_size, 2, 1, 1, 1], device=device)
        return (size, center), mask.any()

    # -- execution --------------------------------------------------------------------------

    def _geometry_margin(self, G_inv, width, height, device):
        """Reflect padding [left, top, right, bottom] that covers the area the transformed image
        samples from, as a float tensor (read on the host together with the stage flags)."""
        pad = self.Hz_geom.shape[0] // 4  # filter support, in low-resolution pixels
        cx, cy = (width - 1) / 2, (height - 1) / 2
        corners = misc.constant([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], dtype=torch.float32, device=device)
        corners = G_inv @ corners.t()  # [batch, xyz, corner]
        xy = corners[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, batch * corner]
        extent = torch.cat([-xy, xy]).max(dim=1).values  # [left, top, right, bottom]
        extent = extent + misc.constant([pad * 2 - cx, pad * 2 - cy] * 2, dtype=torch.float32, device=device)
        extent = extent.clamp(min=0)
        extent = torch.minimum(extent, misc.constant([width - 1, height - 1] * 2, dtype=torch.float32, device=device))
        return extent.ceil()

    def _apply_geometry(self, images, G_inv, margin=None, margin_tensor=None):
        batch_size, num_channels, height, width = images.shape
        device = images.device
        pad = self.Hz_geom.shape[0] // 4  # filter support, in low-resolution pixels

        # Reflect-pad just enough to cover the area the transformed image samples from.
        if margin is None:
            margin = self._geometry_margin(G_inv, width, height, device).tolist()
        mx0, my0, mx1, my1 = [int(v) for v in margin]
        images = F.pad(input=images, pad=[mx0, mx1, my0, my1], mode='reflect')
        if margin_tensor is not None:  # the same numbers, from the device copy (no new constants per call)
            G_inv = translate2d((margin_tensor[0] - margin_tensor[2]) / 2, (margin_tensor[1] - margin_tensor[3]) / 2, device) @ G_inv
        else:
            G_inv = translate2d((mx0 - mx1) / 2, (my0 - my1) / 2, device) @ G_inv

        # Upsample 2x; the even-length filter shifts the grid by half a high-resolution pixel.
        images = _fold_batch(upfirdn2d.upsample2d, images, f=self.Hz_geom.float(), up=2)
        G_inv = scale2d(2, 2, device) @ G_inv @ scale2d_inv(2, 2, device)
        G_inv = translate2d(-0.5, -0.5, device) @ G_inv @ translate2d_inv(-0.5, -0.5, device)

        # Resample at 2x (plus the filter margin) in normalised coordinates.
        shape = [batch_size, num_channels, (height + pad * 2) * 2, (width + pad * 2) * 2]
        if margin_tensor is not None:  # images.shape[2:] from the device copy of the padding
            sx = 2 / ((margin_tensor[0] + margin_tensor[2] + width) * 2)
            sy = 2 / ((margin_tensor[1] + margin_tensor[3] + height) * 2)
        else:
            sx, sy = 2 / images.shape[3], 2 / images.shape[2]
        G_inv = scale2d(sx, sy, device) @ G_inv @ scale2d_inv(2 / shape[3], 2 / shape[2], device)
        grid = F.affine_grid(theta=G_inv[:, :2, :].to(images.dtype), size=shape, align_corners=False)
        images = F.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

        # Downsample with the mirrored filter (undoes the upsampling exactly) and crop the margin.
        return _fold_batch(upfirdn2d.downsample2d, images, f=self.Hz_geom.float(), down=2, padding=-pad * 2, flip_filter=True)

    @staticmethod
    def _apply_color(images, C):
        batch_size, num_channels, height, width = images.shape
        x = images.reshape(batch_size, num_channels, height * width)
        C = C.to(images.dtype)
        if num_channels == 3:
            x = C[:, :3, :3] @ x + C[:, :3, 3:]
        elif num_channels == 1:
            C = C[:, :3, :].mean(dim=1, keepdim=True)
            x = x * C[:, :, :3].sum(dim=2, keepdim=True) + C[:, :, 3:]
        else:
            raise ValueError(f'AugmentPipe: colour transforms need 1 or 3 channels, got {num_channels}')
        return x.reshape(batch_size, num_channels, height, width)

    def _apply_filter(self, images, g):
        batch_size, num_channels, height, width = images.shape
        taps = (g @ self.Hz_fbank).to(images.dtype)  # [batch, taps]: the per-image filter
        taps = taps.unsqueeze(1).repeat([1, num_channels, 1]).reshape(batch_size * num_channels, 1, -1)
        pad = self.Hz_fbank.shape[1] // 2
        x = images.reshape(1, batch_size * num_channels, height, width)
        x = F.pad(input=x, pad=[pad, pad, pad, pad], mode='reflect')
        x = F.conv2d(x, taps.unsqueeze(2), groups=batch_size * num_channels)  # horizontal
        x = F.conv2d(x, taps.unsqueeze(3), groups=batch_size * num_channels)  # vertical
        return x.reshape(batch_size, num_channels, height, width)

    @staticmethod
    def _apply_cutout(images, size, center):
        _batch_size, _num_channels, height, width = images.shape
        coord_x = torch.arange(width, device=images.device).reshape([1, 1, 1, -1])
        coord_y = torch.arange(height, device=images.device).reshape([1, 1, -1, 1])
        outside_x = (((coord_x + 0.5) / width - center[:, 0]).abs() >= size[:, 0] / 2)
        outside_y = (((coord_y + 0.5) / height - center[:, 1]).abs() >= size[:, 1] / 2)
        keep = torch.logical_or(outside_x, outside_y).to(images.dtype)
        return images * keep

    def forward(self, images):
        assert isinstance(images, torch.Tensor) and images.ndim == 4
        batch_size, num_channels, height, width = images.shape
        device = images.device

        # Draw every random quantity first (in NVIDIA's order; the execution below draws none),
        # then find out with one device sync which stages have anything to do (and, with the same
        # read, the geometric stage's padding).
        stages = []
        margin = None
        if any(getattr(self, k) > 0 for k in augpipe_specs['bg']):
            G_inv, chosen = self._draw_geometry(batch_size, width, height, device)
            margin = self._geometry_margin(G_inv, width, height, device)
            stages.append((lambda x, G_inv=G_inv, margin=margin: self._apply_geometry(x, G_inv, host_margin, margin), chosen))
        if any(getattr(self, k) > 0 for k in augpipe_specs['color']):
            C, chosen = self._draw_color(batch_size, num_channels, device)
            stages.append((lambda x, C=C: self._apply_color(x, C), chosen))
        if self.imgfilter > 0:
            g, chosen = self._draw_filter(batch_size, device)
            stages.append((lambda x, g=g: self._apply_filter(x, g), chosen))
        if self.noise > 0:
            noise, chosen = self._draw_noise([batch_size, num_channels, height, width], device)
            stages.append((lambda x, noise=noise: x + noise.to(x.dtype), chosen))
        if self.cutout > 0:
            (size, center), chosen = self._draw_cutout(batch_size, device)
            stages.append((lambda x, size=size, center=center: self._apply_cutout(x, size, center), chosen))
        if not stages:
            return images

        flags = torch.stack([chosen for _fn, chosen in stages]).to(torch.float32)
        values = (flags if margin is None else torch.cat([flags, margin])).tolist()
        active, host_margin = values[:len(stages)], values[len(stages):]
        for (apply, _chosen), on in zip(stages, active):
            if on:
                images = apply(images)
        return images

# ---------------------------------------------------------------------------------------------


def adjust_p(augment_pipe, sign_mean, batch_size, interval, ada_target=0.6, ada_kimg=500):
    """The ADA update: move ``p`` by sign(E[sign(D(real))] - target) * images seen / (ada_kimg * 1000).

    ``sign_mean``: mean of sign(D(real)) over the last ``interval`` steps of ``batch_size`` images.
    ``p`` is clamped at 0 from below (as in NVIDIA's loop). Returns the new ``p`` as a float; a
    non-finite ``sign_mean`` (no statistics yet) leaves ``p`` unchanged.
    """
    if sign_mean is None or not math.isfinite(float(sign_mean)):
        return float(augment_pipe.p)
    adjust = float(np.sign(float(sign_mean) - ada_target)) * (batch_size * interval) / (ada_kimg * 1000)
    with torch.no_grad():
        augment_pipe.p.copy_((augment_pipe.p + adjust).clamp(min=0))
    return float(augment_pipe.p)
