"""Singular Value Scaling: replace the singular values of stored weights by f(sigma).

For every selected weight W (4-D convs viewed as [C_out, C_in*k*k], 2-D FC weights as they are):
W = U diag(sigma) V^T  ->  U diag(f(sigma)) V^T, with U, V and the order of the singular values
unchanged. A bias b is the 1 x n matrix whose only singular value is ||b||_2, so it becomes
b * f(||b||) / ||b||; for f = sqrt this is the official b / sqrt(||b||_2 + 1e-8), used verbatim.
An all-zero bias is left unchanged.

SVS acts on the RAW stored parameters, never on the effective weights of equalised-lr layers
(the official code does the same; the runtime gains are scalars, so the two differ).
The SVD is computed in float64 on the parameter's device; if LAPACK does not converge we say which
layer and retry with the slower, more robust gesvd routine.
"""
import fnmatch
import re

import numpy as np
import torch

import dnnlib

# ---------------------------------------------------------------------------------------------
# Scaling functions: tensor of singular values (float64) -> tensor of new singular values.

_FIXED_FUNCTIONS = {
    'sqrt':     lambda s: s.sqrt(),
    'log1p':    lambda s: s.log1p(),                 # log(sigma + 1)
    'abslog':   lambda s: s.log().abs(),             # |log sigma|
    'ones':     lambda s: torch.ones_like(s),        # Table 6: sigma = 1
    'spectral': lambda s: s / s.max(),               # Table 6: sigma / sigma_max
    'square':   lambda s: s.square(),                # Table 6: sigma^2
}
FUNCTIONS = tuple(_FIXED_FUNCTIONS) + ('pow:<p>',)


def parse_fn(fn):
    """Name -> (canonical name, callable, maps_zero_to_zero). Accepts the names in FUNCTIONS,
    'pow:<p>' for any real power p, or a callable (taken to map 0 to 0 only if it does)."""
    if callable(fn):
        zero = float(fn(torch.zeros(1, dtype=torch.float64))[0])
        return getattr(fn, '__name__', 'custom'), fn, zero == 0
    if not isinstance(fn, str):
        raise dnnlib.util.UserError(f'--svs: expected a function name, got {fn!r}')
    name = fn.strip().lower()
    if name in _FIXED_FUNCTIONS:
        return name, _FIXED_FUNCTIONS[name], name not in ('ones', 'abslog')
    if name.startswith('pow:') or name.startswith('pow'):
        text = name[4:] if name.startswith('pow:') else name[3:]
        try:
            power = float(text)
        except ValueError:
            raise dnnlib.util.UserError(f'--svs: bad power in "{fn}", expected e.g. pow:0.5')
        if not np.isfinite(power):
            raise dnnlib.util.UserError(f'--svs: bad power in "{fn}"')
        return f'pow:{power:g}', (lambda s: s.pow(power)), power > 0
    raise dnnlib.util.UserError(f'--svs: unknown scaling function "{fn}", expected one of {", ".join(FUNCTIONS)}')

# ---------------------------------------------------------------------------------------------
# Which parameters: the default set of the paper, or name patterns.


def synthesis_prefix(module):
    """Name prefix of the synthesis network inside ``module`` ('' if it is one, None if unknown)."""
    if hasattr(module, 'synthesis') and isinstance(module.synthesis, torch.nn.Module):
        return 'synthesis.'
    if hasattr(module, 'block_resolutions') or hasattr(module, 'layer_names'):
        return ''
    return None


def is_ddpm_unet(module):
    """A diffusers UNet2DModel (or anything shaped like one: conv_in, time_embedding, down_blocks)."""
    return all(hasattr(module, a) for a in ('conv_in', 'time_embedding', 'down_blocks', 'conv_out'))


def ddpm_names(module):
    """The DDPM rule of the paper's code: every parameter whose name lacks "norm" (all convs and
    linears incl. conv_in and conv_out, time-embedding linears, attention q/k/v/out, resample and
    shortcut convs, with their biases); GroupNorm affines are left to ``reset_group_norm_affine_``."""
    return [name for name, _param in module.named_parameters() if 'norm' not in name]


def reset_group_norm_affine_(module):
    """Set every GroupNorm affine to weight 1, bias 0 (in place); returns the names reset.

    The official DDPM SVS code does this after scaling although the paper does not mention it; our
    Table 3 configs do it by default (option ``svs_reset_norm``)."""
    names = []
    with torch.no_grad():
        for name, m in module.named_modules():
            if isinstance(m, torch.nn.GroupNorm) and m.affine:
                m.weight.fill_(1)
                m.bias.zero_()
                names.append(name)
    return names


def default_names(module):
    """The parameters the paper scales: every synthesis weight and bias (DDPM: ``ddpm_names``).

    StyleGAN2: modulated conv weights/biases, affine weights/biases, toRGB (all named *.weight or
    *.bias); const, noise_strength, buffers and the mapping network are left alone.
    StyleGAN3: every synthesis weight/bias, incl. input.weight, input.affine and the final toRGB.
    A module that is neither gets every parameter named *.weight / *.bias.
    """
    if is_ddpm_unet(module):
        return ddpm_names(module)
    prefix = synthesis_prefix(module)
    names = []
    for name, _param in module.named_parameters():
        if prefix and not name.startswith(prefix):
            continue
        if name.rsplit('.', 1)[-1] in ('weight', 'bias'):
            names.append(name)
    return names


def _matches(name, pattern):
    if pattern.startswith('re:'):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _as_patterns(patterns):
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(',') if p.strip()]
    return [p.strip() for p in patterns]


