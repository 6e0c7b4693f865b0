"""Distillation formulas against independent float64 NumPy computations."""
import numpy as np
import torch

from training import distill_math as dm


def _np_relation_kl(feat_student, feat_teacher):
    def relation(feat):
        feat = np.asarray(feat, dtype=np.float64).reshape(feat.shape[0], -1)
        half = feat.shape[0] // 2
        a = feat[:half] / np.linalg.norm(feat[:half], axis=1, keepdims=True)
        b = feat[half:] / np.linalg.norm(feat[half:], axis=1, keepdims=True)
        return a @ b.T

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    p = softmax(relation(feat_teacher))
    q = softmax(relation(feat_student))
    return float((p * (np.log(p) - np.log(q))).sum() / p.shape[0])


def test_relation_kl_matches_numpy_and_has_gradient():
    torch.manual_seed(0)
    fs = torch.randn(8, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(8, 7, 4, 4, dtype=torch.float64)  # teacher width differs: only relations compared
    loss = dm.relation_kl(fs, ft)
    assert abs(loss.item() - _np_relation_kl(fs.detach().numpy(), ft.numpy())) < 1e-6
    # Gradient against central finite differences on a few entries.
    loss.backward()
    eps = 1e-3
    for idx in [(0, 0, 0, 0), (5, 3, 2, 1)]:
        plus, minus = fs.detach().clone(), fs.detach().clone()
        plus[idx] += eps
        minus[idx] -= eps
        fd = (_np_relation_kl(plus.numpy(), ft.numpy()) - _np_relation_kl(minus.numpy(), ft.numpy())) / (2 * eps)
        assert abs(fs.grad[idx].item() - fd) < 1e-4 * max(1.0, abs(fd))


def test_relation_kl_is_zero_for_identical_relations_and_float32_under_fp16():
    torch.manual_seed(1)
    f = torch.randn(6, 3, 8, 8)
    assert dm.relation_kl(f, f).abs().item() < 1e-6
    # Huge fp16 activations: squared norms overflow in fp16, but the cast keeps the loss finite.
    big = (torch.randn(6, 4, 64, 64) * 200).half()
    loss = dm.relation_kl(big, big.flip(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    ref = _np_relation_kl(big.float().numpy(), big.flip(0).float().numpy())
    assert abs(loss.item() - ref) < 1e-4


def test_masked_l1_counts_masked_pixels_as_zeros():
    torch.manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    m = (torch.rand(2, 1, 4, 4) > 0.5).float()
    expected = np.abs(t.numpy() * m.numpy() - s.numpy() * m.numpy()).sum() / s.numel()
    assert abs(dm.masked_l1(s, t, m).item() - expected) < 1e-6
    assert abs(dm.masked_l1(s, t).item() - np.abs(t.numpy() - s.numpy()).mean()) < 1e-6


def test_top_eigvecs_sorted_and_equal_to_numpy():
    torch.manual_seed(3)
    w0, w1 = torch.randn(6, 16), torch.randn(4, 16) * 3
    bank = dm.top_eigvecs_of_affines([w0, w1], k=5)
    a = np.concatenate([w0.numpy(), w1.numpy()]).astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    vals, vecs = np.linalg.eig(a.T @ a)
    order = np.argsort(-vals.real)[:5]
    ref = vecs[:, order].real.T
    for got, want in zip(bank.numpy(), ref):
        assert min(np.abs(got - want).max(), np.abs(got + want).max()) < 1e-5  # eigenvector sign is free
    # Rayleigh quotients come out in decreasing order.
    gram = torch.from_numpy(a.T @ a).float()
    rq = torch.einsum('kd,de,ke->k', bank, gram, bank)
    assert torch.all(rq[:-1] >= rq[1:] - 1e-5)


def test_latent_offsets_are_scaled_unit_directions():
    bank = torch.randn(25, 16)
    gen = torch.Generator().manual_seed(0)
    delta = dm.latent_offsets(bank, 64, strength=5.0, generator=gen)
    units = bank / bank.norm(dim=1, keepdim=True)
    for d in delta:
        cos = (units @ d) / d.norm()
        assert cos.abs().max() > 1 - 1e-5  # parallel to one bank direction
    gen2 = torch.Generator().manual_seed(0)
    assert torch.equal(delta, dm.latent_offsets(bank, 64, strength=5.0, generator=gen2))
    assert abs(delta.norm(dim=1).pow(2).mean().item() / 25 - 1) < 0.5  # E[(5ε)²] = 25


def test_latent_offset_draws_are_uniform_over_the_bank_with_standard_normal_strength():
    # δ = 5·ε·d̂ with d uniform over ALL bank rows (SG3 banks have more rows than w_dim) and ε ~ N(0, 1).
    from scipy import stats
    gen = torch.Generator().manual_seed(1)
    bank = torch.randn(20, 8, generator=gen, dtype=torch.float64)
    n = 20000
    delta = dm.latent_offsets(bank.float(), n, strength=5.0, generator=gen).double()
    units = bank / bank.norm(dim=1, keepdim=True)
    coef = delta @ units.T / 5.0                                   # [n, 20]
    row = coef.abs().argmax(dim=1)                                # the drawn direction (|cos| = 1)
    eps = coef[torch.arange(n), row].numpy()
    counts = np.bincount(row.numpy(), minlength=20)
    assert stats.chisquare(counts).pvalue > 1e-4 and counts.min() > 0
    assert abs(eps.std() - 1) < 0.03 and abs(eps.mean()) < 0.03


def test_downsample_for_lpips_avgpool():
    x = torch.randn(1, 3, 512, 512)
    y = dm.downsample_for_lpips(x, 256)
    assert y.shape[-1] == 256
    assert torch.allclose(y[0, 0, 0, 0], x[0, 0, :2, :2].mean(), atol=1e-6)
    small = torch.randn(1, 3, 32, 32)
    assert dm.downsample_for_lpips(small) is small


def _np_bilinear_1d_weights(n_in, n_out):
    """[n_out, n_in] matrix of half-pixel-centre bilinear resampling (align_corners=False, no antialias)."""
    m = np.zeros([n_out, n_in])
    for j in range(n_out):
        x = max((j + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(x)), n_in - 1)
        w = x - i0
        m[j, i0] += 1 - w
        m[j, min(i0 + 1, n_in - 1)] += w
    return m


def test_downsample_for_lpips_bilinear_is_half_pixel_centred():
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    y = dm.downsample_for_lpips(x, 9, mode='bilinear')
    m = _np_bilinear_1d_weights(12, 9)
    expected = np.einsum('ij,ncjk,lk->ncil', m, x.numpy(), m)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)
