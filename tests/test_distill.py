"""Distillation terms, student initialisations and ablation hooks on tiny 32 px generators.

Each term's value and gradient are compared with an independent computation: the teacher is run by
hand on the same z / mixing / offsets (noise 'const' so it can be repeated), LPIPS by the explicit
float64 reference of test_lpips, the relation loss by the NumPy reference of test_distill_math.
"""
import copy
import os
import tempfile

import numpy as np
import pytest
import torch

import dnnlib
import svs
from pruning import channels
from pruning.content_mask import content_mask
from training import distill
from training import student_init
from training.loss import StyleGAN2Loss

from test_distill_math import _np_relation_kl
from test_lpips import make_lin_state, make_vgg_state, reference_lpips
from test_pruning import random_masks, tiny_sg2

B = 3


@pytest.fixture(scope='module')
def nets():
    teacher = tiny_sg2(channel_base=256, channel_max=16)
    # Compensated toRGB: the student's images keep the teacher's scale, which the float32-vs-float64
    # gradient tolerances below were set for.
    student = channels.slice_generator(teacher, random_masks(teacher, 0.5, seed=1), compensate_torgb=True)
    student = student.train().requires_grad_(True)
    return dnnlib.EasyDict(teacher=teacher, student=student)


@pytest.fixture(scope='module')
def lpips_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp('lpips')
    vgg, lin = make_vgg_state(), make_lin_state()
    torch.save(vgg, folder / 'vgg16.pth')
    torch.save(lin, folder / 'vgg.pth')
    return dnnlib.EasyDict(vgg_path=str(folder / 'vgg16.pth'), lin_path=str(folder / 'vgg.pth'), vgg=vgg, lin=lin)


def _term(nets, lpips_files=None, **kwargs):
    kw = dict(l1_weight=3, lpips_weight=0, ld_weight=30, teacher_noise='const')
    if lpips_files is not None:
        kw.update(lpips_vgg=lpips_files.vgg_path, lpips_lin=lpips_files.lin_path)
    kw.update(kwargs)
    return distill.DistillTerm('cpu', dnnlib.EasyDict(G=nets.student, teacher=nets.teacher), **kw)


def _run(nets, terms, seed=0):
    loss = StyleGAN2Loss('cpu', G=nets.student, D=None, style_mixing_prob=1.0, terms=terms)
    torch.manual_seed(seed)
    z = torch.randn([B, nets.student.z_dim])
    c = torch.zeros([B, 0])
    ctx = loss.run_G(z, c, terms=terms, ctx=dnnlib.EasyDict(phase='Gmain'))
    ctx.synthesis_img.retain_grad()
    for f in ctx.features.values() if ctx.features else []:
        f.retain_grad()
    return ctx


def _mixed_ws(G, ctx):
    """Mapping + style mixing written out by hand (no helper of the loss)."""
    with torch.no_grad():
        ws = G.mapping(ctx.z, ctx.c).clone()
        ws2 = G.mapping(ctx.mixing.z2, ctx.c)
        cutoff = int(ctx.mixing.cutoff)
        ws[:, cutoff:] = ws2[:, cutoff:]
    return ws


def _reference_teacher(nets, ctx):
    ws = _mixed_ws(nets.teacher, ctx)
    ws = torch.cat([ws, ws + ctx.latent_offsets[:, None, :]])
    with torch.no_grad():
        return nets.teacher.synthesis(ws, noise_mode='const', return_features=True)


def _np_bank(G, max_res, k=5):
    bank = []
    for res in G.synthesis.block_resolutions:
        if 8 <= res <= max_res:
            blk = getattr(G.synthesis, f'b{res}')
            a = np.concatenate([blk.conv0.affine.weight.numpy(), blk.conv1.affine.weight.numpy()]).astype(np.float64)
            a /= np.linalg.norm(a, axis=1, keepdims=True)
            vals, vecs = np.linalg.eigh(a.T @ a)
            bank.append(vecs[:, np.argsort(-vals)[:k]].T)
    return np.concatenate(bank)

# ---------------------------------------------------------------------------------------------


def test_offsets_shared_and_teacher_runs_once_without_grad(nets, lpips_files):
    term = _term(nets, lpips_files, lpips_weight=3)
    calls = []
    handle = nets.teacher.synthesis.register_forward_hook(lambda _m, _i, out: calls.append(out))
    try:
        ctx = _run(nets, [term])
        out = term(ctx)
    finally:
        handle.remove()
    assert set(out) == {'l1', 'lpips', 'ld'}
    assert len(calls) == 1 and not calls[0][0].requires_grad  # one teacher forward for all terms, no graph
    # The student got [ws, ws + delta] with the same delta for every w of a sample.
    ws = _mixed_ws(nets.student, ctx)
    delta = ctx.latent_offsets
    torch.testing.assert_close(ctx.synthesis_ws.detach(), torch.cat([ws, ws + delta[:, None, :]]), rtol=0, atol=1e-6)
    # Each offset is 5·ε·d̂ for a direction d of the LOADED teacher's bank (blocks 8..32 here).
    assert term.ld_layers == [16, 32]
    bank = _np_bank(nets.teacher, 32)
    units = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    for d in delta.numpy().astype(np.float64):
        assert np.abs(units @ d / np.linalg.norm(d)).max() > 1 - 1e-5
    assert np.allclose(np.abs(np.sum(term.bank.numpy() * bank, axis=1)), 1, atol=1e-4)  # same vectors up to sign


def test_l1_and_ld_values_and_gradients(nets):
    term = _term(nets)
    ctx = _run(nets, [term], seed=1)
    out = term(ctx)
    t_img, t_feat = _reference_teacher(nets, ctx)
    s_img = ctx.synthesis_img[:B].detach()
    ref_l1 = 3 * np.abs(t_img[:B].numpy().astype(np.float64) - s_img.numpy()).mean()
    assert abs(out['l1'].item() - ref_l1) < 1e-5 * max(1, ref_l1)
    ref_ld = 30 * sum(_np_relation_kl(ctx.features[k].detach().numpy(), t_feat[k].numpy()) for k in (16, 32))
    assert abs(out['ld'].item() - ref_ld) < 1e-4 * max(1, ref_ld)

    # d(l1)/d(student images) = 3·sign(x_S − x_T)/N on the un-offset half, 0 on the offset half.
    (g_img,) = torch.autograd.grad(out['l1'], [ctx.synthesis_img], retain_graph=True)
    expected = torch.zeros_like(g_img)
    expected[:B] = 3 * torch.sign(s_img - t_img[:B]) / s_img.numel()
    torch.testing.assert_close(g_img, expected, rtol=1e-5, atol=1e-9)

    # LD gradient w.r.t. the student features against a float64 formula written out here.
    # Block 32 is computed from block 16's output, so the reference for the 16 px features adds the
    # part that flows back through block 32.
    f16, f32 = ctx.features[16], ctx.features[32]
    g16, g32 = torch.autograd.grad(out['ld'], [f16, f32], retain_graph=True)

    def ref_grad(f, k):
        x = f.detach().double().requires_grad_(True)

        def rel(v):
            v = v.reshape(v.shape[0], -1)
            a, b = v[:B], v[B:]
            return (a @ b.T) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :])
        p = torch.softmax(rel(t_feat[k].double()), dim=1)
        q_log = torch.log_softmax(rel(x), dim=1)
        ref = 30 * (p * (p.log() - q_log)).sum() / B
        return torch.autograd.grad(ref, [x])[0]
    g32_ref = ref_grad(f32, 32)
    torch.testing.assert_close(g32.double(), g32_ref, rtol=1e-4, atol=1e-9)
    (through,) = torch.autograd.grad(f32, [f16], grad_outputs=[g32_ref.to(f32.dtype)], retain_graph=True)
    torch.testing.assert_close(g16.double(), ref_grad(f16, 16) + through.double(), rtol=1e-4, atol=1e-8)
    # The gradient reaches the student's synthesis and mapping.
    out['ld'].backward()
    assert nets.student.synthesis.b16.conv0.weight.grad.abs().sum() > 0
    assert nets.student.mapping.fc0.weight.grad.abs().sum() > 0
    nets.student.zero_grad(set_to_none=True)


def test_lpips_value_and_gradient(nets, lpips_files):
    term = _term(nets, lpips_files, l1_weight=0, ld_weight=0, lpips_weight=3)
    assert term.lpips_downsample == 'avgpool'
    loss = StyleGAN2Loss('cpu', G=nets.student, D=None, style_mixing_prob=1.0, terms=[term])
    torch.manual_seed(2)
    ctx = loss.run_G(torch.randn([B, 16]), torch.zeros([B, 0]), terms=[term])
    ctx.synthesis_img.retain_grad()
    out = term(ctx)
    assert set(out) == {'lpips'} and ctx.latent_offsets is None
    t_img = nets.teacher.synthesis(_mixed_ws(nets.teacher, ctx), noise_mode='const').detach()
    x = ctx.synthesis_img.detach().double().requires_grad_(True)
    ref = 3 * reference_lpips(lpips_files.vgg, lpips_files.lin, x, t_img.double()).mean()
    assert abs(out['lpips'].item() - ref.item()) < 1e-5 * max(1, ref.item())
    (g,) = torch.autograd.grad(out['lpips'], [ctx.synthesis_img])
    (g_ref,) = torch.autograd.grad(ref, [x])
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-3, atol=1e-7)


