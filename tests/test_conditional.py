"""Class-conditional models: label dropout, classifier-free guidance, the compiled conditional contract."""
import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from cli_helpers import assert_user_error, gencc
from gencc.compiler.export import export_function, random_inputs
from gencc.compiler.export_conditional import GuidedFusedStep, guided_step_io
from gencc.models.data import load_dataset
from gencc.models.gan import Discriminator, GANConfig, Generator
from gencc.models.guidance import GuidedEps, drop_labels, null_row, one_hot
from gencc.models.nets import MLPConfig, MLPEps
from gencc.models.train import default_config, train
from gencc.models.unet import UNetConfig, UNetEps
from gencc.runtime.artifact import CFG_STEP_CONTRACT, MANIFEST, read_manifest
from gencc.runtime.conditioning import chunk_labels, label_rows
from gencc.runtime.errors import GenccError

K = 3
TINY_MLP = MLPConfig(data_dim=2, width=32, depth=2, emb_dim=16, num_classes=K)
TINY_UNET = UNetConfig(channels=1, size=8, width=16, mults=(1, 2), groups=8, emb_dim=32, num_classes=K)


def seeded(make, seed: int = 0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make()


def tiny_net(arch: str):
    if arch == "mlp":
        return seeded(lambda: MLPEps(TINY_MLP).eval()), (2,)
    return seeded(lambda: UNetEps(TINY_UNET).eval()), (1, 8, 8)


def _train_conditional(tmp_path_factory, model: str, steps: int, **kw):
    ds = load_dataset("digits")
    out = tmp_path_factory.mktemp(f"cond-{model}") / "ckpt"
    cfg = replace(default_config(model, ds.kind), steps=steps, ckpt_every=steps, **kw)
    train(model, ds, out, cfg, conditional=True)
    return out


@pytest.fixture(scope="module")
def cond_diffusion(tmp_path_factory):
    return _train_conditional(tmp_path_factory, "diffusion", 3, batch_size=8)


@pytest.fixture(scope="module")
def cond_gan(tmp_path_factory):
    return _train_conditional(tmp_path_factory, "gan", 3, batch_size=8)


# --- training side -------------------------------------------------------------------------------------

def test_label_dropout_replaces_labels_by_the_null_class_only():
    labels = torch.arange(20_000) % K
    dropped = drop_labels(labels, K, torch.Generator().manual_seed(0), p=0.25)
    changed = dropped != labels
    assert torch.all(dropped[changed] == K)                        # only ever the null class
    assert abs(changed.float().mean().item() - 0.25) < 0.02
    assert torch.equal(drop_labels(labels, K, torch.Generator().manual_seed(0), p=0.0), labels)
    assert torch.equal(null_row(K), torch.tensor([[0.0, 0.0, 0.0, 1.0]]))


def test_unconditional_networks_are_unchanged():
    """No new weights or config keys unless num_classes > 0: existing checkpoints load as before."""
    assert "num_classes" not in MLPConfig().to_dict() and "num_classes" not in UNetConfig().to_dict()
    assert "num_classes" not in GANConfig().to_dict()
    plain = [MLPEps(MLPConfig(width=16, emb_dim=8)), UNetEps(replace(TINY_UNET, num_classes=0)),
             Generator(GANConfig(width=16)), Discriminator(GANConfig(width=16))]
    for net in plain:
        assert not any(k.split(".")[0] in ("in_y", "label", "embed") for k in net.state_dict())
    assert TINY_MLP.to_dict()["num_classes"] == K


def test_conditional_training_needs_labels(tmp_path):
    moons = load_dataset("moons", n=64)
    cfg = replace(default_config("diffusion", "vector"), steps=1)
    with pytest.raises(GenccError, match="'moons' has no labels"):
        train("diffusion", moons, tmp_path / "m", cfg, conditional=True)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["diffusion", "gan"])
