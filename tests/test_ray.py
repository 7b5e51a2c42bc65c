"""gencc on Ray (gencc/ray.py): `gencc sample --ray` is bit-identical to `gencc sample`, also when an actor is
killed mid-job; the actors sample without torch; bad input is one line. One local Ray instance per module."""
import os
import signal
import sys

import numpy as np
import pytest

from cli_helpers import assert_user_error, gencc

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, object_store_memory=int(200e6), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def digits_gan_artifact(tmp_path_factory, tiny_digits_gan):
    from gencc.compiler.compile import compile_artifact

    out = tmp_path_factory.mktemp("gan-artifact") / "gan.gencc"
    compile_artifact(tiny_digits_gan, out, target="llvm")
    return out


def _both(tmp_path, art, *args):
    """The plain run's and the --ray run's samples for the same options."""
    plain = gencc("sample", art, *args, "--out", tmp_path / "plain.npz")
    assert plain.exit_code == 0, plain.output
    on_ray = gencc("sample", art, *args, "--out", tmp_path / "ray.npz", "--ray", "--ray-actors", 2)
    assert on_ray.exit_code == 0, on_ray.output
    load = lambda p: np.load(p, allow_pickle=False)["samples"]   # noqa: E731
    return load(tmp_path / "plain.npz"), load(tmp_path / "ray.npz"), on_ray.output


def test_ray_samples_of_a_2d_model_are_the_plain_runs(tmp_path, tiny_moons_artifact):
    plain, on_ray, said = _both(tmp_path, tiny_moons_artifact, "--n", 23, "--steps", 6, "--seed", 5,
                                "--batch-size", 4)
    assert on_ray.shape == (23, 2)
    np.testing.assert_array_equal(on_ray, plain)
    assert "samples/s while busy" in said and f"wrote {tmp_path / 'ray.npz'} (23 samples" in said
    assert sorted(os.listdir(tmp_path)) == ["plain.npz", "ray.npz"]   # no temporary file left


def test_ray_samples_of_an_image_model_are_the_plain_runs(tmp_path, digits_gan_artifact):
    plain, on_ray, _ = _both(tmp_path, digits_gan_artifact, "--n", 37, "--seed", 3, "--batch-size", 8)
    assert on_ray.shape == (37, 1, 8, 8)
    np.testing.assert_array_equal(on_ray, plain)


def test_the_sampler_answers_any_rows_in_any_order_without_torch(tiny_moons_artifact):
    """Rows out of order, split across job batches and repeated: each sample is the plain run's, and the
    actor process has not loaded torch."""
    import psutil

    import gencc
    from gencc.ray import GenccSampler

    plain = gencc.load(tiny_moons_artifact).sample(23, steps=6, seed=5, batch_size=4)
    rows = np.array([22, 3, 5, 4, 9, 5, 0], np.int64)
    ds = ray.data.from_numpy(rows).map_batches(lambda b: {"index": b["data"]}, batch_format="numpy") \
        .map_batches(GenccSampler, fn_constructor_args=(str(tiny_moons_artifact), 23),
                     fn_constructor_kwargs={"steps": 6, "seed": 5, "batch_size": 4, "report": True},
                     batch_size=3, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1))
    got = ds.take_all()
    assert sorted(int(r["index"]) for r in got) == sorted(rows.tolist())
    for r in got:
        np.testing.assert_array_equal(r["sample"], plain[r["index"]])
    pid = int(str(got[0]["actor"]).rsplit(":", 1)[1])
    if sys.platform.startswith("linux"):
        libraries = {m.path for m in psutil.Process(pid).memory_maps()}
        assert not any("libtorch" in p for p in libraries), sorted(p for p in libraries if "torch" in p)


@pytest.mark.slow
def test_a_killed_actor_loses_no_sample(tmp_path, tiny_moons_artifact):
    """SIGKILL one sampling actor once the first samples are in: Ray restarts it and retries its blocks, and
    the file is still the plain run's, every row once."""
    import psutil

    from gencc.api import SampleRequest
    from gencc.ray import RayJob, sample_request_on_ray

    killed = []

    def kill_one(done, n):
        if killed or done == n:
            return
        actors = [p for p in psutil.Process().children(recursive=True)
                  if "GenccSampler" in " ".join(p.cmdline())]
        if actors:
            os.kill(actors[0].pid, signal.SIGKILL)
            killed.append((actors[0].pid, done))

    req = SampleRequest(tiny_moons_artifact, 3000, tmp_path / "ray.npy", steps=50, seed=7, batch_size=50)
    sample_request_on_ray(req, RayJob(actors=2), kill_one)
    assert killed and killed[0][1] < 3000
    plain = gencc("sample", tiny_moons_artifact, "--n", 3000, "--steps", 50, "--seed", 7, "--batch-size", 50,
                  "--out", tmp_path / "plain.npy")
    assert plain.exit_code == 0, plain.output
    np.testing.assert_array_equal(np.load(tmp_path / "ray.npy"), np.load(tmp_path / "plain.npy"))


