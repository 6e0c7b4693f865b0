"""Channel groups, keep-mask selection, slicing (masked-dense oracle, p = 0 identity), params/FLOPs."""
import math

import pytest
import torch

import dnnlib
from pruning import channels, flops

# ---------------------------------------------------------------------------------------------
# Tiny generators with every tensor perturbed, so that a wrongly sliced tensor shows.


def perturb_(G, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('bias') or name.endswith('noise_strength'):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if name.endswith('affine.bias') else 0.0))
        for name, b in G.named_buffers():
            if name.endswith('w_avg'):
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
            if name.endswith('magnitude_ema'):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return G


def tiny_sg2(architecture='skip', c_dim=0, seed=0, channel_base=512, channel_max=32, res=32):
    from training.networks_stylegan2 import Generator
    torch.manual_seed(seed)
    G = Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=res, img_channels=3,
                  mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=0,
                                        conv_clamp=None, architecture=architecture))
    return perturb_(G.eval().requires_grad_(False), seed)


def tiny_sg3(kind='t', seed=0):
    from training.networks_stylegan3 import Generator
    torch.manual_seed(seed)
    kw = dict(conv_kernel=1, use_radial_filters=True) if kind == 'r' else {}
    G = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3, channel_base=1024,
                  channel_max=32, magnitude_ema_beta=0.999, mapping_kwargs=dict(num_layers=2), **kw)
    return perturb_(G.eval().requires_grad_(False), seed)


