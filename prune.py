"""Prune a StyleGAN2/3 teacher into a smaller student, optionally with Singular Value Scaling.

Scores every channel of the teacher's G_ema with a scorer (dcp, cagan, gs, random, l1), keeps
per layer the best C - floor(p*C) channels (StyleGAN2; StyleGAN3: max(floor((1-p)*C), 3)),
slices the student (same Generator class, smaller widths; toRGB weights plain slices as in the
official code, ``--torgb-compensation`` rescales them, ours) and writes to --outdir:

  student.pkl    snapshot: G = G_ema = student, D = the teacher's D (if any), training_set_kwargs
                 of the teacher, and a 'pruning' entry (method, ratio, masks, widths, SVS)
  pruning.json   method, settings, masks (kept indices), scores, widths, params and FLOPs of
                 teacher and student, SVS function and spectra, versions
  spectra.png    singular-value densities of the student's weights (before/after SVS)

Examples:
    # The paper's DCP pruning of a 256 px base teacher at 70 %, no SVS yet.
    python prune.py --network teacher.pkl --method dcp --ratio 0.7 --outdir runs/dcp70

    # CAGAN with the face-parsing content mask, then SVS (sqrt) on the pruned weights.
    python prune.py --network ffhq.pkl --method cagan --mask face \\
        --face-parser 79999_iter.pth --ratio 0.7 --svs sqrt --outdir runs/cagan70

    # SVS on an existing student (the paper compares the same pruned weights with and without).
    python prune.py svs --network runs/dcp70/student.pkl --fn sqrt --outdir runs/dcp70-svs

Several GPUs: torchrun --nproc_per_node=4 prune.py ... (batches are split, scores all-reduced).
"""
import json
import os
import platform
import subprocess
import time

import click
import numpy as np
import torch

import dnnlib
import dnnlib.cli
import svs
from pruning import channels, diffprune, flops, scorers
from svs import spectra

SVS_CHOICES = ('none',) + tuple(svs.FUNCTIONS)
METHOD_DEFAULTS = dict(dcp=dict(n_samples=5000, batch=5), cagan=dict(n_samples=400, batch=8),
                       gs=dict(n_samples=400, batch=8), random={}, l1={})
OUTPUT_FILES = ('student.pkl', 'pruning.json', 'spectra.png')

# ---------------------------------------------------------------------------------------------
# Helpers.


def versions():
    info = dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__)
    try:
        root = os.path.dirname(os.path.abspath(__file__))
        info['git_commit'] = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info['git_commit'] = None
    return info


def check_outdir(outdir, names, overwrite):
    dnnlib.cli.check_output_dir(outdir, '--outdir')  # writable, before the expensive part
    existing = [n for n in names if os.path.exists(os.path.join(outdir, n))]
    if existing and not overwrite:
        raise dnnlib.util.UserError(f'--outdir: {os.path.join(outdir, existing[0])} exists (use --overwrite or another folder)')


def write_json(path, obj):
    text = json.dumps(dnnlib.util.strict_json(obj), indent=2, allow_nan=False)  # NaN -> null: strict parsers read it
    dnnlib.util.atomic_write_bytes(path, (text + '\n').encode('utf-8'))


def setup_distributed():
    """Join a torchrun job (WORLD_SIZE > 1); returns the device of this process or None."""
    if int(os.environ.get('WORLD_SIZE', '1')) <= 1:
        return None
    if not torch.distributed.is_initialized():
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
        torch.distributed.init_process_group(backend=backend)
    if torch.cuda.is_available():
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        torch.cuda.set_device(local_rank)
        return torch.device('cuda', local_rank)
    return torch.device('cpu')


def set_tf32(allow):
    torch.backends.cuda.matmul.allow_tf32 = bool(allow)
    torch.backends.cudnn.allow_tf32 = bool(allow)


def apply_svs(G, fn, include=None, exclude=None):
    """SVS on G (None/'none' = only measure the spectra). Returns the report."""
    if fn is None or fn == 'none':
        return spectra.weight_spectra(G, include=include, exclude=exclude)
    return svs.scale_(G, fn=fn, include=include, exclude=exclude)


