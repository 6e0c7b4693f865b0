"""Spectra of generator weights: singular values per layer, before and after SVS, and a density
plot in the manner of the paper's Figure 1(b, c) (pooled singular-value densities of the pruned
weights, before and after scaling) plus the per-layer ratio sigma_max / sigma_min."""
import numpy as np
import torch

import dnnlib

from .scaling import select_names, thin_svd


@torch.no_grad()
def weight_spectra(module, include=None, exclude=None, names=None):
    """Singular values of the selected weights without changing them: a report shaped like the one
    of ``svs.scale_`` with sigma_after = None (biases give their norm)."""
    params = dict(module.named_parameters())
    if names is None:
        names = select_names(module, include=include, exclude=exclude)
    report = dnnlib.EasyDict(fn=None, layers=[])
    for name in names:
        p = params[name].detach()
        if p.ndim >= 2:
            _u, s, _vh, _fb = thin_svd(p.reshape(p.shape[0], -1).to(torch.float64), name)
            kind = 'matrix'
        else:
            s, kind = p.to(torch.float64).norm().reshape(1), 'vector'
        report.layers.append(dnnlib.EasyDict(name=name, shape=list(p.shape), kind=kind,
                                             sigma_before=s.cpu(), sigma_after=None, fallback=None))
    return report


def _ratio(s):
    s = s.double()
    smin = float(s.min())
    return float(s.max()) / smin if smin > 0 else float('inf')


def summarize(report, with_values=True):
    """JSON-ready per-layer summary: sigma_max, sigma_min and their ratio before/after (and the
    singular values themselves when ``with_values``)."""
    rows = []
    for layer in report.layers:
        row = dict(name=layer.name, shape=list(layer.shape), kind=layer.kind)
        for tag in ('before', 'after'):
            s = layer.get(f'sigma_{tag}')
            if s is None:
                continue
            row[f'sigma_max_{tag}'] = float(s.max())
            row[f'sigma_min_{tag}'] = float(s.min())
            row[f'cond_{tag}'] = _ratio(s) if layer.kind == 'matrix' else 1.0
            if with_values:
                row[f'sigma_{tag}'] = [float(v) for v in s]
        if layer.get('fallback'):
            row['fallback'] = layer.fallback
        rows.append(row)
    return dict(fn=report.fn, layers=rows)


def plot_spectra(report, path, title=None):
    """Save a PNG: (left) density of log10 singular values pooled over all weight matrices, before
    and (if scaled) after SVS; (right) sigma_max / sigma_min per layer. Written atomically."""
    import io
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    mats = [l for l in report.layers if l.kind == 'matrix']
    if not mats:
        raise dnnlib.util.UserError(f'{path}: no weight matrix to plot')
    has_after = all(l.sigma_after is not None for l in mats)
    series = [('before', 'pruned' if report.fn is not None else 'weights', 'tab:blue')]
    if has_after:
        series.append(('after', f'SVS ({report.fn})', 'tab:orange'))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    logs = []
    for tag, _label, _color in series:
        s = torch.cat([l[f'sigma_{tag}'] for l in mats]).double().numpy()
        logs.append(np.log10(s[s > 0]))
    both = np.concatenate(logs)
    edges = np.linspace(both.min(), both.max() + 1e-9, 61) if both.size else 60  # shared bins
    for values, (_tag, label, color) in zip(logs, series):
        ax.hist(values, bins=edges, density=True, alpha=0.45, color=color, label=label)
    ax.set_xlabel('log10 singular value')
    ax.set_ylabel('density')
    ax.set_title('singular values of all weight matrices')
    ax.legend()

    ax = axes[1]
    x = np.arange(len(mats))
    for tag, label, color in series:
        ratios = [_ratio(l[f'sigma_{tag}']) for l in mats]
        ax.semilogy(x, ratios, 'o-', ms=3, color=color, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([l.name.replace('synthesis.', '') for l in mats], rotation=90, fontsize=5)
    ax.set_ylabel('sigma_max / sigma_min')
    ax.set_title('per layer')
    ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=120)
    plt.close(fig)
    dnnlib.util.atomic_write_bytes(path, buf.getvalue())
