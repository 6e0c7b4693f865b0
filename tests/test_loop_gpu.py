"""What the training loop does for a GPU node, checked on CPU by counting and injecting.

* students rebuilt from NVIDIA / TF / rosinality checkpoints train with unfused modulated convs;
* TF32 flags as documented per network (trained nets: ``allow_tf32``; frozen nets: on unless no);
* host syncs and host-to-device copies per step, counted, at most NVIDIA's loop's;
* non-finite values: a transient one is sanitised and counted, a persistent one stops the run
  naming the term and the step, non-finite weights stop it, the last good snapshot stays;
* Table 6d spectral normalisation by power iteration (no SVD per step).
"""
import argparse
import collections
import json
import math
import pickle

import numpy as np
import pytest
import torch

import dnnlib
import train
from torch_utils import misc
from training import augment, checkpoints, distill, networks_stylegan2, student_init, training_loop
from training.loss import NonFiniteLossError, StyleGAN2Loss
from training.sample_data import make_sample_dataset

from test_checkpoints import fixture_networks, load_fixture, v6_pickle
from test_checkpoints_convert import make_tf_pickle, npz, rosinality_state_dict, tf_network_class  # noqa: F401 (fixture)
from test_distill import lpips_files, nets  # noqa: F401 (fixtures)
from test_face_parsing import random_bisenet


@pytest.fixture(scope='module')
def data_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp('loop_data') / 'sample32.zip'
    make_sample_dataset(str(path), num_images=16, resolution=32, seed=0)
    return str(path)


def _kwargs(data_zip, kimg, tick, aug='noaug', p=None, snap=1):
    c, _desc = train.build_training_kwargs(data=data_zip, cfg='cifar', batch=4, batch_gpu=4, kimg=kimg, tick=tick,
                                           snap=1, metrics=[], cbase=256, cmax=32, map_depth=2, mbstd_group=2,
                                           aug=aug, p=p, workers=0, device='cpu', grid='2x2')
    c.pop('device')
    c.image_snapshot_ticks = None
    c.network_snapshot_ticks = snap
    return c


def _run(tmp_path, c):
    return training_loop.training_loop(run_dir=str(tmp_path), rank=0, device=torch.device('cpu'), **c)

# ---------------------------------------------------------------------------------------------
# 1. Unfused modulated convolutions in training, whatever checkpoint the student came from.


def _nvidia_pickle(fixtures_dir, tmp_path, _tf_class):
    G, D = fixture_networks(load_fixture(fixtures_dir, 'sg2ada_g32_uncond'))
    path = tmp_path / 'network-snapshot.pkl'
    path.write_bytes(v6_pickle(G, D))
    return path


def _tf_pickle(fixtures_dir, tmp_path, tf_class):
    path = tmp_path / 'stylegan2-config-f.pkl'
    path.write_bytes(make_tf_pickle(tf_class, npz(fixtures_dir, 'sg2ada_g32_uncond')))
    return path


def _rosinality(fixtures_dir, tmp_path, _tf_class):
    arrays = npz(fixtures_dir, 'rosinality_g32')
    sd = rosinality_state_dict(arrays)
    path = tmp_path / '550000.pt'
    torch.save({'g_ema': sd, 'latent_avg': torch.from_numpy(arrays['io/mean_w'][0]),
                'args': argparse.Namespace(size=32, channel_multiplier=2)}, path)
    return path


