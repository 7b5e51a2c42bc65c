"""An image folder whose images differ (sizes, alpha, grayscale among colour) loads with one notice naming
what was changed and how often; a uniform folder loads silently."""
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from cli_helpers import gencc
from gencc.models.data import load_dataset
from gencc.runtime.notices import GenccNotice


def mixed_folder(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB").save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), "L").save(folder / "b.png")    # bigger, grey
    Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA").save(folder / "c.png")  # alpha
    Image.fromarray(rng.integers(0, 256, (6, 6, 4), dtype=np.uint8), "RGBA").save(folder / "d.png")  # both
    return folder


def notices(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, GenccNotice)]


def test_mixed_folder_gives_one_notice_with_counts(tmp_path):
    folder = mixed_folder(tmp_path / "imgs")
    ds, said = notices(lambda: load_dataset(str(folder)))
    assert ds.data.shape == (4, 3, 8, 8)
    assert len(said) == 1, said
    assert str(folder) in said[0] and "(4 images)" in said[0]
    for phrase in ("2 resized to 8x8", "2 had an alpha channel, dropped", "1 grayscale converted to RGB"):
        assert phrase in said[0], said[0]
    _, said = notices(lambda: load_dataset(str(folder), channels=1))
    assert len(said) == 1 and "3 colour converted to grayscale" in said[0], said


def test_uniform_folder_loads_silently(tmp_path):
    (tmp_path / "g").mkdir()
    for i in range(3):
        Image.new("L", (5, 5), color=40 * i).save(tmp_path / "g" / f"{i}.png")
    _, said = notices(lambda: load_dataset(str(tmp_path / "g")))
    assert said == []


def test_cli_prints_the_notice_once_as_one_line(tmp_path):
    folder = mixed_folder(tmp_path / "imgs")
    np.savez(tmp_path / "s.npz", samples=np.random.default_rng(1).random((4, 3, 8, 8), np.float32))
    r = gencc("eval", tmp_path / "s.npz", "--data", folder)
    assert r.exit_code == 0, r.output
    notes = [line for line in r.stderr.splitlines() if "image folder" in line]
    assert len(notes) == 1 and notes[0].startswith("gencc: note: image folder "), r.stderr
    assert "Warning" not in r.stderr and "warnings.warn" not in r.stderr
