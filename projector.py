"""Project a target image into the W space of a generator (stylegan2-ada-pytorch's ``projector.py``).

Example:
    python projector.py --outdir=out --target=face.png --network=teacher.pkl

Writes ``target.png`` (the centre-cropped, Lanczos-resized target), ``proj.png`` (the generator's
image of the final w with its own constant noise, as NVIDIA), ``projected_w.npz`` (key ``w``, [1, num_ws,
w_dim]; ``gen_images.py --projected-w`` / ``generate.py --projected-w`` render it) and, with
``--save-video`` (default, as NVIDIA), ``proj.mp4``: target | projection at every step, 10 fps
(needs imageio and imageio-ffmpeg; without them the video is skipped with one line).

The distance is NVIDIA's VGG16 LPIPS embedding (``vgg16.pt``, the P&R / PPL detector; offline
machines: --detector-dir with that file).
"""
import io
import os

import click
import numpy as np
import torch

import dnnlib
import dnnlib.cli
from metrics import detectors
from training.checkpoints import load_network
from training.image_synthesis import image_grid, load_target_image, save_image, to_uint8, video_available, write_video
from training.latent_projection import project


@click.command()
@click.option('--network', 'network_pkl', required=True, help='Network pickle filename or URL')
@click.option('--target', 'target_fname', required=True, metavar='FILE', help='Target image file to project to')
@click.option('--num-steps', type=click.IntRange(min=1), default=1000, show_default=True, help='Number of optimization steps')
@click.option('--seed', type=int, default=303, show_default=True, help='Random seed')
@click.option('--save-video', type=bool, default=True, show_default=True, metavar='BOOL',
              help='Save an mp4 video of optimization progress')
@click.option('--outdir', required=True, metavar='DIR', help='Where to save the output images')
@click.option('--detector-dir', type=click.Path(file_okay=False), default=None,
              help='Folder with vgg16.pt for offline machines')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@click.option('--verbose/--quiet', default=True, show_default=True, help='Print the distance every 100 steps')
@dnnlib.util.exit_on_user_error
def main(network_pkl, target_fname, num_steps, seed, save_video, outdir, detector_dir, device, verbose):
    """Project given image to the latent space of pretrained network pickle."""
    device = dnnlib.cli.resolve_device(device)
    np.random.seed(seed)
    torch.manual_seed(seed)
    G = load_network(network_pkl, device='cpu').G_ema
    if G.c_dim:
        raise dnnlib.util.UserError(f'{network_pkl}: conditional generators cannot be projected (no label to optimise)')
    target = load_target_image(target_fname, G.img_resolution, G.img_channels)
    vgg16 = detectors.load_detector('vgg16', device=device, detector_dir=detector_dir)

    def log(step, dist, loss):
        if verbose and (step % 100 == 0 or step == num_steps):
            print(f'step {step:>4d}/{num_steps}: dist {dist:<4.2f} loss {loss:<5.2f}')

    ws, _noise = project(G, torch.from_numpy(target.transpose(2, 0, 1).copy()), vgg16, num_steps=num_steps,
                         device=device, log=log)
    # As NVIDIA: proj.png and the video use the network's own constant noise (the optimised noise is
    # not saved), so proj.png is exactly what `gen_images.py --projected-w` renders.
    G = G.eval().requires_grad_(False).to(device)

    def render(w):
        with torch.no_grad():
            return to_uint8(G.synthesis(w[None].to(device), noise_mode='const'))[0].cpu().numpy()

    os.makedirs(outdir, exist_ok=True)
    if save_video:
        if video_available():
            frames = (image_grid([[target, render(w)]]) for w in ws)
            write_video(os.path.join(outdir, 'proj.mp4'), frames, fps=10, bitrate='16M')
        else:
            print('proj.mp4 skipped: writing mp4 needs imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg)')
    save_image(target, os.path.join(outdir, 'target.png'))
    save_image(render(ws[-1]), os.path.join(outdir, 'proj.png'))
    buf = io.BytesIO()
    np.savez(buf, w=ws[-1][None].numpy())
    dnnlib.util.atomic_write_bytes(os.path.join(outdir, 'projected_w.npz'), buf.getvalue())
    print(f'Wrote target.png, proj.png, projected_w.npz{" and proj.mp4" if save_video and video_available() else ""} in {outdir}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
