"""Latent interpolation videos, with stylegan3's ``gen_video.py`` options.

Example:
    # A 4x2 grid of looping interpolations through seeds 0-31 (8 keyframes per cell).
    python gen_video.py --output=lerp.mp4 --trunc=1 --seeds=0-31 --grid=4x2 --network=teacher.pkl

The video has ``num_keyframes * w_frames`` frames at 60 fps; without --num-keyframes the number
of seeds must be a multiple of W*H. Writing mp4 needs ``imageio`` and ``imageio-ffmpeg``
(``pip install imageio imageio-ffmpeg``); without them the tool says so and exits before any work.
"""
import click

import dnnlib
import dnnlib.cli
from training.checkpoints import load_network
from training.image_synthesis import (interpolation_frames, open_video_writer, parse_grid, parse_range, video_available,
                                      write_video)


@click.command()
@click.option('--network', 'network_pkl', required=True, help='Network pickle filename or URL')
@click.option('--seeds', required=True, help='List of random seeds')
@click.option('--shuffle-seed', type=int, default=None, help='Random seed to use for shuffling seed order')
@click.option('--grid', default='1x1', show_default=True, help="Grid width/height, e.g. '4x3'")
@click.option('--num-keyframes', type=click.IntRange(min=1), default=None,
              help='Number of seeds to interpolate through [default: from the number of seeds]')
@click.option('--w-frames', type=click.IntRange(min=1), default=120, show_default=True,
              help='Number of frames to interpolate between latents')
@click.option('--trunc', 'truncation_psi', type=dnnlib.cli.FiniteFloat(), default=1, show_default=True, help='Truncation psi')
@click.option('--output', required=True, metavar='FILE', help='Output .mp4 filename')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@dnnlib.util.exit_on_user_error
def main(network_pkl, seeds, shuffle_seed, grid, num_keyframes, w_frames, truncation_psi, output, device):
    """Render a latent vector interpolation video."""
    device = dnnlib.cli.resolve_device(device)
    seeds = parse_range(seeds)
    grid_dims = parse_grid(grid)
    if not video_available():
        open_video_writer(output)  # raises the one-line "needs imageio and imageio-ffmpeg" error
    G = load_network(network_pkl, device='cpu').G_ema
    frames = interpolation_frames(G, seeds, grid_dims=grid_dims, num_keyframes=num_keyframes, w_frames=w_frames,
                                  truncation_psi=truncation_psi, shuffle_seed=shuffle_seed, device=device)
    count = write_video(output, frames, fps=60, bitrate='12M')
    print(f'{output}: {count} frames')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
