"""One check for every output path (runtime/atomic.py's check_output_path): each command refuses a
missing folder, a file where a folder goes (and the reverse) and an existing output it may not replace,
in the same words, before doing any work."""
from __future__ import annotations

import pytest

from cli_helpers import assert_user_error, gencc
from gencc.runtime.atomic import check_output_path
from gencc.runtime.errors import GenccError


def test_a_missing_folder_names_the_output_and_the_folder(tmp_path):
    out = tmp_path / "no" / "x.npz"
    with pytest.raises(GenccError, match=r"cannot write output '.*x\.npz': folder '.*no' does not exist"):
        check_output_path(out)


def test_file_and_folder_outputs(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(GenccError, match="artifact '.*file' exists and is not a directory"):
        check_output_path(tmp_path / "file", what="artifact", directory=True)
    with pytest.raises(GenccError, match="output '.*' is a directory"):
        check_output_path(tmp_path)
    assert check_output_path(tmp_path / "new", directory=True) == tmp_path / "new"
    assert check_output_path(tmp_path / "file") == tmp_path / "file"   # replaced by the write


def test_an_existing_output_is_refused_only_when_asked(tmp_path):
    (tmp_path / "a.npz").write_text("mine")
    with pytest.raises(GenccError, match="already exists; pass --force to replace it"):
        check_output_path(tmp_path / "a.npz", existing="pass --force to replace it")
    with pytest.raises(GenccError, match=r"must end in \.png"):
        check_output_path(tmp_path / "a.npz", suffix=".png")


@pytest.mark.parametrize("args", [
    ("data", "moons", "--out", "{missing}/d.npz"),
    ("sample", "{tmp}/nope", "--n", 5, "--out", "{missing}/s.npz"),
    ("train", "diffusion", "--data", "moons", "--out", "{missing}/ckpt"),
    ("keygen", "--out", "{missing}/keys"),
    ("info", "{tmp}", "--json", "{missing}/r.json"),
])
def test_every_command_says_the_same_of_a_missing_folder(tmp_path, args):
    args = [str(a).format(tmp=tmp_path, missing=tmp_path / "missing") for a in args]
    assert_user_error(gencc(*args), "cannot write", f"folder {str(tmp_path / 'missing')!r} does not exist")


def test_keygen_into_a_file_is_a_user_error(tmp_path):
    """It was a FileExistsError traceback: the folder was created without checking what was there."""
    (tmp_path / "keys").write_text("not a folder")
    assert_user_error(gencc("keygen", "--out", tmp_path / "keys"), "key folder", "exists and is not a directory")
    assert (tmp_path / "keys").read_text() == "not a folder"
