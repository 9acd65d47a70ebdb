"""k-diffusion's samplers as A1111 1.10 runs them (k-diffusion 0.0.16, A1111's Restart and LCM), written compactly.

Each function takes ``model(x, sigma) -> denoised`` (CFG already applied), the starting ``x`` and the sigma schedule,
and a :class:`Run` holding A1111's sampler settings and its noise: ``run.noise()`` is the next draw of the
per-image streams (A1111 routes k-diffusion's ``torch.randn_like`` there), ``run.brownian(s, s_next)`` the
Brownian-tree noise of the SDE samplers. The arithmetic is k-diffusion's, operation for operation, so results
match A1111's to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from scipy import integrate

from hypernet.sampling.schedules import karras

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step, x, denoised)


@dataclass
class Run:
    """Per-call settings and noise of one sampling run."""

    noise: Callable[[], torch.Tensor]
    brownian: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    eta: float = 1.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    callback: Callback | None = None
    info: dict[str, int] = field(default_factory=dict)

    def report(self, i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback(i, x, denoised)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    return (x - denoised) / sigma  # A1111's replacement: no append_dims


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0) -> tuple:
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def _ones(x: torch.Tensor) -> torch.Tensor:
    return x.new_ones([x.shape[0]])


def _churn(x: torch.Tensor, sigmas: torch.Tensor, i: int, run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """Karras' "churn": optionally raise the noise level before the step (off with A1111's defaults)."""
    gamma = min(run.s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if run.s_tmin <= sigmas[i] <= run.s_tmax else 0.0
    eps = run.noise() * run.s_noise  # drawn on every step, as k-diffusion does: it advances the streams
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def euler(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, run)
        denoised = model(x, sigma_hat * _ones(x))
        run.report(i, x, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


def euler_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], run.eta)
        run.report(i, x, denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + run.noise() * run.s_noise * sigma_up
    return x


def heun(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, run)
        denoised = model(x, sigma_hat * _ones(x))
        d = to_d(x, sigma_hat, denoised)
        run.report(i, x, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * _ones(x)))
            x = x + (d + d_2) / 2 * dt
    return x


def dpm_2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, run)
        denoised = model(x, sigma_hat * _ones(x))
        d = to_d(x, sigma_hat, denoised)
        run.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * _ones(x)))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


def dpm_2_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], run.eta)
        run.report(i, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * _ones(x)))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + run.noise() * run.s_noise * sigma_up
    return x


def _lms_coeff(order: int, t: object, i: int, j: int) -> float:
    def fn(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod
    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def lms(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run, order: int = 4) -> torch.Tensor:
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:]
        run.report(i, x, denoised)
        cur = min(i + 1, order)
        coeffs = [_lms_coeff(cur, sigmas_cpu, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def _sigma_fn(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _t_fn(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def dpmpp_2s_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], run.eta)
        run.report(i, x, denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, _sigma_fn(s) * _ones(x))
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + run.noise() * run.s_noise * sigma_up
    return x


def dpmpp_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run, r: float = 0.5) -> torch.Tensor:
    assert run.brownian is not None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        run.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = ancestral_step(_sigma_fn(t), _sigma_fn(s), run.eta)
        s_ = _t_fn(sd)
        x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + run.brownian(_sigma_fn(t), _sigma_fn(s)) * run.s_noise * su
        denoised_2 = model(x_2, _sigma_fn(s) * _ones(x))
        sd, su = ancestral_step(_sigma_fn(t), _sigma_fn(t_next), run.eta)
        t_next_ = _t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + run.brownian(_sigma_fn(t), _sigma_fn(t_next)) * run.s_noise * su
    return x


def dpmpp_2m(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run) -> torch.Tensor:
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        run.report(i, x, denoised)
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t_fn(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def dpmpp_2m_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run,
                 solver_type: str = "midpoint") -> torch.Tensor:
    assert run.brownian is not None
    old_denoised, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        run.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = run.eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if run.eta:
                x = x + run.brownian(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (
                    -2 * eta_h).expm1().neg().sqrt() * run.s_noise
        old_denoised, h_last = denoised, h
    return x


def dpmpp_2m_sde_heun(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run) -> torch.Tensor:
    return dpmpp_2m_sde(model, x, sigmas, run, solver_type="heun")


def dpmpp_3m_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run) -> torch.Tensor:
    assert run.brownian is not None
    denoised_1 = denoised_2 = h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        run.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (run.eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if run.eta:
                x = x + run.brownian(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (
                    -2 * h * run.eta).expm1().neg().sqrt() * run.s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def restart(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run) -> torch.Tensor:
    """A1111's Restart sampler: Heun steps, plus (from 20 steps) a jump back up from sigma 0.1 to 2."""
    steps = sigmas.shape[0] - 1
    restart_list: dict[float, list[int]] = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    by_index = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    step_list = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in by_index:
            restart_steps, restart_times, restart_max = by_index[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                sub = karras(restart_steps, sigmas[min_idx].item(), sigmas[max_idx].item())[:-1]
                step_list.extend(list(zip(sub[:-1], sub[1:])) * restart_times)
    last_sigma = None
    for step_id, (old_sigma, new_sigma) in enumerate(step_list):
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + run.noise() * run.s_noise * (old_sigma ** 2 - last_sigma ** 2) ** 0.5
        denoised = model(x, old_sigma * _ones(x))
        d = to_d(x, old_sigma, denoised)
        run.report(step_id, x, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, new_sigma, model(x_2, new_sigma * _ones(x)))
            x = x + (d + d_2) / 2 * dt
        last_sigma = new_sigma
    return x


def lcm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, run: Run) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        run.report(i, x, denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * run.noise()
    return x


# ---------------------------------------------------------------- DPM-Solver (fast and adaptive)

class _DPMSolver:
    """k-diffusion's DPM-Solver in log-sigma time t = -log(sigma), with its eps cache per step."""

    def __init__(self, model: Denoiser, run: Run) -> None:
        self.model, self.run = model, run

    @staticmethod
    def t(sigma: torch.Tensor) -> torch.Tensor:
        return -sigma.log()

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    def eps(self, cache: dict, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in cache:
            sigma = self.sigma(t) * _ones(x)
            cache[key] = (x - self.model(x, sigma)) / self.sigma(t)
        return cache[key]

    def step_1(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cache: dict) -> torch.Tensor:
        h = t_next - t
        return x - self.sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cache: dict,
               r1: float = 1 / 2) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cache: dict,
               r1: float = 1 / 3, r2: float = 2 / 3) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - self.sigma(s2) * (r2 * h).expm1() * eps
              - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def noise_levels(self, t: torch.Tensor, t_next: torch.Tensor, t_end: torch.Tensor) -> tuple:
        if not self.run.eta:
            return t_next, 0.0
        sd, _ = ancestral_step(self.sigma(t), self.sigma(t_next), self.run.eta)
        t_next_ = torch.minimum(t_end, self.t(sd))
        return t_next_, (self.sigma(t_next) ** 2 - self.sigma(t_next_) ** 2) ** 0.5


