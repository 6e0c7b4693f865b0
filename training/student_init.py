"""How a distillation student starts, and the spectrum ablations that act during training.

``init_student`` is the training loop's ``init_fn`` (called on every rank before the EMA copy,
never on resume). The student G has already been built from the student pickle's architecture;
this copies its tensors and then applies the chosen initialisation:

* ``pruned``: the pruned weights as loaded (DCP-GAN baseline);
* ``svs``:    the pruned weights, then Singular Value Scaling once (``svs.scale_``, the paper's
              set of synthesis weights and biases, function ``svs_fn``; ours);
* ``random``: StyleKD's init: only the mapping network (and ``w_avg``) is copied; the synthesis
              keeps StyleGAN2's own initialisation, i.e. that of a freshly constructed synthesis
              network of the student's widths (weights N(0, 1), biases 0, affine biases 1);
* ``he``:     as the official ``--initialize he`` run (Table 7), which deletes the pruned synthesis
              and builds it afresh: mapping (and ``w_avg``) copied, nothing of the pruned synthesis
              kept (``const``, ``noise_strength`` and noise buffers are the fresh network's), then
              every synthesis ``*.weight`` gets ``kaiming_normal_`` (PyTorch defaults: fan_in, gain
              √2, on the RAW tensor, 4-D weights with fan_in = C_in·k·k) and every synthesis
              ``*.bias`` is zeroed, affine biases included (method-svs-distillation.md §1.6;
              mis-scaled for equalised-lr layers by design, that is the ablation).

``G`` arrives freshly constructed (the loop builds it from ``G_kwargs`` before calling ``init_fn``),
so "from scratch" means: the synthesis tensors stay as that constructor made them.

With ``teacher_d`` the discriminator starts from the student pickle's D (prune.py stores the
teacher's D there) or else the teacher pickle's D, as CAGAN does; otherwise D is trained from
scratch.

Ablations of Table 6 acting during training (``step_hooks`` of the loop, called after every step):

* ``SpectralNormHook`` (6d): after each step every synthesis weight matrix (4-D viewed as
  [C_out, C_in·k·k]) is divided by its largest singular value, estimated as Miyato et al. (2018)
  do: one power iteration per step from a persistent vector u per weight (v = W^T u / |W^T u|,
  u = W v / |W v|, sigma = u^T W v; u starts from a fixed seed, the same on every rank, refined by
  ``init_iterations`` iterations when the hook is built, and is part of the exact-resume state).
  No SVD and no host sync per step. ``init_student(spectral_norm=True)`` projects once, exactly
  (``torch.linalg.matrix_norm`` ord 2), before the EMA copy. A per-step projection instead of ``torch.nn.utils.parametrizations.
  spectral_norm``: the parametrisation swaps the module classes, which our persistent (pickled,
  source-carrying) networks cannot store; the projection leaves plain tensors.
* ``PeriodicSVSHook`` (6e): SVS re-applied to G every ``every_kimg`` during the first half of
  training (at every multiple of ``every_kimg`` below total_kimg / 2). G only; G_ema follows
  through the EMA. Stateless (decided from the image counter), so an exact resume repeats it.
"""
import json

import torch

import dnnlib
import svs
from torch_utils import misc

INIT_MODES = ('pruned', 'svs', 'random', 'he')

# ---------------------------------------------------------------------------------------------
# Reading and validating teacher / student files (train.py calls these before training).


def load_generators(path, what, allow_code=False):
    """EasyDict(G (the training G, else G_ema), G_ema, D, pruning, path) of a checkpoint."""
    from training import checkpoints
    data = checkpoints.load_network(path, allow_code=allow_code, device='cpu', verbose=False)
    G = data.get('G') if data.get('G') is not None else data.get('G_ema')
    G_ema = data.get('G_ema') if data.get('G_ema') is not None else G
    if G is None:
        raise dnnlib.util.UserError(f'{what}: {path} holds no generator')
    return dnnlib.EasyDict(G=G, G_ema=G_ema, D=data.get('D'), pruning=data.get('pruning'), path=str(path))


def _mapping_signature(G):
    return [(n, tuple(t.shape)) for n, t in misc.named_params_and_buffers(G.mapping)]


