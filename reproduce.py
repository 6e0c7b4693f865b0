"""Reproduce a table of the paper: every row from configs/, then table<N>.md/.html beside the paper's numbers.

\b
    python reproduce.py --table 1 --dry-run              # the rows, their commands, the inputs checked
    python reproduce.py --table 1 --gpus 4               # the paper's setting (weeks on a 4-GPU node)
    python reproduce.py --table 1 --dataset ffhq --rows 'table1-ffhq256-small-dcp*' \\
        --kimg-scale 0.02 --metrics fid10k_full,prdc10k_full --gpus 1      # a scaled run: hours on one GPU

Rows are the configs whose paper: block names the table (configs/README.md). For each row, in
its own folder of --outdir: the student is pruned by prune.py from the config's prune: block --
once per (teacher, method, ratio, other prune options), shared by the rows that use it (a DCP-GAN
row and its "+ SVS" row start from the same pruned weights) -- then train.py --config fine-tunes it
with the row's metric curve (FID) evaluated at every snapshot, and calc_metrics.py adds the other
metrics of the last snapshot. The report table<N>.md / table<N>.html sets the paper's FID/P/R/D/C
beside ours with the differences and links to each row's run folder, and per setting draws the
rows' FID-vs-kimg curves on one plot and a same-seed sample grid across the rows.

\b
Resuming: run the same command again. Finished rows are skipped, a half-finished one continues
from its last snapshot (train.py --resume latest), finished pruning is reused.
Several nodes: start the same command on each with one shared --outdir; a row is taken by one
job at a time (<outdir>/locks/<row>.lock, released when the job ends, even when killed), the
others move on to the next row. Every job rewrites the report with the rows finished so far.

\b
Scale: --kimg-scale trains every row to the same fraction of its length, --metrics replaces the
configs' fid50k_full,prdc50k_full (e.g. fid10k_full,prdc10k_full), --n-samples sets the pruning
latents (DCP: 5000); the report's title names the scale whenever it is not the paper's.
Inputs (teachers, datasets, the face parser, a helper's files) are checked before any work: a
missing one stops everything with one line naming it. Relative paths in the configs are relative
to the current folder, as with train.py --config.
"""
import json
import os
import shlex
import sys
import time

import click

import dnnlib
import dnnlib.cli
from training import reproduce_plan as rp

ROOT = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------------------------


def print_plan(plan, settings, checked):
    """Every row with the paper's numbers, its resolved recipe and commands; then the inputs."""
    for i, row in enumerate(plan.rows, 1):
        paper = ', '.join(f'{title} {row.paper.get(key):g}' if row.paper.get(key) is not None else f'{title} —'
                          for title, key in rp.METRIC_COLUMNS)
        print(f'\n[{i}/{len(plan.rows)}] {row.name}: "{row.paper.row}" ({row.paper.get("setting")})')
        print(f'  paper: {paper}')
        recipe = dict(row.config.options, metrics=','.join(row.metrics))
        if row.trains:
            recipe.update(kimg=f'{row.kimg:g}', student=row.student)
        for key in ('gpus', 'device', 'snap'):
            if settings.get(key) is not None:
                recipe[key] = settings[key]
        print('  recipe: ' + ', '.join(f'{k}={v}' for k, v in recipe.items()))
        if row.prune:
            step = plan.prunes[row.prune]
            shared = [n for n in step.rows if n != row.name]
            if step.helper:
                helper = plan.helpers[step.helper]
                print(f'  helper: {rp.format_command(rp.train_command(helper, settings))}')
                network = os.path.join(helper.dir, '<run>', 'network-snapshot-<last>.pkl')
            else:
                network = step.network
            print(f'  prune: {rp.format_command(rp.prune_command(step, network, settings))}'
                  + (f'  (shared with {", ".join(shared)})' if shared else ''))
        if not row.trains:
            print(f'  evaluate: {rp.format_command(rp.metrics_command(row.teacher, row.metrics, row.data, settings, row.config, os.path.join(row.dir, "eval")))}'
                  '  (the teacher itself: no training)')
            continue
        print(f'  train: {rp.format_command(rp.train_command(row, settings, student=row.student, metrics=[row.curve_metric]))}')
        final = os.path.join(row.dir, '<run>', 'network-snapshot-<last>.pkl')
        if row.family == 'ddpm':  # train_ddpm.py evaluates nothing: every snapshot gets the curve metric
            print(f'  evaluate: {rp.format_command(rp.metrics_command(final, row.metrics, row.data, settings, row.config))}'
                  f'  (and {row.curve_metric} of every earlier snapshot)')
            continue
        rest = [m for m in row.metrics if m != row.curve_metric]
        if rest:
            print(f'  evaluate: {rp.format_command(rp.metrics_command(final, rest, row.data, settings, row.config))}')
    print('\nInputs:')
    for name, what, path, problem in checked:
        print(f'  {"ok     " if problem is None else "MISSING"} {what:<12s} {path}' + (f'  ({problem})' if problem else '')
              + ('  (downloads on first use)' if problem is None and rp.is_url(path) and not str(path).startswith('file://')
                 and rp.input_problem(path) is None and not _cached(path) else ''))


