"""Images from a generator: seeds -> latents -> uint8 pixels, grids and PNG files.

One implementation behind ``generate.py``, ``gen_images.py``, ``style_mixing.py``, ``gen_video.py``,
``projector.py`` and ``metrics/agreement.py``. Conventions follow NVIDIA's tools:

- seed s gives ``z = np.random.RandomState(s).randn(z_dim)`` (the same z whatever the network, so
  snapshots can be compared and NVIDIA's ``gen_images.py --seeds`` shows the same faces);
- pixels are quantised as ``(img * 127.5 + 128).clamp(0, 255)`` to uint8, the way image files and
  metrics see them;
- a StyleGAN3 generator takes a user transform: ``--translate tx,ty`` and ``--rotate deg`` build the
  matrix of stylegan3's ``make_transform`` and its inverse goes into ``G.synthesis.input.transform``.
"""
import contextlib
import os
import re

import numpy as np
import PIL.Image
import torch

import dnnlib

# ---------------------------------------------------------------------------------------------
# Parsing.


def parse_range(text, what='--seeds'):
    """'0-3,7' -> [0, 1, 2, 3, 7] (a list of ints is returned unchanged)."""
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    values = []
    for part in str(text).split(','):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r'(\d+)-(\d+)', part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise dnnlib.util.UserError(f'{what}: empty range {part}')
            values.extend(range(lo, hi + 1))
        elif re.fullmatch(r'\d+', part):
            values.append(int(part))
        else:
            raise dnnlib.util.UserError(f'{what}: cannot parse {part!r} (use e.g. 0-7,12)')
    if not values:
        raise dnnlib.util.UserError(f'{what}: nothing given')
    return values


def parse_vec2(text, what='--translate'):
    """'0.1,-0.2' -> (0.1, -0.2)."""
    if isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        parts = str(text).split(',')
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or not all(np.isfinite(values)):
        raise dnnlib.util.UserError(f'{what}: expected two finite numbers like 0.1,-0.2, got {text!r}')
    return values

# ---------------------------------------------------------------------------------------------
# Latents and labels.


def latents_for_seeds(seeds, z_dim):
    """One z per seed, the same z whatever the network (float32 [len(seeds), z_dim])."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def labels_for(G, class_idx, count):
    """Labels for ``count`` images: one-hot ``class_idx`` for a conditional G, empty otherwise."""
    c = torch.zeros([count, G.c_dim])
    if G.c_dim:
        if class_idx is None:
            raise dnnlib.util.UserError('--class: this network is conditional; give a class index')
        if not 0 <= class_idx < G.c_dim:
            raise dnnlib.util.UserError(f'--class: {class_idx} is outside 0..{G.c_dim - 1}')
        c[:, class_idx] = 1
    elif class_idx is not None:
        print('warning: --class is ignored for an unconditional network')
    return c


def class_labels(G, count):
    """One-hot labels cycling through the classes of a conditional network (zeros otherwise)."""
    c = torch.zeros([count, G.c_dim])
    if G.c_dim:
        c[torch.arange(count), torch.arange(count) % G.c_dim] = 1
    return c

# ---------------------------------------------------------------------------------------------
# StyleGAN3 user transform.


def make_transform(translate=(0, 0), angle=0):
    """The 3x3 matrix of stylegan3's ``gen_images.make_transform`` (rotation in degrees)."""
    s = np.sin(angle / 360.0 * np.pi * 2)
    c = np.cos(angle / 360.0 * np.pi * 2)
    m = np.eye(3)
    m[0, 0], m[0, 1], m[0, 2] = c, s, translate[0]
    m[1, 0], m[1, 1], m[1, 2] = -s, c, translate[1]
    return m


def supports_transform(G):
    return isinstance(getattr(getattr(getattr(G, 'synthesis', None), 'input', None), 'transform', None), torch.Tensor)