@pytest.mark.parametrize('make', [_nvidia_pickle, _tf_pickle, _rosinality], ids=['nvidia', 'tf', 'rosinality'])
def test_students_from_every_converter_train_unfused(make, fixtures_dir, tmp_path, data_zip, tf_network_class, monkeypatch):
    G_file = checkpoints.load_network(str(make(fixtures_dir, tmp_path, tf_network_class)), verbose=False).G_ema
    blocks = [m for m in G_file.modules() if hasattr(m, 'fused_modconv_default')]
    assert blocks and all(m.fused_modconv_default is True for m in blocks)  # the file carries no key: fused

    calls = []
    original = networks_stylegan2.modulated_conv2d

    def recording(*args, fused_modconv=True, **kwargs):
        calls.append((bool(fused_modconv), torch.is_grad_enabled()))
        return original(*args, fused_modconv=fused_modconv, **kwargs)
    monkeypatch.setattr(networks_stylegan2, 'modulated_conv2d', recording)

    c = _kwargs(data_zip, kimg=0.004, tick=0.004, snap=None)
    c.G_kwargs = student_init.generator_kwargs(G_file)  # what train.py builds a student from
    c.image_snapshot_ticks = 1                           # the grid: G_ema in inference
    out = _run(tmp_path / 'run', c)
    trained = [fused for fused, grad in calls if grad]
    inference = [fused for fused, grad in calls if not grad]
    assert trained and not any(trained)                  # every training forward unfused
    assert inference and all(inference)                  # G_ema fuses in inference, as NVIDIA
    assert all(m.fused_modconv_default == 'inference_only' for m in out.G.modules() if hasattr(m, 'fused_modconv_default'))

# ---------------------------------------------------------------------------------------------
# 2. TF32 per network.


def _flags():
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


def _record_flags(modules):
    seen = collections.defaultdict(set)
    handles = [m.register_forward_pre_hook(lambda _m, _i, name=name: seen[name].add(_flags())) for name, m in modules.items()]
    return seen, handles


def test_tf32_flags_per_network(nets, lpips_files, tmp_path, monkeypatch):  # noqa: F811 (fixtures)
    parser_path = tmp_path / '79999_iter.pth'
    torch.save(random_bisenet(seed=3).state_dict(), parser_path)
    term = distill.DistillTerm('cpu', dnnlib.EasyDict(G=nets.student, teacher=nets.teacher), l1_weight=3, lpips_weight=3,
                               ld_weight=30, mask='face', face_parser=str(parser_path), lpips_vgg=lpips_files.vgg_path,
                               lpips_lin=lpips_files.lin_path, teacher_noise='const')
    from training.networks_stylegan2 import Discriminator
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16)
    seen, handles = _record_flags(dict(G=nets.student.synthesis, D=D, teacher=nets.teacher.synthesis,
                                       lpips=term.lpips.vgg, parser=term.parser))
    saved = _flags()
    try:
        for allow, frozen in [(False, True), (False, False), (True, True)]:
            seen.clear()
            misc.set_tf32(allow)
            misc.set_frozen_tf32(frozen)
            loss = StyleGAN2Loss('cpu', G=nets.student, D=D, style_mixing_prob=0.9, pl_weight=0, terms=[term])
            torch.manual_seed(0)
            loss.accumulate_gradients('Gmain', real_img=None, real_c=None, gen_z=torch.randn([2, nets.student.z_dim]),
                                      gen_c=torch.zeros([2, 0]), gain=1, cur_nimg=0)
            assert seen['G'] == {(allow, allow)} and seen['D'] == {(allow, allow)}, (allow, frozen, seen)
            for name in ('teacher', 'lpips', 'parser'):
                assert seen[name] == {(frozen, frozen)}, (name, allow, frozen, seen)
            assert _flags() == (allow, allow)  # the frozen scopes restore the training setting

        # Detectors in feature extraction are frozen networks too; the k-NN engine stays exact.
        from metrics import detectors, features, knn
        from test_metrics import write_stand_in_detectors
        det_dir = write_stand_in_detectors(str(tmp_path / 'detectors'))
        det_flags = set()
        run_detector = detectors.run_detector
        monkeypatch.setattr(detectors, 'run_detector', lambda *a, **k: det_flags.add(_flags()) or run_detector(*a, **k))
        misc.set_tf32(False)
        misc.set_frozen_tf32(True)
        features.compute_generator_features(nets.teacher, 'inception', num_items=2, batch_size=2, detector_dir=det_dir)
        assert det_flags == {(True, True)}
        with knn._TF32Off():
            assert _flags() == (False, False)
    finally:
        for h in handles:
            h.remove()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        misc.set_frozen_tf32(True)


