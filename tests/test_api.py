"""The interface layer (gencc/api.py) called directly, as a Python program would: no typer, no CLI runner.
And the CLI reads its defaults from the library (tests/test_code_rules.py counts its parameters)."""
import inspect
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest

import gencc
from fake_artifact import fake_artifact
from gencc.runtime import defaults
from gencc.runtime.errors import GenccError


def test_import_gencc_loads_the_interface_only_when_used(tmp_path):
    code = ("import sys, gencc\n"
            "assert 'gencc.api' not in sys.modules\n"
            "assert gencc.TrainRequest.__name__ == 'TrainRequest' and callable(gencc.sample_to_file)\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tvm', 'sklearn') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with pytest.raises(AttributeError):
        gencc.no_such_function   # noqa: B018


def test_requests_are_frozen_and_default_from_the_library(tmp_path):
    from gencc.models.train_preview import DEFAULT_EVERY

    s = gencc.SampleRequest(tmp_path / "m.ckpt", n=4, out=tmp_path / "s.npz")
    assert (s.seed, s.batch_size, s.steps, s.sampler) == (defaults.DEFAULT_SEED, defaults.DEFAULT_BATCH_SIZE,
                                                         None, None)   # None: "not given"; the model decides
    with pytest.raises(FrozenInstanceError):
        s.n = 5
    t = gencc.TrainRequest("gan", "moons", tmp_path / "g.ckpt")
    assert t.preview_every == DEFAULT_EVERY and t.device == "cpu" and t.seed is None
    assert gencc.SampleRequest(str(tmp_path), n=1, out="s.npz").out == Path("s.npz")   # str paths are fine
    assert gencc.TrainRequest("gan", "moons", "g.ckpt", preview_dir="p").preview_dir == Path("p")


def test_the_cli_and_model_sample_read_the_same_defaults():
    from gencc.cli import demo, main
    from gencc.compiler.bench import BenchConfig
    from gencc.models.train_preview import DEFAULT_EVERY
    from gencc.runtime.model import Model

    def option_defaults(command):
        return {name: p.default.default for name, p in inspect.signature(command).parameters.items()}

    sample, train, bench = option_defaults(main.sample), option_defaults(main.train), option_defaults(main.bench)
    assert (sample["batch_size"], sample["seed"]) == (defaults.DEFAULT_BATCH_SIZE, defaults.DEFAULT_SEED)
    assert sample["steps"] is None and sample["sampler"] is None   # given vs not given (a GAN refuses them)
    assert train["preview_every"] == DEFAULT_EVERY
    assert (bench["steps"], bench["sampler"]) == (BenchConfig.steps, BenchConfig.sampler)
    model_sample = inspect.signature(Model.sample).parameters
    assert model_sample["steps"].default == defaults.DEFAULT_STEPS == demo.SAMPLE_STEPS
    assert model_sample["sampler"].default == defaults.DEFAULT_SAMPLER == demo.SAMPLER
    assert model_sample["batch_size"].default == defaults.DEFAULT_BATCH_SIZE


def test_describe_a_checkpoint_and_an_artifact(tiny_moons_diffusion, tmp_path):
    d = gencc.describe(tiny_moons_diffusion)
    assert d["kind"] == "checkpoint" and d["config"]["model"] == "diffusion" and d["config"]["step"] == 30
    assert gencc.describe(str(tiny_moons_diffusion)) == d   # a str path as well as a Path
    art = gencc.describe(fake_artifact(tmp_path / "a.gencc"))
    assert art["kind"] == "artifact" and art["files_intact"] and art["signed_by"] is None
    assert set(art["libraries"]) == {"step.so", "step_b4.so", "eps.so"}
    with pytest.raises(GenccError, match="does not exist"):
        gencc.describe(tmp_path / "none")


def test_sample_to_file_matches_model_sample_and_reports_each_file(tiny_moons_diffusion, tmp_path):
    heard = []
    req = gencc.SampleRequest(tiny_moons_diffusion, n=10, out=tmp_path / "s.npz", steps=4, batch_size=4,
                              png=tmp_path / "s.png")
    outcome = gencc.sample_to_file(req, on_written=lambda what, o: heard.append((what, o.count)))
    assert heard == [("samples", 10), ("png", 10)]
    assert (outcome.start, outcome.count, outcome.shape, outcome.backend) == (0, 10, (2,), "torch")
    with np.load(req.out) as z:
        got = z["samples"]
    want = gencc.load(tiny_moons_diffusion).sample(10, steps=4, seed=0, batch_size=4)   # same rows per call
    assert np.array_equal(got, want)
    assert (tmp_path / "s.png").stat().st_size > 0
    with pytest.raises(GenccError, match="already exists; pass --force"):
        gencc.sample_to_file(req)


def test_shards_through_the_interface_merge_to_the_whole_job(tiny_moons_gan, tmp_path):
    whole = gencc.sample_to_file(gencc.SampleRequest(tiny_moons_gan, n=10, out=tmp_path / "all.npy", batch_size=4))
    assert whole.count == 10
    parts = []
    for k in range(2):
        part = gencc.sample_to_file(gencc.SampleRequest(tiny_moons_gan, n=10, out=tmp_path / f"p{k}.npz",
                                                        batch_size=4, shard=f"{k}/2"))
        parts.append(part.request.out)
        assert (part.start, part.count) == ((0, 4), (4, 6))[k]   # whole batches: 3 batches cut 1 + 2
    assert gencc.merge(parts, tmp_path / "merged.npy") == (10, (2,))
    assert np.array_equal(np.load(tmp_path / "merged.npy"), np.load(tmp_path / "all.npy"))


def test_an_option_the_model_would_ignore_is_refused_before_any_file(tiny_moons_gan, tmp_path):
    req = gencc.SampleRequest(tiny_moons_gan, n=4, out=tmp_path / "s.npz", steps=10)
    with pytest.raises(GenccError, match="--steps applies to diffusion models; this model is a GAN"):
        gencc.sample_to_file(req)
    assert list(tmp_path.iterdir()) == []


def test_shard_job_cuts_whole_batches_and_refuses_an_empty_shard():
    from gencc.runtime.shard import Shard, shard_job

    assert shard_job(None, 10, 4, {}, {}) == shard_job(None, 10, 4, {"other": 1}, {})   # no shard: the whole job
    job = shard_job(Shard(1, 2), 10, 4, {"model": "m"}, {"seed": 0})
    assert (job.start, job.count) == (4, 6) and list(job.extra["shard"]) == [1, 2, 4, 10, 4]
    with pytest.raises(GenccError, match="shard 0/3 is empty"):   # one batch for three shards: only 2/3 has it
        shard_job(Shard(0, 3), 4, 4, {}, {})


def test_train_reports_stages_and_the_outcome(tmp_path):
    stages, done = [], []

    def on_stage(name, total):
        stages.append((name, total))
        return lambda step, total, losses: None

    req = gencc.TrainRequest("gan", "moons", tmp_path / "g.ckpt", steps=3, batch_size=8, ckpt_every=3,
                             preview_every=0)
    outcome = gencc.train(req, on_stage=on_stage, on_done=done.append)
    assert stages == [("gan", 3)] and done == [outcome]
    assert outcome.result.steps == 3 and not outcome.up_to_date and outcome.reporting
    again = gencc.train(gencc.TrainRequest("gan", "moons", req.out, resume=True, preview_every=0))
    assert again.up_to_date and again.result.steps == 3
    with pytest.raises(GenccError, match="--autoencoder and --ae-steps apply to latent-diffusion"):
        gencc.train(gencc.TrainRequest("gan", "moons", tmp_path / "x.ckpt", ae_steps=3))


def test_make_data_and_keygen(tmp_path):
    made = gencc.make_data("moons", tmp_path / "m.npz", n=50, seed=1)
    assert (made.count, made.sample_shape) == (50, (2,))
    with np.load(tmp_path / "m.npz") as z:
        assert z["data"].shape == (50, 2)
    with pytest.raises(GenccError, match="unknown dataset"):
        gencc.make_data("nope", tmp_path / "n.npz")
    keys = gencc.keygen(tmp_path / "keys")
    assert keys.private.exists() and keys.public.exists() and keys.fingerprint.startswith("sha256:")
