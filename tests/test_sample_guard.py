"""`gencc sample` refuses bad requests before any work, guards its output (--force, a lock), and every
error on the sample/eval path is one clear line (issue 13, items 5, 6 and 8)."""
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

import gencc
from cli_helpers import assert_user_error, gencc as run
from gencc.models.data import load_dataset
from gencc.models.evaluate import format_table
from gencc.models.train import default_config, train
from gencc.runtime import stream
from gencc.runtime.errors import GenccError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TVM_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def points3d(tmp_path_factory):
    """A GAN and a diffusion model over 3-D points: neither can be pictured."""
    root = tmp_path_factory.mktemp("p3")
    np.save(root / "p.npy", np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32))
    ds = load_dataset(str(root / "p.npy"))
    for model in ("gan", "diffusion"):
        train(model, ds, root / model, replace(default_config(model, ds.kind), steps=2, batch_size=16), width=8)
    return root


def _nothing_written(folder, keep=()):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep) == []


@pytest.mark.parametrize("model", ["gan", "diffusion"])
def test_pictures_of_3d_points_are_refused_before_sampling(tmp_path, points3d, model):
    ck = points3d / model
    out = tmp_path / "s.npz"
    assert_user_error(run("sample", ck, "--n", 4, "--steps", 2, "--out", out, "--png", tmp_path / "s.png")
                      if model == "diffusion" else
                      run("sample", ck, "--n", 4, "--out", out, "--png", tmp_path / "s.png"), "--png", "(3,)")
    assert_user_error(run("sample", ck, "--n", 4, "--out", out, "--preview", tmp_path / "f"), "--preview", "(3,)")
    assert _nothing_written(tmp_path)


def test_every_bad_option_combination_is_refused_up_front(tmp_path, tiny_moons_gan, tiny_moons_diffusion,
                                                          tiny_digits_diffusion):
    out = tmp_path / "s.npz"
    cases = [
        ((tiny_moons_gan, "--sampler", "ddim"), ["--sampler", "GAN"]),
        ((tiny_moons_gan, "--steps", 10), ["--steps", "GAN"]),
        ((tiny_moons_gan, "--snr", 0.2), ["--snr", "GAN"]),
        ((tiny_moons_gan, "--preview-every", 3, "--preview", tmp_path / "f"), ["--preview-every", "GAN"]),
        ((tiny_moons_diffusion, "--snr", 0.2), ["--snr", "--sampler pc"]),
        ((tiny_moons_diffusion, "--corrector-steps", 2, "--sampler", "em"), ["--corrector-steps", "pc"]),
        ((tiny_moons_diffusion, "--sampler", "pc", "--snr", -1), ["snr"]),
        ((tiny_moons_diffusion, "--label", 3), ["label"]),
        ((tiny_moons_diffusion, "--guidance", 1.0), ["guidance"]),
        ((tiny_moons_gan, "--guidance", 1.0), ["guidance"]),
        ((tiny_moons_diffusion, "--preview-every", 0, "--preview", tmp_path / "f"), ["preview-every"]),
        ((tiny_moons_diffusion, "--shard", "4/4"), ["--shard"]),
        ((tiny_moons_diffusion, "--png", tmp_path / "s.jpg"), [".png"]),
        ((tiny_digits_diffusion, "--preview", out), ["also an output"]),
    ]
    for args, words in cases:
        assert_user_error(run("sample", *args, "--n", 4, "--out", out), *words)
    assert _nothing_written(tmp_path)


def test_sample_needs_force_to_replace_an_output(tmp_path, tiny_moons_gan):
    out, png = tmp_path / "s.npz", tmp_path / "s.png"
    out.write_bytes(b"precious")
    assert_user_error(run("sample", tiny_moons_gan, "--n", 4, "--out", out), "already exists", "--force")
    assert out.read_bytes() == b"precious"
    png.write_bytes(b"mine")
    r = run("sample", tiny_moons_gan, "--n", 4, "--out", tmp_path / "t.npz", "--png", png)
    assert_user_error(r, "s.png", "--force")
    assert png.read_bytes() == b"mine" and not (tmp_path / "t.npz").exists()
    r = run("sample", tiny_moons_gan, "--n", 4, "--out", out, "--png", png, "--force")
    assert r.exit_code == 0, r.output
    assert np.load(out)["samples"].shape == (4, 2) and png.read_bytes()[:4] == b"\x89PNG"



