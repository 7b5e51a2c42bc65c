"""Score generated samples against reference data, each metric beside its floor: the score that real
training data of the same size gets against the same reference, i.e. what a perfect generator would get.

Every data set gets the sliced Wasserstein-1 distance and the RBF MMD^2 (flattened, for images); 8x8
single-channel images also get the Fréchet distance in the shipped digits classifier's feature space and
that classifier's class coverage (see gencc.models.metrics and gencc.models.digits_classifier); `shapes`
images get the shapes classifier's (gencc.models.shapes_classifier): the share of samples that hold a valid
shape, the coverage of the three shape types and the Fréchet distance in its features.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gencc.runtime.errors import GenccError
from gencc.runtime.jsonfile import one_line

from .data import BUILTIN_2D, load_dataset, load_digits_split, validate_array
from .metrics import class_coverage, frechet_distance, median_distance, mmd_rbf, sliced_wasserstein

SW_PROJECTIONS = 256
DIGITS_SHAPE = (1, 8, 8)


@dataclass(frozen=True, eq=False)
class References:
    held_out: np.ndarray   # what samples are scored against
    train: np.ndarray      # real data scored against held_out for the floor; len = len(samples) when it can
    notes: list[str]


def evaluate(samples: np.ndarray, data: str, n_ref: int | None = None, seed: int = 0) -> dict:
    """Score samples against `data` (a built-in name or a .npy/.npz file or image folder).

    n_ref: reference points (default: as many as samples for built-in 2-D sets; all of a fixed set).
    seed:  draws the built-in 2-D sets, the user-file split and the metrics' projections and subsamples.
    Returns {"data", "n_samples", "n_reference", "metrics": {name: {"value", "floor", "better"}},
    "notes": [...]}, plus "label_histogram" for digits; every value is a plain float, int or str.
    """
    samples = validate_array(samples, "samples")
    refs = reference_sets(data, len(samples), n_ref, seed)
    if samples.shape[1:] != refs.held_out.shape[1:]:
        raise GenccError(f"samples have shape {samples.shape} but data {data!r} has shape "
                         f"{refs.held_out.shape}; expected the same shape after the first axis")
    result = {"data": data, "n_samples": len(samples), "n_reference": len(refs.held_out),
              "metrics": distribution_metrics(samples, refs, seed), "notes": list(refs.notes)}
    if samples.shape[1:] == DIGITS_SHAPE:
        result["metrics"].update(classifier_metrics(samples, refs, result))
    elif data == "shapes":
        result["metrics"].update(shapes_metrics(samples, refs, result))
    elif samples.ndim == 4:
        result["notes"].append(f"images of shape {samples.shape[1:]} get only sliced Wasserstein and MMD on "
                               "flattened pixels; the Fréchet distance and class coverage need (1, 8, 8) digits")
    return result


def load_samples(path: str | Path) -> np.ndarray:
    """The samples `gencc sample` wrote: a .npy, or a .npz's 'samples' array; never unpickling anything."""
    path = Path(path)
    if not path.is_file():
        raise GenccError(f"samples file {str(path)!r} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):   # a .npy is the array itself
            return loaded
        with loaded as npz:
            if "samples" not in npz.files:
                raise GenccError(f"{str(path)!r} holds arrays {list(npz.files)}; expected a 'samples' array "
                                 "(as written by gencc sample)")
            return npz["samples"]
    except GenccError:
        raise
    # A .npy, a damaged zip or a pickled array each fail differently; all mean the same to the user.
    except Exception as e:
        raise GenccError(f"cannot read samples from {str(path)!r}: expected a .npy, or a .npz with a 'samples' array "
                         f"({type(e).__name__}: {one_line(e)})") from None


def format_table(result: dict) -> str:
    """A plain-text table of metric, value, floor and value/floor, then the histogram and the notes."""
    lines = [f"{result['n_samples']} samples vs {result['n_reference']} reference examples of {result['data']!r}",
             f"{'metric':<20} {'value':>11} {'floor':>11} {'value/floor':>11}  better"]
    notes = list(result["notes"])
    for name, m in result["metrics"].items():
        value, floor = m["value"], m["floor"]
        if name.startswith("mmd") and min(value, floor) <= 0:
            notes.append(_noise_note(name, value, floor))
            value, floor = max(value, 0.0), max(floor, 0.0)
        ratio = f"{value / floor:.3g}" if floor > 0 else "n/a"
        lines.append(f"{name:<20} {value:>11.4g} {floor:>11.4g} {ratio:>11}  {m['better']}")
    for who, counts in result.get("label_histogram", {}).items():
        lines.append(f"labels ({who}): {counts}")
    return "\n".join(lines + [f"note: {n}" for n in notes])


def _noise_note(name: str, value: float, floor: float) -> str:
    """The unbiased MMD^2 estimate is negative when two sets differ by less than its sampling noise."""
    which = " and ".join(w for w, v in (("value", value), ("floor", floor)) if v <= 0)
    return (f"{name}: the unbiased estimate of the {which} is {min(value, floor):.3g}, below sampling noise (the "
            "sets differ by less than the estimate's own noise); shown as 0, and the JSON keeps the estimate")


def reference_sets(data: str, n: int, n_ref: int | None, seed: int) -> References:
    """The held-out reference and the floor's real training data, with a note saying where each is from."""
    if data in BUILTIN_2D:
        m = n_ref if n_ref is not None else n
        notes = [f"reference: {m} held-out points of {data!r} (test split, seed {seed}); floor: {n} "
                 "training-split points against the same reference"]
        return References(load_dataset(data, split="test", n=m, seed=seed).data,
                          load_dataset(data, split="train", n=n, seed=seed).data, notes)
    if data == "digits":
        held_out = load_dataset("digits", split="test", n=n_ref).data
        train = load_digits_split("train").data
        notes = [f"reference: {len(held_out)} digits test-split images; floor: {min(n, len(train))} "
                 "train-split images against the same reference"]
        return References(held_out, train[:n], notes + _short_floor_note(n, len(train)))
    if data == "shapes":
        held_out = load_dataset("shapes", split="test", n=n_ref, seed=seed).data
        train = load_dataset("shapes", split="train", n=max(n, 1), seed=seed).data
        notes = [f"reference: {len(held_out)} shapes test-split images (seed {seed}); floor: {n} "
                 "train-split images against the same reference"]
        return References(held_out, train, notes)
    return _split_user_data(data, n, n_ref, seed)


def _split_user_data(data: str, n: int, n_ref: int | None, seed: int) -> References:
    """A user's file is one set: a seeded half of it is the reference, the other half gives the floor."""
    x = load_dataset(data).data
    if len(x) < 4:
        raise GenccError(f"data {data!r} holds {len(x)} examples; evaluation needs at least 4 to split in two")
    order = np.random.default_rng(seed).permutation(len(x))
    half = len(x) // 2
    m = half if n_ref is None else n_ref
    if not 0 < m <= half:
        raise GenccError(f"n_ref={n_ref} but half of {data!r} is {half} examples; expected 1 to {half}")
    held_out, train = x[order[:m]], x[order[half:]]
    notes = [f"reference: {m} examples of the file {data!r} itself (a random half, seed {seed}), so it is "
             f"held out only if the file was kept out of training; floor: {min(n, len(train))} examples "
             "from the file's other half against the same reference"]
    return References(held_out, train[:n], notes + _short_floor_note(n, len(train)))


def _short_floor_note(n: int, available: int) -> list[str]:
    if n <= available:
        return []
    return [f"only {available} real examples exist for the floor but there are {n} samples; the floor "
            "is slightly optimistic for sample-size-sensitive metrics"]


def distribution_metrics(samples: np.ndarray, refs: References, seed: int) -> dict:
    """Sliced Wasserstein and MMD^2, both lower-is-better, with the MMD bandwidth fixed by the reference.

    One bandwidth (the median heuristic on the reference) serves value and floor so the two compare.
    """
    h = median_distance(refs.held_out.reshape(len(refs.held_out), -1).astype(np.float64),
                        np.random.default_rng(seed))

    def sw(x: np.ndarray) -> float:
        return sliced_wasserstein(x, refs.held_out, projections=SW_PROJECTIONS, seed=seed)

    def mmd(x: np.ndarray) -> float:
        return mmd_rbf(x, refs.held_out, bandwidth=h, seed=seed)

    return {"sliced_wasserstein": _entry(sw(samples), sw(refs.train), "lower"),
            "mmd_rbf": _entry(mmd(samples), mmd(refs.train), "lower")}


def classifier_metrics(samples: np.ndarray, refs: References, result: dict) -> dict:
    """Fréchet distance in classifier features and class coverage; adds the label histogram and a note."""
    from .digits_classifier import SCORER

    model = SCORER.load()
    p_samples, p_ref = SCORER.probs(samples, model), SCORER.probs(refs.held_out, model)
    cov_samples, cov_ref = class_coverage(p_samples), class_coverage(p_ref)
    k = p_samples.shape[1]
    result["label_histogram"] = {"samples": np.bincount(p_samples.argmax(1), minlength=k).tolist(),
                                 "reference": np.bincount(p_ref.argmax(1), minlength=k).tolist()}
    result["notes"].append(
        f"frechet_distance and coverage use the shipped digits classifier (test accuracy "
        f"{SCORER.read_meta()['test_accuracy']:.3f}); the coverage floor is the reference images' own coverage, "
        "so values near it are good; both are meaningful only for digit-like images")
    return {"frechet_distance": _frechet_entry(SCORER, model, samples, refs),
            "coverage_entropy": _entry(cov_samples["entropy"], cov_ref["entropy"], "higher"),
            "confident_fraction": _entry(cov_samples["confident"], cov_ref["confident"], "higher")}


def shapes_metrics(samples: np.ndarray, refs: References, result: dict) -> dict:
    """Valid-shape share, shape coverage and Fréchet distance; adds a label histogram and a note."""
    from .shapes_classifier import CLASS_NAMES, SCORER, shape_coverage, valid_shapes

    model = SCORER.load()
    p_samples, p_train = SCORER.probs(samples, model), SCORER.probs(refs.train, model)
    result["label_histogram"] = {
        who: dict(zip(CLASS_NAMES, np.bincount(p.argmax(1), minlength=len(CLASS_NAMES)).tolist(), strict=False))
        for who, p in (("samples", p_samples), ("reference", SCORER.probs(refs.held_out, model)))}
    acc = SCORER.read_meta()["test_accuracy"]
    result["notes"].append(
        f"valid_shape_fraction, shape_coverage and frechet_distance use the shipped shapes classifier "
        f"({acc['shapes_test']:.3f} test accuracy on shapes, {acc['negatives_test']:.3f} on invalid images); "
        "a valid shape is a shape class on top at probability >= 0.5")
    return {"frechet_distance": _frechet_entry(SCORER, model, samples, refs),
            "valid_shape_fraction": _entry(valid_shapes(p_samples).mean(), valid_shapes(p_train).mean(), "higher"),
            "shape_coverage": _entry(shape_coverage(p_samples), shape_coverage(p_train), "higher")}


def _frechet_entry(scorer, model, samples: np.ndarray, refs: References) -> dict:
    """The Fréchet distance in `scorer`'s features to the reference; floor: the real training data's."""
    ref_features = scorer.features(refs.held_out, model)
    return _entry(frechet_distance(scorer.features(samples, model), ref_features),
                  frechet_distance(scorer.features(refs.train, model), ref_features), "lower")


def _entry(value: float, floor: float, better: str) -> dict:
    return {"value": float(value), "floor": float(floor), "better": better}