def select_names(module, include=None, exclude=None):
    """Parameter names to scale. ``include``/``exclude``: lists (or comma-separated strings) of
    fnmatch patterns, or regular expressions prefixed with 're:'; matched against the full name
    relative to ``module`` (e.g. 'synthesis.b8.conv0.weight'). include=None = the default set."""
    include, exclude = _as_patterns(include), _as_patterns(exclude)
    if include is None:
        names = default_names(module)
    else:
        names = [n for n, _ in module.named_parameters() if any(_matches(n, p) for p in include)]
        if not names:
            raise dnnlib.util.UserError(f'--svs-include: no parameter matches {", ".join(include)}')
    if exclude:
        names = [n for n in names if not any(_matches(n, p) for p in exclude)]
    return names

# ---------------------------------------------------------------------------------------------
# The transform.


def thin_svd(matrix, name='matrix'):
    """Thin SVD of a 2-D float64 tensor -> (U, S, Vh). Falls back to LAPACK gesvd (scipy) when
    the default divide-and-conquer routine does not converge; raises UserError if both fail."""
    assert matrix.ndim == 2
    if not torch.isfinite(matrix).all():
        raise dnnlib.util.UserError(f'{name}: SVD impossible, the tensor holds NaN or Inf')
    try:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u, s, vh, None
    except (torch.linalg.LinAlgError, RuntimeError) as err:
        first_error = str(err).splitlines()[0]
    print(f'svs: SVD of {name} {tuple(matrix.shape)} did not converge ({first_error}); retrying with gesvd')
    import scipy.linalg
    try:
        u, s, vh = scipy.linalg.svd(matrix.cpu().numpy(), full_matrices=False, lapack_driver='gesvd')
    except (np.linalg.LinAlgError, ValueError) as err:
        raise dnnlib.util.UserError(f'{name}: SVD did not converge with gesdd nor gesvd ({err})')
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(matrix.device)
    return to(u), to(s), to(vh), 'gesvd'


def _rank_tolerance(s, shape, dtype):
    # Singular values at the rounding level of the stored dtype are numerically zero.
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    return float(s.max()) * max(shape) * eps if s.numel() else 0.0


def scale_matrix(weight, fn='sqrt', name='weight'):
    """New value for a weight tensor (any shape with ndim >= 2): rows = dim 0, the rest flattened.
    Returns (new_weight in the input dtype, sigma_before, sigma_after, fallback)."""
    fn_name, f, zero_to_zero = parse_fn(fn)
    matrix = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    u, s, vh, fallback = thin_svd(matrix, name)
    s_new = f(s.clone())
    if not zero_to_zero:
        # f(0) != 0 (ones, abslog, non-positive powers) would invent directions in the numerical
        # null space; keep rank-deficient directions at zero instead.
        null = s <= _rank_tolerance(s, matrix.shape, weight.dtype)
        s_new = torch.where(null, torch.zeros_like(s_new), s_new)
    if not torch.isfinite(s_new).all():
        raise dnnlib.util.UserError(f'{name}: scaling function {fn_name} gives non-finite singular values')
    new = (u * s_new.unsqueeze(0)) @ vh
    return new.reshape(weight.shape).to(weight.dtype), s, s_new, fallback


def scale_vector(bias, fn='sqrt'):
    """New value for a bias (1 x n matrix, singular value ||b||). Zero bias -> unchanged.
    sqrt uses the official formula b / sqrt(||b||_2 + 1e-8)."""
    fn_name, f, _zero = parse_fn(fn)
    b = bias.detach().to(torch.float64)
    norm = b.norm()
    if norm == 0:
        return bias.detach().clone(), norm.reshape(1), norm.reshape(1)
    if fn_name == 'sqrt':
        new = b / torch.sqrt(norm + 1e-8)
    else:
        new = b * (f(norm.reshape(1))[0] / norm)
    return new.to(bias.dtype), norm.reshape(1), new.norm().reshape(1)


@torch.no_grad()
def scale_(module, fn='sqrt', include=None, exclude=None, names=None, verbose=False):
    """Apply SVS in place to ``module`` (a Generator, its synthesis network, or any module).

    fn: 'sqrt' (default, the paper), 'log1p', 'abslog', 'ones', 'spectral', 'square', 'pow:<p>',
        or a callable on a float64 tensor of singular values.
    include/exclude: name patterns (see ``select_names``); names: an explicit list instead.
    Returns a report: EasyDict(fn, layers=[EasyDict(name, shape, kind, sigma_before,
    sigma_after, fallback)]) with the singular values as float64 CPU tensors.
    """
    fn_name, _f, _zero = parse_fn(fn)
    params = dict(module.named_parameters())
    if names is None:
        names = select_names(module, include=include, exclude=exclude)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise dnnlib.util.UserError(f'svs: no parameter named {unknown[0]}')
    report = dnnlib.EasyDict(fn=fn_name, layers=[])
    for name in names:
        param = params[name]
        if param.ndim >= 2:
            new, s_before, s_after, fallback = scale_matrix(param, fn=fn, name=name)
            kind = 'matrix'
        else:
            new, s_before, s_after = scale_vector(param.reshape(-1), fn=fn)
            new, kind, fallback = new.reshape(param.shape), 'vector', None
        param.copy_(new)
        report.layers.append(dnnlib.EasyDict(name=name, shape=list(param.shape), kind=kind,
            sigma_before=s_before.cpu(), sigma_after=s_after.cpu(), fallback=fallback))
        if verbose:
            print(f'svs {fn_name}: {name} {list(param.shape)} sigma_max {float(s_before.max()):.4g} -> {float(s_after.max()):.4g}')
    return report
