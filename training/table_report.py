"""The report of a reproduced paper table: ``table<N>.md`` / ``table<N>.html`` in the output folder,
with its figures in ``table<N>/``.

For every row the paper's FID/P/R/D/C beside ours and the difference (ours - paper), a link to the
row's run folder; per setting (the rows of one plot in the paper) the FID-vs-kimg curves of its rows
on one plot (the paper's Figures 2/4/5) and a sample grid of the same seeds across its rows, the
teacher first (Figures 3, 7-11). The title states the scale whenever it is not the paper's.
Everything is read from the rows' ``done.json``; ``reproduce.py`` rebuilds the report at the end of
every job, finished rows or not.
"""
import html
import io
import os

import numpy as np

import dnnlib
from training import report
from training import reproduce_plan as rp

GRID_SEEDS = tuple(range(8))
PAPER_METRICS = ('fid50k_full', 'prdc50k_full')  # the configs' metrics: the paper's columns at its sample counts

# ---------------------------------------------------------------------------------------------
# Images.


def sample_strip(network, seeds=GRID_SEEDS, device='cpu', ddim=None):
    """uint8 NHWC images of a network's G_ema for ``seeds`` (constant noise, psi 1); a DDPM
    (``ddim``: its DDIM steps and skip type) samples from the seeds' initial noise."""
    from training import image_synthesis
    if ddim is not None:
        from training import ddpm_checkpoints
        data = ddpm_checkpoints.load_generator(network, **ddim)
    else:
        from training.checkpoints import load_network
        data = load_network(network, device='cpu', verbose=False)
    G = data.G_ema if data.G_ema is not None else data.G
    if G is None:
        raise dnnlib.util.UserError(f'{network}: holds no generator')
    return image_synthesis.generate_for_seeds(G, list(seeds), noise_mode='const', device=device)


def save_png(array, path):
    import PIL.Image
    buf = io.BytesIO()
    PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buf, format='png')
    dnnlib.util.atomic_write_bytes(path, buf.getvalue())


def save_strip(images, path):
    """One PNG row of same-size images."""
    from training import image_synthesis
    save_png(image_synthesis.image_grid([images]), path)


def read_strip(path, count):
    """The images of a strip PNG written by ``save_strip``, as uint8 NHWC."""
    import PIL.Image
    with PIL.Image.open(path) as img:
        arr = np.asarray(img.convert('RGB'))
    w = arr.shape[1] // count
    return np.stack([arr[:, i * w:(i + 1) * w] for i in range(count)])


