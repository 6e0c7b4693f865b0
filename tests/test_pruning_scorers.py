"""Scorers: shapes, seeded reproducibility, and agreement with straightforward references
(DCP gradient estimator, CAGAN per-pixel salt-and-pepper loop, GS style statistics, l1)."""
import os

import pytest
import torch

import dnnlib
from pruning import cagan, channels, dcp, scorers
from test_pruning import needs_sg3, tiny_sg2, tiny_sg3

SMALL = dict(dcp=dict(n_samples=4, batch=2, n_directions=3, pca_samples=64),
             cagan=dict(n_samples=4, batch=2), gs=dict(n_samples=4, batch=2), random={}, l1={})


def _equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope='module')
def G2():
    return tiny_sg2(channel_base=256, channel_max=16)


@pytest.mark.parametrize('method', scorers.METHODS)
def test_scorer_shapes_and_seeded_reproducibility(G2, method):
    kw = dict(SMALL[method], device='cpu', progress=False)
    before = {k: v.clone() for k, v in G2.state_dict().items()}
    s1 = scorers.score(G2, method, seed=1, **kw)
    s2 = scorers.score(G2, method, seed=1, **kw)
    assert [s.numel() for s in s1] == [g.size for g in channels.channel_groups(G2)]
    assert all(s.dtype == torch.float32 and torch.isfinite(s).all() for s in s1)
    assert _equal(s1, s2)
    if method != 'l1':  # l1 is deterministic by definition
        assert not _equal(s1, scorers.score(G2, method, seed=2, **kw))
    # The caller's generator is untouched (scorers work on a copy).
    assert all(torch.equal(before[k], v) for k, v in G2.state_dict().items())
    assert not any(p.requires_grad for p in G2.parameters())


def test_unknown_method():
    with pytest.raises(dnnlib.util.UserError, match='unknown scorer'):
        scorers.get_scorer('magic')


def test_dcp_batches_follow_the_official_split():
    assert dcp.dcp_batches(5000, 5) == [5] * 1000
    assert dcp.dcp_batches(12, 5) == [5, 7]
    assert dcp.dcp_batches(3, 5) == [3]


def test_latent_pca_is_sorted_normalised_and_deterministic(G2):
    comps, rho, mean = dcp.latent_pca(G2, 200, seed=0)
    assert torch.allclose(comps @ comps.T, torch.eye(comps.shape[0], dtype=comps.dtype), atol=1e-8)
    assert torch.isclose(rho.sum(), torch.tensor(1.0, dtype=rho.dtype))
    assert (rho[:-1] >= rho[1:]).all()
    comps2, rho2, _ = dcp.latent_pca(G2, 200, seed=0)
    assert torch.equal(comps, comps2) and torch.equal(rho, rho2)


def _dcp_reference(G, seed, n_samples, batch, n_directions, alpha, pca_samples, grad_through_perturbed):
    """Plain per-direction loop: two passes, L = sum |G(w') - G(w)|, autograd on the full loss."""
    G = scorers.prepare_generator(G, torch.device('cpu'))
    groups = channels.channel_groups(G)
    weights = scorers.score_weights(G, groups)
    comps, rho, _mean = dcp.latent_pca(G, pca_samples, seed=seed)
    comps = comps.float()
    total = [torch.zeros(g.size, dtype=torch.float64) for g in groups]
    for bi, b in enumerate(dcp.dcp_batches(n_samples, batch)):
        gen = torch.Generator().manual_seed(scorers.substream_seed(seed, bi))
        z, c = scorers.sample_latents(G, b, gen, 'cpu')
        ws = scorers.map_latents(G, z, c)
        idx = torch.multinomial(rho, n_directions, replacement=True, generator=gen)
        per_dir = []
        for i in idx.tolist():
            ws_p = ws + alpha * comps[i]
            img = scorers.synthesize(G, ws, 'const')
            if grad_through_perturbed:
                img_p = scorers.synthesize(G, ws_p, 'const')
            else:
                with torch.no_grad():
                    img_p = scorers.synthesize(G, ws_p, 'const')
            grads = torch.autograd.grad((img_p - img).abs().sum(), weights)
            per_dir.append([gr.abs().mean(dim=(0, 2, 3)).double() for gr in grads])
        for k in range(len(groups)):
            m = torch.stack([d[k] for d in per_dir])
            total[k] += ((m - m.mean(0)) ** 2).sum(0)
    return [t.float() for t in total]


