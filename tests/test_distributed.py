"""Distributed training: N ranks over gloo reach the single-process weights; bad settings are one-line errors."""
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from cli_helpers import assert_user_error, gencc
from gencc.models import checkpoint as ckpt
from gencc.models.data import load_dataset
from gencc.models.distributed import train_parallel
from gencc.models.train import TrainConfig, train

MOONS = load_dataset("moons", n=512)
CFG = TrainConfig(steps=8, batch_size=16, ckpt_every=4)
WIDTH = 16


def _assert_same_checkpoint(a, b, state_keys):
    """Sampled weights and the raw training weights agree to float-summation-order differences."""
    for x, y in [(ckpt.load_weights(a), ckpt.load_weights(b))] + [
            (ckpt.load_train_state(a)[k], ckpt.load_train_state(b)[k]) for k in state_keys]:
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=1e-5, atol=1e-6, msg=k)
    assert ckpt.load_config(a)["step"] == ckpt.load_config(b)["step"]


@pytest.mark.slow
def test_two_diffusion_ranks_take_the_single_process_steps(tmp_path):
    """2 ranks train steps 0-4, one process resumes their checkpoint to 8: the same as one process 0-8."""
    seen_one, seen_two = [], []
    train("diffusion", MOONS, tmp_path / "one", CFG, width=WIDTH, progress=lambda *a: seen_one.append(a[2]))
    train_parallel("diffusion", MOONS, tmp_path / "two", replace(CFG, steps=4), nproc=2, width=WIDTH,
                   progress=lambda *a: seen_two.append(a[2]))
    # The reported loss is the mean over both ranks' halves: the single-process loss of the global batch.
    assert [s["loss"] for s in seen_two] == pytest.approx([s["loss"] for s in seen_one[:4]], rel=1e-5)
    train("diffusion", MOONS, tmp_path / "two", CFG, resume=True)
    _assert_same_checkpoint(tmp_path / "one", tmp_path / "two", ["net"])   # weights.safetensors is the EMA


@pytest.mark.slow
def test_torchrun_resumes_a_gan_to_the_single_process_weights(tmp_path):
    """One process trains steps 0-4; torchrun's 2 ranks resume it to 8 through the CLI."""
    train("gan", MOONS, tmp_path / "one", CFG, width=WIDTH)
    train("gan", MOONS, tmp_path / "two", replace(CFG, steps=4), width=WIDTH)
    data = tmp_path / "moons.npy"
    np.save(data, MOONS.data)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gencc.cli.main", "train", "gan", "--data", data, "--out", tmp_path / "two", "--resume",
           "--steps", 8, "--batch-size", 16, "--ckpt-every", 4]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1, done.stdout   # rank 0 alone reports
    _assert_same_checkpoint(tmp_path / "one", tmp_path / "two", ["D"])


@pytest.mark.slow
def test_an_error_inside_the_ranks_is_one_line_and_loses_nothing(tmp_path):
    train("gan", MOONS, tmp_path / "gan", replace(CFG, steps=1), width=WIDTH)
    before = (tmp_path / "gan" / "weights.safetensors").read_bytes()
    result = gencc("train", "diffusion", "--data", "moons", "--out", tmp_path / "gan", "--resume", "--nproc", 2,
                   "--steps", 2, "--batch-size", 16)
    # stdout keeps the progress bar drawn before the ranks failed (as single-process training does); the
    # error itself is one line on stderr, with no rank's traceback and no torch teardown warning.
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"gencc: error: {str(tmp_path / 'gan')!r} holds a gan checkpoint, "
                                          "not a diffusion"], result.stderr
    assert (tmp_path / "gan" / "weights.safetensors").read_bytes() == before


@pytest.mark.parametrize("args, words", [
    (["--nproc", 0], ["nproc must be a positive", "got 0"]),
    (["--nproc", 3, "--batch-size", 16], ["batch-size 16 does not split evenly over 3 processes"]),
    (["--device", "cuda"], ["--device cuda is for distributed training"]),
    (["--nproc", 1, "--device", "tpu"], ["unknown training device 'tpu'"]),
])
def test_bad_distributed_settings_are_one_line_errors(tmp_path, args, words):
    result = gencc("train", "diffusion", "--data", "moons", "--out", tmp_path / "c", "--steps", 2, *args)
    assert_user_error(result, *words)
    assert not (tmp_path / "c").exists()


def test_image_gans_need_cuda_for_more_than_one_process(tmp_path):
    result = gencc("train", "gan", "--data", "digits", "--out", tmp_path / "c", "--nproc", 2, "--batch-size", 8)
    assert_user_error(result, "SyncBatchNorm needs CUDA")
    assert not (tmp_path / "c").exists()
