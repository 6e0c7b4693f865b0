"""Generate images with stylegan3's ``gen_images.py`` options (one PNG per seed).

Examples:
    # Curated images of a StyleGAN2/3 snapshot (path or URL).
    python gen_images.py --outdir=out --trunc=1 --seeds=2 --network=teacher.pkl

    # StyleGAN3: translate and rotate the input (an inverse transform of the Fourier features).
    python gen_images.py --outdir=out --seeds=0-3 --translate=0.2,-0.1 --rotate=10 --network=sg3.pkl

    # The W+ latents of projector.py.
    python gen_images.py --outdir=out --projected-w=out/projected_w.npz --network=teacher.pkl

The same code as ``generate.py`` (``training/image_synthesis.py``): seed s gives NVIDIA's
``np.random.RandomState(s).randn(z_dim)``, so a seed shows the same image as NVIDIA's tool.
"""
import os

import click
import torch

import dnnlib
import dnnlib.cli
from training.checkpoints import load_network
from training.image_synthesis import (generate_images, labels_for, latents_for_seeds, load_projected_w, parse_range,
                                      parse_vec2, save_image, synthesize_ws)


@click.command()
@click.option('--network', 'network_pkl', required=True, help='Network pickle filename or URL')
@click.option('--seeds', default=None, help="List of random seeds (e.g., '0,1,4-6')")
@click.option('--trunc', 'truncation_psi', type=dnnlib.cli.FiniteFloat(), default=1, show_default=True, help='Truncation psi')
@click.option('--class', 'class_idx', type=int, default=None, help='Class label (unconditional if not specified)')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True,
              help='Noise mode')
@click.option('--translate', default='0,0', show_default=True, metavar='VEC2',
              help="Translate XY-coordinate (e.g. '0.3,1'); StyleGAN3 only")
@click.option('--rotate', type=dnnlib.cli.FiniteFloat(), default=0, show_default=True, metavar='ANGLE', help='Rotation angle in degrees; StyleGAN3 only')
@click.option('--projected-w', default=None, metavar='FILE', help='projected_w.npz of projector.py (instead of --seeds)')
@click.option('--outdir', required=True, metavar='DIR', help='Where to save the output images')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@dnnlib.util.exit_on_user_error
def main(network_pkl, seeds, truncation_psi, class_idx, noise_mode, translate, rotate, projected_w, outdir, device):
    """Generate images using pretrained network pickle."""
    device = dnnlib.cli.resolve_device(device)
    translate = parse_vec2(translate)
    if not torch.isfinite(torch.tensor([truncation_psi, rotate])).all():
        raise dnnlib.util.UserError('--trunc/--rotate: must be finite numbers')
    G = load_network(network_pkl, device='cpu').G_ema
    if projected_w is not None:
        if seeds is not None:
            print('warning: --seeds is ignored when using --projected-w')
        images = synthesize_ws(G, load_projected_w(projected_w), noise_mode=noise_mode, device=device,
                               translate=translate, rotate=rotate)
        names = [f'proj{idx:02d}.png' for idx in range(len(images))]
    else:
        if seeds is None:
            raise dnnlib.util.UserError('--seeds: required (or give --projected-w)')
        seeds = parse_range(seeds)
        z = latents_for_seeds(seeds, G.z_dim)
        images = generate_images(G, z, labels_for(G, class_idx, len(seeds)), truncation_psi=truncation_psi,
                                 noise_mode=noise_mode, device=device, translate=translate, rotate=rotate)
        names = [f'seed{seed:04d}.png' for seed in seeds]
    for name, image in zip(names, images):
        save_image(image, os.path.join(outdir, name))
    print(f'{len(images)} images in {outdir}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