def split_patterns(text):
    return [p.strip() for p in text.split(',') if p.strip()] if text else None


def print_stats(teacher, student):
    t, s = teacher, student
    print(f'params: teacher {t["params"]:,} ({flops.format_count(t["params"])}) -> student {s["params"]:,} '
          f'({flops.format_count(s["params"])}), {s["params"] / t["params"]:.1%}')
    print(f'FLOPs (MACs): teacher {t["macs"]:,} ({flops.format_count(t["macs"])}) -> student {s["macs"]:,} '
          f'({flops.format_count(s["macs"])}), {t["macs"] / s["macs"]:.1f}x fewer')

# ---------------------------------------------------------------------------------------------
# The two jobs, callable from Python.


def prune(network, outdir, method='dcp', ratio=0.7, mask='uniform', face_parser=None, svs_fn='none',
          svs_include=None, svs_exclude=None, n_samples=None, batch=None, seed=0, global_ranking=False,
          alpha=10.0, n_directions=10, pca_samples=10000, grad_through_perturbed=False, noise_mode='random',
          noise_prob=0.05, truncation_psi=1.0, compensate_torgb=False, device=None, allow_tf32=False,
          allow_code=False, overwrite=False, progress=True):
    """Score, select, slice, (SVS), and write the outputs; returns the pruning.json dict."""
    from training.checkpoints import load_network, save_snapshot

    # Everything that can be checked before the expensive part is checked first.
    scorers.get_scorer(method)
    channels.check_ratio(ratio)
    if svs_fn != 'none':
        svs_fn = svs.parse_fn(svs_fn)[0]
    if mask != 'uniform' and method != 'cagan':
        raise dnnlib.util.UserError(f'--mask {mask}: only the cagan scorer uses a content mask')
    check_outdir(outdir, OUTPUT_FILES, overwrite)
    defaults = METHOD_DEFAULTS[method]
    n_samples = defaults.get('n_samples') if n_samples is None else n_samples
    batch = defaults.get('batch') if batch is None else batch

    dist_device = setup_distributed()
    device = dnnlib.cli.check_device(device) if device is not None else (dist_device or scorers.default_device())
    rank, world = scorers.dist_info()
    set_tf32(allow_tf32)
    parser = None
    if method == 'cagan':
        from pruning.cagan import load_parser
        parser = load_parser(mask, face_parser, None, device)

    data = load_network(network, allow_code=allow_code, device='cpu')
    if data.training_set_kwargs is not None:  # copied into student.pkl: must name one of our datasets
        dnnlib.util.check_dataset_kwargs(data.training_set_kwargs, f'{network}: training_set_kwargs')
    teacher = data.G_ema
    family = channels.generator_family(teacher)
    groups = channels.channel_groups(teacher)

    settings = dict(seed=seed, device=str(device), world_size=world, allow_tf32=bool(allow_tf32))
    if method in ('dcp', 'cagan', 'gs'):
        settings.update(n_samples=n_samples, batch=batch)
    if method == 'dcp':
        settings.update(alpha=alpha, n_directions=n_directions, pca_samples=pca_samples,
                        grad_through_perturbed=bool(grad_through_perturbed), noise_mode=noise_mode,
                        truncation_psi=truncation_psi)
    if method == 'cagan':
        settings.update(mask=mask, face_parser=face_parser, noise_prob=noise_prob)

    print(f'Scoring {sum(g.size for g in groups)} channels in {len(groups)} groups of {network} with {method} on {device}'
          + (f' ({world} processes)' if world > 1 else ''))
    start = time.time()
    scores = scorers.score(teacher, method, device=device, progress=progress, parser=parser,
                           **{k: v for k, v in settings.items() if k not in ('device', 'world_size', 'allow_tf32', 'face_parser')})
    score_seconds = time.time() - start
    masks = channels.select_masks(scores, ratio, family, global_ranking=global_ranking)
    student = channels.slice_generator(teacher, masks, compensate_torgb=compensate_torgb)
    teacher_stats, student_stats = flops.generator_stats(teacher), flops.generator_stats(student)
    report = apply_svs(student, svs_fn, split_patterns(svs_include), split_patterns(svs_exclude))

    widths = channels.widths_from_masks(masks)
    svs_info = None if svs_fn == 'none' else dict(fn=svs_fn, include=svs_include, exclude=svs_exclude)
    pruning_extra = dict(method=method, ratio=ratio, family=family, global_ranking=bool(global_ranking),
                         teacher=str(network), teacher_widths=[g.size for g in groups], widths=widths,
                         masks=channels.masks_to_indices(masks), compensate_torgb=bool(compensate_torgb),
                         svs=svs_info, D='teacher' if data.D is not None else None)
    result = dict(pruning_extra, settings=settings, score_seconds=score_seconds,
                  scores=[[float(v) for v in s] for s in scores],
                  params=dict(teacher=teacher_stats, student=student_stats),
                  spectra=spectra.summarize(report), versions=versions(),
                  note_D=('student.pkl carries the teacher\'s D unchanged' if data.D is not None
                          else 'the teacher file has no D; student.pkl has none'))
    if rank == 0:
        extras = {k: v for k, v in data.items() if k not in ('G', 'G_ema', 'D', 'augment_pipe', 'training_set_kwargs', 'pruning')}
        save_snapshot(os.path.join(outdir, 'student.pkl'),
                      dict(extras, G=student, G_ema=student, D=data.D, augment_pipe=None,
                           training_set_kwargs=data.training_set_kwargs, pruning=pruning_extra))
        write_json(os.path.join(outdir, 'pruning.json'), result)
        spectra.plot_spectra(report, os.path.join(outdir, 'spectra.png'),
                             title=f'{method} p={ratio} student' + (f', SVS {svs_fn}' if svs_info else ''))
        print(f'widths: {[g.size for g in groups]} -> {widths}')
        print_stats(teacher_stats, student_stats)
        print(f'Wrote {", ".join(os.path.join(outdir, n) for n in OUTPUT_FILES)}')
    return result


