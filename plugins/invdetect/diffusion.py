"""The DDIM part of InvDetect: a small time-conditioned U-Net, DDPM training and batched DDIM inversion.

diffusers provides the U-Net (``UNet2DModel``) and the schedulers (``DDIMScheduler`` for generation,
``DDIMInverseScheduler`` for inversion); this module only wires them together so that every patch of
every slice in a batch moves through one U-Net call per step. Both schedulers use "trailing" timestep
spacing so that, whatever the number of steps, the inversion ends at t = T − 1 (pure noise level) and
its timesteps are exactly the generator's in reverse: generation after inversion is then the same
discretisation run backwards (this is what the round-trip test checks).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from ...engine.progress import CancelToken, ProgressCallback, check, report

# diffusers brings huggingface_hub; nothing here loads pretrained weights, and nothing may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def make_unet(patch_size: int, channels: tuple[int, ...], layers_per_block: int, norm_groups: int) -> Any:
    """A time-conditioned U-Net with one encoder–decoder stage per entry of ``channels``.

    No attention blocks: on 32² patches they cost more than they bring, and the paper's noise predictor
    (Song et al.'s DDIM U-Net, four stages) is sized for GPUs. ``channels`` small keeps CPU inversion fast.
    """
    from diffusers import UNet2DModel

    n = len(channels)
    return UNet2DModel(
        sample_size=patch_size, in_channels=1, out_channels=1,
        down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
        block_out_channels=tuple(channels), layers_per_block=layers_per_block,
        norm_num_groups=norm_groups, add_attention=False,
    )


def schedulers(num_train_timesteps: int) -> tuple[Any, Any]:
    """(generation, inversion) schedulers sharing the linear β schedule of DDPM, without x₀ clipping.

    Clipping the predicted x₀ (diffusers' default) is a sampling aid; in inversion it would make the map
    non-invertible, so it is off in both directions.
    """
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    common = {"num_train_timesteps": num_train_timesteps, "beta_schedule": "linear", "clip_sample": False,
              "timestep_spacing": "trailing", "set_alpha_to_one": True}
    return DDIMScheduler(**common), DDIMInverseScheduler(**common)


def _eps(unet: Any, x: torch.Tensor, t: int | torch.Tensor, amp: bool) -> torch.Tensor:
    """One U-Net call; bf16 autocast on CUDA when asked (output back in float32 for the scheduler)."""
    if amp and x.device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return unet(x, t).sample.float()
    return unet(x, t).sample


def ddpm_loss(unet: Any, scheduler: Any, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The DDPM objective ‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖², t uniform over the T training steps."""
    n = len(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    t, noise = t.to(x0.device), noise.to(x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    return F.mse_loss(unet(noisy, t).sample.float(), noise)


@torch.no_grad()
def ddim_invert(unet: Any, inverse: Any, x0: torch.Tensor, steps: int, amp: bool = False,
                cancel: CancelToken | None = None, progress: ProgressCallback | None = None) -> torch.Tensor:
    """Deterministic DDIM inversion of a batch of patches (in [−1, 1]) to their noise latents x_{T−1}.

    The whole batch moves through one U-Net call per step; ``cancel`` is checked between steps.
    """
    inverse.set_timesteps(steps)
    x = x0
    timesteps = inverse.timesteps
    for i, t in enumerate(timesteps):
        check(cancel)
        eps = _eps(unet, x, t.to(x.device), amp)
        x = inverse.step(eps, int(t), x).prev_sample
        report(progress, (i + 1) / len(timesteps), f"DDIM inversion step {i + 1}/{len(timesteps)}")
    return x


@torch.no_grad()
def ddim_generate(unet: Any, scheduler: Any, z: torch.Tensor, steps: int, amp: bool = False) -> torch.Tensor:
    """Deterministic DDIM generation (η = 0) from noise latents: the inverse of ``ddim_invert``."""
    scheduler.set_timesteps(steps)
    x = z
    for t in scheduler.timesteps:
        eps = _eps(unet, x, t.to(x.device), amp)
        x = scheduler.step(eps, int(t), x, eta=0.0).prev_sample
    return x
