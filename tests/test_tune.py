"""MetaSchedule tuning: records are stored in the artifact, reused without new trials, and refused
cleanly when they were made on another CPU. Tuning is slow, so the tuned model is tiny."""
import json

import numpy as np
import pytest

import gencc
from fake_artifact import edit_manifest
from gencc.compiler.compile import compile_artifact
from gencc.compiler.tune import DB_META, TuneOptions, tune_into, usable_database
from gencc.runtime.errors import GenccError


def test_records_from_another_cpu_fall_back_to_the_untuned_build(tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    (db / DB_META).write_text(json.dumps({"mcpu": "cortex-a53"}))
    ok, why = usable_database(db, "znver5")
    assert not ok and "cortex-a53" in why and "znver5" in why
    said = []
    assert tune_into(tmp_path, "step", "step.onnx", [], TuneOptions(trials=0, db_dir=db), "znver5", said.append) == {}
    assert "using the untuned build" in said[0]


def test_bad_tuning_options():
    with pytest.raises(GenccError):
        TuneOptions(trials=-1)
    with pytest.raises(GenccError):
        TuneOptions(trials=4, batches=(0,))


@pytest.mark.slow
def test_tuned_artifact_matches_untuned_and_reuses_its_database(tmp_path, tiny_moons_diffusion):
    db = tmp_path / "db"
    opts = TuneOptions(trials=4, batches=(8,), db_dir=db, keep="always")   # 4 trials rarely beat the default
    said = []
    m = compile_artifact(tiny_moons_diffusion, tmp_path / "t.gencc", tuning=opts, log=said.append)
    static = m["functions"]["step"]["static"]
    assert static["8"]["trials"] == 4 and static["8"]["library"] in m["files"]
    assert {"tuning_database_workload.json", "tuning_database_tuning_record.json"} <= set(m["files"])
    # Same workload, same database: applied without new trials.
    m2 = compile_artifact(tiny_moons_diffusion, tmp_path / "t2.gencc", tuning=opts, log=said.append)
    assert m2["functions"]["step"]["static"]["8"]["trials"] == 0
    assert any("no new trials" in s for s in said)
    untuned = compile_artifact(tiny_moons_diffusion, tmp_path / "u.gencc")
    assert "static" not in untuned["functions"]["step"]
    a = gencc.load(tmp_path / "t2.gencc").sample(20, steps=10, batch_size=8)   # chunks of 8, 8 (tuned), 4 (dynamic)
    b = gencc.load(tmp_path / "u.gencc").sample(20, steps=10, batch_size=8)
    np.testing.assert_allclose(a, b, atol=1e-4)
    # A static entry keyed by another batch than its library was built for is refused at load, in one line.
    edit_manifest(tmp_path / "t2.gencc",
                  lambda m: m["functions"]["step"]["static"].update({"5": m["functions"]["step"]["static"].pop("8")}))
    with pytest.raises(GenccError, match=r"step_b8.so \(function 'step'\) does not take .* at batch 5"):
        gencc.load(tmp_path / "t2.gencc")
    # The database holds a measured record of gencc's default schedule for every kernel (the seeds),
    # and pruning keeps exactly one record, the fastest, per kernel.
    from tvm.s_tir import meta_schedule as ms

    from gencc.compiler.tune import prune_database

    records = ms.database.JSONDatabase(work_dir=str(db)).get_all_tuning_records()
    kernels = {r.workload.mod.script() for r in records}
    assert len(records) > len(kernels) >= 3
    assert prune_database(db, tmp_path / "pruned") == len(kernels)
    assert json.loads((tmp_path / "pruned" / DB_META).read_text()) == json.loads((db / DB_META).read_text())


@pytest.mark.slow
def test_tuning_starts_from_the_default_schedules(tmp_path, tiny_moons_diffusion):
    """Before any trial, every kernel's default schedule is measured and stored as its record, so a
    build from the database is at worst the default build, never an unscheduled kernel."""
    from tvm.s_tir import meta_schedule as ms

    from gencc.compiler.build import resolve_target
    from gencc.compiler.compile import export
    from gencc.compiler.tune import default_schedule, tune_build

    inputs = export(tiny_moons_diffusion, tmp_path / "onnx")["functions"]["step"]["inputs"]
    said = []
    info = tune_build(tmp_path / "onnx" / "step.onnx", inputs, 16, 0, tmp_path / "db", tmp_path / "s.so",
                      log=said.append)
    assert info["trials"] == 0 and (tmp_path / "s.so").is_file()
    assert f"{info['tasks']} default schedules measured" in said[0], said
    target, _ = resolve_target("llvm")
    records = ms.database.JSONDatabase(work_dir=str(tmp_path / "db")).get_all_tuning_records()
    assert len(records) == info["tasks"]
    for r in records:
        assert r.run_secs and str(r.trace) == str(default_schedule(r.workload.mod["main"], target).trace)


def test_shipped_records_unpack_into_a_usable_database(tmp_path):
    """Every demo model cli/demo.py tunes has gzipped records in the package; they unpack into the plain
    JSON database MetaSchedule reads, stamped with the CPU they were made on."""
    from tvm.s_tir import meta_schedule as ms

    from gencc.cli.demo import TUNED
    from gencc.compiler.tune import DB_FILES, pack_records, shipped_records, unpack_records

    for name in TUNED:
        db = tmp_path / name
        unpack_records(shipped_records(name), db)
        assert all((db / f).is_file() for f in DB_FILES)
        assert json.loads((db / DB_META).read_text())["mcpu"]
        assert len(ms.database.JSONDatabase(work_dir=str(db))) > 0
        pack_records(db, tmp_path / f"{name}-again")   # and the round trip is lossless
        unpack_records(tmp_path / f"{name}-again", tmp_path / f"{name}-2")
        assert all((db / f).read_bytes() == (tmp_path / f"{name}-2" / f).read_bytes() for f in DB_FILES)
