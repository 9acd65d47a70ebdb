"""A1111's timestep samplers: DDIM, DDIM CFG++, PLMS and UniPC, on its own timestep grid.

These call the model with integer (DDIM, PLMS) or fractional (UniPC) training timesteps and mix eps, not x0, for
CFG. ``model(x, t, cfg_multiplier) -> (eps, eps_uncond)``; CFG++ needs the unconditional half as well.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hypernet.sampling.kdiffusion import Run

EpsModel = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def a1111_timesteps(steps: int) -> torch.Tensor:
    """``clip(arange(0, 1000, 1000 // steps) + 1, 0, 999)``: N+1 entries unless N divides 1000."""
    return torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)


def _tables(ac: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    alphas = ac[timesteps]
    alphas_prev = ac[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    return alphas, alphas_prev, torch.sqrt(1 - alphas)


def _ddim(model: EpsModel, x: torch.Tensor, timesteps: torch.Tensor, ac: torch.Tensor, run: Run,
          cfgpp: bool) -> torch.Tensor:
    alphas, alphas_prev, sqrt_one_minus = _tables(ac, timesteps)
    a64 = alphas.to(torch.float64)
    sigmas = run.eta * torch.sqrt((1 - alphas_prev) / (1 - a64) * (1 - a64 / alphas_prev))
    s_in, s_x = x.new_ones([x.shape[0]]), x.new_ones([x.shape[0], 1, 1, 1])
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t, e_uncond = model(x, timesteps[index].item() * s_in, 1 / 12.5 if cfgpp else 1.0)
        a_t, a_prev = alphas[index].item() * s_x, alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus[index].item() * s_x * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t ** 2).sqrt() * (e_uncond if cfgpp else e_t)
        noise = sigma_t * run.noise()  # drawn even when eta is 0, as A1111 does
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
        run.report(i, x, pred_x0)
    return x


def ddim(model: EpsModel, x: torch.Tensor, timesteps: torch.Tensor, ac: torch.Tensor, run: Run) -> torch.Tensor:
    return _ddim(model, x, timesteps, ac, run, cfgpp=False)


def ddim_cfgpp(model: EpsModel, x: torch.Tensor, timesteps: torch.Tensor, ac: torch.Tensor, run: Run) -> torch.Tensor:
    """CFG++: CFG scale / 12.5, and the step direction from the unconditional eps."""
    return _ddim(model, x, timesteps, ac, run, cfgpp=True)


def plms(model: EpsModel, x: torch.Tensor, timesteps: torch.Tensor, ac: torch.Tensor, run: Run) -> torch.Tensor:
    alphas, alphas_prev, sqrt_one_minus = _tables(ac, timesteps)
    s_in, s_x = x.new_ones([x.shape[0]]), x.new_ones([x.shape[0], 1, 1, 1])
    old_eps: list[torch.Tensor] = []

    def x_prev_and_x0(x: torch.Tensor, e_t: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        a_t, a_prev = alphas[index].item() * s_x, alphas_prev[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus[index].item() * s_x * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, 1.0)[0]
        if not old_eps:  # pseudo improved Euler: one extra model call
            x_prev, _ = x_prev_and_x0(x, e_t, index)
            e_next = model(x_prev, timesteps[max(index - 1, 0)].item() * s_in, 1.0)[0]
            e_prime = (e_t + e_next) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_prev, pred_x0 = x_prev_and_x0(x, e_prime, index)
        old_eps = (old_eps + [e_t])[-3:]
        x = x_prev
        run.report(i, x, pred_x0)
    return x


def _interp(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear y(x) through ascending keypoints, extended linearly past the ends (DPM-Solver's)."""
    idx = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    x0, x1, y0, y1 = xp[idx - 1], xp[idx], yp[idx - 1], yp[idx]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


class _VP:
    """UniPC's discrete VP noise schedule: log alpha interpolated over t in (0, 1]."""

    def __init__(self, ac: torch.Tensor) -> None:
        self.total = len(ac)
        self.t_array = torch.linspace(0.0, 1.0, self.total + 1)[1:]
        self.log_alpha_array = 0.5 * torch.log(ac)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return _interp(t, self.t_array, self.log_alpha_array)

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lam(self, t: torch.Tensor) -> torch.Tensor:
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros((1,)), -2.0 * lamb)
        return _interp(log_alpha, self.log_alpha_array.flip(0), self.t_array.flip(0))


def unipc(model: EpsModel, x: torch.Tensor, timesteps: torch.Tensor, ac: torch.Tensor, run: Run, *, order: int = 3,
          variant: str = "bh1", skip_type: str = "time_uniform", lower_order_final: bool = True,
          is_img2img: bool = False) -> torch.Tensor:
    """UniPC multistep with data prediction, as A1111 configures it; it runs ``len(timesteps)`` steps."""
    ns = _VP(ac.to(torch.float32))
    steps = len(timesteps)
    order = min(order, steps)
    t_0 = 1.0 / ns.total
    t_T = float(timesteps[-1]) / 1000 + 1 / 1000 if is_img2img else 1.0
    if skip_type == "logSNR":
        lam = torch.linspace(ns.lam(torch.tensor([t_T])).item(), ns.lam(torch.tensor([t_0])).item(), steps + 1)
        ts = ns.inverse_lambda(lam)
    elif skip_type == "time_quadratic":
        ts = torch.linspace(t_T ** 0.5, t_0 ** 0.5, steps + 1).pow(2)
    else:
        ts = torch.linspace(t_T, t_0, steps + 1)
    ts = ts.to(x.device)

    def expand(v: torch.Tensor) -> torch.Tensor:
        return v[:, None, None, None]

    def data_pred(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = model(x, (t - 1.0 / ns.total) * 1000.0, 1.0)[0]
        return (x - expand(ns.std(t)) * eps) / expand(torch.exp(ns.log_alpha(t)))

    def update(x: torch.Tensor, models: list, t_prev: list, t: torch.Tensor, order: int,
               use_corrector: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        lambda_prev_0, lambda_t = ns.lam(t_prev[-1]), ns.lam(t)
        model_prev_0 = models[-1]
        sigma_prev_0, sigma_t = ns.std(t_prev[-1]), ns.std(t)
        alpha_t = torch.exp(ns.log_alpha(t))
        h = lambda_t - lambda_prev_0
        rks, d1s = [], []
        for i in range(1, order):
            rk = ((ns.lam(t_prev[-(i + 1)]) - lambda_prev_0) / h)[0]
            rks.append(rk)
            d1s.append((models[-(i + 1)] - model_prev_0) / rk)
        rks_t = torch.stack([*rks, torch.tensor(1.0)]).to(x.device)
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if variant == "bh1" else torch.expm1(hh)
        rows, b, factorial_i = [], [], 1
        for i in range(1, order + 1):
            rows.append(torch.pow(rks_t, i - 1))
            b.append(h_phi_k * factorial_i / b_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        r_mat, b_vec = torch.stack(rows), torch.stack(b)
        d1 = torch.stack(d1s, dim=1) if d1s else None
        x_t_ = expand(sigma_t / sigma_prev_0) * x - expand(alpha_t * h_phi_1) * model_prev_0
        pred_res: torch.Tensor | float = 0
        if d1 is not None:
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
            pred_res = torch.einsum("k,bkchw->bchw", rhos_p.to(x.device), d1)
        x_t = x_t_ - expand(alpha_t * b_h) * pred_res
        model_t = None
        if use_corrector:
            rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_mat, b_vec)
            rhos_c = rhos_c.to(x.device)
            model_t = data_pred(x_t, t)
            corr_res = torch.einsum("k,bkchw->bchw", rhos_c[:-1], d1) if d1 is not None else 0
            x_t = x_t_ - expand(alpha_t * b_h) * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
        return x_t, model_t

    batch = x.shape[0]
    vec_t = ts[0].expand(batch)
    models, t_prev = [data_pred(x, vec_t)], [vec_t]
    for init_order in range(1, order):
        vec_t = ts[init_order].expand(batch)
        x, model_x = update(x, models, t_prev, vec_t, init_order, use_corrector=True)
        if model_x is None:
            model_x = data_pred(x, vec_t)
        run.report(init_order - 1, x, model_x)
        models.append(model_x)
        t_prev.append(vec_t)
    for step in range(order, steps + 1):
        vec_t = ts[step].expand(batch)
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        x, model_x = update(x, models, t_prev, vec_t, step_order, use_corrector=step != steps)
        run.report(step - 1, x, model_x if model_x is not None else torch.full_like(x, float("nan")))
        models, t_prev = models[1:] + models[-1:], t_prev[1:] + [vec_t]
        if step < steps:
            models[-1] = model_x if model_x is not None else data_pred(x, vec_t)
    return x
