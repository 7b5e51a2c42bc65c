"""A structurally valid artifact whose libraries are a few bytes of junk: for tests that must stop before
any native code loads (manifest checks, signatures, fuzzing). Loading it for real fails in TVM."""
import json
from pathlib import Path

from gencc.compiler.export import eps_io, step_io
from gencc.runtime.artifact import write_manifest

IO = {"step": step_io((2,)), "eps": eps_io((2,))}   # the compiler's own descriptions of the contract


def fake_artifact(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in ("step.so", "step_b4.so", "step.onnx", "eps.so", "eps.onnx"):
        (root / name).write_bytes(b"not a library: " + name.encode())
    functions = {f: {"library": f"{f}.so", "onnx": f"{f}.onnx", "inputs": IO[f][0], "outputs": IO[f][1]}
                 for f in ("step", "eps")}
    functions["step"]["static"] = {"4": {"library": "step_b4.so"}}   # a tuned library for batch 4
    write_manifest(root, {
        "model": "diffusion", "sample_shape": [2],
        "normalization": {"shift": [0.5, 0.25], "scale": [0.9, 0.5], "sample_shape": [2]},
        "data": "moons", "sde": {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "t_eps": 0.001},
        "step_contract": "affine5-v1", "target": {"kind": "llvm", "mcpu": "generic"}, "verified": True,
        "functions": functions})
    return root


def edit_manifest(root: Path, edit) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest
