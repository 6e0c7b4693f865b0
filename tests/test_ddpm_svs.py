"""SVS on a pruned UNet through the one ``svs.scale_``: the DDPM selection rule and the GroupNorm reset."""
import numpy as np
import torch

import svs
from pruning import diffprune
from svs import scaling
from training import ddpm_checkpoints as dc
from training import diffusion as diff


def _pruned():
    torch.manual_seed(0)
    unet = dc.build_unet('micro')
    diffprune.prune_unet(unet, 0.5, importance='magnitude', verbose=False)
    with torch.no_grad():  # non-trivial GroupNorm affines and biases, as after training
        for name, p in unet.named_parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    return unet.eval()


def test_svs_changes_exactly_the_non_norm_tensors_and_takes_sqrt_of_singular_values(tmp_path):
    unet = _pruned()
    before = {k: v.detach().clone() for k, v in unet.named_parameters()}
    report = svs.scale_(unet)  # default selection: the DDPM rule (every name without "norm")
    reset = scaling.reset_group_norm_affine_(unet)
    expected = sorted(n for n in before if 'norm' not in n)
    assert sorted(layer.name for layer in report.layers) == expected
    assert any(n == 'conv_out.weight' for n in expected) and any('to_q' in n for n in expected)
    assert any('time_embedding.linear_1' in n for n in expected) and any('conv_shortcut' in n for n in expected)
    after = dict(unet.named_parameters())
    for name, old in before.items():
        new = after[name].detach()
        if name in expected:
            assert not torch.equal(new, old), name
            if old.ndim >= 2:
                s_old = np.linalg.svd(old.reshape(old.shape[0], -1).double().numpy(), compute_uv=False)
                s_new = np.linalg.svd(new.reshape(new.shape[0], -1).double().numpy(), compute_uv=False)
                np.testing.assert_allclose(s_new, np.sqrt(s_old), rtol=1e-4, atol=1e-6)
            else:  # official bias rule b / sqrt(||b|| + 1e-8)
                torch.testing.assert_close(new, old / torch.sqrt(old.norm() + 1e-8))
        elif name.endswith('.weight'):  # GroupNorm affines: reset to 1 / 0
            assert torch.equal(new, torch.ones_like(new)), name
        else:
            assert torch.equal(new, torch.zeros_like(new)), name
    assert len(reset) == sum(isinstance(m, torch.nn.GroupNorm) for m in unet.modules())

    # Pruned + SVS samples by DDIM and survives a diffusers save/reload.
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sched = diff.make_schedule()
    img = diff.ddim_sample(unet, sched, x_T, steps=4)
    back = dc.load_ddpm(dc.save_diffusers(unet, tmp_path / 'svs')).unet
    assert torch.equal(diff.ddim_sample(back, sched, x_T, steps=4), img)
    assert img.shape == (2, 3, 16, 16) and img.abs().max() <= 1


def test_stylegan_rule_unchanged_for_other_modules():
    lin = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GroupNorm(2, 4))
    assert not scaling.is_ddpm_unet(lin)
    assert scaling.default_names(lin) == ['0.weight', '0.bias', '1.weight', '1.bias']