def random_masks(G, keep_fraction=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = []
    for group in channels.channel_groups(G):
        n_keep = max(1, int(round(group.size * keep_fraction)))
        m = torch.zeros(group.size, dtype=torch.bool)
        m[torch.randperm(group.size, generator=g)[:n_keep]] = True
        masks.append(m)
    return masks


def render(G, seed=1, n=3, noise_mode='const'):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn([n, G.z_dim], generator=g)
    c = torch.zeros([n, G.c_dim])
    if G.c_dim:
        c[:, 0] = 1
    with torch.no_grad():
        return G(z, c, noise_mode=noise_mode, force_fp32=True)


def _sg3_available():
    try:
        import training.networks_stylegan3  # noqa: F401
        return True
    except ImportError:
        return False


needs_sg3 = pytest.mark.skipif(not _sg3_available(), reason='training/networks_stylegan3.py not available')

# ---------------------------------------------------------------------------------------------
# Structure.


def test_sg2_groups_follow_the_layer_channels_contract():
    G = tiny_sg2()
    groups = channels.channel_groups(G)
    n_conv = 2 * int(math.log2(32)) - 3
    assert len(groups) == n_conv + 1
    assert [g.size for g in groups] == list(G.synthesis.layer_channels)
    assert groups[0].slices[0] == ('synthesis.b4.const', 0)
    assert groups[0].score_weight == 'synthesis.b4.conv1.weight'
    assert groups[1].score_weight == 'synthesis.b8.conv0.weight' and groups[1].torgb == ['synthesis.b4.torgb.weight']
    assert groups[2].score_weight == 'synthesis.b8.conv1.weight' and groups[2].torgb == []
    assert groups[-1].score_weight == 'synthesis.b32.torgb.weight'   # last group: the LAST toRGB
    assert groups[-1].affine == 'synthesis.b32.torgb.affine'
    # Every slice names a real tensor of the right size on its axis.
    state = G.state_dict()
    for g in groups:
        for name, axis in g.slices:
            assert state[name].shape[axis] == g.size, (name, axis)


@needs_sg3
def test_sg3_groups():
    G = tiny_sg3()
    groups = channels.channel_groups(G)
    names = list(G.synthesis.layer_names)
    assert len(groups) == len(names) == G.synthesis.num_layers + 1
    assert groups[0].slices[0] == ('synthesis.input.weight', 0)
    assert [g.score_weight for g in groups] == [f'synthesis.{n}.weight' for n in names]
    assert groups[-1].torgb == [f'synthesis.{names[-1]}.weight']
    assert [g.size for g in groups] == list(G.synthesis.layer_channels)


def test_unsupported_network_is_a_clear_error():
    with pytest.raises(dnnlib.util.UserError, match='not a StyleGAN2/StyleGAN3 generator'):
        channels.channel_groups(torch.nn.Linear(2, 2))

# ---------------------------------------------------------------------------------------------
# Selection.


def test_rounding_of_each_family():
    # SG2: C - floor(p*C) (= ceil((1-p)C)); SG3: max(floor((1-p)C), 3).
    assert [channels.keep_count(c, 0.7, 'sg2') for c in (512, 256, 128, 64, 32)] == [154, 77, 39, 20, 10]
    assert [channels.keep_count(c, 0.7, 'sg3') for c in (512, 362, 256, 181, 128, 91, 64)] == [153, 108, 76, 54, 38, 27, 19]
    assert channels.keep_count(8, 0.9, 'sg3') == 3 and channels.keep_count(2, 0.9, 'sg3') == 2
    assert channels.keep_count(512, 0.9, 'sg2') == 52


def test_select_removes_lowest_scores_with_stable_ties_and_keeps_order():
    scores = [torch.tensor([3.0, 1.0, 1.0, 2.0, 1.0]), torch.tensor([0.5, 0.1, 0.9, 0.2])]
    masks = channels.select_masks(scores, 0.5, 'sg2')       # remove floor(2.5)=2 and 2
    assert masks[0].tolist() == [True, False, False, True, True]   # ties: lower index removed first
    assert masks[1].tolist() == [True, False, True, False]
    assert channels.widths_from_masks(masks) == [3, 2]
    assert channels.masks_to_indices(masks) == [[0, 3, 4], [0, 2]]
    back = channels.indices_to_masks(channels.masks_to_indices(masks), [5, 4])
    assert all(torch.equal(a, b) for a, b in zip(masks, back))
    assert all(m.all() for m in channels.select_masks(scores, 0.0, 'sg2'))


def test_select_errors():
    s = [torch.rand(8), torch.rand(4)]
    for bad in (-0.1, 1.0, 1.5, float('nan')):
        with pytest.raises(dnnlib.util.UserError, match='--ratio'):
            channels.select_masks(s, bad, 'sg2')
    nan = [torch.tensor([1.0, float('nan'), 2.0])]
    with pytest.raises(dnnlib.util.UserError, match='NaN'):
        channels.select_masks(nan, 0.5, 'sg2')
    inf = [torch.tensor([1.0, float('inf')])]
    with pytest.raises(dnnlib.util.UserError, match='NaN/Inf'):
        channels.select_masks(inf, 0.5, 'sg2')


def test_global_ranking_compares_normalised_scores_and_refuses_empty_groups():
    # Group 1's scores are 1000x larger, yet after normalisation its channel 0 is the lowest;
    # group 0 loses three channels and group 1 one (per layer: two each).
    scores = [torch.tensor([1.0, 1.0, 1.0, 10.0]), torch.tensor([100.0, 4000.0, 3000.0, 3900.0])]
    masks = channels.select_masks(scores, 0.5, 'sg2', global_ranking=True)
    assert masks[0].tolist() == [False, False, False, True]
    assert masks[1].tolist() == [False, True, True, True]
    per_layer = channels.select_masks(scores, 0.5, 'sg2')
    assert not all(torch.equal(a, b) for a, b in zip(masks, per_layer))
    lopsided = [torch.tensor([3.0, 3.0]), torch.tensor([0.5, 2.0, 2.0, 2.0, 2.0, 2.0])]
    with pytest.raises(dnnlib.util.UserError, match='removes every channel of group 0'):
        channels.select_masks(lopsided, 0.5, 'sg2', global_ranking=True)

# ---------------------------------------------------------------------------------------------
# Slicing.


@pytest.mark.parametrize('architecture', ['skip', 'resnet', 'orig'])
def test_sg2_student_equals_masked_dense_teacher(architecture):
    G = tiny_sg2(architecture)
    masks = random_masks(G, 0.45, seed=3)
    student = channels.slice_generator(G, masks, compensate_torgb=True)
    assert list(student.synthesis.layer_channels) == channels.widths_from_masks(masks)
    assert type(student) is type(G)
    oracle = channels.masked_dense(G, masks)
    img_s, img_o, img_t = render(student), render(oracle), render(G)
    assert torch.allclose(img_s, img_o, atol=1e-5, rtol=1e-5), (img_s - img_o).abs().max()
    assert (img_s - img_t).abs().max() > 1e-2   # pruning did change the function
    # Mapping, w_avg and noise buffers are carried over untouched.
    ss, ts = student.state_dict(), G.state_dict()
    for name in ts:
        if name.startswith('mapping.') or name.endswith('noise_const') or name.endswith('resample_filter'):
            assert torch.equal(ss[name], ts[name]), name
    assert flops.count_params(student) < flops.count_params(G)


def test_sg2_without_torgb_compensation_matches_oracle_with_scaled_torgb():
    G = tiny_sg2()
    masks = random_masks(G, 0.5, seed=5)
    student = channels.slice_generator(G, masks, compensate_torgb=False)
    oracle = channels.masked_dense(G, masks)
    with torch.no_grad():
        for g, m in zip(channels.channel_groups(G), masks):
            for name in g.fan_in_gain:
                dict(oracle.named_parameters())[name].mul_(math.sqrt(g.size / int(m.sum())))
    assert torch.allclose(render(student), render(oracle), atol=1e-5, rtol=1e-5)


def test_sg2_p0_is_bit_exact_identity_and_conditional_works():
    G = tiny_sg2(c_dim=3)
    masks = channels.select_masks([torch.rand(g.size) for g in channels.channel_groups(G)], 0.0, 'sg2')
    student = channels.slice_generator(G, masks)
    assert student.synthesis.layer_channels == G.synthesis.layer_channels
    for (n1, t1), (n2, t2) in zip(G.state_dict().items(), student.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2), n1
    assert torch.equal(render(G), render(student))


def test_slicing_checks_masks():
    G = tiny_sg2()
    masks = random_masks(G)
    with pytest.raises(dnnlib.util.UserError, match='channel groups'):
        channels.slice_generator(G, masks[:-1])
    masks[2] = torch.zeros_like(masks[2])
    with pytest.raises(dnnlib.util.UserError, match='group 2 keeps no channel'):
        channels.slice_generator(G, masks)


def test_pruning_a_student_again():
    G = tiny_sg2()
    student = channels.slice_generator(G, random_masks(G, 0.7, seed=1))
    masks = random_masks(student, 0.6, seed=2)
    again = channels.slice_generator(student, masks, compensate_torgb=True)
    assert torch.allclose(render(again), render(channels.masked_dense(student, masks)), atol=1e-5)


@needs_sg3
@pytest.mark.parametrize('kind', ['t', 'r'])
def test_sg3_student_equals_masked_dense_teacher(kind):
    G = tiny_sg3(kind)
    masks = random_masks(G, 0.5, seed=4)
    student = channels.slice_generator(G, masks, compensate_torgb=True)
    assert list(student.synthesis.layer_channels) == channels.widths_from_masks(masks)
    assert list(student.synthesis.layer_names) == list(G.synthesis.layer_names)  # dense names kept
    img_s, img_o = render(student), render(channels.masked_dense(G, masks))
    assert torch.allclose(img_s, img_o, atol=1e-5, rtol=1e-5), (img_s - img_o).abs().max()
    assert (img_s - render(G)).abs().max() > 1e-3
    ss, ts = student.state_dict(), G.state_dict()
    for name in ts:
        if name.startswith('mapping.') or 'magnitude_ema' in name or name.endswith('_filter') \
                or name.startswith('synthesis.input.') and not name.endswith('input.weight'):
            assert torch.equal(ss[name], ts[name]), name


@needs_sg3
def test_sg3_p0_identity_and_rounding():
    G = tiny_sg3()
    groups = channels.channel_groups(G)
    masks = channels.select_masks([torch.rand(g.size) for g in groups], 0.0, 'sg3')
    student = channels.slice_generator(G, masks)
    assert torch.equal(render(G), render(student))
    masks = channels.select_masks([torch.rand(g.size) for g in groups], 0.7, 'sg3')
    assert channels.widths_from_masks(masks) == [max(int((1 - 0.7) * g.size), 3) for g in groups]

# ---------------------------------------------------------------------------------------------
# Parameters and FLOPs (the paper's Table 1 columns).

TABLE = [  # (preset channel_base, ratio, params, MACs)
    (32768, 0.0, 30_034_338, 45_124_673_536),
    (32768, 0.7, 5_573_364, 4_123_578_080),
    (32768, 0.9, 2_798_888, 472_149_696),
    (16384, 0.0, 24_767_458, 14_903_009_280),
    (16384, 0.7, 4_959_947, 1_386_445_024),
    (16384, 0.9, 2_685_074, 163_384_512),
]


@pytest.mark.parametrize('channel_base,ratio,params,macs', TABLE)
def test_params_and_flops_table_analytic(channel_base, ratio, params, macs):
    widths = flops.pruned_widths_sg2(flops.sg2_dense_widths(256, channel_base, 512), ratio)
    assert flops.sg2_params_and_macs(widths, 256) == (params, macs)


def test_widths_of_the_table():
    assert flops.pruned_widths_sg2(flops.sg2_dense_widths(256, 32768), 0.7) == [154] * 10 + [77, 77, 39, 39]
    assert flops.pruned_widths_sg2(flops.sg2_dense_widths(256, 16384), 0.7) == [154] * 8 + [77, 77, 39, 39, 20, 20]
    assert flops.pruned_widths_sg2(flops.sg2_dense_widths(256, 16384), 0.9) == [52] * 8 + [26, 26, 13, 13, 7, 7]


@pytest.mark.parametrize('channel_base,ratio,params,macs', [TABLE[0], TABLE[1], TABLE[4]])
def test_params_and_flops_table_on_real_networks(channel_base, ratio, params, macs):
    from training.networks_stylegan2 import Generator
    dense = flops.sg2_dense_widths(256, channel_base, 512)
    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                  mapping_kwargs=dict(num_layers=8),
                  synthesis_kwargs=dict(channel_base=channel_base, channel_max=512,
                                        layer_channels=flops.pruned_widths_sg2(dense, ratio)))
    assert flops.count_params(G) == params
    assert flops.count_macs(G) == macs


@pytest.mark.parametrize('architecture,c_dim', [('skip', 0), ('resnet', 4), ('orig', 0)])
def test_analytic_counts_match_instances(architecture, c_dim):
    G = tiny_sg2(architecture, c_dim=c_dim)
    student = channels.slice_generator(G, random_masks(G, 0.4, seed=2))
    for net in (G, student):
        expect = flops.sg2_params_and_macs(net.synthesis.layer_channels, 32, z_dim=16, w_dim=16, c_dim=c_dim,
                                           mapping_layers=2, architecture=architecture)
        assert (flops.count_params(net), flops.count_macs(net)) == expect


@needs_sg3
def test_sg3_counts_drop_with_pruning():
    G = tiny_sg3()
    student = channels.slice_generator(G, random_masks(G, 0.5))
    s, t = flops.generator_stats(student), flops.generator_stats(G)
    assert s['params'] < t['params'] and s['macs'] < t['macs'] and s['mapping_params'] == t['mapping_params']
