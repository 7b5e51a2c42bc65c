"""Hostile input: fuzzed manifests, artifacts, checkpoints and data files fail with one clean GenccError.

Never another exception, never a hang, and for artifacts never a native load: a library may be
handed to TVM only when the manifest passed every check and every file matched its hash.
"""
import io
import json
import os
import shutil
import zipfile
from unittest import mock

import numpy as np
import pytest

# The full TVM library before gencc: once gencc.load has imported only TVM's runtime, compiling later in the
# same process fails (tests of the compiler may follow these in one session). Third-party sorts first.
import tvm
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

import gencc
from fake_artifact import fake_artifact
from gencc.models import checkpoint as ckpt
from gencc.models.data import load_dataset
from gencc.runtime.artifact import read_manifest
from gencc.runtime.errors import GenccError
from manifest_edits import edited, edits

# GENCC_FUZZ_EXAMPLES=3000 searches deeper than CI does; the deadline fails any case that takes seconds.
FUZZ = settings(max_examples=int(os.environ.get("GENCC_FUZZ_EXAMPLES", 150)), deadline=5000,
                suppress_health_check=[HealthCheck.too_slow])
DELETE = object()

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2 ** 80, max_value=2 ** 80)
           | st.floats() | st.text(max_size=12) | st.sampled_from(["../x.so", "/etc/passwd", "batch", "", "llvm"]))
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)


def paths(v, prefix=()):
    """Every position in a JSON value: the root, each object member and each list item."""
    yield prefix
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, c in items:
        yield from paths(c, prefix + (k,))


def mutate(doc, path, value):
    """A copy of `doc` with the value at `path` replaced by `value` (or removed, for DELETE)."""
    doc = json.loads(json.dumps(doc))
    if not path:
        return value if value is not DELETE else {}
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def clean_failure(fn, *args) -> bool:
    """Run fn; True if it succeeded, False if it raised a one-line GenccError; anything else propagates."""
    try:
        fn(*args)
        return True
    except GenccError as e:
        msg = str(e)
        assert msg and "\n" not in msg and len(msg) < 1000, repr(msg[:2000])
        return False


def mutations(doc):
    return st.tuples(st.sampled_from(list(paths(doc))), json_values | st.just(DELETE))


# --- artifacts -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def art(tmp_path_factory):
    root = fake_artifact(tmp_path_factory.mktemp("fuzz") / "a.gencc")
    return root, json.loads((root / "manifest.json").read_text())


@pytest.fixture(scope="module")
def tvm_loads():
    """Record (and refuse) every library the TVM backend asks TVM to load."""
    calls = []

    def load_module(path, *a, **k):
        calls.append(path)
        raise RuntimeError("blocked by the test: no native code")

    with mock.patch.object(tvm.runtime, "load_module", load_module):
        yield calls


def test_fuzzed_manifest_fields(art, tvm_loads):
    root, good = art

    @FUZZ
    @given(mutations(good))
    def check(change):
        (root / "manifest.json").write_text(json.dumps(mutate(good, *change)))
        valid = clean_failure(read_manifest, root)
        tvm_loads.clear()
        assert not clean_failure(gencc.load, root)   # the junk libraries never load
        assert valid or not tvm_loads, "TVM was asked to load a library from a manifest that failed its checks"

    try:
        check()
    finally:
        (root / "manifest.json").write_text(json.dumps(good))


def test_fuzzed_manifest_bytes(art, tvm_loads):
    root, good = art

    @FUZZ
    @given(st.binary(max_size=2000) | st.builds(lambda b, i: json.dumps(good).encode()[:i] + b,
                                                st.binary(max_size=8), st.integers(0, 3000)))
    def check(data):
        (root / "manifest.json").write_bytes(data)
        tvm_loads.clear()
        assert not clean_failure(gencc.load, root)
        assert not tvm_loads or clean_failure(read_manifest, root)

    try:
        check()
    finally:
        (root / "manifest.json").write_text(json.dumps(good))


@pytest.mark.parametrize("text,words", [
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),                 # deeper than Python's recursion limit
    ('{"a": ' * 500 + "1" + "}" * 500, "nests deeper"),                # parses, but hostile
    ('{"format": "gencc-artifact", "x": "' + "a" * (2 << 20) + '"}', "over the size limit"),
    ('{"format_version": ' + "9" * 5000 + "}", "not valid JSON"),      # beyond int's digit limit
    ('{"format": "gencc-artifact", "format_version": NaN}', "not supported"),
    ("\xff\xfe not utf-8", "not valid JSON"),
])
def test_deep_huge_and_odd_json_is_refused(art, text, words):
    root, good = art
    try:
        (root / "manifest.json").write_bytes(text.encode("latin1"))
        with pytest.raises(GenccError, match=words):
            read_manifest(root)
    finally:
        (root / "manifest.json").write_text(json.dumps(good))