@pytest.mark.parametrize('grad_through_perturbed', [False, True])
def test_dcp_matches_plain_reference(G2, grad_through_perturbed):
    kw = dict(seed=3, n_samples=5, batch=2, n_directions=3, alpha=10.0, pca_samples=64)
    ours = dcp.score(G2, noise_mode='const', grad_through_perturbed=grad_through_perturbed,
                     device='cpu', progress=False, **kw)
    ref = _dcp_reference(G2, grad_through_perturbed=grad_through_perturbed, **kw)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-12 + 1e-5 * float(b.abs().max()))
    if not grad_through_perturbed:
        other = dcp.score(G2, noise_mode='const', grad_through_perturbed=True, device='cpu', progress=False, **kw)
        assert not _equal(ours, other)


def test_dcp_defaults_are_the_official_run():
    # dcp/stylegan2-prune-*.sh: --n-sample 5000 --batch 5 --edit-strength 10 --n-direction 10; PCA on 10,000 w
    # (shared/design: method-svs-distillation.md and pruning.md).
    import inspect
    defaults = {k: p.default for k, p in inspect.signature(dcp.score).parameters.items()}
    assert {k: defaults[k] for k in ('n_samples', 'batch', 'n_directions', 'alpha', 'pca_samples')} == dict(
        n_samples=5000, batch=5, n_directions=10, alpha=10.0, pca_samples=10000)


def test_dcp_rejects_bad_options(G2):
    with pytest.raises(dnnlib.util.UserError, match='--noise-mode'):
        dcp.score(G2, noise_mode='loud', device='cpu')
    with pytest.raises(dnnlib.util.UserError, match='--n-directions'):
        dcp.score(G2, n_directions=1, device='cpu')


def test_salt_and_pepper_vectorised_equals_per_pixel_loop():
    gen = torch.Generator().manual_seed(0)
    img = torch.randn([2, 3, 7, 9], generator=gen).requires_grad_(True)
    content = (torch.rand([2, 1, 7, 9], generator=gen) < 0.6).float()
    noised, sign = cagan.noise_maps(img.shape, 0.3, gen)
    fast = cagan.salt_and_pepper(img, content, noised, sign)
    slow = img.clone()  # the official target: a clone that stays in the graph
    for n in range(2):
        for y in range(7):
            for x in range(9):
                if content[n, 0, y, x] == 1 and noised[n, 0, y, x]:
                    slow[n, :, y, x] = sign[n, 0, y, x]
    assert torch.equal(fast, slow.detach())
    g_fast = torch.autograd.grad((fast - img).abs().sum(), img)[0]
    g_slow = torch.autograd.grad((slow - img).abs().sum(), img)[0]
    assert torch.equal(g_fast, g_slow)
    assert int((g_fast != 0).any(dim=1).sum()) == int((noised & (content > 0)).sum())


def _cagan_reference(G, seed, n_samples, batch, p):
    """CAGAN with a uniform mask written out: per-pixel salt-and-pepper target, L1, autograd."""
    G = scorers.prepare_generator(G, torch.device('cpu'))
    groups = channels.channel_groups(G)
    weights = scorers.score_weights(G, groups)
    ref = [torch.zeros(g.size, dtype=torch.float64) for g in groups]
    with torch.random.fork_rng(devices=[]):
        for bi, b in enumerate(scorers.fixed_batches(n_samples, batch)):
            bseed = scorers.substream_seed(seed, bi)
            gen = torch.Generator().manual_seed(bseed)
            torch.manual_seed(bseed)
            z, c = scorers.sample_latents(G, b, gen, 'cpu')
            img = scorers.synthesize(G, scorers.map_latents(G, z, c), 'random')
            noised, sign = cagan.noise_maps(img.shape, p, gen)
            target = img.clone()
            for n in range(img.shape[0]):
                for y in range(img.shape[2]):
                    for x in range(img.shape[3]):
                        if noised[n, 0, y, x]:  # uniform mask: every pixel is content
                            target[n, :, y, x] = sign[n, 0, y, x]
            grads = torch.autograd.grad((target - img).abs().sum(), weights)
            for k, gr in enumerate(grads):
                ref[k] += gr.abs().mean(dim=(0, 2, 3)).double()
    return [r.float() for r in ref]


