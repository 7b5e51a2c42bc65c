"""Users' own networks: the conventions adapter, gencc.compile / gencc.from_torch, and their errors (issue 15).

The compiled cases (slow) each compare sampling through the artifact, on tvm and ort, with
gencc.from_torch on the same network, seed and sampler; between them they cover every entry point
(module, ONNX file, diffusers folder, module:factory), every prediction type and every schedule.
"""
from __future__ import annotations

import inspect
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


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # the TorchScript exporter, knowingly used
def test_bad_onnx_files_are_one_line(tmp_path):
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(Eps(), (torch.randn(1, 2), torch.rand(1)), fixed, input_names=["x", "t"], dynamo=False)
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    for path, words in ((fixed, ["fixed batch size 1", "dynamic batch axis"]),
                        (tmp_path / "junk.onnx", ["unreadable or invalid"])):
        r = cli("compile", path, "--out", tmp_path / "x.gencc")
        assert_user_error(r, *words)
        assert not (tmp_path / "x.gencc").exists()


def test_diffusers_options_against_the_scheduler_config(tmp_path):
    """An option that contradicts the scheduler config is refused; without a config, options win over defaults."""
    from diffusers import DDPMScheduler

    from gencc.compiler.sources import resolve

    unet = tmp_path / "unet"
    tiny_unet().save_pretrained(unet)
    DDPMScheduler(prediction_type="epsilon").save_pretrained(tmp_path / "sched")
    r = cli("compile", unet, "--scheduler", tmp_path / "sched", "--prediction", "v", "--out", tmp_path / "x.gencc")
    assert_user_error(r, "prediction='v' contradicts the scheduler config's 'eps'")
    user = resolve(unet, CompileOptions(prediction="v", schedule="squaredcos_cap_v2"))
    assert user.options.conventions() == {"time_input": "timestep:1000", "prediction": "v",
                                          "schedule": "squaredcos_cap_v2"}
    assert user.sde.schedule == "squaredcos_cap_v2" and user.sample_shape == (1, 8, 8)


def test_network_options_on_a_gencc_checkpoint_are_refused(tiny_moons_diffusion, tmp_path):
    r = cli("compile", tiny_moons_diffusion, "--prediction", "v", "--out", tmp_path / "x.gencc")
    assert_user_error(r, "describes itself", "prediction")


# ---- compiled: the artifact samples what gencc.from_torch samples (slow: each case is one TVM compile) ----

def tiny_unet(shape=(1, 8, 8), attention=False):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    blocks = ("DownBlock2D", "AttnDownBlock2D") if attention else ("DownBlock2D", "DownBlock2D")
    return UNet2DModel(sample_size=shape[1], in_channels=shape[0], out_channels=shape[0], block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=blocks, norm_num_groups=4, attention_head_dim=8,
                       up_block_types=tuple(b.replace("Down", "Up") for b in reversed(blocks))).eval()


class UnetEps(nn.Module):
    """How a user wraps a diffusers UNet by hand: eps(x, timestep) = unet(x, timestep).sample."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, timestep):
        return self.unet(x, timestep).sample


def assert_artifact_matches(path, reference, n=4, steps=8, samplers=SAMPLERS):
    """Samples through the artifact on tvm and ort equal the torch reference's to 1e-4 (relative)."""
    for backend in ("tvm", "ort"):
        model = gencc.load(path, backend=backend)
        for sampler in samplers:
            got = model.sample(n, steps=steps, sampler=sampler, seed=3)
            want = reference.sample(n, steps=steps, sampler=sampler, seed=3)
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err < 1e-4, (backend, sampler, err)


@pytest.mark.slow
def test_diffusers_folder_through_the_cli(tmp_path):
    """A save_pretrained folder with a pipeline-style scheduler/ beside it: eps, DDPM's linear table."""
    from diffusers import DDPMScheduler

    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "pipe" / "scheduler")
    out = tmp_path / "unet.gencc"
    r = cli("compile", tmp_path / "pipe" / "unet", "--out", out)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["conventions"] == {"time_input": "timestep:1000", "prediction": "eps", "schedule": "linear"}
    assert manifest["sde"]["kind"] == "vp-discrete"
    info = cli("info", out)
    assert info.exit_code == 0 and '"time_input": "timestep:1000"' in info.output and "diffusers" in info.output
    reference = gencc.from_torch(UnetEps(unet), sample_shape=(1, 8, 8), time_input="timestep:1000")
    assert_artifact_matches(out, reference)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_file_v_prediction_scaled_linear(tmp_path):
    """An ONNX export of the UNet (float timesteps, opset 14: converted) with gencc's conversions spliced around it."""
    net = UnetEps(tiny_unet())
    with torch.no_grad():
        torch.onnx.export(net, (torch.randn(2, 1, 8, 8), torch.rand(2)), tmp_path / "eps.onnx", dynamo=False,
                          input_names=["sample", "timestep"], output_names=["out"], opset_version=14,
                          dynamic_axes={"sample": {0: "b"}, "timestep": {0: "b"}, "out": {0: "b"}})
    options = {"time_input": "timestep:1000", "prediction": "v", "schedule": "scaled_linear", "beta_start": 0.00085,
                   "beta_end": 0.012}
    gencc.compile(tmp_path / "eps.onnx", tmp_path / "v.gencc", **options)   # sample_shape read from the graph
    assert_artifact_matches(tmp_path / "v.gencc", gencc.from_torch(net, sample_shape=(1, 8, 8), **options))


