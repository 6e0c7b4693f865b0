"""What ``reproduce.py`` runs for a paper table: rows read from the configs' ``paper:`` blocks,
the shared pruning steps, the commands of every stage, the input checks, and row locks.

Nothing here trains or evaluates; it plans and keeps the bookkeeping of a shared output folder:

    <outdir>/students/<method><ratio>-<hash>/   prune.py output, one per (teacher, method, ratio, other
                                                prune options, latents), shared by every row using it
    <outdir>/helpers/<config>/                  train.py runs a pruning step needs first (GAN-Slimming's
                                                sparsity training)
    <outdir>/rows/<config>/                     train.py runs of a row (``00000-...``), its samples.png,
                                                plan.json (what it was started with), done.json (finished)
    <outdir>/locks/<name>.lock                  held (flock) by the job working on that row or step

Rows are found by reading every ``*.yaml`` of the configs folder (``training/config_meta.py``
schema); no list of files is kept here.
"""
import contextlib
import errno
import fcntl
import fnmatch
import glob
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import dnnlib
from training import config_meta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRIC_COLUMNS = (('FID', 'fid'), ('P', 'precision'), ('R', 'recall'), ('D', 'density'), ('C', 'coverage'))
DATASETS = ('ffhq', 'church', 'cat', 'cifar10', 'celeba')
_HELPER_RE = re.compile(r'<([A-Za-z0-9_.-]+) run>')  # prune network "runs/<CONFIG run>/network-snapshot-<last>.pkl"
_SNAPSHOT_RE = re.compile(r'^network-snapshot-(\d{6,})(?:\.(\d{3}))?\.pkl$')
PATH_PRUNE_OPTIONS = ('face-parser', 'network')

# ---------------------------------------------------------------------------------------------
# Configs -> rows.


def _norm_key(key):
    return str(key).replace('_', '-')


def read_config(path):
    """EasyDict(name, config, meta, options) of one YAML file; options keyed by option name with '-'."""
    import yaml
    try:
        with open(path, 'rb') as f:
            raw = f.read()
        data = yaml.safe_load(raw.decode('utf-8'))
    except OSError as e:
        raise dnnlib.util.UserError(f'{path}: cannot read it ({e.strerror or e})') from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise dnnlib.util.UserError(f'{path}: not valid YAML ({str(e).splitlines()[0]})') from None
    if not isinstance(data, dict):
        raise dnnlib.util.UserError(f'{path}: expected a mapping of train.py options')
    options, meta = config_meta.split_config(data, path)
    options = {_norm_key(k): v for k, v in options.items()}
    name = os.path.splitext(os.path.basename(path))[0]
    return dnnlib.EasyDict(name=name, config=os.path.abspath(path), meta=meta, options=options,
                           sha256=hashlib.sha256(raw).hexdigest())


def read_configs(configs_dir):
    """{name: config} of every ``*.yaml`` in ``configs_dir``."""
    if not os.path.isdir(configs_dir):
        raise dnnlib.util.UserError(f'--configs {configs_dir}: no such folder')
    return {c.name: c for c in (read_config(p) for p in sorted(glob.glob(os.path.join(configs_dir, '*.yaml'))))}


def table_rows(configs, table):
    """The configs whose ``paper.table`` is ``table``, in the order of their files."""
    return [c for c in configs.values() if c.meta.get('paper') and c.meta.paper.get('table') == table]


def known_tables(configs):
    return sorted({c.meta.paper.table for c in configs.values() if c.meta.get('paper') and c.meta.paper.get('table')})


def select_rows(rows, patterns=None, dataset=None):
    """Rows whose config name matches one of ``patterns`` (names or fnmatch globs) and whose
    setting starts with ``dataset``; a pattern matching nothing is an error."""
    if patterns:
        picked = []
        for pattern in patterns:
            hits = [r for r in rows if fnmatch.fnmatchcase(r.name, pattern) or r.name == pattern]
            if not hits:
                raise dnnlib.util.UserError(f'--rows: {pattern!r} matches no row of this table '
                                            f'(rows: {", ".join(r.name for r in rows)})')
            picked += [r for r in hits if r not in picked]
        rows = [r for r in rows if r in picked]
    if dataset:
        rows = [r for r in rows if str(r.meta.paper.get('setting') or '').startswith(dataset)]
    return rows