def svs_snapshot(network, outdir, fn='sqrt', include=None, exclude=None, force=False, overwrite=False,
                 allow_code=False):
    """Apply SVS to G and G_ema of an existing (student) snapshot; writes student.pkl, svs.json,
    spectra.png to ``outdir``. Refuses a snapshot already scaled unless ``force``."""
    from training.checkpoints import load_network, save_snapshot
    fn = svs.parse_fn(fn)[0]
    names = ('student.pkl', 'svs.json', 'spectra.png')
    check_outdir(outdir, names, overwrite)
    data = load_network(network, allow_code=allow_code, device='cpu')
    pruning_extra = dict(data.get('pruning') or {})
    if pruning_extra.get('svs') and not force:
        raise dnnlib.util.UserError(f'{network}: SVS ({pruning_extra["svs"]["fn"]}) was already applied; use --force to scale again')
    reports = {}
    for key in ('G', 'G_ema'):
        if data.get(key) is not None:
            channels.generator_family(data[key])
            reports[key] = svs.scale_(data[key], fn=fn, include=split_patterns(include), exclude=split_patterns(exclude))
    history = list(pruning_extra.get('svs_history') or [])
    history.append(dict(fn=fn, include=include, exclude=exclude, source=str(network)))
    pruning_extra.update(svs=dict(fn=fn, include=include, exclude=exclude), svs_history=history)
    out = {k: v for k, v in data.items() if k != 'pruning'}
    out['pruning'] = pruning_extra
    save_snapshot(os.path.join(outdir, 'student.pkl'), out)
    write_json(os.path.join(outdir, 'svs.json'), dict(source=str(network), fn=fn, include=include, exclude=exclude,
                                                      spectra=spectra.summarize(reports['G_ema']), versions=versions()))
    spectra.plot_spectra(reports['G_ema'], os.path.join(outdir, 'spectra.png'), title=f'SVS {fn}')
    print(f'SVS {fn} on {len(reports["G_ema"].layers)} tensors of {", ".join(reports)}; wrote {os.path.join(outdir, "student.pkl")}')
    return reports

