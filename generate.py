"""Generate images from any snapshot, or the same seeds through several snapshots in one grid.

Examples:
    # Eight images from a teacher pickle (path or URL).
    python generate.py --network teacher.pkl --seeds 0-7 --outdir out

    # The paper's qualitative comparison: teacher, pruned and pruned+SVS students on the same seeds.
    python generate.py --network teacher.pkl --network pruned.pkl --network svs.pkl \\
        --seeds 0-5 --grid out/compare.png
"""
import os

import click
import numpy as np
import torch

import dnnlib
import dnnlib.cli
from training import ddpm_checkpoints
from training.checkpoints import load_network
from training.image_synthesis import (generate_images, image_grid, labels_for, latents_for_seeds,  # noqa: F401 (re-exported)
                                      load_projected_w, parse_range, save_image, synthesize_ws, upscale_to,
                                      wrap_rows)


@click.command()
@click.option('--network', 'networks', multiple=True, required=True, help='Snapshot path or URL; repeat to compare several')
@click.option('--seeds', default='0-7', show_default=True, help='Seeds, e.g. 0-7,12')
@click.option('--trunc', 'truncation_psi', type=dnnlib.cli.FiniteFloat(), default=1.0, show_default=True, help='Truncation psi')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True)
@click.option('--class', 'class_idx', type=int, default=None, help='Class label (conditional networks)')
@click.option('--outdir', type=dnnlib.cli.OutputDir(), default=None, help='Write one PNG per seed (and per network) here')
@click.option('--grid', type=dnnlib.cli.OutputFile(), default=None, help='Write all images as one grid PNG (rows = networks)')
@click.option('--projected-w', type=str, default=None, metavar='FILE',
              help='projected_w.npz of projector.py: write proj00.png ... from its W+ latents instead of seeds')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@click.option('--ddim-steps', type=click.IntRange(min=1), default=100, show_default=True, help='DDPM networks: DDIM sampling steps')
@click.option('--skip-type', type=click.Choice(['uniform', 'quad']), default='uniform', show_default=True, help='DDPM networks: DDIM timestep spacing')
@click.option('--eta', type=click.FloatRange(min=0), default=0.0, show_default=True, help='DDPM networks: DDIM eta (0 = deterministic)')
@dnnlib.util.exit_on_user_error
def main(networks, seeds, truncation_psi, noise_mode, class_idx, outdir, grid, projected_w, device, ddim_steps, skip_type, eta):
    """Generate images (and comparison grids) from network snapshots."""
    if outdir is None and grid is None:
        raise dnnlib.util.UserError('give --outdir, --grid, or both')
    device = dnnlib.cli.resolve_device(device)
    if projected_w is not None:
        if len(networks) != 1 or outdir is None:
            raise dnnlib.util.UserError('--projected-w: give one --network and --outdir')
        G = load_network(networks[0], device='cpu').G_ema
        images = synthesize_ws(G, load_projected_w(projected_w), noise_mode=noise_mode, device=device)
        for idx, image in enumerate(images):
            save_image(image, os.path.join(outdir, f'proj{idx:02d}.png'))
        print(f'{projected_w}: {len(images)} images in {outdir}')
        return
    seeds = parse_range(seeds)
    rows = []
    for idx, net in enumerate(networks):
        if ddpm_checkpoints.is_ddpm_source(net):  # seed s -> x_T; the same seeds give every network the same noise
            G = ddpm_checkpoints.load_generator(net, steps=ddim_steps, skip_type=skip_type, eta=eta).G_ema
        else:
            G = load_network(net, device='cpu').G_ema
        if class_idx is not None and not G.c_dim:
            raise dnnlib.util.UserError(f'--class: {net} is an unconditional network; leave --class out')
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
            rows = wrap_rows(rows[0], 8)
        size = max(r.shape[1] for r in rows)
        channels = max(r.shape[-1] for r in rows)  # a grayscale network next to RGB ones: shown as gray RGB
        rows = [np.repeat(r, channels, axis=-1) if r.shape[-1] == 1 and channels > 1 else r for r in rows]
        os.makedirs(os.path.dirname(os.path.abspath(grid)), exist_ok=True)
        save_image(image_grid([upscale_to(r, size) for r in rows]), grid)
        print(f'grid: {grid}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
