"""DDPM noise schedule, training loss and DDIM sampling (ermongroup/ddim conventions).

- Linear betas 1e-4 .. 0.02 over 1000 steps (float64 cumulative products, as ddim).
- Loss: eps-prediction, squared error SUMMED over pixels and AVERAGED over the batch, timesteps
  drawn antithetically (t and T-1-t), as ddim's ``noise_estimation_loss``.
- DDIM (``generalized_steps``): ``steps`` timesteps spaced ``uniform`` (range(0, T, T//steps)) or
  ``quad`` (linspace(0, sqrt(0.8 T), steps)^2), eta 0 by default.
- ``DDIMGenerator`` wraps a UNet as a generator ``G(z, c)`` whose latent z is the initial noise x_T,
  so every tool built for GANs (generate.py, the metrics engine, PSNR/SSIM agreement) runs DDPMs and
  two models given the same seeds start from identical noise.
"""
import numpy as np
import torch

import dnnlib
from dnnlib.util import UserError

SKIP_TYPES = ('uniform', 'quad')


def make_schedule(num_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule='linear'):
    if beta_schedule != 'linear':
        raise UserError(f'unknown beta schedule {beta_schedule!r} (only linear)')
    if not (int(num_timesteps) >= 1 and 0 < beta_start <= beta_end < 1):
        raise UserError(f'bad noise schedule: {num_timesteps} steps, betas {beta_start}..{beta_end}')
    return dnnlib.EasyDict(num_timesteps=int(num_timesteps), beta_start=float(beta_start), beta_end=float(beta_end),
                           beta_schedule='linear')


def alphas_cumprod(schedule):
    betas = torch.linspace(schedule.beta_start, schedule.beta_end, schedule.num_timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def q_sample(schedule, x0, t, noise):
    a = alphas_cumprod(schedule).to(x0.device)[t].to(torch.float32).view(-1, 1, 1, 1)
    return x0 * a.sqrt() + noise * (1 - a).sqrt()


def antithetic_timesteps(n, num_timesteps, generator):
    t = torch.randint(0, num_timesteps, (n // 2 + 1,), generator=generator)
    return torch.cat([t, num_timesteps - t - 1])[:n]


def diffusion_loss(unet, schedule, x0, t, noise):
    """Per-sample loss [N]: ||eps - eps_theta(x_t, t)||^2 summed over pixels."""
    x_t = q_sample(schedule, x0, t.to(x0.device), noise)
    out = unet(x_t, t.to(x0.device)).sample
    return (noise - out).square().sum(dim=(1, 2, 3))


def ddim_timesteps(num_timesteps, steps, skip_type='uniform'):
    if skip_type not in SKIP_TYPES:
        raise UserError(f'--skip-type: expected one of {", ".join(SKIP_TYPES)}, got {skip_type!r}')
    if not (1 <= int(steps) <= num_timesteps):
        raise UserError(f'--steps: expected 1..{num_timesteps}, got {steps}')
    if skip_type == 'uniform':
        return list(range(0, num_timesteps, num_timesteps // int(steps)))
    return [int(s) for s in np.linspace(0, np.sqrt(num_timesteps * 0.8), int(steps)) ** 2]


@torch.no_grad()
def ddim_sample(unet, schedule, x_T, steps=100, skip_type='uniform', eta=0.0, generator=None):
    """x_T [N, C, H, W] -> x_0 in [-1, 1] by DDIM (ddim's generalized_steps; eta 0 = deterministic)."""
    seq = ddim_timesteps(schedule.num_timesteps, steps, skip_type)
    a_all = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod(schedule)])  # a_all[t + 1] = alpha_bar_t
    x = x_T.to(torch.float32)
    for i, j in zip(reversed(seq), reversed([-1] + seq[:-1])):
        at, at_next = a_all[i + 1], a_all[j + 1]
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        eps = unet(x, t).sample
        x0 = (x - eps * float((1 - at).sqrt())) / float(at.sqrt())
        c1 = eta * float(((1 - at / at_next) * (1 - at_next) / (1 - at)).sqrt())
        c2 = float((1 - at_next - c1 ** 2).sqrt())
        noise = torch.randn(x.shape, generator=generator).to(x.device) if c1 > 0 else 0
        x = float(at_next.sqrt()) * x0 + c1 * noise + c2 * eps
    return x.clamp(-1, 1)


class DDIMGenerator(torch.nn.Module):
    """A UNet + schedule + DDIM settings, called like a StyleGAN generator: ``G(z, c) -> images``.

    z [N, C*H*W] is the initial noise (seed s: the z of ``image_synthesis.latents_for_seeds``);
    truncation and noise_mode arguments are accepted and ignored."""

    def __init__(self, unet, schedule=None, steps=100, skip_type='uniform', eta=0.0):
        super().__init__()
        self.unet = unet
        self.schedule = dnnlib.EasyDict(schedule or make_schedule())
        self.steps, self.skip_type, self.eta = int(steps), skip_type, float(eta)
        ddim_timesteps(self.schedule.num_timesteps, self.steps, skip_type)  # validate now
        self.img_resolution = int(unet.config.sample_size)
        self.img_channels = int(unet.config.in_channels)
        self.z_dim = self.img_channels * self.img_resolution ** 2
        self.c_dim = 0

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, noise_mode='const', **_kwargs):
        x_T = z.reshape(z.shape[0], self.img_channels, self.img_resolution, self.img_resolution)
        gen = torch.Generator().manual_seed(int(z.flatten()[:8].abs().sum().item() * 1e6) % (1 << 62)) if self.eta > 0 else None
        return ddim_sample(self.unet, self.schedule, x_T, self.steps, self.skip_type, self.eta, gen)
