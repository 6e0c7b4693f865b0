"""DDPM training / fine-tuning (Diff-Pruning's and ddim's recipe) on the conventions of the GAN loop.

Shared with ``training/training_loop.py`` (imported, not copied): the slot sampler and per-slot seeds
(N processes = 1 process, bit for bit), snapshot tags and file names, ``training-state-<tag>.pt``
beside each snapshot (``--resume latest``), RNG-state capture, stats.jsonl/TensorBoard outputs
(``open_stats_outputs``), ``training_stats`` ticks, sample-grid PNGs, multi-rank stop on error.

Recipe (Table 3): Adam lr 2e-4, betas (0.9, 0.999), eps 1e-8, no weight decay, gradient-norm clip
1.0, dropout 0.1, random horizontal flips, EMA 0.9999 every step (no ramp-up), antithetic timesteps,
loss summed over pixels and averaged over the (global) batch. Snapshots are weights-only torch
files (``network-snapshot-<tag>.pkl``, see ``training/ddpm_checkpoints.py``) holding the UNet, its
EMA, the schedule and the progress counters.
"""
import copy
import json
import os
import time

import numpy as np
import psutil
import torch

import dnnlib
from torch_utils import distributed
from torch_utils import training_stats
from training import ddpm_checkpoints
from training import diffusion as diff
from training import training_loop as tl

_CONFIG_KEYS = ('batch_size', 'batch_gpu', 'random_seed', 'ema_beta', 'lr', 'grad_clip', 'dropout', 'xflip', 'kimg_per_tick')


def set_dropout_(unet, p):
    for m in unet.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = float(p)


def _grid_noise(grid_size, unet, seed):
    res, ch = int(unet.config.sample_size), int(unet.config.in_channels)
    return torch.from_numpy(np.random.RandomState(seed).randn(grid_size[0] * grid_size[1], ch, res, res).astype(np.float32))


def _sample_grid(unet_ema, schedule, noise, steps, skip_type, batch):
    out = [diff.ddim_sample(unet_ema, schedule, x, steps=steps, skip_type=skip_type) for x in noise.split(batch)]
    return torch.cat(out).cpu().numpy()


