"""Discrete DDPM noise schedules as continuous VP processes: against diffusers' own tables, and sampled exactly.

diffusers is the optional extra `.[diffusers]` (the Makefile installs it for tests).
"""
import math

import numpy as np
import pytest
import torch

from gencc.runtime.errors import GenccError
from gencc.runtime.noise import SampleNoise
from gencc.runtime.samplers import SAMPLERS, get_sampler, time_grid
from gencc.runtime.sde import SCHEDULES, VPSDE, DiscreteVPSDE, make_sde, sde_from_dict, sde_from_scheduler_config
from test_samplers import MU, S, matches_gaussian

DISCRETE = ("linear", "scaled_linear", "squaredcos_cap_v2")
# (schedule, beta_start, beta_end): diffusers' defaults, and Stable Diffusion's scaled_linear.
TABLES = [("linear", 1e-4, 0.02), ("scaled_linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012),
          ("squaredcos_cap_v2", 1e-4, 0.02)]


@pytest.mark.parametrize("schedule,start,end", TABLES)
def test_alpha_bar_matches_diffusers_at_every_timestep(schedule, start, end):
    from diffusers import DDPMScheduler  # the extra `.[diffusers]`, which `make install` installs
    ref = DDPMScheduler(beta_schedule=schedule, beta_start=start, beta_end=end).alphas_cumprod.double()
    sde = make_sde(schedule, beta_start=start, beta_end=end)
    t = np.arange(1000) / 999
    # diffusers builds the table in float32: its cumulative product drifts by up to 1.3e-5 (cosine's tail).
    np.testing.assert_allclose(sde.gamma(t) ** 2, ref.numpy(), rtol=3e-5, atol=0)
    np.testing.assert_allclose(sde.sigma(t) ** 2, 1.0 - ref.numpy(), rtol=3e-5, atol=2e-7)   # float32 1 - ab


@pytest.mark.parametrize("schedule", DISCRETE)
def test_monotone_variance_preserving_and_beta_is_the_derivative(schedule):
    sde = make_sde(schedule)
    t = np.linspace(0.0, 1.0, 20_001)
    g, s = sde.gamma(t), sde.sigma(t)
    assert np.all(np.diff(g) < 0) and np.all(np.diff(s) > 0) and np.all(np.diff(sde.lambda_(t)) < 0)
    np.testing.assert_allclose(g ** 2 + s ** 2, 1.0, atol=1e-12)
    # beta(t) = -d/dt log gamma_t^2 on each step: a central difference inside every step (t_i, t_{i+1}].
    mid = (np.arange(999) + 0.5) / 999
    h = 1e-3 / 999
    deriv = -(np.log(sde.gamma(mid + h) ** 2) - np.log(sde.gamma(mid - h) ** 2)) / (2 * h)
    np.testing.assert_allclose(sde.beta(mid), deriv, rtol=1e-6)
    assert np.all(sde.beta(t) > 0)


@pytest.mark.parametrize("schedule", DISCRETE)
def test_lambda_inverse_round_trips(schedule):
    sde = make_sde(schedule)
    t = np.concatenate([np.linspace(0.0, 1.0, 4001), np.arange(1000) / 999])
    np.testing.assert_allclose(sde.t_from_lambda(sde.lambda_(t)), t, atol=1e-9)
    assert sde.t_from_lambda(sde.lambda_(0.25)) == pytest.approx(0.25, abs=1e-12)
    ts = time_grid(sde, 10, "logsnr")
    assert ts[0] == 1.0 and ts[-1] == sde.t_eps and np.all(np.diff(ts) < 0)
    np.testing.assert_allclose(np.diff(sde.lambda_(ts)), np.diff(sde.lambda_(ts))[0], rtol=1e-6)


def test_continuous_vp_inverse_is_unchanged():
    sde = VPSDE()
    t = np.linspace(1e-3, 1.0, 101)
    np.testing.assert_allclose(sde.t_from_lambda(sde.lambda_(t)), t, rtol=1e-9)


def test_ddpm_linear_table_is_the_lecture_schedule_up_to_one_part_in_n():
    """DDPM's linear betas 1e-4..0.02 over N = 1000 steps and the continuous beta(t) from 0.1 to 20.

    Measured at N = 1000: gamma within 1.6e-3, sigma within 4.4e-3, and the time of equal log-SNR within
    0.0034 (3.4 of 1000 timesteps; -log(1 - beta) = beta + beta^2/2 + ... puts the table ahead). With the
    betas scaled as 0.1/N..20/N, the gap shrinks as 1/N: the continuous schedule is the table's limit.
    """
    cont = VPSDE()
    t = np.linspace(cont.t_eps, 1.0, 4001)
    gaps = []
    for n in (1000, 10_000):
        table = make_sde("linear", num_train_timesteps=n, beta_start=0.1 / n, beta_end=20.0 / n)
        gaps.append([np.max(np.abs(table.gamma(t) - cont.gamma(t))), np.max(np.abs(table.sigma(t) - cont.sigma(t))),
                     np.max(np.abs(table.t_from_lambda(cont.lambda_(t)) - t))])
    assert gaps[0] < [2e-3, 5e-3, 4e-3]
    assert np.all(np.array(gaps[1]) < np.array(gaps[0]) / 8)


@pytest.mark.parametrize("schedule", DISCRETE)
def test_numpy_torch_and_float_agree(schedule):
    sde = make_sde(schedule)
    t = np.linspace(0.0, 1.0, 513)
    for name in ("beta", "int_beta", "gamma", "sigma", "lambda_"):
        f = getattr(sde, name)
        np.testing.assert_allclose(f(torch.from_numpy(t)).numpy(), f(t), rtol=1e-12, err_msg=name)
        assert f(torch.from_numpy(t).float()).dtype == torch.float32
        assert isinstance(f(0.3), float) and f(0.3) == pytest.approx(f(np.array([0.3]))[0], rel=1e-15)


@pytest.mark.parametrize("schedule", DISCRETE)
def test_dict_round_trip_is_small_and_exact(schedule):
    sde = make_sde(schedule, num_train_timesteps=500, t_eps=1e-3)
    d = sde.to_dict()
    assert d["kind"] == "vp-discrete" and len(d) == 6   # the name and parameters, never the table
    assert sde_from_dict(d) == sde and DiscreteVPSDE.from_dict(d) == sde
    assert sde_from_dict(VPSDE().to_dict()) == VPSDE()
    assert isinstance(sde, VPSDE) and hash(sde) == hash(sde_from_dict(d))


def test_unknown_schedule_names_the_known():
    with pytest.raises(GenccError, match=r"unknown noise schedule 'cosine'; expected one of " + ", ".join(SCHEDULES)):
        make_sde("cosine")
    with pytest.raises(GenccError, match="unknown noise schedule"):
        sde_from_dict({"kind": "vp-discrete", "schedule": "sigmoid", "num_train_timesteps": 1000,
                       "beta_start": 1e-4, "beta_end": 0.02, "t_eps": 0.0})
    with pytest.raises(GenccError, match="unknown noise schedule 'vp' for a DDPM table"):
        sde_from_dict({**make_sde("linear").to_dict(), "schedule": "vp"})


@pytest.mark.parametrize("params,match", [
    ({"num_train_timesteps": 1}, "num_train_timesteps must be an integer"),
    ({"num_train_timesteps": 1000.0}, "num_train_timesteps must be an integer"),
    ({"beta_start": 0.02, "beta_end": 1e-4}, "needs 0 < beta_start < beta_end < 1"),
    ({"beta_end": math.nan}, "beta_end must be a finite number"),
    ({"t_eps": 1.0}, "need 0 <= t_eps < 1"),
    ({"beta_max": 20.0}, "bad parameters for noise schedule 'linear'"),
])
def test_bad_parameters_are_refused(params, match):
    with pytest.raises(GenccError, match=match):
        make_sde("linear", **params)


@pytest.mark.parametrize("d", [
    {"kind": "vp-discrete", "schedule": "linear"},
    {"kind": "vp-discrete", "schedule": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4,
     "beta_end": 0.02, "t_eps": 0.0, "table": [1.0]},
])
def test_malformed_records_are_refused(d):
    with pytest.raises(GenccError, match="malformed SDE record"):
        sde_from_dict(d)


def exact_eps_for(sde):
    """The exact eps of Gaussian data N(MU, S^2) under `sde` (see tests/test_samplers.py)."""
    def eps(x, t):
        g, s = sde.gamma(t), sde.sigma(t)
        return s * (x - g * MU) / (g * g * S * S + s * s)
    return eps


def run(sampler, eps_fn, sde, steps, n=20_000, spacing="uniform"):
    noise = SampleNoise(0, np.arange(n), (2,))
    return get_sampler(sampler)(eps_fn, noise.prior(), time_grid(sde, steps, spacing), sde, noise.step)


# As tests/test_samplers.py, but dpm2m takes 30 steps: cosine's log-SNR range is 1.5 times linear's (15 against
# 9.7), and at 20 steps its std is 3.4% off (30: 2.1%, 40: 1.5%, 80: 0.9%; second order, as on the VP-SDE).
STEPS = {"em": 1000, "pc": 500, "ancestral": 1000, "ode-euler": 1000, "ode-heun": 100, "ddim": 100, "dpm2m": 30}


@pytest.mark.parametrize("schedule", DISCRETE)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_exact_score_reproduces_the_data_with_every_schedule(sampler, schedule):
    sde = make_sde(schedule)
    x = run(sampler, exact_eps_for(sde), sde, STEPS[sampler], spacing="logsnr" if sampler == "dpm2m" else "uniform")
    ok, stats = matches_gaussian(x)
    assert ok, f"{sampler} on {schedule}: mean/std {stats}, want {MU}/{S}"


@pytest.mark.parametrize("sampler", ["em", "ddim", "dpm2m"])
def test_sampling_with_another_schedule_than_the_net_fails(sampler):
    """The negative control: the network's schedule is cosine, the sampler is handed another one."""
    net = exact_eps_for(make_sde("squaredcos_cap_v2"))
    for wrong in (VPSDE(), make_sde("scaled_linear")):
        x = run(sampler, net, wrong, STEPS[sampler], n=4000, spacing="logsnr" if sampler == "dpm2m" else "uniform")
        ok, stats = matches_gaussian(x)
        assert not ok, f"{sampler} with the wrong schedule {wrong} passed: {stats}"


def test_an_artifact_records_and_reads_back_its_discrete_schedule(tmp_path):
    from fake_artifact import edit_manifest, fake_artifact
    from gencc.runtime.artifact import read_manifest
    root = fake_artifact(tmp_path / "a")
    sde = make_sde("squaredcos_cap_v2")
    edit_manifest(root, lambda m: m.update(sde=sde.to_dict()))
    assert read_manifest(root).sde == sde
    edit_manifest(root, lambda m: m["sde"].update(schedule="karras"))
    with pytest.raises(GenccError, match="unknown noise schedule 'karras'"):
        read_manifest(root)


def test_a_model_samples_and_watches_through_its_discrete_schedule():
    from gencc.runtime.backend import Functions
    from gencc.runtime.model import DiffusionModel
    from gencc.runtime.normalize import Normalization
    sde = make_sde("squaredcos_cap_v2")
    m = DiffusionModel((2,), Normalization((0.0,), (1.0,), (2,)), Functions("exact", eps_fn=exact_eps_for(sde)),
                       sde=sde)
    views = []
    x = m.sample(4000, steps=30, sampler="dpm2m", seed=0, on_step=views.append)
    ok, stats = matches_gaussian(x, tol=0.05)
    assert ok, stats
    # Watching mid-way: Tweedie's x0 with this schedule's gamma, sigma is the exact posterior mean E[x0 | x_t].
    view = views[10]
    assert view.t == pytest.approx(time_grid(sde, 30, "logsnr")[10])
    g, s = sde.gamma(view.t), sde.sigma(view.t)
    posterior_mean = MU + g * S * S * (view.x_in - g * MU) / (g * g * S * S + s * s)
    np.testing.assert_allclose(view.denoised(), posterior_mean, rtol=1e-4, atol=1e-4)
    linear = make_sde("linear")
    other = DiffusionModel((2,), m.normalization, Functions("exact", eps_fn=exact_eps_for(linear)), sde=linear)
    assert not np.array_equal(other.sample(8, steps=30, sampler="ddim", seed=0), m.sample(8, steps=30, sampler="ddim",
                                                                                          seed=0))


@pytest.mark.parametrize("schedule,start,end", TABLES)
def test_a_diffusers_scheduler_config_gives_its_own_table(schedule, start, end):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    for scheduler in (DDIMScheduler, DPMSolverMultistepScheduler):
        s = scheduler(beta_schedule=schedule, beta_start=start, beta_end=end, num_train_timesteps=500)
        sde = sde_from_scheduler_config(dict(s.config))
        assert sde == make_sde(schedule, beta_start=start, beta_end=end, num_train_timesteps=500)
        np.testing.assert_allclose(sde.gamma(np.arange(500) / 499) ** 2, s.alphas_cumprod.numpy(), rtol=3e-5)
    assert sde_from_scheduler_config({"_class_name": "DDPMScheduler"}) == make_sde("linear")   # diffusers' defaults


@pytest.mark.parametrize("config,match", [
    ({"beta_schedule": "sigmoid"}, "unknown noise schedule 'sigmoid' in the scheduler config; expected one of "
                                   "linear, scaled_linear, squaredcos_cap_v2$"),
    ({"beta_schedule": "vp"}, "unknown noise schedule 'vp'"),
    ({"trained_betas": [1e-4, 2e-4]}, "trained_betas"),
    ({"rescale_betas_zero_snr": True}, "zero terminal SNR"),
    ({"num_train_timesteps": "1000"}, "num_train_timesteps must be an integer"),
    ([], "must be a JSON object"),
])
def test_scheduler_configs_gencc_cannot_follow_are_refused(config, match):
    with pytest.raises(GenccError, match=match):
        sde_from_scheduler_config(config)