@contextlib.contextmanager
def user_transform(G, translate=(0, 0), rotate=0):
    """Set ``G.synthesis.input.transform`` to the inverse of ``make_transform`` for the block, then restore it.

    A generator without the buffer (StyleGAN2) accepts only the identity."""
    if tuple(translate) == (0, 0) and rotate == 0:
        yield
        return
    if not supports_transform(G):
        raise dnnlib.util.UserError('--translate/--rotate: only StyleGAN3 generators take an input transform')
    buf = G.synthesis.input.transform
    saved = buf.detach().clone()
    inv = np.linalg.inv(make_transform(translate, rotate))
    with torch.no_grad():
        buf.copy_(torch.from_numpy(inv).to(buf))
    try:
        yield
    finally:
        with torch.no_grad():
            buf.copy_(saved)

# ---------------------------------------------------------------------------------------------
# Images.


def to_uint8(img):
    """NCHW in [-1, 1] -> uint8 NHWC tensor, quantised as image files and metrics see it."""
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def generate_images(G, z, c, truncation_psi=1.0, noise_mode='const', batch=8, device='cpu', translate=(0, 0),
                    rotate=0, truncation_cutoff=None):
    """uint8 NHWC numpy images from latents ``z`` [N, z_dim] and labels ``c`` [N, c_dim]."""
    G = G.eval().requires_grad_(False).to(device)
    extra = {} if truncation_cutoff is None else dict(truncation_cutoff=truncation_cutoff)
    out = []
    with user_transform(G, translate, rotate):
        for i in range(0, len(z), batch):
            img = G(z[i:i + batch].to(device), c[i:i + batch].to(device), truncation_psi=truncation_psi,
                    noise_mode=noise_mode, **extra)
            out.append(to_uint8(img).cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def synthesize_ws(G, ws, noise_mode='const', batch=8, device='cpu', translate=(0, 0), rotate=0):
    """uint8 NHWC numpy images from W+ latents ``ws`` [N, num_ws, w_dim] (e.g. projected_w.npz)."""
    G = G.eval().requires_grad_(False).to(device)
    ws = torch.as_tensor(ws, dtype=torch.float32)
    if ws.ndim != 3 or ws.shape[1:] != (G.num_ws, G.w_dim):
        raise dnnlib.util.UserError(f'ws: expected shape [N, {G.num_ws}, {G.w_dim}] for this network, got {list(ws.shape)}')
    out = []
    with user_transform(G, translate, rotate):
        for i in range(0, len(ws), batch):
            out.append(to_uint8(G.synthesis(ws[i:i + batch].to(device), noise_mode=noise_mode)).cpu())
    return torch.cat(out).numpy()


def generate_for_seeds(G, seeds, class_idx=None, noise_mode='const', truncation_psi=1.0, batch=8, device='cpu', **kwargs):
    """uint8 NHWC images of ``G`` for ``seeds``; conditional networks cycle classes unless ``class_idx``."""
    seeds = list(seeds)
    z = latents_for_seeds(seeds, G.z_dim)
    c = class_labels(G, len(seeds)) if class_idx is None else labels_for(G, class_idx, len(seeds))
    return generate_images(G, z, c, truncation_psi=truncation_psi, noise_mode=noise_mode, batch=batch, device=device, **kwargs)


def image_grid(rows):
    """Tile a list of rows (each [N, H, W, C] uint8, equal sizes) into one image array."""
    rows = [np.concatenate(list(r), axis=1) for r in rows]
    return np.concatenate(rows, axis=0)


def wrap_rows(images, per_row=8):
    """Split [N, H, W, C] into rows of ``per_row`` images, padding the last row with black."""
    pad = (-len(images)) % per_row
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    return [images[i:i + per_row] for i in range(0, len(images), per_row)]


def upscale_to(images, size):
    """Nearest-neighbour upscaling so that students and teachers of other sizes share one grid."""
    if images.shape[1] == size:
        return images
    factor = size // images.shape[1]
    if factor * images.shape[1] != size:
        raise dnnlib.util.UserError(f'cannot put {images.shape[1]} px images in a grid of {size} px images')
    return images.repeat(factor, axis=1).repeat(factor, axis=2)


def save_image(array, path):
    """uint8 HWC (C = 1 or 3) -> PNG, written atomically; the folder is created."""
    array = np.asarray(array)
    array = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with dnnlib.util.atomic_open(path, 'wb') as f:
        PIL.Image.fromarray(array, 'L' if array.ndim == 2 else 'RGB').save(f, format='PNG')


def load_target_image(path, resolution, channels=3):
    """An image file -> uint8 HWC at ``resolution``: centre crop to a square, then Lanczos resize (as projector.py)."""
    try:
        img = PIL.Image.open(path)
        img.load()
    except (OSError, ValueError) as e:
        raise dnnlib.util.UserError(f'{path}: cannot read the image ({e})') from None
    img = img.convert('L' if channels == 1 else 'RGB')
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))
    if s != resolution:
        img = img.resize((resolution, resolution), PIL.Image.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def load_projected_w(path):
    """The W+ latents of a ``projected_w.npz`` (key ``w``, [N, num_ws, w_dim]) without unpickling."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if 'w' not in data:
                raise dnnlib.util.UserError(f'{path}: no array "w" (expected projector.py\'s projected_w.npz)')
            ws = np.asarray(data['w'], dtype=np.float32)
    except (OSError, ValueError) as e:
        raise dnnlib.util.UserError(f'{path}: cannot read ({e})') from None
    if ws.ndim != 3 or not np.isfinite(ws).all():
        raise dnnlib.util.UserError(f'{path}: "w" must be a finite [N, num_ws, w_dim] array, got shape {list(ws.shape)}')
    return ws

# ---------------------------------------------------------------------------------------------
# Style mixing (stylegan2-ada-pytorch's style_mixing.py).


@torch.no_grad()
def style_mixing_images(G, row_seeds, col_seeds, col_styles, truncation_psi=1.0, noise_mode='const', class_idx=None,
                        device='cpu'):
    """{(row_seed, col_seed): uint8 HWC}: row seed's W with layers ``col_styles`` taken from the column
    seed's W (truncated around ``w_avg``); (s, s) is seed s itself."""
    G = G.eval().requires_grad_(False).to(device)
    bad = [i for i in col_styles if not 0 <= i < G.num_ws]
    if bad:
        raise dnnlib.util.UserError(f'--styles: layer {bad[0]} is outside 0..{G.num_ws - 1} of this network')
    all_seeds = list(dict.fromkeys(list(row_seeds) + list(col_seeds)))
    z = latents_for_seeds(all_seeds, G.z_dim).to(device)
    c = labels_for(G, class_idx, len(all_seeds)).to(device)
    ws = G.mapping(z, c, truncation_psi=truncation_psi)
    w_dict = dict(zip(all_seeds, ws))
    images = {(s, s): img for s, img in zip(all_seeds, to_uint8(G.synthesis(ws, noise_mode=noise_mode)).cpu().numpy())}
    for row in row_seeds:
        for col in col_seeds:
            w = w_dict[row].clone()
            w[col_styles] = w_dict[col][col_styles]
            images[(row, col)] = to_uint8(G.synthesis(w[None], noise_mode=noise_mode))[0].cpu().numpy()
    return images


def style_mixing_grid(images, row_seeds, col_seeds):
    """The grid of style_mixing.py: column seeds along the top, row seeds down the left, mixes inside."""
    h, w, ch = next(iter(images.values())).shape
    canvas = np.zeros((h * (len(row_seeds) + 1), w * (len(col_seeds) + 1), ch), np.uint8)
    for j, col in enumerate(col_seeds, start=1):
        canvas[:h, w * j:w * (j + 1)] = images[(col, col)]
    for i, row in enumerate(row_seeds, start=1):
        canvas[h * i:h * (i + 1), :w] = images[(row, row)]
        for j, col in enumerate(col_seeds, start=1):
            canvas[h * i:h * (i + 1), w * j:w * (j + 1)] = images[(row, col)]
    return canvas

# ---------------------------------------------------------------------------------------------
# Videos (stylegan3's gen_video.py; projector.py's optimisation video).


def open_video_writer(path, fps=60, **kwargs):
    """An imageio mp4 writer (libx264), or one clear line when imageio / imageio-ffmpeg are missing."""
    try:
        import imageio  # noqa: optional dependency
        import imageio_ffmpeg  # noqa: F401 (the mp4 backend)
    except ImportError:
        raise dnnlib.util.UserError(f'{path}: writing mp4 needs imageio and imageio-ffmpeg '
                                    f'(pip install imageio imageio-ffmpeg)') from None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return imageio.get_writer(path, mode='I', fps=fps, codec='libx264', **kwargs)


def video_available():
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def parse_grid(text):
    """'4x3' or '4,3' -> (4, 3)."""
    m = re.fullmatch(r'\s*(\d+)\s*[x,]\s*(\d+)\s*', str(text))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise dnnlib.util.UserError(f'--grid: expected WxH such as 4x3, got {text!r}')
    return int(m.group(1)), int(m.group(2))


@torch.no_grad()
def interpolation_frames(G, seeds, grid_dims=(1, 1), num_keyframes=None, w_frames=120, truncation_psi=1.0,
                         shuffle_seed=None, kind='cubic', wraps=2, noise_mode='const', device='cpu'):
    """Yield the uint8 HWC frames of a looping latent-interpolation video (stylegan3's gen_video.py):
    one keyframe W per seed, per grid cell; ``interp1d(kind)`` through keyframes repeated ``wraps``
    times on either side, so the loop closes smoothly; ``num_keyframes * w_frames`` frames."""
    import scipy.interpolate
    grid_w, grid_h = grid_dims
    if num_keyframes is None:
        if len(seeds) % (grid_w * grid_h) != 0:
            raise dnnlib.util.UserError(f'--seeds: {len(seeds)} seeds do not fill a {grid_w}x{grid_h} grid evenly '
                                        f'(give a multiple of {grid_w * grid_h}, or --num-keyframes)')
        num_keyframes = len(seeds) // (grid_w * grid_h)
    if kind == 'cubic' and num_keyframes * (2 * wraps + 1) < 4:
        raise dnnlib.util.UserError('--num-keyframes: too few keyframes for cubic interpolation')
    all_seeds = np.array([seeds[i % len(seeds)] for i in range(num_keyframes * grid_w * grid_h)], dtype=np.int64)
    if shuffle_seed is not None:
        np.random.RandomState(seed=shuffle_seed).shuffle(all_seeds)
    G = G.eval().requires_grad_(False).to(device)
    z = latents_for_seeds([int(s) for s in all_seeds], G.z_dim).to(device)
    ws = G.mapping(z, labels_for(G, 0 if G.c_dim else None, len(all_seeds)).to(device), truncation_psi=truncation_psi)
    ws = ws.reshape(grid_h, grid_w, num_keyframes, *ws.shape[1:]).cpu().numpy()
    x = np.arange(-num_keyframes * wraps, num_keyframes * (wraps + 1))
    interps = [[scipy.interpolate.interp1d(x, np.tile(ws[yi][xi], [wraps * 2 + 1, 1, 1]), kind=kind, axis=0)
                for xi in range(grid_w)] for yi in range(grid_h)]
    for frame in range(num_keyframes * w_frames):
        cells = []
        for yi in range(grid_h):
            for xi in range(grid_w):
                w = torch.from_numpy(interps[yi][xi](frame / w_frames)).float().to(device)
                cells.append(to_uint8(G.synthesis(w[None], noise_mode=noise_mode))[0].cpu().numpy())
        yield image_grid([cells[yi * grid_w:(yi + 1) * grid_w] for yi in range(grid_h)])


def write_video(path, frames, fps=60, **kwargs):
    """Write uint8 HWC ``frames`` (any iterable) to ``path`` through a temporary file renamed at the end,
    so a failure leaves no half-written video. Returns the number of frames."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f'.{name}.tmp-{os.getpid()}.mp4')
    count = 0
    try:
        writer = open_video_writer(tmp, fps=fps, **kwargs)
        try:
            for frame in frames:
                writer.append_data(np.asarray(frame))
                count += 1
        finally:
            writer.close()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return count
