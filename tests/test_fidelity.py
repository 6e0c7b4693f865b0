"""Paper fidelity (issue 10): prune.py slices toRGB weights as the official code does (compensation
only on request), He/random student inits keep nothing of the pruned synthesis, the GAN-Slimming
loss is the official formula, and a distillation run's precision comes from its options."""
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import dnnlib
import prune
from pruning import channels
from training import distill, student_init
from training.checkpoints import load_network, save_snapshot

from test_pruning import random_masks, render, tiny_sg2

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TEACHER = ROOT / 'assets' / 'teacher-sample32.pkl'
DCP_FAST = ['--n-samples', '2', '--batch', '2', '--n-directions', '2', '--pca-samples', '16', '--device', 'cpu']


def _prune(tmp_path, name, *extra):
    out = tmp_path / name
    result = CliRunner().invoke(prune.main, ['--network', str(SHIPPED_TEACHER), '--ratio', '0.7', '--outdir', str(out),
                                             *DCP_FAST, *extra])
    assert result.exit_code == 0, result.output
    info = json.loads((out / 'pruning.json').read_text())
    return load_network(str(out / 'student.pkl'), verbose=False), info


def test_prune_defaults_slice_torgb_and_compensation_is_opt_in(tmp_path):
    teacher = load_network(str(SHIPPED_TEACHER), verbose=False).G_ema
    tsd = teacher.state_dict()
    groups = channels.channel_groups(teacher)
    plain, info = _prune(tmp_path, 'plain')
    comp, info_c = _prune(tmp_path, 'comp', '--torgb-compensation')
    assert info['method'] == 'dcp' and info['compensate_torgb'] is False and info_c['compensate_torgb'] is True
    assert info['masks'] == info_c['masks']
    psd, csd = plain.G_ema.state_dict(), comp.G_ema.state_dict()
    checked = 0
    for g in groups:
        keep = torch.tensor(info['masks'][g.index], dtype=torch.long)
        for name in g.fan_in_gain:  # toRGB weights [3, C, 1, 1] (and resnet skips) read this group
            sliced = tsd[name].index_select(1, keep)
            if name.endswith('torgb.weight'):
                assert torch.equal(psd[name], sliced), name  # the official code: a plain slice
                checked += 1
            factor = math.sqrt(len(keep) / g.size)
            assert torch.allclose(csd[name], psd[name] * factor, rtol=1e-6, atol=0), name
    assert checked == sum(1 for n in tsd if n.endswith('torgb.weight'))
    # --torgb-compensation reproduces the previous behaviour: the dense teacher with the channels zeroed.
    masks = channels.indices_to_masks(info['masks'], [g.size for g in groups])
    assert torch.allclose(render(comp.G_ema), render(channels.masked_dense(teacher, masks)), atol=1e-5)
    assert not torch.allclose(render(plain.G_ema), render(comp.G_ema), atol=1e-3)
    # The old flag still parses (a no-op: slicing is the default) and cannot contradict the new one.
    _old, info_old = _prune(tmp_path, 'old', '--no-torgb-compensation')
    assert info_old['compensate_torgb'] is False
    bad = CliRunner().invoke(prune.main, ['--network', str(SHIPPED_TEACHER), '--outdir', str(tmp_path / 'bad'),
                                          '--torgb-compensation', '--no-torgb-compensation'])
    assert bad.exit_code != 0 and 'contradict' in bad.output and not (tmp_path / 'bad').exists()


@pytest.fixture(scope='module')
def pruned_file(tmp_path_factory):
    teacher = tiny_sg2(channel_base=256, channel_max=16)  # every tensor perturbed: none equals a fresh init
    student = channels.slice_generator(teacher, random_masks(teacher, 0.5, seed=4))
    path = tmp_path_factory.mktemp('pruned') / 'student.pkl'
    save_snapshot(str(path), dict(G=student, G_ema=student, pruning=dict(teacher_widths=channels.group_widths(teacher))))
    return dnnlib.EasyDict(path=str(path), G=student)


