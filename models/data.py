"""Training data: seeded 2-D toy distributions, sklearn's 8x8 digits, and user .npy/.npz/image folders."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gencc.runtime.errors import GenccError
from gencc.runtime.jsonfile import one_line
from gencc.runtime.notices import notice

BUILTIN_2D = ("moons", "swissroll", "gaussians8", "checkerboard")
BUILTIN_IMAGES = ("digits", "shapes")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

TEST_SEED_OFFSET = 1_000_003  # a large prime, so test seeds never collide with nearby train seeds
DEFAULT_N = {"train": 20_000, "test": 5_000}
SHAPES_DEFAULT_N = {"train": 6_000, "test": 1_000}   # 6000 x 12 KiB: 74 MB in memory, 1 s to draw
DIGITS_TEST_SIZE = 297  # 1797 - 297 = 1500 training images

_GRAYSCALE_MODES = ("1", "L", "LA")


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is ambiguous; compare fields
class Dataset:
    data: np.ndarray  # float32, (N, D) or (N, C, H, W), in the data's own units
    labels: np.ndarray | None  # int64 (N,), or None when the source has no labels
    name: str  # builtin name or the user's path
    kind: str  # "vector" or "image"
    digest: str | None = None  # data_digest of the data this was derived from (latents: of the images)


def make_2d(name: str, n: int, seed: int = 0) -> np.ndarray:
    """Draw n points (float32, (n, 2)) from a builtin 2-D distribution; deterministic in (name, n, seed).

    moons:        two interleaving half circles as in sklearn's make_moons (outer: (cos a, sin a);
                  inner: (1 - cos a, 0.5 - sin a), a ~ U(0, pi)), n split evenly, noise N(0, 0.1^2),
                  then shuffled so any prefix holds both moons.
    swissroll:    t = 1.5 pi (1 + 2u), u ~ U(0, 1); (t cos t, t sin t) / 5 + N(0, 0.1^2) noise.
    gaussians8:   equal mixture of 8 gaussians, std 0.1, centred at 2 (cos k pi/4, sin k pi/4).
    checkerboard: uniform on the 8 black unit squares of a 4x4 board on [-2, 2]^2, where the square
                  with lower-left corner (-2 + i, -2 + j) is black when i + j is even.
    """
    if name not in BUILTIN_2D:
        raise GenccError(f"unknown 2-D dataset {name!r}; expected one of {', '.join(BUILTIN_2D)}")
    _check_n(n)
    rng = np.random.default_rng(seed)
    return _RECIPES[name](rng, n).astype(np.float32)


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    n_outer = n // 2
    a = rng.uniform(0.0, np.pi, size=n)
    outer = np.stack([np.cos(a[:n_outer]), np.sin(a[:n_outer])], axis=1)
    inner = np.stack([1.0 - np.cos(a[n_outer:]), 0.5 - np.sin(a[n_outer:])], axis=1)
    x = np.concatenate([outer, inner]) + rng.normal(0.0, 0.1, size=(n, 2))
    return x[rng.permutation(n)]


def _swissroll(rng: np.random.Generator, n: int) -> np.ndarray:
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.uniform(size=n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5.0
    return x + rng.normal(0.0, 0.1, size=(n, 2))


def _gaussians8(rng: np.random.Generator, n: int) -> np.ndarray:
    angle = rng.integers(0, 8, size=n) * (np.pi / 4)
    centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + rng.normal(0.0, 0.1, size=(n, 2))


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    col = rng.integers(0, 4, size=n)
    row = 2 * rng.integers(0, 2, size=n) + col % 2  # same parity as col, so col + row is even
    corner = np.stack([col, row], axis=1) - 2.0
    return corner + rng.uniform(size=(n, 2))


_RECIPES = {"moons": _moons, "swissroll": _swissroll, "gaussians8": _gaussians8,
            "checkerboard": _checkerboard}


def load_digits_split(split: str) -> Dataset:
    """sklearn's bundled 8x8 digits as (N, 1, 8, 8) float32 pixel / 16 in [0, 1], int64 labels.

    The split is fixed: np.random.default_rng(0).permutation(1797) orders the images; the first 1500
    are "train", the last 297 are "test", and "all" is all 1797 in that same order (train, then test).
    """
    from sklearn.datasets import load_digits  # lazy: only digits users pay for importing sklearn

    if split not in ("train", "test", "all"):
        raise GenccError(f"unknown split {split!r} for 'digits'; expected 'train', 'test' or 'all'")
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    n_train = len(order) - DIGITS_TEST_SIZE
    order = {"train": order[:n_train], "test": order[n_train:], "all": order}[split]
    images = (digits.images[order] / 16.0).astype(np.float32)[:, None]
    return Dataset(images, digits.target[order].astype(np.int64), "digits", "image")


def load_shapes_split(split: str, n: int | None = None, seed: int = 0) -> Dataset:
    """The procedural `shapes` images (recipe in models/shapes.py) with their shape labels.

    n defaults to 6000 for "train" and 1000 for "test"; the test split uses seed + 1_000_003.
    """
    from .shapes import make_shapes

    if split not in SHAPES_DEFAULT_N:
        raise GenccError(f"unknown split {split!r} for 'shapes'; expected 'train' or 'test'")
    n = n if n is not None else SHAPES_DEFAULT_N[split]
    _check_n(n)
    images, labels = make_shapes(n, seed if split == "train" else seed + TEST_SEED_OFFSET)
    return Dataset(images, labels, "shapes", "image")


def load_dataset(spec: str, *, n: int | None = None, seed: int = 0, split: str = "train",
                 image_size: int | None = None, channels: int | None = None) -> Dataset:
    """Load a builtin by name, or a .npy / .npz file, or a folder of PNG/JPEG images.

    Builtin 2-D data is sampled fresh: n defaults to 20000 for "train" and 5000 for "test", and the
    test split uses seed + 1_000_003 so it is independent of the training draw; `shapes` is drawn the
    same way (6000 and 1000 images by default). Every other source is
    fixed data: `seed` is ignored, `split` only selects within digits (a user file is one split; pass
    the held-out file separately), and n, when given, keeps the first n examples. `image_size` and
    `channels` choose how an image folder is decoded; for array sources they must match the shape.
    Builtin names win over a local path of the same name.
    """
    if n is not None:
        _check_n(n)
    if spec in BUILTIN_2D:
        if split not in DEFAULT_N:
            raise GenccError(f"unknown split {split!r} for {spec!r}; expected 'train' or 'test'")
        data_seed = seed if split == "train" else seed + TEST_SEED_OFFSET
        data = make_2d(spec, n if n is not None else DEFAULT_N[split], data_seed)
        return _check_image_options(Dataset(data, None, spec, "vector"), image_size, channels)
    if spec == "shapes":
        return _check_image_options(load_shapes_split(split, n, seed), image_size, channels)
    if spec in BUILTIN_IMAGES:
        dataset = load_digits_split(split)
    else:
        path = Path(spec)
        if path.is_dir():
            return _take_first(_load_image_folder(path, image_size, channels), n)
        dataset = _load_array_file(path)
    return _take_first(_check_image_options(dataset, image_size, channels), n)


def validate_array(x: np.ndarray, source: str) -> np.ndarray:
    """Check x is non-empty, finite, real numeric, shaped (N, D) or (N, C, H, W); return it as float32."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise GenccError(f"{source}: data has dtype {x.dtype}; expected a real numeric dtype")
    if x.ndim not in (2, 4):
        raise GenccError(f"{source}: data has shape {x.shape} ({x.ndim} dims); "
                         "expected 2 dims (N, D) or 4 dims (N, C, H, W)")
    if 0 in x.shape:
        raise GenccError(f"{source}: data of shape {x.shape} is empty")
    # Check after the cast, so float64 values too large for float32 are caught as inf too.
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    if n_nan or n_inf:
        raise GenccError(f"{source}: data contains {n_nan} NaN and {n_inf} inf values "
                         "(after conversion to float32); expected finite numbers")
    return x


