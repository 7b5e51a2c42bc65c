"""Faults: SIGKILL during training, compiling and sampling; threads; NaN/inf; memory guards.

Each test is a row of docs/RELIABILITY.md. Subprocesses run the real CLI with one thread each, so
their floating point matches the in-process references they are compared with.
"""
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import gencc
from gencc.models import checkpoint as ckpt
from gencc.models.data import load_dataset
from gencc.models.train import default_config, train
from gencc.runtime import stream
from gencc.runtime.atomic import atomic_dir
from gencc.runtime.errors import GenccError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TVM_NUM_THREADS": "1"}
GENCC = [sys.executable, "-m", "gencc.cli.main"]


def gencc_cli(*args, check=True):
    r = subprocess.run(GENCC + [str(a) for a in args], env=ENV, capture_output=True, text=True, timeout=600)
    assert not check or r.returncode == 0, r.stderr
    return r


def kill_when(args, condition, timeout=300) -> bool:
    """Run gencc; SIGKILL it as soon as condition() holds. True if it was killed before it finished."""
    p = subprocess.Popen(GENCC + [str(a) for a in args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while p.poll() is None and time.monotonic() < deadline:
            if condition():
                p.kill()
                p.wait()
                return True
            time.sleep(0.002)
        assert p.returncode == 0, p.stderr.read().decode()
        return False
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def one_thread():
    """torch in this process computes like the one-thread subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


def hidden_leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- training ------------------------------------------------------------------------------------

STEPS, EVERY = 240, 10
TRAIN = {"steps": STEPS, "batch_size": 32, "lr": 2e-3, "ckpt_every": EVERY}


def _step(out) -> int:
    try:
        return ckpt.load_config(out)["step"]
    except (GenccError, OSError):   # not written yet, or swapped under us
        return -1


def _check_loadable(out) -> int:
    """The last checkpoint loads whole: config, weights and training state agree on the step."""
    config, state = ckpt.load_config(out), ckpt.load_train_state(out)
    assert config["step"] == state["step"] and config["step"] % EVERY == 0
    assert ckpt.load_weights(out).keys() == state["net"].keys()
    assert np.isfinite(gencc.load(out).sample(4, steps=3)).all()
    return config["step"]


@pytest.mark.slow
def test_training_killed_at_several_points_resumes_to_the_same_weights(tmp_path):
    out = tmp_path / "m.ckpt"
    args = ["train", "diffusion", "--data", "moons", "--out", out, "--width", 16, "--seed", 0,
            *[x for k, v in TRAIN.items() for x in (f"--{k.replace('_', '-')}", v)]]
    in_write = lambda: any(p.name.startswith(".m.ckpt.") for p in tmp_path.iterdir())  # noqa: E731
    kill_points = [lambda: _step(out) >= EVERY,            # just after the first checkpoint
                   in_write,                                # in the middle of writing one
                   lambda: _step(out) >= STEPS // 2]        # half-way
    steps_seen = []
    for i, condition in enumerate(kill_points):
        assert kill_when(args + (["--resume"] if i else []), condition), f"kill point {i}: finished first"
        steps_seen.append(_check_loadable(out))
    gencc_cli(*args, "--resume")
    assert ckpt.load_config(out)["step"] == STEPS and steps_seen == sorted(steps_seen) and steps_seen[-1] < STEPS
    assert hidden_leftovers(tmp_path) == []

    threads = one_thread()
    try:
        ds = load_dataset("moons", seed=0)
        train("diffusion", ds, tmp_path / "ref.ckpt", replace(default_config("diffusion", "vector"), **TRAIN), width=16)
    finally:
        torch.set_num_threads(threads)
    got, want = ckpt.load_weights(out), ckpt.load_weights(tmp_path / "ref.ckpt")
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)


def test_checkpoint_write_killed_between_renames_is_recovered(tmp_path, tiny_moons_diffusion):
    out = tmp_path / "m.ckpt"
    shutil.copytree(tiny_moons_diffusion, out)
    os.replace(out, tmp_path / ".m.ckpt.old")                           # the first rename happened
    (tmp_path / ".m.ckpt.4194305.abc123.tmp").mkdir()                   # a dead writer's new copy
    (tmp_path / ".m.ckpt.4194305.abc123.tmp" / "config.json").write_text("{half")
    assert ckpt.load_config(out)["step"] == 30                          # readers use the old copy
    assert gencc.load(out).sample(3, steps=2).shape == (3, 2)
    assert not out.exists()                                             # ... without moving anything
    cfg = replace(default_config("diffusion", "vector"), steps=40, ckpt_every=10)
    train("diffusion", load_dataset("moons"), out, cfg, resume=True)    # the next writer recovers it
    assert ckpt.load_config(out)["step"] == 40
    assert hidden_leftovers(tmp_path) == []


def test_atomic_dir_keeps_the_old_version_when_the_writer_fails(tmp_path):
    out = tmp_path / "d"
    with atomic_dir(out) as tmp:
        (tmp / "f").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "f").write_text("new, half")
        raise RuntimeError("killed")
    assert (out / "f").read_text() == "old" and hidden_leftovers(tmp_path) == []


# --- compiling -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_compile_killed_midway_leaves_no_artifact(tmp_path, tiny_moons_diffusion):
    from gencc.compiler.compile import compile_artifact

    out = tmp_path / "m.gencc"
    started = lambda: any(p.name.startswith(".m.gencc.") and any(p.iterdir())  # noqa: E731
                          for p in tmp_path.iterdir() if p.is_dir())
    assert kill_when(["compile", tiny_moons_diffusion, "--out", out], started)
    assert not out.exists()
    leftovers = hidden_leftovers(tmp_path)
    assert leftovers and all(n.startswith(".m.gencc.") and n.endswith(".tmp") for n in leftovers), leftovers
    compile_artifact(tiny_moons_diffusion, out)   # the next compile of the same output cleans up
    assert hidden_leftovers(tmp_path) == []
    assert gencc.load(out).sample(3, steps=2).shape == (3, 2)


@pytest.mark.slow
def test_tuning_killed_keeps_its_records_and_the_next_run_reuses_them(tmp_path, tiny_moons_diffusion):
    """SIGKILL a tuning compile once MetaSchedule has written records: no artifact appears, the records
    stay in --tune-db, and the next compile with that database tunes only what is still missing."""
    import os
    import signal

    db, out = tmp_path / "db", tmp_path / "t.gencc"
    records = db / "database_tuning_record.json"
    args = ["compile", tiny_moons_diffusion, "--out", out, "--tune-trials", "8", "--tune-batch", "8", "--tune-db", db]
    # Own process group: MetaSchedule's builder and runner workers must die with the compile.
    p = subprocess.Popen(GENCC + [str(a) for a in args], env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while p.poll() is None and time.monotonic() < deadline:
            if records.is_file() and records.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    kept = records.read_text().count("\n")
    assert kept >= 1, "no tuning record was written before the kill"
    assert not out.exists()
    said = []
    from gencc.compiler.compile import compile_artifact
    from gencc.compiler.tune import TuneOptions

    tuning = TuneOptions(trials=8, batches=(8,), db_dir=db, keep="always")
    m = compile_artifact(tiny_moons_diffusion, out, tuning=tuning, log=said.append)
    line = next(s for s in said if s.startswith("tuning step at batch 8"))
    untuned = re.search(r"(\d+) of (\d+) kernels new to", line)
    assert "no new trials" in line or int(untuned[1]) < int(untuned[2]), line   # recorded tasks are not redone
    assert records.read_text().count("\n") >= kept   # nothing gathered before the kill was lost
    assert m["functions"]["step"]["static"]["8"]["library"] == "step_b8.so"


# --- sampling: streaming, resuming, memory --------------------------------------------------------

@pytest.fixture(scope="module")
def wide_gan(tmp_path_factory):
    """A tiny GAN over 64-d vectors: 256 bytes a sample, so memory that grew with n would show."""
    root = tmp_path_factory.mktemp("wide")
    np.save(root / "v.npy", np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32))
    cfg = replace(default_config("gan", "vector"), steps=2, batch_size=16)
    train("gan", load_dataset(str(root / "v.npy")), root / "g.ckpt", cfg, width=8)
    return root / "g.ckpt"


def test_interrupted_sampling_leaves_a_valid_partial_file_and_resumes_identically(tmp_path, monkeypatch,
                                                                                  tiny_moons_diffusion):
    monkeypatch.setattr(stream, "COMMIT_SECONDS", 0.0)
    m = gencc.load(tiny_moons_diffusion)
    kw = {"batch_size": 64, "steps": 4, "seed": 3}
    want = m.sample(1000, **kw)
    real, calls = m.sample, []

    def crash_after_5(*a, **k):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt   # Ctrl-C, or anything else that stops the job part-way
        return real(*a, **k)

    monkeypatch.setattr(m, "sample", crash_after_5)
    with pytest.raises(KeyboardInterrupt):
        stream.sample_to_file(m, 1000, tmp_path / "s.npz", **kw)
    partial, job = stream.partial_paths(tmp_path / "s.npz")
    done = np.load(partial, allow_pickle=False)
    assert done.shape == (320, 2) and np.array_equal(done, want[:320])
    assert json.loads(job.read_text())["n"] == 1000 and not (tmp_path / "s.npz").exists()
    monkeypatch.setattr(m, "sample", real)
    with pytest.raises(GenccError, match="pass --resume"):
        stream.sample_to_file(m, 1000, tmp_path / "s.npz", **kw)
    with pytest.raises(GenccError, match="different sampling"):
        stream.sample_to_file(m, 1000, tmp_path / "s.npz", resume=True, **{**kw, "seed": 4})
    stream.sample_to_file(m, 1000, tmp_path / "s.npz", resume=True, **kw)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert np.array_equal(f["samples"], want)
    assert hidden_leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def test_a_full_disk_keeps_the_samples_so_far(tmp_path, monkeypatch, tiny_moons_diffusion):
    monkeypatch.setattr(stream, "COMMIT_SECONDS", 0.0)
    m = gencc.load(tiny_moons_diffusion)
    append, calls = stream._Appender.append, []

    def fill_up(self, x):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(self, x)

    monkeypatch.setattr(stream._Appender, "append", fill_up)
    with pytest.raises(GenccError, match="No space left on device; the samples finished so far are kept"):
        stream.sample_to_file(m, 500, tmp_path / "s.npy", batch_size=100, steps=3)
    partial, _ = stream.partial_paths(tmp_path / "s.npy")
    assert len(np.load(partial)) == 200
    monkeypatch.setattr(stream._Appender, "append", append)
    stream.sample_to_file(m, 500, tmp_path / "s.npy", batch_size=100, steps=3, resume=True)
    assert np.array_equal(np.load(tmp_path / "s.npy"), m.sample(500, batch_size=100, steps=3))


@pytest.mark.slow
def test_sampling_killed_with_sigkill_resumes_identically(tmp_path, tiny_moons_diffusion):
    out = tmp_path / "s.npy"
    partial, _ = stream.partial_paths(out)
    kw = {"n": 20_000, "batch_size": 1000, "steps": 50, "seed": 7}
    args = ["sample", tiny_moons_diffusion, "--out", out,
            *[x for k, v in kw.items() for x in (f"--{k}".replace("_", "-"), v)]]

    def some_rows() -> bool:
        try:
            return 0 < len(np.load(partial, mmap_mode="r")) < 15_000
        except (OSError, ValueError):
            return False

    assert kill_when(args, some_rows)
    rows = len(np.load(partial, allow_pickle=False))   # still a valid .npy, of whole batches
    assert rows % 1000 == 0 and not out.exists()
    gencc_cli(*args, "--resume")
    threads = one_thread()
    try:
        want = gencc.load(tiny_moons_diffusion).sample(**kw)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.load(out, allow_pickle=False), want)


_PEAK = """
import resource, sys
from gencc.cli.main import app
app(sys.argv[1:], standalone_mode=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_sampling_memory_does_not_grow_with_n(tmp_path, wide_gan):
    peaks = {}
    for n in (10_000, 200_000):
        out = tmp_path / f"s{n}.npz"
        r = subprocess.run([sys.executable, "-c", _PEAK, "sample", str(wide_gan), "--n", str(n), "--out", str(out),
                            "--batch-size", "2048"], env=ENV, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        peaks[n] = int(r.stdout.split()[-1]) * 1024   # ru_maxrss is in KiB on Linux
        with np.load(out, allow_pickle=False) as f:
            assert f["samples"].shape == (n, 64)
    # Held in memory, 200k samples would be 51 MB, and twice that with the decoded copy.
    grew = peaks[200_000] - peaks[10_000]
    assert grew < 20 * 2 ** 20, f"peak memory grew by {grew / 2 ** 20:.1f} MiB from n=10k to n=200k: {peaks}"


def test_requests_beyond_the_machine_are_refused_up_front(tmp_path, tiny_moons_diffusion):
    m = gencc.load(tiny_moons_diffusion)
    with pytest.raises(GenccError, match=r"needs about .* GiB of memory"):
        m.sample(10 ** 12, steps=1)
    with pytest.raises(GenccError, match=r"batch size 1000000000000 .* GiB of memory"):
        m.sample(10 ** 12, steps=1, batch_size=10 ** 12)
    with pytest.raises(GenccError, match=r"needs about .* GiB of disk"):
        stream.sample_to_file(m, 10 ** 15, tmp_path / "s.npy", steps=1)
    assert list(tmp_path.iterdir()) == []


# --- threads ---------------------------------------------------------------------------------------

def _threads_match_sequential(m, n_threads=4, **kw):
    want = [m.sample(24, seed=s, **kw) for s in range(n_threads)]
    got = [None] * n_threads

    def work(s):
        for _ in range(3):
            got[s] = m.sample(24, seed=s, **kw)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in range(n_threads):
        assert np.array_equal(got[s], want[s]), f"thread {s} differs from sequential use"


def test_one_torch_model_shared_by_threads(tiny_moons_diffusion, tiny_moons_gan):
    _threads_match_sequential(gencc.load(tiny_moons_diffusion), steps=20, batch_size=8)
    _threads_match_sequential(gencc.load(tiny_moons_gan), batch_size=8)


@pytest.mark.slow
def test_one_compiled_model_shared_by_threads(tmp_path, tiny_moons_diffusion, tiny_digits_gan):
    from gencc.compiler.compile import compile_artifact

    for name, source, kw in (("d", tiny_moons_diffusion, {"steps": 20}), ("g", tiny_digits_gan, {})):
        compile_artifact(source, tmp_path / f"{name}.gencc")
        for backend in ("tvm", "ort"):   # without its lock, the TVM VirtualMachine crashes the process here
            _threads_match_sequential(gencc.load(tmp_path / f"{name}.gencc", backend=backend), batch_size=8, **kw)


# --- numerics --------------------------------------------------------------------------------------

def _poison(path, file, key):
    """Put a NaN into the first tensor of a checkpoint file."""
    if file == ckpt.WEIGHTS:
        w = load_file(path / file)
        next(iter(w.values()))[0] = float("nan")
        save_file(w, path / file)
    else:
        state = torch.load(path / file, weights_only=True)
        next(iter(state[key].values())).view(-1)[0] = float("nan")
        torch.save(state, path / file)


def test_nan_in_sampling_names_the_step_and_writes_nothing(tmp_path, tiny_moons_diffusion):
    bad = tmp_path / "bad.ckpt"
    shutil.copytree(tiny_moons_diffusion, bad)
    _poison(bad, ckpt.WEIGHTS, None)
    m = gencc.load(bad)
    with pytest.raises(GenccError, match="NaN/inf values at step 0; the model may be diverged"):
        m.sample(8, steps=5)
    with pytest.raises(GenccError, match="at step 0"):
        stream.sample_to_file(m, 8, tmp_path / "s.npz", steps=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt"]


def test_nan_in_training_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_moons_diffusion):
    bad = tmp_path / "bad.ckpt"
    shutil.copytree(tiny_moons_diffusion, bad)
    _poison(bad, ckpt.STATE, "net")
    weights = (bad / ckpt.WEIGHTS).read_bytes()
    cfg = replace(default_config("diffusion", "vector"), steps=60, ckpt_every=10)
    with pytest.raises(GenccError, match="training diverged at step 30: losses {'loss': nan}; try a smaller --lr"):
        train("diffusion", load_dataset("moons"), bad, cfg, resume=True)
    assert ckpt.load_config(bad)["step"] == 30 and (bad / ckpt.WEIGHTS).read_bytes() == weights


@pytest.mark.parametrize("model", ["diffusion", "gan"])
def test_huge_learning_rate_stops_training_with_the_step(tmp_path, model):
    lr = 1e6 if model == "diffusion" else 1e30   # Adam with gradient clipping keeps the GAN finite at 1e6
    cfg = replace(default_config(model, "vector"), steps=50, batch_size=32, lr=lr)
    with pytest.raises(GenccError, match=r"training diverged at step \d+: .*nan.*try a smaller --lr"):
        train(model, load_dataset("moons", n=500), tmp_path / "c", cfg, width=16)
    assert not (tmp_path / "c").exists()
    with pytest.raises(GenccError, match="lr must be a positive number below 1e37"):
        replace(cfg, lr=1e38)