def test_loop_sets_tf32_from_its_options(data_zip, tmp_path):
    saved = _flags()
    try:
        c = _kwargs(data_zip, kimg=0.004, tick=0.004, snap=None)
        _run(tmp_path / 'a', dict(c, allow_tf32=True, frozen_tf32=False))
        assert _flags() == (True, True) and misc._frozen_tf32 is False
        _run(tmp_path / 'b', c)  # defaults: stylegan3's (off) for training, on for frozen networks
        assert _flags() == (False, False) and misc._frozen_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        misc.set_frozen_tf32(True)

def test_train_cli_records_tf32_options(data_zip, tmp_path):
    from click.testing import CliRunner
    args = ['--outdir', str(tmp_path), '--data', data_zip, '--cfg', 'cifar', '--device', 'cpu', '--metrics', 'none', '-n']
    for extra, expected in [([], (False, True)), (['--allow-tf32', '1', '--frozen-tf32', '0'], (True, False))]:
        result = CliRunner().invoke(train.main, args + extra)
        assert result.exit_code == 0, result.output
        assert f'"allow_tf32": {json.dumps(expected[0])}' in result.output
        assert f'"frozen_tf32": {json.dumps(expected[1])}' in result.output

# ---------------------------------------------------------------------------------------------
# 3. Host syncs and host-to-device copies per step.

_HOST_READS = ('item', 'tolist', 'cpu', 'numpy', '__bool__', '__float__', '__int__', '__index__')


class SyncCounter:
    """Counts host reads of tensors (item/tolist/cpu/numpy/bool/float/int/index: each a device sync
    on a GPU) and host-to-device copies (``.to``/``.cuda`` with a device, ``torch.tensor`` /
    ``torch.as_tensor`` with a device). On CPU every tensor counts, so the count is an upper bound."""

    def __init__(self, monkeypatch):
        self.reads = 0
        self.copies = 0
        self.sites = collections.Counter()
        self.on = False
        for name in _HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name), 'reads', name))
        monkeypatch.setattr(torch.Tensor, 'to', self._wrap(torch.Tensor.to, 'copies', 'to', self._to_device))
        monkeypatch.setattr(torch.Tensor, 'cuda', self._wrap(torch.Tensor.cuda, 'copies', 'cuda'))
        for name in ('tensor', 'as_tensor'):
            monkeypatch.setattr(torch, name, self._wrap(getattr(torch, name), 'copies', name, lambda a, k: k.get('device') is not None))

    @staticmethod
    def _to_device(args, kwargs):
        if kwargs.get('device') is not None:
            return True
        return any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:])

    def _wrap(self, fn, kind, name, applies=None):
        def wrapper(*args, **kwargs):
            if self.on and (applies is None or applies(args, kwargs)):
                self.on = False  # what the stack walk below does is not counted
                import traceback
                stack = traceback.extract_stack()[:-1]
                # Adam's step counters live on the host by design (torch.optim, not capturable).
                host_only = any(f.name == '_get_value' and f.filename.endswith('optim/optimizer.py') for f in stack[-3:])
                if not host_only:
                    site = next((f'{f.filename.split("/main/")[-1]}:{f.lineno}' for f in reversed(stack)
                                 if '/main/' in f.filename and '/tests/' not in f.filename), '?')
                    self.sites[f'{name} {site}'] += 1
                    setattr(self, kind, getattr(self, kind) + 1)
                self.on = True
            return fn(*args, **kwargs)
        return wrapper


class _StepMarks:
    """A step hook recording the counters after every step (hooks run on the hot path, between steps)."""

    def __init__(self, counter):
        self.counter, self.marks = counter, []

    def __call__(self, **_kwargs):
        self.counter.on = True
        self.marks.append((self.counter.reads, self.counter.copies, self.counter.sites.copy(), _AugCalls.n))


class _AugCalls:
    n = 0


