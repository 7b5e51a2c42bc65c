"""Users' own networks: the conventions adapter, gencc.compile / gencc.from_torch, and their errors (issue 15).

The compiled cases (slow) each compare sampling through the artifact, on tvm and ort, with
gencc.from_torch on the same network, seed and sampler; between them they cover every entry point
(module, ONNX file, diffusers folder, module:factory), every prediction type and every schedule.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import gencc
from cli_helpers import assert_user_error, gencc as cli
from gencc.compiler.options import CompileOptions, TimeInput
from gencc.models.adapters import EpsAdapter, Schedule
from gencc.runtime.errors import GenccError
from gencc.runtime.sde import make_sde


SCHEDULE_SDES = [make_sde("vp"), make_sde("linear"), make_sde("scaled_linear", beta_start=0.00085, beta_end=0.012),
                 make_sde("squaredcos_cap_v2")]
SAMPLERS = ("em", "ddim", "dpm2m")


class Eps(nn.Module):
    """A user's small eps-network net(x, time) on 2-D points."""

    def __init__(self, time_scale: float = 1.0):
        super().__init__()
        self.time_scale = time_scale
        self.body = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, x, time):
        return self.body(torch.cat([x, time[:, None] / self.time_scale], 1))


class Generator(nn.Module):
    """A DCGAN-style generator: z (B, 16, 1, 1) -> (B, 1, 8, 8)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.ConvTranspose2d(16, 16, 4, 1, 0), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.ConvTranspose2d(16, 1, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        return self.body(z)


class Spy(nn.Module):
    """Records the inputs the adapter gives the network; returns a fixed multiple of x."""

    def forward(self, x, time):
        self.seen = (x.clone(), time.clone())
        return 0.5 * x


class Gauss(nn.Module):
    """The exact EDM-style denoiser for data N(0, s^2 I): D(x_ve, sigma_ve) = s^2 x_ve / (s^2 + sigma_ve^2)."""

    def __init__(self, s: float):
        super().__init__()
        self.s2 = s * s

    def forward(self, x, sigma):
        return self.s2 * x / (self.s2 + sigma[:, None] ** 2)


# ---- the conventions, against the SDE and closed forms (fast) ----

@pytest.mark.parametrize("sde", SCHEDULE_SDES, ids=lambda s: getattr(s, "schedule", "vp"))
def test_schedule_in_graph_matches_the_sde(sde):
    t = np.concatenate([np.linspace(sde.t_eps, 1.0, 37), np.arange(0, 1000, 111) / 999.0])
    gamma, sigma = Schedule(sde)(torch.tensor(t, dtype=torch.float32))
    np.testing.assert_allclose(gamma.numpy(), sde.gamma(t), rtol=2e-6)
    np.testing.assert_allclose(sigma.numpy(), sde.sigma(t), rtol=2e-6)   # small t included: no 1 - exp loss


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("sde", SCHEDULE_SDES[::3], ids=["vp", "cosine"])
def test_prediction_converts_to_the_true_eps(prediction, sde):
    """A network predicting the exact x0 (or v) of a known eps gives back that eps; read as eps, it does not."""
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    ts = [sde.t_eps + 1e-3, 0.3, 1.0]

    class Exact(nn.Module):
        def forward(self, x_in, time):
            gm, sg = float(sde.gamma(float(time[0]))), float(sde.sigma(float(time[0])))
            x0 = (x_in - sg * eps) / gm
            return x0 if prediction == "x0" else gm * eps - sg * x0

    for convention, close in ((prediction, True), ("eps", False)):
        adapter = EpsAdapter(Exact(), sde, TimeInput("t"), convention)
        for t in ts:
            got = adapter(x, torch.tensor([t]))
            assert torch.allclose(got, eps, rtol=1e-4, atol=1e-4) == close, (convention, t)


def test_time_inputs_reach_the_network_as_documented():
    sde, x = make_sde("vp"), torch.randn(3, 2)
    for text, expect_time, scale in (("t", 0.4, 1.0), ("timestep:1000", 999 * 0.4, 1.0),
                                     ("sigma", sde.sigma(0.4) / sde.gamma(0.4), 1 / sde.gamma(0.4))):
        spy = Spy()
        EpsAdapter(spy, sde, TimeInput.parse(text), "eps")(x, torch.tensor([0.4]))
        seen_x, seen_t = spy.seen
        assert seen_t.shape == (3,), text   # the fused step's shared (1,) time reaches the network per sample
        np.testing.assert_allclose(seen_t.numpy(), expect_time, rtol=1e-5)
        np.testing.assert_allclose(seen_x.numpy(), x.numpy() * scale, rtol=1e-5)


def test_sigma_input_samples_the_gaussian_its_exact_denoiser_knows():
    """An EDM-style x0 denoiser that knows nothing of gencc's schedule samples N(0, s^2) through the adapter;
    the same network read with the wrong time input does not (negative control)."""
    s = 0.5
    right = gencc.from_torch(Gauss(s), sample_shape=(2,), time_input="sigma", prediction="x0")
    wrong = gencc.from_torch(Gauss(s), sample_shape=(2,), time_input="t", prediction="x0")
    for sampler, steps in (("dpm2m", 20), ("ddim", 100)):   # first-order DDIM needs more steps for 5%
        std = right.sample(4000, steps=steps, sampler=sampler, seed=0).std()
        assert abs(std / s - 1) < 0.05, (sampler, std)
    assert abs(wrong.sample(4000, steps=20, sampler="dpm2m", seed=0).std() / s - 1) > 0.3


def test_options_refuse_what_cannot_be_right():
    for bad, words in (({"time_input": "timestep:1"}, "timestep:N"), ({"prediction": "noise"}, "unknown prediction"),
                       ({"schedule": "cosine"}, "unknown schedule"), ({"sample_shape": (0, 3)}, "sample_shape"),
                       ({"kind": "gan"}, "latent_shape"), ({"shape": (1,)}, "unknown option(s) shape")):
        with pytest.raises(GenccError, match=words.replace("(", r"\(").replace(")", r"\)")):
            CompileOptions.make(**bad)


# ---- errors through the CLI: exit 2, one line, nothing written (fast: all fail before TVM compiles) ----

BAD_NETS = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f, self.lin = f, nn.Linear(2, 2)
    def forward(self, x, t):
        return self.f(self.lin(x), t)

def unexportable(): return Net(lambda x, t: torch.special.i1e(x) * t[:, None])
def wrong_shape(): return Net(lambda x, t: x[:, :1] * t[:, None])
def non_finite(): return Net(lambda x, t: x / 0.0 + t[:, None])
def ignores_time(): return Net(lambda x, t: x)
def good(): return Net(lambda x, t: x * t[:, None])
'''


@pytest.fixture
def bad_nets(tmp_path, monkeypatch):
    pkg = tmp_path / "user_nets_for_gencc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(BAD_NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_nets_for_gencc"
    sys.modules.pop("user_nets_for_gencc", None)


@pytest.mark.parametrize("factory, extra, words", [
    ("unexportable", (), ["does not export", "aten::special_i1e"]),
    ("wrong_shape", (), ["shape (2, 1)", "(2, 2)"]),
    ("non_finite", (), ["NaN/inf"]),
    ("ignores_time", (), ["identical at t=0.25 and t=0.75"]),
    ("good", ("--schedule", "cosine"), ["unknown schedule 'cosine'"]),
    ("good", ("--weights", "{tmp}/missing.safetensors"), ["weights file", "does not exist"]),
])
def test_bad_user_network_is_one_line_and_writes_nothing(bad_nets, tmp_path, factory, extra, words):
    out = tmp_path / "x.gencc"
    extra = [str(a).format(tmp=tmp_path) for a in extra]
    r = cli("compile", f"{bad_nets}:{factory}", "--shape", "2", *extra, "--out", out)
    assert_user_error(r, *words)
    assert not out.exists() and not list(tmp_path.glob(".x.gencc*"))


def test_bad_diffusers_folders_are_one_line(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    for folder, words in ((other, ["UNet2DConditionModel", "UNet2DModel folders only"]),
                          (no_weights, ["no diffusion_pytorch_model.safetensors"])):
        r = cli("compile", folder, "--out", tmp_path / "x.gencc")
        assert_user_error(r, *words)
        assert not (tmp_path / "x.gencc").exists()


def test_network_options_on_a_gencc_checkpoint_are_refused(tiny_moons_diffusion, tmp_path):
    r = cli("compile", tiny_moons_diffusion, "--prediction", "v", "--out", tmp_path / "x.gencc")
    assert_user_error(r, "describes itself", "prediction")
