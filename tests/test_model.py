"""One model class per kind over a Backend, sampling settings in one frozen SamplingConfig (issue 14)."""
import sys
from dataclasses import FrozenInstanceError

import numpy as np
import pytest

import gencc
from gencc.runtime import loader
from gencc.runtime.backend import Functions
from gencc.runtime.errors import GenccError
from gencc.runtime.kinds import Kind
from gencc.runtime.model import DiffusionModel, GanModel, SamplingConfig, Watchers
from gencc.runtime.normalize import Normalization
from gencc.runtime.sde import VPSDE

NORM = Normalization((0.0,), (1.0,), (2,))


def linear_eps(x, t):
    return 0.3 * x + 0.1 * t


class EpsOnly:
    """The smallest Backend a diffusion model samples with: a host eps and numpy arrays, nothing optional."""

    name, check_every, chain_length = "mine", 1, 0

    def has(self, op):
        return False

    def to_device(self, a):
        return np.asarray(a)

    def to_numpy(self, a):
        return np.asarray(a)

    def eps(self, x, t, *cond):
        return linear_eps(x, t)


def test_a_backend_implements_only_what_it_has():
    mine = DiffusionModel((2,), NORM, EpsOnly(), sde=VPSDE())
    plain = DiffusionModel((2,), NORM, Functions("exact", eps_fn=linear_eps), sde=VPSDE())
    for sampler in ("em", "dpm2m"):
        np.testing.assert_array_equal(mine.sample(5, steps=4, sampler=sampler, seed=1),
                                      plain.sample(5, steps=4, sampler=sampler, seed=1))
    assert mine.backend == "mine" and mine.kind is Kind.DIFFUSION and mine.kind == "diffusion"


def test_sample_is_sample_with_a_config():
    m = DiffusionModel((2,), NORM, Functions("exact", eps_fn=linear_eps), sde=VPSDE())
    seen = []
    config = SamplingConfig(steps=6, sampler="pc", seed=4, options={"corrector_steps": 2}, batch_size=3, start=2)
    got = m.sample_with(5, config, Watchers(callback=lambda k, x: seen.append(k)))
    want = m.sample(5, steps=6, sampler="pc", seed=4, options={"corrector_steps": 2}, batch_size=3, start=2)
    np.testing.assert_array_equal(got, want)
    assert seen == list(range(6)) * 2   # two chunks of at most 3


def test_sampling_config_is_frozen_all_the_way_down():
    options = {"corrector_steps": 2}
    config = SamplingConfig(options=options)
    options["corrector_steps"] = 5
    assert config.options == {"corrector_steps": 2}
    with pytest.raises(FrozenInstanceError):
        config.steps = 3
    with pytest.raises(TypeError):
        config.options["snr"] = 0.1
    assert SamplingConfig(sampler="dpm2m").grid_spacing == "logsnr" and SamplingConfig().grid_spacing == "uniform"


def test_each_kind_carries_only_its_own_fields():
    gan = GanModel((2,), NORM, Functions("exact", generate_fn=lambda z: z[:, :2]), latent_shape=(4,))
    assert gan.kind is Kind.GAN and not hasattr(gan, "sde") and gan.sample(3).shape == (3, 2)
    diffusion = DiffusionModel((2,), NORM, Functions("exact", eps_fn=linear_eps), sde=VPSDE())
    assert not hasattr(diffusion, "latent_shape")
    with pytest.raises(GenccError, match="decode applies to latent-diffusion models, not gan"):
        gan.decode(np.zeros((1, 4), np.float32))


def test_the_plan_cache_belongs_to_the_model():
    a = DiffusionModel((2,), NORM, Functions("exact", eps_fn=linear_eps), sde=VPSDE())
    b = DiffusionModel((2,), NORM, Functions("exact", eps_fn=linear_eps), sde=VPSDE(beta_max=10.0))
    config = SamplingConfig(steps=5, sampler="ddim")
    assert a._plan(config) is a._plan(config)
    assert b._plans == {} and b._plan(config) != a._plan(config)


def test_a_checkpoint_without_the_torch_backend_is_one_error(tiny_moons_diffusion, monkeypatch):
    monkeypatch.setitem(sys.modules, loader.TORCH_BACKEND, None)   # as if torch or gencc.models were missing
    with pytest.raises(GenccError, match="torch backend .* cannot be imported"):
        gencc.load(tiny_moons_diffusion)


def test_loaded_models_are_the_class_of_their_kind(tiny_moons_diffusion, tiny_moons_gan):
    assert isinstance(gencc.load(tiny_moons_diffusion), DiffusionModel)
    gan = gencc.load(tiny_moons_gan)
    assert isinstance(gan, GanModel) and gan.kind == "gan" and gan.backend == "torch"