def test_conditional_resume_reaches_the_same_weights(tmp_path, model):
    from gencc.models import checkpoint as ckpt

    digits = load_dataset("digits", n=64)
    cfg = replace(default_config(model, "image"), steps=4, batch_size=8, ckpt_every=2)
    train(model, digits, tmp_path / "full", cfg, width=16, conditional=True)
    train(model, digits, tmp_path / "half", replace(cfg, steps=2), width=16, conditional=True)
    train(model, digits, tmp_path / "half", cfg, resume=True)   # num_classes comes from the checkpoint
    a, b = ckpt.load_weights(tmp_path / "full"), ckpt.load_weights(tmp_path / "half")
    assert a.keys() == b.keys() and any(k.startswith(("label", "embed")) for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_conditional_checkpoint_stores_num_classes(cond_diffusion, cond_gan):
    for ckpt in (cond_diffusion, cond_gan):
        assert json.loads((ckpt / "config.json").read_text())["net"]["num_classes"] == 10


# --- guidance arithmetic ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["mlp", "unet"])
def test_guided_eps_is_the_cfg_combination_of_two_calls(arch):
    net, shape = tiny_net(arch)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, *shape, generator=g)
    t = torch.rand(5, generator=g)
    y = one_hot(torch.tensor([0, 1, 2, 1, 0]), K + 1)
    null = one_hot(torch.full((5,), K), K + 1)
    with torch.no_grad():
        eps_c, eps_u = net(x, t, y), net(x, t, null)
        for w in (0.0, 1.0, 3.5):
            got = GuidedEps(net, K, shape, shared_t=False)(x, t, y, torch.tensor([w]))
            torch.testing.assert_close(got, (1 + w) * eps_c - w * eps_u, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(GuidedEps(net, K, shape, shared_t=False)(x, t, y, torch.tensor([0.0])), eps_c)
    assert not torch.allclose(eps_c, eps_u)   # the label matters, so the checks above test something


@pytest.mark.parametrize("arch", ["mlp", "unet"])
def test_guided_step_and_its_onnx_export(tmp_path, arch):
    net, shape = tiny_net(arch)
    io = guided_step_io(shape, K)
    assert [s["name"] for s in io[0]] == ["x", "t", "coef", "z", "x_prev", "e_prev", "y", "w"]
    feeds = random_inputs(io[0], seed=2)(4)
    feeds["y"] = one_hot(torch.tensor([2, 0, 3, 1]), K + 1).numpy()   # 3: the null class
    x, t, coef, z, x_prev, e_prev, y, w = (torch.from_numpy(v) for v in feeds.values())
    with torch.no_grad():
        eps_c = net(x, t.expand(4), y)
        eps_u = net(x, t.expand(4), one_hot(torch.full((4,), K), K + 1))
        eps = (1 + w) * eps_c - w * eps_u
        want = coef[0] * x + coef[1] * eps + coef[2] * z + coef[3] * x_prev + coef[4] * e_prev
        got_next, got_eps = GuidedFusedStep(net, K, shape)(x, t, coef, z, x_prev, e_prev, y, w)
    torch.testing.assert_close(got_eps, eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_next, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_eps[2], eps_u[2], atol=1e-5, rtol=1e-5)   # null label: guidance cancels
    desc = export_function(GuidedFusedStep(net, K, shape), tmp_path / "step.onnx", *io)
    assert desc["max_abs_err_vs_torch"] <= 1e-4


@pytest.mark.slow
def test_llvm_pipeline_schedules_every_kernel_of_the_guided_unet_step(tmp_path):
    """The label embedding feeds the time MLP so no matmul on the shared t gets a batch-broadcast epilogue,
    which the Contraction schedule cannot take (it failed the build before)."""
    import onnx
    import tvm
    from tvm import tirx
    from tvm.relax.frontend.onnx import from_onnx

    from gencc.compiler.build import llvm_passes, resolve_target, rewrite_conv_transpose, rewrite_sigmoid

    net, shape = tiny_net("unet")
    export_function(GuidedFusedStep(net, K, shape), tmp_path / "step.onnx", *guided_step_io(shape, K))
    model = rewrite_conv_transpose(rewrite_sigmoid(onnx.load(str(tmp_path / "step.onnx"))))
    target = resolve_target("llvm", None)[0]
    with target:
        mod = tvm.transform.Sequential(llvm_passes(target))(from_onnx(model, keep_params_in_input=False))
    kernels = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    assert [name for name, f in kernels.items() if not f.attrs.get("tirx.is_scheduled")] == ["shape_func"]


def test_runtime_label_rows():
    idx = np.arange(10, 16)
    none = chunk_labels(None, idx, 6, 10)
    assert label_rows("diffusion", none, idx, 4)[:, 4].all()                               # null class
    assert label_rows("gan", none, idx, 4).argmax(1).tolist() == [2, 3, 0, 1, 2, 3]        # i mod K
    assert label_rows("gan", chunk_labels(3, idx, 6, 10), idx, 4).argmax(1).tolist() == [3] * 6
    per_sample = chunk_labels([0, 1, 2, 3, 0, 1], idx[2:4], 6, 10)
    assert per_sample.tolist() == [2, 3]
    with pytest.raises(GenccError, match="3 labels given for 6 samples"):
        chunk_labels([0, 1, 2], idx, 6, 10)


# --- the compiled conditional contract ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cond_artifacts(tmp_path_factory, cond_diffusion, cond_gan):
    from gencc.compiler.compile import compile_artifact

    out = tmp_path_factory.mktemp("cond-artifacts")
    compile_artifact(cond_diffusion, out / "d.gencc")
    compile_artifact(cond_gan, out / "g.gencc")
    return out / "d.gencc", out / "g.gencc"


@pytest.mark.slow
def test_conditional_diffusion_parity_torch_ort_tvm(cond_diffusion, cond_artifacts):
    import gencc

    art = cond_artifacts[0]
    m = read_manifest(art)
    assert m.num_classes == 10 and m.raw["step_contract"] == CFG_STEP_CONTRACT
    assert [s["name"] for s in m.functions["step"]["inputs"]][-2:] == ["y", "w"]
    models = [gencc.load(cond_diffusion), gencc.load(art, backend="ort"), gencc.load(art)]
    for kw in ({"label": 7, "guidance": 2.0}, {"label": [1, 2, 3, 4, 5, 6], "guidance": 0.0}, {}):
        got = [mdl.sample(6, steps=5, seed=3, batch_size=4, **kw) for mdl in models]
        for other in got[1:]:
            np.testing.assert_allclose(other, got[0], atol=1e-4)
    a, b = (models[2].sample(4, steps=5, seed=3, label=7, guidance=w) for w in (0.0, 3.0))
    assert np.abs(a - b).max() > 1e-3   # the compiled guidance input changes the samples


@pytest.mark.slow
def test_conditional_gan_parity_and_labels(cond_gan, cond_artifacts):
    import gencc

    art = cond_artifacts[1]
    assert read_manifest(art).functions["generator"]["inputs"][1] == {"name": "y", "shape": ["batch", 10],
                                                                      "dtype": "float32"}
    models = [gencc.load(cond_gan), gencc.load(art, backend="ort"), gencc.load(art)]
    for kw in ({"label": 4}, {}):
        got = [mdl.sample(5, seed=1, batch_size=2, **kw) for mdl in models]
        assert got[0].shape == (5, 1, 8, 8)
        for other in got[1:]:
            np.testing.assert_allclose(other, got[0], atol=1e-4)
    one, other = (models[2].sample(3, seed=1, label=k) for k in (4, 5))
    assert np.abs(one - other).max() > 1e-4   # same z, different label: the label input is used


@pytest.mark.slow
def test_manifest_checks_the_conditional_contract(tmp_path, cond_artifacts):
    raw = json.loads((cond_artifacts[0] / MANIFEST).read_text())
    cases = [({"num_classes": 0}, "does not fit num_classes 0"),
             ({"step_contract": "affine5-v1"}, "expected 'affine5-cfg-v1'"),
             ({"num_classes": 9}, "needs inputs y [batch, 10]"),
             ({"num_classes": -1}, "num_classes must be an integer")]
    for change, message in cases:
        shutil.rmtree(tmp_path / "a", ignore_errors=True)
        shutil.copytree(cond_artifacts[0], tmp_path / "a")
        (tmp_path / "a" / MANIFEST).write_text(json.dumps({**raw, **change}))
        with pytest.raises(GenccError, match=message.replace("[", r"\[")):
            read_manifest(tmp_path / "a", verify_hashes=False)


@pytest.mark.slow
def test_cli_samples_a_conditional_artifact(tmp_path, cond_artifacts):
    r = gencc("sample", cond_artifacts[0], "--n", 3, "--steps", 3, "--label", 7, "--guidance", 2.0,
              "--out", tmp_path / "s.npz")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert f["samples"].shape == (3, 1, 8, 8) and np.isfinite(f["samples"]).all()
    assert "class-conditional (10 classes)" in gencc("info", cond_artifacts[0]).output


# --- bad inputs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,words", [
    (["--label", 10], ["label 10 is out of range", "0..9"]),
    (["--label", -1], ["label -1 is out of range"]),
    (["--label", 3, "--guidance", -0.5], ["guidance must be a finite number >= 0", "-0.5"]),
    (["--label", 3, "--guidance", "nan"], ["guidance must be a finite number >= 0", "nan"]),
    (["--guidance", "inf"], ["guidance must be a finite number >= 0", "inf"]),
])
def test_cli_bad_conditional_inputs(tmp_path, cond_diffusion, args, words):
    out = tmp_path / "s.npz"
    assert_user_error(gencc("sample", cond_diffusion, "--n", 2, "--steps", 2, "--out", out, *args), *words)
    assert not list(tmp_path.iterdir())   # nothing written, not even a partial file


