"""Watching the reverse process: Model.sample's on_step view, and the preview folders of gencc sample."""
import json

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_user_error, gencc
from gencc.runtime.backend import Functions
from gencc.runtime.errors import GenccError
from gencc.runtime.model import DiffusionModel, GanModel
from gencc.runtime.noise import SampleNoise
from gencc.runtime.normalize import Normalization
from gencc.runtime.preview import write_preview
from gencc.runtime.samplers import affine_step, time_grid
from gencc.runtime.sde import VPSDE

SDE = VPSDE()
NORM = Normalization((1.0, -2.0), (0.5, 3.0), (2,))   # not the identity, so decoding is checked too


def linear_eps(x, t):
    return 0.3 * x + 0.1 * t   # any fixed function will do: the test recomputes it by hand


def toy_model(fused: bool) -> DiffusionModel:
    step = affine_step(linear_eps) if fused else None
    return DiffusionModel((2,), NORM, Functions("exact", eps_fn=linear_eps, step_fn=step), sde=SDE)


@pytest.mark.parametrize("fused", [False, True])
def test_denoised_estimate_is_tweedie_of_the_steps_own_eps(fused):
    views = []
    toy_model(fused).sample(5, steps=4, sampler="ddim", seed=3,
                            on_step=lambda v: views.append((v.k, v.t, v.state(), v.denoised())))
    ts = time_grid(SDE, 4)
    x_in = SampleNoise(3, np.arange(5), (2,)).prior().astype(np.float64)
    for k, t, state, denoised in views:
        # By hand: ddim evaluates eps once per step, at the step's start t_k, on the state before the step.
        assert t == pytest.approx(ts[k])
        x0 = (x_in - SDE.sigma(ts[k]) * linear_eps(x_in, ts[k])) / SDE.gamma(ts[k])
        np.testing.assert_allclose(denoised, x0 * np.array([0.5, 3.0]) + np.array([1.0, -2.0]), rtol=1e-5, atol=1e-5)
        x_in = state.astype(np.float64)
    assert [v[0] for v in views] == [0, 1, 2, 3]


def test_watching_changes_no_sample():
    m = toy_model(True)
    plain = m.sample(6, steps=5, sampler="em", seed=1)
    watched = m.sample(6, steps=5, sampler="em", seed=1, on_step=lambda v: v.denoised())
    np.testing.assert_array_equal(plain, watched)


def test_preview_folder_has_every_kth_estimate_the_final_samples_and_a_gif(tmp_path):
    out = tmp_path / "frames"
    record = write_preview(toy_model(True), out, every=3, n=40, steps=10, sampler="em", seed=0)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["final.png", "step_0003.png", "step_0006.png", "step_0009.png"]
    with Image.open(out / "reverse.gif") as gif:
        assert gif.n_frames == 4
    saved = json.loads((out / "preview.json").read_text())
    assert saved == record and [f["step"] for f in saved["frames"]] == [3, 6, 9, None]
    # A second preview replaces the folder whole: no frame of the first one is left behind.
    write_preview(toy_model(True), out, every=5, n=40, steps=10, sampler="em", seed=0)
    assert sorted(p.name for p in out.glob("*.png")) == ["final.png", "step_0005.png", "step_0010.png"]


def test_gan_preview_is_the_single_final_frame(tmp_path):
    gan = GanModel((2,), NORM, Functions("exact", generate_fn=lambda z: np.tanh(z[:, :2])), latent_shape=(4,))
    record = write_preview(gan, tmp_path / "g", every=1, n=30, seed=0)
    assert [f["file"] for f in record["frames"]] == ["final.png"]
    with Image.open(tmp_path / "g" / "reverse.gif") as gif:
        assert gif.n_frames == 1


def test_cli_preview_of_a_checkpoint(tiny_moons_diffusion, tmp_path):
    r = gencc("sample", tiny_moons_diffusion, "--n", 50, "--out", tmp_path / "s.npz", "--steps", 6,
              "--preview", tmp_path / "p", "--preview-every", 2)
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "p").glob("*.png"))) == 4   # steps 2, 4, 6 and the final samples
    with Image.open(tmp_path / "p" / "reverse.gif") as gif:
        assert gif.n_frames == 4


def test_cli_preview_of_a_gan_image_model(tiny_digits_gan, tmp_path):
    r = gencc("sample", tiny_digits_gan, "--n", 10, "--out", tmp_path / "s.npz", "--preview", tmp_path / "p")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == ["final.png"]


@pytest.mark.parametrize("args,words", [
    (("--preview", "{p}", "--preview-every", "0"), ("preview-every", "0")),
    (("--preview", "{p}", "--preview-every", "-3"), ("preview-every", "-3")),
    (("--preview", "{file}"), ("exists and is not a directory",)),
    (("--preview", "{foreign}"), ("not empty", "preview.json")),
    (("--preview", "{tmp}/no/such/dir"), ("does not exist",)),
    (("--preview-every", "5"), ("needs --preview",)),
    (("--preview", "{tmp}/s.npz"), ("also an output",)),
])
def test_cli_preview_errors_are_one_line(tmp_path, args, words):
    (tmp_path / "file").write_text("mine")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    fill = {"p": tmp_path / "p", "file": tmp_path / "file", "foreign": tmp_path / "foreign", "tmp": tmp_path}
    r = gencc("sample", tmp_path / "missing.ckpt", "--n", 5, "--out", tmp_path / "s.npz",
              *(a.format(**fill) for a in args))
    assert_user_error(r, *words)
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.slow
def test_denoised_estimates_agree_across_tvm_ort_and_torch(tiny_moons_diffusion, tmp_path):
    from gencc import load
    from gencc.compiler.compile import compile_artifact

    compile_artifact(tiny_moons_diffusion, tmp_path / "m.gencc")
    frames = {}
    for backend, path in (("tvm", tmp_path / "m.gencc"), ("ort", tmp_path / "m.gencc"),
                          ("torch", tiny_moons_diffusion)):
        seen = []
        load(path, backend=backend).sample(20, steps=6, sampler="ode-heun",
                                           on_step=lambda v, seen=seen: seen.append(v.denoised()))
        frames[backend] = np.stack(seen)
    np.testing.assert_allclose(frames["tvm"], frames["torch"], atol=1e-4)
    np.testing.assert_allclose(frames["ort"], frames["torch"], atol=1e-4)
    r = gencc("sample", tmp_path / "m.gencc", "--n", 20, "--out", tmp_path / "s.npz", "--steps", 4,
              "--preview", tmp_path / "p", "--preview-every", 1)
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "p").glob("step_*.png"))) == 4


