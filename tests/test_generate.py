"""generate.py: images and comparison grids from snapshots; seeds give the same z for any network."""
import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dnnlib
import generate
from training import networks_stylegan2
from training.checkpoints import save_snapshot


def _snapshot(path, channel_max, seed):
    import torch
    torch.manual_seed(seed)
    G = networks_stylegan2.Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3,
                                     mapping_kwargs=dict(num_layers=1), channel_base=256, channel_max=channel_max,
                                     num_fp16_res=0)
    save_snapshot(str(path), dict(G=G, G_ema=G, D=None, augment_pipe=None, training_set_kwargs=None))
    return G


def test_parse_range():
    assert generate.parse_range('0-3,7') == [0, 1, 2, 3, 7]
    for bad in ['', '3-1', 'a']:
        with pytest.raises(dnnlib.util.UserError):
            generate.parse_range(bad)


def test_images_and_comparison_grid(tmp_path):
    a, b = tmp_path / 'a.pkl', tmp_path / 'b.pkl'
    G = _snapshot(a, 16, 0)
    _snapshot(b, 8, 1)
    result = CliRunner().invoke(generate.main, ['--network', str(a), '--network', str(b), '--seeds', '0-2',
                                                '--outdir', str(tmp_path / 'out'), '--grid', str(tmp_path / 'grid.png')])
    assert result.exit_code == 0, result.output
    grid = np.asarray(PIL.Image.open(tmp_path / 'grid.png'))
    assert grid.shape == (2 * 16, 3 * 16, 3)
    # The first row is network a's image for seed 0, generated from the seed's own z.
    z = generate.latents_for_seeds([0], G.z_dim)
    expected = generate.generate_images(G, z, generate.labels_for(G, None, 1))[0]
    assert np.array_equal(grid[:16, :16], expected)
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / 'out' / 'net0-seed0000.png')), expected)
    assert not np.array_equal(grid[:16, :16], grid[16:, :16])  # the other network differs


def test_single_network_grid_wraps_rows_of_eight(tmp_path):
    a = tmp_path / 'a.pkl'
    _snapshot(a, 8, 0)
    result = CliRunner().invoke(generate.main, ['--network', str(a), '--seeds', '0-9', '--grid', str(tmp_path / 'g.png')])
    assert result.exit_code == 0, result.output
    assert np.asarray(PIL.Image.open(tmp_path / 'g.png')).shape == (2 * 16, 8 * 16, 3)


def test_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(generate.main, ['--network', str(tmp_path / 'missing.pkl'), '--grid', str(tmp_path / 'g.png')])
    assert result.exit_code == 1 and 'no such file' in result.output