def _per_step(data_zip, tmp_path, monkeypatch, distill_files=None, **aug):
    counter = SyncCounter(monkeypatch)
    marks = _StepMarks(counter)
    forward = augment.AugmentPipe.forward

    def counted(self, images):
        _AugCalls.n += 1
        return forward(self, images)
    monkeypatch.setattr(augment.AugmentPipe, 'forward', counted)
    c = _kwargs(data_zip, kimg=0.048, tick=1, **aug)  # 12 steps; ticks after steps 0 and 11 only
    c.network_snapshot_ticks = None
    c.step_hooks = [marks]
    if distill_files is not None:  # the distillation path: teacher forward, L1, LPIPS, LD
        c.extra_networks = dict(teacher=dnnlib.util.construct_class_by_name(**dict(c.G_kwargs, c_dim=0, img_resolution=32,
                                                                                   img_channels=3)))
        c.loss_kwargs.terms = [dict(class_name='training.distill.DistillTerm', l1_weight=3, lpips_weight=3, ld_weight=30,
                                    lpips_vgg=distill_files.vgg_path, lpips_lin=distill_files.lin_path)]
    _run(tmp_path, c)
    counter.on = False
    first, last = marks.marks[1], marks.marks[-1]  # steps 2..11: no tick inside
    steps = len(marks.marks) - 2
    sites = last[2] - first[2]
    return (last[0] - first[0]) / steps, (last[1] - first[1]) / steps, (last[3] - first[3]) / steps, sites


def test_sync_counter_sees_reads_and_copies(monkeypatch):
    counter = SyncCounter(monkeypatch)
    x = torch.randn([3])
    counter.on = True
    x.sum().item(), x.tolist(), bool(x[0] > 0), float(x[1])   # 4 host reads
    x.to(torch.device('cpu')), x.to('cpu', torch.float64), torch.tensor([1.0], device='cpu'), torch.as_tensor(2.0, device='cpu')  # 4 copies
    x.to(torch.float64), torch.as_tensor([1.0]), torch.zeros([2], device='cpu')  # no device target / made on the device
    counter.on = False
    assert (counter.reads, counter.copies) == (4, 4), counter.sites


@pytest.mark.parametrize('aug', [dict(aug='noaug'), dict(aug='fixed', p=0.5), dict(aug='noaug', distill=True)],
                         ids=['noaug', 'augment', 'distill'])
def test_host_syncs_per_step_at_most_nvidia(aug, data_zip, tmp_path, monkeypatch, lpips_files):  # noqa: F811 (fixture)
    aug = dict(aug)
    files = lpips_files if aug.pop('distill', False) else None
    reads, copies, aug_calls, sites = _per_step(data_zip, tmp_path, monkeypatch, distill_files=files, **aug)
    print(f'per step: {reads:g} host reads, {copies:g} host-to-device copies, {aug_calls:g} augment calls; {dict(sites)}')
    # NVIDIA's loop per step: 3 host-to-device copies (reals, their labels, the generated labels),
    # and in the augment pipe's geometric stage one read of the padding per call.
    nvidia = 3 + aug_calls
    assert reads + copies <= nvidia, (reads, copies, aug_calls, sites)
    assert copies <= 2, sites               # only the real images and labels come from the host
    assert reads <= aug_calls + 0.1, sites  # one per augment call, plus the non-finite check every 10 steps

# ---------------------------------------------------------------------------------------------
# 4. Non-finite values.


class _NaNAt:
    """A loss term (the distillation extension point) that is NaN at the given steps."""

    def __init__(self, steps, batch=4):
        self.steps, self.batch = set(steps), batch

    def __call__(self, ctx):
        value = ctx.img.mean() * 0
        if ctx.cur_nimg // self.batch in self.steps:
            value = value + float('nan')
        return {'nan_probe': value}


def _finite(module):
    return all(torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point())


def test_transient_nonfinite_loss_is_sanitised_and_counted(data_zip, tmp_path):
    c = _kwargs(data_zip, kimg=0.032, tick=0.008)  # 8 steps, ticks after steps 0, 2, 4, 6, 7
    c.loss_kwargs.terms = [_NaNAt({2})]
    out = _run(tmp_path, c)
    assert out.cur_nimg == 32 and _finite(out.G) and _finite(out.G_ema) and _finite(out.D)
    lines = [json.loads(line) for line in (tmp_path / 'stats.jsonl').read_text().splitlines()]
    counts = [line['Progress/sanitized_steps']['mean'] for line in lines]
    assert counts == [0, 0, 1, 0, 0] or counts == [0, 1, 0, 0, 0], counts
    assert sum(counts) == 1
    # A snapshot after the sanitised step, once a clean step followed it.
    assert (tmp_path / 'network-snapshot-000000.032.pkl').exists()


