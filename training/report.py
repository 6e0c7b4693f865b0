"""The pipeline's report: ``report.html`` (and ``report.md``) in the run directory, PNGs in ``report/``.

Everything shown is read from the run's own files: the stages' ``done.json``, ``prune/pruning.json``,
``evaluate/evaluate.json``, the spectra PNG written by ``prune.py svs``, the comparison grid of the
evaluate stage and the two fine-tunings' ``stats.jsonl``. Rebuild it at any time with

    python -m training.report runs/pipeline
"""
import html
import io
import json
import os
import shutil

import click

import dnnlib

LABELS = dict(teacher='teacher', pruned='pruned (before fine-tuning)', pruned_svs='pruned + SVS (before fine-tuning)',
              finetuned='pruned, fine-tuned', finetuned_svs='pruned + SVS, fine-tuned')
RUN_LABELS = {'finetune-pruned': 'pruned init', 'finetune-svs': 'pruned + SVS init'}
FIRST_CURVES = ('Loss/G/loss', 'Loss/D/loss', 'Loss/G/l1', 'Loss/G/lpips', 'Loss/G/ld', 'Loss/G/total')


def _read_json(path):
    if not os.path.isfile(path):
        raise dnnlib.util.UserError(f'{path}: missing (has the stage that writes it finished?)')
    with open(path, 'rt') as f:
        return json.load(f)


def read_stats(stats_jsonl):
    """{name: (kimg list, mean list)} of one run's stats.jsonl (one line per tick)."""
    curves = {}
    with open(stats_jsonl, 'rt') as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            kimg = record.get('Progress/kimg', {}).get('mean')
            if kimg is None:
                continue
            for name, value in record.items():
                if isinstance(value, dict) and 'mean' in value and value.get('num', 1):
                    xs, ys = curves.setdefault(name, ([], []))
                    xs.append(float(kimg))
                    ys.append(float(value['mean']))
    return curves


def curve_names(curves_by_run):
    """Loss and metric curves worth plotting: the G and D losses first, then the other terms."""
    names = set()
    for curves in curves_by_run.values():
        names |= {n for n in curves if (n.startswith('Loss/') and not n.startswith(('Loss/scores/', 'Loss/signs/')))
                  or n.startswith('Metrics/')}
    first = [n for n in FIRST_CURVES if n in names]
    return first + sorted(names - set(first))