def test_merge_needs_force_to_replace_an_output(tmp_path, tiny_moons_gan):
    parts = [tmp_path / f"p{k}.npz" for k in range(2)]
    for k, p in enumerate(parts):
        r = run("sample", tiny_moons_gan, "--n", 8, "--batch-size", 4, "--shard", f"{k}/2", "--out", p)
        assert r.exit_code == 0, r.output
    out = tmp_path / "all.npz"
    out.write_bytes(b"precious")
    assert_user_error(run("merge", *parts, "--out", out), "already exists", "--force")
    assert out.read_bytes() == b"precious"
    assert run("merge", *parts, "--out", out, "--force").exit_code == 0
    assert np.load(out)["samples"].shape == (8, 2)


_HOLD = """
import sys
from gencc.runtime.stream import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def _holder(out):
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env=ENV, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gencc.cli.main", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=300)


def test_a_second_process_cannot_write_the_same_output(tmp_path, tiny_moons_gan):
    out = tmp_path / "s.npy"
    holder = _holder(out)
    try:
        for extra in ((), ("--resume",)):
            r = _cli("sample", tiny_moons_gan, "--n", 8, "--out", out, *extra)
            assert r.returncode == 2 and r.stderr.strip().splitlines() == [
                f"gencc: error: {out} is being written by process {holder.pid}"], r.stderr
        assert not out.exists()
    finally:
        holder.communicate("")
    assert holder.returncode == 0 and not stream.lock_path(out).exists()   # released and cleaned up
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)   # dies holding it: the lock file stays, the lock does not
    holder.wait()
    r = _cli("sample", tiny_moons_gan, "--n", 8, "--out", out)
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape == (8, 2) and sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]


def test_the_lock_is_released_when_sampling_fails(tmp_path, tiny_moons_diffusion):
    m = gencc.load(tiny_moons_diffusion)
    with pytest.raises(GenccError, match="unknown sampler"):
        stream.sample_to_file(m, 4, tmp_path / "s.npy", sampler="nope")
    with stream.output_lock(tmp_path / "s.npy"):   # free again, in this process too
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, monkeypatch, tiny_moons_gan):
    from gencc.runtime.model import Model

    monkeypatch.setattr(stream, "COMMIT_SECONDS", 0.0)
    real, calls = Model.sample, []

    def interrupt_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Model, "sample", interrupt_third)
    out = tmp_path / "s.npz"
    monkeypatch.setattr(sys, "argv", ["gencc", "sample", str(tiny_moons_gan), "--n", "10", "--batch-size", "4",
                                      "--out", str(out)])
    r = run("sample", tiny_moons_gan, "--n", 10, "--batch-size", 4, "--out", out)
    assert r.exit_code == 130
    lines = r.output.strip().splitlines()
    assert lines[0] == f"gencc: interrupted: kept 8 of 10 samples in {out}.partial.npy; to continue:", r.output
    assert lines[1].strip() == f"gencc sample {tiny_moons_gan} --n 10 --batch-size 4 --out {out} --resume"
    monkeypatch.setattr(Model, "sample", real)
    assert run("sample", tiny_moons_gan, "--n", 10, "--batch-size", 4, "--out", out, "--resume").exit_code == 0
    assert np.array_equal(np.load(out)["samples"], gencc.load(tiny_moons_gan).sample(10, batch_size=4))


def test_eval_reads_samples_own_npy_output(tmp_path, tiny_moons_gan):
    out = tmp_path / "s.npy"
    assert run("sample", tiny_moons_gan, "--n", 50, "--out", out).exit_code == 0
    r = run("eval", out, "--data", "moons")
    assert r.exit_code == 0, r.output
    assert "sliced_wasserstein" in r.output


def test_a_refused_pickle_never_suggests_weights_only_false(tmp_path, tiny_moons_diffusion):
    import shutil

    import torch

    from gencc.models import checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(tiny_moons_diffusion, ck)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"step": 1, "x": Evil()}, ck / checkpoint.STATE)
    with pytest.raises(GenccError) as e:
        checkpoint.load_train_state(ck)
    text = str(e.value)
    assert "weights_only" not in text and "unsafe" in text and "system" in text, text
    assert "\n" not in text


def test_signatures_without_cryptography_say_what_to_install(tmp_path):
    code = ("import sys; sys.modules['cryptography'] = None\n"
            "import gencc\n"
            "from gencc.runtime.errors import GenccError\n"
            "try:\n"
            f"    gencc.runtime.signing.verify_signature({str(tmp_path)!r}, [{str(tmp_path / 'k.pem')!r}])\n"
            "except GenccError as e:\n"
            "    print('GenccError:', e)\n")
    r = subprocess.run([sys.executable, "-c", "import gencc.runtime.signing\n" + code], env=ENV,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("GenccError:"), r.stderr
    assert "pip install" in r.stdout and "cryptography" in r.stdout


def test_sizes_print_in_human_units(tmp_path, monkeypatch, tiny_moons_gan):
    from gencc.runtime.errors import size_text

    assert [size_text(b) for b in (0, 800, 781_250, 5 << 20, 3 * 2 ** 30 + 2 ** 29, 2 ** 42)] == \
        ["0 B", "800 B", "763 KiB", "5 MiB", "3.5 GiB", "4096 GiB"]

    class Tiny:
        free = 1000

    monkeypatch.setattr(stream.shutil, "disk_usage", lambda _: Tiny)
    with pytest.raises(GenccError, match=r"needs about 7.81 KiB of disk, .* has 1000 B free"):
        stream.sample_to_file(gencc.load(tiny_moons_gan), 1000, tmp_path / "s.npy")


def test_a_negative_mmd_estimate_prints_as_below_noise():
    result = {"n_samples": 10, "n_reference": 10, "data": "moons", "notes": [],
              "metrics": {"mmd_rbf": {"value": -0.0021, "floor": 0.0008, "better": "lower"},
                          "sliced_wasserstein": {"value": 0.1, "floor": 0.05, "better": "lower"}}}
    text = format_table(result)
    row = next(line for line in text.splitlines() if line.startswith("mmd_rbf"))
    assert row.split() == ["mmd_rbf", "0", "0.0008", "0", "lower"], row   # no negative value or ratio
    assert "mmd_rbf: the unbiased estimate of the value is -0.0021, below sampling noise" in text
    assert result["metrics"]["mmd_rbf"]["value"] == -0.0021   # the JSON keeps the estimate itself
    json.dumps(result)


def test_a_lock_that_cannot_be_made_is_one_line(tmp_path, tiny_moons_gan):
    out = tmp_path / "s.npy"
    stream.lock_path(out).mkdir()   # stands for any reason the lock file cannot be opened
    assert_user_error(run("sample", tiny_moons_gan, "--n", 4, "--out", out), "s.npy.partial.lock")
    assert not out.exists()


@pytest.mark.slow
def test_a_real_sigint_prints_a_resume_command_that_finishes_the_job(tmp_path, tiny_moons_diffusion):
    import shlex
    import time

    out = tmp_path / "s.npy"
    partial, _ = stream.partial_paths(out)
    args = ["sample", str(tiny_moons_diffusion), "--n", "12000", "--batch-size", "1000", "--steps", "60",
            "--out", str(out)]
    # SIGINT as a terminal's Ctrl-C delivers it (a background child would otherwise start with it ignored).
    p = subprocess.Popen([sys.executable, "-m", "gencc.cli.main", *args], env=ENV, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline:
        try:
            if len(np.load(partial, mmap_mode="r")) > 0:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=300)[1]
    assert p.returncode == 130, err
    first, command = err.strip().splitlines()
    kept = len(np.load(partial))
    assert first == f"gencc: interrupted: kept {kept} of 12000 samples in {partial}; to continue:" and kept < 12000
    assert shlex.split(command)[1:] == [*args, "--resume"]
    r = _cli(*shlex.split(command)[1:])
    assert r.returncode == 0, r.stderr
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as the CLI ran (OMP_NUM_THREADS=1): the same BLAS blocking, bit for bit
    try:
        want = gencc.load(tiny_moons_diffusion).sample(12000, batch_size=1000, steps=60)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.load(out), want)