def _cached(url):
    return os.path.isfile(os.path.join(dnnlib.util.make_cache_dir_path('downloads'), dnnlib.util.url_cache_name(url)))


class Runner:
    """Runs the steps of a plan in its output folder; every step is skipped when already done."""

    def __init__(self, plan, settings):
        self.plan, self.s = plan, settings

    def train(self, step, student=None, metrics=None):
        """Train (or resume, or find finished) the run of a row or helper; returns its final snapshot."""
        from training import training_loop
        target = round(step.kimg * 1000)
        run = rp.latest_run(step.dir)
        if run is not None:
            nimg = rp.snapshot_nimg(training_loop.find_latest_snapshot(run))
            if nimg < target:
                print(f'resuming {os.path.relpath(run, self.plan.outdir)} at {nimg / 1000:g} of {step.kimg:g} kimg', flush=True)
                rp.run_command(rp.train_command(step, self.s, metrics=metrics, resume_run=run))
        else:
            rp.run_command(rp.train_command(step, self.s, student=student, metrics=metrics))
        run = rp.latest_run(step.dir)
        final = None if run is None else training_loop.find_latest_snapshot(run)
        if final is None or rp.snapshot_nimg(final) < target:
            raise dnnlib.util.UserError(f'{step.dir}: train.py ended before {step.kimg:g} kimg')
        return final

    def helper(self, name):
        helper = self.plan.helpers[name]
        with rp.step_lock(self.plan.outdir, f'helper-{name}', wait=True):
            done = rp.read_done(helper.dir)
            if done is None:
                print(f'\n=== helper {name}: "{helper.config.meta.paper.row}" ===', flush=True)
                os.makedirs(helper.dir, exist_ok=True)
                rp.check_marker(helper.dir, dict(config=helper.config.config, config_sha256=helper.config.sha256,
                                                 kimg=helper.kimg), f'helper {name}')
                final = self.train(helper)
                done = dict(snapshot=os.path.relpath(final, helper.dir))
                rp.write_json(os.path.join(helper.dir, 'done.json'), done)
            return os.path.join(helper.dir, done['snapshot'])

    def prune(self, key):
        step = self.plan.prunes[key]
        with rp.step_lock(self.plan.outdir, f'prune-{key}', wait=True):
            done = rp.read_done(step.dir)
            if done is not None:
                print(f'pruning {key}: finished earlier, reused', flush=True)
                return
            network = self.helper(step.helper) if step.helper else step.network
            print(f'pruning {key} (for {", ".join(step.rows)})', flush=True)
            os.makedirs(step.dir, exist_ok=True)
            rp.check_marker(step.dir, step.identity, f'pruning {key}')
            t0 = time.time()
            rp.run_command(rp.prune_command(step, network, self.s))
            rp.write_json(os.path.join(step.dir, 'done.json'), dict(network=network, seconds=time.time() - t0))

    def evaluate(self, row, final, eval_dir=None):
        """The row's metrics on its last snapshot (or its teacher, recorded in ``eval_dir``), and its
        curve metric on every snapshot (filling in points a killed job missed); returns (results, curve)."""
        run = eval_dir or os.path.dirname(final)
        snaps = [s for s in rp.snapshots(run) if rp.snapshot_nimg(s) <= rp.snapshot_nimg(final)] if eval_dir is None else [final]
        records = {m: rp.metric_records(run, m) for m in row.metrics}
        missing = [m for m in row.metrics if os.path.basename(final) not in records[m]]
        if missing:
            rp.run_command(rp.metrics_command(final, missing, row.data, self.s, row.config, eval_dir))
        for snap in snaps:
            if snap != final and os.path.basename(snap) not in records[row.curve_metric]:
                rp.run_command(rp.metrics_command(snap, [row.curve_metric], row.data, self.s, row.config))
        records = {m: rp.metric_records(run, m) for m in row.metrics}
        results = {}
        for m in row.metrics:
            if os.path.basename(final) not in records[m]:
                raise dnnlib.util.UserError(f'{run}: calc_metrics.py wrote no {m} for {os.path.basename(final)}')
            results.update(records[m][os.path.basename(final)])
        curve = dict(kimg=[], values=[])
        for snap in snaps:
            r = records[row.curve_metric].get(os.path.basename(snap))
            if r is not None and rp.snapshot_nimg(snap) is not None:
                value = r.get(row.curve_metric, next(iter(r.values()), None))
                curve['kimg'].append(rp.snapshot_nimg(snap) / 1000)
                curve['values'].append(value)
        return results, curve

    def row(self, index, row):
        """Run one row unless it is done or another job has it; returns its done.json or None."""
        identity = rp.row_identity(row, self.plan)
        done = rp.read_done(row.dir)
        if done is None:
            with rp.step_lock(self.plan.outdir, row.name) as mine:
                if not mine:
                    return None
                done = rp.read_done(row.dir)
                if done is None:
                    print(f'\n=== [{index}/{len(self.plan.rows)}] {row.name}: "{row.paper.row}" ===', flush=True)
                    os.makedirs(row.dir, exist_ok=True)
                    rp.check_marker(row.dir, identity, f'row {row.name}')
                    t0 = time.time()
                    eval_dir = None
                    if row.trains:
                        if row.prune:
                            self.prune(row.prune)
                        final = self.train(row, student=row.student, metrics=[row.curve_metric])
                    else:  # a row of the teacher itself
                        final, eval_dir = row.teacher, os.path.join(row.dir, 'eval')
                        os.makedirs(eval_dir, exist_ok=True)
                    results, curve = self.evaluate(row, final, eval_dir)
                    from training import table_report
                    strip = table_report.sample_strip(final, device=self.device(), ddim=rp.ddim_options(row.config))
                    table_report.save_strip(strip, os.path.join(row.dir, 'samples.png'))
                    run_dir = eval_dir or os.path.dirname(final)
                    done = dict(identity=identity, run_dir=os.path.relpath(run_dir, row.dir),
                                snapshot=final if eval_dir else os.path.relpath(final, row.dir),
                                kimg=rp.snapshot_nimg(final) / 1000 if row.trains else 0,
                                results=results, curve_metric=row.curve_metric, curve=curve, samples_png='samples.png',
                                seeds=list(table_report.GRID_SEEDS), seconds=time.time() - t0,
                                finished=time.strftime('%Y-%m-%d %H:%M:%S'))
                    rp.write_json(os.path.join(row.dir, 'done.json'), done)
                    print(f'{row.name}: ' + ', '.join(f'{k} {v:.4g}' for k, v in results.items() if isinstance(v, float)), flush=True)
                    return done
        if done.get('identity') != json.loads(json.dumps(identity)):
            raise dnnlib.util.UserError(f'{row.dir}: finished with other settings; give another --outdir, or delete that folder')
        print(f'[{index}/{len(self.plan.rows)}] {row.name}: finished earlier, skipped', flush=True)
        return done

    def device(self):
        if self.s.get('device') not in (None, 'auto'):
            return self.s.device
        import torch
        return 'cuda' if torch.cuda.is_available() else 'cpu'

    def teacher_strips(self, table, states):
        """Same-seed images of each setting's teacher (the first row's), cached as PNGs."""
        from training import table_report
        strips = {}
        for row in self.plan.rows:
            setting = row.paper.get('setting') or row.name
            if setting in strips or not states[row.name] or row.teacher is None:
                continue
            safe = ''.join(ch if ch.isalnum() or ch in '-_.' else '_' for ch in setting)
            path = os.path.join(self.plan.outdir, f'table{table}', f'teacher-{safe}.png')
            if not os.path.isfile(path):
                strip = table_report.sample_strip(row.teacher, device=self.device(), ddim=rp.ddim_options(row.config))
                table_report.save_strip(strip, path)
            strips[setting] = table_report.read_strip(path, len(table_report.GRID_SEEDS))
        return strips