@pytest.mark.parametrize("edit,words", [
    (lambda m: m.update(sample_shape=[65536, 65536, 65536, 65536]), "sample_shape"),
    (lambda m: m["normalization"].update(shift=[float("nan"), 0.0]), "shift must be finite"),
    (lambda m: m["normalization"].update(sample_shape=[3]), "normalization"),
    (lambda m: m["sde"].update(beta_max=float("inf")), "finite"),
    (lambda m: m["sde"].pop("t_eps"), "malformed SDE"),
    (lambda m: m["functions"]["step"].update(library=["step.so"]), "does not list"),
    (lambda m: m["functions"]["eps"].update(inputs=[{"name": "x"}]), "malformed inputs"),
    (lambda m: m.update(target={"kind": "llvm", "mcpu": 7}), "mcpu must be a string"),
    (lambda m: m.update(format_version=True), "not supported"),
])
def test_wrong_types_and_absurd_values_are_refused(art, edit, words):
    root, good = art
    try:
        manifest = json.loads(json.dumps(good))
        edit(manifest)
        (root / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(GenccError, match=words):
            read_manifest(root)
    finally:
        (root / "manifest.json").write_text(json.dumps(good))


# --- consistent edits of the functions (tests/manifest_edits.py) --------------------------------------


@pytest.fixture
def ort_loads():
    """Record (and refuse) every graph the ORT backend asks ONNX Runtime to load."""
    import onnxruntime

    calls = []

    def session(path, *a, **k):
        calls.append(path)
        raise RuntimeError("blocked by the test")

    with mock.patch.object(onnxruntime, "InferenceSession", session):
        yield calls


def test_consistently_edited_functions_never_reach_native_code(art, tvm_loads, ort_loads):
    root, good = art

    @FUZZ
    @given(st.lists(edits, min_size=1, max_size=3))
    def check(changes):
        (root / "manifest.json").write_text(json.dumps(edited(good, changes)))
        valid = clean_failure(read_manifest, root)
        for backend in ("tvm", "ort"):
            tvm_loads.clear()
            ort_loads.clear()
            assert not clean_failure(gencc.load, root, backend)   # the junk libraries never load
            assert valid or not (tvm_loads or ort_loads), "a library or graph of a refused manifest was loaded"

    try:
        check()
    finally:
        (root / "manifest.json").write_text(json.dumps(good))


# --- checkpoints ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ck(tmp_path_factory, tiny_moons_diffusion):
    root = tmp_path_factory.mktemp("fuzzck") / "c.ckpt"
    shutil.copytree(tiny_moons_diffusion, root)
    return root, {name: (root / name).read_bytes() for name in (ckpt.CONFIG, ckpt.WEIGHTS, ckpt.STATE)}


def _restore(root, files):
    for name, data in files.items():
        (root / name).write_bytes(data)


def test_fuzzed_checkpoint_config(ck):
    root, files = ck
    good = json.loads(files[ckpt.CONFIG])

    @FUZZ
    @given(mutations(good))
    def check(change):
        (root / ckpt.CONFIG).write_text(json.dumps(mutate(good, *change)))
        clean_failure(ckpt.load_config, root)
        clean_failure(gencc.load, root)   # builds the network the config describes

    try:
        check()
    finally:
        _restore(root, files)


def flipped(data: bytes):
    """Random bytes, or the real file with bytes overwritten here and there, or cut short."""
    edits = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1, max_size=6)

    def apply(e):
        b = bytearray(data)
        for i, v in e:
            b[i] = v
        return bytes(b)

    return (st.binary(max_size=600) | st.builds(apply, edits)
            | st.builds(lambda i: data[:i], st.integers(0, len(data) - 1)))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")   # torch's note on fuzzed pickle headers
@pytest.mark.parametrize("name,reader", [(ckpt.WEIGHTS, ckpt.load_weights), (ckpt.STATE, ckpt.load_train_state)])
def test_fuzzed_checkpoint_files(ck, name, reader):
    root, files = ck

    @FUZZ
    @given(flipped(files[name]))
    def check(data):
        (root / name).write_bytes(data)
        clean_failure(reader, root)

    try:
        check()
    finally:
        _restore(root, files)


def test_hostile_network_config_is_refused_before_it_allocates(ck):
    root, files = ck
    config = json.loads(files[ckpt.CONFIG])
    config["net"].update(width=65536, depth=64)   # about 1 TB of float32 parameters
    try:
        (root / ckpt.CONFIG).write_text(json.dumps(config))
        with pytest.raises(GenccError, match="net 'width' is 65536"):
            gencc.load(root)
    finally:
        _restore(root, files)


# --- data files ----------------------------------------------------------------------------------

def _npy_bytes(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buf, format="PNG")
    return buf.getvalue()


GOOD_DATA = {
    "x.npy": _npy_bytes(np.ones((4, 2), np.float32)),
    "x.npz": _npz_bytes(data=np.ones((4, 1, 8, 8), np.float32), labels=np.arange(4)),
}


@pytest.mark.parametrize("name", list(GOOD_DATA))
def test_fuzzed_array_files(tmp_path, name):
    path = tmp_path / name

    @FUZZ
    @given(flipped(GOOD_DATA[name]))
    def check(data):
        path.write_bytes(data)
        clean_failure(load_dataset, str(path))

    check()


def test_fuzzed_image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png_bytes())

    @FUZZ
    @given(flipped(_png_bytes()))
    def check(data):
        (folder / "b.png").write_bytes(data)
        clean_failure(load_dataset, str(folder))

    check()


def test_npy_claiming_a_huge_shape_is_refused(tmp_path):
    header = _npy_bytes(np.ones((4, 2), np.float32)).replace(b"(4, 2)", b"(10000000000000, 2)")
    (tmp_path / "big.npy").write_bytes(header)
    with pytest.raises(GenccError, match="big.npy"):
        load_dataset(str(tmp_path / "big.npy"))
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        z.writestr("data.npy", header)
    with pytest.raises(GenccError, match="big.npz"):
        load_dataset(str(tmp_path / "big.npz"))
