"""`gencc info` on an artifact: reads the manifest only (no torch, onnx or TVM import) and lists every
library the artifact carries, the noise kernel and the tuned per-batch builds included."""
import json
import subprocess
import sys
from dataclasses import replace

from fake_artifact import fake_artifact
from gencc.runtime.artifact import NOISE_CONTRACT, read_manifest

# Heavy imports made to fail: info on an artifact must not need them (torch alone took 1.6 s).
BLOCKED = ("torch", "onnx", "onnxruntime", "tvm", "tvm_ffi")
RUN_INFO = ("import sys\n"
            f"for name in {BLOCKED!r}: sys.modules[name] = None   # `import name` now raises ImportError\n"
            "sys.argv = ['gencc', 'info', *sys.argv[1:]]\n"
            "from gencc.cli.main import main\n"
            "main()\n")


def artifact_with_noise_kernel(root):
    fake_artifact(root)
    (root / "noise.so").write_bytes(b"not a library: noise")
    replace(read_manifest(root), noise_library="noise.so", files={}).write(root)   # files={}: hash them anew
    return root


def run_info(*args):
    return subprocess.run([sys.executable, "-c", RUN_INFO, *map(str, args)], capture_output=True, text=True)


def test_info_on_an_artifact_imports_no_heavy_library(tmp_path):
    art = artifact_with_noise_kernel(tmp_path / "a.gencc")
    r = run_info(art)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "gencc artifact" in r.stdout
    r = run_info(art, "--json", "-")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["kind"] == "artifact"


def test_info_lists_the_noise_kernel_and_tuned_libraries(tmp_path):
    art = artifact_with_noise_kernel(tmp_path / "a.gencc")
    r = run_info(art, "--json", tmp_path / "a.json")
    assert r.returncode == 0, r.stderr[-2000:]
    text = " ".join(r.stdout.split())
    assert "noise.so" in text and NOISE_CONTRACT in text
    assert "step_b4.so" in text and "batch 4" in text
    libraries = json.loads((tmp_path / "a.json").read_text())["libraries"]
    assert set(libraries) == {"step.so", "step_b4.so", "eps.so", "noise.so"}
    assert "batch 4" in libraries["step_b4.so"] and "noise" in libraries["noise.so"]


def test_info_says_when_noise_is_drawn_on_the_host(tmp_path):
    r = run_info(fake_artifact(tmp_path / "a.gencc"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "noise:" in r.stdout and "host" in r.stdout