def sample_grid(strips):
    """Tile strips (rows of equal length) into one image, smaller images upscaled to the largest."""
    from training import image_synthesis
    size = max(s.shape[1] for s in strips)
    size *= max(1, 64 // size)  # tiny images stay visible
    return image_synthesis.image_grid([image_synthesis.upscale_to(s, size) for s in strips])

# ---------------------------------------------------------------------------------------------
# Numbers.


def ours(done, column):
    """Our number of a finished row for a column key (fid, precision, ...), or None."""
    if not done:
        return None
    results = done.get('results') or {}
    if column == 'fid':
        value = results.get(done.get('curve_metric'))
        if value is None:
            value = next((v for k, v in results.items() if k.startswith('fid')), None)
        return value
    return results.get(column)


def _num(value, digits):
    return '—' if value is None else f'{value:.{digits}f}'


def _diff(mine, paper, digits):
    return '—' if mine is None or paper is None else f'{mine - paper:+.{digits}f}'


def metric_columns(rows):
    """FID, P, R, D, C; and SSIM when a row of the table has a paper SSIM (DDPM rows)."""
    extra = (('SSIM', 'ssim'),) if any(r.paper.get('ssim') is not None for r in rows) else ()
    return rp.METRIC_COLUMNS + extra


def row_cells(row, done, columns=rp.METRIC_COLUMNS):
    """Paper, ours and the difference per metric column."""
    cells = []
    for _title, key in columns:
        digits = 2 if key == 'fid' else 3
        paper, mine = row.paper.get(key), ours(done, key)
        cells += [_num(paper, digits), _num(mine, digits), _diff(mine, paper, digits)]
    return cells


def metric_header(columns=rp.METRIC_COLUMNS):
    out = []
    for title, _key in columns:
        out += [f'{title} paper', f'{title} ours', f'Δ{title}']
    return out

# ---------------------------------------------------------------------------------------------
# The report.


def scale_title(table, settings):
    """The report's title; anything not at the paper's setting is named in it."""
    scaled = []
    if settings.kimg_scale != 1:
        scaled.append(f'kimg × {settings.kimg_scale:g}')
    if settings.metrics is not None and set(settings.metrics) != set(PAPER_METRICS):
        scaled.append(f'metrics {",".join(settings.metrics)}')
    if settings.n_samples is not None:
        scaled.append(f'{settings.n_samples} pruning latents')
    if scaled:
        return f'Table {table} reproduced at reduced scale ({", ".join(scaled)}) — not the paper\'s setting'
    return f'Table {table} reproduced at the paper\'s setting'


def build_figures(plan, table, states, teacher_strips):
    """Curves, sample grids and losses per setting; returns [(setting, curves png, grid png, grid rows, losses png)]
    (None for a figure without data)."""
    from metrics import plot_curves
    fig_dir = os.path.join(plan.outdir, f'table{table}')
    figures = []
    settings = []
    for row in plan.rows:
        setting = row.paper.get('setting') or row.name
        if setting not in settings:
            settings.append(setting)
    for setting in settings:
        rows = [r for r in plan.rows if (r.paper.get('setting') or r.name) == setting]
        finished = [(r, states[r.name]) for r in rows if states[r.name]]
        curves_png = grid_png = None
        curves = {r.paper.row: (list(d['curve']['kimg']), list(d['curve']['values'])) for r, d in finished if d['curve']['kimg']}
        safe = ''.join(ch if ch.isalnum() or ch in '-_.' else '_' for ch in setting)
        if curves:
            metric = finished[0][1]['curve_metric']
            curves_png = plot_curves.plot_curve_points(curves, os.path.join(fig_dir, f'curves-{safe}.png'), ylabel=metric,
                                                       title=f'{setting}: {metric} during fine-tuning')
        losses_png = None
        stats = {r.paper.row: os.path.join(r.dir, d['run_dir'], 'stats.jsonl') for r, d in finished}
        stats = {label: report.read_stats(path) for label, path in stats.items() if os.path.isfile(path)}
        if stats:
            try:
                losses_png = os.path.join(fig_dir, f'losses-{safe}.png')
                report.plot_training_curves(stats, losses_png)
            except dnnlib.util.UserError:  # no Loss/* entries (e.g. a run of zero ticks): no figure
                losses_png = None
        grid_rows = []
        strips = []
        if finished and teacher_strips.get(setting) is not None:
            grid_rows.append('teacher')
            strips.append(teacher_strips[setting])
        for r, d in finished:
            grid_rows.append(r.paper.row)
            strips.append(read_strip(os.path.join(r.dir, d['samples_png']), len(d['seeds'])))
        if finished:
            grid_png = os.path.join(fig_dir, f'samples-{safe}.png')
            save_png(sample_grid(strips), grid_png)
        figures.append((setting, curves_png, grid_png, grid_rows, losses_png))
    return figures


def write_report(plan, table, settings, states, command, teacher_strips):
    """Write ``table<N>.md`` and ``table<N>.html``; returns their paths."""
    outdir = plan.outdir
    rel = lambda p: os.path.relpath(p, outdir)
    title = scale_title(table, settings)
    columns = metric_columns(plan.rows)
    header = ['config', 'row', 'setting', 'kimg', 'status'] + metric_header(columns)
    md_rows, html_rows = [], []
    for row in plan.rows:
        done = states[row.name]
        if done:
            link = rel(os.path.join(row.dir, done['run_dir']))
            status = f'done ({dnnlib.util.format_time(done["seconds"])})'
        else:
            link = rel(row.dir)
            status = 'started, not finished' if os.path.isfile(os.path.join(row.dir, 'plan.json')) else 'not started'
        cells = [row.paper.row, row.paper.get('setting') or '—', f'{row.kimg:g}' if row.trains else '— (teacher)', status] + row_cells(row, done, columns)
        md_cells = [f'[`{row.name}`]({link})'] + [c.replace('|', '\\|') for c in cells]
        md_rows.append('| ' + ' | '.join(md_cells) + ' |')
        html_rows.append('<tr><td><a href="' + html.escape(link) + '"><code>' + html.escape(row.name) + '</code></a></td>'
                         + ''.join(f'<td>{html.escape(c)}</td>' for c in cells) + '</tr>')
    n_done = sum(1 for r in plan.rows if states[r.name])
    metrics = sorted({m for r in plan.rows for m in r.metrics})
    note = (f'{n_done} of {len(plan.rows)} rows finished. Ours: {", ".join(metrics)} of the last snapshot of each row '
            f'(FID column: the row\'s FID metric; P/R/D/C: prdc), Δ = ours − paper; "—": no number (the paper gives '
            f'none, or the row has not finished). Paper numbers are the configs\' paper: blocks.')
    figures = build_figures(plan, table, states, teacher_strips)

    md = [f'# {title}', '', f'Command: `{command}`', '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    md += md_rows + ['', note]
    page = [f'<h1>{html.escape(title)}</h1>', f'<p class="note">Command: <code>{html.escape(command)}</code></p>',
            '<table><tr>' + ''.join(f'<th>{html.escape(h)}</th>' for h in header) + '</tr>'] + html_rows
    page += ['</table>', f'<p class="note">{html.escape(note)}</p>']
    for setting, curves_png, grid_png, grid_rows, losses_png in figures:
        md += ['', f'## {setting}']
        page.append(f'<h2>{html.escape(setting)}</h2>')
        if curves_png is None and grid_png is None:
            md += ['', 'No row of this setting has finished yet.']
            page.append('<p class="note">No row of this setting has finished yet.</p>')
            continue
        if curves_png:
            caption = f'FID-vs-kimg curves of the rows of {setting} (every snapshot, same metric as the table).'
            md += ['', f'![FID vs kimg, {setting}]({rel(curves_png)})', '', caption]
            page.append(f'<img src="{html.escape(rel(curves_png))}" alt="FID vs kimg"><p class="note">{html.escape(caption)}</p>')
        if grid_png:
            caption = (f'Seeds {GRID_SEEDS[0]}-{GRID_SEEDS[-1]}, the same z in every row, constant noise. '
                       f'Rows from the top: {"; ".join(grid_rows)}.')
            md += ['', f'![samples, {setting}]({rel(grid_png)})', '', caption]
            page.append(f'<img src="{html.escape(rel(grid_png))}" alt="samples"><p class="note">{html.escape(caption)}</p>')
        if losses_png:
            caption = f'Fine-tuning losses of the rows of {setting} (stats.jsonl, mean per tick).'
            md += ['', f'![losses, {setting}]({rel(losses_png)})', '', caption]
            page.append(f'<img src="{html.escape(rel(losses_png))}" alt="losses"><p class="note">{html.escape(caption)}</p>')
    style = ('body{font-family:sans-serif;max-width:1400px;margin:2em auto;color:#222}table{border-collapse:collapse;'
             'margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:nth-child(-n+3),'
             'th:nth-child(-n+3){text-align:left}img{max-width:100%;border:1px solid #ddd}.note{color:#555;font-size:.9em}')
    text = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{style}</style>'
            f'</head><body>\n' + '\n'.join(page) + '\n</body></html>\n')
    md_path, html_path = os.path.join(outdir, f'table{table}.md'), os.path.join(outdir, f'table{table}.html')
    dnnlib.util.atomic_write_bytes(md_path, ('\n'.join(md) + '\n').encode('utf-8'))
    dnnlib.util.atomic_write_bytes(html_path, text.encode('utf-8'))
    return dict(markdown=md_path, html=html_path, figures=figures)
