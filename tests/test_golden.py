"""Golden samples: every model kind, every sampler and the compiled backends, pinned for fixed seeds.

Refactors must keep sampling bit-identical (issue 14). This test draws a few samples from each model
kind (diffusion MLP on moons, diffusion UNet on digits, class-conditional diffusion with guidance, GAN,
conditional GAN, latent diffusion) with every sampler of `gencc.runtime.samplers.SAMPLERS` on the torch
backend, and from compiled artifacts (a moons diffusion MLP and a moons GAN) on the tvm and ort backends,
then compares them with the arrays stored in tests/golden/:

* `golden.json`: the sha256 of each case's exact float32 bytes, its shape, and the identity of the
  machine that made them (CPU vendor, family, model, model name, a hash of the CPU flags, core count;
  torch, TVM, ONNX Runtime and numpy versions).
* `torch.npz`, `tvm.npz`, `ort.npz`: the arrays themselves (keys `model__sampler`), a few samples each.

On a machine with the same identity every case must match its sha256 exactly (bit-identical). On any
other machine (another CPU generation, other library versions) TVM's code generation and the BLAS may
round differently by a few ulps, so there the arrays are compared with allclose at rtol 1e-5 (plus an
atol of 1e-5 times the case's largest magnitude), and the failure message says which comparison ran.

The models are the tiny session checkpoints of tests/conftest.py (a few Adam steps from a seeded init:
cheap, and nearly independent of the CPU) and two tiny conditional ones trained here; torch runs on one
thread while this module runs, so its reductions do not depend on the machine's core count.

Regenerate (only when a change is *meant* to change samples, and say so in the commit):

    .venv/bin/python tests/test_golden.py --regen

which deletes the stored goldens, runs this module (slow tests included) in regeneration mode, and
writes the files anew for this machine. Run it twice and `git diff --stat tests/golden` shows nothing.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import gencc
from gencc.models.data import load_dataset
from gencc.models.train import default_config, train
from gencc.runtime.samplers import SAMPLERS

GOLDEN = Path(__file__).parent / "golden"
INDEX = GOLDEN / "golden.json"
REGEN_ENV = "GENCC_GOLDEN_REGEN"
RTOL = 1e-5
SEED = 3
SAMPLER_NAMES = sorted(SAMPLERS)   # every sampler, so a new one without a golden fails here


# --- machine identity and the comparison -------------------------------------------------------------

def _cpuinfo() -> dict:
    """The first processor's identifying fields of /proc/cpuinfo (empty off Linux)."""
    fields = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("vendor_id", "cpu family", "model", "model name"):
            fields[key] = value.strip()
        elif key in ("flags", "Features"):   # x86 / arm64
            fields["flags_sha256"] = hashlib.sha256(" ".join(sorted(value.split())).encode()).hexdigest()[:16]
    return fields


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def machine_identity() -> dict:
    """What decides the exact bits of a sample: the CPU and the numeric libraries."""
    # The core count too: the session checkpoints train with torch's default threads, one per core.
    return {"machine": platform.machine(), "cpus": os.cpu_count(), **_cpuinfo(),
            **{p: _version(p) for p in ("torch", "apache-tvm", "onnxruntime", "numpy")}}


