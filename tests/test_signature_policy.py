"""GENCC_REQUIRE_SIGNATURE=1 with GENCC_TRUSTED_KEYS: a deployment-wide default that refuses any artifact
not signed by a trusted key, in gencc.load, gencc sample and gencc verify, before any native code runs."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import tvm  # noqa: F401  the full library first, as in test_signing.py (compiling tests may follow in-process)

import gencc
from cli_helpers import assert_user_error, gencc as cli
from fake_artifact import fake_artifact
from gencc.runtime import signing
from gencc.runtime.errors import GenccError
from gencc.runtime.policy import KEYS_ENV, REQUIRE_ENV, check_required_signature, required_keys

PAST_THE_CHECK = "cannot load step.so"   # the fake artifact's junk library: the signature check let it through


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return {k: signing.generate_keys(root / k)[1] for k in ("a", "b")}   # public key files


def artifact(tmp_path, name, signer=None):
    art = fake_artifact(tmp_path / f"{name}.gencc")
    if signer is not None:
        signing.sign_into(art, signing.load_private_key(signer.with_name(signing.PRIVATE)))
    return art


@pytest.fixture
def policy(monkeypatch, keys):
    monkeypatch.setenv(REQUIRE_ENV, "1")
    monkeypatch.setenv(KEYS_ENV, os.pathsep.join([str(keys["b"]), str(keys["a"])]))


def test_unsigned_and_foreign_artifacts_are_refused(policy, keys, tmp_path):
    with pytest.raises(GenccError, match=f"not signed.*{REQUIRE_ENV} is set"):
        gencc.load(artifact(tmp_path, "unsigned"))
    (tmp_path / "c").mkdir()
    foreign = signing.generate_keys(tmp_path / "c")[1]
    with pytest.raises(GenccError, match="not among the trusted keys"):
        gencc.load(artifact(tmp_path, "foreign", signer=foreign))
    with pytest.raises(GenccError, match=PAST_THE_CHECK):   # either trusted key passes
        gencc.load(artifact(tmp_path, "signed", signer=keys["a"]))


def test_refused_before_tvm_is_imported(keys, tmp_path):
    art = artifact(tmp_path, "unsigned")
    code = textwrap.dedent(f"""
        import json, sys, gencc
        try:
            gencc.load({str(art)!r})
            said = "loaded!"
        except gencc.GenccError as e:
            said = str(e)
        print(json.dumps({{"said": said, "tvm": "tvm" in sys.modules}}))
    """)
    env = {**os.environ, REQUIRE_ENV: "1", KEYS_ENV: str(keys["a"])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert "not signed" in result["said"] and result["tvm"] is False, result


def test_cli_sample_and_verify_refuse_unsigned_artifacts(policy, tmp_path):
    art = artifact(tmp_path, "unsigned")
    assert_user_error(cli("sample", art, "--n", 2, "--out", tmp_path / "s.npz"), "not signed", REQUIRE_ENV)
    assert not (tmp_path / "s.npz").exists()
    assert_user_error(cli("verify", art), "not signed", REQUIRE_ENV)


def test_off_by_default_and_explicitly(monkeypatch, tmp_path):
    art = artifact(tmp_path, "unsigned")
    for value in (None, "0", "false", ""):
        if value is None:
            monkeypatch.delenv(REQUIRE_ENV, raising=False)
        else:
            monkeypatch.setenv(REQUIRE_ENV, value)
        with pytest.raises(GenccError, match=PAST_THE_CHECK):
            gencc.load(art)


def test_require_signature_false_skips_the_policy(policy, tmp_path):
    with pytest.raises(GenccError, match=PAST_THE_CHECK):
        gencc.load(artifact(tmp_path, "unsigned"), require_signature=False)


def test_checkpoints_still_load(policy, tiny_moons_diffusion):
    assert gencc.load(tiny_moons_diffusion).sample(3, steps=2, seed=0).shape == (3, 2)


def test_bad_policy_settings_are_one_clear_error(tmp_path):
    with pytest.raises(GenccError, match=f"{KEYS_ENV} names no trusted key"):
        required_keys({REQUIRE_ENV: "1"})
    with pytest.raises(GenccError, match=f"{REQUIRE_ENV} must be 1 or 0.*'maybe'"):
        required_keys({REQUIRE_ENV: "maybe"})
    assert required_keys({REQUIRE_ENV: "yes", KEYS_ENV: f"a.pem{os.pathsep} b.pem"}) == ["a.pem", "b.pem"]
    with pytest.raises(GenccError, match="does not exist"):
        check_required_signature(artifact(tmp_path, "y"), {REQUIRE_ENV: "1", KEYS_ENV: str(tmp_path / "no.pem")})
