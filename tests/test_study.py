"""scripts/quality_study.py: budget selection and table arithmetic on fake cells, then a tiny full run."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gencc.runtime.samplers import SAMPLERS, nfe

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "quality_study.py"
_spec = importlib.util.spec_from_file_location("quality_study", SCRIPT)
study = importlib.util.module_from_spec(_spec)
sys.modules["quality_study"] = study   # dataclasses look their module up there
_spec.loader.exec_module(study)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("target", study.NFE_LADDER)
def test_steps_for_nfe_is_the_largest_within_budget(sampler, target):
    steps = study.steps_for_nfe(sampler, target)
    assert nfe(sampler, steps) <= target < nfe(sampler, steps + 1)


def test_steps_for_nfe_known_values():
    assert study.steps_for_nfe("em", 10) == 9 and study.steps_for_nfe("dpm2m", 1000) == 999
    assert study.steps_for_nfe("pc", 10) == 4 and nfe("pc", 4) == 9         # 2 per step + 1: one short
    assert study.steps_for_nfe("ode-heun", 5) == 2 and nfe("ode-heun", 2) == 5
    assert study.steps_for_nfe("pc", 2) is None and study.steps_for_nfe("em", 1) is None


def fake_cell(sampler, target, value, floor=1.0, conf=0.95, entropy=0.99):
    steps = study.steps_for_nfe(sampler, target) if sampler != "gan" else 1
    return {"sampler": sampler, "target": target, "nfe": 1 if sampler == "gan" else nfe(sampler, steps),
            "steps": steps, "seconds_per_sample": 0.002,
            "metrics": {"frechet_distance": {"value": value, "floor": floor, "better": "lower"},
                        "confident_fraction": {"value": conf, "floor": 0.98, "better": "higher"},
                        "coverage_entropy": {"value": entropy, "floor": 0.99, "better": "higher"}}}


def fake_results():
    cells = [fake_cell("em", 20, 3.0), fake_cell("em", 1000, 1.2), fake_cell("pc", 20, 2.0),
             fake_cell("dpm2m", 20, 1.3), fake_cell("dpm2m", 1000, 1.25), fake_cell("gan", 1, 2.5, entropy=0.8)]
    return {"command": "x", "seed": 0, "nfes": [20, 1000], "samplers": ["em", "pc", "dpm2m"], "runtime_s": 1.0,
            "machine": {"cpu": "cpu", "cores": 2}, "date": "2000-01-01",
            "datasets": {"digits": {"model": "m", "gan": "g", "backend": "ort", "n": 10,
                                    "metric": "frechet_distance", "cells": cells}}}


def test_markdown_table_and_grid():
    cells = fake_results()["datasets"]["digits"]["cells"]
    rows = study.grid_rows(cells, ["em", "pc", "ode-euler"], [20, 1000],
                           lambda c: f"{c['metrics']['frechet_distance']['value']:.3g}")
    assert rows == [["em", "3", "1.2"], ["pc", "2 (19)", "-"], ["ode-euler", "-", "-"]]
    table = study.markdown_table(["s", "20", "1000"], rows).splitlines()
    assert table[:2] == ["| s | 20 | 1000 |", "|:---|---:|---:|"] and table[3] == "| pc | 2 (19) | - |"


def test_goal_lines_check_the_numbers():
    text = "\n".join(study.goal_lines(fake_results()))
    assert "best at 20 NFE is dpm2m (1.3), 1.08x em at 1000 NFE (1.2): PASS" in text
    assert "(b) digits, em@1000: Fréchet distance 1.2 = 1.20x floor 1, confident 0.950: PASS" in text
    assert "(b) digits, best cell, em@1000" in text
    assert "GAN coverage entropy 0.800: FAIL" in text


def test_rerun_keeps_the_hand_written_findings():
    first = study.merge_report(None, study.BEGIN + "\nold\n" + study.END)
    edited = first.replace("(hand-written after the run; kept when the study is rerun)", "My findings.")
    again = study.merge_report(edited, study.BEGIN + "\nnew\n" + study.END)
    assert "new" in again and "old" not in again and "My findings." in again


def test_missing_demo_models_say_run_make_demo(tmp_path, capsys):
    assert study.main(["--demo-dir", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `make demo` first" in err and "moons-diffusion.gencc" in err
    assert not (tmp_path / "QUALITY.md").exists()


def test_tiny_end_to_end(tmp_path, tiny_moons_diffusion, tiny_digits_diffusion, tiny_digits_gan):
    specs = (study.DatasetSpec("moons", tiny_moons_diffusion, 100, "sliced_wasserstein", pictures=(("em", 5),)),
             study.DatasetSpec("digits", tiny_digits_diffusion, 32, "frechet_distance", gan=tiny_digits_gan,
                               pictures=(("dpm2m", 5), ("gan", 1))))
    cfg = study.StudyConfig(specs, nfes=(3, 5), samplers=("em", "pc", "dpm2m"), command="test")
    report = study.write_report(study.run_study(cfg, log=lambda s: None), tmp_path)
    results = json.loads((tmp_path / "quality" / "results.json").read_text())
    digits = results["datasets"]["digits"]
    assert [(c["sampler"], c["nfe"]) for c in digits["cells"]] == [
        ("em", 3), ("em", 5), ("pc", 3), ("pc", 5), ("dpm2m", 3), ("dpm2m", 5), ("gan", 1)]
    assert digits["backend"] == "torch" and all(c["seconds_per_sample"] > 0 for c in digits["cells"])
    for name in ("moons.png", "digits.png", "moons-em-nfe5.png", "digits-dpm2m-nfe5.png", "digits-gan-nfe1.png"):
        assert (tmp_path / "quality" / name).stat().st_size > 0, name
    text = report.read_text()
    assert "### moons" in text and "### digits" in text and "(c) digits GAN coverage entropy" in text
    assert "(quality/digits-dpm2m-nfe5.png)" in text
    assert study.main(["--render-only", "--out", str(tmp_path)]) == 0
    assert report.read_text() == text