def _arch_kwargs(G):
    """Constructor kwargs that must agree between teacher and student (widths and precision aside)."""
    kwargs = json.loads(json.dumps(dict(G.init_kwargs), default=str))
    syn = kwargs.pop('synthesis_kwargs', None) or {}
    kwargs.update(syn)
    for key in ('layer_channels', 'num_fp16_res', 'conv_clamp', 'fused_modconv_default', 'magnitude_ema_beta',
                'mapping_kwargs', 'c_dim'):
        kwargs.pop(key, None)
    return kwargs


def check_student(teacher, student, init, pruning=None, student_path='--student'):
    """UserError (one line) unless ``student`` can be distilled from ``teacher`` with ``init``.

    Always: same family, resolution, channels, z/w/c dims, number of ws and mapping network.
    ``pruned``/``svs`` (weights inherited from a pruning of this teacher): the same architecture
    with every channel-group width <= the teacher's; when the file records its pruning, the recorded
    teacher widths must be this teacher's.
    """
    from pruning import channels
    if init not in INIT_MODES:
        raise dnnlib.util.UserError(f'--init: unknown mode "{init}", expected one of {", ".join(INIT_MODES)}')
    fam_t, fam_s = channels.generator_family(teacher), channels.generator_family(student)
    if fam_t != fam_s:
        raise dnnlib.util.UserError(f'{student_path}: a {fam_s.upper()} generator, the teacher is {fam_t.upper()}')
    for attr, label in (('img_resolution', 'resolution'), ('img_channels', 'image channels'), ('z_dim', 'z_dim'),
                        ('w_dim', 'w_dim'), ('c_dim', 'c_dim'), ('num_ws', 'num_ws')):
        if getattr(student, attr) != getattr(teacher, attr):
            raise dnnlib.util.UserError(f'{student_path}: {label} is {getattr(student, attr)}, the teacher has {getattr(teacher, attr)}')
    if _mapping_signature(student) != _mapping_signature(teacher):
        raise dnnlib.util.UserError(f'{student_path}: the mapping network differs from the teacher\'s '
                                    f'({len(student.mapping.state_dict())} vs {len(teacher.mapping.state_dict())} tensors or other shapes)')
    wt, ws = channels.group_widths(teacher), channels.group_widths(student)
    if len(wt) != len(ws):
        raise dnnlib.util.UserError(f'{student_path}: {len(ws)} channel groups, the teacher has {len(wt)}')
    if init in ('pruned', 'svs'):
        if _arch_kwargs(student) != _arch_kwargs(teacher):
            diff = sorted(k for k in set(_arch_kwargs(student)) | set(_arch_kwargs(teacher))
                          if _arch_kwargs(student).get(k) != _arch_kwargs(teacher).get(k))
            raise dnnlib.util.UserError(f'{student_path}: not a pruned form of the teacher (architecture differs in '
                                        f'{", ".join(diff)}); --init {init} needs one')
        wider = [k for k, (a, b) in enumerate(zip(ws, wt)) if a > b]
        if wider:
            k = wider[0]
            raise dnnlib.util.UserError(f'{student_path}: not a pruned form of the teacher (group {k} has {ws[k]} '
                                        f'channels, the teacher {wt[k]}); --init {init} needs one')
        recorded = (pruning or {}).get('teacher_widths')
        if recorded is not None and list(recorded) != list(wt):
            raise dnnlib.util.UserError(f'{student_path}: pruned from a teacher with widths {list(recorded)}, '
                                        f'not from this teacher ({wt}); --init {init} needs its own teacher')
        if init == 'svs' and (pruning or {}).get('svs'):
            raise dnnlib.util.UserError(f'{student_path}: SVS ({pruning["svs"].get("fn")}) was already applied by prune.py; '
                                        f'use --init pruned (or an unscaled student) instead of scaling twice')


def _precision_target(kwargs):
    """The dict holding num_fp16_res/conv_clamp: ``synthesis_kwargs`` (sg2ada G) or the kwargs themselves."""
    return kwargs['synthesis_kwargs'] if isinstance(kwargs.get('synthesis_kwargs'), dict) else kwargs


def precision_of(kwargs):
    """``dict(num_fp16_res, conv_clamp)`` of constructor kwargs (a preset's or a network's)."""
    target = _precision_target(kwargs)
    return dict(num_fp16_res=int(target.get('num_fp16_res', 0)), conv_clamp=target.get('conv_clamp'))