# ---------------------------------------------------------------------------------------------
# Command line.


@click.group(invoke_without_command=True, help=__doc__)
@click.pass_context
@click.option('--network', 'network', metavar='PATH|URL', help='Teacher network (any checkpoint load_network reads)')
@click.option('--outdir', metavar='DIR', help='Where to write student.pkl, pruning.json, spectra.png')
@click.option('--method', type=click.Choice(scorers.METHODS), default='dcp', show_default=True, help='Channel scorer')
@click.option('--ratio', type=dnnlib.cli.FiniteFloat(), default=0.7, show_default=True, help='Fraction of channels removed per layer, in (0, 1)')
@click.option('--mask', type=click.Choice(['uniform', 'face']), default='uniform', show_default=True, help='cagan content mask (face: BiSeNet face parsing)')
@click.option('--face-parser', metavar='PATH|URL', help='BiSeNet checkpoint 79999_iter.pth for --mask face')
@click.option('--svs', 'svs_fn', default='none', show_default=True, metavar='FN', help=f'SVS of the student: {", ".join(SVS_CHOICES)}')
@click.option('--svs-include', metavar='PATTERNS', help='Comma-separated parameter-name patterns to scale (fnmatch, or re:REGEX); default: the paper\'s set')
@click.option('--svs-exclude', metavar='PATTERNS', help='Comma-separated parameter-name patterns not to scale')
@click.option('--n-samples', type=int, help='Latents to score with [dcp 5000, cagan/gs 400]')
@click.option('--batch', type=int, help='Batch size for scoring [dcp 5, cagan/gs 8]')
@click.option('--seed', type=int, default=0, show_default=True, help='Random seed of the scorer')
@click.option('--global-ranking', is_flag=True, help='Rank channels across all layers (scores normalised per layer)')
@click.option('--alpha', type=dnnlib.cli.FiniteFloat(), default=10.0, show_default=True, help='dcp: edit strength along PCA directions')
@click.option('--n-directions', type=int, default=10, show_default=True, help='dcp: directions per batch')
@click.option('--pca-samples', type=int, default=10000, show_default=True, help='dcp: latents for the PCA of W')
@click.option('--grad-through-perturbed', is_flag=True, help='dcp: keep the perturbed pass in the graph (DCP-GAN main branch)')
@click.option('--noise-mode', type=click.Choice(['random', 'const', 'none']), default='random', show_default=True, help='dcp: noise inputs of the two passes')
@click.option('--truncation-psi', type=dnnlib.cli.FiniteFloat(), default=1.0, show_default=True, help='dcp: truncation of w and w\' (DCP-GAN main)')
@click.option('--noise-prob', type=dnnlib.cli.FiniteFloat(), default=0.05, show_default=True, help='cagan: salt-and-pepper probability')
@click.option('--torgb-compensation', 'torgb_compensation', is_flag=True, help='Ours, not the paper\'s: rescale the kept toRGB (and resnet skip) weights by sqrt(C\'/C), so that the student equals the dense teacher with the removed channels zeroed [default: slice only, as the official code]')
@click.option('--no-torgb-compensation', 'no_torgb_compensation', is_flag=True, hidden=True, help='Accepted for old command lines; slicing only is the default')
@click.option('--device', help='Device for scoring [cuda if available, else cpu]')
@click.option('--allow-tf32', is_flag=True, help='Allow TF32 matmuls/convolutions on Ampere+ GPUs (faster, less exact)')
@click.option('--allow-code', is_flag=True, help='Execute the source embedded in the teacher pickle (trusted files only)')
@click.option('--overwrite', is_flag=True, help='Replace existing outputs in --outdir')
@dnnlib.util.exit_on_user_error
def main(ctx, **kw):
    if ctx.invoked_subcommand is not None:
        given = [p.name for p in ctx.command.params
                 if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f'options before "{ctx.invoked_subcommand}" are not used by it: {", ".join(given)}')
        return
    for name in ('network', 'outdir'):
        if not kw[name]:
            raise click.UsageError(f'Missing option --{name}')
    if kw.pop('no_torgb_compensation') and kw['torgb_compensation']:
        raise click.UsageError('--torgb-compensation and --no-torgb-compensation contradict each other')
    kw['compensate_torgb'] = kw.pop('torgb_compensation')
    prune(**kw)