# Training previews (models/train_preview.py).

def _train_weights(tmp_path, name, model, data, steps, watch=None, **kw):
    from dataclasses import replace

    from gencc.models.checkpoint import load_train_state, load_weights
    from gencc.models.data import load_dataset
    from gencc.models.train import default_config, train

    ds = load_dataset(data)
    cfg = replace(default_config(model, ds.kind), steps=steps, ckpt_every=steps, **kw)
    train(model, ds, tmp_path / name, cfg, watch=watch)
    return load_weights(tmp_path / name), load_train_state(tmp_path / name)


def _assert_same_tensors(a, b):
    import torch

    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_tensors(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_tensors(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.slow
@pytest.mark.parametrize("model,data,kw", [("diffusion", "moons", {}), ("gan", "digits", {"batch_size": 8})])
def test_training_previews_leave_the_weights_bit_identical(tmp_path, model, data, kw):
    # The GAN's generator has BatchNorm: sampling it in training mode would move its running statistics.
    from gencc.models.train_preview import TrainPreview

    watch = TrainPreview(tmp_path / "p", every=2, seed=0)
    plain = _train_weights(tmp_path, "plain", model, data, 5, **kw)
    watched = _train_weights(tmp_path, "watched", model, data, 5, watch=watch, **kw)
    _assert_same_tensors(plain, watched)
    assert sorted(p.name for p in (tmp_path / "p").glob("samples_*.png")) == \
        ["samples_step000002.png", "samples_step000004.png", "samples_step000005.png"]
    assert (tmp_path / "p" / "loss.png").is_file()
    rows = (tmp_path / "p" / "losses.csv").read_text().splitlines()
    assert len(rows) == 6 and rows[0].startswith("step,")


def test_loss_chart_draws_each_loss():
    from gencc.models.train_preview import COLOURS, loss_chart

    rows = [[s, 1.0 / s, 0.5] for s in range(1, 200)]
    img = np.asarray(loss_chart(rows, ["d_loss", "g_loss"]))
    for colour in COLOURS[:2]:
        assert (img == colour).all(axis=-1).sum() > 100   # each series' smoothed line is drawn


@pytest.mark.slow
def test_cli_train_previews_beside_the_checkpoint_and_resume_keeps_the_history(tmp_path):
    out = tmp_path / "m.ckpt"
    r = gencc("train", "diffusion", "--data", "moons", "--out", out, "--steps", 4, "--preview-every", 2)
    assert r.exit_code == 0, r.output
    folder = tmp_path / "m.ckpt.preview"
    assert sorted(p.name for p in folder.iterdir()) == \
        ["loss.png", "losses.csv", "samples_step000002.png", "samples_step000004.png"]
    assert not (out / "loss.png").exists()   # the checkpoint holds only its own files
    r = gencc("train", "diffusion", "--data", "moons", "--out", out, "--steps", 6, "--preview-every", 2, "--resume")
    assert r.exit_code == 0, r.output
    steps = [int(line.split(",")[0]) for line in (folder / "losses.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]
    r = gencc("train", "diffusion", "--data", "moons", "--out", tmp_path / "n.ckpt", "--steps", 2,
              "--preview-every", 0)
    assert r.exit_code == 0 and not (tmp_path / "n.ckpt.preview").exists()


def test_cli_train_preview_errors_are_one_line(tmp_path):
    (tmp_path / "file").write_text("mine")
    assert_user_error(gencc("train", "diffusion", "--data", "moons", "--out", tmp_path / "m.ckpt",
                            "--preview-every", -1), "preview-every", "-1")
    assert_user_error(gencc("train", "diffusion", "--data", "moons", "--out", tmp_path / "m.ckpt",
                            "--preview", tmp_path / "file"), "not a directory")
    assert_user_error(gencc("train", "diffusion", "--data", "moons", "--out", tmp_path / "m.ckpt",
                            "--preview", tmp_path / "m.ckpt"), "also an output")
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "m.ckpt").exists()


def test_previews_of_data_that_cannot_be_pictured(tmp_path):
    # 3-D points: gencc sample --preview refuses up front; training previews draw the loss curve alone.
    m = DiffusionModel((3,), Normalization((0.0,), (1.0,), (3,)), Functions("exact", eps_fn=linear_eps), sde=SDE)
    with pytest.raises(GenccError, match=r"images or 2-D points.*\(3,\)"):
        write_preview(m, tmp_path / "p", every=1, steps=2)
    assert not (tmp_path / "p").exists()
    from gencc.models.train_preview import TrainPreview

    watch = TrainPreview(tmp_path / "t", every=1)
    watch(1, 1, {"loss": 0.5}, lambda: m)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["loss.png", "losses.csv"]
