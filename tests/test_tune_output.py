"""A tuned build says only gencc's own lines: no raw TVM log line (`[hh:mm:ss] .../file.cc:95: Warning: ...`)
reaches the terminal."""
import re

import pytest

RAW_TVM_LOG = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.cc:\d+: |Creating JSONDatabase")


@pytest.mark.slow   # exports and builds a tiny step with MetaSchedule's default schedules (no trials)
def test_building_from_tuning_records_leaks_no_tvm_log(tmp_path, tiny_moons_diffusion, capfd):
    from gencc.compiler.compile import export
    from gencc.compiler.tune import tune_build

    inputs = export(tiny_moons_diffusion, tmp_path / "onnx")["functions"]["step"]["inputs"]
    capfd.readouterr()
    said = []
    info = tune_build(tmp_path / "onnx" / "step.onnx", inputs, 4, 0, tmp_path / "db", tmp_path / "s.so",
                      log=said.append)
    out, err = capfd.readouterr()   # file descriptors 1 and 2: TVM's C++ logging writes to fd 2 directly
    assert info["trials"] == 0 and (tmp_path / "s.so").is_file() and said
    assert not RAW_TVM_LOG.search(out + err), out + err