# ---------------------------------------------------------------------------------------------
# Settings -> plan.


def is_url(path):
    return dnnlib.util.is_url(str(path), allow_file_urls=True)


def resolve_path(path):
    """URLs unchanged; local paths absolute (relative ones are relative to the current folder, as in train.py)."""
    if path is None or is_url(path):
        return path
    return os.path.abspath(os.path.expanduser(str(path)))


def family(config):
    """'stylegan' (train.py, prune.py) or 'ddpm' (train_ddpm.py, prune.py ddpm): the config's ``family`` key."""
    return str(config.options.get('family', 'stylegan'))


def scaled_kimg(config, kimg_scale):
    kimg = float(config.options.get('kimg', 25000))
    return float(f'{kimg * kimg_scale:.6g}')


def row_metrics(config, metrics):
    """(all metrics, the curve metric) of a row: ``metrics`` when given, else the config's."""
    if metrics is None:
        value = config.options.get('metrics', 'fid50k_full,prdc50k_full')  # the paper's columns
        metrics = [m.strip() for m in (value if isinstance(value, list) else str(value).split(',')) if m.strip() and m != 'none']
    if not metrics:
        raise dnnlib.util.UserError(f'{config.name}: no metrics to evaluate (give --metrics)')
    curve = next((m for m in metrics if m.startswith('fid')), metrics[0])
    return list(metrics), curve


def _prune_dir_name(method, ratio, identity):
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode('utf-8')).hexdigest()[:8]
    return f'{method}{ratio * 100:g}-{digest}'


def make_plan(configs, rows, outdir, kimg_scale=1.0, metrics=None, n_samples=None):
    """EasyDict(rows, prunes, helpers): every step with its folder and identity. Prune steps are
    keyed by what they compute, so rows that need the same student share one."""
    outdir = os.path.abspath(outdir)
    plan = dnnlib.EasyDict(outdir=outdir, rows=[], prunes={}, helpers={})
    for config in rows:
        all_metrics, curve = row_metrics(config, metrics)
        row = dnnlib.EasyDict(name=config.name, config=config, paper=config.meta.paper, kimg=scaled_kimg(config, kimg_scale),
                              metrics=all_metrics, curve_metric=curve, dir=os.path.join(outdir, 'rows', config.name),
                              teacher=resolve_path(config.options.get('teacher')), data=resolve_path(config.options.get('data')),
                              prune=None, student=resolve_path(config.options.get('student')), family=family(config))
        # A DDPM row without a student evaluates its teacher (the "Pretrained" row); StyleGAN rows always train.
        row.trains = row.family != 'ddpm' or row.student is not None or config.meta.get('prune') is not None
        if row.data is None:
            raise dnnlib.util.UserError(f'{config.config}: no "data" (the dataset of the row)')
        block = config.meta.get('prune')
        if block is not None:
            options = {_norm_key(k): v for k, v in block.items() if k not in ('method', 'ratio')}
            helper = None
            if isinstance(options.get('network'), str) and _HELPER_RE.search(options['network']):
                helper_name = _HELPER_RE.search(options['network']).group(1)
                if helper_name not in configs:
                    raise dnnlib.util.UserError(f'{config.config}: prune: network names the run of {helper_name}, '
                                                f'which is not a config in {os.path.dirname(config.config)}')
                helper = helper_name
                hconf = configs[helper_name]
                plan.helpers.setdefault(helper_name, dnnlib.EasyDict(
                    name=helper_name, config=hconf, kimg=scaled_kimg(hconf, kimg_scale),
                    dir=os.path.join(outdir, 'helpers', helper_name), teacher=resolve_path(hconf.options.get('teacher')),
                    data=resolve_path(hconf.options.get('data'))))
                options.pop('network')
            for key in PATH_PRUNE_OPTIONS:
                if key in options:
                    options[key] = resolve_path(options[key])
            network = f'helper:{helper}' if helper else options.pop('network', None) or row.teacher
            if row.family == 'ddpm':
                options.setdefault('data', row.data)  # Diff-Prune's Taylor importance reads training images
            identity = dict(network=network, method=block.method, ratio=block.ratio, options=options,
                            n_samples=None if row.family == 'ddpm' else n_samples,
                            helper_kimg=plan.helpers[helper].kimg if helper else None, family=row.family)
            key = _prune_dir_name(block.method, block.ratio, identity)
            step = plan.prunes.setdefault(key, dnnlib.EasyDict(
                key=key, dir=os.path.join(outdir, 'students', key), network=network, helper=helper, method=block.method,
                ratio=block.ratio, options=options, n_samples=identity['n_samples'], identity=identity, rows=[],
                family=row.family))
            step.rows.append(row.name)
            row.prune = key
            row.student = os.path.join(step.dir, 'student' if row.family == 'ddpm' else 'student.pkl')
        plan.rows.append(row)
    return plan


