"""Sharded sampling: the shards of a job, merged, are exactly the unsharded run."""
from itertools import pairwise

import numpy as np
import pytest

from cli_helpers import assert_user_error, gencc
from gencc.runtime.errors import GenccError
from gencc.runtime.shard import Shard, parse_shard


@pytest.mark.parametrize("batch", [1, 4, 1024])
def test_shard_ranges_tile_the_job_at_batch_boundaries(batch):
    for n in (1, 7, 10, 1000, 1001, 5000):
        batches = -(-n // batch)
        for count in range(1, min(batches, 9) + 1):
            ranges = [Shard(k, count).range(n, batch) for k in range(count)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in pairwise(ranges))
            assert all(lo % batch == 0 and hi > lo for lo, hi in ranges)
            sizes = [-(-(hi - lo) // batch) for lo, hi in ranges]   # in batches: balanced to within one
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("spec", ["", "3", "4/4", "-1/4", "a/b", "1/0", "1/2/3"])
def test_bad_shard_specs_are_refused(spec):
    with pytest.raises(GenccError, match="shard"):
        parse_shard(spec)


def test_union_of_shards_is_the_unsharded_run(tmp_path, tiny_moons_diffusion):
    args = [tiny_moons_diffusion, "--n", 23, "--steps", 6, "--seed", 5, "--batch-size", 4]
    r = gencc("sample", *args, "--out", tmp_path / "all.npz")
    assert r.exit_code == 0, r.output
    parts = []
    for k in (2, 0, 1):   # any order on the command line
        r = gencc("sample", *args, "--shard", f"{k}/3", "--out", tmp_path / f"p{k}.npz")
        assert r.exit_code == 0, r.output
        parts.append(tmp_path / f"p{k}.npz")
    r = gencc("merge", *parts, "--out", tmp_path / "merged.npz")
    assert r.exit_code == 0, r.output
    whole = np.load(tmp_path / "all.npz", allow_pickle=False)["samples"]
    merged = np.load(tmp_path / "merged.npz", allow_pickle=False)["samples"]
    assert merged.shape == whole.shape == (23, 2)
    np.testing.assert_array_equal(merged, whole)
    r = gencc("merge", *parts, "--out", tmp_path / "merged.npy")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(tmp_path / "merged.npy", allow_pickle=False), whole)

    # A missing shard, a duplicate, a shard of another job, and a plain sample file are all refused.
    assert_user_error(gencc("merge", parts[0], parts[1], "--out", tmp_path / "m.npz"), "missing shard", "1/3")
    assert_user_error(gencc("merge", *parts, parts[0], "--out", tmp_path / "m.npz"), "given twice")
    r = gencc("sample", *args[:-4], "--seed", 6, "--batch-size", 4, "--shard", "1/3", "--out", tmp_path / "o1.npz")
    assert r.exit_code == 0, r.output
    assert r.exit_code == 0, r.output
    assert_user_error(gencc("merge", parts[0], tmp_path / "o1.npz", parts[2], "--out", tmp_path / "m.npz"),
                      "different sampling job")
    assert_user_error(gencc("merge", tmp_path / "all.npz", "--out", tmp_path / "m.npz"), "not a gencc shard")
    assert not (tmp_path / "m.npz").exists()


def test_shard_cli_bad_inputs(tmp_path, tiny_moons_diffusion):
    base = ["sample", tiny_moons_diffusion, "--n", 3, "--steps", 2]
    assert_user_error(gencc(*base, "--shard", "3/3", "--out", tmp_path / "a.npz"), "--shard", "3/3")
    assert_user_error(gencc(*base, "--shard", "0/2", "--out", tmp_path / "a.npy"), ".npz")
    assert_user_error(gencc(*base, "--batch-size", 1, "--shard", "0/4", "--out", tmp_path / "a.npz"), "empty")
    assert_user_error(gencc("merge", tmp_path / "nope.npz", "--out", tmp_path / "m.npz"), "nope.npz")
