"""Tests for gencc.models.data: builtin recipes, digits split, user files and every bad-input error."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gencc.models.data import BUILTIN_2D, Dataset, load_dataset, load_digits_split, make_2d, validate_array
from gencc.runtime.errors import GenccError

# --- builtin 2-D distributions ----------------------------------------------------------------

@pytest.mark.parametrize("name", BUILTIN_2D)
def test_builtin_2d_shape_and_determinism(name: str) -> None:
    x = make_2d(name, 1001, seed=3)
    assert x.shape == (1001, 2) and x.dtype == np.float32
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(x, make_2d(name, 1001, seed=3))
    assert not np.allclose(x, make_2d(name, 1001, seed=4))


@pytest.mark.parametrize("name", BUILTIN_2D)
def test_builtin_2d_test_split_is_independent(name: str) -> None:
    train = load_dataset(name, n=500, split="train")
    test = load_dataset(name, n=500, split="test")
    assert train.kind == "vector" and train.labels is None and train.name == name
    assert not np.allclose(train.data, test.data)
    assert len(load_dataset(name).data) == 20_000
    assert len(load_dataset(name, split="test").data) == 5_000


def test_builtin_2d_supports() -> None:
    # Each recipe puts its mass where its docstring says.
    board = make_2d("checkerboard", 4000)
    assert np.all(np.abs(board) <= 2)
    cells = np.floor(board + 2).astype(int)
    assert np.all((cells[:, 0] + cells[:, 1]) % 2 == 0)
    radius = np.linalg.norm(make_2d("gaussians8", 4000), axis=1)
    assert abs(radius.mean() - 2.0) < 0.05
    moons = make_2d("moons", 4000)
    assert moons[:, 0].min() > -1.6 and moons[:, 0].max() < 2.6


# --- digits -------------------------------------------------------------------------------------

def test_digits_split() -> None:
    train, test, full = (load_digits_split(s) for s in ("train", "test", "all"))
    assert train.data.shape == (1500, 1, 8, 8) and test.data.shape == (297, 1, 8, 8)
    assert full.data.shape == (1797, 1, 8, 8)
    for ds in (train, test):
        assert ds.data.dtype == np.float32 and ds.labels.dtype == np.int64 and ds.kind == "image"
        assert ds.data.min() >= 0.0 and ds.data.max() <= 1.0
        assert set(np.unique(ds.labels)) <= set(range(10))
    # No image of the test split appears in training (digits has a few exact duplicates, so compare
    # by position in the full ordering rather than by pixels).
    np.testing.assert_array_equal(full.data[:1500], train.data)
    np.testing.assert_array_equal(full.data[1500:], test.data)
    np.testing.assert_array_equal(load_dataset("digits", split="test").labels, test.labels)


def test_digits_split_is_fixed() -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    order = np.random.default_rng(0).permutation(1797)
    test = load_digits_split("test")
    np.testing.assert_array_equal(test.labels, raw.target[order[1500:]])
    np.testing.assert_allclose(test.data[:, 0], raw.images[order[1500:]] / 16.0, rtol=1e-6)
    assert len(set(order[:1500]) & set(order[1500:])) == 0


# --- user files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,kind", [((10, 3), "vector"), ((6, 2, 4, 4), "image")])
def test_npy_round_trip(tmp_path: Path, shape: tuple, kind: str) -> None:
    x = np.random.default_rng(0).normal(size=shape)
    p = tmp_path / "x.npy"
    np.save(p, x)
    ds = load_dataset(str(p))
    assert ds.kind == kind and ds.labels is None and ds.name == str(p)
    assert ds.data.dtype == np.float32
    np.testing.assert_allclose(ds.data, x.astype(np.float32))
    assert len(load_dataset(str(p), n=4).data) == 4


def test_npz_with_labels(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, data=np.arange(12, dtype=np.int32).reshape(6, 2), labels=np.arange(6, dtype=np.int32))
    ds = load_dataset(str(p), n=5)
    assert ds.data.shape == (5, 2) and ds.data.dtype == np.float32
    np.testing.assert_array_equal(ds.labels, np.arange(5))
    assert ds.labels.dtype == np.int64


def test_npz_single_unnamed_array(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez_compressed(p, np.ones((3, 2)))
    assert load_dataset(str(p)).data.shape == (3, 2)


def _write_images(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB").save(folder / "b.PNG")
    Image.fromarray(rng.integers(0, 256, (16, 12, 3), dtype=np.uint8), "RGB").save(folder / "c.jpg")
    (folder / "notes.txt").write_text("ignored")


def test_image_folder(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    _write_images(folder)
    ds = load_dataset(str(folder))
    assert ds.data.shape == (3, 3, 8, 8) and ds.data.dtype == np.float32 and ds.kind == "image"
    assert ds.data.min() >= 0.0 and ds.data.max() <= 1.0
    # A grayscale image decoded as RGB has three equal channels.
    np.testing.assert_array_equal(ds.data[0, 0], ds.data[0, 2])
    gray = load_dataset(str(folder), channels=1, image_size=4)
    assert gray.data.shape == (3, 1, 4, 4)
    first = np.asarray(Image.open(folder / "a.png"), dtype=np.float32) / 255.0
    np.testing.assert_allclose(load_dataset(str(folder), channels=1).data[0, 0], first)


def test_grayscale_folder_defaults_to_one_channel(tmp_path: Path) -> None:
    tmp_path.joinpath("g").mkdir()
    for i in range(2):
        Image.new("L", (5, 5), color=40 * i).save(tmp_path / "g" / f"{i}.png")
    assert load_dataset(str(tmp_path / "g")).data.shape == (2, 1, 5, 5)


def test_validate_array_casts() -> None:
    out = validate_array(np.ones((2, 3), dtype=np.int8), "x")
    assert out.dtype == np.float32
    assert isinstance(load_dataset("moons", n=3), Dataset)


# --- bad inputs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("x,match", [
    (np.ones(5), r"shape \(5,\).*expected 2 dims"),
    (np.ones((2, 3, 4)), r"shape \(2, 3, 4\)"),
    (np.ones((0, 3)), "empty"),
    (np.ones((2, 0, 4, 4)), "empty"),
    (np.array([[np.nan, 1.0], [np.inf, -np.inf]]), "1 NaN and 2 inf"),
    (np.array([[1e300]]), "0 NaN and 1 inf"),
    (np.array([["a", "b"]]), "dtype <U1"),
    (np.ones((2, 2), dtype=complex), "dtype complex128"),
])
def test_validate_array_rejects(x: np.ndarray, match: str) -> None:
    with pytest.raises(GenccError, match=match):
        validate_array(x, "src")


def test_bad_names_and_paths(tmp_path: Path) -> None:
    with pytest.raises(GenccError, match="unknown 2-D dataset 'moon'.*moons, swissroll"):
        make_2d("moon", 10)
    with pytest.raises(GenccError, match="'moon' is neither a builtin.*checkerboard, digits"):
        load_dataset("moon")
    with pytest.raises(GenccError, match="neither a builtin"):
        load_dataset(str(tmp_path / "missing.npy"))
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(GenccError, match=r"unsupported file extension '\.csv'.*x\.csv"):
        load_dataset(str(tmp_path / "x.csv"))
    with pytest.raises(GenccError, match="unknown split 'all'"):
        load_dataset("moons", split="all")
    with pytest.raises(GenccError, match="unknown split 'val'"):
        load_digits_split("val")


@pytest.mark.parametrize("n", [0, -3])
def test_nonpositive_n(n: int) -> None:
    with pytest.raises(GenccError, match=f"n must be a positive.*got {n}"):
        make_2d("moons", n)
    with pytest.raises(GenccError, match="n must be a positive"):
        load_dataset("digits", n=n)


def test_too_many_and_mismatched_options(tmp_path: Path) -> None:
    with pytest.raises(GenccError, match="n=2000.*holds only 1797"):
        load_dataset("digits", split="all", n=2000)
    with pytest.raises(GenccError, match="only apply to images"):
        load_dataset("moons", n=5, image_size=8)
    with pytest.raises(GenccError, match="channels=3 but 'digits' has 1"):
        load_dataset("digits", channels=3)
    with pytest.raises(GenccError, match="image_size=16 but 'digits' has 8x8"):
        load_dataset("digits", image_size=16)


def test_bad_npz_and_npy(tmp_path: Path) -> None:
    several = tmp_path / "several.npz"
    np.savez(several, a=np.ones((2, 2)), b=np.ones((2, 2)))
    with pytest.raises(GenccError, match=r"holds arrays \['a', 'b'\].*'data'"):
        load_dataset(str(several))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, data=np.array([{"a": 1}], dtype=object))
    with pytest.raises(GenccError, match="pickled.npz.*pickled or object-array"):
        load_dataset(str(pickled))
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(GenccError, match="obj.npy.*pickled or object-array"):
        load_dataset(str(obj))
    bad_labels = tmp_path / "labels.npz"
    np.savez(bad_labels, data=np.ones((3, 2)), labels=np.ones(4, dtype=np.int64))
    with pytest.raises(GenccError, match=r"labels.*shape \(4,\).*expected integers of shape \(3,\)"):
        load_dataset(str(bad_labels))
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((2, 2), np.nan))
    with pytest.raises(GenccError, match="nan.npy.*4 NaN"):
        load_dataset(str(nan))


def _corrupt_files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    good_npy, good_npz = tmp_path / "good.npy", tmp_path / "good.npz"
    np.save(good_npy, np.ones((50, 4)))
    np.savez_compressed(good_npz, data=rng.normal(size=(50, 4)))
    mangled = bytearray(good_npz.read_bytes())
    mangled[60:90] = bytes(30)  # clobber compressed payload, keep the zip directory
    files = {
        "random.npy": rng.bytes(300), "random.npz": rng.bytes(300), "empty.npy": b"",
        "short.npy": good_npy.read_bytes()[:140], "header.npy": good_npy.read_bytes()[:60],
        "short.npz": good_npz.read_bytes()[:200], "mangled.npz": bytes(mangled),
    }
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
    return [tmp_path / name for name in files]


def test_corrupt_numpy_files(tmp_path: Path) -> None:
    for path in _corrupt_files(tmp_path):
        with pytest.raises(GenccError, match=f"'{path}'"):
            load_dataset(str(path))


def test_bad_image_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images")
    with pytest.raises(GenccError, match="'.*empty' has no images.*png"):
        load_dataset(str(empty))
    broken = tmp_path / "broken"
    _write_images(broken)
    (broken / "d.jpeg").write_bytes(b"not a jpeg")
    with pytest.raises(GenccError, match=r"cannot read image '.*d\.jpeg'"):
        load_dataset(str(broken))
    truncated = tmp_path / "truncated"
    _write_images(truncated)
    png = (truncated / "a.png").read_bytes()
    (truncated / "a.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(GenccError, match=r"cannot read image '.*a\.png'"):
        load_dataset(str(truncated))
    wide = tmp_path / "wide"
    wide.mkdir()
    Image.new("RGB", (6, 4)).save(wide / "w.png")
    with pytest.raises(GenccError, match=r"w\.png' is 6x4, not square"):
        load_dataset(str(wide))
    assert load_dataset(str(wide), image_size=4).data.shape == (1, 3, 4, 4)
    with pytest.raises(GenccError, match="channels must be 1.*got 4"):
        load_dataset(str(wide), channels=4)