def row_identity(row, plan):
    """What a row's numbers depend on; a rerun with other values must not mix into the same folder."""
    return dict(config=row.config.config, config_sha256=row.config.sha256, kimg=row.kimg if row.trains else None,
                metrics=row.metrics,
                prune=row.prune and plan.prunes[row.prune].identity, student=None if row.prune else row.student)

# ---------------------------------------------------------------------------------------------
# Commands (argument lists; ``python`` is the running interpreter).


def _device_args(settings, train=False):
    args = []
    if settings.get('gpus') is not None:
        args += ['--gpus', str(settings.gpus)]
    if settings.get('device') is not None:
        args += ['--device', settings.device]
    if train and settings.get('snap') is not None:
        args += ['--snap', str(settings.snap)]
    return args


def train_command(step, settings, student=None, metrics=None, resume_run=None):
    """train.py (train_ddpm.py for DDPM rows) for a row or helper: a new run in its folder from its
    config, or ``--resume latest`` of the run ``resume_run``. DDPM training evaluates no metrics."""
    ddpm = family(step.config) == 'ddpm'
    cmd = [sys.executable, os.path.join(ROOT, 'train_ddpm.py' if ddpm else 'train.py')]
    if resume_run is not None:
        cmd += ['--outdir', resume_run, '--resume', 'latest']
    else:
        cmd += ['--outdir', step.dir, '--config', step.config.config]
        if student is not None:
            cmd += ['--network' if ddpm else '--student', student]
    cmd += ['--kimg', f'{step.kimg:g}']
    if not ddpm:
        cmd += ['--metrics', ','.join(metrics) if metrics else 'none']
    return cmd + _device_args(settings, train=True)


def prune_command(step, network, settings):
    """prune.py (``prune.py ddpm`` for Diff-Prune, whose method is implied) with the prune: block's options."""
    ddpm = step.family == 'ddpm'
    cmd = [sys.executable, os.path.join(ROOT, 'prune.py')] + (['ddpm', '--network', network] if ddpm else
                                                             ['--network', network, '--method', step.method])
    cmd += ['--ratio', f'{step.ratio:g}']
    for key, value in step.options.items():
        if isinstance(value, bool):  # flags; DDPM's are --x/--no-x pairs
            cmd += [f'--{key}'] if value else ([f'--no-{key}'] if ddpm else [])
        else:
            cmd += [f'--{key}', str(value)]
    if step.n_samples is not None:
        cmd += ['--n-samples', str(step.n_samples)]
    if settings.get('device') is not None and not ddpm:
        cmd += ['--device', settings.device]
    return cmd + ['--outdir', step.dir, '--overwrite']


def ddim_options(config):
    """DDIM sampling of a DDPM row (its config's sample-steps and skip-type), or None for StyleGAN rows."""
    if family(config) != 'ddpm':
        return None
    return dict(steps=int(config.options.get('sample-steps', 100)), skip_type=str(config.options.get('skip-type', 'uniform')))


def metrics_command(snapshot, metrics, data, settings, config=None, run_dir=None):
    cmd = [sys.executable, os.path.join(ROOT, 'calc_metrics.py'), '--network', snapshot, '--metrics', ','.join(metrics),
           '--data', data]
    ddim = ddim_options(config) if config is not None else None
    if ddim:
        cmd += ['--ddim-steps', str(ddim['steps']), '--skip-type', ddim['skip_type']]
    if run_dir is not None:
        cmd += ['--run-dir', run_dir]
    if settings.get('detector_dir'):
        cmd += ['--detector-dir', settings.detector_dir]
    return cmd + _device_args(settings)