def test_face_mask_multiplies_both_images(nets, tmp_path):
    from test_face_parsing import random_bisenet
    path = tmp_path / '79999_iter.pth'
    torch.save(random_bisenet(seed=3).state_dict(), path)
    term = _term(nets, ld_weight=0, mask='face', face_parser=str(path))
    ctx = _run(nets, [term], seed=3)
    out = term(ctx)
    t_img = nets.teacher.synthesis(_mixed_ws(nets.teacher, ctx), noise_mode='const').detach()
    mask = content_mask(term.parser, t_img, 'face', resize='bilinear')
    torch.testing.assert_close(ctx.distill_teacher.mask, mask)
    s = ctx.synthesis_img[:B].detach().double()
    m = mask.double()
    ref = 3 * (t_img.double() * m - s * m).abs().mean()
    assert abs(out['l1'].item() - ref.item()) < 1e-5 * max(1, ref.item())


def test_ld_is_float32_under_fp16_features(nets):
    term = _term(nets, l1_weight=0)
    ctx = _run(nets, [term], seed=4)
    term(ctx)  # fills the teacher cache
    ctx.features = {k: (v.detach() * 300).half() for k, v in ctx.features.items()}
    ctx.distill_teacher.features = {k: (v * 300).half() for k, v in ctx.distill_teacher.features.items()}
    assert torch.isinf(ctx.features[32].flatten(1).square().sum(1)).any()  # fp16 norms would overflow
    out = term(ctx)
    assert out['ld'].dtype == torch.float32 and torch.isfinite(out['ld'])
    ref = 30 * sum(_np_relation_kl(ctx.features[k].float().numpy(), ctx.distill_teacher.features[k].float().numpy())
                   for k in (16, 32))
    assert abs(out['ld'].item() - ref) < 1e-3 * max(1, ref)


def test_vgg_feature_term(nets, lpips_files):
    term = _term(nets, lpips_files, l1_weight=0, ld_weight=0, vgg_weight=3)
    ctx = _run(nets, [term], seed=5)
    out = term(ctx)
    t_img = nets.teacher.synthesis(_mixed_ws(nets.teacher, ctx), noise_mode='const').detach()

    def feats(img):  # VGG16 relu1_2..relu4_3 by hand from the state_dict, float64, [0, 1] input unnormalised
        x = (img.double() + 1) / 2
        result, idx = [], 0
        for stage_idx, n_conv in enumerate([2, 2, 3, 3]):
            if stage_idx:
                x = torch.nn.functional.max_pool2d(x, 2)
            for _ in range(n_conv):
                x = torch.relu(torch.nn.functional.conv2d(x, lpips_files.vgg[f'features.{idx}.weight'].double(),
                                                          lpips_files.vgg[f'features.{idx}.bias'].double(), padding=1))
                idx += 2
            idx += 1
            result.append(x)
        return result
    def gram(f):  # official GAN-Slimming: F F^T / (C H W)
        f = f.flatten(2)
        return torch.einsum('bcn,bdn->bcd', f, f) / f[0].numel()
    fs, ft = feats(ctx.synthesis_img[:B].detach()), feats(t_img)
    ref = 3 * ((fs[0] - ft[0]).abs().mean() + 1e5 * sum(((gram(a) - gram(b)) ** 2).mean() for a, b in zip(fs, ft)))
    assert abs(out['vgg'].item() - ref.item()) < 1e-4 * max(1, ref.item())