def _split(value):
    return [v.strip() for v in value.split(',') if v.strip()] if value else None


@click.command(help=__doc__, context_settings=dict(max_content_width=120))
@click.option('--table', type=click.IntRange(min=1), required=True, help='Paper table (1, 2, 4, 5, 6, 7, 8; 3 with the DDPM configs)')
@click.option('--rows', metavar='NAMES', help='Comma-separated config names or globs of the rows to run [default: all of the table]')
@click.option('--dataset', type=click.Choice(rp.DATASETS), help='Only the rows of this dataset (the setting\'s prefix)')
@click.option('--configs', 'configs_dir', metavar='DIR', default=os.path.join(ROOT, 'configs'), show_default='configs/ of this checkout', help='Folder of the row configs')
@click.option('--outdir', metavar='DIR', help='Shared output folder (rerun the same command to resume) [default: runs/table<N>]')
@click.option('--gpus', type=click.IntRange(min=1), help='GPUs per job for train.py / calc_metrics.py [default: the configs\' (4)]')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), help='Device of every stage [default: each CLI\'s]')
@click.option('--kimg-scale', type=dnnlib.cli.FiniteFloat(min=0, min_open=True), default=1.0, show_default=True, help='Train every row to this fraction of its kimg')
@click.option('--n-samples', type=click.IntRange(min=1), help='Latents of the pruning scores (prune.py --n-samples) [default: the method\'s; DCP 5000]')
@click.option('--metrics', metavar='A,B', help='Metrics of every row, the first FID one also as the curve [default: the configs\' fid50k_full,prdc50k_full]')
@click.option('--snap', type=click.IntRange(min=1), help='Snapshot (and curve point) interval in ticks [default: the configs\']')
@click.option('--detector-dir', metavar='DIR', help='Folder with inception-2015-12-05.pt for calc_metrics.py on offline machines')
@click.option('--dry-run', '-n', is_flag=True, help='Print the rows, their recipes and commands, check the inputs, run nothing')
@dnnlib.util.exit_on_user_error
def main(table, rows, dataset, configs_dir, outdir, gpus, device, kimg_scale, n_samples, metrics, snap, detector_dir, dry_run):
    configs = rp.read_configs(configs_dir)
    all_rows = rp.table_rows(configs, table)
    if not all_rows:
        tables = ', '.join(str(t) for t in rp.known_tables(configs)) or 'none'
        raise dnnlib.util.UserError(f'--table {table}: no config in {configs_dir} has paper: table: {table} (tables there: {tables})')
    selected = rp.select_rows(all_rows, _split(rows), dataset)
    if not selected:
        raise dnnlib.util.UserError(f'--dataset {dataset}: no row of table {table} is on that dataset')
    metrics = _split(metrics)
    if metrics is not None:
        from metrics import metric_main
        for m in metrics:
            if not metric_main.is_valid_metric(m):
                raise dnnlib.util.UserError(f'--metrics: unknown metric {m!r}; valid: {", ".join(metric_main.list_valid_metrics())}')
    if detector_dir is not None and not os.path.isdir(detector_dir):
        raise dnnlib.util.UserError(f'--detector-dir {detector_dir}: no such folder')
    outdir = outdir or os.path.join('runs', f'table{table}')
    settings = dnnlib.EasyDict(gpus=gpus, device=device, snap=snap, kimg_scale=kimg_scale, metrics=metrics,
                               n_samples=n_samples, detector_dir=detector_dir and os.path.abspath(detector_dir))
    plan = rp.make_plan(configs, selected, outdir, kimg_scale=kimg_scale, metrics=metrics, n_samples=n_samples)
    from training import table_report
    print(f'{table_report.scale_title(table, settings)}: {len(plan.rows)} rows, {len(plan.prunes)} pruning runs'
          + (f', {len(plan.helpers)} helper runs' if plan.helpers else '') + f', output in {plan.outdir}')
    checked = rp.check_inputs(plan)
    print_plan(plan, settings, checked)
    missing = rp.first_missing(checked)
    if missing:
        raise dnnlib.util.UserError(missing)
    if dry_run:
        print('\nDry run: every input is there; nothing was run.')
        return

    rp.check_recorded(plan)
    os.makedirs(plan.outdir, exist_ok=True)
    runner = Runner(plan, settings)
    command = ' '.join(['python', 'reproduce.py'] + [shlex.quote(a) for a in sys.argv[1:]])
    failure = None
    for i, row in enumerate(plan.rows, 1):
        try:
            runner.row(i, row)
        except dnnlib.util.UserError as e:
            failure = f'{row.name}: {e} -- finished rows are kept in {plan.outdir}; resume with: {command}'
            break
    # The report of what is finished so far, also after a failure (the failure is the last line).
    states = {r.name: rp.row_done(r, plan) for r in plan.rows}
    paths = table_report.write_report(plan, table, settings, states, command, runner.teacher_strips(table, states))
    left = [r.name for r in plan.rows if not states[r.name]]
    print(f'\nReport: {paths["html"]} ({len(plan.rows) - len(left)} of {len(plan.rows)} rows finished)', flush=True)
    if failure:
        raise dnnlib.util.UserError(failure)
    if left:
        print(f'Not finished here (taken by other jobs): {", ".join(left)}; rerun the command when they are done '
              f'to complete the report', flush=True)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
