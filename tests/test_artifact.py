"""Compiled artifacts: torch vs ONNX Runtime vs TVM parity, lightness, integrity, and the CLI around them."""
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

import gencc
from gencc.cli.main import app
from gencc.compiler.compile import compile_artifact, export
from gencc.runtime.errors import GenccError
from gencc.runtime.samplers import SAMPLERS, affine_step

pytestmark = pytest.mark.slow   # each module fixture compiles with TVM


@pytest.fixture(scope="module")
def arts(tmp_path_factory, tiny_moons_diffusion, tiny_digits_diffusion, tiny_digits_gan):
    root = tmp_path_factory.mktemp("artifacts")
    out = {}
    for name, ckpt in (("mlp", tiny_moons_diffusion), ("unet", tiny_digits_diffusion), ("gan", tiny_digits_gan)):
        compile_artifact(ckpt, root / f"{name}.gencc", target="llvm")
        out[name] = (ckpt, root / f"{name}.gencc")
    return out


def backends(ckpt, art):
    return {"torch": gencc.load(ckpt), "ort": gencc.load(art, backend="ort"), "tvm": gencc.load(art)}


@pytest.mark.parametrize("net", ["mlp", "unet"])
def test_trajectory_parity_torch_ort_tvm(arts, net):
    ckpt, art = arts[net]
    runs = {k: m.sample(6, steps=50, sampler="em", seed=5, batch_size=4) for k, m in backends(ckpt, art).items()}
    for k in ("ort", "tvm"):
        err = np.abs(runs[k] - runs["torch"]).max()
        assert err <= 1e-3, f"{net}: {k} vs torch after 50 em steps: {err}"


@pytest.mark.parametrize("net", ["mlp", "unet"])
def test_single_fused_step_parity(arts, net):
    ckpt, art = arts[net]
    ms = backends(ckpt, art)
    shape = (3,) + ms["torch"].sample_shape
    x, z = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    xp, ep = np.random.default_rng(1).standard_normal((2,) + shape).astype(np.float32)
    t, coef = 0.37, (1.01, -0.2, 0.05, 0.3, -0.7)
    want = affine_step(ms["torch"].net.eps)(x, t, coef, z, xp, ep)
    for k in ("ort", "tvm"):
        m = ms[k]
        got = m.net.step(m.net.to_device(x), t, coef, *map(m.net.to_device, (z, xp, ep)))
        for g, w in zip(got, want, strict=True):
            assert np.abs(m.net.to_numpy(g) - w).max() <= 1e-4, k


def test_gan_generator_parity(arts):
    runs = {k: m.sample(9, seed=2, batch_size=4) for k, m in backends(*arts["gan"]).items()}
    assert runs["tvm"].shape == (9, 1, 8, 8)
    for k in ("ort", "tvm"):
        assert np.abs(runs[k] - runs["torch"]).max() <= 1e-4, k


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_on_the_compiled_step_matches_torch(arts, sampler):
    ckpt, art = arts["mlp"]
    ms = backends(ckpt, art)
    runs = {k: m.sample(5, steps=8, sampler=sampler, seed=1) for k, m in ms.items()}
    for k in ("ort", "tvm"):
        assert np.abs(runs[k] - runs["torch"]).max() <= 1e-4, (sampler, k)


def test_compiled_sampling_makes_no_host_side_network_calls(arts):
    m = gencc.load(arts["mlp"][1])
    m.net.eps_fn = None   # any host-side network call would now fail
    for sampler in SAMPLERS:
        assert np.isfinite(m.sample(3, steps=3, sampler=sampler)).all()


def test_tvm_state_stays_on_device_between_steps(arts):
    m = gencc.load(arts["mlp"][1])
    seen = []
    m.net.step_fn = (lambda f: lambda x, *a: seen.append(type(x).__name__) or f(x, *a))(m.net.step_fn)
    m.sample(4, steps=5, sampler="em")
    assert seen and all(name == "Tensor" for name in seen), seen


