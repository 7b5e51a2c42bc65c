"""The VP-SDE closed forms against numerical integration, and numpy against torch."""
import numpy as np
import pytest
import torch

from gencc.runtime.errors import GenccError
from gencc.runtime.sde import VPSDE


def test_closed_forms_match_numerical_integration_of_beta():
    sde = VPSDE()
    for t in (1e-3, 0.1, 0.5, 1.0):
        s = np.linspace(0.0, t, 20001)
        integral = np.trapezoid(sde.beta(s), s)
        assert sde.int_beta(t) == pytest.approx(integral, rel=1e-9)
        assert sde.gamma(t) == pytest.approx(np.exp(-0.5 * integral), rel=1e-9)
        assert sde.sigma(t) == pytest.approx(np.sqrt(1.0 - np.exp(-integral)), rel=1e-7)


def test_variance_is_preserved_and_endpoints_are_right():
    sde = VPSDE()
    t = np.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(sde.gamma(t) ** 2 + sde.sigma(t) ** 2, 1.0, atol=1e-12)
    assert sde.gamma(0.0) == 1.0 and sde.sigma(0.0) == 0.0
    assert sde.sigma(1.0) > 0.9999   # the prior at t = 1 is N(0, I) to within 1e-4


def test_numpy_and_torch_agree():
    sde = VPSDE()
    t = np.linspace(1e-3, 1.0, 257)
    tt = torch.from_numpy(t)
    for name in ("beta", "int_beta", "gamma", "sigma", "lambda_"):
        np.testing.assert_allclose(getattr(sde, name)(tt).numpy(), getattr(sde, name)(t), rtol=1e-12, err_msg=name)
    x0, eps = np.random.default_rng(0).standard_normal((2, 257, 3))
    np.testing.assert_allclose(sde.marginal(torch.from_numpy(x0), tt, torch.from_numpy(eps)).numpy(),
                               sde.marginal(x0, t, eps), rtol=1e-12)


def test_marginal_matches_its_law():
    sde = VPSDE()
    rng = np.random.default_rng(1)
    x0 = np.full((200_000, 1), 2.0)
    xt = sde.marginal(x0, 0.3, rng.standard_normal(x0.shape))
    assert xt.mean() == pytest.approx(2.0 * sde.gamma(0.3), abs=0.01)
    assert xt.std() == pytest.approx(sde.sigma(0.3), rel=0.01)


def test_score_is_minus_eps_over_sigma():
    sde = VPSDE()
    eps = np.ones((4, 2))
    np.testing.assert_allclose(sde.score_from_eps(eps, 0.5), -1.0 / sde.sigma(0.5))


@pytest.mark.parametrize("kw", [{"beta_min": 0.0}, {"beta_min": 5.0, "beta_max": 1.0}, {"t_eps": 0.0}])
def test_bad_parameters_are_refused(kw):
    with pytest.raises(GenccError):
        VPSDE(**kw)


def test_dict_round_trip():
    sde = VPSDE(0.2, 10.0, 1e-4)
    assert VPSDE.from_dict(sde.to_dict()) == sde
