"""Diffusion training losses, on the discrete-time process of a stage's own scheduler.

Notation of Ho et al. 2020 (DDPM) and Nichol & Dhariwal 2021 (Improved DDPM): β_t, α_t = 1 − β_t,
ᾱ_t = ∏ α_s, q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), SNR(t) = ᾱ_t / (1 − ᾱ_t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler, SchedulerMixin

from unclip.schedulers import SCHEDULERS


@dataclass
class Process:
    """The forward process q of a stage, with the posterior terms the hybrid loss needs."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    prediction_type: str

    @classmethod
    def of(cls, reference: SchedulerMixin) -> Process:
        ddpm: DDPMScheduler = SCHEDULERS["ddpm"](reference)  # the reference's betas, in DDPM's form
        return cls(ddpm.betas.double(), ddpm.alphas_cumprod.double(), ddpm.config.prediction_type)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = values.to(t.device)[t].to(like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4)."""
        a = self._at(self.alphas_cumprod, t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the model predicts: ε, x_0 ("sample") or v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        a = self._at(self.alphas_cumprod, t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(t.device)[t]
        return (a / (1 - a)).float()

    def min_snr_weight(self, t: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-γ (Hang et al. 2023, eq. 9), expressed for the model's prediction type."""
        snr = self.snr(t)
        clipped = snr.clamp(max=gamma)
        if self.prediction_type == "epsilon":
            return clipped / snr
        if self.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped

    def vlb_term(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """L_t of the variational bound in bits per dimension, per sample (Improved DDPM §3.1).

        The model's variance interpolates log β_t and log β̃_t with v ∈ [−1, 1] (eq. 15); its mean comes
        from the ε passed in, which the caller detaches so that L_vlb trains only the variance (§3.1).
        At t = 0 the term is the discretised Gaussian decoder NLL L_0 (DDPM §3.3).
        """
        x0, x_t, eps, v = (z.double() for z in (x0, x_t, eps, v))
        a_bar_prev_table = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        posterior_var = self.betas * (1 - a_bar_prev_table) / (1 - self.alphas_cumprod)  # β̃_t, DDPM eq. 7
        # β̃_0 = 0: log β̃_1 stands in at t = 0, as Improved DDPM's posterior_log_variance_clipped does
        posterior_log_var = torch.cat([posterior_var[1:2], posterior_var[1:]]).log()
        a_bar = self._at(self.alphas_cumprod, t, x0)
        a_bar_prev = self._at(a_bar_prev_table, t, x0)
        beta = self._at(self.betas, t, x0)
        min_log = self._at(posterior_log_var, t, x0)
        max_log = beta.log()
        frac = (v + 1) / 2
        model_log_var = frac * max_log + (1 - frac) * min_log

        def mean(x_start: torch.Tensor) -> torch.Tensor:  # μ̃_t(x_t, x_0), DDPM eq. 7
            c0 = a_bar_prev.sqrt() * beta / (1 - a_bar)
            ct = (1 - beta).sqrt() * (1 - a_bar_prev) / (1 - a_bar)
            return c0 * x_start + ct * x_t

        x0_pred = (x_t - (1 - a_bar).sqrt() * eps) / a_bar.sqrt()
        true_mean, model_mean = mean(x0), mean(x0_pred)
        true_log_var = min_log
        kl = 0.5 * (
            -1.0
            + model_log_var
            - true_log_var
            + (true_log_var - model_log_var).exp()
            + (true_mean - model_mean) ** 2 * (-model_log_var).exp()
        )
        kl = kl.flatten(1).mean(1) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1)
        nll = nll / math.log(2.0)
        return torch.where(t == 0, nll, kl).float()


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x) of images in [−1, 1] with 256 bins under N(means, exp(log_scales)²) (DDPM eq. 13)."""
    centered = x - means
    inv_std = (-log_scales).exp()
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, cdf_delta.clamp(min=1e-12).log()),
    )
