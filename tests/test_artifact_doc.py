"""docs/ARTIFACT.md's worked example is a manifest the reader accepts, and one that samples."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from gencc.runtime.artifact import MANIFEST, read_manifest, sha256_file

DOC = Path(__file__).parent.parent / "docs" / "ARTIFACT.md"


def _example() -> dict:
    """The first ```json block of the document."""
    return json.loads(re.search(r"```json\n(.*?)```", DOC.read_text(), re.S).group(1))


def _write(root: Path, manifest: dict) -> None:
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(root.iterdir()) if p.name != MANIFEST}
    (root / MANIFEST).write_text(json.dumps(manifest))


def test_worked_example_passes_the_reader(tmp_path):
    manifest = _example()
    for name in manifest["files"]:   # placeholder contents: the reader checks hashes, not libraries
        (tmp_path / name).write_bytes(name.encode())
    _write(tmp_path, manifest)
    m = read_manifest(tmp_path)
    assert m.model == "diffusion" and m.sample_shape == (2,) and set(m.functions) == {"eps", "step"}


def test_the_python_writer_example_writes_the_worked_example(tmp_path, monkeypatch):
    """The document's gencc-writer snippet gives the manifest of its JSON example (files apart)."""
    code = next(b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if "Manifest(" in b)
    root = tmp_path / "moons.gencc"
    root.mkdir()
    for name in _example()["files"]:
        (root / name).write_bytes(name.encode())
    monkeypatch.chdir(tmp_path)
    exec(code, {})
    written = json.loads((root / MANIFEST).read_text())
    example = _example()
    assert written.pop("verified") is False and written.pop("files").keys() == example.pop("files").keys()
    assert written == example


@pytest.mark.slow
def test_worked_example_samples_like_the_compiled_artifact(tmp_path, tiny_moons_artifact):
    """The minimal manifest over gencc's own eps/step libraries gives the full artifact's samples
    (no chain, no noise kernel: the step-by-step path with numpy noise)."""
    import gencc

    full = tiny_moons_artifact
    minimal = tmp_path / "minimal.gencc"
    minimal.mkdir()
    for name in ("eps.so", "eps.onnx", "step.so", "step.onnx"):
        shutil.copyfile(full / name, minimal / name)
    manifest = _example()
    manifest["normalization"] = json.loads((full / MANIFEST).read_text())["normalization"]
    _write(minimal, manifest)
    kw = {"steps": 10, "sampler": "dpm2m", "seed": 1}   # dpm2m: step.so in both, with x_prev and e_prev
    np.testing.assert_array_equal(gencc.load(minimal).sample(5, **kw), gencc.load(full).sample(5, **kw))
    # em: numpy noise one step per call, against noise.so and chain.so: the same numbers to rounding
    np.testing.assert_allclose(gencc.load(minimal).sample(5, steps=10, seed=1),
                               gencc.load(full).sample(5, steps=10, seed=1), atol=1e-5)