def format_command(cmd):
    import shlex
    args = list(cmd)
    if args and args[0] == sys.executable:
        args[0] = 'python'
    if len(args) > 1 and args[1].startswith(ROOT + os.sep):
        args[1] = os.path.relpath(args[1], ROOT)
    return ' '.join(shlex.quote(a) for a in args)


def run_command(cmd):
    """Run ``cmd`` (output shown as it comes); UserError with its last ``error:`` line when it fails."""
    print(f'$ {format_command(cmd)}', flush=True)
    last_error = None
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors='replace') as proc:
        for line in proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.startswith('error: '):
                last_error = line[len('error: '):].strip()
    if proc.returncode != 0:
        name = os.path.basename(cmd[1]) if len(cmd) > 1 else cmd[0]
        raise dnnlib.util.UserError(f'{name} exited with status {proc.returncode}' + (f': {last_error}' if last_error else ''))

# ---------------------------------------------------------------------------------------------
# Inputs.


def input_problem(path):
    """None when ``path`` can be had, else why not (a short phrase)."""
    if path is None:
        return 'not given'
    if str(path).startswith('file://'):
        path = urllib.request.url2pathname(urllib.parse.urlparse(str(path)).path)
    elif is_url(path):
        cached = os.path.join(dnnlib.util.make_cache_dir_path('downloads'), dnnlib.util.url_cache_name(path))
        if os.path.isfile(cached) or os.environ.get('SVS_OFFLINE') != '1':
            return None
        return f'not in the download cache ({cached}) and SVS_OFFLINE=1'
    return None if os.path.exists(path) else 'no such file'


def step_inputs(config, teacher=True):
    """(what, path) of the files one train.py config reads."""
    o = config.options
    out = [('dataset', resolve_path(o.get('data')))]
    if teacher and o.get('teacher') is not None:
        out.append(('teacher', resolve_path(o['teacher'])))
    if o.get('mask') == 'face' or o.get('face-parser') is not None:
        out.append(('face-parser', resolve_path(o.get('face-parser'))))
    for key in ('lpips-vgg', 'lpips-lin', 'resume'):
        if o.get(key) is not None and o[key] != 'latest':
            out.append((key, resolve_path(o[key])))
    return out


def check_inputs(plan):
    """Every (step, what, path) the plan reads and whether it is there: list of (step, what, path, problem)."""
    items = []
    for helper in plan.helpers.values():
        items += [(helper.name, what, path) for what, path in step_inputs(helper.config)]
    for step in plan.prunes.values():
        if not step.helper:
            items.append((f'prune {step.key}', 'teacher', step.network))
        for key in PATH_PRUNE_OPTIONS:
            if key in step.options:
                items.append((f'prune {step.key}', key, step.options[key]))
    for row in plan.rows:
        items += [(row.name, what, path) for what, path in step_inputs(row.config)]
        if row.prune is None and row.trains and row.student is not None:
            items.append((row.name, 'student', row.student))
    seen, out = set(), []
    for name, what, path in items:
        if (what, path) in seen and path is not None:
            continue
        seen.add((what, path))
        out.append((name, what, path, input_problem(path)))
    return out


def first_missing(checked):
    """The one-line message for the first missing input, or None."""
    for name, what, path, problem in checked:
        if problem is not None:
            return f'{name}: {what} {path}: {problem}'
    return None

# ---------------------------------------------------------------------------------------------
# Runs, snapshots and markers.


def snapshot_nimg(path):
    m = _SNAPSHOT_RE.match(os.path.basename(path))
    return None if m is None else int(m.group(1)) * 1000 + (int(m.group(2)) if m.group(2) else 0)


def snapshots(run_dir):
    """Every ``network-snapshot-*.pkl`` of a run, oldest first."""
    names = [n for n in os.listdir(run_dir) if _SNAPSHOT_RE.match(n)] if os.path.isdir(run_dir) else []
    return [os.path.join(run_dir, n) for n in sorted(names, key=lambda n: snapshot_nimg(n))]