def _check_n(n: int) -> None:
    if n <= 0:
        raise GenccError(f"n must be a positive number of examples, got {n}")


def _take_first(dataset: Dataset, n: int | None) -> Dataset:
    if n is None:
        return dataset
    if n > len(dataset.data):
        raise GenccError(f"asked for n={n} examples but {dataset.name!r} holds only {len(dataset.data)}")
    labels = None if dataset.labels is None else dataset.labels[:n]
    return Dataset(dataset.data[:n], labels, dataset.name, dataset.kind)


def _check_image_options(dataset: Dataset, image_size: int | None, channels: int | None) -> Dataset:
    """Refuse image options that fixed-shape data cannot honour, rather than silently ignore them."""
    if image_size is None and channels is None:
        return dataset
    shape = dataset.data.shape
    if dataset.kind == "vector":
        raise GenccError(f"image_size/channels only apply to images; {dataset.name!r} holds vectors "
                         f"of shape {shape}")
    if channels is not None and channels != shape[1]:
        raise GenccError(f"channels={channels} but {dataset.name!r} has {shape[1]} (shape {shape})")
    if image_size is not None and (image_size, image_size) != shape[2:]:
        raise GenccError(f"image_size={image_size} but {dataset.name!r} has {shape[2]}x{shape[3]} images")
    return dataset


def _load_array_file(path: Path) -> Dataset:
    if not path.exists():
        raise GenccError(f"{str(path)!r} is neither a builtin dataset "
                         f"({', '.join(BUILTIN_2D + BUILTIN_IMAGES)}) nor an existing file or folder")
    if path.suffix.lower() not in (".npy", ".npz"):
        raise GenccError(f"unsupported file extension {path.suffix!r} for '{path}'; "
                         "expected .npy, .npz or a folder of PNG/JPEG images")
    raw, raw_labels = _read_numpy(path)
    data = validate_array(raw, str(path))
    labels = None if raw_labels is None else _validate_labels(raw_labels, len(data), path)
    return Dataset(data, labels, str(path), "vector" if data.ndim == 2 else "image")