def test_cli_label_on_models_that_cannot_take_it(tmp_path, tiny_digits_diffusion, tiny_digits_gan, cond_gan):
    out = tmp_path / "s.npz"
    for ckpt in (tiny_digits_diffusion, tiny_digits_gan):
        assert_user_error(gencc("sample", ckpt, "--n", 2, "--out", out, "--label", 3),
                          "label 3 given", "unconditional")
    assert_user_error(gencc("sample", tiny_digits_diffusion, "--n", 2, "--out", out, "--guidance", 1.0),
                      "guidance 1.0 given", "unconditional")
    assert_user_error(gencc("sample", cond_gan, "--n", 2, "--out", out, "--label", 3, "--guidance", 1.0),
                      "applies only to diffusion models")
    assert_user_error(gencc("train", "diffusion", "--data", "moons", "--out", tmp_path / "m", "--conditional"),
                      "'moons' has no labels")
    assert not list(tmp_path.iterdir())


def test_guidance_checks_in_the_library(cond_diffusion):
    import gencc

    m = gencc.load(cond_diffusion)
    for bad in (math.nan, -1.0, True, "2"):
        with pytest.raises(GenccError, match="guidance must be a finite number"):
            m.sample(2, steps=2, label=1, guidance=bad)
    with pytest.raises(GenccError, match="label must be an integer"):
        m.sample(2, steps=2, label=1.5)