def test_persistent_nonfinite_loss_stops_with_term_and_step(data_zip, tmp_path):
    c = _kwargs(data_zip, kimg=0.2, tick=0.008)
    c.loss_kwargs.terms = [_NaNAt(range(2, 1000))]
    with pytest.raises(NonFiniteLossError) as info:
        _run(tmp_path, c)
    msg = str(info.value)
    assert 'consecutive steps from step 2' in msg and 'Loss/G/nan_probe (Gmain)' in msg, msg
    assert 'last good snapshot: ' in msg and 'network-snapshot-000000.pkl' in msg, msg
    # Stopped within a check interval of the 10th bad step; no snapshot of the bad stretch.
    state_lines = (tmp_path / 'stats.jsonl').read_text().splitlines()
    last_kimg = json.loads(state_lines[-1])['Progress/kimg']['mean']
    assert 0.044 <= last_kimg <= 0.088, last_kimg
    assert (tmp_path / 'network-snapshot-000000.pkl').exists()
    assert not list(tmp_path.glob('network-snapshot-000000.0*.pkl'))


class _PoisonWeights:
    """A step hook that writes NaN into one weight of G at a given step."""

    def __init__(self, G, step):
        self.G, self.step, self.calls = G, step, 0

    def __call__(self, **_kwargs):
        if self.calls == self.step:
            with torch.no_grad():
                next(self.G.parameters()).view(-1)[0] = float('nan')
        self.calls += 1


def test_nonfinite_weights_stop_the_run(data_zip, tmp_path):
    c = _kwargs(data_zip, kimg=0.2, tick=0.008)
    c.step_hooks = [dict(class_name=f'{__name__}._PoisonHook', step=3)]
    with pytest.raises(NonFiniteLossError) as info:
        _run(tmp_path, c)
    msg = str(info.value)
    # Poisoned after step 3; found at the next check (the tick after step 4), before any snapshot.
    assert 'non-finite weights after step 4' in msg and 'last good snapshot: ' in msg, msg
    assert msg.endswith('network-snapshot-000000.012.pkl'), msg
    assert not list(tmp_path.glob('network-snapshot-000000.0[2-9]*.pkl'))


class _PoisonHook(_PoisonWeights):
    def __init__(self, device, networks, step):
        super().__init__(networks.G, step)

# ---------------------------------------------------------------------------------------------
# 6. Table 6d: power iteration.


def test_spectral_norm_hook_is_power_iteration(nets, monkeypatch):  # noqa: F811 (fixture)
    G = pickle.loads(pickle.dumps(nets.teacher)).requires_grad_(False)
    hook = student_init.SpectralNormHook('cpu', dnnlib.EasyDict(G=G))
    for name in ('svd', 'svdvals', 'matrix_norm', 'norm'):  # no exact SVD per step
        monkeypatch.setattr(torch.linalg, name, lambda *a, **k: pytest.fail('exact SVD in the step hook'))
    params = dict(G.named_parameters())
    rng = torch.Generator().manual_seed(5)
    for step in range(3):
        for name in hook.names:  # the weights move a little between steps, as in training
            params[name].add_(torch.randn(params[name].shape, generator=rng) * 1e-4)
        hook(cur_nimg=4 * (step + 1), batch_size=4, total_kimg=1)
    monkeypatch.undo()
    for name in hook.names:
        W = params[name].reshape(params[name].shape[0], -1).double()
        sigma = float(torch.linalg.matrix_norm(W, ord=2))
        assert abs(sigma - 1) < 1e-2, (name, sigma)
    # The vectors u are the hook's state: an exact resume restores them.
    again = student_init.SpectralNormHook('cpu', dnnlib.EasyDict(G=G), init_iterations=1)
    again.load_state_dict(hook.state_dict())
    for name in hook.names:
        assert torch.equal(again.u[name], hook.u[name])
    assert math.isfinite(float(np.sum([float(u.sum()) for u in hook.u.values()])))
