"""The demo's parts on tiny fixtures (the whole demo is test_cli's slow --quick run): training under the
progress bar, the NFE of each picture's title, and summary.md."""
from pathlib import Path

import numpy as np
from PIL import Image

from gencc.cli import demo
from gencc.cli.commands import write_png
from gencc.models.data import load_dataset

SUMMARY = {
    "moons-diffusion": {"model": "diffusion", "data": "moons", "steps": 30, "losses": {"loss": 0.51234},
                        "train_s": 1.2, "sample_s": 0.4, "n": 2000, "sampler": "em", "nfe": 31,
                        "sw": 0.0421, "sw_floor": 0.0102},
    "digits-gan": {"model": "gan", "data": "digits", "steps": 30, "losses": {"d": 1.1, "g": 0.7},
                   "train_s": 2.0, "sample_s": 0.1, "n": 100, "sampler": "generator", "nfe": 1},
}


def test_training_shows_the_progress_bar(tmp_path, capsys):
    result = demo._train_job("moons-diffusion", "diffusion", load_dataset("moons", n=256), tmp_path / "m.ckpt",
                             quick=True)
    out = capsys.readouterr().out
    assert result.steps == demo.QUICK_STEPS
    assert "train moons-diffusion" in out and f"{demo.QUICK_STEPS}/{demo.QUICK_STEPS}" in out, out
    assert "loss=" in out


def test_pictures_are_titled_with_model_sampler_and_nfe():
    assert demo.sampling_of("diffusion", 200) == ("em", 201)   # 200 steps and the final denoising
    assert demo.sampling_of("gan", 200) == ("generator", 1)


def test_titled_png_is_taller_than_the_plain_one(tmp_path):
    pts = load_dataset("moons", n=100).data
    write_png(tmp_path / "plain.png", pts, "moons")
    write_png(tmp_path / "titled.png", pts, "moons", title="moons-diffusion: diffusion, em, NFE 201")
    plain, titled = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("plain", "titled"))
    assert titled.shape[0] > plain.shape[0] and np.array_equal(titled[-plain.shape[0]:], plain)


def test_summary_is_written_atomically_as_markdown(tmp_path, capsys):
    demo._report(tmp_path, SUMMARY, None, 12.3)
    text = (tmp_path / "summary.md").read_text()
    assert "in 12 s" in text and "summary.md" in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith(("| moons", "| digits"))]
    assert len(rows) == 2 and all(r.count("|") == 11 for r in rows), rows
    assert "| em | 31 |" in rows[0] and "sliced W 0.0421 (floor 0.0102)" in rows[0]
    assert "| generator | 1 |" in rows[1] and "d 1.1000, g 0.7000" in rows[1]
    assert "![digits-gan](digits-gan.png)" in text and "CUDA" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]   # no temporary file left behind
    demo._report(tmp_path, SUMMARY, Path("out/demo/digits-diffusion-cuda.gencc"), 1.0)
    assert "`digits-diffusion-cuda.gencc`" in (tmp_path / "summary.md").read_text()
