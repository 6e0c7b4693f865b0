"""DDPM loaders: diffusers folders, ddim checkpoints, our snapshots; bad input gives one clear error."""
import json
import os

import pytest
import torch

from dnnlib.util import UserError
from pruning import diffprune
from training import ddpm_checkpoints as dc


def _same_output(a, b, res=16):
    x = torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([5, 700])
    with torch.no_grad():
        return torch.equal(a(x, t).sample, b(x, t).sample)


def _ddim_state_dict(unet):
    """The micro UNet's tensors under ermongroup/ddim's names, written out by hand (2 levels,
    1 resnet per level, attention at level 1; up levels numbered by resolution: up.1 runs first)."""
    sd = unet.state_dict()
    out = {}

    def put(src, dst, conv1x1=False):
        for kind in ('weight', 'bias'):
            if f'{src}.{kind}' in sd:
                v = sd[f'{src}.{kind}']
                out[f'{dst}.{kind}'] = v[:, :, None, None] if (conv1x1 and kind == 'weight') else v

    def resnet(src, dst):
        for a, b in [('norm1', 'norm1'), ('conv1', 'conv1'), ('time_emb_proj', 'temb_proj'), ('norm2', 'norm2'),
                     ('conv2', 'conv2'), ('conv_shortcut', 'nin_shortcut')]:
            put(f'{src}.{a}', f'{dst}.{b}')

    def attn(src, dst):
        put(f'{src}.group_norm', f'{dst}.norm')
        for a, b in [('to_q', 'q'), ('to_k', 'k'), ('to_v', 'v'), ('to_out.0', 'proj_out')]:
            put(f'{src}.{a}', f'{dst}.{b}', conv1x1=True)

    put('time_embedding.linear_1', 'temb.dense.0')
    put('time_embedding.linear_2', 'temb.dense.1')
    put('conv_in', 'conv_in')
    resnet('down_blocks.0.resnets.0', 'down.0.block.0')
    put('down_blocks.0.downsamplers.0.conv', 'down.0.downsample.conv')
    resnet('down_blocks.1.resnets.0', 'down.1.block.0')
    attn('down_blocks.1.attentions.0', 'down.1.attn.0')
    resnet('mid_block.resnets.0', 'mid.block_1')
    attn('mid_block.attentions.0', 'mid.attn_1')
    resnet('mid_block.resnets.1', 'mid.block_2')
    for j in range(2):
        resnet(f'up_blocks.0.resnets.{j}', f'up.1.block.{j}')
        attn(f'up_blocks.0.attentions.{j}', f'up.1.attn.{j}')
        resnet(f'up_blocks.1.resnets.{j}', f'up.0.block.{j}')
    put('up_blocks.0.upsamplers.0.conv', 'up.1.upsample.conv')
    put('conv_norm_out', 'norm_out')
    put('conv_out', 'conv_out')
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values())
    return out


def test_ddim_checkpoint_every_tensor_mapped(tmp_path):
    torch.manual_seed(0)
    ref = dc.build_unet('micro').eval()
    ema = dc.build_unet('micro').eval()
    ckpt = [{'module.' + k: v for k, v in _ddim_state_dict(ref).items()}, {'state': {}}, 3, 100,
            {'module.' + k: v for k, v in _ddim_state_dict(ema).items()}]
    torch.save(ckpt, tmp_path / 'ckpt.pth')
    loaded = dc.load_ddpm(tmp_path / 'ckpt.pth', resolution=16, norm_groups=8)
    assert loaded.kind == 'ddim' and loaded.net is loaded.unet_ema
    assert _same_output(loaded.unet, ref) and _same_output(loaded.unet_ema, ema)
    # Plain state dict; an unknown key and a missing key are named.
    sd = _ddim_state_dict(ref)
    torch.save(dict(sd, **{'down.0.block.0.extra.weight': torch.zeros(1)}), tmp_path / 'bad.pth')
    with pytest.raises(UserError, match='unknown ddim tensor down.0.block.0.extra.weight'):
        dc.load_ddpm(tmp_path / 'bad.pth', norm_groups=8)
    del sd['mid.attn_1.q.bias']
    torch.save(sd, tmp_path / 'missing.pth')
    with pytest.raises(UserError, match='missing tensor mid_block.attentions.0.to_q.bias'):
        dc.load_ddpm(tmp_path / 'missing.pth', norm_groups=8)


