"""Packaging: one import package `gencc`, no stray top-level names, a light `import gencc`."""
import subprocess
import sys


def run_py(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_subpackages_map_and_no_top_level_names_leak(tmp_path):
    code = (
        "import importlib.util, gencc.models, gencc.runtime, gencc.compiler, gencc.cli\n"
        "leaked = [n for n in ('models', 'runtime', 'compiler', 'cli') if importlib.util.find_spec(n)]\n"
        "assert not leaked, leaked\n"
        "print(gencc.__version__)\n"
    )
    r = run_py(code, tmp_path)   # outside the checkout, so the repo root is not on sys.path
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0.1.0"


def test_import_gencc_and_the_runtime_load_no_heavy_modules(tmp_path):
    code = (
        "import sys, gencc, gencc.runtime.model, gencc.runtime.samplers, gencc.runtime.artifact\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tvm', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = run_py(code, tmp_path)
    assert r.returncode == 0, r.stderr
