"""Draw metric-vs-kimg curves of several training runs into one PNG (the paper's Figure 2).

    python -m metrics.plot_curves --metric fid50k_full --out fid.png runs/00000-dense runs/00001-svs

Reads ``<run_dir>/metric-<metric>.jsonl`` as written by ``metric_main.report_metric``.
"""
import json
import os
import re

import click

import dnnlib


def read_metric_curve(run_dir, metric, key=None):
    """(kimg list, value list) of one run, sorted by kimg. ``key`` defaults to the metric name
    (FID/KID) or must name a result such as ``prdc50k_full_precision``."""
    path = os.path.join(run_dir, f'metric-{metric}.jsonl')
    if not os.path.isfile(path):
        raise dnnlib.util.UserError(f'{path}: no such file (was {metric} computed during that run?)')
    key = key or metric
    points = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise dnnlib.util.UserError(f'{path}:{lineno}: not a JSON line') from None
            kimg = record.get('kimg')
            if kimg is None:
                m = re.search(r'network-snapshot-(\d+)', str(record.get('snapshot_pkl', '')))
                kimg = int(m.group(1)) if m else None
            if kimg is None or key not in record.get('results', {}):
                continue
            points.append((float(kimg), float(record['results'][key])))
    points.sort()
    return [p[0] for p in points], [p[1] for p in points]


def plot_metric_curves(run_dirs, out_png, metric='fid50k_full', key=None, labels=None, title=None, log_y=False):
    """Plot one curve per run directory and save a PNG; returns the output path."""
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise dnnlib.util.UserError(f'--label: {len(labels)} labels for {len(run_dirs)} runs')
    curves = {}
    for run_dir, label in zip(run_dirs, labels):
        kimg, values = read_metric_curve(run_dir, metric, key)
        if not kimg:
            raise dnnlib.util.UserError(f'{run_dir}: no {key or metric} values with a kimg in metric-{metric}.jsonl')
        curves[label] = (kimg, values)
    return plot_curve_points(curves, out_png, ylabel=key or metric, title=title or f'{key or metric} during training',
                             log_y=log_y)


def plot_curve_points(curves, out_png, ylabel, title, log_y=False):
    """Plot ``{label: (kimg list, value list)}`` on one axes and save a PNG; returns the output path."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, (kimg, values) in curves.items():
        ax.plot(kimg, values, marker='o', markersize=3, label=label)
    ax.set_xlabel('kimg')
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale('log')
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    with dnnlib.util.atomic_open(out_png, 'wb') as f:
        fig.savefig(f, format='png')
    plt.close(fig)
    return out_png


@click.command()
@click.argument('run_dirs', nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option('--metric', default='fid50k_full', show_default=True, help='Metric whose jsonl is read.')
@click.option('--key', default=None, help='Result key to plot (default: the metric name), e.g. prdc50k_full_recall.')
@click.option('--label', 'labels', multiple=True, help='Legend label per run (repeat, in order).')
@click.option('--out', required=True, type=click.Path(dir_okay=False), help='Output PNG.')
@click.option('--log-y', is_flag=True, help='Logarithmic y axis.')
@dnnlib.util.exit_on_user_error
def main(run_dirs, metric, key, labels, out, log_y):
    """Plot METRIC against kimg for each of RUN_DIRS into one PNG."""
    plot_metric_curves(run_dirs, out, metric=metric, key=key, labels=labels or None, log_y=log_y)
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