@pytest.mark.parametrize('init', ['he', 'random'])
def test_he_and_random_init_keep_nothing_of_the_pruned_synthesis(pruned_file, init):
    torch.manual_seed(123)
    G = dnnlib.util.construct_class_by_name(**student_init.generator_kwargs(pruned_file.G))  # as the loop builds it
    fresh = {n: t.clone() for n, t in G.state_dict().items()}
    student_init.init_student(G, None, teacher=pruned_file.path, student=pruned_file.path, init=init)
    src = pruned_file.G.state_dict()
    synthesis = [n for n in G.state_dict() if n.startswith('synthesis.')]
    learned = {n for n, _ in G.named_parameters() if n.startswith('synthesis.')}
    for name, t in G.state_dict().items():
        if name.startswith('mapping.'):
            assert torch.equal(t, src[name]), name  # mapping (and w_avg) inherited, as officially
    for name in synthesis:
        t = G.state_dict()[name]
        if name in learned or 'noise_const' in name:
            assert not torch.equal(t, src[name]), f'{init}: {name} is still the pruned tensor'
    assert {'synthesis.b4.const', 'synthesis.b8.conv0.noise_strength'} <= learned
    if init == 'random':  # the constructor's synthesis, untouched
        assert all(torch.equal(G.state_dict()[n], fresh[n]) for n in synthesis)
    else:  # fresh const/noise, He weights, zero biases
        assert torch.equal(G.synthesis.b4.const, fresh['synthesis.b4.const'])
        assert G.synthesis.b8.conv0.noise_strength.detach().item() == 0
        assert torch.all(G.synthesis.b8.conv0.affine.bias == 0) and torch.all(G.synthesis.b8.conv0.bias == 0)


def test_gs_loss_is_the_official_formula_on_fixed_features():
    g = torch.Generator().manual_seed(0)
    fs = [torch.rand([2, c, s, s], generator=g, dtype=torch.float64) for c, s in ((4, 8), (6, 4), (8, 2), (8, 1))]
    ft = [torch.rand(f.shape, generator=g, dtype=torch.float64) for f in fs]
    # Written out element by element: G[b, i, j] = sum_n F[b, i, n] F[b, j, n] / (C H W).
    def gram(f):
        b, c = f.shape[:2]
        flat = f.reshape(b, c, -1)
        return torch.stack([torch.stack([torch.stack([(flat[k, i] * flat[k, j]).sum() / flat[k].numel()
                                                      for j in range(c)]) for i in range(c)]) for k in range(b)])
    content = sum(abs(a - b) for a, b in zip(fs[0].flatten().tolist(), ft[0].flatten().tolist())) / fs[0].numel()
    style = sum(((gram(a) - gram(b)) ** 2).sum() / gram(a).numel() for a, b in zip(fs, ft))
    expected = content + 1e5 * float(style)
    assert abs(float(distill.gs_perceptual_loss(fs, ft)) - expected) < 1e-5 * expected
    assert float(distill.gs_perceptual_loss(fs, fs)) == 0


def test_teacher_is_rebuilt_with_the_run_precision(tmp_path):
    teacher = tiny_sg2(channel_base=256, channel_max=16)  # fp32, no clamp, as the converters write it
    path = tmp_path / 'teacher.pkl'
    save_snapshot(str(path), dict(G=teacher, G_ema=teacher))
    T = distill.load_teacher(str(path), precision=dict(num_fp16_res=4, conv_clamp=256))
    assert student_init.precision_of(T.init_kwargs) == dict(num_fp16_res=4, conv_clamp=256)
    assert T.synthesis.b32.use_fp16 and T.synthesis.b32.conv1.conv_clamp == 256
    assert all(torch.equal(a, b) for a, b in zip(T.state_dict().values(), teacher.state_dict().values()))
    kw = student_init.generator_kwargs(teacher, precision=dict(num_fp16_res=4, conv_clamp=256))
    assert (kw.synthesis_kwargs['num_fp16_res'], kw.synthesis_kwargs['conv_clamp']) == (4, 256)
    assert student_init.generator_kwargs(teacher, fp32=True).synthesis_kwargs['num_fp16_res'] == 0
