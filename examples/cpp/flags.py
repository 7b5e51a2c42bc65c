"""Print the g++ flags that build against the apache-tvm and apache-tvm-ffi wheels installed here.

    g++ -std=c++17 -O2 -ffp-contract=off examples/cpp/gencc_sample.cc -o gencc_sample \
        $(.venv/bin/python examples/cpp/flags.py)

Run by a Python without apache-tvm (`python3 examples/cpp/flags.py` outside the venv), it hands over to the
checkout's `.venv/bin/python` that `make install` made, so the line works whether or not the venv is active.
The packages are located without being imported (importing tvm loads its libraries, and tvm_ffi
imports torch when it can), so this is quick. `--cmake` prints two lines for CMakeLists.txt instead: the
include folders and the library folders, each a CMake list.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parents[2] / ".venv"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        venv_python = VENV / "bin" / "python"
        # The checkout's venv, unless that is the one running (sys.prefix), which would loop.
        if venv_python.exists() and Path(sys.prefix).resolve() != VENV:
            os.execv(venv_python, [str(venv_python), __file__, *sys.argv[1:]])
        sys.exit(f"flags.py: error: the Python package {name!r} is not installed (pip install apache-tvm)")
    return Path(next(iter(spec.submodule_search_locations)))


def require(path: Path) -> str:
    if not path.exists():
        sys.exit(f"flags.py: error: {path} is missing; is this a complete apache-tvm / apache-tvm-ffi wheel?")
    return str(path)


def main() -> None:
    tvm, ffi = package_dir("tvm"), package_dir("tvm_ffi")
    includes = [require(tvm / "include"), require(ffi / "include"), require(ffi / "3rdparty" / "dlpack" / "include")]
    libdirs = [require(tvm / "lib"), require(ffi / "lib")]
    require(tvm / "lib" / "libtvm_runtime.so")
    require(ffi / "lib" / "libtvm_ffi.so")
    if sys.argv[1:] == ["--cmake"]:
        print(";".join(includes))
        print(";".join(libdirs))
        return
    flags = [f"-isystem{d}" for d in includes] + [f"-L{d}" for d in libdirs] + [f"-Wl,-rpath,{d}" for d in libdirs]
    # --no-as-needed: nothing in the program names a libtvm_runtime symbol that the linker would keep it for
    # alone, yet it must be loaded, since it registers the Relax VM that step.so needs.
    flags += ["-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-ldl", "-pthread"]
    print(" ".join(flags))


if __name__ == "__main__":
    main()
