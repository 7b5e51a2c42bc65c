"""scripts/latent_study.py's score and ae-floor modes (the issue-17 tables in docs/QUALITY.md): that they run
on tiny models and write the rows the docs quote. Never quality numbers: tiny models score badly."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gencc.runtime.samplers import nfe

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "latent_study.py"
_spec = importlib.util.spec_from_file_location("latent_study", SCRIPT)
study = importlib.util.module_from_spec(_spec)
sys.modules["latent_study"] = study
_spec.loader.exec_module(study)


def test_ae_floor_rows(tiny_shapes_latent, tmp_path):
    out = tmp_path / "ae.json"
    study.ae_floor_main(["--n", "8", "--out", str(out), f"tiny={tiny_shapes_latent}"])
    row = json.loads(out.read_text())["tiny"]
    assert row["ae_steps"] == 3 and len(row["scaled_latent_std_per_channel"]) == 4
    assert {"frechet_distance", "valid_shape_fraction"} <= row["metrics"].keys()
    assert (tmp_path / "ae-tiny.png").is_file()


@pytest.mark.slow   # compiles the session's tiny moons artifact
def test_score_rows_per_seed(tiny_moons_artifact, tmp_path):
    out = tmp_path / "s.json"
    study.score_main(["--data", "moons", "--seeds", "0,1", "--n", "16", "--steps", "3", "--out", str(out),
                      f"m={tiny_moons_artifact}"])
    rows = json.loads(out.read_text())
    assert set(rows) == {"m/seed0", "m/seed1"}
    assert rows["m/seed1"]["nfe"] == nfe("em", 3) and rows["m/seed1"]["sampler"] == "em"
    assert rows["m/seed0"]["ms_per_image"] > 0
    assert "sliced_wasserstein" in rows["m/seed0"]["metrics"]