def generator_kwargs(G, fp32=False, precision=None):
    """JSON-able constructor kwargs (with ``class_name``) that rebuild G's architecture. ``precision``
    (``dict(num_fp16_res, conv_clamp)``) replaces the network's own: the run's options decide the
    training precision, as in NVIDIA's train.py, not whatever the checkpoint carried."""
    if G.init_args:
        raise dnnlib.util.UserError(f'network: {type(G).__name__} was built with positional arguments')
    kwargs = json.loads(json.dumps(dict(G.init_kwargs)))
    if precision is not None:
        _precision_target(kwargs).update(num_fp16_res=int(precision['num_fp16_res']), conv_clamp=precision['conv_clamp'])
    if fp32:
        _precision_target(kwargs).update(num_fp16_res=0, conv_clamp=None)
    cls = next(k for k in type(G).__mro__ if k.__module__ != 'torch_utils.persistence')  # past the persistence wrapper
    return dnnlib.EasyDict(class_name=f'{cls.__module__}.{cls.__name__}', **kwargs)


def teacher_channel_base(teacher):
    """(channel_base, channel_max) of the teacher's synthesis, as its D would use them."""
    kw = dict(teacher.init_kwargs)
    syn = dict(kw.get('synthesis_kwargs') or {})
    cbase = syn.get('channel_base', kw.get('channel_base', 32768))
    cmax = syn.get('channel_max', kw.get('channel_max', 512))
    if kw.get('use_radial_filters') or kw.get('conv_kernel') == 1:  # StyleGAN3-R doubles G's widths, not D's
        cbase, cmax = cbase // 2, cmax // 2
    return int(cbase), int(cmax)

# ---------------------------------------------------------------------------------------------
# Initialisations.


def _copy_strict(src, dst, where, prefix=''):
    """Copy every tensor of ``dst`` whose name starts with ``prefix`` from ``src`` (same names/shapes)."""
    src_tensors = dict(misc.named_params_and_buffers(src))
    with torch.no_grad():
        for name, tensor in misc.named_params_and_buffers(dst):
            if not name.startswith(prefix):
                continue
            if name not in src_tensors or src_tensors[name].shape != tensor.shape:
                got = tuple(src_tensors[name].shape) if name in src_tensors else 'missing'
                raise dnnlib.util.UserError(f'{where}: {name} is {got}, the run builds {tuple(tensor.shape)}')
            tensor.copy_(src_tensors[name].detach())


@torch.no_grad()
def he_init_(G):
    """kaiming_normal_ on every synthesis weight, zeros on every synthesis bias (official ``he``)."""
    names = svs.select_names(G)
    params = dict(G.named_parameters())
    for name in names:
        p = params[name]
        if name.endswith('.bias') or p.ndim < 2:
            p.zero_()
        else:
            torch.nn.init.kaiming_normal_(p)
    return names


def synthesis_weight_names(G):
    """The synthesis weight matrices (the SVS set without biases)."""
    params = dict(G.named_parameters())
    return [n for n in svs.select_names(G) if params[n].ndim >= 2]


@torch.no_grad()
def spectral_normalize_(G, names=None):
    """W <- W / sigma_max(W) for each synthesis weight (4-D as [C_out, C_in*k*k])."""
    params = dict(G.named_parameters())
    for name in (names if names is not None else synthesis_weight_names(G)):
        p = params[name]
        sigma = torch.linalg.matrix_norm(p.detach().reshape(p.shape[0], -1).to(torch.float32), ord=2)
        if sigma > 0:
            p.div_(sigma.to(p.dtype))


def spectral_normalize_init(G, D=None, **_kwargs):
    """``init_fn`` of a run without a teacher that uses --spectral-norm."""
    spectral_normalize_(G)


def init_student(G, D, training_set=None, device=None, rank=0, num_gpus=1, extra_networks=None, teacher=None,
                 student=None, init='pruned', svs_fn='sqrt', teacher_d=False, spectral_norm=False, allow_code=False):
    """``init_fn`` of the training loop: student (and optionally D) weights, then ``init``."""
    log = print if rank == 0 else (lambda *_a, **_k: None)
    if init not in INIT_MODES:
        raise dnnlib.util.UserError(f'--init: unknown mode "{init}"')
    source_path = student if student is not None else teacher
    src = load_generators(source_path, '--student' if student is not None else '--teacher', allow_code=allow_code)
    where = f'--student {source_path}'
    if init in ('random', 'he'):  # the pruned synthesis is not used at all
        _copy_strict(src.G, G, where, prefix='mapping.')
        log(f'Student init "{init}": mapping network from {source_path}; synthesis built from scratch')
    else:
        _copy_strict(src.G, G, where)
        log(f'Student init "{init}": weights from {source_path}')
    if init == 'svs':
        report = svs.scale_(G, fn=svs_fn)
        log(f'  SVS ({report.fn}) applied to {len(report.layers)} synthesis tensors')
    elif init == 'he':
        names = he_init_(G)
        log(f'  He (kaiming_normal_) init of {len(names)} synthesis tensors, biases zeroed')
    if spectral_norm:
        spectral_normalize_(G)
        log('  spectral normalisation of the synthesis weights (Table 6d ablation)')
    if teacher_d:
        d_src = src.D
        d_path = source_path
        if d_src is None and student is not None:
            d_src, d_path = load_generators(teacher, '--teacher', allow_code=allow_code).D, teacher
        if d_src is None:
            raise dnnlib.util.UserError(f'--teacher-d: neither {source_path} nor {teacher} holds a discriminator')
        _copy_strict(d_src, D, f'--teacher-d {d_path}')
        log(f'  discriminator from {d_path}')

