"""Convert any supported checkpoint into our snapshot pickle, or export its weights only.

Reads NVIDIA stylegan2-ada-pytorch / stylegan3 network pickles (without running their embedded
code unless --allow-code), NVIDIA TensorFlow StyleGAN2 pickles (no TensorFlow needed), rosinality
stylegan2-pytorch checkpoints, our snapshots and our weights-only exports.

Examples:
    # TensorFlow config-f teacher -> our snapshot pickle
    python legacy.py --source stylegan2-church-config-f.pkl --dest church.pkl

    # rosinality checkpoint -> weights-only file for people who must not unpickle
    python legacy.py --source 550000.pt --dest teacher.safetensors --weights-only

    # our (or NVIDIA's) StyleGAN2 snapshot -> a rosinality stylegan2-pytorch checkpoint
    python legacy.py --source network-snapshot-001000.pkl --dest 001000.pt --to rosinality
"""
import click

import dnnlib
import dnnlib.cli
from training import checkpoints, export_rosinality


def load_network_pkl(f, force_fp16=False, allow_code=False):
    """NVIDIA's ``legacy.load_network_pkl`` call shape: an open binary file -> snapshot EasyDict."""
    data = checkpoints.load_network_bytes(f.read(), getattr(f, 'name', '<file>'), allow_code=allow_code)
    return force_fp16_networks(data) if force_fp16 else data


def force_fp16_networks(data):
    """Rebuild G, D, G_ema with fp16 on the 4 highest resolutions and conv_clamp 256 (like NVIDIA's --force-fp16)."""
    for key in ('G', 'D', 'G_ema'):
        if data.get(key) is not None:
            data[key] = checkpoints.rebuild_network(data[key], num_fp16_res=4, conv_clamp=256)
    return data


@click.command()
@click.option('--source', required=True, metavar='PATH|URL', help='Checkpoint to convert (path or URL; URLs are cached).')
@click.option('--dest', required=True, type=dnnlib.cli.OutputFile(), metavar='PATH', help='Output: a snapshot .pkl, or with --weights-only a .safetensors/.pt file.')
@click.option('--weights-only', is_flag=True, help='Write tensors plus a JSON architecture description instead of a pickle.')
@click.option('--force-fp16', type=bool, is_flag=False, flag_value=True, default=False, metavar='[BOOL]',
              help='Rebuild the networks with num_fp16_res=4 and conv_clamp=256 (--force-fp16, or NVIDIA\'s --force-fp16=True).')
@click.option('--allow-code', is_flag=True, help='Run the code embedded in NVIDIA pickles (only for files you trust).')
@click.option('--drop', metavar='G,D,...', default='',
              help='Networks to leave out. G: G becomes the same object as G_ema (stored once, and NVIDIA\'s '
                   'legacy.load_network_pkl, which requires a G module, still reads the file); D, augment_pipe: None.')
@click.option('--to', 'to_format', type=click.Choice(['ours', 'rosinality']), default='ours', show_default=True,
              help='Output format: our snapshot pickle, or a rosinality stylegan2-pytorch checkpoint (g_ema, g, d, latent_avg).')
@dnnlib.util.exit_on_user_error
def main(source, dest, weights_only, force_fp16, allow_code, drop, to_format):
    """Convert a StyleGAN2/3 checkpoint (NVIDIA PyTorch or TensorFlow pickle, rosinality, ours) to our format."""
    data = checkpoints.load_network(source, allow_code=allow_code)
    if force_fp16:
        data = force_fp16_networks(data)
    for name in filter(None, (n.strip() for n in drop.split(','))):
        if name not in ('G', 'D', 'G_ema', 'augment_pipe'):
            raise dnnlib.util.UserError(f'--drop: {name!r} is not one of G, D, G_ema, augment_pipe')
        if name == 'G_ema':
            raise dnnlib.util.UserError('--drop: G_ema is what every tool uses; it cannot be dropped')
        data[name] = data['G_ema'] if name == 'G' else None
    if to_format == 'rosinality':
        if weights_only:
            raise dnnlib.util.UserError('--to rosinality: already tensors only; leave out --weights-only')
        export_rosinality.save_checkpoint(dict(data, G=None if data.get('G') is data.get('G_ema') else data.get('G')), dest)
    elif weights_only:
        checkpoints.export_weights(data, dest)
    else:
        checkpoints.save_snapshot(dest, dict(data))
    print(f'Wrote {dest}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