def test_style_sparsity_value_gradient_and_no_leftover_hooks(nets):
    G = nets.student
    term = distill.StyleSparsityTerm('cpu', dnnlib.EasyDict(G=G), eta=1e-5)
    ld = _term(nets, l1_weight=0)  # offsets double the synthesis batch; only the first B count
    ctx = _run(nets, [ld, term], seed=6)
    out = term(ctx)
    assert all(not m._forward_hooks for _n, m, _g in term.modules)
    ws = ctx.synthesis_ws[:B].detach()
    styles, w_idx = [], 0
    for res in G.synthesis.block_resolutions:
        blk = getattr(G.synthesis, f'b{res}')
        convs = [blk.conv1] if res == 4 else [blk.conv0, blk.conv1]
        for k, conv in enumerate(convs):
            styles.append(conv.affine(ws[:, w_idx + k]))
        styles.append(blk.torgb.affine(ws[:, w_idx + len(convs)]) * blk.torgb.weight_gain)
        w_idx += len(convs)
    ref = 1e-5 * sum(s.mean(0).abs().sum() for s in styles)
    assert len(term.modules) == len(styles)
    assert abs(out['sparse'].item() - ref.item()) < 1e-6 * ref.item()
    w = G.synthesis.b16.conv0.affine.weight
    (g,) = torch.autograd.grad(out['sparse'], [w], retain_graph=True)
    (g_ref,) = torch.autograd.grad(ref, [w])
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-12)
    copy.deepcopy(G)  # no hook closures left on the network

# ---------------------------------------------------------------------------------------------
# Student initialisations and hooks.


@pytest.fixture(scope='module')
def student_file(nets, tmp_path_factory):
    from training.checkpoints import save_snapshot
    from training.networks_stylegan2 import Discriminator
    torch.manual_seed(7)
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16)
    path = tmp_path_factory.mktemp('student') / 'student.pkl'
    S = copy.deepcopy(nets.student).eval().requires_grad_(False)
    save_snapshot(str(path), dict(G=S, G_ema=S, D=D, pruning=dict(teacher_widths=channels.group_widths(nets.teacher))))
    return dnnlib.EasyDict(path=str(path), G=S, D=D)


def _fresh(student_file, seed=11):
    from training.networks_stylegan2 import Discriminator
    torch.manual_seed(seed)
    kw = student_init.generator_kwargs(student_file.G)
    G = dnnlib.util.construct_class_by_name(**kw)
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16)
    return G, D


@pytest.mark.parametrize('init', student_init.INIT_MODES)
def test_init_modes(student_file, init):
    G, D = _fresh(student_file)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    student_init.init_student(G, D, teacher=student_file.path, student=student_file.path, init=init,
                              teacher_d=(init == 'pruned'))
    sd, src = G.state_dict(), student_file.G.state_dict()
    for name in sd:
        if name.startswith('mapping.'):
            assert torch.equal(sd[name], src[name]), name
    if init == 'pruned':
        assert all(torch.equal(sd[n], src[n]) for n in sd)
        assert all(torch.equal(a, b) for a, b in zip(D.state_dict().values(), student_file.D.state_dict().values()))
    else:
        assert all(torch.equal(a, b) for a, b in zip(D.state_dict().values(), D0.state_dict().values()))  # D from scratch
    if init == 'svs':
        ref = copy.deepcopy(student_file.G)
        svs.scale_(ref, fn='sqrt')
        assert all(torch.equal(sd[n], ref.state_dict()[n]) for n in sd)
    if init == 'random':  # synthesis exactly as the fresh constructor made it (affine biases 1, biases 0)
        assert all(torch.equal(sd[n], G0.state_dict()[n]) for n in sd if n.startswith('synthesis.'))
        assert torch.all(G.synthesis.b8.conv0.affine.bias == 1)
    if init == 'he':
        for name in svs.select_names(G):
            p = dict(G.named_parameters())[name]
            if name.endswith('bias'):
                assert torch.all(p == 0), name
        w = G.synthesis.b8.conv0.weight  # [out, in, 3, 3]: std sqrt(2 / (in * 9))
        expected = (2 / (w.shape[1] * 9)) ** 0.5
        assert abs(w.std().item() / expected - 1) < 0.35
        # built from scratch (official --initialize he): const and noise strengths are the fresh network's
        assert torch.equal(sd['synthesis.b4.const'], G0.state_dict()['synthesis.b4.const'])
        assert not torch.equal(sd['synthesis.b4.const'], src['synthesis.b4.const'])