@distributed.stop_all_ranks_on_error
def ddpm_training_loop(
    run_dir                 = '.',      # Output directory.
    training_set_kwargs     = {},       # Options for the training set.
    data_loader_kwargs      = {},       # Options for torch.utils.data.DataLoader.
    network                 = None,     # Starting network: a DDPM source (load_ddpm) ...
    arch                    = None,     # ... or a preset / config dict to train from scratch.
    schedule                = None,     # Noise schedule kwargs (diffusion.make_schedule); None = the network's or ddim's.
    random_seed             = 0,
    num_gpus                = 1,
    rank                    = 0,
    batch_size              = 128,
    batch_gpu               = 32,
    lr                      = 2e-4,
    betas                   = (0.9, 0.999),
    eps                     = 1e-8,
    grad_clip               = 1.0,      # Max gradient norm; None = off.
    ema_beta                = 0.9999,
    dropout                 = 0.1,
    xflip                   = True,     # Random horizontal flips.
    total_kimg              = 1000,
    kimg_per_tick           = 4,
    image_snapshot_ticks    = 50,
    network_snapshot_ticks  = 50,
    grid_size               = (8, 4),
    sample_steps            = 100,      # DDIM steps of the sample grids.
    skip_type               = 'uniform',
    resume_pkl              = None,     # Our DDPM snapshot to continue from.
    resume_state            = None,     # Its training-state-*.pt (exact resume).
    device                  = None,
    progress_fn             = None,
):
    start_time = time.time()
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    is_main = rank == 0
    log = print if is_main else (lambda *_a, **_k: None)
    if batch_size % (batch_gpu * num_gpus) != 0:
        raise dnnlib.util.UserError(f'batch {batch_size} is not a multiple of batch_gpu {batch_gpu} x {num_gpus} processes')
    rounds = batch_size // (batch_gpu * num_gpus)
    torch.manual_seed(random_seed)

    training_set = dnnlib.util.construct_class_by_name(**training_set_kwargs)
    if len(training_set) == 0:
        raise dnnlib.util.UserError(f'{training_set_kwargs.get("path")}: the training set is empty')
    sampler = tl.SlotSampler(training_set, rank=rank, num_replicas=num_gpus, batch_gpu=batch_gpu, seed=random_seed)
    log(f'Num images: {len(training_set)}, shape {training_set.image_shape}')

    # Networks: weights from the resume snapshot, the starting network, or a fresh architecture.
    state = tl.load_training_state(resume_state) if resume_state is not None else None
    source = resume_pkl or network
    if source is not None:
        loaded = ddpm_checkpoints.load_ddpm(source)
        unet = loaded.unet
        unet_ema = loaded.unet_ema if (resume_pkl is not None and loaded.unet_ema is not None) else copy.deepcopy(unet)
        schedule = dnnlib.EasyDict(schedule or loaded.diffusion or diff.make_schedule())
    elif arch is not None:
        unet = ddpm_checkpoints.build_unet(arch)
        unet_ema = copy.deepcopy(unet)
        schedule = dnnlib.EasyDict(schedule or diff.make_schedule())
    else:
        raise dnnlib.util.UserError('DDPM training needs a starting network or an architecture')
    schedule = diff.make_schedule(**schedule)
    res = int(unet.config.sample_size)
    if training_set.resolution != res or training_set.num_channels != unet.config.in_channels:
        raise dnnlib.util.UserError(f'the network makes {unet.config.in_channels}x{res}x{res} images but the training set has '
                                    f'{training_set.num_channels}x{training_set.resolution}x{training_set.resolution}')
    set_dropout_(unet, dropout)
    unet = unet.train().requires_grad_(True).to(device)
    unet_ema = unet_ema.eval().requires_grad_(False).to(device)
    if num_gpus > 1:
        for t in list(unet.parameters()) + list(unet_ema.parameters()):
            torch.distributed.broadcast(t.data, src=0)
    params = list(unet.parameters())
    opt = torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=0)

    cur_nimg = cur_tick = batch_idx = 0
    tick_start_nimg, prev_tick_nimg, elapsed_before, stats_lines = 0, None, 0.0, 0
    stats_collector = training_stats.Collector(regex='.*')
    if state is not None:
        for key in _CONFIG_KEYS:
            if key in state.get('config', {}) and state['config'][key] != locals()[key]:
                log(f'  warning: {key} was {state["config"][key]} in the saved run, now {locals()[key]}; the resume is not exact')
        opt.load_state_dict(state['optimizers']['unet'])
        if state.get('stats') is not None:
            stats_collector.load_state_dict(state['stats'], restore_pending=is_main)
        cur_nimg, cur_tick, batch_idx = state['cur_nimg'], state['cur_tick'], state['batch_idx']
        tick_start_nimg, prev_tick_nimg = state['tick_start_nimg'], state['prev_tick_nimg']
        elapsed_before, stats_lines = state.get('elapsed_sec', 0.0), state['stats_lines']
        if is_main:
            tl._set_rng_state(state['rng'], device)
        log(f'  restored: kimg {cur_nimg / 1000:g}, tick {cur_tick}, step {batch_idx}, optimizer, RNG, data position')
    sampler.start_idx = batch_idx * batch_size
    iterator = iter(torch.utils.data.DataLoader(training_set, sampler=sampler, batch_size=batch_gpu, **data_loader_kwargs))

    stats_jsonl = stats_tfevents = None
    grid_noise = None
    if is_main:
        os.makedirs(run_dir, exist_ok=True)
        stats_jsonl, stats_tfevents, stats_lines = tl.open_stats_outputs(run_dir, resume_state, stats_lines, cur_nimg, log)
        if image_snapshot_ticks:
            grid_noise = _grid_noise(grid_size, unet, random_seed)

    log(f'Training for {total_kimg:g} kimg...')
    tick_start_time = time.time()
    start_time = tick_start_time - elapsed_before
    last_snapshot = None
    while True:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        grads = None
        for round_idx in range(rounds):
            img, _c = next(iterator)
            slot = round_idx * num_gpus + rank
            gen = torch.Generator().manual_seed(tl.slot_seed(random_seed, batch_idx, 0, slot))
            x0 = img.to(torch.float32) / 127.5 - 1
            if xflip:
                flip = torch.rand(x0.shape[0], generator=gen) < 0.5
                x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(3), x0)
            noise = torch.randn(x0.shape, generator=gen)
            t = diff.antithetic_timesteps(x0.shape[0], schedule.num_timesteps, gen)
            torch.manual_seed(tl.slot_seed(random_seed, batch_idx, 1, slot))  # dropout masks
            per_sample = diff.diffusion_loss(unet, schedule, x0.to(device), t, noise.to(device))
            training_stats.report('Loss/diffusion', per_sample)
            (per_sample.sum() / batch_size).backward()
            # Sum each slot's gradient separately (0 + g0 + g1 ...), like the all-reduce over ranks.
            if grads is None:
                grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
            else:
                for g, p in zip(grads, params):
                    if p.grad is not None:
                        g.add_(p.grad)
            for p in params:
                p.grad = None
        flat = torch.cat([g.flatten() for g in grads])
        if num_gpus > 1:
            torch.distributed.all_reduce(flat)
        if not torch.isfinite(flat).all():
            raise dnnlib.util.UserError(f'non-finite gradient at step {batch_idx}; last good snapshot: {last_snapshot or "none"}')
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.reshape(p.shape)
        if grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            training_stats.report('Loss/grad_norm', norm)
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(unet_ema.parameters(), params):
                p_ema.copy_(p.detach().lerp(p_ema, ema_beta))
        if device.type != 'cuda':
            training_stats.report('Timing/step', time.perf_counter() - t0)
        cur_nimg += batch_size
        batch_idx += 1

        done = cur_nimg >= total_kimg * 1000
        if not done and cur_tick != 0 and cur_nimg < tick_start_nimg + kimg_per_tick * 1000:
            continue

        tick_end_time = time.time()
        sec_per_kimg = (tick_end_time - tick_start_time) / max(cur_nimg - tick_start_nimg, 1) * 1e3
        fields = [f"tick {training_stats.report0('Progress/tick', cur_tick):<5d}",
                  f"kimg {training_stats.report0('Progress/kimg', cur_nimg / 1e3):<8.3f}",
                  f"time {dnnlib.util.format_time(training_stats.report0('Timing/total_sec', tick_end_time - start_time)):<12s}",
                  f"sec/kimg {training_stats.report0('Timing/sec_per_kimg', sec_per_kimg):<7.2f}",
                  f"cpumem {training_stats.report0('Resources/cpu_mem_gb', psutil.Process(os.getpid()).memory_info().rss / 2**30):<6.2f}"]
        log(' '.join(fields))
        tag = tl.snapshot_tag(cur_nimg, prev_tick_nimg)

        if is_main and image_snapshot_ticks and (done or cur_tick % image_snapshot_ticks == 0):
            images = _sample_grid(unet_ema, schedule, grid_noise.to(device), sample_steps, skip_type, batch_gpu)
            tl.save_image_grid(images, os.path.join(run_dir, f'fakes{tag}.png'), drange=[-1, 1], grid_size=grid_size)

        snapshot_pkl = None
        if network_snapshot_ticks and (done or cur_tick % network_snapshot_ticks == 0):
            snapshot_pkl = os.path.join(run_dir, f'network-snapshot-{tag}.pkl')
            if is_main:
                ddpm_checkpoints.save_snapshot(snapshot_pkl, unet=unet, unet_ema=unet_ema, diffusion=schedule,
                                               training_set_kwargs=json.loads(json.dumps(training_set_kwargs)),
                                               progress=dict(cur_nimg=cur_nimg, cur_tick=cur_tick, batch_idx=batch_idx))

        stats_collector.update()
        stats_dict = stats_collector.as_dict()
        stats_lines += tl.write_tick_stats(stats_jsonl, stats_tfevents, stats_dict, cur_nimg, start_time)
        if progress_fn is not None:
            progress_fn(cur_nimg // 1000, total_kimg)

        stats_state = stats_collector.state_dict() if snapshot_pkl is not None else None  # a collective: every rank
        if snapshot_pkl is not None and is_main:
            scope = locals()
            train_state = dict(
                version=tl.STATE_VERSION, family='ddpm', config={k: scope[k] for k in _CONFIG_KEYS},
                optimizers=dict(unet=opt.state_dict()), stats=stats_state,
                cur_nimg=cur_nimg, cur_tick=cur_tick + 1, batch_idx=batch_idx,
                tick_start_nimg=cur_nimg, prev_tick_nimg=cur_nimg, elapsed_sec=time.time() - start_time,
                stats_lines=stats_lines, rng=tl._rng_state(device), snapshot_pkl=os.path.basename(snapshot_pkl))
            with dnnlib.util.atomic_open(tl.state_path_for(snapshot_pkl), 'wb') as f:
                torch.save(train_state, f)
            last_snapshot = snapshot_pkl

        cur_tick += 1
        tick_start_nimg = prev_tick_nimg = cur_nimg
        tick_start_time = time.time()
        if done:
            break

    if stats_jsonl is not None:
        stats_jsonl.close()
    if stats_tfevents is not None:
        stats_tfevents.close()
    log('Exiting...')
    return dnnlib.EasyDict(unet=unet, unet_ema=unet_ema, schedule=schedule, cur_nimg=cur_nimg, last_snapshot=last_snapshot)