def test_an_artifact_missing_on_a_worker_is_one_line(tmp_path, tiny_moons_artifact, monkeypatch):
    """The driver has the artifact and the cluster's nodes do not (removed before they look)."""
    import shutil

    import gencc.ray as gray

    art = tmp_path / "here-only.gencc"
    shutil.copytree(tiny_moons_artifact, art)
    check = gray.check_nodes

    def vanish_then_check(artifact, want):
        shutil.rmtree(art)
        check(artifact, want)

    monkeypatch.setattr(gray, "check_nodes", vanish_then_check)
    result = gencc("sample", art, "--n", 8, "--steps", 2, "--out", tmp_path / "s.npy", "--ray")
    assert_user_error(result, f"artifact {str(art)!r} is missing on Ray node")
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("args, words", [
    (["--ray-address", "127.0.0.1:1"], ["cannot reach the Ray cluster at '127.0.0.1:1'"]),
    (["--ray-address", "nonsense"], ["must look like HOST:PORT"]),
    (["--ray", "--shard", "0/2"], ["--ray draws the whole job in one go", "--shard"]),
    (["--ray", "--resume"], ["does not take --resume"]),
    (["--ray-actors", 0], ["--ray-actors must be a positive number", "got 0"]),
])
def test_bad_ray_settings_are_one_line_errors(tmp_path, tiny_moons_artifact, args, words):
    ray_was_up = ray.is_initialized()
    result = gencc("sample", tiny_moons_artifact, "--n", 8, "--steps", 2, "--out", tmp_path / "s.npz", *args)
    assert_user_error(result, *words)
    assert not (tmp_path / "s.npz").exists()
    assert ray.is_initialized() == ray_was_up


@pytest.mark.slow
def test_two_ray_train_workers_take_the_single_process_steps(tmp_path):
    """2 Ray Train workers train steps 0-4, one process resumes their checkpoint to 8: the same as one
    process 0-8 (as tests/test_distributed.py checks for --nproc and torchrun)."""
    from dataclasses import replace

    from gencc.models.train import train
    from gencc.ray import train_on_ray
    from test_distributed import CFG, MOONS, WIDTH, _assert_same_checkpoint

    seen_one, seen_two = [], []
    train("diffusion", MOONS, tmp_path / "one", CFG, width=WIDTH, progress=lambda *a: seen_one.append(a[2]))
    done = train_on_ray("diffusion", MOONS, tmp_path / "two", replace(CFG, steps=4), workers=2, width=WIDTH,
                        progress=lambda *a: seen_two.append(a[2]))
    assert done.steps == 4
    assert [s["loss"] for s in seen_two] == pytest.approx([s["loss"] for s in seen_one[:4]], rel=1e-5)
    train("diffusion", MOONS, tmp_path / "two", CFG, resume=True)
    _assert_same_checkpoint(tmp_path / "one", tmp_path / "two", ["net"])


@pytest.mark.slow
def test_ray_training_through_the_cli(tmp_path):
    """The CLI's --ray-workers: rank 0 alone reports; a rank's refusal is one line and loses nothing."""
    r = gencc("train", "diffusion", "--data", "moons", "--out", tmp_path / "c", "--ray-workers", 2, "--steps", 2,
              "--batch-size", 16, "--width", 16)
    assert r.exit_code == 0, r.output
    assert r.output.count("wrote ") == 1 and "(step 2," in r.output, r.output
    before = (tmp_path / "c" / "weights.safetensors").read_bytes()
    r = gencc("train", "gan", "--data", "moons", "--out", tmp_path / "c", "--resume", "--ray-workers", 2,
              "--steps", 4, "--batch-size", 16)
    # As with --nproc: stdout keeps the bar drawn before the ranks failed; stderr is the one line.
    assert r.exit_code == 2, r.output
    assert r.stderr.splitlines() == [f"gencc: error: {str(tmp_path / 'c')!r} holds a diffusion checkpoint, "
                                     "not a gan"], r.stderr
    assert (tmp_path / "c" / "weights.safetensors").read_bytes() == before


@pytest.mark.parametrize("args, words", [
    (["--ray-workers", 2, "--nproc", 2], ["drop --nproc"]),
    (["--ray-address", "127.0.0.1:1"], ["--ray-address needs --ray-workers"]),
    (["--ray-workers", 3, "--batch-size", 16], ["batch-size 16 does not split evenly over 3 processes"]),
])
def test_bad_ray_training_settings_are_one_line_errors(tmp_path, args, words):
    r = gencc("train", "diffusion", "--data", "moons", "--out", tmp_path / "c", "--steps", 2, *args)
    assert_user_error(r, *words)
    assert not (tmp_path / "c").exists()


def test_the_documented_recipe_runs_with_every_cpu_an_actor(tiny_moons_artifact):
    """docs/SCALING.md's five lines, with as many actors as the instance has CPUs: index_rows needs none, so
    the actors cannot starve the rows they wait for (ray.data.range's read tasks would)."""
    import gencc
    from gencc.ray import GenccSampler, index_rows

    ds = index_rows(1000, 96).map_batches(GenccSampler, fn_constructor_args=(str(tiny_moons_artifact), 1000),
                                          fn_constructor_kwargs={"steps": 4, "batch_size": 96},
                                          batch_size=96, concurrency=2, batch_format="numpy")
    got = np.full((1000, 2), np.nan, np.float32)
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        got[b["index"]] = b["sample"]
    np.testing.assert_array_equal(got, gencc.load(tiny_moons_artifact).sample(1000, steps=4, batch_size=96))


def test_a_killed_drivers_hidden_rows_file_is_removed_by_the_next_run(tmp_path):
    # The rows file is the size of the whole output; a driver killed with SIGKILL cannot clean it up, so
    # the next run on the same --out must (as every other gencc output's temporaries are).
    import signal
    import subprocess
    import sys

    from gencc.ray import OffsetWriter

    out = tmp_path / "big.npy"
    code = ("import os, signal, pathlib; from gencc.ray import OffsetWriter; "
            f"OffsetWriter(pathlib.Path({str(out)!r}), 1000, (2,), 10); os.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(list(tmp_path.iterdir())) == 1   # the dead driver's rows file
    writer = OffsetWriter(out, 1000, (2,), 10)
    assert list(tmp_path.iterdir()) == [writer.path]
