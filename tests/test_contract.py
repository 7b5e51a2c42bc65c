"""Edited manifests never reach TVM or ONNX Runtime unchecked: every function's declared inputs and outputs
must fit its contract (runtime/contract.py), and the loaded library or graph must really have them."""
from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given, settings, strategies as st

import gencc
from cli_helpers import assert_user_error, gencc as run_cli
from fake_artifact import edit_manifest
from gencc.compiler.compile import compile_artifact
from gencc.runtime.errors import GenccError
from manifest_edits import edited, edits
from test_fuzz import FUZZ, clean_failure

pytestmark = pytest.mark.slow   # the module fixture compiles with TVM (~10 s)


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny_moons_diffusion):
    out = tmp_path_factory.mktemp("contract") / "moons.gencc"
    compile_artifact(tiny_moons_diffusion, out, target="llvm")
    return out


def _resize_state(m: dict, size: int) -> None:
    """Every dim that is the sample's, changed to `size` everywhere it appears: a consistent edit."""
    m["sample_shape"] = [size]
    m["normalization"].update(shift=[0.0] * size, scale=[1.0] * size, sample_shape=[size])
    for f in m["functions"].values():
        for spec in f["inputs"] + f["outputs"]:
            if spec["name"] in ("x", "z", "x_prev", "e_prev", "eps", "x_next"):
                spec["shape"] = ["batch", size]
            elif spec["name"] == "zs":
                spec["shape"] = ["batch", spec["shape"][1], size]


def _swap(m: dict, a: str, b: str) -> None:
    """Functions a and b trade their library and ONNX files (each still used once)."""
    fa, fb = m["functions"][a], m["functions"][b]
    for key in ("library", "onnx"):
        fa[key], fb[key] = fb[key], fa[key]


EDITS = {   # the cases first, then consistent edits that only the loaded library can refute
    "chain input ts renamed": (lambda m: m["functions"]["chain"]["inputs"][1].update(name="steps"), "'chain'"),
    "chain ts shape [batch]": (lambda m: m["functions"]["chain"]["inputs"][1].update(shape=["batch"]), "ts"),
    "sample_shape [3], normalization too": (lambda m: (m.update(sample_shape=[3]), m["normalization"].update(
        shift=[0.0] * 3, scale=[1.0] * 3, sample_shape=[3])), "sample_shape says ['batch', 3]"),
    "step.static[1000] is eps.so": (lambda m: m["functions"]["step"].update(static={"1000": {"library": "eps.so"}}),
                                    "already function 'eps' library"),
    "sample_shape [3] everywhere": (lambda m: _resize_state(m, 3), "(function 'step')"),
    "step and eps files swapped": (lambda m: _swap(m, "step", "eps"), "(function 'step')"),
    "inputs x and t swapped": (lambda m: m["functions"]["eps"]["inputs"].reverse(), "its contract is ['x', 't']"),
    "eps dtype float16": (lambda m: m["functions"]["eps"]["outputs"][0].update(dtype="float16"), "dtype"),
}


@pytest.mark.parametrize("backend", ["tvm", "ort"])
@pytest.mark.parametrize("case", list(EDITS))
def test_edited_manifest_is_one_line_error_before_any_call(art, tmp_path, case, backend):
    bad = tmp_path / "bad.gencc"
    shutil.copytree(art, bad)
    edit, words = EDITS[case]
    edit_manifest(bad, edit)
    with pytest.raises(GenccError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as e:
        gencc.load(bad, backend=backend).sample(2, steps=3)
    assert "\n" not in str(e.value)


def test_sample_cli_reports_an_edited_manifest_in_one_line(art, tmp_path):
    bad = tmp_path / "bad.gencc"
    shutil.copytree(art, bad)
    edit_manifest(bad, lambda m: _resize_state(m, 3))
    for backend in ("tvm", "ort"):
        r = run_cli("sample", bad, "--n", 2, "--steps", 3, "--backend", backend, "--out", tmp_path / "s.npy")
        assert_user_error(r, "function 'step'")
    assert not (tmp_path / "s.npy").exists()


def test_a_static_entry_that_fits_its_key_still_loads(art, tmp_path):
    """The positive control of the per-library check: a static entry is probed at its own batch, and a
    library that takes that batch (here a copy of the dynamic one) passes and is used."""
    bad = tmp_path / "bad.gencc"
    shutil.copytree(art, bad)
    shutil.copyfile(bad / "step.so", bad / "step_b4.so")
    from gencc.runtime.artifact import sha256_file

    def edit(m):
        m["files"]["step_b4.so"] = sha256_file(bad / "step_b4.so")
        m["functions"]["step"]["static"] = {"4": {"library": "step_b4.so"}}
    edit_manifest(bad, edit)
    assert gencc.load(bad).sample(4, steps=3, batch_size=4).shape == (4, 2)   # a dynamic library fits any key
    assert json.loads((bad / "manifest.json").read_text())["functions"]["step"]["static"]


def test_consistently_edited_real_artifact_samples_or_fails_in_one_line(art):
    """Edits the manifest checks cannot refute (a consistent resize, swapped files) reach the backends'
    own checks of the loaded library or graph, which must refuse them before the first sampling call."""
    root, good = art, json.loads((art / "manifest.json").read_text())

    @settings(FUZZ, max_examples=min(FUZZ.max_examples, 60))
    @given(st.lists(edits, min_size=1, max_size=3))
    def check(changes):
        (root / "manifest.json").write_text(json.dumps(edited(good, changes)))
        for backend in ("tvm", "ort"):
            clean_failure(lambda backend=backend: gencc.load(root, backend=backend).sample(2, steps=3, batch_size=2))

    try:
        check()
    finally:
        (root / "manifest.json").write_text(json.dumps(good))


def test_compile_records_the_network_activations_per_sample(art, tiny_moons_diffusion):
    """(issue 13, item 3; here to share the compiled fixture) the memory check's per-sample activations."""
    from gencc.runtime.artifact import read_manifest

    functions = read_manifest(art).functions
    assert {f["activation_bytes_per_sample"] for f in functions.values()} == {128 * 4 * 2}   # 256 floats
    assert gencc.load(art).activation_bytes == gencc.load(tiny_moons_diffusion).activation_bytes == 1024
