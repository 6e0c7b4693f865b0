"""The built-in sample dataset: small procedurally drawn scenes, generated in seconds, no download.

Each image is a face-like figure (a shaded oval head with eyes and a mouth) in front of a colour
gradient, with a few soft discs, ellipses or stripes around it. The layout is simple enough for a
tiny GAN to learn on a CPU in minutes, and the random colours, positions, sizes and expressions
make it diverse enough for FID-style statistics to mean something. Labels (``dataset.json``) are
the head's colour family, 4 classes, for conditional tests.

Everything is drawn from a seeded numpy RNG (one child stream per image) and written into a zip
with fixed timestamps, so the same arguments always produce identical bytes.
"""
import io
import json
import os
import zipfile

import numpy as np
import PIL.Image

import dnnlib

NUM_CLASSES = 4

# Head colour families (RGB in [0, 1]): warm skin, pale, green, blue; jittered per image.
_HEAD_PALETTES = np.array([
    [0.85, 0.62, 0.45],
    [0.95, 0.85, 0.75],
    [0.45, 0.75, 0.40],
    [0.40, 0.55, 0.90],
])


def _coverage(signed_distance):
    """Anti-aliased coverage of a shape from its signed distance in pixels (negative inside)."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _ellipse_distance(x, y, cx, cy, rx, ry, angle=0.0):
    """Approximate signed distance (pixels) to a rotated ellipse; exact for circles."""
    c, s = np.cos(angle), np.sin(angle)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return (r - 1.0) * min(rx, ry)


def _blend(canvas, colour, alpha):
    """Paint ``colour`` over ``canvas`` (H, W, 3) with per-pixel ``alpha`` (H, W)."""
    a = alpha[:, :, np.newaxis]
    canvas *= 1.0 - a
    canvas += a * np.asarray(colour)[np.newaxis, np.newaxis, :]


def render_sample_image(rng, resolution=32):
    """Draw one scene. Returns (uint8 HWC RGB array, class label int)."""
    res = resolution
    y, x = np.meshgrid(np.arange(res) + 0.5, np.arange(res) + 0.5, indexing='ij')

    # Background: a linear gradient between two random colours in a random direction.
    c0, c1 = rng.uniform(0.0, 1.0, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    t = ((x - res / 2) * np.cos(angle) + (y - res / 2) * np.sin(angle)) / res + 0.5
    t = np.clip(t, 0, 1)[:, :, np.newaxis]
    canvas = (1 - t) * c0 + t * c1

    # Distractors: 0-3 soft shapes with random colours, partly transparent.
    for _ in range(rng.integers(0, 4)):
        kind = rng.integers(0, 3)
        colour = rng.uniform(0.0, 1.0, size=3)
        opacity = rng.uniform(0.5, 1.0)
        if kind == 0:    # disc
            cx, cy = rng.uniform(0, res, size=2)
            r = rng.uniform(0.06, 0.2) * res
            d = _ellipse_distance(x, y, cx, cy, r, r)
        elif kind == 1:  # rotated ellipse
            cx, cy = rng.uniform(0, res, size=2)
            rx, ry = rng.uniform(0.05, 0.25, size=2) * res
            d = _ellipse_distance(x, y, cx, cy, rx, ry, rng.uniform(0, np.pi))
        else:            # stripe across the image
            a = rng.uniform(0, np.pi)
            offset = rng.uniform(-0.4, 0.4) * res
            width = rng.uniform(0.04, 0.15) * res
            d = np.abs((x - res / 2) * np.cos(a) + (y - res / 2) * np.sin(a) - offset) - width / 2
        _blend(canvas, colour, opacity * _coverage(d))

    # The figure: an oval head near the centre, lit from a random side.
    label = int(rng.integers(0, NUM_CLASSES))
    head_colour = np.clip(_HEAD_PALETTES[label] + rng.normal(0, 0.06, size=3), 0, 1)
    hx = res / 2 + rng.normal(0, 0.04) * res
    hy = res / 2 + rng.normal(0, 0.04) * res
    hrx = rng.uniform(0.24, 0.32) * res
    hry = hrx * rng.uniform(1.1, 1.35)
    tilt = rng.normal(0, 0.15)
    head = _coverage(_ellipse_distance(x, y, hx, hy, hrx, hry, tilt))
    light = rng.uniform(-1, 1, size=2)
    shade = 0.8 + 0.35 * np.clip(((x - hx) * light[0] + (y - hy) * light[1]) / (hrx + hry) + 0.5, 0, 1)
    shaded_head = np.clip(head_colour[np.newaxis, np.newaxis, :] * shade[:, :, np.newaxis], 0, 1)
    canvas = canvas * (1 - head[:, :, np.newaxis]) + shaded_head * head[:, :, np.newaxis]

    # Face: two eyes and a mouth, placed in the head's tilted frame.
    c, s = np.cos(tilt), np.sin(tilt)

    def to_image(u, v):
        return hx + u * c - v * s, hy + u * s + v * c

    eye_dx = hrx * rng.uniform(0.35, 0.5)
    eye_dy = -hry * rng.uniform(0.15, 0.3)
    eye_r = max(hrx * rng.uniform(0.12, 0.2), 0.6)
    eye_colour = rng.uniform(0.0, 0.25, size=3)
    for side in (-1, 1):
        ex, ey = to_image(side * eye_dx, eye_dy)
        _blend(canvas, eye_colour, _coverage(_ellipse_distance(x, y, ex, ey, eye_r, eye_r * 0.8, tilt)))
    mx, my = to_image(0, hry * rng.uniform(0.35, 0.5))
    mouth_w = hrx * rng.uniform(0.3, 0.55)
    mouth_h = max(hry * rng.uniform(0.04, 0.15), 0.5)
    mouth_colour = np.array([rng.uniform(0.45, 0.8), rng.uniform(0.05, 0.25), rng.uniform(0.1, 0.3)])
    _blend(canvas, mouth_colour, _coverage(_ellipse_distance(x, y, mx, my, mouth_w, mouth_h, tilt)))

    # A little sensor noise, then quantise.
    canvas = canvas + rng.normal(0, 1.5 / 255, size=canvas.shape)
    image = np.rint(np.clip(canvas, 0, 1) * 255).astype(np.uint8)
    return image, label


def sample_images(num_images, resolution=32, seed=0, start=0):
    """Yield ``(index, uint8 HWC image, label)``; image i depends only on (seed, i, resolution)."""
    for idx in range(start, start + num_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, idx]))
        image, label = render_sample_image(rng, resolution)
        yield idx, image, label


def archive_fname(idx):
    """File name of image ``idx`` inside a dataset zip (same layout as dataset_tool.py)."""
    idx_str = f'{idx:08d}'
    return f'{idx_str[:5]}/img{idx_str}.png'


def zip_entry(name):
    # Fixed timestamp and permissions: identical bytes on every run.
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def encode_png(image):
    buf = io.BytesIO()
    PIL.Image.fromarray(image).save(buf, format='png', compress_level=6)
    return buf.getvalue()


def make_sample_dataset(dest, num_images=2000, resolution=32, seed=0, preview=None, verbose=False):
    """Write the sample dataset zip to ``dest`` (atomically); optionally a preview grid PNG.

    Returns the list of labels. Same arguments -> byte-identical zip.
    """
    if resolution < 8 or resolution & (resolution - 1):
        raise dnnlib.util.UserError(f'--resolution: the sample dataset needs a power of two >= 8, got {resolution}')
    if num_images < 1:
        raise dnnlib.util.UserError(f'--max-images: need at least one image, got {num_images}')
    labels = []
    grid_images = []
    with dnnlib.util.atomic_open(dest, 'wb') as f:
        with zipfile.ZipFile(f, 'w') as zf:
            for idx, image, label in sample_images(num_images, resolution, seed):
                zf.writestr(zip_entry(archive_fname(idx)), encode_png(image))
                labels.append([archive_fname(idx), label])
                if preview is not None and len(grid_images) < 64:
                    grid_images.append(image)
                if verbose and (idx + 1) % 1000 == 0:
                    print(f'sample dataset: {idx + 1}/{num_images} images', flush=True)
            meta = json.dumps({'labels': labels}, indent=None).encode('utf-8')
            zf.writestr(zip_entry('dataset.json'), meta)
    if preview is not None:
        save_image_grid(np.stack(grid_images).transpose(0, 3, 1, 2), preview)
    return [label for _name, label in labels]


def save_image_grid(images, path, grid_w=None):
    """Save uint8 NCHW images as one PNG grid (atomically)."""
    images = np.asarray(images)
    assert images.dtype == np.uint8 and images.ndim == 4
    n, c, h, w = images.shape
    grid_w = grid_w or int(np.ceil(np.sqrt(n)))
    grid_h = int(np.ceil(n / grid_w))
    grid = np.zeros([grid_h * h, grid_w * w, c], dtype=np.uint8)
    for i in range(n):
        gy, gx = divmod(i, grid_w)
        grid[gy * h:(gy + 1) * h, gx * w:(gx + 1) * w] = images[i].transpose(1, 2, 0)
    if c == 1:
        grid = grid[:, :, 0]
    buf = io.BytesIO()
    PIL.Image.fromarray(grid).save(buf, format='png')
    dnnlib.util.atomic_write_bytes(os.fspath(path), buf.getvalue())
