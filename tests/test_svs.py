"""Singular Value Scaling: properties of the transform on raw parameters, selection, spectra."""
import math

import numpy as np
import pytest
import torch

import dnnlib
import svs
from svs import scaling, spectra

FNS = ['sqrt', 'log1p', 'abslog', 'ones', 'spectral', 'square', 'pow:0.25', 'pow:-1']

# The scaling functions written independently of svs.scaling (float64 NumPy): the oracle.
NP_FNS = {
    'sqrt': np.sqrt,
    'log1p': lambda s: np.log(s + 1.0),
    'abslog': lambda s: np.abs(np.log(s)),
    'ones': np.ones_like,
    'spectral': lambda s: s / np.max(s),
    'square': lambda s: s * s,
    'pow:0.25': lambda s: s ** 0.25,
    'pow:0.3': lambda s: s ** 0.3,
    'pow:-1': lambda s: 1.0 / s,
}


def _np_svd(t):
    return np.linalg.svd(t.detach().reshape(t.shape[0], -1).double().numpy(), full_matrices=False)


class Toy(torch.nn.Module):
    """Shapes like a modulated conv layer: [C_out, C_in, 3, 3] weight, bias, affine, scalar."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Module()
        self.conv.weight = torch.nn.Parameter(torch.randn([6, 4, 3, 3], generator=g))
        self.conv.bias = torch.nn.Parameter(torch.randn([6], generator=g))
        self.conv.noise_strength = torch.nn.Parameter(torch.tensor(0.3))
        self.affine = torch.nn.Module()
        self.affine.weight = torch.nn.Parameter(torch.randn([4, 10], generator=g) * 2)
        self.affine.bias = torch.nn.Parameter(torch.zeros([4]))


def _svd64(t):
    return torch.linalg.svd(t.detach().reshape(t.shape[0], -1).double(), full_matrices=False)


@pytest.mark.parametrize('fn', FNS)
def test_singular_values_become_f_sigma_on_the_same_vectors(fn):
    m = Toy()
    before = {n: _np_svd(getattr(m, n.split('.')[0]).weight) for n in ('conv.weight', 'affine.weight')}
    shapes = {'conv.weight': tuple(m.conv.weight.shape), 'affine.weight': tuple(m.affine.weight.shape)}
    report = svs.scale_(m, fn=fn, names=['conv.weight', 'affine.weight'])
    f = NP_FNS[fn]
    for name, w in (('conv.weight', m.conv.weight), ('affine.weight', m.affine.weight)):
        uu, ss, vv = before[name]
        w_new = w.detach().reshape(w.shape[0], -1).double().numpy()
        # Projecting on the OLD singular vectors gives diag(f(sigma)) in the old order: U and V
        # are unchanged and no re-sorting happened (abslog and pow:-1 reverse the magnitudes).
        projected = uu.T @ w_new @ vv.T
        expected = np.diag(f(ss))
        np.testing.assert_allclose(projected, expected, atol=1e-5 * np.abs(expected).max() + 1e-6, err_msg=fn)
        assert w.dtype == torch.float32 and tuple(w.shape) == shapes[name]
    assert [l.name for l in report.layers] == ['conv.weight', 'affine.weight']
    np.testing.assert_allclose(report.layers[0].sigma_before.numpy(), before['conv.weight'][1], rtol=1e-10)
    np.testing.assert_allclose(report.layers[0].sigma_after.numpy(), f(before['conv.weight'][1]), rtol=1e-10)


def test_svs_sqrt_changes_the_spectrum_and_is_not_identity():
    m = Toy()
    before = m.conv.weight.detach().clone()
    svs.scale_(m, fn='sqrt', names=['conv.weight'])
    s_new = _svd64(m.conv.weight)[1]
    s_old = _svd64(before)[1]
    assert torch.allclose(s_new, s_old.sqrt(), rtol=1e-5)
    assert not torch.allclose(before, m.conv.weight)


def test_bias_rule_official_formula_and_other_functions():
    m = Toy()
    b = m.conv.bias.detach().clone()
    svs.scale_(m, fn='sqrt', names=['conv.bias'])
    expected = b.double() / torch.sqrt(b.double().norm() + 1e-8)
    assert torch.allclose(m.conv.bias.double(), expected, rtol=1e-6)
    for fn in ('log1p', 'square', 'pow:0.3', 'spectral'):
        m = Toy()
        svs.scale_(m, fn=fn, names=['conv.bias'])
        new = m.conv.bias.detach().double()
        norm = np.linalg.norm(b.double().numpy())
        assert math.isclose(float(new.norm()), float(NP_FNS[fn](np.array([norm]))[0]), rel_tol=1e-5)
        cos = float(new @ b.double() / (new.norm() * b.double().norm()))
        assert cos > 1 - 1e-6  # same direction


@pytest.mark.parametrize('fn', FNS)
def test_zero_bias_untouched(fn):
    m = Toy()
    svs.scale_(m, fn=fn, names=['affine.bias'])
    assert torch.equal(m.affine.bias, torch.zeros(4))


def test_rank_deficient_directions_stay_zero_for_functions_with_f0_nonzero():
    m = Toy()
    with torch.no_grad():
        m.affine.weight.copy_(torch.outer(torch.arange(1.0, 5.0), torch.linspace(-1, 1, 10)))  # rank 1
    svs.scale_(m, fn='ones', names=['affine.weight'])
    s = _svd64(m.affine.weight)[1]
    assert math.isclose(float(s[0]), 1.0, rel_tol=1e-6) and float(s[1:].max()) < 1e-6


def test_patterns_include_exclude_and_regex():
    m = Toy()
    assert scaling.select_names(m, include=['conv.*']) == ['conv.weight', 'conv.bias', 'conv.noise_strength']
    assert scaling.select_names(m, include='conv.*', exclude='*.noise_strength') == ['conv.weight', 'conv.bias']
    assert scaling.select_names(m, include=['re:^affine\\.']) == ['affine.weight', 'affine.bias']
    # Default on a plain module: every *.weight / *.bias, never scalars such as noise_strength.
    assert scaling.select_names(m) == ['conv.weight', 'conv.bias', 'affine.weight', 'affine.bias']
    with pytest.raises(dnnlib.util.UserError, match='no parameter matches'):
        scaling.select_names(m, include=['mapping.*'])


def test_unknown_function_and_bad_power():
    with pytest.raises(dnnlib.util.UserError, match='unknown scaling function'):
        scaling.parse_fn('cube')
    with pytest.raises(dnnlib.util.UserError, match='bad power'):
        scaling.parse_fn('pow:x')
    assert scaling.parse_fn('pow:0.5')[0] == 'pow:0.5'


def test_svd_fallback_to_gesvd_names_layer(monkeypatch, capsys):
    m = Toy()
    expected = Toy()
    svs.scale_(expected, names=['conv.weight'])

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError('linalg.svd: The algorithm failed to converge')
    monkeypatch.setattr(torch.linalg, 'svd', broken)
    report = svs.scale_(m, names=['conv.weight'])
    assert report.layers[0].fallback == 'gesvd'
    assert 'conv.weight' in capsys.readouterr().out
    assert torch.allclose(m.conv.weight, expected.conv.weight, atol=1e-5)


def test_non_finite_weight_is_a_clear_error():
    m = Toy()
    with torch.no_grad():
        m.conv.weight[0, 0, 0, 0] = float('nan')
    with pytest.raises(dnnlib.util.UserError, match='conv.weight'):
        svs.scale_(m, names=['conv.weight'])


def test_spectra_summary_and_plot(tmp_path):
    m = Toy()
    report = svs.scale_(m, fn='sqrt')
    summary = spectra.summarize(report)
    row = summary['layers'][0]
    assert row['name'] == 'conv.weight'
    assert math.isclose(row['sigma_max_after'], math.sqrt(row['sigma_max_before']), rel_tol=1e-6)
    assert math.isclose(row['cond_after'], math.sqrt(row['cond_before']), rel_tol=1e-5)
    path = tmp_path / 'spectra.png'
    spectra.plot_spectra(report, str(path), title='toy')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    before_only = spectra.weight_spectra(Toy())
    assert before_only.layers[0].sigma_after is None
    spectra.plot_spectra(before_only, str(tmp_path / 'b.png'))
    assert np.allclose(before_only.layers[0].sigma_before.numpy(), report.layers[0].sigma_before.numpy())


def test_default_parameter_sets_of_sg2_and_sg3():
    from test_pruning import tiny_sg2
    G = tiny_sg2()
    names = scaling.select_names(G)
    assert 'synthesis.b4.conv1.weight' in names and 'synthesis.b8.conv0.bias' in names
    assert 'synthesis.b8.conv0.affine.weight' in names and 'synthesis.b8.conv0.affine.bias' in names
    assert {'synthesis.b32.torgb.weight', 'synthesis.b32.torgb.bias', 'synthesis.b32.torgb.affine.weight'} <= set(names)
    assert not any(n.startswith('mapping.') or n.endswith(('const', 'noise_strength')) for n in names)
    # Same list from the synthesis network alone (names relative to it).
    assert ['synthesis.' + n for n in scaling.select_names(G.synthesis)] == names
    no_torgb = scaling.select_names(G, exclude=['*torgb*'])
    assert no_torgb and not any('torgb' in n for n in no_torgb)
    # Applying the default set leaves everything else bit-identical.
    before = {k: v.clone() for k, v in G.state_dict().items()}
    report = svs.scale_(G)
    assert [l.name for l in report.layers] == names
    for k, v in G.state_dict().items():
        assert torch.equal(v, before[k]) == (k not in names), k


def test_default_parameter_set_of_sg3():
    from test_pruning import _sg3_available, tiny_sg3
    if not _sg3_available():
        pytest.skip('training/networks_stylegan3.py not available')
    G = tiny_sg3()
    names = scaling.select_names(G)
    last = G.synthesis.layer_names[-1]
    assert {'synthesis.input.weight', 'synthesis.input.affine.weight', 'synthesis.input.affine.bias',
            f'synthesis.{last}.weight', f'synthesis.{last}.bias', f'synthesis.{last}.affine.weight'} <= set(names)
    assert not any(n.startswith('mapping.') for n in names)
    params = dict(G.named_parameters())
    assert set(names) == {n for n in params if n.startswith('synthesis.')}
    svs.scale_(G)
    with torch.no_grad():
        img = G(torch.randn([1, G.z_dim]), torch.zeros([1, 0]))
    assert torch.isfinite(img).all()


@pytest.mark.parametrize('fn,top', [(lambda s: s + 1.0, 'plus_one'), ('pow:0', 'pow0')])
def test_functions_with_f0_nonzero_keep_null_directions_zero(fn, top):
    # A callable with f(0) = 1 and the power 0 (s^0 = 1): the rank-1 matrix must stay rank 1.
    m = Toy()
    with torch.no_grad():
        m.affine.weight.copy_(torch.outer(torch.arange(1.0, 5.0), torch.linspace(-1, 1, 10)))
    s0 = _np_svd(m.affine.weight)[1][0]
    svs.scale_(m, fn=fn, names=['affine.weight'])
    s = _np_svd(m.affine.weight)[1]
    expected = s0 + 1.0 if top == 'plus_one' else 1.0
    assert math.isclose(float(s[0]), expected, rel_tol=1e-5) and float(s[1:].max()) < 1e-5
