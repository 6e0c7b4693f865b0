"""Style mixing grids, with stylegan2-ada-pytorch's ``style_mixing.py`` options.

Each cell takes the W of its row seed and replaces the layers ``--styles`` with those of its column
seed's W; the first row and column show the seeds themselves. Writes ``<row>-<col>.png`` for every
cell (``<s>-<s>.png`` for the seeds) and ``grid.png``.

Example:
    python style_mixing.py --outdir=out --rows=85,100,75,458,1500 --cols=55,821,1789,293 --network=teacher.pkl
"""
import os

import click

import dnnlib
import dnnlib.cli
from training.checkpoints import load_network
from training.image_synthesis import parse_range, save_image, style_mixing_grid, style_mixing_images


@click.command()
@click.option('--network', 'network_pkl', required=True, help='Network pickle filename or URL')
@click.option('--rows', 'row_seeds', required=True, help='Random seeds to use for image rows')
@click.option('--cols', 'col_seeds', required=True, help='Random seeds to use for image columns')
@click.option('--styles', 'col_styles', default='0-6', show_default=True, help='Style layer range')
@click.option('--trunc', 'truncation_psi', type=dnnlib.cli.FiniteFloat(), default=1, show_default=True, help='Truncation psi')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True,
              help='Noise mode')
@click.option('--class', 'class_idx', type=int, default=None, help='Class label (conditional networks; not in NVIDIA\'s tool)')
@click.option('--outdir', required=True, metavar='DIR', help='Where to save the output images')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@dnnlib.util.exit_on_user_error
def main(network_pkl, row_seeds, col_seeds, col_styles, truncation_psi, noise_mode, class_idx, outdir, device):
    """Generate images using pretrained network pickle, mixing styles of row and column seeds."""
    device = dnnlib.cli.resolve_device(device)
    rows = parse_range(row_seeds, '--rows')
    cols = parse_range(col_seeds, '--cols')
    styles = parse_range(col_styles, '--styles')
    G = load_network(network_pkl, device='cpu').G_ema
    images = style_mixing_images(G, rows, cols, styles, truncation_psi=truncation_psi, noise_mode=noise_mode,
                                 class_idx=class_idx, device=device)
    for (row, col), image in images.items():
        save_image(image, os.path.join(outdir, f'{row}-{col}.png'))
    save_image(style_mixing_grid(images, rows, cols), os.path.join(outdir, 'grid.png'))
    print(f'{len(images)} images and grid.png in {outdir}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
