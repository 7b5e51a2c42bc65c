"""docs/EMBEDDING.md's build lines work as written from a checkout after `make install`, with the venv not
active, and what they build is ignored by git."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ROOT / "examples" / "cpp" / "flags.py"
# A shell whose PATH has no venv in it, as in a fresh terminal.
PLAIN_ENV = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}


def python_without_tvm():
    for exe in ("/usr/bin/python3", shutil.which("python3", path="/usr/bin:/bin")):
        if exe and subprocess.run([exe, "-c", "import tvm"], capture_output=True).returncode != 0:
            return exe
    pytest.skip("no python3 without apache-tvm on this machine")


def documented_build_lines():
    text = (ROOT / "docs" / "EMBEDDING.md").read_text()
    block = re.search(r"### Build\n.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("    #")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_built_binary_is_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("gencc_sample", "build/cpp/gencc_sample"):
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert r.returncode == 0, f"{path} is not in .gitignore"


def test_flags_py_works_from_a_python_without_tvm():
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in this checkout (make install makes it)")
    r = subprocess.run([python_without_tvm(), str(FLAGS)], capture_output=True, text=True, env=PLAIN_ENV)
    assert r.returncode == 0, r.stderr
    assert "-ltvm_runtime" in r.stdout and "tvm/include" in r.stdout


def test_documented_build_lines_use_the_checkout_venv():
    lines = documented_build_lines()
    assert len(lines) == 2 and "$(python " not in lines[0] and "which python" not in lines[1], lines


@pytest.mark.slow   # two C++ builds of examples/cpp/gencc_sample.cc
@pytest.mark.parametrize("which", [0, 1], ids=["g++", "cmake"])
def test_documented_build_line_verbatim(tmp_path, which):
    line = documented_build_lines()[which]
    tool = line.split()[0]
    if shutil.which(tool, path=PLAIN_ENV["PATH"]) is None or not (ROOT / ".venv").exists():
        pytest.skip(f"{tool} not on {PLAIN_ENV['PATH']}, or no .venv")
    # A checkout's layout, so the build writes into tmp_path rather than into this checkout.
    for name in ("examples", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    r = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, env=PLAIN_ENV)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    binary = tmp_path / ("gencc_sample" if which == 0 else "build/cpp/gencc_sample")
    r = subprocess.run([str(binary), "--sha256", str(FLAGS)], capture_output=True, text=True, env=PLAIN_ENV)
    assert r.returncode == 0 and len(r.stdout.strip()) == 64, r.stderr