def _sha256(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def _regen() -> bool:
    return os.environ.get(REGEN_ENV) == "1"


def _store(group: str, cases: dict[str, np.ndarray]) -> None:
    """Regeneration: merge these cases into GOLDEN/{group}.npz and golden.json."""
    GOLDEN.mkdir(exist_ok=True)
    index = json.loads(INDEX.read_text()) if INDEX.exists() else {"cases": {}}
    index["identity"] = machine_identity()
    npz = GOLDEN / f"{group}.npz"
    arrays = dict(np.load(npz, allow_pickle=False)) if npz.exists() else {}
    for name, x in cases.items():
        arrays[name] = np.ascontiguousarray(x, dtype=np.float32)
        index["cases"][f"{group}/{name}"] = {"sha256": _sha256(x), "shape": "x".join(map(str, x.shape))}
    np.savez_compressed(npz, **dict(sorted(arrays.items())))
    index["cases"] = dict(sorted(index["cases"].items()))
    INDEX.write_text(json.dumps(index, indent=1) + "\n")


def check_golden(group: str, cases: dict[str, np.ndarray]) -> None:
    """Each case equals its golden: bit for bit on the machine identity that made them, else allclose."""
    if _regen():
        _store(group, cases)
        return
    assert INDEX.is_file(), f"no goldens in {GOLDEN}; make them: python tests/test_golden.py --regen"
    index = json.loads(INDEX.read_text())
    stored = dict(np.load(GOLDEN / f"{group}.npz", allow_pickle=False))
    same = index["identity"] == machine_identity()
    how = ("same machine identity as the goldens: sha256 must match exactly (bit-identical)" if same else
           f"machine identity differs from the goldens' {index['identity']} (this one: {machine_identity()}): "
           f"compared with allclose rtol={RTOL}, atol={RTOL} x max|golden|")
    missing = sorted(set(cases) - set(stored))
    assert not missing, f"no golden for {group} cases {missing}; regenerate: python tests/test_golden.py --regen"
    failures = []
    for name, x in cases.items():
        want = stored[name]
        if x.shape != want.shape or x.dtype != np.float32:
            failures.append(f"{group}/{name}: got {x.dtype} {x.shape}, golden float32 {want.shape}")
        elif same and _sha256(x) != index["cases"][f"{group}/{name}"]["sha256"]:
            failures.append(f"{group}/{name}: sha256 differs; max |diff| {np.abs(x - want).max():.3g}")
        elif not same and not np.allclose(x, want, rtol=RTOL, atol=RTOL * max(1.0, float(np.abs(want).max()))):
            failures.append(f"{group}/{name}: max |diff| {np.abs(x - want).max():.3g}")
    assert not failures, how + "\n" + "\n".join(failures)


# --- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Torch's reductions may split differently across threads; the goldens are made on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train_conditional(tmp_path_factory, model: str):
    ds = load_dataset("digits")
    out = tmp_path_factory.mktemp(f"golden-cond-{model}") / "ckpt"
    train(model, ds, out, replace(default_config(model, ds.kind), steps=3, ckpt_every=3, batch_size=8),
          conditional=True)
    return out


@pytest.fixture(scope="module")
def cond_diffusion(tmp_path_factory):
    return _train_conditional(tmp_path_factory, "diffusion")


@pytest.fixture(scope="module")
def cond_gan(tmp_path_factory):
    return _train_conditional(tmp_path_factory, "gan")


@pytest.fixture(scope="module")
def moons_artifacts(tmp_path_factory, tiny_moons_artifact, tiny_moons_gan, tiny_digits_gan):
    """The compiled moons diffusion MLP (step, eps, chain, noise libraries), moons GAN (an MLP) and digits
    GAN (transposed convolutions), for this CPU."""
    from gencc.compiler.compile import compile_artifact

    out = tmp_path_factory.mktemp("golden-artifacts")
    compile_artifact(tiny_moons_gan, out / "gan.gencc", target="llvm")
    compile_artifact(tiny_digits_gan, out / "digits-gan.gencc", target="llvm")
    return tiny_moons_artifact, out / "gan.gencc", out / "digits-gan.gencc"


# --- the cases -----------------------------------------------------------------------------------------

def _every_sampler(model, prefix: str, n: int, steps: int, batch_size: int) -> dict[str, np.ndarray]:
    # batch_size < n: the last chunk is short, so chunking is pinned too.
    return {f"{prefix}__{s}": model.sample(n, steps=steps, sampler=s, seed=SEED, batch_size=batch_size)
            for s in SAMPLER_NAMES}


def test_golden_torch_diffusion_mlp_moons(tiny_moons_diffusion):
    m = gencc.load(tiny_moons_diffusion)
    cases = _every_sampler(m, "moons_mlp", 6, 10, 4)
    cases["moons_mlp__pc_2corrector_logsnr"] = m.sample(6, steps=6, sampler="pc", seed=SEED, spacing="logsnr",
                                                         options={"corrector_steps": 2, "snr": 0.2})
    cases["moons_mlp__em_start5"] = m.sample(3, steps=10, seed=SEED, start=5)   # samples 5..7 of the em run
    check_golden("torch", cases)


def test_golden_torch_diffusion_unet_digits(tiny_digits_diffusion):
    check_golden("torch", _every_sampler(gencc.load(tiny_digits_diffusion), "digits_unet", 3, 4, 2))


def test_golden_torch_conditional_diffusion_guidance(cond_diffusion):
    m = gencc.load(cond_diffusion)
    check_golden("torch", {
        "digits_cond__em_label7_w1.5": m.sample(3, steps=4, seed=SEED, label=7, guidance=1.5),
        "digits_cond__dpm2m_labels_w0": m.sample(3, steps=4, sampler="dpm2m", seed=SEED, label=[0, 4, 9],
                                                 guidance=0.0),
        "digits_cond__ddim_unlabelled": m.sample(2, steps=4, sampler="ddim", seed=SEED),
    })


def test_golden_torch_gan(tiny_moons_gan, tiny_digits_gan, cond_gan):
    check_golden("torch", {
        "moons_gan": gencc.load(tiny_moons_gan).sample(6, seed=SEED, batch_size=4),
        "digits_gan": gencc.load(tiny_digits_gan).sample(3, seed=SEED, batch_size=2),
        "digits_cond_gan__label4": gencc.load(cond_gan).sample(3, seed=SEED, label=4),
    })


def test_golden_torch_latent_diffusion(tiny_shapes_latent):
    m = gencc.load(tiny_shapes_latent)
    check_golden("torch", {f"shapes_latent__{s}": m.sample(2, steps=3, sampler=s, seed=SEED)
                           for s in ("em", "dpm2m")})


def _compiled_cases(backend: str, artifacts) -> dict[str, np.ndarray]:
    diffusion, gan, digits_gan = artifacts
    m = gencc.load(diffusion, backend=backend)
    # 10 steps + the final denoising = 11 plan steps: one 8-step chain.so call, then 3 single steps.
    cases = {f"moons_mlp__{s}": m.sample(6, steps=10, sampler=s, seed=SEED, batch_size=4)
             for s in ("em", "ddim", "pc", "dpm2m", "ode-heun")}
    cases["moons_mlp__em_callback"] = m.sample(6, steps=10, seed=SEED, batch_size=4, callback=lambda k, x: None)
    cases["moons_gan"] = gencc.load(gan, backend=backend).sample(6, seed=SEED, batch_size=4)
    cases["digits_gan"] = gencc.load(digits_gan, backend=backend).sample(3, seed=SEED, batch_size=2)
    return cases


@pytest.mark.slow
def test_golden_compiled_tvm(moons_artifacts):
    diffusion = moons_artifacts[0]
    # The cases must run the compiled noise kernel and the multi-step chain, not only step.so.
    assert (diffusion / "noise.so").is_file() and (diffusion / "chain.so").is_file()
    check_golden("tvm", _compiled_cases("tvm", moons_artifacts))


@pytest.mark.slow
def test_golden_compiled_ort(moons_artifacts):
    check_golden("ort", _compiled_cases("ort", moons_artifacts))


def test_identity_names_the_cpu_and_libraries():
    ident = machine_identity()
    assert {"machine", "cpus", "torch", "apache-tvm", "onnxruntime", "numpy"} <= set(ident)
    if Path("/proc/cpuinfo").exists():
        assert "flags_sha256" in ident


def test_goldens_are_small_and_consistent():
    """Every stored array is listed in golden.json with its sha256, and the files stay under 1 MB."""
    if _regen():
        pytest.skip("regenerating")
    index = json.loads(INDEX.read_text())
    listed = set(index["cases"])
    stored = set()
    for npz in GOLDEN.glob("*.npz"):
        for name, x in np.load(npz, allow_pickle=False).items():
            stored.add(f"{npz.stem}/{name}")
            assert _sha256(x) == index["cases"][f"{npz.stem}/{name}"]["sha256"], f"{npz.stem}/{name}"
    assert stored == listed
    assert sum(p.stat().st_size for p in GOLDEN.iterdir()) < 1 << 20


def _main(argv: list[str]) -> int:
    if argv != ["--regen"]:
        print("usage: python tests/test_golden.py --regen   (rewrites tests/golden/ for this machine)")
        return 2
    for p in [INDEX, *GOLDEN.glob("*.npz")]:
        p.unlink(missing_ok=True)
    os.environ[REGEN_ENV] = "1"
    return int(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