def test_cagan_score_equals_per_pixel_reference(G2):
    seed, n_samples, batch, p = 4, 4, 2, 0.2
    ours = cagan.score(G2, n_samples=n_samples, batch=batch, noise_prob=p, seed=seed, device='cpu', progress=False)
    for a, b in zip(ours, _cagan_reference(G2, seed, n_samples, batch, p)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


@needs_sg3
def test_sg3_dcp_and_cagan_match_the_same_references():
    # The StyleGAN2 references above are family-agnostic (channel groups, consumer weights,
    # mapping + synthesis helpers): StyleGAN3 scores must equal them too.
    G3 = tiny_sg3()
    kw = dict(seed=1, n_samples=2, batch=2, n_directions=2, alpha=10.0, pca_samples=32)
    ours = dcp.score(G3, noise_mode='const', grad_through_perturbed=False, device='cpu', progress=False, **kw)
    ref = _dcp_reference(G3, grad_through_perturbed=False, **kw)
    assert [a.numel() for a in ours] == [g.size for g in channels.channel_groups(G3)]
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-12 + 1e-5 * float(b.abs().max()))
    ours = cagan.score(G3, n_samples=2, batch=2, noise_prob=0.2, seed=4, device='cpu', progress=False)
    for a, b in zip(ours, _cagan_reference(G3, 4, 2, 2, 0.2)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert float(b.abs().sum()) > 0


def test_cagan_face_mask_needs_a_parser(G2, tmp_path):
    with pytest.raises(dnnlib.util.UserError, match='--face-parser'):
        cagan.score(G2, mask='face', device='cpu', n_samples=2, batch=2)
    with pytest.raises(dnnlib.util.UserError):
        cagan.score(G2, mask='face', face_parser=str(tmp_path / 'missing.pth'), device='cpu', n_samples=2, batch=2)
    with pytest.raises(dnnlib.util.UserError, match='--mask'):
        cagan.score(G2, mask='church', device='cpu')


class _BrightnessParser(torch.nn.Module):
    """Test double for BiSeNet: label 1 (skin) where the parser input is bright, else 0 (background)."""

    def forward(self, x):
        bright = (x.mean(dim=1, keepdim=True) > 0).float()
        logits = torch.zeros([x.shape[0], 19, x.shape[2], x.shape[3]])
        logits[:, 1:2] = bright
        logits[:, 0:1] = 1 - bright
        return logits


def test_cagan_face_mask_restricts_noise_to_content(G2):
    kw = dict(n_samples=2, batch=2, noise_prob=0.3, seed=0, device='cpu', progress=False)
    face = cagan.score(G2, mask='face', parser=_BrightnessParser(), **kw)
    uniform = cagan.score(G2, mask='uniform', **kw)
    assert not _equal(face, uniform)
    assert sum(float(f.sum()) for f in face) < sum(float(u.sum()) for u in uniform)


def test_gs_scores_are_the_mean_style_magnitudes_of_the_consumers(G2):
    n = 6
    ours = scorers.score(G2, 'gs', n_samples=n, batch=3, seed=5, device='cpu', progress=False)
    G = scorers.prepare_generator(G2, torch.device('cpu'))
    groups = channels.channel_groups(G)
    ws_all = []
    for bi, b in enumerate(scorers.fixed_batches(n, 3)):
        gen = torch.Generator().manual_seed(scorers.substream_seed(5, bi))
        ws_all.append(scorers.map_latents(G, *scorers.sample_latents(G, b, gen, 'cpu')))
    # Group 0 is read by b4.conv1 (w index 0); the last group by the last toRGB (last w).
    syn = G.synthesis
    for k, affine, w_index in ((0, syn.b4.conv1.affine, 0), (len(groups) - 1, syn.b32.torgb.affine, -1)):
        expect = sum(affine(ws[:, w_index]).abs().double().mean(0) for ws in ws_all)
        assert torch.allclose(ours[k], expect.float(), rtol=1e-5)
    # Group 2 is read by b8.conv1, whose styles differ from b8.conv0's (the official split bug).
    expect = sum(syn.b8.conv1.affine(ws[:, 2]).abs().double().mean(0) for ws in ws_all)
    assert torch.allclose(ours[2], expect.float(), rtol=1e-5)


@needs_sg3
def test_sg3_gs_scores_are_the_mean_style_magnitudes_of_the_consumers():
    # As for StyleGAN2: group k (the input's / layer k-1's output channels) is read by layer k,
    # whose affine sees ws[:, k + 1] (NVIDIA's SG3: the input takes ws[:, 0]).
    n = 4
    ours = scorers.score(tiny_sg3(), 'gs', n_samples=n, batch=2, seed=5, device='cpu', progress=False)
    G = scorers.prepare_generator(tiny_sg3(), torch.device('cpu'))
    ws_all = []
    for bi, b in enumerate(scorers.fixed_batches(n, 2)):
        gen = torch.Generator().manual_seed(scorers.substream_seed(5, bi))
        ws_all.append(scorers.map_latents(G, *scorers.sample_latents(G, b, gen, 'cpu')))
    syn = G.synthesis
    assert len(ours) == len(channels.channel_groups(G)) == len(syn.layer_names)
    for k, name in enumerate(syn.layer_names):
        expect = sum(getattr(syn, name).affine(ws[:, k + 1]).abs().double().mean(0) for ws in ws_all)
        assert torch.allclose(ours[k], expect.float(), rtol=1e-5), name


def test_l1_scores_are_mean_abs_consumer_weights(G2):
    ours = scorers.score(G2, 'l1')
    w = G2.synthesis.b8.conv0.weight
    assert torch.allclose(ours[1], w.abs().mean(dim=(0, 2, 3)))
    assert torch.allclose(ours[-1], G2.synthesis.b32.torgb.weight.abs().mean(dim=(0, 2, 3)))


@needs_sg3
@pytest.mark.parametrize('method', ['dcp', 'cagan', 'gs'])
def test_sg3_scorers(method):
    G = tiny_sg3()
    kw = dict(SMALL[method], device='cpu', progress=False, seed=0)
    kw.update(n_samples=2, batch=2) if method != 'dcp' else kw.update(n_samples=2, batch=2, n_directions=2)
    s1 = scorers.score(G, method, **kw)
    assert [s.numel() for s in s1] == [g.size for g in channels.channel_groups(G)]
    assert all(torch.isfinite(s).all() and s.abs().sum() > 0 for s in s1)
    assert _equal(s1, scorers.score(G, method, **kw))


def _distributed_worker(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group('gloo', rank=rank, world_size=world)
    try:
        G = tiny_sg2(channel_base=256, channel_max=16)
        result = {m: scorers.score(G, m, seed=7, device='cpu', progress=False, **kw) for m, kw in DIST_RUNS.items()}
        if rank == 0:
            torch.save(result, out_path)
    finally:
        torch.distributed.destroy_process_group()


# Small enough to run always (one batch of 2 per rank): the all-reduce of the scores is what is tested.
DIST_RUNS = dict(gs=dict(n_samples=4, batch=2), dcp=dict(n_samples=4, batch=2, n_directions=2, pca_samples=16))


def test_two_processes_give_the_single_process_scores(G2, tmp_path):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    out = tmp_path / 'dist.pt'
    mp.spawn(_distributed_worker, args=(2, port, str(out)), nprocs=2, join=True)
    dist = torch.load(out, weights_only=True)
    for method, kw in DIST_RUNS.items():
        single = scorers.score(G2, method, seed=7, device='cpu', progress=False, **kw)
        for a, b in zip(dist[method], single):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), method
