"""The reverse-time maths of runtime/sde.py against its closed forms, and the typed plans built from it."""
import math

import numpy as np
import pytest
import torch

from gencc.runtime.samplers import PLANS, Coef, PlanStep, time_grid
from gencc.runtime.sde import VPSDE

SDE = VPSDE()
TS = (1e-3, 0.05, 0.4, 1.0)


class ConstantBeta(VPSDE):
    """Another schedule, beta(t) = 2: only beta and int_beta change, everything else is inherited."""

    def beta(self, t):
        return 2.0 + 0.0 * t

    def int_beta(self, t):
        return 2.0 * t


def test_forward_sde_scalars_are_minus_half_beta_and_beta():
    for t in TS:
        f, g2 = SDE.sde(t)
        assert f == -0.5 * SDE.beta(t) and g2 == SDE.beta(t)


@pytest.mark.parametrize("sde", [SDE, VPSDE(0.05, 12.0, 1e-4), ConstantBeta()])
def test_drifts_are_dt_times_the_closed_form_drifts(sde):
    x, eps = np.random.default_rng(0).standard_normal((2, 8, 3))
    for t in TS:
        dt = 0.01
        beta, sigma = sde.beta(t), sde.sigma(t)
        score = -eps / sigma
        # Stepping back by dt adds -dt times the forward-time drift: f x - g^2 score, resp. f x - 1/2 g^2 score.
        a, b = sde.reverse_drift(t, dt)
        np.testing.assert_allclose(a * x + b * eps, -dt * (-0.5 * beta * x - beta * score), rtol=1e-12)
        a, b = sde.pf_ode_drift(t, dt)
        np.testing.assert_allclose(a * x + b * eps, -dt * (-0.5 * beta * x - 0.5 * beta * score), rtol=1e-12)
        assert sde.reverse_diffusion(t, dt) == pytest.approx(math.sqrt(beta) * math.sqrt(dt), rel=1e-15)


def test_a_subclass_schedule_reaches_every_method():
    sde = ConstantBeta()
    assert sde.reverse_drift(0.5, 0.1) == pytest.approx((0.1, -0.2 / math.sqrt(1.0 - math.exp(-1.0))))
    assert sde.x0_coefs(0.5) == pytest.approx((math.exp(0.5), -math.sqrt(1.0 - math.exp(-1.0)) * math.exp(0.5)))


def test_step_coefficients_round_exactly_as_the_samplers_always_did():
    # The groupings samplers.py (and examples/cpp/sde.h) used before these methods existed: any other
    # rounding would change every sample of every fixed seed.
    for sde in (SDE, VPSDE(0.05, 12.0, 1e-4)):
        ts = time_grid(sde, 97, "logsnr")
        for t, h in zip(ts[:-1].tolist(), (ts[:-1] - ts[1:]).tolist(), strict=True):
            beta, sigma = sde.beta(t), sde.sigma(t)
            a, b = sde.reverse_drift(t, h)
            assert (1.0 + a, b, sde.reverse_diffusion(t, h)) == (1.0 + 0.5 * h * beta, -h * beta / sigma,
                                                                 math.sqrt(beta * h))
            a, b = sde.pf_ode_drift(t, h)
            assert (1.0 + a, b) == (1.0 + 0.5 * h * beta, -0.5 * h * beta / sigma)
            a, b = sde.pf_ode_drift(t, 0.5 * h)   # Heun's half steps
            assert (a, b, 1.0 + a) == (0.25 * h * beta, -0.25 * h * beta / sigma, 1.0 + 0.25 * h * beta)


@pytest.mark.parametrize("to", [np.asarray, torch.from_numpy])
def test_tweedie_inverts_the_marginal_per_sample(to):
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((2, 6, 2, 3))
    t = np.linspace(0.01, 1.0, 6)   # one time per sample
    xt = SDE.marginal(to(x0), to(t), to(eps))
    np.testing.assert_allclose(np.asarray(SDE.x0_from_eps(xt, to(eps), to(t))), x0, atol=1e-9)


def test_tweedie_coefficients_are_the_estimate_as_a_linear_map():
    x, eps = np.random.default_rng(2).standard_normal((2, 5, 2))
    for t in TS:
        c_x, c_eps = SDE.x0_coefs(t)
        np.testing.assert_allclose(c_x * x + c_eps * eps, SDE.x0_from_eps(x, eps, t), rtol=1e-12)


@pytest.mark.parametrize("sampler", sorted(PLANS))
def test_plans_are_typed_and_draw_noise_exactly_where_it_has_a_coefficient(sampler):
    plan = PLANS[sampler](time_grid(SDE, 6), SDE)
    assert all(isinstance(p, PlanStep) and isinstance(p.coef, Coef) for p in plan)
    assert all((p.draw is None) == (p.coef.z == 0.0) for p in plan)
    assert all(p.coef.x_prev == p.coef.e_prev == 0.0 for p in plan)   # what makes a plan chainable
    last = plan[-1]   # Tweedie's x0 at t_eps, noise-free and not reported
    assert (last.t, last.coef, last.draw, last.report) == (SDE.t_eps, Coef(*SDE.x0_coefs(SDE.t_eps)), None, None)
    assert [p.report for p in plan if p.report is not None] == list(range(6))
