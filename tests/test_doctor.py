"""gencc doctor: the real report on this machine, and a report that survives everything missing."""
import json

import pytest

from cli_helpers import gencc
from gencc.cli import doctor

KEYS = {"gencc", "python", "platform", "packages", "cpu", "gpu", "nvcc", "tvm_runtime", "tvm_compiler",
        "cuda_usable", "cpu_path_usable"}


@pytest.fixture(scope="module")
def report_json():
    r = gencc("doctor", "--json", "-")   # loads TVM twice in child processes: seconds
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout), r.stderr


@pytest.mark.slow
def test_doctor_json_schema_on_this_machine(report_json):
    import gencc as package

    report, text = report_json
    assert set(report) == KEYS
    assert report["gencc"] == package.__version__
    assert set(doctor.PACKAGES) == set(report["packages"]) and report["packages"]["apache-tvm"]
    cpu = report["cpu"]
    assert cpu["logical_cores"] >= 1 and isinstance(cpu["isa"], list) and set(cpu["isa"]) <= set(doctor.ISA_FLAGS)
    assert report["tvm_runtime"]["ok"] and report["tvm_runtime"]["cpu_roundtrip"] and report["cpu_path_usable"]
    assert isinstance(report["nvcc"]["found"], bool) and isinstance(report["cuda_usable"], bool)
    # The text went to stderr, so stdout is pure JSON; it names every finding.
    for word in ("gencc", "packages", "cpu isa", "nvcc", "tvm runtime", "cuda usable", "cpu path     usable"):
        assert word in text, word


def test_doctor_reports_what_is_missing_without_crashing(monkeypatch):
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    monkeypatch.setattr(doctor.os, "access", lambda *a: False)
    monkeypatch.setattr(doctor, "_version", lambda dist: None)
    monkeypatch.setattr(doctor, "_child_json", lambda code: {"ok": False, "error": "OSError: libtvm_runtime.so: "
                                                                                "cannot open shared object file"})
    monkeypatch.setattr(doctor, "torch_cuda", lambda: {"available": False, "error": "ModuleNotFoundError: torch"})
    r = gencc("doctor")
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    for line in ("nvidia-smi not found", "nvcc         not found", "torch not installed",
                 "tvm runtime  FAILED: OSError: libtvm_runtime.so", "cpu path     NOT usable"):
        assert line in r.output, line
    r = gencc("doctor", "--json", "-")
    report = json.loads(r.stdout)
    assert r.exit_code == 3 and report["cpu_path_usable"] is False and report["nvcc"] == {"found": False}
    assert report["gpu"]["nvidia_smi"] == {"found": False} and report["packages"]["torch"] is None


def test_doctor_parses_nvidia_smi_and_nvcc(monkeypatch):
    outputs = {"nvidia-smi": "NVIDIA H200, 570.86, 143771 MiB, 9.0\n",
               "nvcc": "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 12.8, V12.8.93\n"}
    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/opt/bin/{name}")
    monkeypatch.setattr(doctor, "_run", lambda cmd: {"stdout": outputs[cmd[0].rsplit("/", 1)[1]]})
    assert doctor.nvidia_smi() == {"found": True, "gpus": [
        {"name": "NVIDIA H200", "driver": "570.86", "memory": "143771 MiB", "compute_capability": "9.0"}]}
    assert doctor.nvcc() == {"found": True, "path": "/opt/bin/nvcc", "version": "12.8"}


def test_doctor_json_file_and_bad_destination(tmp_path):
    from cli_helpers import assert_user_error

    assert_user_error(gencc("doctor", "--json", tmp_path / "r.txt"), "r.txt", ".json")
    assert_user_error(gencc("doctor", "--json", tmp_path / "no" / "r.json"), "does not exist")