def _pooled_synthesis(G):
    """(weights standardised by He's std sqrt(2 / fan_in), raw weights, biases, affine biases),
    each pooled over every synthesis tensor of the SVS set (4-D: fan_in = C_in·k·k)."""
    params = dict(G.named_parameters())
    he, raw, biases, affine_biases = [], [], [], []
    for name in svs.select_names(G):
        p = params[name].detach().double()
        if p.ndim >= 2:
            fan_in = int(np.prod(p.shape[1:]))
            he.append((p / np.sqrt(2.0 / fan_in)).flatten().numpy())
            raw.append(p.flatten().numpy())
        elif name.endswith('affine.bias'):
            affine_biases.append(p.numpy())
        else:
            biases.append(p.numpy())
    return [np.concatenate(x) if x else np.zeros(0) for x in (he, raw, biases, affine_biases)]


@pytest.mark.parametrize('init', ['he', 'random'])
def test_init_statistics_pooled_over_all_synthesis_weights(student_file, init):
    # Oracles: PyTorch's documented kaiming_normal_ defaults (fan_in, gain sqrt(2): std sqrt(2 / fan_in)),
    # StyleGAN2's own init (weights N(0, 1), biases 0, affine biases 1), by a Kolmogorov-Smirnov test
    # against N(0, 1) on the pooled, standardised values (fixed seeds: the test is deterministic).
    from scipy import stats
    G, D = _fresh(student_file, seed=21)
    student_init.init_student(G, D, teacher=student_file.path, student=student_file.path, init=init)
    he, raw, biases, affine_biases = _pooled_synthesis(G)
    values = he if init == 'he' else raw
    assert values.size > 4000  # standard errors: std ~1 %, mean ~1.5 %; gain 1 instead of sqrt(2) is -29 %
    assert abs(values.std() - 1) < 0.04 and abs(values.mean()) < 0.06, (values.std(), values.mean())
    assert stats.kstest(values, 'norm').pvalue > 1e-3
    assert np.all(biases == 0)
    assert np.all(affine_biases == (0 if init == 'he' else 1))


def test_spectral_norm_and_periodic_svs_hooks(student_file):
    G, _D = _fresh(student_file)
    student_init.init_student(G, None, teacher=student_file.path, student=student_file.path, init='pruned')
    nets = dnnlib.EasyDict(G=G)
    hook = student_init.SpectralNormHook('cpu', nets)
    hook(cur_nimg=4, batch_size=4, total_kimg=1)
    for name in hook.names:
        p = dict(G.named_parameters())[name]
        assert abs(torch.linalg.matrix_norm(p.reshape(p.shape[0], -1).double(), ord=2).item() - 1) < 1e-5, name
    assert not any(n.endswith('bias') for n in hook.names) and hook.names

    periodic = student_init.PeriodicSVSHook('cpu', nets, every_kimg=1, verbose=False)
    due = [n for n in range(4, 10001, 4) if periodic.due(n, 4, total_kimg=10)]
    assert due == [1000, 2000, 3000, 4000]  # multiples of 1 kimg in the first half only
    before = G.synthesis.b8.conv0.weight.detach().clone()
    periodic(cur_nimg=1000, batch_size=4, total_kimg=10)
    ref = svs.scaling.scale_matrix(before, 'sqrt')[0]
    torch.testing.assert_close(G.synthesis.b8.conv0.weight.detach(), ref)
    periodic(cur_nimg=1004, batch_size=4, total_kimg=10)
    assert periodic.applied == 1

def test_periodic_svs_reports_on_rank_0_only_and_mismatched_students_name_the_tensor(student_file, capsys):
    G, _D = _fresh(student_file)
    periodic = student_init.PeriodicSVSHook('cpu', dnnlib.EasyDict(G=G), every_kimg=1, verbose=True)
    periodic(cur_nimg=1000, batch_size=4, total_kimg=10, rank=1)
    assert capsys.readouterr().out == ''
    periodic(cur_nimg=2000, batch_size=4, total_kimg=10, rank=0)
    assert 'SVS (sqrt) re-applied to G at kimg 2' in capsys.readouterr().out and periodic.applied == 2
    # A run-built G whose mapping differs from the student file's: one line naming tensor and shapes.
    wrong = copy.deepcopy(G)
    wrong.mapping.fc0.weight = torch.nn.Parameter(torch.zeros([7, wrong.mapping.fc0.weight.shape[1]]))
    with pytest.raises(dnnlib.util.UserError, match=r'mapping\.fc0\.weight is \(16, 16\), the run builds \(7, 16\)'):
        student_init.init_student(wrong, None, teacher=student_file.path, student=student_file.path, init='pruned')


# ---------------------------------------------------------------------------------------------
# LD directions on every rank of a 2-process gloo run come from the loaded teacher.


