"""Signed artifacts: keygen, compile --sign, and refusal of unsigned or wrongly signed artifacts before
any native code loads."""
import base64
import json
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

# The full TVM library before gencc: once gencc.load has imported only TVM's runtime, compiling later in the
# same process fails (tests of the compiler may follow these in one session). Third-party sorts first.
import tvm  # noqa: F401
from hypothesis import given, settings, strategies as st
from typer.testing import CliRunner

import gencc
from fake_artifact import edit_manifest, fake_artifact
from gencc.cli.main import app
from gencc.compiler.compile import verify
from gencc.runtime import signing
from gencc.runtime.errors import GenccError

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    r = cli("keygen", "--out", root / "a")
    assert r.exit_code == 0 and "sha256:" in r.output, r.output
    signing.generate_keys(root / "b")
    return {k: (root / k / signing.PRIVATE, root / k / signing.PUBLIC) for k in ("a", "b")}


@pytest.fixture
def signed(tmp_path, keys):
    art = fake_artifact(tmp_path / "a.gencc")
    signing.sign_into(art, signing.load_private_key(keys["a"][0]))
    return art


def test_keygen_writes_a_private_key_only_its_owner_can_read(keys, tmp_path):
    private, public = keys["a"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    assert [p.name for p in private.parent.iterdir() if p.name.startswith(".")] == []
    r = cli("keygen", "--out", private.parent)
    assert r.exit_code == 2 and "already exists" in r.output   # never overwrite a key
    assert signing.load_private_key(private)


def test_a_signed_artifact_passes_the_signature_check(signed, keys):
    assert signing.verify_signature(signed, [keys["b"][1], keys["a"][1]]).startswith("sha256:")
    assert signing.verify_signature(signed, signing.load_private_key(keys["a"][0]).public_key())
    with pytest.raises(GenccError, match="cannot load step.so"):   # past the signature: TVM rejects the junk
        gencc.load(signed, trusted_keys=[keys["a"][1]])


def _tamper_manifest(art):
    edit_manifest(art, lambda m: m.update(data="someone else's"))


def _tamper_signature(art):
    record = json.loads((art / signing.SIGNATURE).read_text())
    sig = bytearray(base64.b64decode(record["signature"]))
    sig[0] ^= 1
    record["signature"] = base64.b64encode(bytes(sig)).decode()
    (art / signing.SIGNATURE).write_text(json.dumps(record))


CASES = {
    "unsigned": (lambda art: (art / signing.SIGNATURE).unlink(), "not signed"),
    "other key": (None, "not among the trusted keys"),
    "manifest edited": (_tamper_manifest, "does not match manifest.json"),
    "signature edited": (_tamper_signature, "does not match manifest.json"),
    "signature not base64": (lambda art: edit_signature(art, signature="@@@"), "malformed signature"),
    "signature not json": (lambda art: (art / signing.SIGNATURE).write_text("{"), "not valid JSON"),
    "signature a symlink": (lambda art: _symlink_signature(art), "not a regular file"),
}


def edit_signature(art, **fields):
    record = json.loads((art / signing.SIGNATURE).read_text())
    (art / signing.SIGNATURE).write_text(json.dumps({**record, **fields}))


def _symlink_signature(art):
    shutil.move(art / signing.SIGNATURE, art.parent / "elsewhere.json")
    (art / signing.SIGNATURE).symlink_to(art.parent / "elsewhere.json")


def test_bad_signatures_are_refused_before_native_code_loads(tmp_path, keys):
    """One subprocess tries every case, then shows that tvm was never even imported."""
    arts = {}
    for i, (name, (spoil, _)) in enumerate(CASES.items()):
        art = fake_artifact(tmp_path / str(i) / "a.gencc")
        signing.sign_into(art, signing.load_private_key(keys["b" if name == "other key" else "a"][0]))
        if spoil:
            spoil(art)
        arts[name] = str(art)
    code = textwrap.dedent(f"""
        import json, sys, gencc
        errors = {{}}
        for name, art in {arts!r}.items():
            try:
                gencc.load(art, trusted_keys=[{str(keys['a'][1])!r}])
            except gencc.GenccError as e:
                errors[name] = str(e)
        print(json.dumps({{"errors": errors, "tvm": "tvm" in sys.modules}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["tvm"] is False
    for name, (_, words) in CASES.items():
        assert words in result["errors"].get(name, "loaded!"), (name, result["errors"].get(name))


def test_signature_records_are_fuzzed(signed, keys):
    good = json.loads((signed / signing.SIGNATURE).read_text())
    values = st.none() | st.booleans() | st.integers() | st.text(max_size=100) | st.lists(st.integers(), max_size=3)

    @settings(max_examples=150, deadline=5000)
    @given(st.sampled_from(sorted(good)), values)
    def check(key, value):
        (signed / signing.SIGNATURE).write_text(json.dumps({**good, key: value}))
        with pytest.raises(GenccError) as e:
            signing.verify_signature(signed, [keys["a"][1]])
        assert "\n" not in str(e.value)

    check()


def test_cli_sample_requires_a_signature(signed, keys, tmp_path):
    (signed / signing.SIGNATURE).unlink()
    for extra in (["--trusted-key", keys["a"][1]], ["--require-signature"],
                  ["--require-signature", "--trusted-key", keys["a"][1]]):
        r = cli("sample", signed, "--n", 2, "--out", tmp_path / "s.npz", *extra)
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert "not signed" in r.output or "no trusted keys" in r.output, r.output
    assert not (tmp_path / "s.npz").exists()


def test_trusted_keys_on_a_checkpoint_are_refused(tiny_moons_diffusion, keys):
    with pytest.raises(GenccError, match="only artifacts carry signatures"):
        gencc.load(tiny_moons_diffusion, trusted_keys=[keys["a"][1]])


def test_bad_key_files_are_clear_errors(tmp_path, keys, signed):
    (tmp_path / "junk.pem").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    for key, words in ((tmp_path / "junk.pem", "not a PEM public key"), (tmp_path / "none.pem", "does not exist"),
                       (keys["a"][0], "not a PEM public key"), (42, "must be a PEM file path")):
        with pytest.raises(GenccError, match=words):
            gencc.load(signed, trusted_keys=[key])
    with pytest.raises(GenccError, match="not an unencrypted PEM private key"):
        signing.load_private_key(keys["a"][1])


def test_verify_refuses_to_void_a_signature(signed):
    before = (signed / "manifest.json").read_bytes()
    with pytest.raises(GenccError, match="pass --sign KEY to re-sign"):
        verify(signed)
    assert (signed / "manifest.json").read_bytes() == before


def test_replacing_the_manifest_re_signs_atomically(signed, keys):
    key = signing.load_private_key(keys["a"][0])
    data = (signed / "manifest.json").read_bytes().replace(b'"verified": true', b'"verified": false')
    inode = (signed / "step.so").stat().st_ino
    signing.replace_manifest(signed, data, key)
    assert (signed / "manifest.json").read_bytes() == data and (signed / "step.so").stat().st_ino == inode
    signing.verify_signature(signed, [keys["a"][1]])
    assert sorted(p.name for p in signed.parent.iterdir()) == ["a.gencc"]


@pytest.mark.slow
def test_compile_sign_sample_verify_resign(tmp_path, keys, tiny_moons_diffusion):
    private, public = keys["a"]
    art = tmp_path / "m.gencc"
    r = cli("compile", tiny_moons_diffusion, "--out", art, "--sign", private)
    assert r.exit_code == 0 and (art / signing.SIGNATURE).is_file(), r.output
    r = cli("sample", art, "--n", 5, "--steps", 3, "--out", tmp_path / "s.npz", "--require-signature",
            "--trusted-key", keys["b"][1], "--trusted-key", public)
    assert r.exit_code == 0, r.output
    assert "signature:  by key sha256:" in cli("info", art).output
    r = cli("verify", art)
    assert r.exit_code == 2 and "re-sign" in r.output, r.output
    r = cli("verify", art, "--sign", private)
    assert r.exit_code == 0 and "re-signed" in r.output, r.output
    assert gencc.load(art, trusted_keys=[public]).sample(3, steps=2).shape == (3, 2)
    r = cli("compile", tiny_moons_diffusion, "--out", tmp_path / "x.gencc", "--sign", public)
    assert r.exit_code == 2 and "not an unencrypted PEM private key" in r.output
    assert not (tmp_path / "x.gencc").exists()
