"""Diff-Prune on UNet2DModel: the exact params/MACs of Table 3's architectures and pruned models."""
import pytest
import torch

from dnnlib.util import UserError
from pruning import diffprune
from training import ddpm_checkpoints as dc
from training import diffusion as diff

# VainF/Diff-Pruning's numbers (torch-pruning count_ops_and_params on ddim's UNet): params M, MACs G.
TARGETS = {
    'cifar10': {0.0: (35.7463, 6.0655), 0.3: (19.8512, 3.3928), 0.5: (8.9685, 1.5210), 0.7: (5.1205, 1.0766)},
    'celeba64': {0.0: (78.7008, 23.9230), 0.3: (43.7350, 13.3221), 0.5: (19.7142, 5.9979), 0.7: (9.2527, 4.1829)},
}


def _counts(unet):
    macs, params = diffprune.count_ddim_macs(unet)
    return round(params / 1e6, 4), round(macs / 1e9, 4)


@pytest.mark.parametrize('arch', ['cifar10', 'celeba64'])
def test_exact_targets(arch):
    torch.manual_seed(0)
    assert _counts(dc.build_unet(arch)) == TARGETS[arch][0.0]
    for ratio in (0.3, 0.5, 0.7):
        unet = dc.build_unet(arch)
        report = diffprune.prune_unet(unet, ratio, importance='magnitude', verbose=False)
        assert _counts(unet) == TARGETS[arch][ratio], (arch, ratio)
        assert (round(report.params / 1e6, 4), round(report.macs / 1e9, 4)) == TARGETS[arch][ratio]
        assert report.layers[0].name  # something was pruned, by name
        # The pruned network still runs at its resolution.
        res = unet.config.sample_size
        assert unet(torch.zeros(1, 3, res, res), torch.tensor([10])).sample.shape == (1, 3, res, res)


def test_new_rounding_differs_as_documented():
    unet = dc.build_unet('cifar10')
    diffprune.prune_unet(unet, 0.3, importance='random', rounding='per-group', verbose=False)
    assert round(diffprune.count_params(unet) / 1e6, 2) == 13.95


def test_channel_rounding_formulas():
    # legacy: remove 32*((C - int(C*(1-r)))//32); per-group: keep 32*int(C/32*(1-r)); plain: keep int(C*(1-r)).
    assert diffprune.channels_to_remove(256, 0.3, 32, 'legacy') == 32 * ((256 - int(256 * 0.7)) // 32) == 64
    assert 256 - diffprune.channels_to_remove(256, 0.3, 32, 'per-group') == 32 * int(8 * 0.7) == 160
    assert 256 - diffprune.channels_to_remove(256, 0.3, 1) == int(256 * 0.7)
    with pytest.raises(UserError):
        diffprune.channels_to_remove(256, 0.3, 32, 'nearest')


def _micro_batch(n=4):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 16, 16, generator=g) * 2 - 1


def test_groupnorm_layers_lose_the_same_channels_in_every_group_and_conv_out_is_kept():
    torch.manual_seed(0)
    unet = dc.build_unet('micro')
    before = unet.conv_in.weight.detach().clone()
    report = diffprune.prune_unet(unet, 0.5, importance='taylor', images=_micro_batch(), diffusion=diff.make_schedule(num_timesteps=40),
                                  thr=0.05, verbose=False)
    assert report.taylor_steps >= 1
    assert unet.conv_out.out_channels == 3 and unet.conv_out.in_channels == 8
    # conv_in's 16 outputs are normalised by 8 groups of 2: one channel kept per group, at the same offset.
    kept = [int(torch.nonzero((before == w).all(dim=(1, 2, 3)))[0]) for w in unet.conv_in.weight]
    assert len(kept) == 8 and len({k % 2 for k in kept}) == 1 and sorted(k // 2 for k in kept) == list(range(8))
    assert unet.down_blocks[0].downsamplers[0].channels == unet.down_blocks[0].downsamplers[0].conv.in_channels
    attn = unet.down_blocks[1].attentions[0]
    assert attn.scale == pytest.approx(attn.to_q.out_features ** -0.5)


def test_an_ungrouped_layer_keeps_int_c_times_1_minus_r_in_order():
    # time_embedding.linear_1 (64 outputs, no GroupNorm after it): keeps int(64 * 0.5) = 32 rows,
    # physically removed, the kept ones in their original order.
    torch.manual_seed(0)
    unet = dc.build_unet('micro')
    w1 = unet.time_embedding.linear_1.weight.detach().clone()
    diffprune.prune_unet(unet, 0.5, importance='random', verbose=False)
    assert unet.time_embedding.linear_1.out_features == 32
    rows = [int(torch.nonzero((w1 == r).all(dim=1))[0]) for r in unet.time_embedding.linear_1.weight]
    assert sorted(rows) == rows and len(set(rows)) == 32


def test_ratio_that_removes_a_whole_group_is_refused():
    unet = dc.build_unet('micro')
    with pytest.raises(UserError, match='every channel'):
        diffprune.prune_unet(unet, 0.99, importance='random', verbose=False)
    with pytest.raises(UserError, match='needs a batch'):
        diffprune.prune_unet(dc.build_unet('micro'), 0.3, importance='taylor', verbose=False)
    with pytest.raises(UserError, match='--ratio'):
        diffprune.prune_unet(dc.build_unet('micro'), 1.5, importance='random', verbose=False)


def test_channel_counts_do_not_depend_on_the_importance():
    # A three-level UNet (skip concatenations of pruned layers): taylor, magnitude and random agree.
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    counts = []
    for importance in diffprune.IMPORTANCES:
        torch.manual_seed(0)
        unet = dc.build_unet('tiny')
        diffprune.prune_unet(unet, 0.3, importance=importance, images=images, diffusion=diff.make_schedule(num_timesteps=10),
                             verbose=False)
        counts.append(diffprune.count_ddim_macs(unet))
    assert counts[0] == counts[1] == counts[2] and counts[0][1] < 1113955