# ---------------------------------------------------------------------------------------------
# Step hooks (training_loop ``step_hooks``): called as hook(cur_nimg=..., batch_size=..., total_kimg=...)
# after every optimisation step, before the EMA update; cur_nimg counts the images after this step.


class SpectralNormHook:
    def __init__(self, device, networks, power_iterations=1, init_iterations=100, eps=1e-12):
        self.G = networks.G
        self.names = synthesis_weight_names(self.G)
        self.power_iterations, self.eps = int(power_iterations), float(eps)
        params = dict(self.G.named_parameters())
        gen = torch.Generator().manual_seed(0)  # own generator: the run's RNG streams are untouched
        self.u = dict()
        for name in self.names:
            u = torch.randn([params[name].shape[0]], generator=gen, dtype=torch.float32)
            self.u[name] = torch.nn.functional.normalize(u, dim=0, eps=self.eps).to(params[name].device)
        for name in self.names:
            self.sigma(name, params[name], int(init_iterations))

    @torch.no_grad()
    def sigma(self, name, weight, iterations):
        """Power-iteration estimate of sigma_max(weight) (updates the persistent u)."""
        W = weight.detach().reshape(weight.shape[0], -1).to(torch.float32)
        u = self.u[name]
        for _ in range(max(iterations, 1)):
            v = torch.nn.functional.normalize(W.t() @ u, dim=0, eps=self.eps)
            u = torch.nn.functional.normalize(W @ v, dim=0, eps=self.eps)
        self.u[name] = u
        return torch.dot(u, W @ v)

    @torch.no_grad()
    def __call__(self, cur_nimg, batch_size, total_kimg, **_kwargs):
        params = dict(self.G.named_parameters())
        for name in self.names:
            p = params[name]
            p.div_(self.sigma(name, p, self.power_iterations).clamp_min(self.eps).to(p.dtype))

    def state_dict(self):
        return dict(u={name: u.detach().cpu().clone() for name, u in self.u.items()})

    def load_state_dict(self, state):
        for name, u in state.get('u', dict()).items():
            if name in self.u:
                self.u[name].copy_(u)


class PeriodicSVSHook:
    def __init__(self, device, networks, every_kimg, fn='sqrt', until_fraction=0.5, verbose=True):
        if not every_kimg or every_kimg <= 0:
            raise dnnlib.util.UserError(f'--svs-every: must be positive, got {every_kimg}')
        self.G = networks.G
        self.every_nimg = float(every_kimg) * 1000
        self.fn = svs.parse_fn(fn)[0]
        self.until_fraction = float(until_fraction)
        self.verbose = verbose
        self.applied = 0

    def due(self, cur_nimg, batch_size, total_kimg):
        """True when a multiple of every_kimg lies in (cur_nimg - batch_size, cur_nimg] and below
        until_fraction of the run."""
        prev = cur_nimg - batch_size
        crossed = int(cur_nimg // self.every_nimg) > int(prev // self.every_nimg)
        mark = int(cur_nimg // self.every_nimg) * self.every_nimg
        return crossed and mark > 0 and mark < self.until_fraction * total_kimg * 1000

    def __call__(self, cur_nimg, batch_size, total_kimg, rank=0, **_kwargs):
        if self.due(cur_nimg, batch_size, total_kimg):
            svs.scale_(self.G, fn=self.fn)
            self.applied += 1
            if self.verbose and rank == 0:
                print(f'SVS ({self.fn}) re-applied to G at kimg {cur_nimg / 1000:g}')

# ---------------------------------------------------------------------------------------------