def plot_training_curves(curves_by_run, path):
    """One panel per quantity, every run on the same axes; saved atomically as PNG. Returns the names."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = curve_names(curves_by_run)
    if not names:
        raise dnnlib.util.UserError(f'{path}: the runs\' stats.jsonl hold no Loss/* entries to plot')
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for label, curves in curves_by_run.items():
            if name in curves:
                xs, ys = curves[name]
                ax.plot(xs, ys, marker='o', markersize=2.5, linewidth=1.2, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel('kimg')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis('off')
    fig.suptitle('fine-tuning curves (stats.jsonl, mean per tick)')
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=110)
    plt.close(fig)
    dnnlib.util.atomic_write_bytes(path, buf.getvalue())
    return names


def _ms(sec):
    return f'{sec * 1e3:.2f}'


def _fmt(v, digits=4):
    if isinstance(v, float):
        if v != v or v in (float('inf'), float('-inf')):
            return str(v)
        return f'{v:.{digits}f}'
    return str(v)


def _table(header, rows):
    """(html, markdown) of one table."""
    h = ['<table>', '<tr>' + ''.join(f'<th>{html.escape(str(c))}</th>' for c in header) + '</tr>']
    for r in rows:
        h.append('<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in r) + '</tr>')
    h.append('</table>')
    m = ['| ' + ' | '.join(str(c) for c in header) + ' |', '|' + '---|' * len(header)]
    m += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return '\n'.join(h), '\n'.join(m)


def build_report(run_dir):
    """Write report.html, report.md and report/*.png for a pipeline run; returns their paths."""
    run_dir = os.path.abspath(run_dir)
    rp = lambda *p: os.path.join(run_dir, *p)
    pipeline = _read_json(rp('pipeline.json'))
    done = {s: _read_json(rp(s, 'done.json')) for s in ('data', 'prune', 'finetune-pruned', 'finetune-svs', 'evaluate')}
    pruning = _read_json(rp(done['prune']['outputs']['pruning_json']))
    ev = _read_json(rp(done['evaluate']['outputs']['evaluate_json']))
    opts = pipeline['options']
    out_dir = rp('report')
    os.makedirs(out_dir, exist_ok=True)

    # Images: copies of the spectra and the comparison grid, and the training curves.
    spectra_png = os.path.join(out_dir, 'spectra.png')
    shutil.copyfile(rp(done['prune']['outputs']['spectra_png']), spectra_png)
    grid_png = os.path.join(out_dir, 'samples.png')
    shutil.copyfile(rp(done['evaluate']['outputs']['grid_png']), grid_png)
    curves_by_run = {}
    for stage in ('finetune-pruned', 'finetune-svs'):
        curves_by_run[RUN_LABELS[stage]] = read_stats(rp(done[stage]['outputs']['run_dir'], 'stats.jsonl'))
    curves_png = os.path.join(out_dir, 'curves.png')
    curve_list = plot_training_curves(curves_by_run, curves_png)

    sections = []  # (title, html, markdown)

    # Settings.
    ft = done['finetune-pruned']['outputs']
    notes = list(ft.get('notes') or [])
    rows = [('teacher', opts['teacher']), ('data', done['data']['outputs']['data'] + (' (built-in sample dataset)' if done['data']['outputs'].get('builtin') else '')),
            ('pruning', f'{pruning["method"]}, ratio {pruning["ratio"]}, {pruning["settings"].get("n_samples", "-")} latents, seed {pruning["settings"]["seed"]}'),
            ('channel widths', f'{pruning["teacher_widths"]} -> {pruning["widths"]}'),
            ('SVS', opts['svs']),
            ('fine-tuning', f'{ft["kimg"]:g} kimg per run' + (f', config {opts["config"]}' if opts.get('config') else f', batch {opts["batch"]}')),
            ('fine-tuning commands', ' | '.join('train.py ' + ' '.join(done[s]['outputs']['command'][1:])
                                                 for s in ('finetune-pruned', 'finetune-svs') if done[s]['outputs'].get('command')) or 'resumed')]
    rows += [('note', n) for n in notes]
    sections.append(('Run', *_table(['', ''], rows)))

    # Size and speed.
    nets = ev['networks']
    t = nets['teacher']
    rows = []
    for key in ('teacher', 'pruned', 'pruned_svs', 'finetuned', 'finetuned_svs'):
        n = nets[key]
        lat = n['latency']
        rows.append((LABELS[key], f'{n["params"]:,}', f'{n["macs"]:,}', _ms(lat['median_sec']),
                     f'{n["params"] / t["params"]:.1%}', f'{t["macs"] / n["macs"]:.2f}x', f'{t["latency"]["median_sec"] / lat["median_sec"]:.2f}x'))
    lat = t['latency']
    h, m = _table(['network', 'params', 'FLOPs (MACs)', 'CPU latency (ms)', 'params vs teacher', 'fewer MACs', 'speed-up'], rows)
    caption = (f'CPU latency: one forward pass (mapping + synthesis, constant noise) of a batch of {lat["batch"]}, median of '
               f'{lat["repeats"]} runs after warm-up, torch threads: {lat["threads"]}. MACs as in the paper (multiply-accumulates of convs, '
               f'toRGB, affines and mapping).')
    sections.append(('Size and speed', h + f'<p class="note">{html.escape(caption)}</p>', m + f'\n\n{caption}'))

    # Metrics.
    met = ev['metrics']
    if met.get('skipped'):
        text = f'Metrics ({", ".join(met["requested"]) or "none"}) were skipped: {met["skipped"]}. No substitute number is given.'
        sections.append(('Metrics', f'<p class="skip">{html.escape(text)}</p>', text))
    else:
        keys = []
        for per_net in met['results'].values():
            for r in per_net.values():
                keys += [k for k in r['results'] if k not in keys]
        rows = []
        for net_key, per_net in met['results'].items():
            values = {}
            for r in per_net.values():
                values.update(r['results'])
            rows.append([LABELS[net_key]] + [_fmt(values.get(k, '-')) for k in keys])
        details = '; '.join(f'{name}: {r["details"].get("num_gen")} generated vs {r["details"].get("num_real")} real'
                            for name, r in next(iter(met['results'].values())).items())
        h, m = _table(['network'] + keys, rows)
        sections.append(('Metrics', h + f'<p class="note">{html.escape(details)}</p>', m + f'\n\n{details}'))

    # Agreement.
    s = ev['agreement_settings']
    rows = []
    for key in ('pruned', 'pruned_svs', 'finetuned', 'finetuned_svs'):
        a = ev['agreement'][key]
        rows.append((LABELS[key], _fmt(a['psnr']['mean'], 2), f'{_fmt(a["psnr"]["min"], 2)} .. {_fmt(a["psnr"]["max"], 2)}',
                     _fmt(a['ssim']['mean']), f'{_fmt(a["ssim"]["min"])} .. {_fmt(a["ssim"]["max"])}'))
    h, m = _table(['student', 'PSNR (dB)', 'PSNR min .. max', 'SSIM', 'SSIM min .. max'], rows)
    caption = (f'Student against teacher on the same {ev["agreement"]["finetuned"]["num_images"]} latents (seeds {s["seeds"]}), '
               f'same labels, constant noise, psi {s["truncation_psi"]}; uint8 images, data range {s["data_range"]}; '
               f'SSIM with a {s["ssim_window"]}x{s["ssim_window"]} Gaussian window, sigma {s["ssim_sigma"]}. Higher is closer.')
    sections.append(('Teacher-student agreement', h + f'<p class="note">{html.escape(caption)}</p>', m + f'\n\n{caption}'))

    # Figures.
    rel = lambda p: os.path.relpath(p, run_dir)
    grid_caption = (f'Seeds {ev["grid"]["seeds"][0]}-{ev["grid"]["seeds"][-1]}, the same z in every row, constant noise. '
                    f'Rows: {", ".join(LABELS[k] for k in ev["grid"]["rows"])}.')
    figures = [('Samples from the same z', grid_png, grid_caption),
               ('Singular values before and after SVS', spectra_png,
                f'The pruned student\'s weights (G_ema) before and after SVS ({opts["svs"]}): pooled density of the '
                f'singular values (left) and sigma_max / sigma_min per layer (right).'),
               ('Fine-tuning curves', curves_png,
                f'Both fine-tunings of the same pruned weights on the same axes: {", ".join(curve_list)}.')]
    for title, png, caption in figures:
        sections.append((title, f'<img src="{html.escape(rel(png))}" alt="{html.escape(title)}">'
                                f'<p class="note">{html.escape(caption)}</p>',
                         f'![{title}]({rel(png)})\n\n{caption}'))

    # Stage times.
    rows = [(s, dnnlib.util.format_time(done[s]['seconds']) if s in done else '-', done[s]['finished'] if s in done else '-')
            for s in done]
    total = sum(d['seconds'] for d in done.values())
    h, m = _table(['stage', 'time', 'finished'], rows)
    text = f'Total before the report: {dnnlib.util.format_time(total)}.'
    sections.append(('Stages', h + f'<p class="note">{text}</p>', m + f'\n\n{text}'))

    title = f'SVS pipeline: {pruning["method"]} {pruning["ratio"]:g} + SVS ({opts["svs"]})'
    style = ('body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;'
             'margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child'
             '{text-align:left}img{max-width:100%;border:1px solid #ddd}.note{color:#555;font-size:.9em}.skip{background:'
             '#fff5e0;padding:.6em;border-left:4px solid #e0a000}')
    body = '\n'.join(f'<h2>{html.escape(t_)}</h2>\n{h_}' for t_, h_, _m in sections)
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{style}</style></head><body>\n<h1>{html.escape(title)}</h1>\n'
            f'<p class="note">Command: <code>{html.escape(pipeline.get("command") or "")}</code></p>\n{body}\n</body></html>\n')
    md = f'# {title}\n\nCommand: `{pipeline.get("command") or ""}`\n\n' + '\n\n'.join(f'## {t_}\n\n{m_}' for t_, _h, m_ in sections) + '\n'
    html_path, md_path = rp('report.html'), rp('report.md')
    dnnlib.util.atomic_write_bytes(html_path, page.encode('utf-8'))
    dnnlib.util.atomic_write_bytes(md_path, md.encode('utf-8'))
    return dict(html=html_path, markdown=md_path, samples_png=grid_png, spectra_png=spectra_png, curves_png=curves_png)


@click.command()
@click.argument('run_dir', type=click.Path(file_okay=False))
@dnnlib.util.exit_on_user_error
def main(run_dir):
    """Rebuild report.html / report.md of a finished pipeline RUN_DIR."""
    paths = build_report(run_dir)
    print(f'wrote {paths["html"]}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