def test_sampling_from_an_artifact_needs_no_torch_onnx_or_ort(arts, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'onnx', 'onnxruntime', 'onnxscript', 'sklearn'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import gencc
        x = gencc.load({str(arts['mlp'][1])!r}).sample(8, steps=5, seed=0)
        assert x.shape == (8, 2)
        libs = {{l.split()[-1].rsplit('/', 1)[-1] for l in open('/proc/self/maps') if 'libtvm' in l}}
        assert 'libtvm_runtime.so' in libs and 'libtvm_compiler.so' not in libs, libs
        print('ok', sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok []"


def _copy(art, tmp_path):
    dst = tmp_path / art.name
    shutil.copytree(art, dst)
    return dst


@pytest.mark.parametrize("lib_name", ["step.so", "noise.so"])
def test_one_flipped_byte_is_refused_before_native_code_loads(arts, tmp_path, lib_name):
    art = _copy(arts["mlp"][1], tmp_path)
    lib = art / lib_name
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0x01
    lib.write_bytes(bytes(data))
    code = (f"import sys, gencc\ntry:\n    gencc.load({str(art)!r})\nexcept gencc.GenccError as e:\n"
            f"    print(e)\nprint('tvm loaded' if 'tvm' in sys.modules else 'tvm not loaded')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert f"{lib_name} is corrupt or tampered with" in r.stdout, r.stdout + r.stderr
    assert r.stdout.strip().endswith("tvm not loaded")


@pytest.mark.parametrize("edit,words", [
    (lambda m: m.update(format_version=2), "format version 2 is not supported"),
    (lambda m: m["files"].update({"../evil.so": "0" * 64}), "unsafe file name"),
    (lambda m: m["files"].update({"/etc/passwd": "0" * 64}), "unsafe file name"),
    (lambda m: m.update(sample_shape=[10 ** 9]), "sample_shape"),
    (lambda m: m.update(model="vae"), "unknown model kind"),
    (lambda m: m["functions"]["step"].update(library="other.so"), "does not list"),
    (lambda m: m["functions"]["step"].update(flops_per_sample=-5), "flops_per_sample"),
    (lambda m: m["noise"].update(contract="philox4x32-7"), "noise kernel contract 'philox4x32-7' is not supported"),
    (lambda m: m["noise"].update(library="nope.so"), "'noise' must name a listed library"),
    (lambda m: m.update(noise=[]), "'noise' must name a listed library"),
])
def test_bad_manifests_are_refused(arts, tmp_path, edit, words):
    art = _copy(arts["mlp"][1], tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    edit(manifest)
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GenccError, match=words):
        gencc.load(art)


def test_manifest_records_flops_per_sample_for_the_thread_policy(arts):
    from gencc.compiler.flops import count_flops

    art = arts["unet"][1]
    m = json.loads((art / "manifest.json").read_text())
    for name in ("step", "eps"):
        f = m["functions"][name]
        assert f["flops_per_sample"] == count_flops(art / f["onnx"], 1) > 0


def test_symlinked_file_is_refused(arts, tmp_path):
    art = _copy(arts["mlp"][1], tmp_path)
    (art / "eps.onnx").unlink()
    (art / "eps.onnx").symlink_to(arts["mlp"][1] / "eps.onnx")
    with pytest.raises(GenccError, match="not a regular file"):
        gencc.load(art)


def test_failed_compile_leaves_nothing(arts, tmp_path):
    onnx_dir = tmp_path / "onnx"
    export(arts["mlp"][0], onnx_dir)
    (onnx_dir / "step.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(GenccError, match="step.onnx"):
        compile_artifact(onnx_dir, tmp_path / "bad.gencc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


def test_cuda_cross_compile_is_unverified_and_refused_here(arts, tmp_path):
    if not shutil.which("nvcc"):
        pytest.skip("nvcc is not installed: CUDA cross-compilation needs it")
    m = compile_artifact(arts["mlp"][0], tmp_path / "c.gencc", target="cuda", arch="sm_80")
    assert m["target"] == {"kind": "cuda", "arch": "sm_80"} and m["verified"] is False
    with pytest.raises(GenccError, match="no usable CUDA device"):
        gencc.load(tmp_path / "c.gencc")


runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_export_compile_verify_sample_info(arts, tmp_path):
    ckpt = arts["mlp"][0]
    r = cli("export", ckpt, "--out", tmp_path / "onnx")
    assert r.exit_code == 0, r.output
    assert {"eps.onnx", "step.onnx", "export.json"} <= {p.name for p in (tmp_path / "onnx").iterdir()}
    r = cli("compile", tmp_path / "onnx", "--target", "cpu", "--out", tmp_path / "m.gencc")
    assert r.exit_code == 0 and "verified" in r.output, r.output
    assert cli("verify", tmp_path / "m.gencc").exit_code == 0
    for backend in ("tvm", "ort"):
        r = cli("sample", tmp_path / "m.gencc", "--n", 6, "--steps", 5, "--backend", backend, "--out",
                tmp_path / f"s-{backend}.npz")
        assert r.exit_code == 0 and f"backend {backend}" in r.output, r.output
    r = cli("info", tmp_path / "m.gencc")
    assert r.exit_code == 0 and "files intact" in r.output and "step.so" in r.output


@pytest.mark.parametrize("args,words", [
    (("compile", "{ckpt}", "--target", "rocm", "--out", "{tmp}/x.gencc"), "unknown target 'rocm'"),
    (("compile", "{ckpt}", "--target", "cuda", "--arch", "volta", "--out", "{tmp}/x.gencc"), "invalid CUDA arch"),
    (("compile", "{ckpt}", "--out", "{art}"), "already exists; pass --force"),
    (("compile", "{tmp}", "--out", "{tmp}/x.gencc"), "neither a gencc checkpoint"),
    (("sample", "{art}", "--n", 3, "--backend", "torch", "--out", "{tmp}/s.npz"), "needs a checkpoint"),
    (("sample", "{ckpt}", "--n", 3, "--backend", "tvm", "--out", "{tmp}/s.npz"), "run gencc compile first"),
    (("export", "{tmp}/nope", "--out", "{tmp}/o"), "does not exist"),
])
def test_cli_errors(arts, tmp_path, args, words):
    ckpt, art = arts["mlp"]
    fill = {"ckpt": ckpt, "art": art, "tmp": tmp_path}
    r = cli(*[str(a).format(**fill) for a in args])
    assert r.exit_code == 2, r.output
    assert words in r.output and "Traceback" not in r.output, r.output
    assert (art / "manifest.json").exists()


def test_compiling_after_a_runtime_only_load_is_a_clear_error(arts, tmp_path):
    code = (f"import gencc\ngencc.load({str(arts['mlp'][1])!r})\n"
            "from gencc.compiler.compile import compile_artifact\n"
            f"try:\n    compile_artifact({str(arts['mlp'][0])!r}, {str(tmp_path / 'x.gencc')!r})\n"
            "except gencc.GenccError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "loaded TVM's runtime library only" in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / "x.gencc").exists()


@pytest.mark.parametrize("sampler", ["em", "ddim", "pc"])
def test_several_steps_per_call_match_one_step_per_call(arts, sampler):
    """The MLP artifact's chain.so (8 steps per call) gives the per-step path's samples, and is used."""
    m = gencc.load(arts["mlp"][1])
    assert m.net.has("chain") and m.net.chain_length == 8
    chain, calls = m.net.chain_fn, []
    m.net.chain_fn = lambda *a: calls.append(1) or chain(*a)
    fast = m.sample(9, steps=21, sampler=sampler, seed=2, batch_size=4)
    plan_len = (21 * (2 if sampler == "pc" else 1)) + 1
    assert len(calls) == 3 * (plan_len // 8)   # 3 chunks of at most 4 samples
    m.net.chain_fn = None
    np.testing.assert_allclose(fast, m.sample(9, steps=21, sampler=sampler, seed=2, batch_size=4), atol=1e-5)
    assert "chain" not in json.loads((arts["unet"][1] / "manifest.json").read_text())["functions"]


@pytest.mark.parametrize("net,sampler", [("mlp", "em"), ("mlp", "pc"), ("mlp", "ode-euler"), ("unet", "em")])
def test_compiled_noise_gives_the_host_noise_samples_bit_for_bit(arts, net, sampler):
    """noise.so draws runtime/noise.py's numbers, so swapping it for numpy changes no sample at all."""
    from gencc.runtime.device_noise import host_chain_block, host_steps

    m = gencc.load(arts[net][1])
    assert json.loads((arts[net][1] / "manifest.json").read_text())["noise"]["library"] == "noise.so"
    calls = []
    kernel_steps, kernel_chain = m.net.noise_fn, m.net.chain_noise_fn
    m.net.noise_fn = lambda *a: calls.append("steps") or kernel_steps(*a)
    m.net.chain_noise_fn = lambda *a: calls.append("chain") or kernel_chain(*a)
    fast = m.sample(7, steps=19, sampler=sampler, seed=3, batch_size=4)
    assert calls, "the compiled kernel was not used"
    tvm = sys.modules["tvm"]
    m.net.noise_fn = lambda noise, k0, k1: host_steps(tvm, noise, k0, k1)
    m.net.chain_noise_fn = lambda noise, draws: host_chain_block(tvm, noise, draws)
    np.testing.assert_array_equal(fast, m.sample(7, steps=19, sampler=sampler, seed=3, batch_size=4))


def test_noise_kernel_checks_its_output_bounds(arts):
    """The kernel writes through strides the caller gives: a too-small output is refused, not overrun."""
    tvm = sys.modules.get("tvm") or gencc.load(arts["mlp"][1]) and sys.modules["tvm"]
    from gencc.runtime.device_noise import index_words, key_words

    fn = tvm.runtime.load_module(str(arts["mlp"][1] / "noise.so"))["normals"]
    args = [tvm.runtime.tensor(a) for a in (key_words(1), np.arange(1, 4, dtype=np.uint32), index_words(np.arange(5)))]
    out = tvm.runtime.tensor(np.zeros(3 * 5 * 2 - 1, np.float32))
    with pytest.raises(Exception, match="out is too small"):
        fn(*args, out, 2, 10, 2)
