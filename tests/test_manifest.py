"""The typed manifest (runtime/artifact.py) in both directions: what gencc writes it reads back unchanged, what
it would refuse to read it refuses to write, and manifests written before the types existed read and re-write
with the same content."""
import json
from dataclasses import replace

import pytest

from fake_artifact import fake_artifact, fake_manifest
from gencc.runtime.artifact import (
    EXPORT,
    MANIFEST,
    Dims,
    IOSpec,
    function_io,
    read_export,
    read_manifest,
    sha256_file,
    signature,
    write_export,
)
from gencc.runtime.errors import GenccError

FILES = ("step.so", "step_b4.so", "step.onnx", "eps.so", "eps.onnx")

# A manifest as the dict-assembling writer before the types wrote it (gencc compile of a moons MLP, trimmed).
OLD = {
    "format": "gencc-artifact", "format_version": 1, "model": "diffusion", "sample_shape": [2],
    "normalization": {"shift": [0.5, 0.25], "scale": [0.9, 0.5], "sample_shape": [2]}, "data": "moons",
    "source": {"checkpoint_step": 40, "net": {"arch": "mlp", "width": 32}},
    "sde": {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "t_eps": 0.001}, "step_contract": "affine5-v1",
    "target": {"kind": "llvm", "mcpu": "znver5"}, "tvm_version": "0.27.dev0", "verified": True,
    "parity_max_abs_err": {"step": 1e-6, "eps": 2e-6},
    "functions": {name: {"library": f"{name}.so", "onnx": f"{name}.onnx",
                         "inputs": [s.to_json() for s in function_io(name, Dims(state=(2,)))[0]],
                         "outputs": [s.to_json() for s in function_io(name, Dims(state=(2,)))[1]],
                         "pipeline": "llvm-default", "flops_per_sample": 4000, "activation_bytes_per_sample": 512}
                  for name in ("step", "eps")},
    "compile_seconds": 3.2,
}


def _old_artifact(root, manifest: dict):
    root.mkdir()
    for name in FILES:
        (root / name).write_bytes(name.encode())
    manifest = {**manifest, "files": {n: sha256_file(root / n) for n in sorted(FILES)}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return root, manifest


def test_write_then_read_gives_the_same_manifest(tmp_path):
    root = tmp_path / "a.gencc"
    root.mkdir()
    for name in FILES:
        (root / name).write_bytes(name.encode())
    written = fake_manifest().write(root)
    read = read_manifest(root)
    assert read == written and read.files == written.files and set(read.files) == set(FILES)
    assert read.functions["step"].static[4].library == "step_b4.so"
    assert read.functions["eps"].inputs == function_io("eps", Dims(state=(2,)))[0]
    assert json.loads((root / MANIFEST).read_text()) == read.to_json() == dict(read.raw)


def test_a_manifest_written_before_the_types_reads_and_rewrites_unchanged(tmp_path):
    root, old = _old_artifact(tmp_path / "old.gencc", OLD)
    m = read_manifest(root)
    assert m.functions["step"].flops_per_sample == 4000 and m.info["tvm_version"] == "0.27.dev0"
    assert m.functions["step"]["inputs"] == old["functions"]["step"]["inputs"]   # the JSON view, for old callers
    assert m.to_json() == old   # the same content; only the key order may differ
    m.write(root)
    assert json.loads((root / MANIFEST).read_text()) == old


def test_unknown_fields_and_functions_survive_a_rewrite(tmp_path):
    """Readers ignore what they do not know (docs/ARTIFACT.md §10), and `gencc verify` keeps it."""
    extra = {**OLD, "time_input": "sigma", "functions": {**OLD["functions"], "later": {"library": "step.so"}}}
    root, _ = _old_artifact(tmp_path / "x.gencc", extra)
    m = read_manifest(root)
    assert m.info["time_input"] == "sigma" and set(m.functions) == {"step", "eps"}
    replace(m, verified=False).write(root)
    again = json.loads((root / MANIFEST).read_text())
    assert again["time_input"] == "sigma" and again["functions"]["later"] == {"library": "step.so"}
    assert again["verified"] is False


@pytest.mark.parametrize("change,words", [
    (lambda f: replace(f, inputs=f.inputs[::-1]), "its contract is ['x', 't', 'coef', 'z', 'x_prev', 'e_prev']"),
    (lambda f: replace(f, outputs=(IOSpec("x_next", ("batch", 3)), f.outputs[1])), "sample_shape says ['batch', 2]"),
    (lambda f: replace(f, library="missing.so"), "which the manifest does not list"),
    (lambda f: replace(f, flops_per_sample=0), "malformed flops_per_sample 0"),
])
def test_the_writer_refuses_what_the_reader_would(tmp_path, change, words):
    root = fake_artifact(tmp_path / "a.gencc")
    before = (root / MANIFEST).read_bytes()
    m = read_manifest(root)
    bad = replace(m, functions={**m.functions, "step": change(m.functions["step"])})
    with pytest.raises(GenccError, match=words.replace("[", r"\[").replace("]", r"\]")):
        bad.write(root)
    assert (root / MANIFEST).read_bytes() == before   # nothing written


def test_a_conditional_manifest_takes_the_labels_from_the_signature(tmp_path):
    root = fake_artifact(tmp_path / "a.gencc")
    m = read_manifest(root)
    dims = Dims(state=(2,), num_classes=3)
    cond = replace(m, num_classes=3, files={}, functions={
        n: replace(f, inputs=function_io(n, dims)[0], static={}) for n, f in m.functions.items()})
    written = cond.write(root)
    assert written.step_contract == "affine5-cfg-v1" and json.loads((root / MANIFEST).read_text())["num_classes"] == 3
    assert [a.source for a in signature("step", dims)[0]][-2:] == ["num_classes", "the contract"]
    with pytest.raises(GenccError, match="conditional function 'step' needs inputs y"):
        replace(cond, functions={**cond.functions, "step": m.functions["step"]}).write(root)


def test_info_cannot_shadow_a_typed_field():
    with pytest.raises(ValueError, match="typed fields"):
        replace(fake_manifest(), info={"verified": True})


def test_export_description_round_trip_and_checks(tmp_path):
    description = fake_manifest()
    functions = {"eps": {"file": "eps.onnx", "inputs": [s.to_json() for s in description.functions["eps"].inputs],
                         "outputs": [s.to_json() for s in description.functions["eps"].outputs],
                         "max_abs_err_vs_torch": 1e-7}}
    (tmp_path / "eps.onnx").write_bytes(b"graph")
    data = write_export(tmp_path, replace(description, functions={}), functions)
    assert json.loads((tmp_path / EXPORT).read_text()) == data and data["step_contract"] == "affine5-v1"
    read, read_functions = read_export(tmp_path)
    assert read_functions == functions and read.sde == description.sde and read.info == {"data": "moons"}
    (tmp_path / EXPORT).write_text(json.dumps({**data, "functions": {"eps": {**functions["eps"], "file": "../x"}}}))
    with pytest.raises(GenccError, match="names ONNX file '../x'"):
        read_export(tmp_path)
