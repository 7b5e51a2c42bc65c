"""A structurally valid artifact whose libraries are a few bytes of junk: for tests that must stop before
any native code loads (manifest checks, signatures, fuzzing). Loading it for real fails in TVM."""
import json
from dataclasses import replace
from pathlib import Path

from gencc.runtime.artifact import Dims, FunctionSpec, Manifest, StaticLibrary, function_io
from gencc.runtime.normalize import Normalization
from gencc.runtime.sde import VPSDE


def fake_manifest() -> Manifest:
    """The manifest of `fake_artifact`, before its files are hashed: its functions are the contract's own."""
    functions = {f: FunctionSpec(f"{f}.so", f"{f}.onnx", *function_io(f, Dims(state=(2,)))) for f in ("step", "eps")}
    functions["step"] = replace(functions["step"], static={4: StaticLibrary("step_b4.so")})   # tuned for batch 4
    return Manifest(model="diffusion", sample_shape=(2,), normalization=Normalization((0.5, 0.25), (0.9, 0.5), (2,)),
                    functions=functions, target={"kind": "llvm", "mcpu": "generic"},
                    sde=VPSDE(beta_min=0.1, beta_max=20.0, t_eps=0.001), verified=True, info={"data": "moons"})


def fake_artifact(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in ("step.so", "step_b4.so", "step.onnx", "eps.so", "eps.onnx"):
        (root / name).write_bytes(b"not a library: " + name.encode())
    fake_manifest().write(root)
    return root


def edit_manifest(root: Path, edit) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest
