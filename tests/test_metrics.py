"""Sample-quality metrics against closed forms and brute force, the shipped digits classifier against the
real test split, and `gencc eval` end to end."""
import json

import numpy as np
import pytest

from cli_helpers import assert_user_error, gencc
from gencc.models.data import load_dataset, load_digits_split
from gencc.models.digits_classifier import features, held_out_accuracy, load_classifier, probs, read_meta
from gencc.models.evaluate import evaluate
from gencc.models.metrics import class_coverage, frechet_distance, mmd_rbf, sliced_wasserstein
from gencc.runtime.errors import GenccError


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_identical_sets_score_zero():
    x = np.random.default_rng(0).standard_normal((500, 3))
    assert sliced_wasserstein(x, x) == 0.0
    assert abs(mmd_rbf(x, x)) < 5e-3   # unbiased: -2 (1 - mean off-diagonal kernel) / n
    assert frechet_distance(x, x) < 1e-10


def test_frechet_mean_shift_is_squared_distance():
    a = np.random.default_rng(1).standard_normal((1000, 4))
    d = np.array([1.0, -2.0, 0.5, 0.0])
    assert frechet_distance(a, a + d) == pytest.approx(d @ d, rel=1e-9)   # equal sample covariances


def test_frechet_1d_variance_change_is_squared_std_difference():
    z = np.random.default_rng(2).standard_normal(2000)
    z = (z - z.mean()) / z.std(ddof=1)   # sample variance exactly 1, as np.cov measures it
    s1, s2 = 0.5, 2.0
    assert frechet_distance(s1 * z, s2 * z) == pytest.approx((s1 - s2) ** 2, rel=1e-9)


def test_frechet_matches_scipy_sqrtm_on_correlated_gaussians():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(3)
    a = rng.standard_normal((3000, 5)) @ rng.standard_normal((5, 5))
    b = rng.standard_normal((3000, 5)) @ rng.standard_normal((5, 5)) + 0.3
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * np.real(sqrtm(ca @ cb)))
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_mmd_matches_brute_force_unbiased_estimator():
    rng = np.random.default_rng(4)
    a, b, h = rng.standard_normal((30, 2)), rng.standard_normal((40, 2)) + 0.5, 0.7

    def k(x, y):
        return np.exp(-np.sum((x - y) ** 2) / (2 * h * h))

    kaa = sum(k(x, y) for i, x in enumerate(a) for j, y in enumerate(a) if i != j) / (30 * 29)
    kbb = sum(k(x, y) for i, x in enumerate(b) for j, y in enumerate(b) if i != j) / (40 * 39)
    kab = sum(k(x, y) for x in a for y in b) / (30 * 40)
    assert mmd_rbf(a, b, bandwidth=h) == pytest.approx(kaa + kbb - 2 * kab, rel=1e-9)


def test_mmd_separates_shifted_gaussians_and_subsamples_large_sets():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((3000, 2)), rng.standard_normal((3000, 2))
    same, shifted = mmd_rbf(a, b), mmd_rbf(a, b + 0.5)
    assert abs(same) < 2e-3 and shifted > 20 * abs(same) + 0.01
    assert mmd_rbf(a, b, seed=0) == mmd_rbf(a, b, seed=0)


def test_metrics_refuse_mismatched_sets():
    with pytest.raises(GenccError, match=r"\(5, 2\) and \(5, 3\)"):
        frechet_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(GenccError, match="shape"):
        class_coverage(np.ones(10))


def test_coverage_of_one_hot_histograms():
    k = np.eye(10)
    assert class_coverage(k[np.arange(1000) % 10]) == {"entropy": pytest.approx(1.0), "confident": 1.0}
    assert class_coverage(k[np.zeros(50, int)])["entropy"] == 0.0
    assert class_coverage(np.full((4, 10), 0.1))["confident"] == 0.0


def test_shipped_classifier_is_accurate_and_described(classifier):
    acc = held_out_accuracy(classifier)
    meta = read_meta()
    assert acc >= 0.97
    assert meta["test_accuracy"] == pytest.approx(acc)   # the shipped weights are the ones measured
    assert meta["command"] == "python -m gencc.models.digits_classifier" and meta["seed"] == 0
    x = load_digits_split("test").data[:7]
    assert features(x, classifier).shape == (7, meta["feature_dim"])
    assert np.allclose(probs(x, classifier).sum(1), 1.0)


def test_coverage_flags_mode_collapse(classifier):
    test = load_digits_split("test")
    assert class_coverage(probs(test.data, classifier))["entropy"] > 0.95
    assert class_coverage(probs(test.data[test.labels == 3], classifier))["entropy"] < 0.2


def test_evaluate_moons_against_itself_and_a_shift():
    held_out = load_dataset("moons", split="test", n=800).data
    result = evaluate(held_out, "moons")
    json.dumps(result)   # plain JSON types only
    m = result["metrics"]
    assert result["n_samples"] == result["n_reference"] == 800 and result["notes"]
    assert m["sliced_wasserstein"]["value"] == 0.0 and m["sliced_wasserstein"]["floor"] > 0
    assert m["mmd_rbf"]["value"] < m["mmd_rbf"]["floor"] + 1e-3
    worse = evaluate(held_out + 0.3, "moons")["metrics"]
    assert worse["sliced_wasserstein"]["value"] > 3 * worse["sliced_wasserstein"]["floor"]


def test_evaluate_digits_reports_classifier_metrics():
    collapsed = load_digits_split("train")
    result = evaluate(collapsed.data[collapsed.labels == 3][:100], "digits")
    m = result["metrics"]
    assert m["coverage_entropy"]["value"] < 0.2 < 0.95 < m["coverage_entropy"]["floor"]
    assert m["frechet_distance"]["value"] > 3 * m["frechet_distance"]["floor"]
    assert sum(result["label_histogram"]["samples"]) == 100


def test_evaluate_other_images_says_which_metrics_apply(tmp_path):
    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((40, 3, 4, 4), dtype=np.float32))
    result = evaluate(np.zeros((10, 3, 4, 4)), str(tmp_path / "img.npy"))
    assert set(result["metrics"]) == {"sliced_wasserstein", "mmd_rbf"}
    assert any("(1, 8, 8)" in n for n in result["notes"]) and any("itself" in n for n in result["notes"])


def test_evaluate_refuses_bad_samples():
    with pytest.raises(GenccError, match=r"\(10, 3\).*\(10, 2\)"):
        evaluate(np.zeros((10, 3)), "moons")
    x = np.zeros((10, 2))
    x[4, 1] = np.nan
    with pytest.raises(GenccError, match="NaN"):
        evaluate(x, "moons")


def test_cli_eval_prints_a_table_and_writes_json(tmp_path):
    np.savez(tmp_path / "s.npz", samples=load_dataset("moons", n=300, seed=9).data)
    r = gencc("eval", tmp_path / "s.npz", "--data", "moons", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert "sliced_wasserstein" in r.output and "floor" in r.output and "wrote" in r.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["data"] == "moons" and result["n_samples"] == 300
    assert set(result["metrics"]["mmd_rbf"]) >= {"value", "floor"}


def test_cli_eval_errors_are_one_line(tmp_path):
    assert_user_error(gencc("eval", tmp_path / "none.npz", "--data", "moons"), "none.npz", "does not exist")
    np.savez(tmp_path / "d.npz", data=np.zeros((5, 2)))
    assert_user_error(gencc("eval", tmp_path / "d.npz", "--data", "moons"), "'samples'", "['data']")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert_user_error(gencc("eval", tmp_path / "junk.npz", "--data", "moons"), "junk.npz")
    np.savez(tmp_path / "s.npz", samples=np.zeros((5, 3), np.float32))
    assert_user_error(gencc("eval", tmp_path / "s.npz", "--data", "moons"), "(5, 3)", "(5, 2)")