def dpm_fast(model: Denoiser, x: torch.Tensor, sigma_min: float, sigma_max: float, n: int, run: Run) -> torch.Tensor:
    solver = _DPMSolver(model, run)
    t_start, t_end = solver.t(torch.tensor(sigma_max)), solver.t(torch.tensor(sigma_min))
    m = math.floor(n / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = solver.noise_levels(t, t_next, t_end)
        eps = solver.eps(cache, "eps", x, t)
        run.report(i, x, x - solver.sigma(t) * eps)
        x = (solver.step_1, solver.step_2, solver.step_3)[order - 1](x, t, t_next_, cache)
        x = x + su * run.s_noise * run.noise()
    return x


def dpm_adaptive(model: Denoiser, x: torch.Tensor, sigma_min: float, sigma_max: float, run: Run, order: int = 3,
                 rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, accept_safety: float = 0.81,
                 pid_eps: float = 1e-8) -> torch.Tensor:
    """DPM-Solver-23 with k-diffusion's step-size controller (A1111's defaults: integral-only, as here)."""
    solver = _DPMSolver(model, run)
    t_start, t_end = solver.t(torch.tensor(sigma_max)), solver.t(torch.tensor(sigma_min))
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    s, x_prev, h = t_start, x, abs(h_init)
    b1 = 1.0 / (1.5 if run.eta else order)  # PID with pcoeff = dcoeff = 0, icoeff = 1
    steps = 0
    while s < t_end - 1e-5:
        cache: dict = {}
        t = torch.minimum(t_end, s + h)
        t_, su = solver.noise_levels(s, t, t_end)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - solver.sigma(s) * eps
        if order == 2:
            x_low, x_high = solver.step_1(x, s, t_, cache), solver.step_2(x, s, t_, cache)
        else:
            x_low, x_high = solver.step_2(x, s, t_, cache, r1=1 / 3), solver.step_3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        factor = (1 / (float(error) + pid_eps)) ** b1
        factor = 1 + math.atan(factor - 1)
        if factor >= accept_safety:
            x_prev = x_low
            x = x_high + su * run.s_noise * run.noise()
            s = t
        h *= factor
        steps += 1
        run.report(steps - 1, x, denoised)
    return x