def latest_run(outdir):
    """The highest-numbered ``<id>-<desc>`` run in ``outdir`` with a resumable snapshot, or None."""
    from training import training_loop
    best = None
    for entry in (os.listdir(outdir) if os.path.isdir(outdir) else []):
        m = re.match(r'^(\d+)-', entry)
        path = os.path.join(outdir, entry)
        if m and os.path.isfile(os.path.join(path, 'training_options.json')) and training_loop.find_latest_snapshot(path):
            if best is None or int(m.group(1)) > best[0]:
                best = (int(m.group(1)), path)
    return None if best is None else best[1]


def read_json(path):
    try:
        with open(path, 'rt', encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise dnnlib.util.UserError(f'{path}: cannot read it ({e})') from None


def write_json(path, obj):
    dnnlib.util.atomic_write_bytes(path, (json.dumps(obj, indent=2) + '\n').encode('utf-8'))


def check_marker(folder, identity, what):
    """Record ``identity`` in ``folder/plan.json``, or check that it matches what is recorded there."""
    path = os.path.join(folder, 'plan.json')
    if os.path.isfile(path):
        recorded = read_json(path).get('identity')
        if recorded != json.loads(json.dumps(identity)):
            changed = sorted(k for k in set(identity) | set(recorded or {}) if (recorded or {}).get(k) != identity.get(k))
            raise dnnlib.util.UserError(f'{folder}: {what} was started with other settings ({", ".join(changed)}); '
                                        f'give another --outdir, or delete that folder')
    else:
        write_json(path, dict(identity=identity, started=time.strftime('%Y-%m-%d %H:%M:%S')))


def check_recorded(plan):
    """Refuse, before any work, an output folder whose rows were started with other settings."""
    for row in plan.rows:
        path = os.path.join(row.dir, 'plan.json')
        if os.path.isfile(path):
            recorded = read_json(path).get('identity') or {}
            identity = json.loads(json.dumps(row_identity(row, plan)))
            if recorded != identity:
                changed = sorted(k for k in set(identity) | set(recorded) if recorded.get(k) != identity.get(k))
                raise dnnlib.util.UserError(f'{row.dir}: row {row.name} was started with other settings ({", ".join(changed)}); '
                                            f'give another --outdir, or delete that folder')


def row_done(row, plan):
    """The row's done.json when it finished with this plan's settings, else None."""
    done = read_done(row.dir)
    if done is None or done.get('identity') != json.loads(json.dumps(row_identity(row, plan))):
        return None
    return done


def read_done(folder):
    path = os.path.join(folder, 'done.json')
    return read_json(path) if os.path.isfile(path) else None


def metric_records(run_dir, metric):
    """{snapshot file name: results} of ``metric-<metric>.jsonl`` in ``run_dir`` (the last line per snapshot)."""
    path = os.path.join(run_dir, f'metric-{metric}.jsonl')
    out = {}
    if os.path.isfile(path):
        with open(path, 'rt', encoding='utf-8') as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a killed job; its metric is computed again
                if isinstance(record, dict) and record.get('snapshot_pkl') and isinstance(record.get('results'), dict):
                    out[os.path.basename(record['snapshot_pkl'])] = record['results']
    return out

# ---------------------------------------------------------------------------------------------
# Locks: one job per row or step, across nodes sharing the output folder.


@contextlib.contextmanager
def step_lock(outdir, name, wait=False, poll_sec=10):
    """Yield True while holding ``<outdir>/locks/<name>.lock`` (flock: released when the process
    ends, even by SIGKILL), or False when another job holds it and ``wait`` is off."""
    folder = os.path.join(outdir, 'locks')
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'{name}.lock')
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 200, 0).decode('utf-8', 'replace').strip() or 'another job'
                if not wait:
                    print(f'{name}: taken by {holder}; left to that job', flush=True)
                    yield False
                    return
                if not told:
                    print(f'{name}: waiting for {holder}', flush=True)
                    told = True
                time.sleep(poll_sec)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{socket.gethostname()} pid {os.getpid()} since {time.strftime("%Y-%m-%d %H:%M:%S")}'.encode(), 0)
        try:
            yield True
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