def _read_numpy(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (data, labels or None) from a .npy or .npz file, never unpickling anything."""
    try:
        loaded = np.load(path, allow_pickle=False)  # pickles can run arbitrary code
        if isinstance(loaded, np.ndarray):
            return loaded, None
        with loaded:
            return _pick_npz_arrays(loaded, path)
    except GenccError:
        raise
    # Damaged files fail in open-ended ways (BadZipFile, zlib.error, EOFError, tokenize errors from
    # the header parser, NotImplementedError from zipfile), so everything becomes one clear error.
    except Exception as e:
        if "pickle" in str(e):
            raise GenccError(f"'{path}' holds pickled or object-array data (or is not a NumPy file); "
                             "gencc loads only plain numeric arrays") from e
        raise GenccError(f"cannot read '{path}': not a valid .npy/.npz file "
                         f"({type(e).__name__}: {one_line(e)})") from e


def _pick_npz_arrays(npz: np.lib.npyio.NpzFile, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    keys = list(npz.files)
    labels = npz["labels"] if "labels" in keys else None
    if "data" in keys:
        return npz["data"], labels
    others = [k for k in keys if k != "labels"]
    if len(others) != 1:
        raise GenccError(f"'{path}' holds arrays {keys}; expected a 'data' array or exactly one array")
    return npz[others[0]], labels


def _validate_labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise GenccError(f"'{path}': labels have dtype {labels.dtype} and shape {labels.shape}; "
                         f"expected integers of shape ({n},)")
    return labels.astype(np.int64)


def _load_image_folder(folder: Path, image_size: int | None, channels: int | None) -> Dataset:
    """Decode every PNG/JPEG in folder (not recursive, sorted by name) to (N, C, S, S) float32 in [0, 1].

    S defaults to the first image's size (it must be square); others are resized with PIL bilinear.
    C defaults to 1 when every image is grayscale, else 3; alpha channels are dropped. Whatever of this
    happened is told in one notice (runtime/notices.py) naming the counts.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GenccError(f"folder '{folder}' has no images; expected files ending in "
                         f"{', '.join(IMAGE_SUFFIXES)} (any case)")
    images = [_read_image(p) for p in files]
    if channels is None:
        channels = 1 if all(im.mode in _GRAYSCALE_MODES for im in images) else 3
    if channels not in (1, 3):
        raise GenccError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if image_size is None:
        width, height = images[0].size
        if width != height:
            raise GenccError(f"first image '{files[0]}' is {width}x{height}, not square; "
                             "pass image_size to resize every image to a square")
        image_size = width
    if image_size <= 0:
        raise GenccError(f"image_size must be a positive number of pixels, got {image_size}")
    data = np.stack([_to_array(im, channels, image_size) for im in images])
    changes = _folder_changes(images, channels, image_size)
    if changes:
        notice(f"image folder '{folder}' ({len(images)} images): {'; '.join(changes)}")
    return Dataset(validate_array(data, str(folder)), None, str(folder), "image")


def _folder_changes(images: list[Image.Image], channels: int, size: int) -> list[str]:
    """What decoding `images` to `channels` x `size` x `size` changed, as counted phrases; [] if nothing."""
    resized = sum(im.size != (size, size) for im in images)
    alpha = sum(im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info for im in images)
    grey = sum(im.mode in _GRAYSCALE_MODES for im in images)
    changes = [f"{resized} resized to {size}x{size}" if resized else "",
               f"{alpha} had an alpha channel, dropped" if alpha else "",
               f"{grey} grayscale converted to RGB" if channels == 3 and grey else "",
               f"{len(images) - grey} colour converted to grayscale" if channels == 1 and grey < len(images) else ""]
    return [c for c in changes if c]


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()  # a copy stays usable after the file is closed
    # As with np.load, a corrupt file can surface as almost any exception type from a decoder plugin.
    except Exception as e:
        raise GenccError(f"cannot read image '{path}' ({type(e).__name__}: {one_line(e)})") from e


def _to_array(im: Image.Image, channels: int, size: int) -> np.ndarray:
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(im, dtype=np.float32) / 255.0
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def data_digest(dataset: Dataset) -> str:
    """The sha256 of a dataset's arrays (or of the data it was derived from), which identifies a user's
    training data wherever the file lies. A builtin's name and seed identify it as well: its
    floating-point draw may differ by an ulp on another CPU."""
    if dataset.digest is not None:
        return dataset.digest
    h = hashlib.sha256()
    for a in (dataset.data, dataset.labels):
        if a is not None:
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()
