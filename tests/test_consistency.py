"""One face for every command: an Example in each --help, `--json FILE|-`, and the documented exit codes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cli_helpers import assert_user_error, gencc
from fake_artifact import fake_artifact
from gencc.cli.main import app
from gencc.models.data import load_dataset

COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


def test_every_command_is_listed():
    assert {"train", "sample", "export", "compile", "verify", "keygen", "info", "data", "demo", "eval", "bench",
            "doctor"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_every_help_shows_an_example(command):
    r = gencc(*([command] if command else []), "--help")
    assert r.exit_code == 0, r.output
    assert "Example: gencc " in " ".join(r.output.split()), r.output   # rich wraps lines; join them back


def test_info_json_on_stdout_for_a_checkpoint_and_an_artifact(tiny_moons_diffusion, tmp_path):
    r = gencc("info", tiny_moons_diffusion, "--json", "-")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)   # stdout is the JSON alone; the text went to stderr
    assert record["kind"] == "checkpoint" and record["config"]["model"] == "diffusion"
    assert "gencc checkpoint" in r.stderr
    art = fake_artifact(tmp_path / "a.gencc")   # info reads the manifest and hashes, no library
    r = gencc("info", art, "--json", tmp_path / "a.json")
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["kind"] == "artifact" and record["files_intact"] and record["manifest"]["model"] == "diffusion"
    assert "gencc artifact" in r.stdout


def test_eval_json_on_stdout(tmp_path):
    np.savez(tmp_path / "s.npz", samples=load_dataset("moons", n=200, seed=9).data)
    r = gencc("eval", tmp_path / "s.npz", "--data", "moons", "--json", "-")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_samples"] == 200 and "floor" in r.stderr


@pytest.mark.parametrize("command", [("info", "{ckpt}"), ("eval", "{tmp}/s.npz", "--data", "moons"),
                                     ("doctor",)])
def test_json_destination_errors_are_one_line(tmp_path, command):
    args = [a.format(ckpt=tmp_path / "none", tmp=tmp_path) for a in command]
    assert_user_error(gencc(*args, "--json", tmp_path / "missing" / "r.json"), "does not exist")


@pytest.mark.slow
def test_bench_json_on_stdout(tiny_moons_diffusion):
    r = gencc("bench", tiny_moons_diffusion, "--backends", "torch", "--batch", "2", "--steps", "0", "--json", "-")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert [row["backend"] for row in report["rows"]] == ["torch"]


def test_exit_codes_user_error_and_bug(tmp_path, monkeypatch):
    assert_user_error(gencc("info", tmp_path / "none"), "does not exist")             # 2: user error
    import gencc.cli.commands as commands

    monkeypatch.setattr(commands, "info_text", lambda path: 1 / 0)
    assert gencc("info", tmp_path).exit_code == 1                                     # 1: a bug


@pytest.mark.slow
def test_interrupt_exits_130(tiny_moons_diffusion, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "big.npy"
    p = subprocess.Popen([sys.executable, "-m", "gencc.cli.main", "sample", str(tiny_moons_diffusion), "--n",
                          "10000000", "--batch-size", "64", "--out", str(out)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    partial = tmp_path / "big.npy.partial.npy"
    deadline = time.monotonic() + 120
    while not partial.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err.decode()
    assert b"Traceback" not in err
