"""examples/cpp: the C++ em sampler over a compiled artifact matches the Python runtime sample for sample,
and refuses a tampered library, a CUDA artifact, a bad manifest and bad arguments with one error line."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gencc
from gencc.compiler.compile import compile_artifact

pytestmark = pytest.mark.slow   # compiles the artifact with TVM and the program with g++

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cpp"


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """gencc_sample built with the documented g++ line (flags from flags.py)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++ or c++) on PATH to build examples/cpp")
    flags = subprocess.run([sys.executable, str(EXAMPLE / "flags.py")], capture_output=True, text=True, check=True)
    out = tmp_path_factory.mktemp("cpp") / "gencc_sample"
    cmd = [cxx, "-std=c++17", "-O2", "-ffp-contract=off", str(EXAMPLE / "gencc_sample.cc"), "-o", str(out),
           *flags.stdout.split()]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny_moons_diffusion):
    out = tmp_path_factory.mktemp("cpp-art") / "moons.gencc"
    compile_artifact(tiny_moons_diffusion, out, target="llvm")
    return out


def run(binary, *args):
    # A clean environment apart from PATH: the rpath, not LD_LIBRARY_PATH, must find libtvm_runtime.
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True,
                          env={"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"})


def assert_refused(r, out: Path, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gencc_sample: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("seed", [0, 11])
def test_cpp_em_matches_the_python_runtime(binary, art, tmp_path, seed):
    # 7 samples in chunks of 3 against Python's one chunk: sample i depends only on (seed, i).
    out = tmp_path / "s.npy"
    r = run(binary, art, "--n", 7, "--steps", 30, "--seed", seed, "--batch", 3, "--out", out)
    assert r.returncode == 0, r.stderr
    cpp = np.load(out, allow_pickle=False)
    py = gencc.load(art).sample(7, steps=30, sampler="em", seed=seed)
    assert cpp.dtype == np.float32 and cpp.shape == py.shape == (7, 2) and cpp.flags["C_CONTIGUOUS"]
    assert np.abs(cpp - py).max() <= 1e-4
    assert np.isfinite(cpp).all() and cpp.std() > 0.1   # not a constant: real samples in data units


def test_seeds_give_different_samples(binary, art, tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    for seed, out in ((1, a), (2, b)):
        assert run(binary, art, "--n", 4, "--steps", 5, "--seed", seed, "--out", out).returncode == 0
    assert np.abs(np.load(a) - np.load(b)).min() > 0


def test_sha256_matches_hashlib(binary, art, tmp_path):
    files = {"empty": b"", "abc": b"abc", "odd": np.random.default_rng(0).bytes(200_003),
             "block": b"a" * 55, "two-blocks": b"b" * 64}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for p in [*(tmp_path / n for n in files), art / "step.so"]:
        r = run(binary, "--sha256", p)
        assert r.returncode == 0 and r.stdout.strip() == hashlib.sha256(p.read_bytes()).hexdigest(), p


def test_a_corrupted_step_library_is_refused(binary, art, tmp_path):
    bad = tmp_path / "bad.gencc"
    shutil.copytree(art, bad)
    lib = bytearray((bad / "step.so").read_bytes())
    lib[len(lib) // 2] ^= 0x01
    (bad / "step.so").write_bytes(bytes(lib))
    out = tmp_path / "s.npy"
    assert_refused(run(binary, bad, "--n", 3, "--out", out), out, "step.so is corrupt or tampered with")


def edit_manifest(art, tmp_path, edit):
    bad = tmp_path / "edited.gencc"
    shutil.copytree(art, bad)
    m = json.loads((bad / "manifest.json").read_text())
    edit(m)
    (bad / "manifest.json").write_text(json.dumps(m))
    return bad


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["target"].update(kind="cuda", arch="sm_90"), ("compiled for target", "CPU (llvm) artifacts only")),
    (lambda m: m.update(format_version=2), ("format version 2",)),
    (lambda m: m.update(model="gan"), ('"gan"', "diffusion artifacts only")),
    (lambda m: m["functions"]["step"].update(library="../step.so"), ("not a plain file name",)),
    (lambda m: m["files"].pop("step.so"), ("no sha256 hex digest for step.so",)),
    (lambda m: m["normalization"].update(scale=[1.0, 0.0]), ("scale must be positive",)),
    (lambda m: m["sde"].update(t_eps="small"), ("t_eps must be a finite number",)),
    (lambda m: m.update(sample_shape=[3]), ("normalization is for sample shape",)),
])
def test_a_bad_manifest_is_refused(binary, art, tmp_path, edit, words):
    out = tmp_path / "s.npy"
    assert_refused(run(binary, edit_manifest(art, tmp_path, edit), "--n", 2, "--out", out), out, *words)


def test_a_manifest_that_is_not_json_is_refused(binary, art, tmp_path):
    bad = tmp_path / "bad.gencc"
    shutil.copytree(art, bad)
    (bad / "manifest.json").write_text("{\"format\": ")
    out = tmp_path / "s.npy"
    assert_refused(run(binary, bad, "--n", 2, "--out", out), out, "is not valid JSON")


@pytest.mark.parametrize("args, words", [
    (("--n", 0), ("--n must be an integer", "'0'")),
    (("--n", "1e3"), ("'1e3'",)),
    (("--n", 2, "--steps", -3), ("--steps", "'-3'")),
    (("--n", 2, "--sampler", "pc"), ("unknown sampler 'pc'",)),
    (("--n", 2, "--frobnicate", 1), ("unknown option '--frobnicate'",)),
    (("--n", 2, "--seed", 2 ** 64), ("--seed",)),
    (("--n", 2, "--steps"), ("--steps needs a value",)),
])
def test_bad_arguments_are_refused(binary, art, tmp_path, args, words):
    out = tmp_path / "s.npy"
    assert_refused(run(binary, art, "--out", out, *args), out, *words)


def test_a_missing_artifact_and_a_bad_output_are_refused(binary, art, tmp_path):
    out = tmp_path / "s.npy"
    assert_refused(run(binary, tmp_path / "nope.gencc", "--n", 2, "--out", out), out, "nope.gencc", "does not exist")
    assert_refused(run(binary, art, "--n", 2, "--out", tmp_path / "s.txt"), tmp_path / "s.txt", "must name a .npy file")
    missing = tmp_path / "no" / "s.npy"
    assert_refused(run(binary, art, "--n", 2, "--out", missing), missing, "not writable")
