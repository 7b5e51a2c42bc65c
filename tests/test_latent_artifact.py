"""Compiled latent diffusion: the decoder and the whole latent pipeline agree across torch, ONNX Runtime
and TVM; the manifest records the latent shape and scale and is checked; the CLI around it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import gencc
from cli_helpers import assert_user_error, gencc as run_cli
from fake_artifact import edit_manifest
from gencc.compiler.compile import compile_artifact
from gencc.models.latent import load_latent_checkpoint
from gencc.runtime.artifact import read_manifest
from gencc.runtime.errors import GenccError

pytestmark = pytest.mark.slow   # the module fixture compiles with TVM


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny_shapes_latent):
    out = tmp_path_factory.mktemp("latent-art") / "ld.gencc"
    compile_artifact(tiny_shapes_latent, out, target="llvm")
    return out


def test_manifest_records_the_latent_shape_and_scale(art, tiny_shapes_latent):
    m = read_manifest(art)
    lc = load_latent_checkpoint(tiny_shapes_latent)
    assert m.model == "latent-diffusion" and m.latent_shape == (4, 8, 8) and m.sample_shape == (3, 32, 32)
    assert m.latent_scale == lc.scale and set(m.functions) == {"step", "eps", "decoder"}
    assert m.raw["parity_max_abs_err"]["decoder"] <= 1e-4   # the compile-time gate against ONNX Runtime


def test_decoder_parity_torch_ort_tvm(art, tiny_shapes_latent):
    z = np.random.default_rng(0).standard_normal((5, 4, 8, 8)).astype(np.float32)
    want = gencc.load(tiny_shapes_latent).net.decode(z)
    for backend in ("ort", "tvm"):
        got = gencc.load(art, backend=backend).net.decode(z)
        assert np.abs(got - want).max() <= 1e-4, backend


@pytest.mark.parametrize("sampler", ["em", "ddim"])
def test_latent_pipeline_parity_torch_ort_tvm(art, tiny_shapes_latent, sampler):
    models = {"torch": gencc.load(tiny_shapes_latent), "ort": gencc.load(art, backend="ort"), "tvm": gencc.load(art)}
    runs = {k: m.sample(5, steps=20, sampler=sampler, seed=3, batch_size=3) for k, m in models.items()}
    assert runs["torch"].shape == (5, 3, 32, 32)
    for k in ("ort", "tvm"):
        err = np.abs(runs[k] - runs["torch"]).max()
        assert err <= 1e-3, f"{k} vs torch after 20 {sampler} steps, decoded: {err}"


def test_tvm_callback_previews_decode(art):
    m = gencc.load(art)
    seen = []
    m.sample(2, steps=5, seed=0, callback=lambda k, x: seen.append(m.decode(x)))
    assert len(seen) == 5 and all(s.shape == (2, 3, 32, 32) and np.isfinite(s).all() for s in seen)


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.pop("latent_scale"), "latent_scale"),
    (lambda m: m.update(latent_scale=-1.0), "latent_scale"),
    (lambda m: m.update(latent_shape=[2, 8, 8]), "latent_shape"),
    (lambda m: m["functions"]["decoder"]["outputs"][0].update(shape=["batch", 3, 16, 16]), "'decoder' output"),
    (lambda m: m["functions"].pop("decoder"), "needs the function 'decoder'"),
])
def test_bad_latent_manifests_are_refused(art, tmp_path, edit, words):
    bad = tmp_path / "bad.gencc"
    shutil.copytree(art, bad)
    edit_manifest(bad, edit)
    with pytest.raises(GenccError, match=words):
        gencc.load(bad)


def test_cli_compile_sample_info_export(art, tiny_shapes_latent, tmp_path):
    r = run_cli("sample", art, "--n", 4, "--steps", 5, "--out", tmp_path / "s.npz", "--png", tmp_path / "s.png")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "s.npz")["samples"].shape == (4, 3, 32, 32) and (tmp_path / "s.png").is_file()
    r = run_cli("info", art)
    assert r.exit_code == 0 and "latent-diffusion" in r.output and "decoder = decoder.so" in r.output, r.output
    r = run_cli("export", tiny_shapes_latent, "--out", tmp_path / "onnx")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert meta["model"] == "latent-diffusion" and (tmp_path / "onnx" / "decoder.onnx").is_file()
    assert_user_error(run_cli("sample", art, "--n", 2, "--out", tmp_path / "t.npz", "--backend", "torch"),
                      "torch backend needs a checkpoint")
    assert_user_error(run_cli("train", "latent-diffusion", "--data", "shapes", "--out", tmp_path / "x",
                              "--autoencoder", art), "is a compiled artifact")


def test_bench_covers_the_latent_pipeline(art, tiny_shapes_latent, tmp_path):
    out = tmp_path / "b.json"
    r = run_cli("bench", tiny_shapes_latent, "--backends", "torch,ort,tvm", "--batch", "2", "--steps", 2,
                "--artifact", art, "--json", out, "--md", tmp_path / "b.md")
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["model"] == "latent-diffusion" and report["decoder_flops"]["2"] > 0
    for row in report["rows"]:
        assert row["error"] is None, row
        assert row["step_median_s"] > 0 and row["decoder_median_s"] > 0 and row["samples_per_s"] > 0
    assert "decoder (median)" in (tmp_path / "b.md").read_text()
