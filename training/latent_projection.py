"""Project an image into W (stylegan2-ada-pytorch's ``projector.py``, Karras et al. 2020, Sec. 5).

Optimise one w (broadcast to every layer) and the constant noise buffers with Adam so that the
generated image's VGG16 LPIPS embedding (NVIDIA's ``vgg16.pt``, ``return_lpips=True``) matches the
target's: start at the mean of 10k mapped latents (RandomState(123)); add decaying Gaussian noise
to w (``w_std * 0.05``, quadratic ramp over the first 75 % of steps); cosine learning-rate
ramp-down over the last 25 % and linear ramp-up over the first 5 % (peak 0.1); penalise spatial
autocorrelation of each noise map at every scale down to 8x8 (weight 1e5) and renormalise the noise
to zero mean, unit variance after each step. Images over 256 px are area-downsampled to 256 first.
"""
import copy

import numpy as np
import torch
import torch.nn.functional as F

import dnnlib


def _lpips_input(img, channels):
    """[-1, 1] generator output -> [0, 255] RGB at most 256 px, as the VGG16 embedding wants it."""
    img = (img + 1) * (255 / 2)
    if channels == 1:
        img = img.repeat([1, 3, 1, 1])
    if img.shape[2] > 256:
        img = F.interpolate(img, size=(256, 256), mode='area')
    return img


def noise_regularization(noise_bufs):
    """Sum over noise maps and scales (down to 8x8) of the squared mean autocorrelation with a
    one-pixel shift along x and along y."""
    reg = 0.0
    for v in noise_bufs:
        noise = v[None, None, :, :]
        while True:
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=3)).mean() ** 2
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=2)).mean() ** 2
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return reg


def learning_rate(step, num_steps, initial_learning_rate=0.1, lr_rampdown_length=0.25, lr_rampup_length=0.05):
    t = step / num_steps
    ramp = min(1.0, (1.0 - t) / lr_rampdown_length)
    ramp = 0.5 - 0.5 * np.cos(ramp * np.pi)
    return initial_learning_rate * ramp * min(1.0, t / lr_rampup_length)


def project(G, target, vgg16, *, num_steps=1000, w_avg_samples=10000, initial_learning_rate=0.1,
            initial_noise_factor=0.05, lr_rampdown_length=0.25, lr_rampup_length=0.05, noise_ramp_length=0.75,
            regularize_noise_weight=1e5, device='cpu', log=None):
    """W of every step, [num_steps, num_ws, w_dim], for a uint8-range target [C, H, W] at G's resolution.

    ``vgg16``: the TorchScript VGG16 (``detectors.load_detector('vgg16')``). Random draws use torch's
    global RNG (seed it, as projector.py's --seed does). ``log(step, dist, loss)`` reports progress.
    """
    target = torch.as_tensor(target)
    expected = (G.img_channels, G.img_resolution, G.img_resolution)
    if tuple(target.shape) != expected:
        raise dnnlib.util.UserError(f'target: shape {tuple(target.shape)}, the network needs {expected}')
    if num_steps < 1:
        raise dnnlib.util.UserError(f'--num-steps: must be positive, got {num_steps}')
    device = torch.device(device)
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device).float()

    with torch.no_grad():
        z = torch.from_numpy(np.random.RandomState(123).randn(w_avg_samples, G.z_dim)).float().to(device)
        c = torch.zeros([w_avg_samples, G.c_dim], device=device)
        w_samples = G.mapping(z, c)[:, :1, :].cpu().numpy().astype(np.float32)  # [N, 1, C]
    w_avg = np.mean(w_samples, axis=0, keepdims=True)
    w_std = (np.sum((w_samples - w_avg) ** 2) / w_avg_samples) ** 0.5

    noise_bufs = {name: buf for name, buf in G.synthesis.named_buffers() if 'noise_const' in name}
    with torch.no_grad():
        target_features = vgg16(_lpips_input(target[None].to(device).float() / 127.5 - 1, G.img_channels),
                                resize_images=False, return_lpips=True)

    w_opt = torch.tensor(w_avg, dtype=torch.float32, device=device, requires_grad=True)
    w_out = torch.zeros([num_steps] + list(w_opt.shape[1:]), dtype=torch.float32)
    optimizer = torch.optim.Adam([w_opt] + list(noise_bufs.values()), betas=(0.9, 0.999), lr=initial_learning_rate)
    with torch.no_grad():
        for buf in noise_bufs.values():
            buf[:] = torch.randn_like(buf)
    for buf in noise_bufs.values():
        buf.requires_grad = True

    for step in range(num_steps):
        t = step / num_steps
        w_noise_scale = w_std * initial_noise_factor * max(0.0, 1.0 - t / noise_ramp_length) ** 2
        lr = learning_rate(step, num_steps, initial_learning_rate, lr_rampdown_length, lr_rampup_length)
        for group in optimizer.param_groups:
            group['lr'] = lr
        ws = (w_opt + torch.randn_like(w_opt) * w_noise_scale).repeat([1, G.num_ws, 1])
        synth = G.synthesis(ws, noise_mode='const')
        synth_features = vgg16(_lpips_input(synth, G.img_channels), resize_images=False, return_lpips=True)
        dist = (target_features - synth_features).square().sum()
        loss = dist + noise_regularization(noise_bufs.values()) * regularize_noise_weight
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log is not None:
            log(step + 1, float(dist.detach()), float(loss.detach()))
        w_out[step] = w_opt.detach()[0].cpu()
        with torch.no_grad():
            for buf in noise_bufs.values():
                buf -= buf.mean()
                buf *= buf.square().mean().rsqrt()
    return w_out.repeat([1, G.num_ws, 1]), {name: buf.detach().cpu() for name, buf in noise_bufs.items()}