@main.command('svs', help='Apply Singular Value Scaling to G and G_ema of an existing (student) snapshot.')
@click.option('--network', required=True, metavar='PATH|URL', help='Student snapshot (e.g. student.pkl of a prune run)')
@click.option('--outdir', required=True, metavar='DIR', help='Where to write student.pkl, svs.json, spectra.png')
@click.option('--fn', default='sqrt', show_default=True, metavar='FN', help=f'Scaling function: {", ".join(svs.FUNCTIONS)}')
@click.option('--include', metavar='PATTERNS', help='Comma-separated parameter-name patterns to scale; default: the paper\'s set')
@click.option('--exclude', metavar='PATTERNS', help='Comma-separated parameter-name patterns not to scale')
@click.option('--force', is_flag=True, help='Scale even if the snapshot says SVS was already applied')
@click.option('--allow-code', is_flag=True, help='Execute the source embedded in the pickle (trusted files only)')
@click.option('--overwrite', is_flag=True, help='Replace existing outputs in --outdir')
@dnnlib.util.exit_on_user_error
def svs_command(**kw):
    svs_snapshot(**kw)


@main.command('ddpm', help='Diff-Prune a DDPM (diffusers folder, ddim checkpoint or DDPM snapshot) into OUTDIR/student '
                           '(a diffusers folder) and OUTDIR/pruning.json; optionally SVS.')
@click.option('--network', required=True, metavar='PATH', help='Teacher: diffusers folder, ddim ckpt.pth, or our DDPM snapshot')
@click.option('--outdir', required=True, metavar='DIR', help='Where to write student/ and pruning.json')
@click.option('--ratio', type=click.FloatRange(0, 1, max_open=True), default=0.3, show_default=True, help='Channel sparsity (Table 3: 0.3, 0.5, 0.7)')
@click.option('--importance', type=click.Choice(diffprune.IMPORTANCES), default='taylor', show_default=True, help='Channel importance')
@click.option('--rounding', type=click.Choice(diffprune.ROUNDINGS), default='legacy', show_default=True,
              help='GroupNorm rounding: legacy = torch-pruning <= 1.4.0 (Table 3), per-group = >= 1.4.1')
@click.option('--data', metavar='ZIP|DIR', help='Training images for the Taylor gradients')
@click.option('--batch', type=click.IntRange(min=1), default=128, show_default=True, help='Taylor batch (CIFAR 128, CelebA 64)')
@click.option('--thr', type=click.FloatRange(0, 1), default=0.05, show_default=True, help='Taylor: stop at loss < thr x max loss (CelebA: 0)')
@click.option('--svs', 'svs_fn', default='none', show_default=True, metavar='FN', help=f'SVS of the student: {", ".join(SVS_CHOICES)}')
@click.option('--svs-reset-norm/--no-svs-reset-norm', default=True, show_default=True,
              help='With --svs: reset GroupNorm affines to 1/0 (the official code; not in the paper)')
@click.option('--seed', type=int, default=0, show_default=True, help='Seed of the calibration batch, noise and random importance')
@click.option('--overwrite', is_flag=True, help='Replace existing outputs in --outdir')
@dnnlib.util.exit_on_user_error
def ddpm_command(network, outdir, ratio, importance, rounding, data, batch, thr, svs_fn, svs_reset_norm, seed, overwrite):
    if svs_fn != 'none':
        svs.parse_fn(svs_fn)  # an unknown function fails before any work
    result = diffprune.prune_ddpm(network, outdir, ratio=ratio, importance=importance, rounding=rounding, data=data,
                                  batch=batch, thr=thr, svs_fn=svs_fn, svs_reset_norm=svs_reset_norm, seed=seed,
                                  overwrite=overwrite)
    print(f'{result.student}: {result.report.params / 1e6:.4f} M parameters, {result.report.macs / 1e9:.4f} G MACs')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