def _rank_worker(rank, world, init_file, teacher_path, student_path, out_path):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    torch.manual_seed(1000 + rank)  # different global RNG per rank must not matter
    teacher = dnnlib.util.call_func_by_name(func_name='training.distill.load_teacher', path=teacher_path, device='cpu')
    G = student_init.load_generators(student_path, '--student').G
    term = distill.DistillTerm('cpu', dnnlib.EasyDict(G=G, teacher=teacher), l1_weight=0, lpips_weight=0, ld_weight=30)
    banks = [torch.zeros_like(term.bank) for _ in range(world)]
    torch.distributed.all_gather(banks, term.bank)
    if rank == 0:
        torch.save(torch.stack(banks), out_path)
    torch.distributed.destroy_process_group()


def test_ld_directions_equal_on_every_rank(nets, student_file, tmp_path):
    from training.checkpoints import save_snapshot
    teacher_path = tmp_path / 'teacher.pkl'
    save_snapshot(str(teacher_path), dict(G=nets.teacher, G_ema=nets.teacher))
    out = tmp_path / 'banks.pt'
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.spawn(_rank_worker, args=(2, os.path.join(tmp, 'init'), str(teacher_path),
                                                        student_file.path, str(out)), nprocs=2)
    banks = torch.load(out)
    assert torch.equal(banks[0], banks[1])
    expected = distill.direction_bank(nets.teacher, distill.default_ld_layers(nets.teacher))
    assert torch.equal(banks[0], expected)
    random_teacher = tiny_sg2(channel_base=256, channel_max=16, seed=5)  # what ranks > 0 used officially
    assert not torch.allclose(banks[0], distill.direction_bank(random_teacher, [16, 32]))


def test_stylegan3_recipe_layers_bank_and_bilinear_lpips(lpips_files):
    from test_pruning import tiny_sg3
    teacher = tiny_sg3()
    student = channels.slice_generator(teacher, random_masks(teacher, 0.5, seed=4)).train().requires_grad_(True)
    nets3 = dnnlib.EasyDict(teacher=teacher, student=student)
    term = _term(nets3, lpips_files, lpips_weight=3)
    assert term.ld_layers == [2, 4, 6, 9] and term.lpips_downsample == 'bilinear'
    assert term.bank.shape == (20, teacher.w_dim)  # each LD layer's own affine, 5 directions each
    layer = getattr(teacher.synthesis, teacher.synthesis.layer_names[4])
    a = layer.affine.weight.numpy().astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    vals, vecs = np.linalg.eigh(a.T @ a)
    top = vecs[:, np.argsort(-vals)[:5]].T
    assert np.allclose(np.abs(np.sum(term.bank[5:10].numpy() * top, axis=1)), 1, atol=1e-4)
    loss = StyleGAN2Loss('cpu', G=student, D=None, style_mixing_prob=0, terms=[term])
    torch.manual_seed(0)
    ctx = loss.run_G(torch.randn([2, 16]), torch.zeros([2, 0]), terms=[term])
    out = term(ctx)
    assert set(out) == {'l1', 'lpips', 'ld'} and all(torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()
    assert student.synthesis.input.weight.grad is not None


def test_stylegan3_l1_and_ld_values_equal_the_stylegan2_references():
    # The same hand references as test_l1_and_ld_values_and_gradients: the teacher re-run by hand
    # on the same z / mixing / offsets, the relation loss by the NumPy formula of test_distill_math.
    from test_pruning import tiny_sg3
    teacher = tiny_sg3()
    student = channels.slice_generator(teacher, random_masks(teacher, 0.5, seed=4)).train().requires_grad_(True)
    nets3 = dnnlib.EasyDict(teacher=teacher, student=student)
    term = _term(nets3)
    ctx = _run(nets3, [term], seed=2)
    out = term(ctx)
    t_img, t_feat = _reference_teacher(nets3, ctx)
    s_img = ctx.synthesis_img[:B].detach()
    ref_l1 = 3 * np.abs(t_img[:B].numpy().astype(np.float64) - s_img.numpy()).mean()
    assert abs(out['l1'].item() - ref_l1) < 1e-5 * max(1, ref_l1)
    assert term.ld_layers == [2, 4, 6, 9] and set(term.ld_layers) <= set(ctx.features)
    ref_ld = 30 * sum(_np_relation_kl(ctx.features[k].detach().numpy(), t_feat[k].numpy()) for k in term.ld_layers)
    assert ref_ld > 0 and abs(out['ld'].item() - ref_ld) < 1e-4 * max(1, ref_ld)
