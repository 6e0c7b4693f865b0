"""Generate images from any snapshot, or the same seeds through several snapshots in one grid.

Examples:
    # Eight images from a teacher pickle (path or URL).
    python generate.py --network teacher.pkl --seeds 0-7 --outdir out

    # The paper's qualitative comparison: teacher, pruned and pruned+SVS students on the same seeds.
    python generate.py --network teacher.pkl --network pruned.pkl --network svs.pkl \\
        --seeds 0-5 --grid out/compare.png
"""
import os
import re

import click
import numpy as np
import PIL.Image
import torch

import dnnlib
from training.checkpoints import load_network


def parse_range(text):
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    values = []
    for part in str(text).split(','):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r'(\d+)-(\d+)', part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise dnnlib.util.UserError(f'--seeds: empty range {part}')
            values.extend(range(lo, hi + 1))
        elif re.fullmatch(r'\d+', part):
            values.append(int(part))
        else:
            raise dnnlib.util.UserError(f'--seeds: cannot parse {part!r} (use e.g. 0-7,12)')
    if not values:
        raise dnnlib.util.UserError('--seeds: no seeds given')
    return values


def latents_for_seeds(seeds, z_dim):
    """One z per seed, the same z whatever the network (so snapshots can be compared)."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def labels_for(G, class_idx, count):
    c = torch.zeros([count, G.c_dim])
    if G.c_dim:
        if class_idx is None:
            raise dnnlib.util.UserError('--class: this network is conditional; give a class index')
        if not 0 <= class_idx < G.c_dim:
            raise dnnlib.util.UserError(f'--class: {class_idx} is outside 0..{G.c_dim - 1}')
        c[:, class_idx] = 1
    return c


@torch.no_grad()
def generate_images(G, z, c, truncation_psi=1.0, noise_mode='const', batch=8, device='cpu'):
    """uint8 NHWC images from latents, quantised the way metrics and image files see them."""
    G = G.eval().requires_grad_(False).to(device)
    out = []
    for i in range(0, len(z), batch):
        img = G(z[i:i + batch].to(device), c[i:i + batch].to(device), truncation_psi=truncation_psi, noise_mode=noise_mode)
        out.append((img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu())
    return torch.cat(out).numpy()


def image_grid(rows):
    """Tile a list of rows (each [N, H, W, C] uint8, equal sizes) into one image array."""
    rows = [np.concatenate(list(r), axis=1) for r in rows]
    return np.concatenate(rows, axis=0)


def save_image(array, path):
    array = array[..., 0] if array.shape[-1] == 1 else array
    with dnnlib.util.atomic_open(path, 'wb') as f:
        PIL.Image.fromarray(array, 'L' if array.ndim == 2 else 'RGB').save(f, format='PNG')


def upscale_to(images, size):
    """Nearest-neighbour upscaling so that students and teachers of other sizes share one grid."""
    if images.shape[1] == size:
        return images
    factor = size // images.shape[1]
    if factor * images.shape[1] != size:
        raise dnnlib.util.UserError(f'cannot put {images.shape[1]} px images in a grid of {size} px images')
    return images.repeat(factor, axis=1).repeat(factor, axis=2)


@click.command()
@click.option('--network', 'networks', multiple=True, required=True, help='Snapshot path or URL; repeat to compare several')
@click.option('--seeds', default='0-7', show_default=True, help='Seeds, e.g. 0-7,12')
@click.option('--trunc', 'truncation_psi', type=float, default=1.0, show_default=True, help='Truncation psi')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True)
@click.option('--class', 'class_idx', type=int, default=None, help='Class label (conditional networks)')
@click.option('--outdir', type=str, default=None, help='Write one PNG per seed (and per network) here')
@click.option('--grid', type=str, default=None, help='Write all images as one grid PNG (rows = networks)')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@dnnlib.util.exit_on_user_error
def main(networks, seeds, truncation_psi, noise_mode, class_idx, outdir, grid, device):
    """Generate images (and comparison grids) from network snapshots."""
    if outdir is None and grid is None:
        raise dnnlib.util.UserError('give --outdir, --grid, or both')
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    seeds = parse_range(seeds)
    rows = []
    for idx, net in enumerate(networks):
        G = load_network(net, device='cpu').G_ema
        z = latents_for_seeds(seeds, G.z_dim)
        images = generate_images(G, z, labels_for(G, class_idx, len(seeds)), truncation_psi, noise_mode, device=device)
        print(f'{net}: {len(seeds)} images at {G.img_resolution} px')
        if outdir is not None:
            os.makedirs(outdir, exist_ok=True)
            prefix = f'net{idx}-' if len(networks) > 1 else ''
            for seed, image in zip(seeds, images):
                save_image(image, os.path.join(outdir, f'{prefix}seed{seed:04d}.png'))
        rows.append(images)
    if grid is not None:
        if len(rows) == 1 and len(seeds) > 8:
            # One network: wrap its images into rows of 8 instead of one long strip.
            images = rows[0]
            pad = (-len(images)) % 8
            images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
            rows = [images[i:i + 8] for i in range(0, len(images), 8)]
        size = max(r.shape[1] for r in rows)
        os.makedirs(os.path.dirname(os.path.abspath(grid)), exist_ok=True)
        save_image(image_grid([upscale_to(r, size) for r in rows]), grid)
        print(f'grid: {grid}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