def test_diffusers_folder_round_trip_and_diffusers_reads_ours(tmp_path):
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    unet = dc.build_unet('micro').eval()
    folder = dc.save_diffusers(unet, tmp_path / 'teacher', diffusion=dict(num_timesteps=1000, beta_start=1e-4, beta_end=0.02))
    assert sorted(os.listdir(tmp_path)) == ['teacher']  # no temporary left behind
    ours = dc.load_ddpm(folder)
    theirs = UNet2DModel.from_pretrained(folder, local_files_only=True).eval()
    assert _same_output(ours.unet, unet) and _same_output(theirs, unet)
    assert ours.diffusion.num_timesteps == 1000


def test_pruned_model_saves_and_reloads(tmp_path):
    torch.manual_seed(0)
    unet = dc.build_unet('micro')
    diffprune.prune_unet(unet, 0.5, importance='magnitude', verbose=False)
    unet.eval()
    folder = dc.save_diffusers(unet, tmp_path / 'pruned')
    back = dc.load_ddpm(folder).unet
    assert _same_output(back, unet)
    assert diffprune.count_params(back) == diffprune.count_params(unet)
    dc.save_snapshot(tmp_path / 'snap.pkl', unet=unet, unet_ema=unet)
    snap = dc.load_ddpm(tmp_path / 'snap.pkl')
    assert snap.kind == 'snapshot' and _same_output(snap.net, unet)


def test_bad_inputs_are_one_clear_line(tmp_path):
    torch.manual_seed(0)
    folder = dc.save_diffusers(dc.build_unet('micro'), tmp_path / 'm')
    cfg_path = os.path.join(folder, 'config.json')
    cfg = json.load(open(cfg_path))

    def write(**changes):
        json.dump(dict(cfg, **changes), open(cfg_path, 'w'))

    write(_class_name='UNet2DConditionModel')
    with pytest.raises(UserError, match='only UNet2DModel'):
        dc.load_ddpm(folder)
    write(down_block_types=['CrossAttnDownBlock2D', 'AttnDownBlock2D'])
    with pytest.raises(UserError, match="unsupported block type 'CrossAttnDownBlock2D'"):
        dc.load_ddpm(folder)
    write(some_option=1)
    with pytest.raises(UserError, match="unknown UNet2DModel config key 'some_option'"):
        dc.load_ddpm(folder)
    write(layers_per_block=2)  # the config asks for resnets the weights do not have
    with pytest.raises(UserError, match='missing tensor down_blocks.0.resnets.1'):
        dc.load_ddpm(folder)
    write()
    import safetensors.torch
    st = os.path.join(folder, 'diffusion_pytorch_model.safetensors')
    good = safetensors.torch.load_file(st)
    safetensors.torch.save_file(dict(good, **{'conv_in.weight': torch.zeros(16, 3, 5, 5)}), st)
    with pytest.raises(UserError, match=r'conv_in.weight has shape \(16, 3, 5, 5\)'):
        dc.load_ddpm(folder)
    safetensors.torch.save_file(good, st)
    os.makedirs(os.path.join(folder, 'scheduler'))
    json.dump({'_class_name': 'EulerDiscreteScheduler'}, open(os.path.join(folder, 'scheduler', 'scheduler_config.json'), 'w'))
    with pytest.raises(UserError, match="unknown scheduler 'EulerDiscreteScheduler'"):
        dc.load_ddpm(folder)
    os.remove(os.path.join(folder, 'diffusion_pytorch_model.safetensors'))
    with pytest.raises(UserError, match='no diffusion_pytorch_model'):
        dc.load_ddpm(folder)
    os.remove(cfg_path)
    with pytest.raises(UserError, match='config.json: missing'):
        dc.load_ddpm(folder)
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(UserError, match='junk.pth: cannot read'):
        dc.load_ddpm(tmp_path / 'junk.pth')
    with pytest.raises(UserError, match='unknown DDPM architecture'):
        dc.build_unet('cifar100')