@pytest.mark.slow
def test_module_x0_prediction_cosine_and_the_runtime_stays_light(tmp_path):
    torch.manual_seed(0)
    net = Eps()
    options = {"sample_shape": (2,), "time_input": "sigma", "prediction": "x0", "schedule": "squaredcos_cap_v2"}
    gencc.compile(net, tmp_path / "x0.gencc", **options)
    assert_artifact_matches(tmp_path / "x0.gencc", gencc.from_torch(net, **options), n=64, steps=20)
    code = ("import sys, gencc\n"
            f"gencc.load({str(tmp_path / 'x0.gencc')!r}).sample(4, steps=3, seed=0)\n"
            f"gencc.load({str(tmp_path / 'x0.gencc')!r}, backend='ort').sample(4, steps=3, seed=0)\n"
            "print(sorted(m for m in ('torch', 'onnx', 'diffusers') if m in sys.modules))")
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.slow
def test_factory_with_safetensors_weights_through_the_cli(bad_nets, tmp_path):
    from safetensors.torch import save_file

    sys.modules.pop(bad_nets, None)
    (tmp_path / bad_nets / "__init__.py").write_text(
        "from torch import nn\nimport torch\n\n" + inspect.getsource(Eps) + "\ndef build(): return Eps(1000.0)\n")
    torch.manual_seed(1)
    trained = Eps(1000.0)
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "f.gencc"
    r = cli("compile", f"{bad_nets}:build", "--weights", tmp_path / "w.safetensors", "--shape", "2",
            "--time-input", "timestep:1000", "--out", out)
    assert r.exit_code == 0, r.output
    reference = gencc.from_torch(trained, sample_shape=(2,), time_input="timestep:1000")   # schedule: linear
    assert_artifact_matches(out, reference, n=64, steps=20)


@pytest.mark.slow
def test_dcgan_generator_through_the_module_api(tmp_path):
    torch.manual_seed(0)
    g = Generator()
    with torch.no_grad():
        g(torch.randn(8, 16, 1, 1))   # a forward in train mode moves BatchNorm's statistics off 0 and 1
    m = gencc.compile(g, tmp_path / "g.gencc", kind="gan", latent_shape=(16, 1, 1))
    assert m["model"] == "gan" and m["sample_shape"] == [1, 8, 8] and m["latent_shape"] == [16, 1, 1]
    want = gencc.from_torch(g, kind="gan", latent_shape=(16, 1, 1)).sample(16, seed=2)
    for backend in ("tvm", "ort"):
        got = gencc.load(tmp_path / "g.gencc", backend=backend).sample(16, seed=2)
        assert np.abs(got - want).max() < 1e-5, backend


@pytest.mark.slow
def test_unet_3x16x16_with_attention_vp(tmp_path):
    """The one larger case: attention blocks, RGB, gencc's continuous schedule under DDPM timesteps."""
    net = UnetEps(tiny_unet((3, 16, 16), attention=True))
    options = {"sample_shape": (3, 16, 16), "time_input": "timestep:1000", "schedule": "vp"}
    gencc.compile(net, tmp_path / "attn.gencc", **options)
    assert_artifact_matches(tmp_path / "attn.gencc", gencc.from_torch(net, **options), n=2, steps=5)


class LabelledEps(nn.Module):
    """A user's class-conditional eps-network taking int64 class ids, K = 3 meaning the null class."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(4, 8)
        self.body = nn.Sequential(nn.Linear(11, 32), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, x, time, label):
        return self.body(torch.cat([x, time[:, None], self.embed(label)], 1))


@pytest.mark.slow
def test_class_conditional_index_labels_with_guidance(tmp_path):
    torch.manual_seed(0)
    net, options = LabelledEps(), {"sample_shape": (2,), "num_classes": 3, "label_input": "index"}
    m = gencc.compile(net, tmp_path / "c.gencc", **options)
    assert m["num_classes"] == 3 and m["step_contract"] == "affine5-cfg-v1"
    reference = gencc.from_torch(net, **options)
    for backend in ("tvm", "ort"):
        model = gencc.load(tmp_path / "c.gencc", backend=backend)
        for sampler in SAMPLERS:
            kw = {"steps": 10, "sampler": sampler, "seed": 4, "label": [0, 1, 2, 1], "guidance": 1.5}
            got, want = model.sample(4, **kw), reference.sample(4, **kw)
            assert np.abs(got - want).max() / np.abs(want).max() < 1e-4, (backend, sampler)


@pytest.mark.slow
def test_cuda_cross_compile_of_a_user_network(tmp_path):
    """target="cuda" cross-compiles here (nvcc, no GPU); the artifact is unverified until gencc verify runs."""
    m = gencc.compile(Eps(), tmp_path / "cuda.gencc", sample_shape=(2,), prediction="v", target="cuda", arch="sm_80")
    assert m["target"] == {"kind": "cuda", "arch": "sm_80"} and m["verified"] is False
    assert m["conventions"]["prediction"] == "v"
